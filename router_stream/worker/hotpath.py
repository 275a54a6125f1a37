"""The hot path: batches of ``signals`` (and due ``router.retry``) records, decided and made
durable in the commit order, outside faust's per-event stream machinery.

Commit order, per batch (a crash at any point re-processes the batch; it never loses one)::

    getmany(max_records=batch_max, timeout_ms=batch_timeout_ms)
      │  engine.decide_batch(records, now)            pure, no I/O
      ▼
    1. produce   routed.<d>, router.decisions, router.dlq, router.retry, router.events —
                 idempotent producer, acks=all, EVERY delivery awaited
      ▼
    2. commit    the batch's input offsets (last offset + 1 per partition)

Nothing on this path waits for Postgres: it is a projection of router.decisions, router.dlq and
router.events written by its own consumer group (``router-stream persist``,
:mod:`router_stream.projection`), so a database outage delays the audit, never a routed signal.

Step 1 is retried through transient failures (broker down, timeouts) with capped exponential
backoff and jitter while the consumer's partitions are paused: backpressure, never a drop, and
never a commit past what is durable. A crash between 1 and 2 leaves extra copies on the output
topics (at-least-once; decision records are keyed by signal_id and carry a deterministic
decision_id, so consumers can dedupe, and the projection's ``ON CONFLICT DO NOTHING`` keeps one
row per signal).

Pipelining: the order above holds per batch and across batches, but batches overlap — batch N+1
is fetched, decided and handed to the producer while batch N waits for its acknowledgements and
its commit. Each batch's acknowledgements are awaited on their own; its step 2 starts only after
the previous batch's step 2, so offsets are committed strictly in batch order and only for fully
durable batches. A batch that fails stops every later one before step 2 (the error is raised by
``step()``); at most ``PIPELINE_DEPTH`` batches are uncommitted, which bounds what a crash
re-processes.

Rebalance: ``on_partitions_revoked`` takes the launch lock (no new batch starts) and waits until
every batch in flight finished both steps before the revoke completes, so the next owner starts
exactly after our last commit.

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
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from router_stream import tracing
from router_stream.adapters.kafka_io import group_committed_to_end
from router_stream.config import OUTCOMES, SIGNALS, Settings
from router_stream.core.deadletter import dead_letter
from router_stream.core.models import DlqReason, InboundRecord
from router_stream.core.outputs import BatchResult, DlqRecord
from router_stream.core.redaction import Redactor
from router_stream.core.refusals import (
    OutputKind,
    Refused,
    as_reference,
    output_at,
    settle_refusals,
)
from router_stream.core.wire import H_RETRY_NOT_BEFORE
from router_stream.errors import BrokerUnavailable
from router_stream.worker.backoff import Backoff, retry_transient
from router_stream.worker.crashguard import CrashGuard
from router_stream.worker.logs import trace_id_of
from router_stream.worker.metrics import WorkerMetrics
from router_stream.worker.pipeline import Batch, CommitPipeline, Engine, Handover, StepHook
from router_stream.worker.produce_errors import TopicMissing, is_refusal
from router_stream.worker.sink import (
    RETRY,
    Deliveries,
    OutputTopics,
    Refusal,
    decision_traces,
    send_alone,
    send_outputs,
    settle_deliveries,
)

log = logging.getLogger("router_stream.worker")


class _DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: SignalLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._loop.batch_lock:  # no batch launches meanwhile, and every batch in
            await self._loop.wait_in_flight()  # flight finishes both steps first
            for tp in revoked:
                self._loop.retry_paused.pop(tp, None)
                self._loop.forget_lag(tp)
            self._loop.crash_guard.revoked(revoked)
        self._loop.count_assignment()
        if revoked:
            log.info("partitions revoked", extra={"partitions": _names(revoked)})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._loop.crash_guard.assigned(assigned)
        self._loop.assigned.set()
        self._loop.count_assignment(rebalanced=True)
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
"""Batches decided but not yet committed, at most: one committing, two awaiting their
acknowledgements while the next is decided. Bounds memory and the re-processing after a crash
(and the Kafka duplicates it makes)."""


class SignalLoop:
    """Consumes in the consumer group and runs the commit order for every batch."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        producer: AIOKafkaProducer,
        metrics: WorkerMetrics,
        *,
        backoff: Backoff,
        give_up: Callable[[], bool],
        on_step: StepHook | None = None,
        renew_producer: Callable[[], Awaitable[AIOKafkaProducer]] | None = None,
        pipeline_depth: int = PIPELINE_DEPTH,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._backoff = backoff
        self._give_up = give_up
        self._sink = _KafkaSink(settings, OutputTopics.of(settings), producer, metrics,
                                renew_producer, quiesce=self._quiesce)
        self.input_topics = [settings.topic(SIGNALS), settings.topic(RETRY)]
        self._retry_topic = self.input_topics[1]
        self.consumer: AIOKafkaConsumer | None = None
        self.batch_lock = asyncio.Lock()
        self.assigned = asyncio.Event()
        self.retry_paused: dict[TopicPartition, float] = {}
        self.processed = 0
        self._paused_for_retry: set[TopicPartition] = set()
        self.crash_guard = CrashGuard(settings.poison_restarts, self._retry)
        # monotonic time of the first retry since the last commit: a batch that cannot be made
        # durable (broker down, a topic refusing everything) shows as a stall
        self.stalled_since: float | None = None
        self._pipeline = CommitPipeline(
            engine, self._sink, _KafkaCommitter(self, metrics), depth=pipeline_depth,
            retry=self._retry, on_step=on_step, on_committed=self._committed,
            on_drained=self._resume_after_retry, on_undecided=self._dead_letter_poison)

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
        commit order runs in the background (:class:`~.pipeline.CommitPipeline`). Returns
        records taken.

        Raises the error that stopped a batch in flight (after which nothing later commits)."""
        consumer = self.consumer
        assert consumer is not None, "start() first"
        self.raise_failure()
        await self._pipeline.wait_for_room()
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
            await self._pipeline.launch(decide, fetch_time, undecided=poison)
        return len(decide) + len(poison)

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

    def _dead_letter_poison(self, result: BatchResult, poison: Sequence[InboundRecord],
                            now: float) -> None:
        """Records the crash-loop guard gave up on: to the DLQ without being decided."""
        guard = self._settings.poison_restarts
        for r in poison:
            result.dlq.append(dead_letter(
                r, DlqReason.PROCESSING_ERROR,
                f"the worker stopped {guard} times on this record without getting past it",
                now, consumer_group=self._settings.group_id))
            self._metrics.poison_skips.labels(r.topic).inc()

    async def _committed(self, batch: Batch) -> None:
        self.stalled_since = None
        self.processed += len(batch.records)
        if tracing.tracer() is not None:
            _trace(batch)
        self._observe(batch, time.monotonic() - batch.fetch_time)
        if batch.result.rollout_events:
            await self._announce_rollbacks(batch.result)

    def _resume_after_retry(self) -> None:
        if self._paused_for_retry and self.consumer is not None:
            self.consumer.resume(
                *(tp for tp in self._paused_for_retry if tp not in self.retry_paused))
            self._paused_for_retry = set()

    async def _announce_rollbacks(self, result: BatchResult) -> None:
        """Tell every worker (through router.control) that a candidate was rolled back (the
        policy_versions row follows from the batch's router.events record). Best effort after
        the commit: a worker that misses the command rolls the candidate back on its own when
        its monitor sees the same rates."""
        from router_stream.config import CONTROL
        from router_stream.core.models import RolloutRollback

        for event in result.rollout_events:
            cmd = RolloutRollback(candidate_version=event.candidate_version, reason=event.reason,
                                  issued_at=event.at, issued_by="router-stream worker")
            try:
                await self._sink.producer.send_and_wait(self._settings.topic(CONTROL),
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

    def count_assignment(self, *, rebalanced: bool = False) -> None:
        """``router_assigned_partitions`` per input topic (and a rebalance counted)."""
        consumer = self.consumer
        owned = Counter(tp.topic for tp in consumer.assignment()) if consumer is not None else {}
        for topic in self.input_topics:
            self._metrics.assigned_partitions.labels(topic).set(owned.get(topic, 0))
        if rebalanced:
            self._metrics.rebalances.inc()

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

    def _observe(self, batch: Batch, elapsed: float) -> None:
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
        like the projection's Postgres rows, so a signal_id here matches its rows there."""
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
        return await group_committed_to_end(consumer, self.input_topics)


class _KafkaSink:
    """Step 1 on aiokafka: :func:`~.sink.send_outputs` / :func:`~.sink.settle_deliveries`, the
    records the broker refuses for good dead-lettered one by one, and a new producer after the
    broker refused records."""

    def __init__(self, settings: Settings, outputs: OutputTopics, producer: AIOKafkaProducer,
                 metrics: WorkerMetrics,
                 renew: Callable[[], Awaitable[AIOKafkaProducer]] | None,
                 *, quiesce: Callable[[], Awaitable[None]]) -> None:
        self._settings = settings
        self._outputs = outputs
        self.producer = producer
        self._metrics = metrics
        self._renew = renew
        self._quiesce = quiesce
        self._needs_new_producer = False

    async def send(self, result: BatchResult) -> Deliveries:
        if self._needs_new_producer and self._renew is not None:
            await self._quiesce()  # the old producer is stopped by the renewal
            self.producer = await self._renew()  # BrokerUnavailable: retried
            self._needs_new_producer = False
        return await send_outputs(self.producer, self._outputs, result)

    async def confirm(self, batch: Batch, handover: Handover | None) -> None:
        """The first attempt waits for the deliveries handed over when the batch was launched;
        a retry sends the whole batch again (at-least-once on Kafka). Records the broker
        refuses for good go to the DLQ and the batch goes on."""
        result = batch.result
        try:
            if not isinstance(handover, Deliveries):
                await self._renew_after_refusal()  # BrokerUnavailable: retried
                handover = await send_outputs(self.producer, self._outputs, result)
            refusals = await settle_deliveries(handover)
            if refusals:
                await self._dead_letter_refused(batch, refusals)
        except BrokerUnavailable as exc:
            for dest, n in getattr(exc, "failed_destinations", {}).items():
                self._metrics.routing_errors.labels(dest).inc(n)
            raise

    async def _dead_letter_refused(self, batch: Batch, refusals: list[Refusal]) -> None:
        """The records the broker refused for good: their inputs go to the DLQ (a DLQ record
        too large for router.dlq as a reference), a refused route counts as a routing error
        and a failed outcome of its destination, and the batch goes on."""
        result = batch.result
        outputs = len(result.routed) + len(result.decisions) + len(result.dlq) + len(
            result.retries)
        refused: list[Refused] = []
        for r in refusals:
            if r.position >= outputs:  # a router.events record: an audit row, not an input
                log.error("router.events refused a state event; its row will be missing",
                          extra={"topic": r.topic, "error": repr(r.error)})
                continue
            kind, index = output_at(result, r.position)
            error: BaseException | tuple[str, int, int] = r.error
            if not isinstance(r.error, TopicMissing):
                error = await self._alone(result, kind, index)
            if isinstance(error, tuple):  # accepted on its own
                continue
            refused.append(Refused(kind, index, r.topic, repr(error)))
        if not refused:
            return
        log.error("the broker refused records for good; their signals go to the DLQ",
                  extra={"refused": {r.topic: r.error for r in refused}})
        repair = settle_refusals(result, batch.records, refused, batch.now,
                                 self._settings.group_id)
        for dest, _ in repair.failed_routes:
            self._metrics.routing_errors.labels(dest).inc()
        await self._send_repair(repair.dlq)
        if repair.dlq:  # some may have become references on the way
            result.dlq[-len(repair.dlq):] = repair.dlq
        await self._report_failed_routes(repair.failed_routes, batch.now)

    async def _alone(self, result: BatchResult, kind: OutputKind, index: int
                     ) -> BaseException | tuple[str, int, int]:
        """Send one refused output again on its own: the broker refuses a whole produce batch
        for one record in it that is too large, and the others pass alone. Returns where it
        landed, or the error if it is refused again; a transient error is raised (the batch
        is retried)."""
        self._needs_new_producer = True
        await self._renew_after_refusal()
        try:
            return await send_alone(self.producer, self._outputs, result, kind, index)
        except KafkaError as exc:
            if not is_refusal(exc):
                raise BrokerUnavailable(f"sending a refused record again: {exc!r}") from exc
            self._needs_new_producer = True
            return exc

    async def _renew_after_refusal(self) -> None:
        """An idempotent producer whose batch was refused fails every later send to that
        partition (OutOfOrderSequenceNumber); a new producer (new producer id) does not."""
        if self._needs_new_producer and self._renew is not None:
            self.producer = await self._renew()
        self._needs_new_producer = False

    async def _send_repair(self, dlq: list[DlqRecord]) -> None:
        """Send the DLQ records that replace refused outputs; one of them refused again (too
        large for router.dlq) goes as a reference. A refused reference is transient: retried."""
        for _ in range(2):
            await self._renew_after_refusal()
            deliveries = await send_outputs(self.producer, self._outputs, BatchResult(dlq=dlq))
            refusals = await settle_deliveries(deliveries)
            if not refusals:
                return
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
                await self.producer.send(topic, value, key=dest.encode())
            except KafkaError as exc:
                log.warning("could not report a refused route", extra={"error": repr(exc)})


class _KafkaCommitter:
    """Step 2 on aiokafka: the loop's consumer commits; the lag gauge follows."""

    def __init__(self, loop: SignalLoop, metrics: WorkerMetrics) -> None:
        self._loop = loop
        self._metrics = metrics

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        """Commit last offset + 1 of every partition in the batch we still own."""
        consumer = self._loop.consumer
        assert consumer is not None
        last: dict[TopicPartition, int] = {}
        for r in records:
            last[TopicPartition(r.topic, r.partition)] = r.offset + 1
        owned = consumer.assignment()
        offsets = {tp: off for tp, off in last.items() if tp in owned}
        if not offsets:
            return
        guard = self._loop.crash_guard
        marked = {tp: OffsetAndMetadata(off, guard.metadata(tp, off))
                  for tp, off in offsets.items()}
        try:
            with self._metrics.commit_seconds.time():
                await consumer.commit(marked)
        except (CommitFailedError, IllegalStateError) as exc:
            # Rebalanced away: the new owner re-processes from our last commit (more
            # at-least-once copies on Kafka; one row per signal in the projection).
            log.warning("offset commit refused after a rebalance", extra={"error": str(exc)})
        except KafkaError as exc:
            raise BrokerUnavailable(f"committing offsets: {exc!r}") from exc
        lag = self._metrics.consumer_lag
        for tp, off in offsets.items():
            hw = consumer.highwater(tp)
            if hw is not None:
                lag.labels(tp.topic, str(tp.partition)).set(max(0, hw - off))


def _trace(batch: Batch) -> None:
    """A ``router.route`` span per decided or dead-lettered signal that carried a trace
    context, from its decision to its commit (ids masked as in the logs)."""
    result, redactor = batch.result, batch.redactor
    traces = decision_traces(result)
    decided = ((traces.get(d.signal_id), {
        "router.signal_id": redactor.identifier(d.signal_id, "signal_id"),
        "router.decision_id": d.decision_id, "router.kind": d.kind,
        "router.destinations": list(d.destinations), "router.strategy": d.strategy,
        "router.policy_version": d.policy_version}) for d in result.decisions)
    dead = ((q.entry.original_headers, {"router.dlq_reason": q.entry.reason.value})
            for q in result.dlq)
    tracing.record_spans("router.route", [*decided, *dead], batch.now)


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
