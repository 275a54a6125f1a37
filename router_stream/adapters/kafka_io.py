"""Producing and reading plain Kafka records for operator commands (produce, tail, DLQ replay,
DLQ reindex).

Two seams, both translating aiokafka's errors into the project's error tree:

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
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError, KafkaTimeoutError

from router_stream.adapters.kafka_failures import ConnectFailures
from router_stream.config import Settings
from router_stream.errors import BrokerUnavailable, OperationTimeout, RouterError, UserError

__all__ = ["ConsumedRecord", "OutRecord", "RateLimiter", "RecordWriter",
           "group_committed_to_end", "read_at", "read_records"]

_METADATA_WAIT_S = 5.0


async def group_committed_to_end(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> bool:
    """True when the consumer's GROUP committed up to the end of every partition of ``topics``
    (a member's own positions are not enough: one that died keeps its partitions until its
    session times out). A remote call per partition; False when the broker cannot say."""
    tps = [TopicPartition(t, p) for t in topics
           for p in sorted(consumer.partitions_for_topic(t) or ())]
    try:
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            if ends[tp] > starts[tp] and (await consumer.committed(tp) or 0) < ends[tp]:
                return False
    except (KafkaError, IllegalStateError):
        return False
    return True


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


def _broker_error(settings: Settings, what: str, exc: BaseException) -> RouterError:
    if isinstance(exc, KafkaTimeoutError | asyncio.TimeoutError):
        return OperationTimeout(f"{what}: timed out talking to {settings.kafka_bootstrap}")
    if getattr(exc, "retriable", True):  # connection errors, leader moves: worth a retry
        return BrokerUnavailable(f"{what} at {settings.kafka_bootstrap}: {exc!r}")
    return RouterError(f"{what}: the broker refused it: {exc!r}")  # e.g. a record too large


async def _cluster_with(client: Any, settings: Settings, topics: Sequence[str]) -> Any:
    """Cluster metadata that lists ``topics``; a user error for a topic that does not exist.

    A topic created a moment ago may not be in the broker's metadata yet (seconds on a loaded
    machine), so a missing one is looked up again for ``_METADATA_WAIT_S`` before it is
    reported (auto-create is off).
    """
    deadline = time.monotonic() + _METADATA_WAIT_S
    while True:
        metadata = await client.fetch_all_metadata()
        missing = sorted(set(topics) - set(metadata.topics()))
        if not missing:
            return metadata
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.25)
    raise UserError(
        f"topic {', '.join(missing)} does not exist on {settings.kafka_bootstrap}"
        " (run `router-stream topics apply`, or check ROUTER_TOPIC_PREFIX)"
    )


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


class RecordWriter:
    """An idempotent, ``acks=all`` producer. Use as ``async with RecordWriter(settings) as w``.

    :meth:`send` returns once the record is queued, with a future resolving to its
    ``(partition, offset)`` when the broker acknowledged it; :meth:`send_and_wait` does both.
    """

    def __init__(self, settings: Settings, *, timeout_s: float = 30.0, linger_ms: int = 5) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(
            **settings.kafka_client_options, enable_idempotence=True, acks="all",
            request_timeout_ms=int(timeout_s * 1000), linger_ms=linger_ms,
        )
        self._checked: set[str] = set()

    async def __aenter__(self) -> RecordWriter:
        failures = ConnectFailures()
        try:
            with failures:
                await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise BrokerUnavailable(failures.describe(self._settings, exc)) from exc
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._producer.stop()

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        unknown = [t for t in topics if t not in self._checked]
        if not unknown:
            return
        try:
            await _cluster_with(self._producer.client, self._settings, unknown)
        except KafkaError as exc:
            raise _broker_error(self._settings, "cannot read cluster metadata", exc) from exc
        self._checked.update(unknown)

    async def send(self, record: OutRecord) -> asyncio.Future[tuple[int, int]]:
        """Queue one record; the returned future resolves to (partition, offset) on ack."""
        await self.ensure_topics([record.topic])
        try:
            fut = await self._producer.send(
                record.topic, record.value, key=record.key, headers=record.headers or None,
                timestamp_ms=record.timestamp_ms,
            )
        except KafkaError as exc:
            raise _broker_error(self._settings, f"cannot produce to {record.topic}", exc) from exc
        return asyncio.ensure_future(self._acked(record.topic, fut))

    async def _acked(self, topic: str, fut: Any) -> tuple[int, int]:
        try:
            meta = await fut
        except KafkaError as exc:
            raise _broker_error(self._settings, f"producing to {topic} failed", exc) from exc
        return int(meta.partition), int(meta.offset)

    async def send_and_wait(self, record: OutRecord) -> tuple[int, int]:
        return await (await self.send(record))

    def refusal(self, record: OutRecord) -> RouterError | None:
        """Why the producer would refuse ``record`` before sending it (too large), or None."""
        size = len(record.key or b"") + len(record.value or b"") + _RECORD_OVERHEAD
        for name, value in record.headers:
            size += len(name) + (len(value) if value else 0)
        limit = self._producer._max_request_size
        if size <= limit:
            return None
        return RouterError(f"cannot produce to {record.topic}: the record is about {size} bytes,"
                           f" over the {limit}-byte request limit")

    async def send_many(self, records: Sequence[OutRecord]) -> list[asyncio.Future[None]]:
        """Queue ``records`` in as few batches as they fit in, in order within each partition
        (partitioned by key as :meth:`send` does, at a fraction of its per-record cost); returns
        for each record the future of its batch, resolving when the broker acknowledged it.
        Check :meth:`refusal` first: a record too large fails its whole batch."""
        producer = self._producer
        topics = sorted({r.topic for r in records})
        await self.ensure_topics(topics)
        try:
            for topic in topics:
                await producer.partitions_for(topic)  # the partitioner needs them known
        except KafkaError as exc:
            raise _broker_error(self._settings, "cannot read cluster metadata", exc) from exc
        open_batches: dict[tuple[str, int], tuple[Any, list[int]]] = {}
        sent: dict[int, asyncio.Future[None]] = {}

        async def submit(where: tuple[str, int]) -> None:
            batch, members = open_batches.pop(where)
            future = await self._send_batch(batch, *where)
            for i in members:
                sent[i] = future

        for i, record in enumerate(records):
            where = (record.topic, producer._partition(record.topic, None, record.key,
                                                       record.value, record.key, record.value))
            while True:
                if where not in open_batches:
                    open_batches[where] = (producer.create_batch(), [])
                batch, members = open_batches[where]
                if batch.append(timestamp=record.timestamp_ms, key=record.key,
                                value=record.value, headers=record.headers or []) is not None:
                    members.append(i)
                    break
                await submit(where)  # full: send it, the record opens the next one
        for where in list(open_batches):
            await submit(where)
        return [sent[i] for i in range(len(records))]

    async def _send_batch(self, batch: Any, topic: str, partition: int
                          ) -> asyncio.Future[None]:
        try:
            fut = await self._producer.send_batch(batch, topic, partition=partition)
        except KafkaError as exc:
            raise _broker_error(self._settings, f"cannot produce to {topic}", exc) from exc
        return asyncio.ensure_future(self._batch_acked(topic, fut))

    async def _batch_acked(self, topic: str, fut: Any) -> None:
        try:
            await fut
        except KafkaError as exc:
            raise _broker_error(self._settings, f"producing to {topic} failed", exc) from exc


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
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    failures = ConnectFailures()
    try:
        try:
            with failures:
                await consumer.start()
        except KafkaError as exc:
            raise BrokerUnavailable(failures.describe(settings, exc)) from exc
        # One metadata fetch answers both "does it exist" and "which partitions" (the public
        # consumer.topics() returns names only and leaves the client's metadata unchanged).
        metadata = await _cluster_with(consumer._client, settings, [topic])
        partitions = [TopicPartition(topic, p)
                      for p in sorted(metadata.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        ends = await consumer.end_offsets(partitions) if until_end else {}
        async for record in _fetch(consumer, partitions, ends, until_end, max_records,
                                   idle_timeout_s):
            yield record
    except KafkaError as exc:
        raise _broker_error(settings, f"cannot read {topic}", exc) from exc
    finally:
        await consumer.stop()


async def _fetch(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], ends: dict[TopicPartition, int],
    until_end: bool, max_records: int | None, idle_timeout_s: float | None,
) -> AsyncIterator[ConsumedRecord]:
    seen = 0
    last = time.monotonic()
    while True:
        if until_end and all([await consumer.position(tp) >= ends[tp] for tp in partitions]):
            return
        if max_records is not None and seen >= max_records:
            return
        if idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
            return
        batches = await consumer.getmany(timeout_ms=200, max_records=500)
        for tp_records in batches.values():
            for r in tp_records:
                if until_end and r.offset >= ends[TopicPartition(r.topic, r.partition)]:
                    continue
                if max_records is not None and seen >= max_records:
                    return
                seen += 1
                last = time.monotonic()
                yield ConsumedRecord(r.topic, r.partition, r.offset, r.key, r.value,
                                     r.timestamp, list(r.headers or ()))


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
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    failures = ConnectFailures()
    try:
        try:
            with failures:
                await consumer.start()
        except KafkaError as exc:
            raise BrokerUnavailable(failures.describe(settings, exc)) from exc
        metadata = await _cluster_with(consumer._client, settings, [topic])
        existing = metadata.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + timeout_s
        for partition in sorted(p for p in wanted if p in existing):
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            first = (await consumer.beginning_offsets([tp]))[tp]
            end = (await consumer.end_offsets([tp]))[tp]
            offsets = sorted(o for o in wanted[partition] if first <= o < end)
            await _read_offsets(consumer, tp, offsets, end, found, deadline, settings)
    except KafkaError as exc:
        raise _broker_error(settings, f"cannot read {topic}", exc) from exc
    finally:
        await consumer.stop()
    return found


async def _read_offsets(consumer: AIOKafkaConsumer, tp: TopicPartition, offsets: list[int],
                        end: int, found: dict[tuple[int, int], ConsumedRecord], deadline: float,
                        settings: Settings) -> None:
    """Seek to each wanted offset not yet seen and read until the fetch passes it."""
    wanted = set(offsets)
    for offset in offsets:
        if (tp.partition, offset) in found:
            continue
        consumer.seek(tp, offset)
        while await consumer.position(tp) <= offset < end:
            if time.monotonic() > deadline:
                raise OperationTimeout(f"reading {tp.topic}[{tp.partition}] at offset {offset}:"
                                       f" timed out talking to {settings.kafka_bootstrap}")
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=500)
            for r in batch.get(tp, ()):
                if r.offset in wanted:
                    found[(r.partition, r.offset)] = ConsumedRecord(
                        r.topic, r.partition, r.offset, r.key, r.value, r.timestamp,
                        list(r.headers or ()))
