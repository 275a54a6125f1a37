"""router_stream.client on the real broker: the consumer's commit order, dedupe and outcomes,
and the reporter's bounded buffer."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import NamedTuple

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from router_stream.client import (
    Delivery,
    DestinationConsumer,
    OutcomeReporter,
    RoutedSignal,
    parse_routed,
)
from router_stream.core.parsing import parse_outcome
from router_stream.errors import BrokerUnavailable, OperationTimeout
from tests.support.kafka_admin import Admin

pytestmark = pytest.mark.integration


def routed(i: int, decision: str | None = None) -> bytes:
    return orjson.dumps({
        "signal_id": f"s-{i}", "sender_id": "svc", "payload": {"i": i},
        "route": {"decision_id": decision or f"dec-{i}", "signal_id": f"s-{i}",
                  "destination": "slack", "kind": "note", "strategy": "first_healthy",
                  "tier": 0, "policy_version": "p1", "confidence": 1.0,
                  "routed_at": time.time()},
    })


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for v in values:
        producer.produce(topic, v, b"k")
    assert producer.flush(20.0) == 0


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    await asyncio.to_thread(_produce, bootstrap, topic, values)


class Record(NamedTuple):
    key: bytes | None
    value: bytes | None


def _read_topic(bootstrap: str, topic: str, want: int, timeout_s: float) -> list[Record]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    out: list[Record] = []
    try:
        partitions = consumer.list_topics(topic, 10.0).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + timeout_s
        while len(out) < want and time.monotonic() < deadline:
            out.extend(Record(m.key(), m.value()) for m in consumer.consume(want, 0.2)
                       if m.error() is None)
        # Anything beyond ``want`` that is already there (an extra outcome would be a bug).
        out.extend(Record(m.key(), m.value()) for m in consumer.consume(want, 0.5)
                   if m.error() is None)
    finally:
        consumer.close()
    return out


async def read_topic(bootstrap: str, topic: str, want: int,
                     timeout_s: float = 20.0) -> list[Record]:
    return await asyncio.to_thread(_read_topic, bootstrap, topic, want, timeout_s)


async def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_consumer_reports_one_outcome_per_decision_and_commits(servers, test_id,
                                                                     topic_factory):
    bootstrap = servers.kafka_bootstrap
    prefix = f"t{test_id}."
    topic = await topic_factory("routed.slack", partitions=1)
    outcomes = await topic_factory("outcomes", partitions=1)
    values = [routed(i) for i in range(6)]
    values.insert(3, routed(1))          # the router wrote decision dec-1 twice
    values.insert(5, b"not json")        # a record no handler should see
    await produce(bootstrap, topic, values)

    handled: list[str] = []

    async def deliver(r: RoutedSignal) -> Delivery | None:
        handled.append(r.signal_id)
        if r.signal_id == "s-2":
            raise RuntimeError("slack said 500")
        if r.signal_id == "s-4":
            return Delivery(reward=0.25, cost=0.5)
        if r.signal_id == "s-5":
            return Delivery(ok=False)
        return None

    consumer = DestinationConsumer("slack", bootstrap_servers=bootstrap, topic_prefix=prefix,
                                   group_id=f"g-{test_id}-slack")
    async with consumer:
        runner = asyncio.create_task(consumer.run(deliver))
        await wait_until(lambda: consumer.stats.commits >= 1 and consumer.stats.handled == 6,
                         30, "six deliveries committed")
        consumer.request_stop()
        await asyncio.wait_for(runner, 10)

    assert handled == [f"s-{i}" for i in range(6)]
    assert (consumer.stats.duplicates, consumer.stats.invalid, consumer.stats.failed) == (1, 1, 2)

    records = await read_topic(bootstrap, outcomes, 6)
    assert [r.key for r in records] == [b"slack"] * 6
    read = {o.signal_id: o for o in (parse_outcome(r.value, record_ts_ms=0) for r in records)}
    assert len(records) == len(read) == 6
    assert {s for s, o in read.items() if not o.ok} == {"s-2", "s-5"}
    assert (read["s-4"].reward, read["s-4"].cost) == (0.25, 0.5)
    assert all(o.decision_id == f"dec-{s[2:]}" and o.latency_ms is not None
               and o.latency_ms >= 0 and o.ts is not None and abs(o.ts - time.time()) < 60
               for s, o in read.items())

    # Everything read was committed: the group resumes after the last record.
    assert await Admin(bootstrap).committed(f"g-{test_id}-slack", topic, 0) == len(values)


async def test_consumer_does_not_commit_when_outcomes_cannot_be_written(servers, test_id,
                                                                        topic_factory):
    """No ``outcomes`` topic (auto-create is off): run() fails and the batch stays uncommitted,
    so a restarted consumer handles it again."""
    bootstrap = servers.kafka_bootstrap
    topic = await topic_factory("routed.slack", partitions=1)
    await produce(bootstrap, topic, [routed(1)])
    reporter = OutcomeReporter(bootstrap, topic_prefix=f"t{test_id}.",
                               kafka_options={"message.timeout.ms": 3000})
    consumer = DestinationConsumer("slack", bootstrap_servers=bootstrap,
                                   topic_prefix=f"t{test_id}.", group_id=f"g-{test_id}-slack",
                                   reporter=reporter)

    async def deliver(r: RoutedSignal) -> None:
        return None

    async with reporter, consumer:
        with pytest.raises((BrokerUnavailable, OperationTimeout)):
            await asyncio.wait_for(consumer.run(deliver), 60)
    assert consumer.stats.handled == 1 and consumer.stats.commits == 0


async def test_reporter_buffer_is_bounded_and_flushed_on_close(servers, test_id, topic_factory):
    outcomes = await topic_factory("outcomes", partitions=1)
    reporter = OutcomeReporter(servers.kafka_bootstrap, topic_prefix=f"t{test_id}.",
                               max_buffer=3)
    deliveries = [parse_routed(routed(i)) for i in range(5)]
    # Not started yet: nothing drains the buffer, so the fourth and fifth are refused.
    accepted = [reporter.report(d, ok=i % 2 == 0, latency_ms=1.0) for i, d in enumerate(deliveries)]
    assert accepted == [True, True, True, False, False]
    assert reporter.stats.dropped == 2
    await reporter.start()
    await reporter.close()
    assert reporter.stats.sent == 3
    assert reporter.report(deliveries[0], ok=True) is False  # closed: dropped, not lost silently
    assert reporter.stats.dropped == 3

    records = await read_topic(servers.kafka_bootstrap, outcomes, 3)
    got = [parse_outcome(r.value, record_ts_ms=0) for r in records]
    assert [(o.signal_id, o.ok) for o in got] == [("s-0", True), ("s-1", False), ("s-2", True)]


async def test_a_rebalance_hands_partitions_over_after_their_pending_commits(servers, test_id,
                                                                             topic_factory):
    """Offsets go out at most every 100 ms without waiting; a member that loses partitions to a
    new one commits what it handled of them first, so the new owner starts after it: every
    record is handled exactly once across the two, and the group ends committed to the end."""
    bootstrap = servers.kafka_bootstrap
    prefix, group = f"t{test_id}.", f"g-{test_id}-slack"
    topic = await topic_factory("routed.slack", partitions=4)
    await topic_factory("outcomes", partitions=1)
    handled: list[str] = []
    total = 1200

    async def deliver(r: RoutedSignal) -> None:
        handled.append(r.decision_id)

    def feed() -> None:  # ~200 records/s over 6 s, keyed across the 4 partitions
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        for i in range(total):
            producer.produce(topic, routed(i), str(i).encode())
            producer.poll(0)
            time.sleep(0.005)
        assert producer.flush(20.0) == 0

    def member() -> DestinationConsumer:
        return DestinationConsumer("slack", bootstrap_servers=bootstrap, topic_prefix=prefix,
                                   group_id=group)

    first, second = member(), member()
    async with first:
        running = [asyncio.create_task(first.run(deliver))]
        feeding = asyncio.create_task(asyncio.to_thread(feed))
        await wait_until(lambda: len(handled) >= 100, 30, "the first member handling records")
        async with second:
            running.append(asyncio.create_task(second.run(deliver)))
            await feeding
            await wait_until(lambda: len(set(handled)) == total, 60, f"{total} deliveries")
            for c in (first, second):
                c.request_stop()
            await asyncio.wait_for(asyncio.gather(*running), 30)
    assert second.stats.handled > 0, "the second member never got a partition"
    assert sorted(handled) == sorted(f"dec-{i}" for i in range(total))  # none twice
    assert await Admin(bootstrap).committed_to_end(group, topic)
