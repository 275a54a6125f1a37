"""How a DestinationConsumer commits (docs/consumers.md): a batch's offsets only after its
outcomes are acknowledged; without waiting, at most every ``COMMIT_INTERVAL_S``; the newest
offsets, waited for, when ``run`` returns; and a revoked partition's pending offsets before it
goes. A real librdkafka consumer is replaced by one that records the commits it is asked for."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import TopicPartition

from router_stream.adapters.kafka_io import ConsumedRecord
from router_stream.client import _consumer
from router_stream.client._consumer import DestinationConsumer
from router_stream.errors import BrokerUnavailable
from tests.unit.test_client_hostile_records import routed_value

TOPIC = "routed.slack"


class Commits:
    """Stands in for the librdkafka consumer: keeps every commit as (offsets, asynchronous)."""

    def __init__(self) -> None:
        self.made: list[tuple[dict[tuple[str, int], int], bool]] = []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.made.append(({(t.topic, t.partition): t.offset for t in offsets}, asynchronous))

    def close(self) -> None:
        pass


class Reporter:
    def __init__(self) -> None:
        self.fail_flush = False

    def report(self, routed: Any, **fields: Any) -> bool:
        return True

    async def flush(self) -> None:
        if self.fail_flush:
            raise BrokerUnavailable("outcomes cannot be written")


def record(partition: int, offset: int) -> ConsumedRecord:
    return ConsumedRecord(TOPIC, partition, offset, b"k", routed_value(decision_id=f"d{offset}"),
                          0, [])


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch):
    reporter = Reporter()
    c = DestinationConsumer("slack", bootstrap_servers="127.0.0.1:9", group_id="g",
                            reporter=reporter)  # type: ignore[arg-type]
    c._consumer.close()
    commits = Commits()
    c._consumer = commits  # type: ignore[assignment]
    yield c, commits, reporter, monkeypatch
    c._thread.close()


def script(monkeypatch: pytest.MonkeyPatch, c: DestinationConsumer, batches: list[Any],
           clock: list[float]) -> None:
    """``run`` fetches ``batches`` one by one (a callable is called instead), the monotonic
    clock reads ``clock[0]`` and moves 10 ms a fetch; then it is asked to stop."""
    todo = list(batches)

    async def fetch(*_args: Any) -> list[ConsumedRecord]:
        clock[0] += 0.01
        if not todo:
            c.request_stop()
            return []
        step = todo.pop(0)
        return step() if callable(step) else step
    monkeypatch.setattr(_consumer, "fetch", fetch)
    monkeypatch.setattr(_consumer.time, "monotonic", lambda: clock[0])


async def handler(_routed: Any) -> None:
    return None


async def test_commits_are_sent_without_waiting_at_most_every_interval_then_settled(consumer):
    c, commits, _reporter, monkeypatch = consumer
    clock = [1000.0]
    script(monkeypatch, c, [[record(0, 0)], [record(0, 1), record(1, 5)], [record(1, 6)]], clock)
    await c.run(handler)
    assert commits.made == [
        ({(TOPIC, 0): 1}, True),                      # the first batch: sent at once
        # 10 and 20 ms later: within the interval, held and merged ...
        ({(TOPIC, 0): 2, (TOPIC, 1): 7}, False),      # ... then settled, waited for, at the stop
    ]


async def test_offsets_of_a_batch_whose_outcomes_failed_are_not_committed(consumer):
    c, commits, reporter, monkeypatch = consumer
    clock = [1000.0]

    def failing() -> list[ConsumedRecord]:
        reporter.fail_flush = True
        return [record(0, 2)]
    script(monkeypatch, c, [[record(0, 0)], [record(0, 1)], failing], clock)
    with pytest.raises(BrokerUnavailable):
        await c.run(handler)
    # batch 2's offsets (held by the interval) go out on the way down; batch 3's never
    assert commits.made == [({(TOPIC, 0): 1}, True), ({(TOPIC, 0): 2}, True)]


async def test_a_revoked_partition_commits_what_is_pending_and_waits(consumer):
    c, commits, _reporter, monkeypatch = consumer
    clock = [1000.0]

    def revoke() -> list[ConsumedRecord]:  # a rebalance, inside the next fetch
        c._on_revoke(commits, [TopicPartition(TOPIC, 1)])  # type: ignore[arg-type]
        return []
    script(monkeypatch, c, [[record(0, 0), record(1, 0)], [record(0, 1), record(1, 1)], revoke],
           clock)
    await c.run(handler)
    assert commits.made == [
        ({(TOPIC, 0): 1, (TOPIC, 1): 1}, True),
        ({(TOPIC, 1): 2}, False),                     # partition 1, at its revoke
        ({(TOPIC, 0): 2}, False),                     # partition 0 only, at the stop
    ]
