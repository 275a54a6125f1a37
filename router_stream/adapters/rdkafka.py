"""librdkafka (confluent-kafka) clients from asyncio: one thread per client, connecting with a
one-line reason when it cannot, and cluster metadata that lists the topics asked for.

A confluent-kafka client's calls block and the client is not safe to call from two threads at
once (a consumer's ``consume`` and ``close``), so :class:`ClientThread` runs every blocking call
of one client, in order, on its own thread; the event loop awaits them. Producing is the
exception: ``Producer.produce`` is thread-safe and does not block, so it is called inline.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin._metadata import ClusterMetadata

from router_stream.adapters.kafka_failures import RdkafkaLog, describe_rdkafka, rdkafka_error
from router_stream.config import Settings
from router_stream.errors import BrokerUnavailable, UserError

__all__ = ["AckingProducer", "ClientThread", "Offsets", "RecordSender", "client_config",
           "cluster_with", "connect", "end_offsets", "group_committed_to_end",
           "only_markers_between", "reader", "watermarks"]

T = TypeVar("T")

METADATA_WAIT_S = 5.0
_CONNECT_STEP_S = 0.25
_POLL_S = 0.1


class RecordSender(Protocol):
    """A producer that hands one record over at once and returns what resolves on its
    acknowledgement; both raise :class:`KafkaException` (the worker's
    :class:`~router_stream.worker.rdkafka.OutputProducer`)."""

    def send(self, topic: str, value: bytes | None, key: bytes | None = None) -> Awaitable[Any]:
        ...


class ClientThread:
    """Runs one client's blocking calls in order on one thread: ``await thread.run(f, *args)``."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        """Lets the thread end after the call it runs (a bounded one: every call has a timeout)."""
        self._pool.shutdown(wait=False)


class AckingProducer:
    """A librdkafka Producer whose acknowledgements settle asyncio futures: a thread polls it
    for them (``start``), ``stop`` ends that thread and flushes. Keyed records are partitioned
    with Kafka's murmur2 (``murmur2_random``), as the Java client and the worker's producer do,
    not with librdkafka's own default (CRC32)."""

    def __init__(self, config: dict[str, Any], thread: ClientThread) -> None:
        self.producer = Producer({"partitioner": "murmur2_random", **config})
        self._thread = thread
        self._polling = threading.Event()
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        self._polling.set()
        self._poller = threading.Thread(target=self._poll, name="producer-acks", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while self._polling.is_set():
            self.producer.poll(_POLL_S)

    async def stop(self, timeout_s: float) -> int:
        """Stop polling and flush; returns how many records were left unacknowledged."""
        self._polling.clear()
        if self._poller is not None:
            await self._thread.run(self._poller.join)
            self._poller = None
        return await self._thread.run(self.producer.flush, timeout_s)

    async def produce(self, topic: str, value: bytes | None, *, key: bytes | None = None,
                      headers: list[tuple[str, bytes | None]] | None = None,
                      timestamp_ms: int | None = None) -> asyncio.Future[Message]:
        """Queue one record (waiting while librdkafka's queue is full); the future resolves to
        the acknowledged message or fails with its :class:`KafkaException`. Raises what
        ``produce`` raises at once (an unknown topic, a record too large)."""
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[Message] = loop.create_future()

        def delivered(err: KafkaError | None, msg: Message) -> None:  # on the poller's thread
            loop.call_soon_threadsafe(_settle, acked, err, msg)

        options: dict[str, Any] = {"key": key, "on_delivery": delivered}
        if headers:
            options["headers"] = headers
        if timestamp_ms is not None:
            options["timestamp"] = timestamp_ms
        while True:
            try:
                self.producer.produce(topic, value, **options)
                return acked
            except BufferError:  # the local queue is full: acknowledgements drain it
                await asyncio.sleep(_POLL_S / 10)


def _settle(acked: asyncio.Future[Message], err: KafkaError | None, msg: Message) -> None:
    if acked.done():
        return
    if err is not None:
        acked.set_exception(KafkaException(err))
    else:
        acked.set_result(msg)


def client_config(settings: Settings, log: RdkafkaLog, **role: object) -> dict[str, Any]:
    """``Settings.librdkafka_config`` plus the client's role keys and ``log`` as its logger."""
    return {**settings.librdkafka_config, **role, **log.config()}


def reader(settings: Settings, log: RdkafkaLog, *, from_beginning: bool = True,
           client_id: str = "router-stream-reader", fetch_wait_ms: int | None = None,
           fetch_min_bytes: int | None = None) -> Consumer:
    """A consumer that is only ever assigned partitions: librdkafka requires a group id, but
    this one is never joined and nothing is committed. ``fetch_wait_ms``: how long a fetch
    waits at the broker for records (``fetch.wait.max.ms``, default 500) — a reader that
    re-assigns partitions waits that long for each, since a newly assigned partition is
    fetched only after the fetch in flight returns. ``fetch_min_bytes``: how much a fetch
    waits for (``fetch.min.bytes``, default 1: it is answered at the first record)."""
    role: dict[str, object] = {
        "group.id": f"router-stream-reader-{uuid.uuid4().hex}",
        "enable.auto.commit": False, "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "client.id": client_id,
    }
    if fetch_wait_ms is not None:
        role["fetch.wait.max.ms"] = fetch_wait_ms
    if fetch_min_bytes is not None:
        role["fetch.min.bytes"] = fetch_min_bytes
    return Consumer(client_config(settings, log, **role))


async def connect(thread: ClientThread, client: Any, log: RdkafkaLog, settings: Settings,
                  *, timeout_s: float = 10.0) -> ClusterMetadata:
    """The cluster's metadata once ``client`` reached a broker; :class:`BrokerUnavailable`
    with the reason in one line once every broker failed (refused, TLS, credentials) or after
    ``timeout_s``. ``client`` is a Producer, Consumer or AdminClient: all have ``poll``, which
    delivers the reasons to ``log``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await thread.run(client.list_topics, None, _CONNECT_STEP_S)
        except KafkaException as exc:
            await thread.run(client.poll, 0)
            if log.gave_up or time.monotonic() >= deadline:
                raise BrokerUnavailable(describe_rdkafka(settings, log, _text(exc))) from exc


def _text(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)


async def cluster_with(thread: ClientThread, client: Any, settings: Settings,
                       topics: Sequence[str]) -> ClusterMetadata:
    """Cluster metadata that lists ``topics``; a user error for a topic that does not exist.

    A topic created a moment ago may not be in the broker's metadata yet (seconds on a loaded
    machine), so a missing one is looked up again for ``METADATA_WAIT_S`` before it is
    reported (auto-create is off).
    """
    deadline = time.monotonic() + METADATA_WAIT_S
    while True:
        try:
            metadata: ClusterMetadata = await thread.run(client.list_topics, None, 10.0)
        except KafkaException as exc:
            raise rdkafka_error(settings, "cannot read cluster metadata", exc) from exc
        missing = sorted(t for t in topics if t not in metadata.topics
                         or metadata.topics[t].error is not None)
        if not missing:
            return metadata
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.25)
    raise UserError(
        f"topic {', '.join(missing)} does not exist on {settings.kafka_bootstrap}"
        " (run `router-stream topics apply`, or check ROUTER_TOPIC_PREFIX)"
    )


_NOT_READY_YET = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC})
"""What a broker answers about a partition created a moment ago, until its leader is known
(seconds on a loaded machine). The errors of synchronous calls carry no ``retriable()`` flag,
so the codes are named."""


async def watermarks(thread: ClientThread, consumer: Consumer, tp: TopicPartition,
                     timeout_s: float = METADATA_WAIT_S) -> tuple[int, int]:
    """A partition's (low, high) watermarks, asked again for ``timeout_s`` while the partition
    is not ready yet (:data:`_NOT_READY_YET`); that error is raised after ``timeout_s``, any
    other at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = await thread.run(consumer.get_watermark_offsets, tp, 10.0)
            return low, high
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not isinstance(err, KafkaError) or err.code() not in _NOT_READY_YET or (
                    time.monotonic() >= deadline):
                raise
        await asyncio.sleep(0.25)


Offsets = dict[tuple[str, int], int]
"""An offset per (topic, partition)."""


async def group_committed_to_end(thread: ClientThread, consumer: Consumer,
                                 topics: Sequence[str], until: Offsets | None = None,
                                 settings: Settings | None = None) -> bool:
    """True when the consumer's GROUP committed up to the end of every partition of ``topics``
    (a member's own positions are not enough: one that died keeps its partitions until its
    session times out) — or, given ``until``, up to those offsets (a fixed target while others
    keep producing). Remote calls, made in one turn of the client's thread (not one turn
    each, behind the consumer's fetches); False when the broker cannot say.

    With ``settings``, a partition committed short of its target still counts as done when
    nothing but transaction markers lies between (:func:`only_markers_between`)."""
    try:
        behind = await thread.run(_behind, consumer, topics, until)
        if not behind or settings is None:
            return not behind
        return await thread.run(only_markers_between, settings, behind)
    except KafkaException:
        return False


async def end_offsets(thread: ClientThread, consumer: Consumer,
                      topics: Sequence[str]) -> Offsets | None:
    """The end offset of every partition of ``topics`` now; None when the broker cannot say."""
    try:
        return await thread.run(_end_offsets, consumer, topics)
    except KafkaException:
        return None


Ranges = dict[tuple[str, int], tuple[int, int]]
"""(topic, partition) -> [from, to) offsets."""


def _partitions(consumer: Consumer, topics: Sequence[str]) -> list[TopicPartition]:
    listed = consumer.list_topics(None, 10.0).topics
    return [TopicPartition(t, p) for t in topics if t in listed
            for p in sorted(listed[t].partitions)]


def _end_offsets(consumer: Consumer, topics: Sequence[str]) -> Offsets:
    return {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, 10.0)[1]
            for tp in _partitions(consumer, topics)}


def _behind(consumer: Consumer, topics: Sequence[str], until: Offsets | None) -> Ranges:
    """The partitions of ``topics`` whose group offset is short of their target (their end, or
    ``until``): [committed, target)."""
    tps = _partitions(consumer, topics)
    committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, 10.0)}
    behind: Ranges = {}
    for tp in tps:
        key = (tp.topic, tp.partition)
        start, end = consumer.get_watermark_offsets(tp, 10.0)
        target = end if until is None else min(end, until.get(key, start))
        if target > start and committed[key] < target:  # none: a negative offset
            behind[key] = (max(start, committed[key]), target)
    return behind


def only_markers_between(settings: Settings, ranges: Ranges, timeout_s: float = 10.0) -> bool:
    """True when a read_committed consumer finds no record in any of ``ranges``: what lies there
    are the commit markers (and aborted records) of transactions — an exactly_once worker's
    outputs end with one, one offset past the last record a consumer commits. Blocking; False
    when the reading takes longer than ``timeout_s``."""
    probe = Consumer(client_config(settings, RdkafkaLog(), **{
        "group.id": f"router-stream-probe-{uuid.uuid4().hex}", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "isolation.level": "read_committed",
        "enable.partition.eof": True}))
    try:
        probe.assign([TopicPartition(t, p, first) for (t, p), (first, _) in ranges.items()])
        left = set(ranges)
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            m = probe.poll(_POLL_S)
            if m is not None and m.error() is None and m.offset() < ranges[  # type: ignore[operator]
                    (m.topic(), m.partition())][1]:  # type: ignore[index]
                return False  # a record
            for tp in probe.position([TopicPartition(t, p) for t, p in left]):
                if tp.offset >= ranges[(tp.topic, tp.partition)][1]:
                    left.discard((tp.topic, tp.partition))
        return not left
    finally:
        probe.close()
