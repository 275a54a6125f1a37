"""How a librdkafka message becomes a ConsumedRecord: headers that cannot be read, and the
timestamp type in the Kafka protocol's numbering."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    TIMESTAMP_NOT_AVAILABLE,
)

from router_stream.adapters.kafka_io import consumed_record, message_headers
from router_stream.core.wire import dlq_context


class FakeMessage:
    """What consumed_record reads of a confluent_kafka.Message."""

    def __init__(self, headers: Any = None, timestamp: tuple[int, int] = (1, 1_800_000_000_000),
                 raises: BaseException | None = None) -> None:
        self._headers, self._timestamp, self._raises = headers, timestamp, raises

    def topic(self) -> str:
        return "signals"

    def partition(self) -> int:
        return 3

    def offset(self) -> int:
        return 42

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"{}"

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp

    def headers(self) -> Any:
        if self._raises is not None:
            raise self._raises
        return self._headers


def _undecodable() -> UnicodeDecodeError:
    return UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")


def _system_error_from_decode() -> SystemError:
    """What confluent-kafka raises when a name after the first cannot be decoded."""
    try:
        try:
            raise _undecodable()
        except UnicodeDecodeError as cause:
            raise SystemError("<method 'headers'> returned a result with an exception set"
                              ) from cause
    except SystemError as exc:
        return exc


def test_readable_headers_come_as_a_list_of_pairs() -> None:
    rec = consumed_record(FakeMessage([("a", b"1"), ("b", None)]))
    assert rec.headers == [("a", b"1"), ("b", None)] and rec.unreadable_headers is None
    assert consumed_record(FakeMessage(None)).headers == []


@pytest.mark.parametrize("error", [_undecodable(), _system_error_from_decode()])
def test_a_header_name_that_is_not_utf8_leaves_the_record_readable_without_headers(
        error: BaseException) -> None:
    rec = consumed_record(FakeMessage(raises=error))
    assert (rec.key, rec.value, rec.offset, rec.headers) == (b"k", b"{}", 42, [])
    assert rec.unreadable_headers is not None
    assert "header name is not UTF-8 (invalid start byte at byte 0)" in rec.unreadable_headers


def test_any_other_error_reading_headers_is_raised() -> None:
    with pytest.raises(SystemError):
        message_headers(FakeMessage(raises=SystemError("something else")))


@pytest.mark.parametrize("kind, expected, header", [
    (TIMESTAMP_CREATE_TIME, 0, "CreateTime"), (TIMESTAMP_LOG_APPEND_TIME, 1, "LogAppendTime"),
    (TIMESTAMP_NOT_AVAILABLE, -1, None)])
def test_the_timestamp_type_is_numbered_as_kafka_does_and_reaches_dlq_headers(
        kind: int, expected: int, header: str | None) -> None:
    rec = consumed_record(FakeMessage([], timestamp=(kind, 1_800_000_000_000)))
    assert rec.timestamp_type == expected
    assert dlq_context(rec, "g").timestamp_type == header


_PROJECTION_ON_A_RAW_HEADER_NAME = """
import asyncio, sys, time
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, Producer
from router_stream.core.redaction import DEFAULT_REDACTOR
from router_stream.projection.metrics import ProjectionMetrics
from router_stream.projection.service import Fetched, Projection

class RawName(str):  # the pure-Python record builder writes a header name as name.encode()
    def encode(self, *args, **kwargs):
        return b"\\xff\\xfe-name"

mock = Producer({"test.mock.num.brokers": 1, "log_level": 0})  # librdkafka's, in process
broker = next(iter(mock.list_topics(timeout=10).brokers.values()))
bootstrap = f"{broker.host}:{broker.port}"

async def produce():
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1)
    await producer.start()
    try:
        await producer.send_and_wait("router.dlq", b"{}", key=b"k", partition=0, headers=[
            ("x-dlq-reason", b"invalid_json"), ("x-ok", b"1"), (RawName("x"), b"v")])
    finally:
        await producer.stop()

asyncio.run(produce())
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "g", "log_level": 0,
                     "auto.offset.reset": "earliest"})
consumer.subscribe(["router.dlq"])
msg, deadline = None, time.time() + 30
while msg is None and time.time() < deadline:
    m = consumer.poll(0.5)
    msg = m if m is not None and m.error() is None else None
projection = Projection.__new__(Projection)  # what _build reads of it
projection._topics = {"router.dlq": "dlq"}
projection.redactor, projection.metrics, projection.skipped = (
    DEFAULT_REDACTOR, ProjectionMetrics(), [])
projection._build(Fetched(), [msg], traced=True)
print("skipped", projection.skipped)
"""


def test_the_projection_traced_survives_a_record_whose_headers_cannot_be_read() -> None:
    """With tracing on, the projection read a router.dlq record's headers twice; the second read
    returned confluent-kafka's part-built list, and reading its empty slot killed the process
    (SIGSEGV) at every restart. A process of its own (a crash must not take pytest along), on
    librdkafka's in-process mock cluster."""
    done = subprocess.run([sys.executable, "-c", _PROJECTION_ON_A_RAW_HEADER_NAME],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped ['router.dlq/0/0']" in done.stdout
