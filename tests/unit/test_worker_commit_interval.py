"""The worker's offset commits that do not wait (``commit(..., wait=False)``): at most one out
at a time and at most one per ``COMMIT_INTERVAL_S``, what came meanwhile merged into the next,
and ``settle_commits`` committing the newest offsets at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from router_stream.config import Settings
from router_stream.worker import rdkafka
from router_stream.worker.rdkafka import Partition, SignalConsumer

TP0, TP1 = Partition("t.signals", 0), Partition("t.signals", 1)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


class _Consumer:
    """librdkafka's consumer as far as commits go: commits are recorded, answered when the test
    says so (through ``on_commit``, as ``poll`` would)."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.on_commit = conf["on_commit"]
        self.sent: list[tuple[list[tuple[str, int, int]], bool]] = []
        self.unanswered: list[list[TopicPartition]] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        self.sent.append(([(tp.topic, tp.partition, tp.offset) for tp in offsets], asynchronous))
        if asynchronous:
            self.unanswered.append(offsets)
        return offsets

    def answer(self) -> None:
        self.on_commit(None, self.unanswered.pop(0))

    def poll(self, timeout: float) -> None:
        return None

    def close(self) -> None:
        pass


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(rdkafka, "Consumer", _Consumer)
    monkeypatch.setattr(rdkafka.time, "monotonic", clock.monotonic)
    return clock


@pytest.fixture
async def consumer(clock: _Clock) -> AsyncIterator[SignalConsumer]:
    consumer = SignalConsumer(Settings(kafka_bootstrap="127.0.0.1:9"), {"group.id": "g"})
    try:
        yield consumer
    finally:
        await consumer.close()


def _fake(consumer: SignalConsumer) -> _Consumer:
    return consumer._consumer  # type: ignore[return-value]


async def _on_thread(consumer: SignalConsumer, fn: Any) -> Any:
    return await consumer._call(fn)  # what poll does: on the consumer thread


async def test_commits_within_the_interval_are_merged_into_the_next(
        clock: _Clock, consumer: SignalConsumer):
    fake = _fake(consumer)
    assert await consumer.commit({TP0: (10, "")}, wait=False)
    assert fake.sent == [([("t.signals", 0, 10)], True)]
    await _on_thread(consumer, fake.answer)
    clock.now += rdkafka.COMMIT_INTERVAL_S / 4
    assert await consumer.commit({TP0: (20, ""), TP1: (5, "")}, wait=False)
    assert await consumer.commit({TP0: (30, "")}, wait=False)
    assert len(fake.sent) == 1  # held: the last commit went out too recently
    await consumer.take(10, 0)
    assert len(fake.sent) == 1
    clock.now += rdkafka.COMMIT_INTERVAL_S
    await consumer.take(10, 0)  # the next fetch sends what was held, merged
    assert fake.sent[1] == (sorted([("t.signals", 0, 30), ("t.signals", 1, 5)]), True)


async def test_one_commit_is_out_at_a_time(clock: _Clock, consumer: SignalConsumer):
    fake = _fake(consumer)
    await consumer.commit({TP0: (10, "")}, wait=False)
    clock.now += 10 * rdkafka.COMMIT_INTERVAL_S
    await consumer.commit({TP0: (11, "")}, wait=False)
    await consumer.take(10, 0)
    assert len(fake.sent) == 1  # the first is not answered yet
    await _on_thread(consumer, fake.answer)  # its answer sends the next
    assert fake.sent[1] == ([("t.signals", 0, 11)], True)


async def test_settling_commits_the_newest_offsets_at_once_and_waits(
        clock: _Clock, consumer: SignalConsumer):
    fake = _fake(consumer)
    await consumer.commit({TP0: (10, "")}, wait=False)
    await _on_thread(consumer, fake.answer)
    await consumer.commit({TP0: (20, ""), TP1: (7, "")}, wait=False)  # held
    assert await consumer.settle_commits({TP0})
    assert fake.sent[-1] == ([("t.signals", 0, 20)], False)  # synchronous, not held
    clock.now += rdkafka.COMMIT_INTERVAL_S
    await consumer.take(10, 0)
    assert fake.sent[-1] == ([("t.signals", 1, 7)], True)  # TP0's went out with the settle
