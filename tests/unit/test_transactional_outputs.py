"""exactly_once's transactional sink and committer (worker/transactional.py) with fakes, driven
through the real CommitPipeline: one transaction per batch holding its outputs and offsets;
abort and the same batch again on a failure; fenced -> the pipeline stops; partitions moved
away -> aborted, never committed; a record refused for good -> dead-lettered in a new
transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException

from router_stream.config import Settings
from router_stream.core.engine import RouterEngine
from router_stream.errors import ProducerFenced
from router_stream.worker import transactional
from router_stream.worker.backoff import Backoff, retry_transient
from router_stream.worker.crashguard import CrashGuard
from router_stream.worker.metrics import WorkerMetrics
from router_stream.worker.pipeline import CommitPipeline, StepHook
from router_stream.worker.rdkafka import Delivered, DeliveryReports, Partition
from router_stream.worker.sink import OutputTopics
from tests.support.engine import NOW, Rec, policy, sig

SIGNALS = Partition("signals", 0)


def kafka_error(code: int, **flags: bool) -> KafkaException:
    return KafkaException(KafkaError(code, "fake", **flags))


class FakeProducer:
    """Records what a transaction held and what became visible; ``fail[op]`` raises once per
    entry; ``refuse(topic, value)`` fails a delivery."""

    def __init__(self) -> None:
        self.ops: list[str] = []
        self.pending: list[tuple[str, bytes | None]] = []
        self.visible: list[tuple[str, bytes | None]] = []
        self.offsets: list[dict[Partition, tuple[int, str]]] = []
        self.fail: dict[str, list[KafkaException]] = {}
        self.refuse: Callable[[str, bytes | None], KafkaException | None] = lambda t, v: None

    def _maybe_fail(self, op: str) -> None:
        self.ops.append(op)
        if self.fail.get(op):
            raise self.fail[op].pop(0)

    async def check_connection(self) -> None:
        pass

    async def init_transactions(self) -> None:
        self.ops.append("init")

    def begin_transaction(self) -> None:
        self._maybe_fail("begin")
        self.pending = []

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Any = None) -> asyncio.Future[Delivered]:
        fut: asyncio.Future[Delivered] = asyncio.get_running_loop().create_future()
        error = self.refuse(topic, value)
        if error is not None:
            fut.set_exception(error)
        else:
            self.pending.append((topic, value))
            fut.set_result(Delivered(topic, 0, len(self.pending)))
        return fut

    def reports(self, n: int) -> DeliveryReports:
        return DeliveryReports(asyncio.get_running_loop(), n)

    def hand_over(self, reports: DeliveryReports, i: int, topic: str, value: bytes | None,
                  key: bytes | None, headers: Any) -> None:
        error = self.refuse(topic, value)
        if error is None:
            self.pending.append((topic, value))
        reports.answer(i, error or Delivered(topic, 0, len(self.pending)))  # type: ignore[arg-type]

    async def topic_missing(self, topic: str, **_: Any) -> bool:
        return False

    async def send_offsets(self, offsets: dict[Partition, tuple[int, str]], meta: object) -> None:
        assert meta == "generation-1"
        self._maybe_fail("offsets")
        self.offsets.append(offsets)

    async def commit_transaction(self) -> None:
        self._maybe_fail("commit")
        self.visible += self.pending
        self.pending = []

    async def abort_transaction(self) -> None:
        self._maybe_fail("abort")
        self.pending = []

    async def close(self, timeout_s: float) -> None:
        self.ops.append("close")


class FakeConsumer:
    def __init__(self) -> None:
        self.owned = {SIGNALS}

    def assignment(self) -> set[Partition]:
        return set(self.owned)

    async def group_metadata(self) -> object:
        return "generation-1"


async def retry(step: str, op: Callable[[], Awaitable[Any]]) -> Any:
    return await retry_transient(step, op, backoff=Backoff(base_s=0, cap_s=0),
                                 give_up=lambda: False)


Run = tuple[CommitPipeline, FakeProducer, FakeConsumer]


async def started(monkeypatch: pytest.MonkeyPatch, on_step: StepHook | None = None) -> Run:
    producer, consumer = FakeProducer(), FakeConsumer()
    monkeypatch.setattr(transactional, "OutputProducer", lambda *a, **k: producer)
    settings = Settings(group_id="g", worker_id="w1")
    outputs = transactional.TransactionalOutputs(
        settings, OutputTopics.of(settings), WorkerMetrics(), consumer=lambda: consumer,
        guard=CrashGuard(3, retry), side_producer=lambda: None)
    assert outputs.transactional_id == "g.w1"
    await outputs.start()
    engine = RouterEngine(policy())
    return CommitPipeline(engine, outputs, outputs, depth=1, retry=retry, on_step=on_step), \
        producer, consumer


async def run_batch(pipe: CommitPipeline, n: int = 3) -> None:
    await pipe.launch([Rec(sig(i), offset=i) for i in range(n)], now=NOW)
    await pipe.wait_in_flight()


def signal_ids(records: list[tuple[str, bytes | None]], topic: str) -> list[str]:
    return [orjson.loads(v or b"{}")["signal_id"] for t, v in records if t == topic]


async def test_a_batch_commits_its_outputs_and_offsets_in_one_transaction(monkeypatch) -> None:
    pipe, producer, _ = await started(monkeypatch)
    await run_batch(pipe)
    assert pipe.failure is None
    assert producer.ops == ["init", "begin", "offsets", "commit"]
    assert producer.offsets == [{SIGNALS: (3, "")}]
    assert signal_ids(producer.visible, "router.decisions") == ["s0", "s1", "s2"]
    assert signal_ids(producer.visible, "routed.pager") == ["s0", "s1", "s2"]


async def test_a_failed_delivery_aborts_and_sends_the_same_batch_in_a_new_transaction(
        monkeypatch) -> None:
    pipe, producer, _ = await started(monkeypatch)
    failures = [kafka_error(KafkaError._MSG_TIMED_OUT)]
    producer.refuse = lambda topic, value: failures.pop() if failures else None
    await run_batch(pipe)
    assert pipe.failure is None
    assert producer.ops == ["init", "begin", "abort", "begin", "offsets", "commit"]
    assert signal_ids(producer.visible, "router.decisions") == ["s0", "s1", "s2"]


async def test_an_aborted_commit_sends_the_batch_again_then_commits(monkeypatch) -> None:
    pipe, producer, _ = await started(monkeypatch)
    producer.fail["commit"] = [kafka_error(KafkaError._FAIL, txn_requires_abort=True)]
    await run_batch(pipe)
    assert pipe.failure is None
    assert producer.ops == ["init", "begin", "offsets", "commit", "abort",
                            "begin", "offsets", "commit"]
    assert signal_ids(producer.visible, "router.decisions") == ["s0", "s1", "s2"]


async def test_a_retriable_commit_is_tried_again_in_the_same_transaction(monkeypatch) -> None:
    pipe, producer, _ = await started(monkeypatch)
    producer.fail["commit"] = [kafka_error(KafkaError.REQUEST_TIMED_OUT, retriable=True)]
    await run_batch(pipe)
    assert producer.ops == ["init", "begin", "offsets", "commit", "commit"]
    assert signal_ids(producer.visible, "router.decisions") == ["s0", "s1", "s2"]


@pytest.mark.parametrize("op", ["offsets", "commit"])
async def test_a_fenced_producer_stops_the_pipeline_with_nothing_visible(monkeypatch, op) -> None:
    pipe, producer, _ = await started(monkeypatch)
    producer.fail[op] = [kafka_error(KafkaError._FENCED, fatal=True)]
    await run_batch(pipe)
    assert isinstance(pipe.failure, ProducerFenced)
    assert "g.w1" in str(pipe.failure)
    assert producer.visible == [] and "abort" not in producer.ops


async def test_a_fatal_delivery_error_stops_the_pipeline(monkeypatch) -> None:
    pipe, producer, _ = await started(monkeypatch)
    producer.refuse = lambda topic, value: kafka_error(KafkaError._FENCED, fatal=True)
    await run_batch(pipe)
    assert isinstance(pipe.failure, ProducerFenced)
    assert producer.visible == [] and "commit" not in producer.ops


async def test_offsets_of_a_member_the_group_moved_on_from_abort_the_batch(monkeypatch) -> None:
    pipe, producer, _ = await started(monkeypatch)
    producer.fail["offsets"] = [kafka_error(KafkaError.ILLEGAL_GENERATION,
                                            txn_requires_abort=True)]
    await run_batch(pipe)
    assert pipe.failure is None  # the batch is its next owner's
    assert producer.ops == ["init", "begin", "offsets", "abort"]
    assert producer.visible == []


async def test_a_partition_revoked_before_the_commit_aborts_the_batch(monkeypatch) -> None:
    async def revoke_after_produce(step: str, result: Any) -> None:
        if step == "produced":
            consumer.owned.clear()

    pipe, producer, consumer = await started(monkeypatch, on_step=revoke_after_produce)
    await run_batch(pipe)
    assert producer.ops == ["init", "begin", "abort"]
    assert producer.visible == []


async def test_a_record_refused_for_good_is_dead_lettered_in_a_new_transaction(
        monkeypatch) -> None:
    pipe, producer, _ = await started(monkeypatch)
    too_large = kafka_error(KafkaError.MSG_SIZE_TOO_LARGE)
    producer.refuse = lambda topic, value: (
        too_large if topic == "routed.pager" and b'"s1"' in (value or b"") else None)
    await run_batch(pipe)
    assert pipe.failure is None
    # the batch, the probe of the refused record alone (always aborted), the rewritten batch
    assert producer.ops == ["init", "begin", "abort", "begin", "abort",
                            "begin", "offsets", "commit"]
    assert signal_ids(producer.visible, "routed.pager") == ["s0", "s2"]
    assert signal_ids(producer.visible, "router.decisions") == ["s0", "s2"]
    dlq = [v for t, v in producer.visible if t == "router.dlq"]
    assert dlq == [sig(1)]  # the input, byte-exact
