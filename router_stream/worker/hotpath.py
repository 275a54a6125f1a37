"""The hot path: batches of ``signals`` (and due ``router.retry``) records, decided and made
durable in the commit order, outside faust's per-event stream machinery.

Commit order, per batch (a crash at any point re-processes the batch; it never loses one)::

    getmany(max_records=batch_max, timeout_ms=batch_timeout_ms)
      │  engine.decide_batch(records, now)            pure, no I/O
      ▼
    1. produce   routed.<d>, router.decisions, router.dlq, router.retry — idempotent producer,
                 acks=all, EVERY delivery awaited
      ▼
    2. persist   routing_decisions, dlq_entries, breaker_transitions — one Postgres transaction,
                 ON CONFLICT DO NOTHING (signal_id / dlq_key / transition key); masked per the
                 redact section of the policy that decided the batch (so are its log lines)
      ▼
    3. commit    the batch's input offsets (last offset + 1 per partition)

Steps 1 and 2 are retried through transient failures (broker/Postgres down, timeouts) with capped
exponential backoff and jitter while the consumer's partitions are paused: backpressure, never a
drop, and never a commit past what is durable. A crash between 1 and 2 leaves extra copies on the
output topics (at-least-once; decision records are keyed by signal_id and carry a deterministic
decision_id, so consumers can dedupe); a crash between 2 and 3 re-writes rows that already exist,
which ``ON CONFLICT DO NOTHING`` turns into no-ops: Postgres never holds two decisions for one
signal.

Pipelining: the order above holds per batch and across batches, but batches overlap — batch N+1
is fetched, decided and handed to the producer while batch N waits for its acknowledgements, its
Postgres transaction and its commit. Each batch's acknowledgements are awaited on their own; its
step 2 starts only after the previous batch's step 2, its step 3 only after the previous batch's
step 3, so offsets are committed strictly in batch order and only for fully durable batches. A
batch that fails stops every later one before step 2 (the error is raised by ``step()``); at most
``PIPELINE_DEPTH`` batches are uncommitted, which bounds what a crash re-processes.

Rebalance: ``on_partitions_revoked`` takes the launch lock (no new batch starts) and waits until
every batch in flight finished all three steps before the revoke completes, so the next owner
starts exactly after our last commit.

``router.retry``: a record whose ``x-retry-not-before`` lies in the future is not processed; its
partition is rewound to it and paused until then (records before it in the same fetch are
processed and committed normally).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from router_stream.adapters import postgres as pg
from router_stream.config import OUTCOMES, SIGNALS, Settings
from router_stream.core.breaker import BreakerTransition
from router_stream.core.engine import dead_letter
from router_stream.core.models import DlqReason
from router_stream.core.outputs import H_RETRY_NOT_BEFORE, BatchResult, DlqRecord
from router_stream.core.redaction import Redactor
from router_stream.core.refusals import (
    OutputKind,
    Refused,
    as_reference,
    output_at,
    settle_refusals,
)
from router_stream.errors import BrokerUnavailable
from router_stream.worker.backoff import Backoff, retry_transient
from router_stream.worker.crashguard import CrashGuard
from router_stream.worker.logs import trace_id_of
from router_stream.worker.metrics import WorkerMetrics
from router_stream.worker.produce_errors import TopicMissing, is_refusal
from router_stream.worker.sink import (
    RETRY,
    Deliveries,
    OutputTopics,
    Refusal,
    persist_outputs,
    send_alone,
    send_outputs,
    settle_deliveries,
)

log = logging.getLogger("router_stream.worker")

StepHook = Callable[[str, BatchResult], Awaitable[None]]
"""Called after each commit step ("decided", "produced", "persisted", "committed"); tests use it
to crash the worker between steps."""


class _DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: SignalLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._loop.batch_lock:  # no batch launches meanwhile, and every batch in
            await self._loop.wait_in_flight()  # flight finishes all three steps first
            for tp in revoked:
                self._loop.retry_paused.pop(tp, None)
                self._loop.forget_lag(tp)
            self._loop.crash_guard.revoked(revoked)
        if revoked:
            log.info("partitions revoked", extra={"partitions": _names(revoked)})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._loop.crash_guard.assigned(assigned)
        self._loop.assigned.set()
        log.info("partitions assigned", extra={"partitions": _names(assigned)})


def _names(tps: set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)


FETCH_MAX_WAIT_MS = 10
"""How long the broker may hold a fetch that found no data (aiokafka's default is 500 ms).
aiokafka keeps one fetch in flight per broker and leaves partitions with buffered records out of
it, so a fetch that covers only idle partitions (always ``router.retry``; at low rates most of
``signals``) blocks every other partition until it returns: with 500 ms that was the worker's
latency floor and, in an open loop, its throughput limit. 10 ms costs an idle worker ~100 small
fetches a second."""

PIPELINE_DEPTH = 3
"""Batches decided but not yet committed, at most: one committing, one writing Postgres, one
awaiting its acknowledgements while the next is decided. Bounds memory, the re-processing after
a crash (and the Kafka duplicates it makes) and how far the producer runs ahead of Postgres."""


class _PreviousBatchFailed(Exception):
    """A batch stops because the one before it failed (the earlier error is the one raised)."""


@dataclass(eq=False)
class _Batch:
    records: list[Any]
    result: BatchResult
    now: float
    fetch_time: float
    deliveries: Deliveries | None
    prev: _Batch | None
    redactor: Redactor  # the deciding policy's: a policy switch mid-flight changes nothing here
    dlq_at: list[tuple[str, int, int]] | None = None  # where step 1 put the DLQ records
    task: asyncio.Task[None] = field(init=False)
    persisted: asyncio.Event = field(default_factory=asyncio.Event)
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False


async def _after(prev: _Batch | None, stage: str) -> None:
    """Wait until the previous batch passed ``stage``; stop if it failed instead."""
    if prev is None:
        return
    event: asyncio.Event = getattr(prev, stage)
    await event.wait()
    if prev.failed:
        raise _PreviousBatchFailed(stage)


class SignalLoop:
    """Consumes in the consumer group and runs the commit order for every batch."""

    def __init__(
        self,
        settings: Settings,
        engine: Any,
        producer: AIOKafkaProducer,
        pool: asyncpg.Pool | None,
        metrics: WorkerMetrics,
        *,
        backoff: Backoff,
        give_up: Callable[[], bool],
        take_transitions: Callable[[], list[BreakerTransition]],
        on_step: StepHook | None = None,
        renew_producer: Callable[[], Awaitable[AIOKafkaProducer]] | None = None,
        pipeline_depth: int = PIPELINE_DEPTH,
    ) -> None:
        self._settings = settings
        self._renew_producer = renew_producer
        self._needs_new_producer = False
        self._engine = engine
        self._producer = producer
        self._pool = pool
        self._metrics = metrics
        self._backoff = backoff
        self._give_up = give_up
        self._take_transitions = take_transitions
        self._on_step = on_step
        self._outputs = OutputTopics.of(settings)
        self.input_topics = [settings.topic(SIGNALS), settings.topic(RETRY)]
        self._retry_topic = self.input_topics[1]
        self.consumer: AIOKafkaConsumer | None = None
        self.batch_lock = asyncio.Lock()
        self.assigned = asyncio.Event()
        self.retry_paused: dict[TopicPartition, float] = {}
        self.processed = 0
        self._paused_for_retry: set[TopicPartition] = set()
        self._depth = pipeline_depth
        self._in_flight: list[_Batch] = []
        self._failure: BaseException | None = None
        self.crash_guard = CrashGuard(settings.poison_restarts, self._retry_guard)
        self.stalled_since: float | None = None  # monotonic time of the first retry since the
        # last commit: a batch that cannot be made durable (broker, Postgres, a refusing topic)

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            group_id=self._settings.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id="router-stream-worker",
            max_poll_interval_ms=300_000, fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            **self._settings.kafka_client_options,
        )
        try:
            await consumer.start()
        except KafkaError as exc:
            raise BrokerUnavailable(f"starting the signals consumer: {exc!r}") from exc
        consumer.subscribe(self.input_topics, listener=_DrainOnRevoke(self))
        self.consumer = consumer

    async def stop(self) -> None:
        """Let the batches in flight finish (or fail), then leave the group (no commit here:
        every batch commits itself, in order)."""
        await self.wait_in_flight()
        if self.consumer is not None:
            consumer, self.consumer = self.consumer, None
            await consumer.stop()

    # --- one batch ------------------------------------------------------------------------

    async def step(self) -> int:
        """Fetch one batch, decide it and hand its outputs to the producer; the rest of its
        commit order runs in the background (:meth:`_make_durable`). Returns records taken.

        Raises the error that stopped a batch in flight (after which nothing later commits)."""
        consumer = self.consumer
        assert consumer is not None, "start() first"
        self.raise_failure()
        await self._wait_for_room()
        self._resume_due_retries()
        fetched = await consumer.getmany(
            timeout_ms=self._settings.batch_timeout_ms, max_records=self._settings.batch_max)
        if not fetched:
            return 0
        fetch_time = time.monotonic()
        async with self.batch_lock:
            self.raise_failure()
            assignment = consumer.assignment()
            records = self._due_records(
                {tp: rs for tp, rs in fetched.items() if tp in assignment}, time.time())
            if not records:
                return 0
            decide, poison = await self.crash_guard.screen(consumer, records)
            self.raise_failure()  # a batch may have failed meanwhile: nothing launches after it
            await self._launch(decide, fetch_time, poison)
        return len(decide) + len(poison)

    # --- the pipeline: batch N+1 is decided and sent while batch N finishes steps 1-3 --------

    @property
    def in_flight(self) -> int:
        """Batches decided but not yet committed (or failed)."""
        return len(self._in_flight)

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the pipeline, if any (the first, in batch order)."""
        return self._failure

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def wait_in_flight(self) -> None:
        """Until every batch in flight is committed or has failed (rebalance, drain)."""
        while self._in_flight:
            await asyncio.wait([b.task for b in self._in_flight])

    async def _wait_for_room(self) -> None:
        while len(self._in_flight) >= self._depth:
            await asyncio.wait([self._in_flight[0].task])
        self.raise_failure()

    async def _launch(self, records: list[Any], fetch_time: float,
                      poison: Sequence[Any] = ()) -> None:
        now = time.time()
        result: BatchResult = self._engine.decide_batch(records, now)
        if poison:
            self._dead_letter_poison(result, poison, now)
            records = [*records, *poison]
        await self._hook("decided", result)
        if self._needs_new_producer and self._renew_producer is not None:
            await self.wait_in_flight()  # the old producer is stopped by the renewal
            self.raise_failure()
            self._producer = await self._renew_producer()  # BrokerUnavailable: retried
            self._needs_new_producer = False
        deliveries = await send_outputs(self._producer, self._outputs, result)
        self.raise_failure()  # the batch before failed during the hand-over: this one must not
        batch = _Batch(records, result, now, fetch_time, deliveries,
                       self._in_flight[-1] if self._in_flight else None,
                       self._engine.policy.redactor)
        batch.task = asyncio.create_task(self._make_durable(batch), name="router-batch")
        self._in_flight.append(batch)

    async def _make_durable(self, batch: _Batch) -> None:
        """Steps 1-3 of one batch: its own acknowledgements are awaited at once (they overlap
        the previous batch's Postgres write and commit), but step 2 starts only after the
        previous batch's step 2 and step 3 only after the previous batch's step 3 — so offsets
        are committed strictly in batch order and only for batches that are fully durable.
        A failure here fails every later batch too (they never reach step 2 or 3)."""
        result, prev = batch.result, batch.prev
        try:
            await retry_transient("produce", lambda: self._produce(batch), backoff=self._backoff,
                                  give_up=self._give_up, on_retry=self._count_retry)
            await self._hook("produced", result)
            await _after(prev, "persisted")
            pool = self._pool
            if pool is not None:  # None: persistence off (ROUTER_PERSIST=false), Kafka only
                extra = self._take_transitions()
                await retry_transient(
                    "persist", lambda: persist_outputs(pool, result, batch.now, extra,
                                                       redactor=batch.redactor,
                                                       dlq_at=batch.dlq_at),
                    backoff=self._backoff, give_up=self._give_up, on_retry=self._count_retry)
                await self._hook("persisted", result)
            else:
                self._take_transitions()
            batch.persisted.set()
            await _after(prev, "committed")
            await self._commit(batch.records)
            self.stalled_since = None
            await self._hook("committed", result)
            batch.committed.set()
            self.processed += len(batch.records)
            self._observe(batch, time.monotonic() - batch.fetch_time)
            if result.rollout_events:
                await self._announce_rollbacks(result)
        except BaseException as exc:  # noqa: BLE001 - kept and raised by step(), in batch order
            batch.failed = True
            if self._failure is None and not isinstance(exc, _PreviousBatchFailed):
                self._failure = exc
        finally:
            batch.persisted.set()
            batch.committed.set()
            batch.prev = None  # no chain of finished batches kept alive
            self._in_flight.remove(batch)
            if not self._in_flight and self._paused_for_retry and self.consumer is not None:
                self.consumer.resume(
                    *(tp for tp in self._paused_for_retry if tp not in self.retry_paused))
                self._paused_for_retry = set()

    async def _announce_rollbacks(self, result: BatchResult) -> None:
        """Tell every worker (through router.control) and the policy_versions table that a
        candidate was rolled back. Best effort after the commit: a worker that misses the
        command rolls the candidate back on its own when its monitor sees the same rates."""
        from router_stream.config import CONTROL
        from router_stream.core.models import RolloutRollback

        for event in result.rollout_events:
            cmd = RolloutRollback(candidate_version=event.candidate_version, reason=event.reason,
                                  issued_at=event.at, issued_by="router-stream worker")
            try:
                await self._producer.send_and_wait(self._settings.topic(CONTROL),
                                                   cmd.model_dump_json().encode())
                if self._pool is not None:
                    async with self._pool.acquire() as conn:
                        await pg.mark_policy_status(conn, event.candidate_version,
                                                    "rolled_back", event.reason)
            except Exception as exc:  # noqa: BLE001 - the rollback itself already happened
                log.error("could not announce the rollback", extra={
                    "candidate": event.candidate_version, "error": repr(exc)})

    async def _produce(self, batch: _Batch) -> None:
        """Step 1: the first attempt waits for the deliveries handed over when the batch was
        launched; a retry sends the whole batch again (at-least-once on Kafka)."""
        deliveries, batch.deliveries = batch.deliveries, None
        try:
            if deliveries is None:
                if self._needs_new_producer and self._renew_producer is not None:
                    self._producer = await self._renew_producer()  # BrokerUnavailable: retried
                    self._needs_new_producer = False
                deliveries = await send_outputs(self._producer, self._outputs, batch.result)
            refusals = await settle_deliveries(deliveries)
            if refusals:
                batch.dlq_at = await self._dead_letter_refused(batch, deliveries, refusals)
            else:
                batch.dlq_at = deliveries.dlq_positions()
        except BrokerUnavailable as exc:
            for dest, n in getattr(exc, "failed_destinations", {}).items():
                self._metrics.routing_errors.labels(dest).inc(n)
            refused = getattr(exc, "refused", {})
            if refused:
                log.error("the broker refused records of this batch; nothing is committed until "
                          "every one is accepted (fix the topic)", extra={"refused": refused})
                # An idempotent producer whose batch was refused fails every later send to that
                # partition (OutOfOrderSequenceNumber) even once the topic is fixed; a new
                # producer (new producer id) does not. Renewed before the next attempt.
                self._needs_new_producer = self._renew_producer is not None
            raise

    async def _dead_letter_refused(self, batch: _Batch, deliveries: Deliveries,
                                   refusals: list[Refusal]) -> list[tuple[str, int, int]]:
        """Step 1 for the records the broker refused for good: their inputs go to the DLQ
        (a DLQ record too large for router.dlq as a reference), a refused route counts as a
        routing error and a failed outcome of its destination, and the batch goes on. Returns
        where the batch's DLQ records are on router.dlq, in ``result.dlq`` order."""
        result = batch.result
        at = deliveries.dlq_positions_by_index()
        refused: list[Refused] = []
        for r in refusals:
            kind, index = output_at(result, r.position)
            error: BaseException | tuple[str, int, int] = r.error
            if not isinstance(r.error, TopicMissing):
                error = await self._alone(result, kind, index)
            if isinstance(error, tuple):  # accepted on its own
                if kind == "dlq":
                    at[index] = error
                continue
            refused.append(Refused(kind, index, r.topic, repr(error)))
        if not refused:
            return [at[i] for i in range(len(result.dlq))]
        log.error("the broker refused records for good; their signals go to the DLQ",
                  extra={"refused": {r.topic: r.error for r in refused}})
        gone = {r.index for r in refused if r.kind == "dlq"}
        kept_at = [at[i] for i in range(len(result.dlq)) if i not in gone]
        repair = settle_refusals(result, batch.records, refused, batch.now)
        for dest, _ in repair.failed_routes:
            self._metrics.routing_errors.labels(dest).inc()
        repaired_at = await self._send_repair(repair.dlq, batch.now)
        if repair.dlq:  # some may have become references on the way
            result.dlq[-len(repair.dlq):] = repair.dlq
        await self._report_failed_routes(repair.failed_routes, batch.now)
        return kept_at + repaired_at

    async def _alone(self, result: BatchResult, kind: OutputKind, index: int
                     ) -> BaseException | tuple[str, int, int]:
        """Send one refused output again on its own: the broker refuses a whole produce batch
        for one record in it that is too large, and the others pass alone. Returns where it
        landed, or the error if it is refused again; a transient error is raised (the batch
        is retried)."""
        self._needs_new_producer = True
        await self._renew_after_refusal()
        try:
            return await send_alone(self._producer, self._outputs, result, kind, index)
        except KafkaError as exc:
            if not is_refusal(exc):
                raise BrokerUnavailable(f"sending a refused record again: {exc!r}") from exc
            self._needs_new_producer = True
            return exc

    async def _renew_after_refusal(self) -> None:
        """An idempotent producer whose batch was refused fails every later send to that
        partition (OutOfOrderSequenceNumber); a new producer (new producer id) does not."""
        if self._needs_new_producer and self._renew_producer is not None:
            self._producer = await self._renew_producer()
        self._needs_new_producer = False

    async def _send_repair(self, dlq: list[DlqRecord], now: float) -> list[tuple[str, int, int]]:
        """Send the DLQ records that replace refused outputs; one of them refused again (too
        large for router.dlq) goes as a reference. A refused reference is transient: retried."""
        for _ in range(2):
            await self._renew_after_refusal()
            deliveries = await send_outputs(self._producer, self._outputs, BatchResult(dlq=dlq))
            refusals = await settle_deliveries(deliveries)
            if not refusals:
                return deliveries.dlq_positions()
            for r in refusals:
                dlq[r.position] = as_reference(dlq[r.position], f"{r.topic}: {r.error!r}")
            self._needs_new_producer = True
        raise BrokerUnavailable("router.dlq refuses even a reference record")

    async def _report_failed_routes(self, routes: list[tuple[str, str]], now: float) -> None:
        """A refused route is a failed delivery to that destination: reported on ``outcomes``
        like any other, so every worker's breaker for it sees the failure (the state stays a
        fold of the state topics). Best effort: the DLQ entry is what must not be lost."""
        topic = self._settings.topic(OUTCOMES)
        for dest, signal_id in routes:
            value = orjson.dumps({"signal_id": signal_id, "destination": dest, "ok": False,
                                  "ts": int(now * 1000)})
            try:
                await self._producer.send(topic, value, key=dest.encode())
            except KafkaError as exc:
                log.warning("could not report a refused route", extra={"error": repr(exc)})

    def _dead_letter_poison(self, result: BatchResult, poison: Sequence[Any], now: float) -> None:
        """Records the crash-loop guard gave up on: to the DLQ without being decided."""
        guard = self._settings.poison_restarts
        for r in poison:
            result.dlq.append(dead_letter(
                r, DlqReason.PROCESSING_ERROR,
                f"the worker stopped {guard} times on this record without getting past it",
                now))
            self._metrics.poison_skips.labels(r.topic).inc()

    async def _retry_guard(self, step: str, call: Callable[[], Awaitable[Any]]) -> Any:
        return await retry_transient(step, call, backoff=self._backoff, give_up=self._give_up,
                                     on_retry=self._count_retry)

    async def _commit(self, records: Sequence[Any]) -> None:
        """Step 3: commit last offset + 1 of every partition in the batch we still own."""
        consumer = self.consumer
        assert consumer is not None
        last: dict[TopicPartition, int] = {}
        for r in records:
            last[TopicPartition(r.topic, r.partition)] = r.offset + 1
        owned = consumer.assignment()
        offsets = {tp: off for tp, off in last.items() if tp in owned}
        guard = self.crash_guard
        marked = {tp: OffsetAndMetadata(off, guard.metadata(tp, off))
                  for tp, off in offsets.items()}

        async def commit() -> None:
            try:
                await consumer.commit(marked)
            except (CommitFailedError, IllegalStateError) as exc:
                # Rebalanced away: the new owner re-processes from our last commit, and steps
                # 1-2 are idempotent where it matters (Postgres).
                log.warning("offset commit refused after a rebalance", extra={"error": str(exc)})
            except KafkaError as exc:
                raise BrokerUnavailable(f"committing offsets: {exc!r}") from exc

        if offsets:
            await retry_transient("commit", commit, backoff=self._backoff, give_up=self._give_up,
                                  on_retry=self._count_retry)
        for tp, off in offsets.items():
            hw = consumer.highwater(tp)
            if hw is not None:
                self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, hw - off))

    async def _hook(self, step: str, result: BatchResult) -> None:
        if self._on_step is not None:
            await self._on_step(step, result)

    def _count_retry(self, step: str) -> None:
        """First retry of a batch pauses every partition: no prefetching while we cannot make
        progress (backpressure); the partitions resume once the batch is durable."""
        self._metrics.transient_retries.labels(step).inc()
        if self.stalled_since is None:
            self.stalled_since = time.monotonic()
        if not self._paused_for_retry and self.consumer is not None:
            self._paused_for_retry = set(self.consumer.assignment())
            self.consumer.pause(*self._paused_for_retry)

    # --- router.retry: honour not_before ----------------------------------------------------

    def _due_records(self, fetched: dict[TopicPartition, list[Any]], now: float) -> list[Any]:
        records: list[Any] = []
        for tp, rs in fetched.items():
            if tp.topic != self._retry_topic:
                records.extend(rs)
                continue
            for i, r in enumerate(rs):
                not_before = _not_before(r.headers)
                if not_before is not None and not_before > now:
                    self._park(tp, r.offset, not_before)
                    records.extend(rs[:i])
                    break
            else:
                records.extend(rs)
        return records

    def _park(self, tp: TopicPartition, offset: int, not_before: float) -> None:
        assert self.consumer is not None
        self.consumer.seek(tp, offset)
        self.consumer.pause(tp)
        self.retry_paused[tp] = not_before

    def _resume_due_retries(self) -> None:
        if not self.retry_paused or self.consumer is None:
            return
        now = time.time()
        due = [tp for tp, until in self.retry_paused.items() if until <= now]
        for tp in due:
            del self.retry_paused[tp]
        if due:
            self.consumer.resume(*due)

    # --- metrics and logs -------------------------------------------------------------------

    def stalled_for(self) -> float:
        """Seconds since the worker last made progress while a batch was being retried."""
        since = self.stalled_since
        return 0.0 if since is None else time.monotonic() - since

    async def refresh_lag(self) -> None:
        """``router_consumer_lag`` from the partitions' end offsets and the group's committed
        offsets, whatever the batches are doing: a stuck partition shows its growing lag (after
        a commit the gauge is also set, from the consumer's high watermark)."""
        consumer = self.consumer
        if consumer is None:
            return
        tps = list(consumer.assignment())
        if not tps:
            return
        try:
            ends = await consumer.end_offsets(tps)
            committed = await consumer._coordinator.fetch_committed_offsets(tps)
            never = [tp for tp in tps if committed.get(tp) is None or committed[tp].offset < 0]
            starts = await consumer.beginning_offsets(never) if never else {}
        except (KafkaError, IllegalStateError):
            return  # next time; the gauge keeps its last value
        for tp in tps:
            done = starts[tp] if tp in starts else committed[tp].offset
            self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, ends[tp] - done))

    def forget_lag(self, tp: TopicPartition) -> None:
        with contextlib.suppress(KeyError):
            self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    def _observe(self, batch: _Batch, elapsed: float) -> None:
        records, result = batch.records, batch.result
        m = self._metrics
        m.batch_size.observe(len(records))
        kinds = Counter(d.kind for d in result.decisions)
        for kind, n in kinds.items():
            m.signals_received.labels(kind).inc(n)
            hist = m.latency.labels(kind)
            for _ in range(n):
                hist.observe(elapsed)
        undecided = len(records) - len(result.decisions)
        if undecided:
            m.signals_received.labels("unknown").inc(undecided)
        for d in result.decisions:
            m.confidence.observe(d.confidence)
        for q in result.dlq:
            m.dlq.labels(q.entry.reason.value).inc()
        if result.retries:
            m.retry_attempts.inc(len(result.retries))
        for o in result.shadow:
            m.rollout_shadow.labels(o.candidate_version, "yes" if o.agree else "no").inc()
        for event in result.rollout_events:
            m.rollout_rollbacks.labels(event.candidate_version).inc()
            log.warning("rollout candidate rolled back", extra={
                "candidate": event.candidate_version, "baseline": event.baseline_version,
                "reason": event.reason, "baseline_rates": event.baseline_rates,
                "candidate_rates": event.candidate_rates})
        self._log_batch(records, result, elapsed, batch.redactor)

    def _log_batch(self, records: list[Any], result: BatchResult, elapsed: float,
                   redactor: Redactor) -> None:
        """Signal content in these lines (ids, trace ids, error texts quoting values) is masked
        like the batch's Postgres rows, so a signal_id here matches its rows there."""
        for q in result.dlq:
            e = q.entry
            log.info("signal to DLQ", extra={
                "signal_id": _masked_id(redactor, e.signal_id),
                "trace_id": _masked_text(redactor, trace_id_of(e.original_headers)),
                "reason": e.reason.value, "error": redactor.text(e.error), "attempts": e.attempts,
                "original": f"{e.original_topic}/{e.original_partition}/{e.original_offset}"})
        for t in result.retries:
            log.info("signal parked for retry", extra={
                "signal_id": _masked_id(redactor, t.signal_id),
                "trace_id": _masked_text(redactor, trace_id_of(t.headers)),
                "attempts": t.attempts, "not_before": t.not_before})
        if log.isEnabledFor(logging.DEBUG):
            for d in result.decisions:
                log.debug("signal routed", extra={
                    "signal_id": redactor.identifier(d.signal_id, "signal_id"),
                    "decision_id": d.decision_id, "kind": d.kind,
                    "destinations": d.destinations, "strategy": d.strategy,
                    "policy_version": d.policy_version})
            log.debug("batch committed", extra={
                "records": len(records), "decisions": len(result.decisions),
                "dlq": len(result.dlq), "retries": len(result.retries),
                "elapsed_ms": round(elapsed * 1000, 2)})

    # --- idleness (burst mode) --------------------------------------------------------------

    async def input_lag(self) -> int | None:
        """Records not yet processed on our partitions; None while unassigned or parked."""
        consumer = self.consumer
        if consumer is None or not self.assigned.is_set() or self.retry_paused:
            return None
        tps = list(consumer.assignment())
        if not tps:
            return 0
        try:
            ends = await consumer.end_offsets(tps)
            lag = 0
            for tp in tps:
                lag += max(0, ends[tp] - await consumer.position(tp))
            return lag
        except (KafkaError, IllegalStateError):
            return None


    async def group_caught_up(self) -> bool:
        """True when the GROUP's committed offsets reach the end of every input partition.

        Our own lag is not enough for burst mode to exit: a member that died keeps its
        partitions until its session times out, and if every burst-mode worker left while they
        were still its, nobody would process them. Asked only when about to exit (a remote call
        per partition)."""
        consumer = self.consumer
        if consumer is None:
            return False
        tps = [TopicPartition(t, p) for t in self.input_topics
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


def _masked_id(redactor: Redactor, signal_id: str | None) -> str | None:
    return None if signal_id is None else redactor.identifier(signal_id, "signal_id")


def _masked_text(redactor: Redactor, text: str | None) -> str | None:
    return None if text is None else redactor.text(text)


def _not_before(headers: Sequence[tuple[str, bytes]] | None) -> float | None:
    for name, value in headers or ():
        if name == H_RETRY_NOT_BEFORE:
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None
