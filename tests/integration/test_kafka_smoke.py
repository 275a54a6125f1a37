"""Smoke tests proving our client stack (aiokafka, faust) works on the chosen Kafka version.

These run against the real broker from the session fixture; each test uses its own topics and
consumer group.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

pytestmark = pytest.mark.integration


async def _drain(consumer: AIOKafkaConsumer, want: int, timeout: float = 20.0) -> list[bytes]:
    """Read until ``want`` records arrived (bounded wait), return their values."""
    values: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(values) < want:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        batch = await consumer.getmany(timeout_ms=int(min(left, 1.0) * 1000))
        for records in batch.values():
            values.extend(r.value for r in records)
    return values


async def test_group_commit_and_resume(servers, topic_factory, test_id):
    topic = await topic_factory("resume", partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=servers.kafka_bootstrap)
    await producer.start()
    for i in range(10):
        await producer.send(topic, f"m{i}".encode())
    await producer.stop()

    group = f"g-{test_id}"
    first = AIOKafkaConsumer(
        topic, bootstrap_servers=servers.kafka_bootstrap, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=5,
    )
    await first.start()
    got = await _drain(first, 5)
    tp = TopicPartition(topic, 0)
    await first.commit({tp: 5})
    await first.stop()
    assert got[:5] == [f"m{i}".encode() for i in range(5)]

    second = AIOKafkaConsumer(
        topic, bootstrap_servers=servers.kafka_bootstrap, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    await second.start()
    try:
        rest = await _drain(second, 5)
    finally:
        await second.stop()
    assert rest == [f"m{i}".encode() for i in range(5, 10)]


async def test_idempotent_producer_writes_each_record_once_in_order(servers, topic_factory):
    topic = await topic_factory("idem", partitions=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=servers.kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, str(i).encode()) for i in range(500)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=servers.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        values = await _drain(consumer, 500)
    finally:
        await consumer.stop()
    assert values == [str(i).encode() for i in range(500)]


async def run_transactional_scenario(
    bootstrap: str, source: str, sink: str, group: str, txn_id: str, *, finish_second: str
) -> tuple[list[bytes], int | None]:
    """Consume-transform-produce in two transactions: the first commits, the second ends with
    ``finish_second`` ("abort" in the real test). Returns what a read_committed reader sees on the
    sink and the group's committed offset on the source."""
    feeder = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await feeder.start()
    for i in range(20):
        await feeder.send(source, f"in{i}".encode())
    await feeder.stop()

    consumer = AIOKafkaConsumer(
        source, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
        enable_auto_commit=False, isolation_level="read_committed", max_poll_records=10,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=txn_id)
    await consumer.start()
    await producer.start()
    tp = TopicPartition(source, 0)
    try:
        for txn_no, outcome in enumerate(("commit", finish_second)):
            batch = await _drain_records(consumer, tp, 10)
            await producer.begin_transaction()
            for rec in batch:
                await producer.send(sink, b"out-" + rec.value)
            await producer.send_offsets_to_transaction({tp: batch[-1].offset + 1}, group)
            if outcome == "commit":
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
            assert txn_no in (0, 1)
    finally:
        await producer.stop()
        await consumer.stop()

    reader = AIOKafkaConsumer(
        sink, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await reader.start()
    try:
        # Read everything up to the end: 20 would be visible if the abort were not honoured.
        seen = await _drain(reader, 20, timeout=8.0)
    finally:
        await reader.stop()
    checker = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await checker.start()
    try:
        committed = await checker.committed(tp)
    finally:
        await checker.stop()
    return seen, committed


async def _drain_records(consumer: AIOKafkaConsumer, tp: TopicPartition, want: int):
    out = []
    while len(out) < want:
        batch = await consumer.getmany(tp, timeout_ms=5000, max_records=want - len(out))
        assert batch, "no records arrived within 5 s"
        out.extend(batch[tp])
    return out


def assert_only_first_batch_visible(seen: list[bytes], committed: int | None) -> None:
    assert seen == [f"out-in{i}".encode() for i in range(10)], seen
    assert committed == 10


async def test_transaction_abort_stays_invisible_to_read_committed(servers, topic_factory, test_id):
    source = await topic_factory("txn-src")
    sink = await topic_factory("txn-sink")
    seen, committed = await run_transactional_scenario(
        servers.kafka_bootstrap, source, sink, f"g-{test_id}", f"tx-{test_id}",
        finish_second="abort",
    )
    assert_only_first_batch_visible(seen, committed)


async def test_transactional_check_catches_a_committed_second_batch(
    servers, topic_factory, test_id
):
    """The deliberately broken variant: commit the batch that should be aborted.

    The check above must fail on it, or the abort test proves nothing.
    """
    source = await topic_factory("txn-src")
    sink = await topic_factory("txn-sink")
    seen, committed = await run_transactional_scenario(
        servers.kafka_bootstrap, source, sink, f"g-{test_id}", f"tx-{test_id}",
        finish_second="commit",
    )
    assert len(seen) == 20 and committed == 20
    with pytest.raises(AssertionError):
        assert_only_first_batch_visible(seen, committed)
