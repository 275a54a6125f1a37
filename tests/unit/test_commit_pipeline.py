"""The commit order (worker/pipeline.py) with fakes: no broker, every step observable.

produce (hand over, await every ack) → commit, in batch order; a crash at any step commits
nothing of that batch or any later one; a failed acknowledgement is retried or stops the
pipeline; a revoke (wait_in_flight) returns only once every batch in flight is committed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from router_stream.core.outputs import BatchResult
from router_stream.core.redaction import DEFAULT_REDACTOR, Redactor
from router_stream.errors import BrokerUnavailable, TransientError
from router_stream.worker.pipeline import CommitPipeline


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    timestamp: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


class FakePolicy:
    redactor: Redactor = DEFAULT_REDACTOR


class FakeEngine:
    policy = FakePolicy()

    def decide_batch(self, records: Sequence[Any], now: float) -> BatchResult:
        result = BatchResult()
        result.dropped_duplicates = len(records)  # a marker the test can read back
        return result


class FakeSink:
    """Each send is acknowledged when the test says so (``ack(i)``) or fails (``fail``)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.acks: list[asyncio.Future[None]] = []
        self.fail_next: list[BaseException] = []

    async def send(self, result: BatchResult) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(fut)
        self.log.append(f"send {len(self.acks) - 1}")
        return fut

    async def confirm(self, batch: Any, handover: Any) -> None:
        if handover is None:  # a retry sends again
            handover = await self.send(batch.result)
            handover.set_result(None)
        if self.fail_next:
            raise self.fail_next.pop(0)
        await handover
        self.log.append("acked")


class FakeCommitter:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.committed: list[int] = []

    async def commit(self, records: Sequence[Any]) -> None:
        self.committed.append(records[-1].offset + 1)
        self.log.append(f"commit {records[-1].offset + 1}")


async def _retry_transient_once(step: str, op: Callable[[], Awaitable[None]]) -> None:
    try:
        await op()
    except TransientError:
        await op()


def _pipeline(log: list[str], **kwargs: Any) -> tuple[CommitPipeline, FakeSink, FakeCommitter]:
    sink, committer = FakeSink(log), FakeCommitter(log)
    return CommitPipeline(FakeEngine(), sink, committer, depth=3, **kwargs), sink, committer


def _records(first: int, n: int = 2) -> list[Any]:
    return [Rec("signals", 0, first + i) for i in range(n)]


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_batches_overlap_but_commit_in_order_and_only_after_their_acks() -> None:
    log: list[str] = []
    pipe, sink, committer = _pipeline(log)
    await pipe.launch(_records(0))
    await pipe.launch(_records(2))
    await pipe.launch(_records(4))
    assert pipe.in_flight == 3
    sink.acks[2].set_result(None)  # the last batch's acks come first ...
    sink.acks[1].set_result(None)
    await _settle()
    assert committer.committed == []  # ... but nothing commits before batch 0
    sink.acks[0].set_result(None)
    await pipe.wait_in_flight()
    assert committer.committed == [6]  # batches 1 and 2 were durable: one commit for all three
    assert pipe.failure is None and pipe.in_flight == 0


async def test_a_batch_acknowledged_during_a_commit_is_committed_after_it() -> None:
    log: list[str] = []
    pipe, sink, committer = _pipeline(log)
    release = asyncio.Event()
    commit = committer.commit

    async def slow_commit(records: Sequence[Any]) -> None:
        await release.wait()
        await commit(records)

    committer.commit = slow_commit  # type: ignore[method-assign]
    for first in (0, 2, 4):
        await pipe.launch(_records(first))
    sink.acks[0].set_result(None)
    await _settle()  # batch 0's commit is under way ...
    sink.acks[2].set_result(None)  # ... when batches 2 and 1 become durable
    sink.acks[1].set_result(None)
    await _settle()
    release.set()
    await pipe.wait_in_flight()
    assert committer.committed == [2, 6]
    assert pipe.failure is None


async def test_a_failed_joint_commit_fails_every_batch_it_covered() -> None:
    log: list[str] = []
    pipe, sink, committer = _pipeline(log)

    async def refuse(records: Sequence[Any]) -> None:
        raise BrokerUnavailable("coordinator gone")

    committer.commit = refuse  # type: ignore[method-assign]
    batches = [await pipe.launch(_records(first)) for first in (0, 2)]
    sink.acks[1].set_result(None)
    sink.acks[0].set_result(None)
    await pipe.wait_in_flight()
    assert [b.failed for b in batches] == [True, True]
    assert isinstance(pipe.failure, BrokerUnavailable)


@pytest.mark.parametrize("step", ["decided", "produced", "committed"])
async def test_a_crash_at_a_step_commits_nothing_after_it(step: str) -> None:
    log: list[str] = []

    class Crash(RuntimeError):
        pass

    async def hook(current: str, result: BatchResult) -> None:
        if current == step and result.dropped_duplicates == 3:  # the second batch
            raise Crash(step)

    pipe, sink, committer = _pipeline(log, on_step=hook)
    await pipe.launch(_records(0, 2))
    try:
        await pipe.launch(_records(2, 3))
        await pipe.launch(_records(5, 4))
    except Crash:
        assert step == "decided"  # raised by launch: the batch never reached the producer
    for fut in sink.acks:
        fut.set_result(None)
    await pipe.wait_in_flight()
    if step == "committed":  # the crash came after its commit; the next batch never commits
        assert committer.committed == [2, 5]
        assert isinstance(pipe.failure, Crash)
    elif step == "produced":
        assert committer.committed == [2]
        assert isinstance(pipe.failure, Crash)
        with pytest.raises(Crash):
            pipe.raise_failure()
    else:
        assert committer.committed == [2] and len(sink.acks) == 1


async def test_a_failed_ack_is_retried_by_sending_again_then_commits() -> None:
    log: list[str] = []
    pipe, sink, committer = _pipeline(log, retry=_retry_transient_once)
    sink.fail_next.append(BrokerUnavailable("2 of 5 deliveries failed"))
    batch = await pipe.launch(_records(0))
    await batch.task
    assert committer.committed == [2]
    assert log == ["send 0", "send 1", "acked", "commit 2"]


async def test_a_failed_ack_past_retrying_stops_the_pipeline_without_a_commit() -> None:
    log: list[str] = []
    pipe, sink, committer = _pipeline(log)
    sink.fail_next.append(BrokerUnavailable("refused"))
    await pipe.launch(_records(0))
    await pipe.launch(_records(2))
    sink.acks[1].set_result(None)
    await pipe.wait_in_flight()
    assert committer.committed == []  # neither the failed batch nor the one after it
    assert isinstance(pipe.failure, BrokerUnavailable)
    with pytest.raises(BrokerUnavailable):
        await pipe.wait_for_room()


async def test_a_revoke_during_a_batch_waits_until_it_is_committed() -> None:
    log: list[str] = []
    pipe, sink, committer = _pipeline(log)
    await pipe.launch(_records(0))
    await pipe.launch(_records(2))
    revoke = asyncio.create_task(pipe.wait_in_flight())  # what on_partitions_revoked does
    await _settle()
    assert not revoke.done()
    sink.acks[0].set_result(None)
    await _settle()
    assert not revoke.done() and committer.committed == [2]
    sink.acks[1].set_result(None)
    await asyncio.wait_for(revoke, 1)
    assert committer.committed == [2, 4]


async def test_at_most_depth_batches_are_uncommitted() -> None:
    log: list[str] = []
    pipe, sink, _ = _pipeline(log)
    for i in range(3):
        await pipe.launch(_records(2 * i))
    room = asyncio.create_task(pipe.wait_for_room())
    await _settle()
    assert not room.done()
    sink.acks[0].set_result(None)
    await asyncio.wait_for(room, 1)
    assert pipe.in_flight == 2
    drained: list[bool] = []
    pipe._on_drained = lambda: drained.append(True)
    for fut in sink.acks[1:]:
        fut.set_result(None)
    await pipe.wait_in_flight()
    assert drained == [True]


async def test_small_batches_overlap_up_to_the_record_budget() -> None:
    log: list[str] = []
    sink, committer = FakeSink(log), FakeCommitter(log)
    pipe = CommitPipeline(FakeEngine(), sink, committer, depth=8, max_records=6)
    for i in range(3):
        await pipe.launch(_records(2 * i))  # 2 records each: 6 in flight
    await asyncio.wait_for(pipe.wait_for_room(0), 1)  # an empty fetch always fits ...
    room = asyncio.create_task(pipe.wait_for_room(2))  # ... two more records do not
    await _settle()
    assert not room.done()
    sink.acks[0].set_result(None)
    await asyncio.wait_for(room, 1)
    assert pipe.in_flight == 2 and pipe.records_in_flight == 4
    for fut in sink.acks[1:]:
        fut.set_result(None)
    await pipe.wait_in_flight()


async def test_one_batch_always_fits_even_above_the_record_budget() -> None:
    log: list[str] = []
    pipe = CommitPipeline(FakeEngine(), FakeSink(log), FakeCommitter(log), depth=8,
                          max_records=1)
    await asyncio.wait_for(pipe.wait_for_room(500), 1)


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CommitPipeline(FakeEngine(), FakeSink([]), FakeCommitter([]), depth=0)
