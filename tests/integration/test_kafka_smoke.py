"""Smoke tests proving the product's Kafka client (confluent-kafka / librdkafka) works on the
chosen Kafka version: group commits, the idempotent producer, transactions.

These run against the real broker from the session fixture; each test uses its own topics and
consumer group. The clients block, so each scenario runs in a thread.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

pytestmark = pytest.mark.integration

WAIT_S = 20.0


def _consumer(bootstrap: str, group: str, **extra: Any) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                     "auto.offset.reset": "earliest", "enable.auto.commit": False, **extra})


def _drain(consumer: Consumer, want: int, timeout: float = WAIT_S) -> list[Message]:
    """Read until ``want`` records arrived (bounded wait), return them."""
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        # never a negative timeout: librdkafka waits forever on one
        wait = min(1.0, max(0.0, deadline - time.monotonic()))
        for m in consumer.consume(want - len(out), wait):
            assert m.error() is None, m.error()
            out.append(m)
    return out


def _feed(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for v in values:
        producer.produce(topic, v)
    assert producer.flush(WAIT_S) == 0


def _committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    checker = _consumer(bootstrap, group)
    try:
        [got] = checker.committed([tp], WAIT_S)
    finally:
        checker.close()
    return got.offset if got.offset >= 0 else None


def group_commit_and_resume(bootstrap: str, topic: str, group: str) -> None:
    _feed(bootstrap, topic, [f"m{i}".encode() for i in range(10)])
    first = _consumer(bootstrap, group)
    first.subscribe([topic])
    try:
        got = _drain(first, 5)
        first.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
    finally:
        first.close()
    assert [m.value() for m in got[:5]] == [f"m{i}".encode() for i in range(5)]

    second = _consumer(bootstrap, group)
    second.subscribe([topic])
    try:
        rest = _drain(second, 5)
    finally:
        second.close()
    assert [m.value() for m in rest] == [f"m{i}".encode() for i in range(5, 10)]


async def test_group_commit_and_resume(servers, topic_factory, test_id):
    topic = await topic_factory("resume", partitions=1)
    await asyncio.to_thread(group_commit_and_resume, servers.kafka_bootstrap, topic,
                            f"g-{test_id}")


def idempotent_writes(bootstrap: str, topic: str, group: str) -> list[bytes | None]:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "acks": "all"})
    failed: list[Any] = []
    for i in range(500):
        producer.produce(topic, str(i).encode(),
                         on_delivery=lambda err, _m: err is None or failed.append(err))
    assert producer.flush(WAIT_S) == 0 and failed == []
    consumer = _consumer(bootstrap, group)
    consumer.assign([TopicPartition(topic, 0, 0)])
    try:
        return [m.value() for m in _drain(consumer, 500)]
    finally:
        consumer.close()


async def test_idempotent_producer_writes_each_record_once_in_order(servers, topic_factory,
                                                                    test_id):
    topic = await topic_factory("idem", partitions=1)
    values = await asyncio.to_thread(idempotent_writes, servers.kafka_bootstrap, topic,
                                     f"g-{test_id}")
    assert values == [str(i).encode() for i in range(500)]


def run_transactional_scenario(
    bootstrap: str, source: str, sink: str, group: str, txn_id: str, *, finish_second: str
) -> tuple[list[bytes | None], int | None]:
    """Consume-transform-produce in two transactions: the first commits, the second ends with
    ``finish_second`` ("abort" in the real test). Returns what a read_committed reader sees on the
    sink and the group's committed offset on the source."""
    _feed(bootstrap, source, [f"in{i}".encode() for i in range(20)])
    consumer = _consumer(bootstrap, group, **{"isolation.level": "read_committed"})
    consumer.subscribe([source])
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id})
    producer.init_transactions(WAIT_S)
    try:
        for outcome in ("commit", finish_second):
            batch = _drain(consumer, 10)
            assert len(batch) == 10, "no records arrived in time"
            producer.begin_transaction()
            for m in batch:
                producer.produce(sink, b"out-" + (m.value() or b""))
            producer.send_offsets_to_transaction(
                [TopicPartition(source, 0, batch[-1].offset() + 1)],
                consumer.consumer_group_metadata(), WAIT_S)
            if outcome == "commit":
                producer.commit_transaction(WAIT_S)
            else:
                producer.abort_transaction(WAIT_S)
    finally:
        consumer.close()
        producer.flush(WAIT_S)

    reader = _consumer(bootstrap, f"{group}-reader", **{"isolation.level": "read_committed"})
    reader.assign([TopicPartition(sink, 0, 0)])
    try:
        # Read everything up to the end: 20 would be visible if the abort were not honoured.
        seen = [m.value() for m in _drain(reader, 20, timeout=8.0)]
    finally:
        reader.close()
    return seen, _committed(bootstrap, group, TopicPartition(source, 0))


def assert_only_first_batch_visible(seen: list[bytes | None], committed: int | None) -> None:
    assert seen == [f"out-in{i}".encode() for i in range(10)], seen
    assert committed == 10


async def test_transaction_abort_stays_invisible_to_read_committed(servers, topic_factory, test_id):
    source = await topic_factory("txn-src")
    sink = await topic_factory("txn-sink")
    seen, committed = await asyncio.to_thread(
        run_transactional_scenario, servers.kafka_bootstrap, source, sink, f"g-{test_id}",
        f"tx-{test_id}", finish_second="abort")
    assert_only_first_batch_visible(seen, committed)


async def test_transactional_check_catches_a_committed_second_batch(
    servers, topic_factory, test_id
):
    """The deliberately broken variant: commit the batch that should be aborted.

    The check above must fail on it, or the abort test proves nothing.
    """
    source = await topic_factory("txn-src")
    sink = await topic_factory("txn-sink")
    seen, committed = await asyncio.to_thread(
        run_transactional_scenario, servers.kafka_bootstrap, source, sink, f"g-{test_id}",
        f"tx-{test_id}", finish_second="commit")
    assert len(seen) == 20 and committed == 20
    with pytest.raises(AssertionError):
        assert_only_first_batch_visible(seen, committed)
