"""Keyed records land where the Java client puts them: both of the product's librdkafka
producers (the worker's OutputProducer and the adapters' AckingProducer, under RecordWriter and
the client's reporter) partition with Kafka's murmur2, like every Java, faust or aiokafka
producer of the same key — the per-key order of a topic written by several clients depends on
it."""

from __future__ import annotations

import pytest

from router_stream.adapters.kafka_io import OutRecord, RecordWriter
from router_stream.config import Settings
from router_stream.worker.rdkafka import OutputProducer
from tests.support.murmur2 import partition_of

pytestmark = pytest.mark.integration

PARTITIONS = 7
KEYS = [b"", b"a", b"hello", b"svc-1", "sender-\u00e9".encode(),
        *(f"source-{i}".encode() for i in range(40))]


async def test_the_worker_producer_partitions_keys_like_the_java_client(
        settings: Settings, topic_factory) -> None:
    topic = await topic_factory("keyed", partitions=PARTITIONS)
    producer = OutputProducer(settings, "test-partitioning")
    try:
        await producer.check_connection()
        delivered = [await producer.send(topic, b"v", key) for key in KEYS]
    finally:
        await producer.close(5.0)
    assert [d.partition for d in delivered] == [partition_of(k, PARTITIONS) for k in KEYS]


async def test_the_record_writer_partitions_keys_like_the_java_client(
        settings: Settings, topic_factory) -> None:
    topic = await topic_factory("keyed", partitions=PARTITIONS)
    async with RecordWriter(settings) as writer:
        delivered = [await writer.send_and_wait(OutRecord(topic, b"v", key)) for key in KEYS]
    assert [p for p, _ in delivered] == [partition_of(k, PARTITIONS) for k in KEYS]
