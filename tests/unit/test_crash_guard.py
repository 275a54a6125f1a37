"""The worker's crash-loop guard on its partitions (:mod:`router_stream.worker.crashguard`), with a
fake consumer: what a careful partition hands out per batch, and what it asks of the consumer."""

from __future__ import annotations

from dataclasses import dataclass

from router_stream.core.crashloop import GuardMark
from router_stream.worker import crashguard
from router_stream.worker.crashguard import CrashGuard
from router_stream.worker.rdkafka import Partition

TP = Partition("signals", 0)
OTHER = Partition("signals", 1)


@dataclass
class R:
    topic: str
    partition: int
    offset: int


class FakeConsumer:
    def __init__(self, committed: dict[Partition, tuple[int, str]]) -> None:
        self._committed = committed
        self.commits: list[dict[Partition, tuple[int, str]]] = []
        self.seeks: list[tuple[Partition, int]] = []

    async def committed(self, tps):
        return {tp: self._committed.get(tp, (None, "")) for tp in tps}

    async def commit(self, offsets, *, wait=True):
        self.commits.append(dict(offsets))
        return True

    def seek(self, tp, offset):
        self.seeks.append((tp, offset))


async def no_retry(step, op):
    return await op()


def recs(tp: Partition, *offsets: int) -> list[R]:
    return [R(tp.topic, tp.partition, o) for o in offsets]


def offsets(records) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in records]


async def test_a_careful_partition_hands_out_its_fetched_records_one_per_batch_without_seeking():
    # a worker died deciding offsets 10-13 of TP: the next one is careful up to 13
    consumer = FakeConsumer({TP: (10, GuardMark(1, 13).to_metadata()), OTHER: (0, "")})
    guard = CrashGuard(3, no_retry)
    guard.assigned({TP, OTHER})

    decide, poison = await guard.screen(consumer, [*recs(TP, 10, 11, 12), *recs(OTHER, 0, 1)])
    assert offsets(decide) == [(0, 10), (1, 0), (1, 1)] and poison == []
    # before deciding anything taken over, each partition's attempt is counted
    assert consumer.commits == [{TP: (10, GuardMark(2, 13).to_metadata())},
                                {OTHER: (0, GuardMark(1, 1).to_metadata())}]
    assert guard.careful and guard.holding

    # the held records come before anything fetched later, one per batch
    decide, _ = await guard.screen(consumer, recs(TP, 13, 14))
    assert offsets(decide) == [(0, 11)]
    decide, _ = await guard.screen(consumer, [])
    assert offsets(decide) == [(0, 12)]
    decide, _ = await guard.screen(consumer, [])
    assert offsets(decide) == [(0, 13)]
    # past the span: what is left goes in one batch, and the partition is normal again
    decide, _ = await guard.screen(consumer, recs(TP, 15))
    assert offsets(decide) == [(0, 14), (0, 15)]
    assert not guard.careful and not guard.holding
    assert consumer.seeks == []


async def test_a_revoke_drops_what_a_careful_partition_held():
    consumer = FakeConsumer({TP: (5, GuardMark(1, 9).to_metadata())})
    guard = CrashGuard(3, no_retry)
    guard.assigned({TP})
    await guard.screen(consumer, recs(TP, 5, 6, 7))
    assert guard.holding

    guard.revoked({TP})
    assert not guard.holding and not guard.careful
    assert await guard.screen(consumer, []) == ([], [])


async def test_the_commit_inside_a_careful_span_names_the_next_record_as_attempted():
    consumer = FakeConsumer({TP: (5, GuardMark(1, 9).to_metadata())})
    guard = CrashGuard(3, no_retry)
    guard.assigned({TP})
    await guard.screen(consumer, recs(TP, 5, 6))

    assert guard.metadata(TP, 6) == GuardMark(1, 9).to_metadata()
    assert guard.metadata(TP, 10) == ""


async def test_past_the_hold_limit_the_partition_is_fetched_again_from_the_first_record_dropped(
        monkeypatch):
    monkeypatch.setattr(crashguard, "HELD_MAX", 2)
    consumer = FakeConsumer({TP: (0, GuardMark(1, 3).to_metadata())})
    guard = CrashGuard(3, no_retry)
    guard.assigned({TP})

    decide, _ = await guard.screen(consumer, recs(TP, 0, 1, 2, 3, 4))
    assert offsets(decide) == [(0, 0)]
    assert consumer.seeks == [(TP, 3)]  # 1 and 2 held
    decide, _ = await guard.screen(consumer, [])
    assert offsets(decide) == [(0, 1)]
    decide, _ = await guard.screen(consumer, recs(TP, 3, 4))  # fetched again from 3
    assert offsets(decide) == [(0, 2)]
    assert consumer.seeks == [(TP, 3)]
    decide, _ = await guard.screen(consumer, [])
    assert offsets(decide) == [(0, 3)]
    decide, _ = await guard.screen(consumer, [])
    assert offsets(decide) == [(0, 4)] and not guard.careful
