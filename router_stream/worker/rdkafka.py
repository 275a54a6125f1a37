"""The worker's signal consumer and output producer on librdkafka (confluent-kafka), bridged to
asyncio. The client's types stay in here: the hot path sees :class:`Partition` keys,
:class:`~router_stream.adapters.kafka_io.ConsumedRecord` records and asyncio futures.

Threads, and why:

- **consumer thread** (one, running a queue of calls): every call into the consumer runs there,
  because confluent-kafka serialises them — a call from another thread waits until a ``poll`` in
  progress returns, and until a rebalance callback returns (measured: ``assignment`` 3.7 s behind
  a 4 s poll; during a callback ``assignment``, ``commit``, ``committed`` and ``pause`` alike).
  ``poll`` blocks for the first record (up to :data:`IDLE_WAIT_S`, in C, without the GIL) and
  ``consume(n, 0)`` takes what is buffered after it; commits, offset reads, pause, resume and
  seek queue behind it. A batch's offsets are committed without waiting for the coordinator (a
  synchronous commit held the thread, and so every fetch, for a round trip per batch): one
  commit is out at a time (librdkafka answers them one after the other anyway), the offsets of
  the batches that become durable meanwhile are merged and sent when its answer comes to
  ``on_commit`` (inside a ``poll``), and :meth:`SignalConsumer.settle_commits` commits and waits
  for the last offsets before partitions are given up.
- **rebalance**: librdkafka runs the callbacks inside ``poll``, on the consumer thread.
  ``on_revoke`` hands the drain to the event loop and, while it waits for it, runs the calls the
  drain queues (its commits) itself. The assignment is tracked here from the callbacks, never
  asked of librdkafka.
- **delivery thread** (:class:`OutputProducer`): serves the producer's delivery reports. A
  batch's records are answered into one :class:`DeliveryReports`, which wakes the event loop
  once, when the last is in (a ``call_soon_threadsafe`` per record cost a pipe write each: a
  tenth of the worker's CPU); a single record (:meth:`OutputProducer.send`) gets a future.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec

from router_stream.adapters.kafka_failures import (
    RdkafkaLog,
    commit_failures,
    describe_rdkafka,
    is_rd_rebalanced_away,
)
from router_stream.adapters.kafka_io import ConsumedRecord, consumed_record
from router_stream.config import Settings
from router_stream.errors import BrokerUnavailable, ConsumerFailed

log = logging.getLogger("router_stream.worker")

IDLE_WAIT_S = 0.1
"""How long one ``poll`` blocks for a first record. Not a latency floor (a record arriving wakes
it at once); it bounds how long a commit or an offset read waits behind an idle poll (ten
wake-ups a second of an idle worker cost next to no CPU)."""
LINGER_MS = 0
"""The producer's wait for more records before a request: none. A batch's records are handed over
in one go, and a partition's records wait while its requests are in flight anyway (the largest
batches form under load without a linger); any linger would be added to every routed record's
latency (docs/performance.md)."""
MAX_RECORD_BYTES = 64 * 1024 * 1024
"""The producer's own cap on one record; above it the brokers' per-topic limits decide. A signal
the topic accepted must still be routable or dead-lettered byte-exact."""
DELIVERY_TIMEOUT_MS = 30_000
CALL_TIMEOUT_S = 10.0
TRANSACTION_TIMEOUT_MS = 10_000
"""exactly_once: how long the broker keeps a transaction open before aborting it itself — what
a worker that stopped mid-batch (SIGSTOP, a lost node) holds read_committed consumers of its
output partitions back, at most (a restart under the same transactional.id aborts it at once)."""
COMMIT_INTERVAL_S = 0.1
"""Offsets committed without waiting go out at most this often (what came meanwhile is merged
into the next commit): every commit is a write to ``__consumer_offsets``, and a worker fetching
a few records at a time would otherwise send one per batch. A crash re-processes at most this
much more (at-least-once); a revoke or a stop commits the newest offsets at once."""
REVOKE_DRAIN_S = 120.0
"""At most this long ``on_revoke`` waits for the batches in flight; past it the partitions go
without our last commit (the next owner re-processes: at-least-once)."""
_EARLIEST: OffsetSpec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
_LATEST: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]


class Partition(NamedTuple):
    topic: str
    partition: int


class Delivered(NamedTuple):
    topic: str
    partition: int
    offset: int


class ConnectErrors:
    """librdkafka reports connection trouble through ``error_cb`` and its log; the last reason
    explains a start-up that could not reach the broker."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.log = RdkafkaLog()

    def config(self) -> dict[str, object]:
        return self.log.config()

    def unavailable(self, what: str, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(f"{what}: {describe_rdkafka(self._settings, self.log, repr(exc))}")


def _take(consumer: Consumer, max_records: int, timeout_s: float) -> list[ConsumedRecord]:
    """Up to ``max_records``, waiting for the first one only: librdkafka's ``consume(n, t)``
    waits all of ``t`` unless ``n`` arrive."""
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    msgs = [first, *consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]
    out = []
    for m in msgs:
        error = m.error()
        if error is None:
            out.append(consumed_record(m))
        elif error.code() == KafkaError._FATAL:
            # "Fatal error: <why>: Fatal consumer error: <why>": <why> once
            reason = error.str().split(": Fatal consumer error: ")[0]
            raise ConsumerFailed(reason.removeprefix("Fatal error: "))  # nothing more to poll
        elif error.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error", extra={"error": str(error)})
    return out


Job = tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]
Revoked = Callable[[set[Partition]], Coroutine[Any, Any, None]]
Assigned = Callable[[set[Partition]], None]


class SignalConsumer:
    """The worker's consumer group member on ``signals`` and ``router.retry``."""

    def __init__(self, settings: Settings, conf: dict[str, Any]) -> None:
        self._errors = ConnectErrors(settings)
        # The offset reader and the admin client are never polled, so a logger of theirs would
        # never be served, and librdkafka's default one prints every reconnect to stderr (~380
        # raw lines per worker in chaos scenario 2's 18 s broker outage). Their failures are
        # the signal consumer's, which logs each once; a call that fails raises.
        self._admin_conf: dict[str, str | int | float | bool] = {
            **settings.librdkafka_config, "log_level": 0}
        self._admin: AdminClient | None = None
        self._reader: Consumer | None = None  # reads the group's offsets, never joins
        self._reader_thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="router-offsets")
        self._group = str(conf["group.id"])
        self._instance = str(conf.get("group.instance.id", ""))  # static membership
        self._consumer = Consumer({**settings.librdkafka_config, **conf,
                                   **self._errors.config(), "enable.auto.commit": False,
                                   "enable.auto.offset.store": False,
                                   "on_commit": self._on_commit})
        # the commits sent without waiting, touched on the consumer thread only
        self._last: dict[Partition, TopicPartition] = {}  # the newest offset, per partition
        self._unsent: dict[Partition, TopicPartition] = {}  # newer than the commit that is out
        self._out: tuple[tuple[tuple[str, int, int], ...], float] | None = None  # (key, sent at)
        self._sent_at = 0.0  # monotonic time the last commit without waiting went out
        self.on_commit_answered: Callable[[float], None] | None = None
        """Called (on the consumer thread) with the seconds a sent commit took to be answered."""
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._owned: frozenset[Partition] = frozenset()
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="router-consume", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            _run_into(*job)

    async def check_connection(self) -> None:
        """Raise :class:`BrokerUnavailable` (why, in one line) unless a broker answers."""
        try:
            await self._call(lambda: self._consumer.list_topics(timeout=CALL_TIMEOUT_S))
        except KafkaException as exc:
            raise self._errors.unavailable("starting the signals consumer", exc) from exc

    def subscribe(self, topics: list[str], *, on_assigned: Assigned,
                  on_revoked: Revoked) -> None:
        loop = self._loop

        def assign(_: Consumer, tps: list[TopicPartition]) -> None:
            parts = _parts(tps)
            self._owned = self._owned | parts
            loop.call_soon_threadsafe(on_assigned, parts)

        def revoke(_: Consumer, tps: list[TopicPartition]) -> None:
            parts = _parts(tps)
            drain = asyncio.run_coroutine_threadsafe(on_revoked(parts), loop)
            try:
                self._serve_until(drain, REVOKE_DRAIN_S)
                drain.result(0)
            except Exception as exc:  # noqa: BLE001 - the revoke goes on; at-least-once
                log.warning("partitions revoked before the batches in flight were committed",
                            extra={"error": repr(exc)})
            self._owned = self._owned - parts

        self._consumer.subscribe(topics, on_assign=assign, on_revoke=revoke, on_lost=revoke)

    def _serve_until(self, done: concurrent.futures.Future[Any], timeout_s: float) -> None:
        """On the consumer thread, inside a rebalance callback: run the queued calls until
        ``done`` (or ``timeout_s``). A stop request met here is put back for :meth:`_serve`."""
        deadline = time.monotonic() + timeout_s
        stop = False
        while not done.done() and time.monotonic() < deadline:
            try:
                job = self._jobs.get(timeout=0.05)
            except queue.Empty:
                continue
            if job is None:
                stop = True
                continue
            _run_into(*job)
        if stop:
            self._jobs.put(None)

    async def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the consumer thread and wait for its result."""
        if self._closed:
            raise BrokerUnavailable("the signals consumer is closed")
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((fn, result))
        try:
            return await asyncio.wrap_future(result)
        except RuntimeError as exc:  # "Consumer closed": a call queued behind close()
            raise BrokerUnavailable(f"the signals consumer: {exc}") from exc

    def _queue(self, fn: Callable[[], Any]) -> None:
        """A call whose result nobody waits for (pause, resume, seek), in order with the
        others."""
        if not self._closed:
            self._jobs.put((fn, concurrent.futures.Future()))

    async def group_metadata(self) -> object:
        """The member's group metadata (generation included), for
        :meth:`OutputProducer.send_offsets`: the broker refuses the offsets of a member the
        group moved on from (KIP-447)."""
        return await self._call(self._consumer.consumer_group_metadata)

    async def take(self, max_records: int, timeout_s: float) -> list[ConsumedRecord]:
        consumer, wait = self._consumer, max(timeout_s, 0.001)

        def take_then_commit() -> list[ConsumedRecord]:
            taken = _take(consumer, max_records, wait)
            if self._unsent and self._out is None:
                self._send_unsent()  # the interval may have passed since a commit was held
            return taken
        try:
            taken: list[ConsumedRecord] = await self._call(take_then_commit)
        except ConsumerFailed as exc:
            instance = self._instance and f" (group.instance.id {self._instance!r})"
            raise ConsumerFailed(f"the signals consumer failed for good{instance}: {exc}; "
                                 "stopping") from None
        return taken

    def assignment(self) -> set[Partition]:
        """The partitions this member owns (until a revoke callback finished its drain)."""
        return set() if self._closed else set(self._owned)

    def pause(self, tps: Iterable[Partition]) -> None:
        if parts := _tps(tps):
            self._queue(lambda: self._consumer.pause(parts))

    def resume(self, tps: Iterable[Partition]) -> None:
        if parts := _tps(tps):
            self._queue(lambda: self._consumer.resume(parts))

    def seek(self, tp: Partition, offset: int) -> None:
        target = TopicPartition(tp.topic, tp.partition, offset)
        self._queue(lambda: self._consumer.seek(target))

    async def commit(self, offsets: dict[Partition, tuple[int, str]], *, wait: bool = True
                     ) -> bool:
        """Commit ``offset`` (with its metadata) per partition and wait for the broker. False
        when the group moved them away (the next owner re-processes from the last commit);
        :class:`BrokerUnavailable` for anything else.

        ``wait=False`` returns True at once: the offsets go out with the next commit sent, a
        failure is logged by ``on_commit`` and covered by the next commit, and
        :meth:`settle_commits` confirms the last. Commits reach the coordinator in order."""
        tps = [TopicPartition(tp.topic, tp.partition, off, metadata=meta)
               for tp, (off, meta) in offsets.items()]
        if not wait:
            await self._call(lambda: self._commit_later(tps))
            return True
        try:
            done = await self._call(lambda: self._consumer.commit(offsets=tps,
                                                                     asynchronous=False))
        except KafkaException as exc:
            return _commit_refused(exc.args[0], "committing offsets")
        for tp in done or ():
            if tp.error is not None:
                return _commit_refused(tp.error, "committing offsets")
        return True

    def _commit_later(self, tps: list[TopicPartition]) -> None:
        """On the consumer thread: send now, or with the next commit if one is out or the last
        went out less than :data:`COMMIT_INTERVAL_S` ago (then a later ``take`` sends it)."""
        for tp in tps:
            part = Partition(tp.topic, tp.partition)
            self._last[part] = self._unsent[part] = tp
        if self._out is None:
            self._send_unsent()

    def _send_unsent(self) -> None:
        now = time.monotonic()
        if not self._unsent or now - self._sent_at < COMMIT_INTERVAL_S:
            return
        tps, self._unsent = list(self._unsent.values()), {}
        self._out, self._sent_at = (_commit_key(tps), now), now
        self._consumer.commit(offsets=tps, asynchronous=True)

    def _on_commit(self, error: KafkaError | None, tps: list[TopicPartition]) -> None:
        """librdkafka's answer to a commit, inside ``poll`` on the consumer thread."""
        out = self._out
        if out is not None and out[0] == _commit_key(tps):  # else a synchronous commit's
            self._out = None
            if self.on_commit_answered is not None:
                self.on_commit_answered(time.monotonic() - out[1])
            self._send_unsent()
        for e in commit_failures(error, tps):
            log.warning("an offset commit failed; the next commit covers it",
                        extra={"error": e.str(), "rebalanced": is_rd_rebalanced_away(e)})

    async def settle_commits(self, parts: Iterable[Partition]) -> bool:
        """Commit the newest offsets of ``parts`` and wait for the answer: once it comes, every
        commit sent before it was answered too (one coordinator, answering in order)."""
        parts = set(parts)

        def take_last() -> dict[Partition, tuple[int, str]]:
            for tp in parts:
                self._unsent.pop(tp, None)
            return {tp: (t.offset, t.metadata or "") for tp in parts
                    if (t := self._last.pop(tp, None)) is not None}
        last = await self._call(take_last)
        return await self.commit(last) if last else True

    async def committed(self, tps: Sequence[Partition]) -> dict[Partition, tuple[int | None, str]]:
        """The group's committed offset (None: none yet) and its metadata, per partition."""
        try:
            found = await self._call(lambda: self._consumer.committed(
                _tps(tps), timeout=CALL_TIMEOUT_S))
        except KafkaException as exc:
            raise BrokerUnavailable(f"reading committed offsets: {exc!r}") from exc
        return {Partition(t.topic, t.partition): (None if t.offset < 0 else t.offset,
                                                  t.metadata or "") for t in found}

    async def group_offsets(self, tps: Sequence[Partition]) -> dict[Partition, int | None]:
        """The group's committed offsets (None: none yet), for the lag gauge and burst mode's
        checks: an OffsetFetch by a second consumer that carries the group's id but never
        joins, on a thread of its own. On the member itself, ``committed`` waits while the group
        rebalances, holding the consumer thread — and so the rebalance itself — for its whole
        timeout; and the admin client's ListConsumerGroupOffsets aborted a process inside
        librdkafka 2.16 while the broker was down (``rd_kafka_enq_once_del_source_return``
        assertion, chaos scenario 2)."""
        if not tps:
            return {}
        reader = self._offset_reader()
        try:
            found = await self._loop.run_in_executor(
                self._reader_thread, lambda: reader.committed(_tps(tps), timeout=CALL_TIMEOUT_S))
        except KafkaException as exc:
            raise BrokerUnavailable(f"reading committed offsets: {exc!r}") from exc
        except RuntimeError as exc:  # the consumer closed meanwhile (its thread is shut down)
            raise BrokerUnavailable(f"reading committed offsets: {exc}") from exc
        return {Partition(t.topic, t.partition): None if t.offset < 0 else t.offset
                for t in found}

    def _offset_reader(self) -> Consumer:
        if self._reader is None:
            self._reader = Consumer({**self._admin_conf, "group.id": self._group,
                                     "enable.auto.commit": False,
                                     "client.id": "router-stream-offsets"})
        return self._reader

    def _admin_client(self) -> AdminClient:
        """Made again after a failed call: after a broker restart, librdkafka's admin client
        failed every ``list_offsets`` with FENCED_LEADER_EPOCH (its cached leader epochs) for
        minutes — burst mode never saw its lag again, the lag gauge froze — where a new client
        answers at once."""
        if self._admin is None:
            self._admin = AdminClient(self._admin_conf)
        return self._admin

    async def watermarks(self, tps: Sequence[Partition]) -> dict[Partition, tuple[int, int]]:
        """(low, high) offsets of each partition, asked of the broker in one request per kind.

        Through an admin client of its own, not the consumer: a broker answers the requests
        of one connection in order, so on the consumer's they wait behind its long-poll fetch
        (up to ``fetch.wait.max.ms`` each; measured 0.4 s a partition)."""
        if not tps:
            return {}
        admin = self._admin_client()

        def ask(spec: OffsetSpec) -> dict[Partition, int]:
            found = admin.list_offsets({TopicPartition(tp.topic, tp.partition): spec
                                        for tp in tps}, request_timeout=CALL_TIMEOUT_S)
            return {Partition(t.topic, t.partition): int(f.result().offset)
                    for t, f in found.items()}
        try:
            low = await self._loop.run_in_executor(None, ask, _EARLIEST)
            high = await self._loop.run_in_executor(None, ask, _LATEST)
        except KafkaException as exc:
            self._admin = None
            raise BrokerUnavailable(f"reading end offsets: {exc!r}") from exc
        return {tp: (low[tp], high[tp]) for tp in tps}

    async def positions(self, tps: Sequence[Partition]) -> dict[Partition, int | None]:
        found = await self._call(lambda: self._consumer.position(_tps(tps)))
        return {Partition(t.topic, t.partition): None if t.offset < 0 else t.offset
                for t in found}

    async def partitions_of(self, topics: Sequence[str]) -> list[Partition]:
        meta = await self._call(lambda: self._consumer.list_topics(timeout=CALL_TIMEOUT_S))
        return [Partition(t, p) for t in topics if t in meta.topics
                for p in sorted(meta.topics[t].partitions)]

    async def close(self) -> None:
        """Leave the group (``on_revoke`` runs, draining) and stop the consumer thread."""
        if self._closed:
            return
        try:
            await self._call(self._consumer.close)
        finally:
            self._closed = True
            self._jobs.put(None)
            reader, self._reader = self._reader, None
            if reader is not None:
                await self._loop.run_in_executor(self._reader_thread, reader.close)
            self._reader_thread.shutdown(wait=False)



def _run_into(fn: Callable[[], Any], result: concurrent.futures.Future[Any]) -> None:
    """Run a queued call unless its caller gave up on it (a cancelled await) before it ran."""
    if not result.set_running_or_notify_cancel():
        return
    try:
        result.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 - handed to the caller
        result.set_exception(exc)


def _commit_refused(error: KafkaError, what: str) -> bool:
    if is_rd_rebalanced_away(error):
        log.warning("offset commit refused after a rebalance", extra={"error": str(error)})
        return False
    if error.code() == KafkaError._NO_OFFSET:
        return True
    raise BrokerUnavailable(f"{what}: {error.str()}")


def _commit_key(tps: Iterable[TopicPartition]) -> tuple[tuple[str, int, int], ...]:
    return tuple(sorted((tp.topic, tp.partition, tp.offset) for tp in tps))


def _parts(tps: Iterable[TopicPartition]) -> set[Partition]:
    return {Partition(tp.topic, tp.partition) for tp in tps}


def _tps(parts: Iterable[Partition]) -> list[TopicPartition]:
    return [TopicPartition(p.topic, p.partition) for p in parts]


class DeliveryReports:
    """The broker's answers to ``n`` records handed over together: ``results[i]`` is the
    delivered :class:`Message` or the :class:`KafkaException` of record ``i`` (None: no answer
    yet), and ``done`` resolves once every record was answered. Answered from the delivery
    thread (and from the event loop for records refused at the hand-over); ``next`` on the
    shared counter is atomic."""

    __slots__ = ("_answers", "_loop", "done", "results")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.results: list[Message | BaseException | None] = [None] * n
        self.done: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._answers = itertools.count(1)
        if n == 0:
            self.done.set_result(None)

    def report(self, i: int, error: KafkaError | None, msg: Message) -> None:
        """librdkafka's delivery callback for record ``i`` (bound with ``functools.partial``)."""
        self.answer(i, msg if error is None else KafkaException(error))

    def answer(self, i: int, result: Message | BaseException) -> None:
        self.results[i] = result
        if next(self._answers) == len(self.results):
            self._loop.call_soon_threadsafe(_finish, self.done)

    @property
    def unanswered(self) -> list[int]:
        return [i for i, r in enumerate(self.results) if r is None]


def _finish(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class OutputProducer:
    """The idempotent (acks=all) producer of a batch's outputs; :meth:`send` returns a future
    resolved with :class:`Delivered` or the delivery's :class:`KafkaException`.

    With a ``transactional_id`` it is the exactly-once mode's transactional producer: every
    send happens inside :meth:`begin_transaction` … :meth:`commit_transaction` (or
    :meth:`abort_transaction`); those calls block, so they run in the default executor and
    raise the client's :class:`KafkaException` for :mod:`.transactional` to judge."""

    def __init__(self, settings: Settings, client_id: str,
                 transactional_id: str | None = None) -> None:
        self._errors = ConnectErrors(settings)
        transactions: dict[str, str | int] = {} if transactional_id is None else {
            "transactional.id": transactional_id,  # a delivery may not outlive its transaction
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            "delivery.timeout.ms": TRANSACTION_TIMEOUT_MS}
        self._producer = Producer({
            **settings.librdkafka_config, **self._errors.config(), "client.id": client_id,
            "enable.idempotence": True, "acks": "all", "linger.ms": LINGER_MS,
            "batch.size": 512 * 1024, "message.max.bytes": MAX_RECORD_BYTES,
            "compression.type": settings.compression_type,
            "partitioner": "murmur2_random",  # the Java client's partitions for a key
            "allow.auto.create.topics": False, "delivery.timeout.ms": DELIVERY_TIMEOUT_MS,
            "queue.buffering.max.messages": 1_000_000, **transactions})
        self._loop = asyncio.get_running_loop()
        self._known: set[str] = set()  # topics seen in broker metadata
        self._serving = True
        self._fatal_logged = False
        self._failure: asyncio.Future[str] = self._loop.create_future()  # see failed()
        self._server = threading.Thread(target=self._serve, name="router-deliveries",
                                        daemon=True)
        self._server.start()

    def _serve(self) -> None:
        while self._serving:
            try:
                self._producer.poll(IDLE_WAIT_S)
            except KafkaException as exc:  # fatal (a fenced transactional producer): the
                self._fatal(exc)  # sender learns it from its own calls; keep serving reports
                time.sleep(IDLE_WAIT_S)

    def _fatal(self, exc: KafkaException) -> None:
        """On the delivery thread: log once, and settle :meth:`failed` on the loop (which may be
        gone when stopping)."""
        if not self._fatal_logged:
            self._fatal_logged = True
            log.error("the producer failed for good", extra={"error": str(exc)})
        error = exc.args[0] if exc.args else None
        reason = f"{error.name()}: {error.str()}" if isinstance(error, KafkaError) else str(exc)
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_settle_failure, self._failure, reason)

    def has_failed(self) -> bool:
        """True once this producer failed for good (see :meth:`failed`)."""
        return self._failure.done()

    async def failed(self) -> str:
        """Returns the reason once this producer failed for good (``KafkaError.fatal()``: a
        fenced transactional.id, an idempotent producer that lost its sequence); every send
        fails from then on, so its owner must stop or replace it."""
        return await asyncio.shield(self._failure)

    async def check_connection(self) -> None:
        try:
            await self._loop.run_in_executor(
                None, lambda: self._producer.list_topics(timeout=CALL_TIMEOUT_S))
        except KafkaException as exc:
            raise self._errors.unavailable("starting the producer", exc) from exc

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: Sequence[tuple[str, bytes | None]] | None = None
             ) -> asyncio.Future[Delivered]:
        """Hand one record over; raises :class:`KafkaException` when librdkafka refuses it at
        once (too large, queue full)."""
        fut: asyncio.Future[Delivered] = self._loop.create_future()
        loop = self._loop

        def report(error: KafkaError | None, msg: Message) -> None:
            if error is None:
                loop.call_soon_threadsafe(_resolve, fut, Delivered(
                    msg.topic(), msg.partition(), msg.offset()), None)  # type: ignore[arg-type]
            else:
                loop.call_soon_threadsafe(_resolve, fut, None, KafkaException(error))

        try:
            self._producer.produce(topic, value, key, headers=list(headers or ()),
                                   on_delivery=report)
        except BufferError as exc:
            raise KafkaException(KafkaError(KafkaError._QUEUE_FULL, str(exc))) from exc
        return fut

    def reports(self, n: int) -> DeliveryReports:
        return DeliveryReports(self._loop, n)

    def hand_over(self, reports: DeliveryReports, i: int, topic: str, value: bytes | None,
                  key: bytes | None, headers: list[tuple[str, bytes | None]] | None) -> None:
        """Hand record ``i`` of ``reports`` over; raises :class:`KafkaException` when librdkafka
        refuses it at once (too large, queue full)."""
        try:
            if headers:
                self._producer.produce(topic, value, key, headers=headers,  # type: ignore[arg-type]
                                       on_delivery=partial(reports.report, i))
            else:  # passing headers=None costs the client ~0.6 µs more than passing nothing
                self._producer.produce(topic, value, key, on_delivery=partial(reports.report, i))
        except BufferError as exc:
            raise KafkaException(KafkaError(KafkaError._QUEUE_FULL, str(exc))) from exc

    async def init_transactions(self) -> None:
        """Register the transactional.id: aborts a transaction a previous holder left open and
        fences that holder (its next transactional call fails fatally)."""
        await self._blocking(self._producer.init_transactions, CALL_TIMEOUT_S)

    def begin_transaction(self) -> None:
        self._producer.begin_transaction()  # local: no request

    async def send_offsets(self, offsets: dict[Partition, tuple[int, str]],
                           group_metadata: object) -> None:
        """Add the consumed offsets (with their metadata) to the open transaction."""
        tps = [TopicPartition(tp.topic, tp.partition, off, metadata=meta)
               for tp, (off, meta) in offsets.items()]
        await self._blocking(self._producer.send_offsets_to_transaction, tps, group_metadata,
                             CALL_TIMEOUT_S)

    async def commit_transaction(self) -> None:
        """Flush what the transaction holds and commit it (outputs and offsets at once)."""
        await self._blocking(self._producer.commit_transaction, CALL_TIMEOUT_S)

    async def abort_transaction(self) -> None:
        """Abort the open transaction: read_committed consumers never see its records."""
        await self._blocking(self._producer.abort_transaction, CALL_TIMEOUT_S)

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._loop.run_in_executor(None, fn, *args)

    async def topic_missing(self, topic: str, *, fresh: bool = False,
                            bound_s: float = 2.0) -> bool:
        """True only when a broker answered that ``topic`` does not exist; no answer within
        ``bound_s`` means "cannot tell" (False: an unreachable broker is transient)."""
        if topic in self._known and not fresh:
            return False
        try:
            meta = await self._loop.run_in_executor(
                None, lambda: self._producer.list_topics(topic, timeout=bound_s))
        except KafkaException:
            return False
        found = meta.topics.get(topic)
        if found is None or found.error is None:
            self._known.add(topic)
            return False
        if found.error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            self._known.discard(topic)
            return True
        return False

    async def close(self, timeout_s: float) -> None:
        """Stop the delivery thread, then deliver what is queued (up to ``timeout_s``; ``flush``
        serves the remaining reports: one thread at a time answers them)."""
        self._serving = False
        await self._loop.run_in_executor(None, self._server.join, IDLE_WAIT_S * 4)
        await self._loop.run_in_executor(None, self._producer.flush, timeout_s)


def _settle_failure(failure: asyncio.Future[str], reason: str) -> None:
    if not failure.done():
        failure.set_result(reason)


def _resolve(fut: asyncio.Future[Delivered], value: Delivered | None,
             error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        assert value is not None
        fut.set_result(value)
