"""Producing and reading plain Kafka records for operator commands (produce, tail, DLQ replay,
DLQ reindex).

Seams on confluent-kafka (librdkafka) clients, translating its errors into the project's error
tree (:mod:`router_stream.adapters.kafka_failures`):

* :class:`RecordWriter` — an idempotent producer with ``acks=all``: a record counts as sent only
  once the broker acknowledged it (what ``dlq replay`` needs before it marks an entry replayed).
* :func:`read_records` — a group-less reader that assigns every partition of a topic and reads
  from the beginning or the end, stopping at the end offsets seen at start (``until_end``, what
  ``dlq reindex`` needs), after ``max_records``, or after ``idle_timeout_s`` without a record.
* :func:`read_at` — the records at given (partition, offset) positions of a topic, what
  ``dlq replay`` needs for an entry whose bytes are masked in Postgres.

A topic that does not exist is a :class:`~router_stream.errors.UserError` (exit code 1: a typo or
a missing ``topics apply``); an unreachable broker is
:class:`~router_stream.errors.BrokerUnavailable` (exit code 2).
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from router_stream.adapters.kafka_failures import RdkafkaLog, rdkafka_error
from router_stream.adapters.rdkafka import (
    AckingProducer,
    ClientThread,
    client_config,
    cluster_with,
    connect,
    reader,
    watermarks,
)
from router_stream.config import Settings
from router_stream.errors import OperationTimeout, RouterError, UserError

__all__ = ["MAX_MESSAGE_BYTES", "ConsumedRecord", "OutRecord", "RateLimiter", "RecordWriter",
           "consumed_record", "fetch", "fetch_messages", "read_at", "read_records"]


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to produce; ``timestamp_ms`` None lets the producer stamp it."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """A record as read; satisfies :class:`router_stream.core.models.InboundRecord`."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: list[tuple[str, bytes]]  # a null header value arrives as None despite the hint
    timestamp_type: int = -1  # as the Kafka protocol numbers it: 0 CreateTime, 1 LogAppendTime
    unreadable_headers: str | None = None
    """Why the record's headers could not be read (then ``headers`` is empty), or None."""


class RateLimiter:
    """Paces calls to at most ``rate`` per second (None: unlimited), without bursts."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise UserError("--rate must be a positive number of records per second")
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._next = time.monotonic()

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(self._next, now) + self._interval


_RECORD_OVERHEAD = 128  # a record's framing and its batch's header, generously
MAX_MESSAGE_BYTES = 1_048_576  # the producer's limit on one record (librdkafka message.max.bytes)
# read_at assigns one position after another, and each waits for the fetch in flight: up to
# fetch.wait.max.ms (librdkafka's default 500 ms) when the other partitions are at their end
READ_AT_FETCH_WAIT_MS = 10


class RecordWriter:
    """An idempotent, ``acks=all`` producer. Use as ``async with RecordWriter(settings) as w``.

    :meth:`send` returns once the record is queued, with a future resolving to its
    ``(partition, offset)`` when the broker acknowledged it; :meth:`send_and_wait` does both.
    """

    def __init__(self, settings: Settings, *, timeout_s: float = 30.0, linger_ms: int = 5) -> None:
        self._settings = settings
        self._timeout_s = timeout_s
        self._log = RdkafkaLog()
        self._thread = ClientThread("record-writer")
        self._acking = AckingProducer(client_config(
            settings, self._log, **{
                "enable.idempotence": True, "acks": "all", "linger.ms": linger_ms,
                "request.timeout.ms": int(timeout_s * 1000),
                "message.timeout.ms": int(timeout_s * 1000),
                "message.max.bytes": MAX_MESSAGE_BYTES,
            }), self._thread)
        self._producer = self._acking.producer
        self._checked: set[str] = set()

    async def __aenter__(self) -> RecordWriter:
        try:
            await connect(self._thread, self._producer, self._log, self._settings)
        except BaseException:
            self._thread.close()
            raise
        self._acking.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await self._acking.stop(self._timeout_s)
        finally:
            self._thread.close()

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        unknown = [t for t in topics if t not in self._checked]
        if not unknown:
            return
        await cluster_with(self._thread, self._producer, self._settings, unknown)
        self._checked.update(unknown)

    async def send(self, record: OutRecord) -> asyncio.Future[tuple[int, int]]:
        """Queue one record; the returned future resolves to (partition, offset) on ack."""
        await self.ensure_topics([record.topic])
        return await self._produce(record)

    async def _produce(self, record: OutRecord) -> asyncio.Future[tuple[int, int]]:
        try:
            acked = await self._acking.produce(
                record.topic, record.value, key=record.key, headers=record.headers,
                timestamp_ms=record.timestamp_ms)
        except KafkaException as exc:
            raise rdkafka_error(self._settings, f"cannot produce to {record.topic}",
                                exc) from exc
        return asyncio.ensure_future(self._position(record.topic, acked))

    async def _position(self, topic: str, acked: asyncio.Future[Message]) -> tuple[int, int]:
        try:
            msg = await acked
        except KafkaException as exc:
            raise rdkafka_error(self._settings, f"producing to {topic} failed", exc) from exc
        return int(msg.partition() or 0), int(msg.offset() or 0)

    async def send_and_wait(self, record: OutRecord) -> tuple[int, int]:
        return await (await self.send(record))

    def refusal(self, record: OutRecord) -> RouterError | None:
        """Why the producer would refuse ``record`` before sending it (too large), or None."""
        size = len(record.key or b"") + len(record.value or b"") + _RECORD_OVERHEAD
        for name, value in record.headers:
            size += len(name) + (len(value) if value else 0)
        if size <= MAX_MESSAGE_BYTES:
            return None
        return RouterError(f"cannot produce to {record.topic}: the record is about {size} bytes,"
                           f" over the {MAX_MESSAGE_BYTES}-byte request limit")

    async def send_many(self, records: Sequence[OutRecord]) -> list[asyncio.Future[None]]:
        """Queue ``records`` in order (librdkafka batches them, partitioned by key as
        :meth:`send` does); returns each record's future, resolving when the broker
        acknowledged it. Check :meth:`refusal` first."""
        await self.ensure_topics(sorted({r.topic for r in records}))
        return [asyncio.ensure_future(_acked_only(await self._produce(r))) for r in records]


async def _acked_only(acked: asyncio.Future[tuple[int, int]]) -> None:
    await acked


_TIMESTAMP_TYPES = {TIMESTAMP_CREATE_TIME: 0, TIMESTAMP_LOG_APPEND_TIME: 1}
"""confluent-kafka's timestamp types as the Kafka protocol (and ``ConsumedRecord``) number them."""


def consumed_record(msg: Message, read: tuple[Any, str | None] | None = None
                    ) -> ConsumedRecord:
    """A librdkafka message (one without an error) as a :class:`ConsumedRecord`; ``read``: what
    :func:`message_headers` returned for it, when the caller read the headers already."""
    headers, unreadable = message_headers(msg) if read is None else read
    kind, ts = msg.timestamp()
    return ConsumedRecord(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0),
                          msg.key(), msg.value(), ts, headers, _TIMESTAMP_TYPES.get(kind, -1),
                          unreadable)


_read_headers = operator.methodcaller("headers")
"""``msg.headers()`` through the generic call protocol, which checks the result: confluent-kafka
returns a header list with the decode error of a name after the first still set, and Python
3.11's specialised method call does not check for that, so the error would surface at some
later call."""


def message_headers(msg: Message) -> tuple[Any, str | None]:
    """A message's headers as a list of (str, bytes | None) pairs, or none and why they cannot
    be read. confluent-kafka decodes every header name as UTF-8 and fails on one that is not,
    which any producer but a Python one can write; the record's key and value stay readable.
    A name after the first fails as a ``SystemError`` caused by the decode error. Ask once per
    message: after the error the message holds a part-built list, which a second call returns
    as if it were whole (and reading its empty slot crashes the process)."""
    try:
        return list(_read_headers(msg) or ()), None
    except (UnicodeDecodeError, SystemError) as exc:
        cause = exc if isinstance(exc, UnicodeDecodeError) else exc.__cause__
        if not isinstance(cause, UnicodeDecodeError):
            raise
        return [], (f"a header name is not UTF-8 ({cause.reason} at byte {cause.start}): the "
                    "record's headers cannot be read")


def _first_then_ready(consumer: Consumer, max_records: int, timeout_s: float) -> list[Message]:
    """Up to ``max_records``, waiting for the first one only (``consume(n, t)`` waits all of
    ``t`` unless ``n`` records arrive): a part-filled batch returns at once."""
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    return [first, *consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]


async def fetch(thread: ClientThread, consumer: Consumer, max_records: int, timeout_s: float,
                log: logging.Logger) -> list[ConsumedRecord]:
    """One fetch of a long-running consumer. A partition's error is logged on ``log``, not
    raised: librdkafka retries on its own, and the other partitions go on."""
    return [consumed_record(m) for m in
            await fetch_messages(thread, consumer, max_records, timeout_s, log)]


async def fetch_messages(thread: ClientThread, consumer: Consumer, max_records: int,
                         timeout_s: float, log: logging.Logger) -> list[Message]:
    """:func:`fetch`, the records as librdkafka's messages (what a reader that needs a few
    fields of each of many records reads, without building a :class:`ConsumedRecord`)."""
    messages = []
    for msg in await thread.run(_first_then_ready, consumer, max_records, timeout_s):
        err = msg.error()
        if err is None:
            messages.append(msg)
        elif err.code() != KafkaError._PARTITION_EOF:
            log.warning("reading %s[%s] failed: %s", msg.topic(), msg.partition(), err.str())
    return messages


async def _messages(thread: ClientThread, consumer: Consumer, settings: Settings, topic: str,
                    timeout_s: float) -> list[Message]:
    """One fetch's records; a partition's error (a topic deleted, ...) is raised translated."""
    batch = await thread.run(_first_then_ready, consumer, 500, timeout_s)
    for msg in batch:
        err = msg.error()
        if err is not None and err.code() != KafkaError._PARTITION_EOF:
            raise rdkafka_error(settings, f"cannot read {topic}", err)
    return [m for m in batch if m.error() is None]


async def read_records(
    settings: Settings,
    topic: str,
    *,
    from_beginning: bool = True,
    until_end: bool = False,
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
) -> AsyncIterator[ConsumedRecord]:
    """Records of every partition of ``topic``, without a consumer group (nothing committed).

    Stops after ``max_records``; with ``until_end`` once every partition reached the end offset
    it had when reading started (a bounded read of what is there now); with ``idle_timeout_s``
    after that long without a new record. With none of them it follows the topic forever.
    """
    log = RdkafkaLog()
    consumer = reader(settings, log, from_beginning=from_beginning)
    thread = ClientThread("record-reader")
    try:
        await connect(thread, consumer, log, settings)
        metadata = await cluster_with(thread, consumer, settings, [topic])
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        partitions = [TopicPartition(topic, p, start)
                      for p in sorted(metadata.topics[topic].partitions)]
        ends: dict[int, int] = {}
        if until_end:
            for tp in partitions:
                _, ends[tp.partition] = await watermarks(thread, consumer, tp)
        await thread.run(consumer.assign, partitions)
        async for record in _fetch(thread, consumer, settings, topic, ends, until_end,
                                   max_records, idle_timeout_s):
            yield record
    except KafkaException as exc:
        raise rdkafka_error(settings, f"cannot read {topic}", exc) from exc
    finally:
        await _close(thread, consumer)


async def _close(thread: ClientThread, consumer: Consumer) -> None:
    try:
        await asyncio.shield(thread.run(consumer.close))
    finally:
        thread.close()


async def _fetch(
    thread: ClientThread, consumer: Consumer, settings: Settings, topic: str,
    ends: dict[int, int], until_end: bool, max_records: int | None, idle_timeout_s: float | None,
) -> AsyncIterator[ConsumedRecord]:
    seen = 0
    last = time.monotonic()
    while True:
        if until_end and await _reached(thread, consumer, topic, ends):
            return
        if max_records is not None and seen >= max_records:
            return
        if idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
            return
        for msg in await _messages(thread, consumer, settings, topic, 0.2):
            if until_end and int(msg.offset() or 0) >= ends[int(msg.partition() or 0)]:
                continue
            if max_records is not None and seen >= max_records:
                return
            seen += 1
            last = time.monotonic()
            yield consumed_record(msg)


async def _reached(thread: ClientThread, consumer: Consumer, topic: str,
                   ends: dict[int, int]) -> bool:
    """Every partition's fetch position is at its end offset of the start (an empty partition
    is there from the start; a position not known yet means not yet)."""
    waiting = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
    if not waiting:
        return True
    positions = await thread.run(consumer.position, waiting)
    return all(tp.offset >= ends[tp.partition] for tp in positions)


async def read_at(
    settings: Settings, topic: str, positions: Sequence[tuple[int, int]], *,
    timeout_s: float = 60.0,
) -> dict[tuple[int, int], ConsumedRecord]:
    """The records of ``topic`` at ``positions`` ((partition, offset) pairs), by position.

    A position that is not there — before the partition's first offset (retention deleted it),
    at or past its end, removed by compaction, in a partition the topic does not have — is
    simply absent from the result: the caller says what that means. Offsets close together
    cost one fetch (a fetch returns up to 500 consecutive records); each gap is one seek.
    """
    wanted: dict[int, set[int]] = {}
    for partition, offset in positions:
        wanted.setdefault(partition, set()).add(offset)
    found: dict[tuple[int, int], ConsumedRecord] = {}
    if not wanted:
        return found
    log = RdkafkaLog()
    consumer = reader(settings, log, from_beginning=True, fetch_wait_ms=READ_AT_FETCH_WAIT_MS)
    thread = ClientThread("record-reader")
    try:
        await connect(thread, consumer, log, settings)
        metadata = await cluster_with(thread, consumer, settings, [topic])
        existing = metadata.topics[topic].partitions
        deadline = time.monotonic() + timeout_s
        for partition in sorted(p for p in wanted if p in existing):
            first, end = await watermarks(thread, consumer, TopicPartition(topic, partition))
            offsets = sorted(o for o in wanted[partition] if first <= o < end)
            await _read_offsets(thread, consumer, TopicPartition(topic, partition), offsets,
                                end, found, deadline, settings)
    except KafkaException as exc:
        raise rdkafka_error(settings, f"cannot read {topic}", exc) from exc
    finally:
        await _close(thread, consumer)
    return found


async def _read_offsets(thread: ClientThread, consumer: Consumer, tp: TopicPartition,
                        offsets: list[int], end: int, found: dict[tuple[int, int], ConsumedRecord],
                        deadline: float, settings: Settings) -> None:
    """Assign the partition at each wanted offset not yet seen and read until the fetch passes
    it (a compacted-away offset is passed without a record)."""
    wanted = set(offsets)
    for offset in offsets:
        if (tp.partition, offset) in found:
            continue
        await thread.run(consumer.assign, [TopicPartition(tp.topic, tp.partition, offset)])
        position = offset
        while position <= offset < end:
            if time.monotonic() > deadline:
                raise OperationTimeout(f"reading {tp.topic}[{tp.partition}] at offset {offset}:"
                                       f" timed out talking to {settings.kafka_bootstrap}")
            for msg in await _messages(thread, consumer, settings, tp.topic, 0.5):
                record = consumed_record(msg)
                if record.offset in wanted:
                    found[(record.partition, record.offset)] = record
            [now] = await thread.run(consumer.position, [tp])
            position = max(position, now.offset)
