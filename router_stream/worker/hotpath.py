"""The hot path: batches of ``signals`` (and due ``router.retry``) records, decided and made
durable in the commit order, outside faust's per-event stream machinery.

Commit order, per batch (a crash at any point re-processes the batch; it never loses one)::

    take(batch_max)                                   librdkafka, off the event loop
      │  engine.decide_batch(records, now)            pure, no I/O
      ▼
    1. produce   routed.<d>, router.decisions, router.dlq, router.retry, router.events —
                 idempotent producer, acks=all, EVERY delivery awaited
      ▼
    2. commit    the batch's input offsets (last offset + 1 per partition)

``exactly_once`` mode: steps 1 and 2 are one Kafka transaction per batch, one batch at a time
(:mod:`.transactional`); the rest of this docstring describes the default, at-least-once.

Nothing on this path waits for Postgres: it is a projection of router.decisions, router.dlq and
router.events written by its own consumer group (``router-stream persist``,
:mod:`router_stream.projection`), so a database outage delays the audit, never a routed signal.

Step 1 is retried through transient failures (broker down, timeouts) with capped exponential
backoff and jitter while the consumer's partitions are paused: backpressure, never a drop, and
never a commit past what is durable. A crash between 1 and 2 leaves extra copies on the output
topics (at-least-once; decision records are keyed by signal_id and carry a deterministic
decision_id, so consumers can dedupe, and the projection keeps one row per signal: the later
decision when the same input was decided twice, since only the attempt that committed is sure to
have all its outputs on Kafka).

Pipelining: the order above holds per batch and across batches, but batches overlap — batch N+1
is fetched, decided and handed to the producer while batch N waits for its acknowledgements and
its commit. Each batch's acknowledgements are awaited on their own; its step 2 starts only after
the previous batch's step 2, so offsets are committed strictly in batch order and only for fully
durable batches. A batch that fails stops every later one before step 2 (the error is raised by
``step()``); at most ``PIPELINE_DEPTH`` full batches' worth of records are uncommitted, which
bounds what a crash re-processes, in up to ``MAX_BATCHES_IN_FLIGHT`` batches (at a low rate
batches are small, and each waits for its slowest acknowledgement).

Rebalance: librdkafka calls ``on_revoke`` inside the consumer's poll, on the consumer thread
(:mod:`.rdkafka`); it hands :meth:`SignalLoop._on_revoked` to the event loop and blocks until it
is done: the launch lock is taken (no new batch starts) and every batch in flight finishes both
steps before the revoke completes, so the next owner starts exactly after our last commit.

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
from collections.abc import Set as AbstractSet
from typing import Any

from confluent_kafka import KafkaException

from router_stream import tracing
from router_stream.adapters.rdkafka import only_markers_between
from router_stream.config import SIGNALS, Settings
from router_stream.core.deadletter import dead_letter
from router_stream.core.models import DlqReason, InboundRecord
from router_stream.core.outputs import BatchResult
from router_stream.core.policy.fields import MAX_RETRY_DELAY_S
from router_stream.core.wire import H_RETRY_NOT_BEFORE, LATEST_EPOCH_S
from router_stream.errors import BrokerUnavailable
from router_stream.worker.backoff import Backoff, retry_transient
from router_stream.worker.batch_report import observe, trace
from router_stream.worker.crashguard import CrashGuard
from router_stream.worker.kafka_sink import KafkaCommitter, KafkaSink
from router_stream.worker.metrics import WorkerMetrics
from router_stream.worker.pipeline import Batch, CommitPipeline, Committer, Engine, StepHook
from router_stream.worker.rdkafka import IDLE_WAIT_S, OutputProducer, Partition, SignalConsumer
from router_stream.worker.sink import RETRY, OutputTopics
from router_stream.worker.transactional import TransactionalOutputs

log = logging.getLogger("router_stream.worker")

PIPELINE_DEPTH = 3
"""Records decided but not yet committed, at most, in full batches (``batch_max`` each): one
committing, two awaiting their acknowledgements while the next is decided. Bounds memory and the
re-processing after a crash (and the Kafka duplicates it makes)."""
MAX_BATCHES_IN_FLIGHT = 32
"""Batches decided but not yet committed, at most. At a low rate a fetch returns a few records,
and a batch waits for the slowest acknowledgement of its outputs (tens of ms when the broker
appends to hundreds of partitions): with only three such batches in flight the fetches would
wait for them."""


SESSION_TIMEOUT_MS = 6_000
"""How long the group waits for a member that stopped heartbeating (SIGKILL, a lost node) before
its partitions go to the others: the broker's default minimum. Failover measurements and the
choice against static membership alone and KIP-848: docs/architecture.md, "Kafka client"."""


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The signal consumer's own librdkafka settings (the connection's come from
    ``Settings.librdkafka_config``). A member of the classic group protocol; by default a
    dynamic one, which leaves the group when it stops, so a drained worker's partitions move
    at once. With ``static_membership`` it is a static member (``group.instance.id``): it does
    not leave when it stops, and rejoining under the same id within the session timeout gets
    its partitions back without a rebalance."""
    conf: dict[str, Any] = {
        "group.id": settings.group_id, "auto.offset.reset": "earliest",
        "client.id": "router-stream-worker", "max.poll.interval.ms": 300_000,
        "session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": 2_000}
    if settings.static_membership:
        conf["group.instance.id"] = settings.member_name
    if exactly_once(settings):  # router.retry is written in transactions: only committed ones
        conf["isolation.level"] = "read_committed"
    return conf


def exactly_once(settings: Settings) -> bool:
    return settings.processing_guarantee == "exactly_once"


class SignalLoop:
    """Consumes in the consumer group and runs the commit order for every batch."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        metrics: WorkerMetrics,
        *,
        backoff: Backoff,
        give_up: Callable[[], bool],
        on_step: StepHook | None = None,
        pipeline_depth: int = PIPELINE_DEPTH,
        side_producer: Callable[[], OutputProducer | None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._backoff = backoff
        self._give_up = give_up
        self._side_producer = side_producer
        self.input_topics = [settings.topic(SIGNALS), settings.topic(RETRY)]
        self._retry_topic = self.input_topics[1]
        self.consumer: SignalConsumer | None = None
        self.batch_lock = asyncio.Lock()
        self.assigned = asyncio.Event()
        self.retry_paused: dict[Partition, float] = {}
        self.processed = 0
        self._paused_for_retry: set[Partition] = set()
        self.crash_guard = CrashGuard(settings.poison_restarts, self._retry)
        # monotonic time of the first retry since the last commit: a batch that cannot be made
        # durable (broker down, a topic refusing everything) shows as a stall
        self.stalled_since: float | None = None
        topics = OutputTopics.of(settings)
        committer: Committer
        self._sink: KafkaSink | TransactionalOutputs
        if exactly_once(settings):  # one transaction per batch, one batch at a time
            self._sink = committer = TransactionalOutputs(
                settings, topics, metrics, consumer=lambda: self.consumer,
                guard=self.crash_guard, side_producer=side_producer)
            batches = pipeline_depth = 1
        else:
            self._sink = KafkaSink(settings, topics, metrics, quiesce=self._quiesce)
            committer = KafkaCommitter(lambda: self.consumer, self.crash_guard)
            batches = MAX_BATCHES_IN_FLIGHT
        self._pipeline = CommitPipeline(
            engine, self._sink, committer, depth=batches,
            max_records=pipeline_depth * settings.batch_max, retry=self._retry, on_step=on_step,
            on_committed=self._committed, on_drained=self._resume_after_retry,
            on_undecided=self._dead_letter_undecided)

    async def start(self) -> None:
        """Start the producer, then join the group (BrokerUnavailable: why, in one line)."""
        await self._sink.start()
        consumer = SignalConsumer(self._settings, consumer_config(self._settings))
        consumer.on_commit_answered = self._metrics.commit_seconds.observe
        await consumer.check_connection()
        consumer.subscribe(self.input_topics, on_assigned=self._on_assigned,
                           on_revoked=self._on_revoked)
        self.consumer = consumer

    async def stop(self) -> None:
        """Let the batches in flight finish (or fail), leave the group (no commit here: every
        batch commits itself, in order), then deliver what the producer holds."""
        await self.wait_in_flight()
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.close()
            self.consumer = None
        with contextlib.suppress(Exception):
            await self._sink.stop()

    # --- rebalance: called from the consumer's poll (see .rdkafka) ------------------------

    async def _on_revoked(self, revoked: set[Partition]) -> None:
        async with self.batch_lock:  # no batch launches meanwhile, and every batch in
            await self.wait_in_flight()  # flight finishes both steps first
            if self.consumer is not None:
                try:  # the last commits sent must have landed before the partitions move
                    await self.consumer.settle_commits(revoked)
                except BrokerUnavailable as exc:
                    log.warning("the last offset commit before a revoke failed; the next owner "
                                "re-processes from the one before", extra={"error": repr(exc)})
            for tp in revoked:
                self.retry_paused.pop(tp, None)
                self._paused_for_retry.discard(tp)
                self.forget_lag(tp)
            self.crash_guard.revoked(revoked)
        self.count_assignment(without=revoked)
        if revoked:
            log.info("partitions revoked", extra={"partitions": _names(revoked)})

    def _on_assigned(self, assigned: set[Partition]) -> None:
        self.crash_guard.assigned(assigned)
        self.assigned.set()
        self.count_assignment(rebalanced=True, including=assigned)
        log.info("partitions assigned", extra={"partitions": _names(assigned)})

    # --- one batch ------------------------------------------------------------------------

    async def step(self) -> int:
        """Fetch one batch, decide it and hand its outputs to the producer; the rest of its
        commit order runs in the background (:class:`~.pipeline.CommitPipeline`). Returns
        records taken.

        Raises the error that stopped a batch in flight (after which nothing later commits)."""
        consumer = self.consumer
        assert consumer is not None, "start() first"
        self.raise_failure()
        await self._pipeline.wait_for_room(self._settings.batch_max)
        self._resume_due_retries()
        guard = self.crash_guard
        fetched = await consumer.take(self._settings.batch_max,
                                      0.0 if guard.holding else self._wait_s())
        if not fetched and not guard.holding:
            return 0
        fetch_time = time.monotonic()
        async with self.batch_lock:
            self.raise_failure()
            assignment = consumer.assignment()
            records = self._due_records(
                [r for r in fetched if (r.topic, r.partition) in assignment], time.time())
            if not records and not guard.holding:
                return 0
            decide, poison = await guard.screen(consumer, records)
            if guard.careful:
                await self._pipeline.wait_in_flight()
            unreadable = [r for r in decide if r.unreadable_headers is not None]
            if unreadable:
                decide = [r for r in decide if r.unreadable_headers is None]
            self.raise_failure()  # a batch may have failed meanwhile: nothing launches after it
            await self._pipeline.launch(decide, fetch_time, undecided=[*poison, *unreadable])
        return len(decide) + len(poison) + len(unreadable)

    def _wait_s(self) -> float:
        """How long a fetch may wait for a first record: until a parked retry is due, at most
        :data:`~.rdkafka.IDLE_WAIT_S`."""
        if not self.retry_paused:
            return IDLE_WAIT_S
        due = min(self.retry_paused.values()) - time.time()
        return min(IDLE_WAIT_S, max(due, 0.001))

    # --- the pipeline: batch N+1 is decided and sent while batch N finishes steps 1-2 --------

    @property
    def in_flight(self) -> int:
        """Batches decided but not yet committed (or failed)."""
        return self._pipeline.in_flight

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the pipeline, if any (the first, in batch order)."""
        return self._pipeline.failure

    def raise_failure(self) -> None:
        self._pipeline.raise_failure()

    async def wait_in_flight(self) -> None:
        """Until every batch in flight is committed or has failed (rebalance, drain)."""
        await self._pipeline.wait_in_flight()

    async def _quiesce(self) -> None:
        """Before the producer is renewed: no batch may still await the old one's acks."""
        await self._pipeline.wait_in_flight()
        self._pipeline.raise_failure()

    async def _retry(self, step: str, op: Callable[[], Awaitable[Any]]) -> Any:
        return await retry_transient(step, op, backoff=self._backoff, give_up=self._give_up,
                                     on_retry=self._count_retry)

    def _dead_letter_undecided(self, result: BatchResult, records: Sequence[InboundRecord],
                               now: float) -> None:
        """Records not to be decided, to the DLQ: those whose headers cannot be read
        (``invalid_signal``, key and value byte-exact, without their headers) and those the
        crash-loop guard gave up on (``processing_error``)."""
        guard = self._settings.poison_restarts
        for r in records:
            unreadable = getattr(r, "unreadable_headers", None)  # a ConsumedRecord's
            if unreadable is not None:
                result.dlq.append(dead_letter(r, DlqReason.INVALID_SIGNAL, unreadable, now,
                                              consumer_group=self._settings.group_id))
                continue
            result.dlq.append(dead_letter(
                r, DlqReason.PROCESSING_ERROR,
                f"the worker stopped {guard} times on this record without getting past it",
                now, consumer_group=self._settings.group_id))
            self._metrics.poison_skips.labels(r.topic).inc()

    async def _committed(self, batch: Batch) -> None:
        self.stalled_since = None
        self.processed += len(batch.records)
        if tracing.tracer() is not None:
            trace(batch)
        observe(self._metrics, batch, time.monotonic() - batch.fetch_time)
        if batch.result.rollout_events:
            await self._announce_rollbacks(batch.result)

    def _resume_after_retry(self) -> None:
        if self._paused_for_retry and self.consumer is not None:
            self.consumer.resume(tp for tp in self._paused_for_retry
                                 if tp not in self.retry_paused)
            self._paused_for_retry = set()

    async def _announce_rollbacks(self, result: BatchResult) -> None:
        """Tell every worker (through router.control) that a candidate was rolled back (the
        policy_versions row follows from the batch's router.events record). Best effort after
        the commit, through the worker's side producer (outside any transaction): a worker
        that misses the command rolls the candidate back on its own when its monitor sees the
        same rates."""
        from router_stream.config import CONTROL
        from router_stream.core.models import RolloutRollback

        producer = self._side_producer() or self._sink.producer
        for event in result.rollout_events:
            cmd = RolloutRollback(candidate_version=event.candidate_version, reason=event.reason,
                                  issued_at=event.at, issued_by="router-stream worker")
            try:
                await producer.send(self._settings.topic(CONTROL),
                                               cmd.model_dump_json().encode())
            except Exception as exc:  # noqa: BLE001 - the rollback itself already happened
                log.error("could not announce the rollback", extra={
                    "candidate": event.candidate_version, "error": repr(exc)})

    def _count_retry(self, step: str) -> None:
        """First retry of a batch pauses every partition: no prefetching while we cannot make
        progress (backpressure); the partitions resume once the batch is durable."""
        self._metrics.transient_retries.labels(step).inc()
        if self.stalled_since is None:
            self.stalled_since = time.monotonic()
        if not self._paused_for_retry and self.consumer is not None:
            self._paused_for_retry = set(self.consumer.assignment())
            self.consumer.pause(self._paused_for_retry)

    # --- router.retry: honour not_before ----------------------------------------------------

    def _due_records(self, fetched: list[Any], now: float) -> list[Any]:
        """The records to process now, in fetch order: a ``router.retry`` partition stops at
        its first record not due yet, which is parked (:meth:`_park`)."""
        records: list[Any] = []
        parked: set[tuple[str, int]] = set()
        for r in fetched:
            tp = (r.topic, r.partition)
            if tp in parked:
                continue
            if r.topic == self._retry_topic:
                not_before = _not_before(r.headers, r.timestamp)
                if not_before is not None and not_before > now:
                    self._park(Partition(*tp), r.offset, not_before)
                    parked.add(tp)
                    continue
            records.append(r)
        return records

    def _park(self, tp: Partition, offset: int, not_before: float) -> None:
        assert self.consumer is not None
        self.consumer.seek(tp, offset)
        self.consumer.pause([tp])
        self.retry_paused[tp] = not_before

    def _resume_due_retries(self) -> None:
        if not self.retry_paused or self.consumer is None:
            return
        now = time.time()
        due = [tp for tp, until in self.retry_paused.items() if until <= now]
        for tp in due:
            del self.retry_paused[tp]
        if due:
            self.consumer.resume(due)

    # --- metrics ----------------------------------------------------------------------------

    def count_assignment(self, *, rebalanced: bool = False,
                         including: AbstractSet[Partition] = frozenset(),
                         without: AbstractSet[Partition] = frozenset()) -> None:
        """``router_assigned_partitions`` per input topic (and a rebalance counted). A
        rebalance callback runs before librdkafka applies it: ``including`` / ``without``."""
        consumer = self.consumer
        owned = (consumer.assignment() if consumer is not None else set()) | including
        per_topic = Counter(tp.topic for tp in owned - without)
        for topic in self.input_topics:
            self._metrics.assigned_partitions.labels(topic).set(per_topic.get(topic, 0))
        if rebalanced:
            self._metrics.rebalances.inc()

    def stalled_for(self) -> float:
        """Seconds since the worker last made progress while a batch was being retried."""
        since = self.stalled_since
        return 0.0 if since is None else time.monotonic() - since

    async def refresh_lag(self) -> None:
        """``router_consumer_lag`` from the partitions' end offsets and the group's committed
        offsets, whatever the batches are doing: a stuck partition shows its growing lag."""
        consumer = self.consumer
        if consumer is None:
            return
        tps = list(consumer.assignment())
        if not tps:
            return
        try:
            marks = await consumer.watermarks(tps)
            committed = await consumer.group_offsets(tps)
        except BrokerUnavailable:
            return  # next time; the gauge keeps its last value
        for tp in tps:
            low, high = marks[tp]
            done = committed.get(tp)
            self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, high - (low if done is None else done)))

    def forget_lag(self, tp: Partition) -> None:
        with contextlib.suppress(KeyError):
            self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))

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
            marks = await consumer.watermarks(tps)
            positions = await consumer.positions(tps)
            unread = [tp for tp in tps if positions[tp] is None]
            committed = await consumer.group_offsets(unread)
        except BrokerUnavailable:
            return None
        lag = 0
        for tp in tps:
            low, high = marks[tp]
            pos = positions[tp]
            if pos is None:
                pos = committed.get(tp)
            lag += max(0, high - (low if pos is None else pos))
        return lag

    async def group_caught_up(self) -> bool:
        """True when the GROUP's committed offsets reach the end of every input partition.

        Our own lag is not enough for burst mode to exit: a member that died keeps its
        partitions until its session times out, and if every burst-mode worker left while they
        were still its, nobody would process them. Asked only when about to exit."""
        consumer = self.consumer
        if consumer is None:
            return False
        try:
            tps = await consumer.partitions_of(self.input_topics)
            marks = await consumer.watermarks(tps)
            committed = await consumer.group_offsets(tps)
        except BrokerUnavailable:
            return False
        behind = {(tp.topic, tp.partition): (max(low, committed.get(tp) or 0), high)
                  for tp, (low, high) in marks.items()
                  if high > low and (committed.get(tp) or 0) < high}
        if not behind:
            return True
        if not exactly_once(self._settings):
            return False
        try:  # router.retry, written in transactions, ends with markers no commit passes
            return await asyncio.to_thread(only_markers_between, self._settings, behind)
        except KafkaException:
            return False


def _names(tps: set[Partition]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)


def _not_before(headers: Sequence[tuple[str, bytes | None]] | None,
                written_ms: int = -1) -> float | None:
    """When a ``router.retry`` record is due: its ``x-retry-not-before``, at most
    ``MAX_RETRY_DELAY_S`` after the record was written (``written_ms``, its timestamp; -1:
    none), whoever wrote it, since its partition waits behind it. None (due at once) without
    the header, or when it is no time a clock reaches (past 9999-12-31, ``inf``, NaN)."""
    for name, value in headers or ():
        if name == H_RETRY_NOT_BEFORE:
            try:
                at = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return None
            if not at <= LATEST_EPOCH_S:  # NaN compares False
                return None
            return min(at, written_ms / 1000.0 + MAX_RETRY_DELAY_S) if written_ms >= 0 else at
    return None
