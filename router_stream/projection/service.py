"""``router-stream persist``: Postgres as a projection of the decision log.

Its own consumer group (``ROUTER_PROJECTION_GROUP``, default ``<group_id>.projection``) reads
``router.decisions``, ``router.dlq`` and ``router.events``; each fetch becomes rows
(:mod:`.rows`) written in one transaction (:mod:`.writer`), and the offsets are committed only
after that transaction committed. So a crash re-writes rows that exist (``ON CONFLICT``: no-ops)
and never skips one. A Postgres outage pauses the projection — the batch is retried with backoff
while ``router_projection_lag_seconds`` grows — and routing goes on untouched: the workers never
wait for the database. A record that is not a decision/DLQ record/event is logged, counted and
skipped; a row Postgres refuses for its content is isolated and skipped (never retried forever).

Masking: rows are masked by the ``redact`` section of the active policy — at start the one
recorded active in ``policy_versions`` (the projection wrote it from ``router.events``), else
the policy file (``ROUTER_POLICY_FILE``), else every detector — and then by each policy the
workers switch to, as its ``policy_version`` event is projected.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from router_stream import tracing
from router_stream.adapters import postgres as pg
from router_stream.adapters.kafka_failures import RdkafkaLog, commit_rebalanced, rdkafka_error
from router_stream.adapters.kafka_io import consumed_record, fetch_messages, message_headers
from router_stream.adapters.postgres.rows import decode_decision, dlq_row_from_record
from router_stream.adapters.rdkafka import (
    ClientThread,
    Offsets,
    client_config,
    connect,
    end_offsets,
    group_committed_to_end,
)
from router_stream.config import DECISIONS, DLQ, EVENTS, Settings
from router_stream.core.events import PolicyVersionEvent, decode_event
from router_stream.core.redaction import DEFAULT_REDACTOR, Redactor
from router_stream.errors import BrokerUnavailable, PolicyError, RouterError, TransientError
from router_stream.projection.metrics import ProjectionMetrics
from router_stream.projection.writer import ProjectionBatch, WriteReport, write_batch
from router_stream.worker.backoff import Backoff, retry_transient
from router_stream.worker.hotpath import SESSION_TIMEOUT_MS

log = logging.getLogger("router_stream.projection")

FETCH_TIMEOUT_MS = 200
DLQ_BACKLOG_EVERY_S = 10.0
# Records built between two turns of the event loop: each of the write's ~10 round trips to
# Postgres may wait for one chunk (~2 ms).
BUILD_CHUNK = 100


@dataclass
class Fetched:
    """One fetch with its rows built: what is written in one transaction, then committed. The
    records themselves are not kept (only what committing and accounting need)."""

    batch: ProjectionBatch = field(default_factory=ProjectionBatch)
    records: int = 0
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    oldest_ms: int | None = None  # the oldest record's timestamp
    per_topic: Counter[str] = field(default_factory=Counter)
    traced: list[tuple[Any, dict[str, str]]] = field(default_factory=list)  # tracing on

    def count(self, topic: str, partition: int, offset: int, ts: int) -> None:
        self.records += 1
        self.per_topic[topic] += 1
        self.next_offsets[(topic, partition)] = offset + 1
        if self.oldest_ms is None or ts < self.oldest_ms:
            self.oldest_ms = ts


class Projection:
    """Consumes the decision log and keeps Postgres in step with it (module docstring)."""

    def __init__(self, settings: Settings, *, backoff: Backoff | None = None,
                 metrics: ProjectionMetrics | None = None, http: bool = True) -> None:
        self.settings = settings
        self.metrics = metrics or ProjectionMetrics()
        self._backoff = backoff or Backoff()
        self._http_enabled = http
        self._topics = {settings.topic(DECISIONS): "decisions", settings.topic(DLQ): "dlq",
                        settings.topic(EVENTS): "events"}
        self._stopping = asyncio.Event()
        self._drain_deadline: float | None = None
        self._pg_ok = False
        self.redactor: Redactor = DEFAULT_REDACTOR
        self.pool: asyncpg.Pool | None = None
        self.consumer: Consumer | None = None
        self._thread = ClientThread("projection")
        self.http: Any = None
        self.projected = 0
        self._in_hand = False  # a fetched batch not yet written and committed
        self._ahead: asyncio.Future[Fetched] | None = None
        self._read_at = 0.0  # monotonic time the last fetch with records returned
        self.skipped: list[str] = []  # positions of rows and records skipped, newest last
        self._last_backlog = 0.0
        self._stopped = False

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if self._http_enabled:
            from router_stream.worker.http import HealthServer

            self.http = HealthServer(self.metrics, alive=lambda: True,
                                     readiness=self.readiness)
            port = await self.http.start(s.http_host, s.projection_http_port)
            log.info("projection http listening", extra={"host": s.http_host, "port": port})
        self.pool = await retry_transient(
            "connecting to Postgres",
            lambda: pg.create_pool(s, min_size=1, max_size=2, reset_sessions=False),
            backoff=self._backoff, logger=log, give_up=self._stopping.is_set)
        self._pg_ok = True
        self.redactor = await self._initial_redactor()
        kafka_log = RdkafkaLog()
        consumer = Consumer(client_config(s, kafka_log, **{
            "group.id": s.projection_group_id, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "client.id": "router-stream-persist",
            "max.poll.interval.ms": 600_000, "fetch.wait.max.ms": 50,
            # the worker's: a member that died with its worker (`worker --persist`) holds the
            # group's rebalance, and every row, only that long (librdkafka's default is 45 s)
            "session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": 2_000}))
        try:
            await connect(self._thread, consumer, kafka_log, s)
            await self._thread.run(consumer.subscribe, list(self._topics))
        except (BrokerUnavailable, KafkaException) as exc:
            await self._thread.run(consumer.close)
            raise BrokerUnavailable(f"starting the projection consumer: {exc}") from exc
        self.consumer = consumer
        log.info("projection started", extra={"group_id": s.projection_group_id,
                                               "topics": sorted(self._topics)})

    async def _initial_redactor(self) -> Redactor:
        assert self.pool is not None
        with contextlib.suppress(TransientError, asyncpg.PostgresError):
            async with self.pool.acquire() as conn:
                text = await conn.fetchval(
                    "SELECT policy FROM policy_versions WHERE status = 'active'"
                    " ORDER BY status_changed_at DESC LIMIT 1")
            if text:
                redactor = _redactor_of(text, "policy_versions")
                if redactor is not None:
                    return redactor
        if self.settings.policy_file:
            from router_stream.worker.policy_source import read_policy_file

            return _policy_redactor(read_policy_file(self.settings)[1])
        log.warning("no policy known: every PII detector masks what is persisted")
        return DEFAULT_REDACTOR

    async def stop(self) -> None:
        """Leave the group and close. Once it got to the end, stopping again does nothing:
        ``run()`` stops the projection when it ends, and its owner may too (``worker --persist``);
        a stop interrupted half-way (cancelled) is finished by the next one."""
        if self._stopped:
            return
        self.request_stop()
        await self._drop_read_ahead()
        if self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            with contextlib.suppress(Exception):
                await self._thread.run(consumer.close)  # leaves the group
        self._thread.close()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.pool.close()
        if self.http is not None:
            await self.http.stop()
        self._stopped = True
        log.info("projection stopped", extra={"projected": self.projected})

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            self._drain_deadline = time.monotonic() + 25.0
            self._stopping.set()

    def readiness(self) -> dict[str, bool]:
        return {"postgres": self._pg_ok, "consuming": self.consumer is not None,
                "not_draining": not self._stopping.is_set()}

    # --- run ---------------------------------------------------------------------------------

    async def run(self, *, exit_when_idle: float | None = None) -> None:
        """Project until stopped (or, with ``exit_when_idle``, until nothing was left to read
        for that many seconds), then stop."""
        idle_since: float | None = None
        try:
            while not self._stopping.is_set():
                n = await self.step()
                if exit_when_idle is None:
                    continue
                if n or not await self.caught_up():
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= exit_when_idle:
                    break
        finally:
            await self.stop()

    async def run_until_idle(self, idle_s: float = 0.5) -> None:
        await self.start()
        await self.run(exit_when_idle=idle_s)

    async def step(self) -> int:
        """Write and commit one batch, fetching and reading the next one while this one is
        written; returns the records it held."""
        consumer = self.consumer
        assert consumer is not None, "start() first"
        ahead, self._ahead = self._ahead, None
        fetched = await (ahead or self._read(consumer))
        if not fetched.records:
            self.metrics.oldest_pending_ts = None
            await self._refresh_backlog()
            return 0
        self._in_hand = True
        started = time.time()
        try:
            assert fetched.oldest_ms is not None
            self.metrics.oldest_pending_ts = fetched.oldest_ms / 1000.0
            write = asyncio.ensure_future(retry_transient(
                "persist", lambda: self._write(fetched.batch), backoff=self._backoff, logger=log,
                give_up=self._past_deadline, on_retry=self._on_retry))
            # The next batch is read (Kafka fetch, rows built and masked) while Postgres
            # writes this one; it is written only after this one is committed.
            self._ahead = asyncio.ensure_future(self._read(consumer))
            try:
                report = await write
            except BaseException:
                await self._drop_read_ahead()  # this batch is not written: none after it is
                raise
            self._pg_ok = True
            await self._commit(consumer, fetched.next_offsets)
        finally:
            self._in_hand = False
        self.metrics.oldest_pending_ts = None
        self._account(fetched, report)
        if fetched.traced:
            tracing.record_spans("router.persist", fetched.traced, started)
        await self._refresh_backlog()
        return fetched.records

    async def caught_up(self) -> bool:
        """True when the GROUP's committed offsets reach the end of every partition of our
        topics: every record there is written. (Our own positions are not enough: a member
        that died keeps its partitions until its session times out.)"""
        consumer = self.consumer
        if consumer is None or self._in_hand or not await self._thread.run(consumer.assignment):
            return False
        ahead = self._ahead
        if ahead is not None and (not ahead.done() or ahead.cancelled()
                                  or ahead.exception() is not None or ahead.result().records):
            return False  # records read ahead, not written yet
        return await group_committed_to_end(self._thread, consumer, list(self._topics),
                                            settings=self.settings)

    async def end_offsets(self) -> Offsets | None:
        """Where our topics end now (None before the consumer is up or when the broker cannot
        say): a fixed target for :meth:`written_through` while others keep producing."""
        consumer = self.consumer
        return None if consumer is None else await end_offsets(
            self._thread, consumer, list(self._topics))

    async def written_through(self, ends: Offsets) -> bool:
        """True when the GROUP committed every record before ``ends``: all of them written."""
        consumer = self.consumer
        return consumer is not None and await group_committed_to_end(
            self._thread, consumer, list(self._topics), until=ends, settings=self.settings)

    # --- one batch ---------------------------------------------------------------------------

    async def _drop_read_ahead(self) -> None:
        """Forget the batch read ahead: not written, so not committed; whoever consumes the
        partitions next reads it again."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.cancel()
            with contextlib.suppress(BaseException):
                await ahead

    async def _read(self, consumer: Consumer) -> Fetched:
        # At most one fetch (so one transaction) per linger: a trickle is gathered, not written
        # a few rows per transaction (each costs ~10 round trips and a WAL flush, whatever its
        # size). A backlog's batches take longer than that to write, and the next one is read
        # meanwhile: nothing waits.
        wait = self._read_at + self.settings.projection_linger_ms / 1000 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        messages = await fetch_messages(self._thread, consumer, self.settings.projection_batch_max,
                                        FETCH_TIMEOUT_MS / 1000, log)
        if messages:
            self._read_at = time.monotonic()
        fetched = Fetched()
        traced = tracing.tracer() is not None
        for start in range(0, len(messages), BUILD_CHUNK):
            if start:
                await asyncio.sleep(0)  # the batch being written gets its replies meanwhile
            self._build(fetched, messages[start:start + BUILD_CHUNK], traced)
        return fetched

    def _build(self, fetched: Fetched, messages: Sequence[Message], traced: bool) -> None:
        batch = fetched.batch
        for msg in messages:
            topic, partition, offset = str(msg.topic()), msg.partition() or 0, msg.offset() or 0
            ts = msg.timestamp()[1]
            fetched.count(topic, partition, offset, ts)
            read = message_headers(msg) if traced else None  # once: see message_headers
            if read is not None:
                fetched.traced.append((read[0], {"messaging.source.name": topic}))
            kind = self._topics.get(topic)
            at = f"{topic}/{partition}/{offset}"
            try:
                if kind == "decisions":
                    batch.add_decision(decode_decision(msg.value()), at, ts, self.redactor)
                elif kind == "dlq":
                    row = dlq_row_from_record(consumed_record(msg, read), self.redactor)
                    if row is None:
                        raise ValueError("no x-dlq-* headers this router writes")
                    batch.dlq.append((row, at, ts))
                else:
                    event = decode_event(msg.value())
                    batch.events.append((event, at))
                    if isinstance(event, PolicyVersionEvent) and event.status == "active":
                        # rows after this one in the batch are masked by the new policy
                        self._switch_policy(event)
            except (ValueError, TypeError, OverflowError, RecursionError) as exc:
                self._bad_record(topic, at, exc)  # the record stays on its topic

    def _switch_policy(self, event: PolicyVersionEvent) -> None:
        redactor = _redactor_of(event.policy_yaml, f"policy {event.version}")
        if redactor is not None:
            self.redactor = redactor

    def _bad_record(self, topic: str, at: str, exc: Exception) -> None:
        self.metrics.bad_records.labels(topic).inc()
        self.skipped.append(at)
        log.error("not a record the projection knows, skipped", extra={
            "position": at, "error": f"{type(exc).__name__}: {exc}"[:300]})

    async def _write(self, batch: ProjectionBatch) -> WriteReport:
        assert self.pool is not None
        with pg.unavailable_as_router_error("writing a projection batch to Postgres"):
            async with self.pool.acquire() as proxy:
                conn = cast(asyncpg.Connection, proxy)  # the pool's proxy forwards every call
                return await write_batch(conn, batch, self.redactor)

    async def _commit(self, consumer: Consumer, last: dict[tuple[str, int], int]) -> None:
        owned = {(tp.topic, tp.partition) for tp in await self._thread.run(consumer.assignment)}
        offsets = [TopicPartition(t, p, off) for (t, p), off in last.items() if (t, p) in owned]

        def commit_now() -> None:
            consumer.commit(offsets=offsets, asynchronous=False)

        async def commit() -> None:
            try:
                await self._thread.run(commit_now)
            except KafkaException as exc:
                if commit_rebalanced(exc):  # the next owner re-writes from our last commit
                    log.warning("projection commit refused after a rebalance",
                                extra={"error": exc.args[0].str()})
                    return
                raise rdkafka_error(self.settings, "committing projection offsets",
                                    exc) from exc

        if offsets:
            await retry_transient("commit", commit, backoff=self._backoff, logger=log,
                                  give_up=self._past_deadline, on_retry=self._on_retry)

    def _account(self, fetched: Fetched, report: WriteReport) -> None:
        self.projected += fetched.records
        for topic, n in fetched.per_topic.items():
            self.metrics.records.labels(topic).inc(n)
        for table, n in report.written.items():
            self.metrics.rows.labels(table).inc(n)
        for s in report.skipped:
            self.metrics.rows_skipped.labels(s.table).inc()
            self.skipped.append(s.position)
        del self.skipped[:-1000]

    def _on_retry(self, step: str) -> None:
        self._pg_ok = step != "persist"
        self.metrics.transient_retries.inc()

    def _past_deadline(self) -> bool:
        return self._drain_deadline is not None and time.monotonic() > self._drain_deadline

    async def _refresh_backlog(self) -> None:
        now = time.monotonic()
        if now - self._last_backlog < DLQ_BACKLOG_EVERY_S or self.pool is None:
            return
        self._last_backlog = now
        try:
            with pg.unavailable_as_router_error("counting the DLQ backlog"):
                async with self.pool.acquire() as conn:
                    n = await conn.fetchval(
                        "SELECT count(*) FROM dlq_entries WHERE status = 'pending'")
            self.metrics.dlq_backlog.set(n)
        except TransientError as exc:
            log.warning("DLQ backlog not counted", extra={"error": str(exc)})


def _policy_redactor(compiled: Any) -> Redactor:
    redactor = getattr(compiled, "redactor", DEFAULT_REDACTOR)
    return redactor if isinstance(redactor, Redactor) else DEFAULT_REDACTOR


def _redactor_of(text: str, source: str) -> Redactor | None:
    from router_stream.worker.policy_source import compile_policy_text

    try:
        return _policy_redactor(compile_policy_text(text, f"<{source}>"))
    except (PolicyError, RouterError) as exc:
        log.warning("policy not usable for masking; keeping the previous one",
                    extra={"source": source, "error": str(exc)[:300]})
        return None


async def run_projection(settings: Settings, *, exit_when_idle: float | None = None,
                         configure: Callable[[Projection], None] | None = None) -> None:
    """``router-stream persist``: start, stop on SIGTERM/SIGINT (or when idle)."""
    import signal

    projection = Projection(settings)
    if configure is not None:
        configure(projection)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, projection.request_stop)
    try:
        await projection.start()
    except BaseException:
        await projection.stop()
        raise
    # What start-up built lives as long as the process: kept out of the collector's full
    # passes, which the batches' garbage otherwise triggers every batch or two.
    gc.freeze()
    await projection.run(exit_when_idle=exit_when_idle)
