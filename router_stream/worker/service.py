"""One router worker: wiring the engine to Kafka and the health/metrics endpoints.

Longer than the ~500 lines a module is kept to: start, run, stop and the side tasks they own
(state events, checkpoints, heartbeat, gauges) share the worker's fields and are read in order
here; each step's work lives in its own module (hotpath, state, heartbeat, trust_snapshots).

Lifecycle::

    start()   policy file -> engine; verify topics (refuse to start otherwise); idempotent
              producer; restore the newest checkpoint and replay the state topics after it
              (StateFollower); join the consumer group (SignalLoop); periodic tasks (state
              events to router.events, checkpoints) and the heartbeat; /livez /readyz /metrics
    run()     batches until request_stop() — or, in burst mode, until the input lag has been 0
              for ``exit_when_idle`` seconds
    stop()    drain: the batch in flight finishes all commit steps, then leave the group, flush
              side writes, a last ``stopped`` heartbeat, close everything — bounded by
              ``drain_timeout_s`` (< 30 s)

Routing never waits for Postgres: the worker's only connection to it is the heartbeat (a pool
that connects lazily); every row is written by the projection (``router-stream persist``) from
the records the worker produced. The worker is a plain asyncio object so tests drive it
in-process; :mod:`.app` hosts it with SIGTERM/SIGINT handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg
from confluent_kafka import KafkaException

from router_stream.adapters import postgres as pg
from router_stream.adapters.checkpoint_store import (
    Checkpoint,
    CheckpointWriter,
    PolicyOrigin,
    load_checkpoints,
)
from router_stream.adapters.heartbeat_store import (
    HeartbeatStore,
    KafkaHeartbeats,
    PostgresHeartbeats,
)
from router_stream.config import EVENTS, SIGNALS, Settings
from router_stream.core.breaker import BreakerTransition
from router_stream.core.events import (
    BreakerTransitionEvent,
    PolicyVersionEvent,
    RouterEvent,
    TrustSnapshotEvent,
    encode_event,
)
from router_stream.errors import (
    BrokerUnavailable,
    ProducerFailed,
    RouterError,
    TransientError,
    UserError,
)
from router_stream.worker.backoff import Backoff
from router_stream.worker.heartbeat import Heartbeat, default_worker_id
from router_stream.worker.hotpath import SignalLoop
from router_stream.worker.http import HealthServer
from router_stream.worker.metrics import WorkerMetrics
from router_stream.worker.pipeline import StepHook
from router_stream.worker.policy_source import build_engine, read_policy_file
from router_stream.worker.rdkafka import OutputProducer, Partition
from router_stream.worker.state import PolicyEvent, StateFollower
from router_stream.worker.trust_snapshots import SnapshotSelector

if TYPE_CHECKING:  # imported when used: router_stream.projection imports worker.backoff
    from router_stream.projection import Projection

log = logging.getLogger("router_stream.worker")

TRUST_SNAPSHOT_EVERY_S = 10.0
SIDE_WRITE_EVERY_S = 1.0
SNAPSHOT_CHUNK = 5000  # scores per router.events record (~200 kB)
LAG_REFRESH_S = 5.0
"""How often the lag gauge is computed from end offsets and committed offsets (two requests)."""
PRODUCER_CLOSE_S = 5.0
"""How long stopping waits for the side producer to deliver what it still holds (records the
writers gave up on: a topic deleted under them)."""


class StartupRefused(RouterError):
    """The worker cannot start safely (missing topics, no policy); one line says why."""


class RouterWorker:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: Any = None,
        on_step: StepHook | None = None,
        backoff: Backoff | None = None,
        drain_timeout_s: float = 25.0,
        http: bool = True,
        verify: bool = True,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = WorkerMetrics(per_id_limit=settings.metrics_per_id or None)
        self._on_step = on_step
        self._backoff = backoff or Backoff()
        self._drain_timeout_s = drain_timeout_s
        self._http_enabled = http
        self._verify = verify
        self._stopping = asyncio.Event()
        self._drain_deadline: float | None = None
        self._pending_transitions: list[BreakerTransition] = []
        self._pending_policies: list[PolicyEvent] = []
        self._snapshots = SnapshotSelector()
        self._tasks: list[asyncio.Task[Any]] = []
        self._topics_ok = not verify
        self._crashed: BaseException | None = None
        self.pool: asyncpg.Pool | None = None
        self.producer: OutputProducer | None = None
        self.follower: StateFollower | None = None
        self.signals: SignalLoop | None = None
        self.http: HealthServer | None = None
        self.heartbeat: Heartbeat | None = None
        self.projection: Projection | None = None
        self._projection_task: asyncio.Task[Any] | None = None
        self._policy_origin: PolicyOrigin | None = None
        self._checkpoints: CheckpointWriter | None = None

    # --- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if self.engine is None:
            text, compiled = read_policy_file(s)
            self.engine = build_engine(s, compiled)
            self._policy_origin = PolicyOrigin("file", text, s.policy_file or "<policy>")
        self.metrics.set_policy(self.engine.policy_version)
        if self._http_enabled:
            self.http = HealthServer(self.metrics, alive=self._alive, readiness=self.readiness)
            port = await self.http.start(s.http_host, s.http_port)
            log.info("http listening", extra={"host": s.http_host, "port": port})
        if self._verify:
            await self._wait_for_topics()
        if s.persist:  # heartbeats only; min_size=0: no connection until the first beat
            self.pool = await pg.create_pool(s, min_size=0, max_size=1)
        else:
            log.info("no Postgres (ROUTER_PERSIST=false): heartbeats go to router.workers; "
                     "`router-stream dlq reindex` rebuilds dlq_entries from router.dlq")
        await self._start_producer()
        checkpoint = await self._load_checkpoint()
        self.follower = StateFollower(
            s, self.engine, on_transitions=self._on_transitions, on_policy=self._on_policy,
            reload_policy=lambda: read_policy_file(self.settings),
            policy=self._policy_origin, checkpoint=checkpoint, on_control=self._on_control,
            on_skip=lambda topic, reason: self.metrics.state_skipped.labels(topic, reason).inc())
        await self.follower.start()
        self._spawn(self.follower.run(), "state")
        await self._until_caught_up()  # decide only with the replayed state
        self.signals = SignalLoop(
            s, self.engine, self.metrics, backoff=self._backoff,
            give_up=self._past_drain_deadline, on_step=self._on_step,
            side_producer=lambda: self.producer)
        await self.signals.start()
        self.heartbeat = Heartbeat(self, self._heartbeat_store())
        self._spawn(self.heartbeat.run(), "heartbeat")
        self._spawn(self._publish_events(), "events")
        if s.worker_persist and s.persist:  # ROUTER_PERSIST=false: no Postgres to write
            from router_stream.projection import Projection

            self.projection = Projection(s, backoff=self._backoff, http=False)
            self._spawn(self._run_projection(self.projection), "projection")
            self._projection_task = self._tasks.pop()  # stopped last: it drains (stop())
        if s.checkpoint_interval_s > 0 and self._policy_origin is not None:
            self._spawn(self._write_checkpoints(s.checkpoint_interval_s), "checkpoints")
        self.metrics.watch_state(self._state_for_metrics)
        self._spawn(self._refresh_gauges(), "gauges")
        log.info("worker started", extra={"group_id": s.group_id,
                                           "policy_version": self.engine.policy_version,
                                           "inputs": self.signals.input_topics})

    async def _until_caught_up(self) -> None:
        """Wait for the state replay, but not past a stop request or a crashed replay (which
        would otherwise leave start-up waiting forever, deaf to SIGTERM)."""
        assert self.follower is not None
        caught_up = asyncio.create_task(self.follower.caught_up.wait())
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({caught_up, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            caught_up.cancel()
            stopping.cancel()
        if not self.follower.caught_up.is_set():
            await self.stop()
            if self._crashed is not None:
                raise self._crashed
            raise StartupRefused("stopped before the state topics were replayed")

    async def _load_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint on router.state; remembers its superseded chunks for
        deletion by this worker's writer."""
        try:
            loaded = await load_checkpoints(self.settings)
        except UserError as exc:  # no router.state topic (only when verification is off)
            log.warning("no checkpoints read", extra={"error": str(exc)})
            loaded = None
        if loaded is not None and loaded.problem:
            log.warning(loaded.problem)
        latest = loaded.latest if loaded is not None else None
        if self.settings.checkpoint_interval_s > 0:
            self._checkpoints = CheckpointWriter(
                self.settings, lambda: self.producer,
                writer=self.settings.worker_id or default_worker_id(),
                stale_keys=loaded.stale_keys if loaded is not None else None,
                last_offsets=latest.offsets if latest is not None else None)
        return latest

    def _writes_checkpoints(self) -> bool:
        """One writer per group: the worker that owns partition 0 of ``signals``."""
        consumer = self.signals.consumer if self.signals is not None else None
        if consumer is None:
            return False
        return Partition(self.settings.topic(SIGNALS), 0) in consumer.assignment()

    async def _write_checkpoints(self, every_s: float) -> None:
        """Every ``every_s``: a checkpoint, when this worker is the writer and the state topics
        moved since the last one. A failed write is logged and retried at the next interval
        (the previous checkpoint stays valid meanwhile)."""
        assert self.follower is not None and self._checkpoints is not None
        while True:
            await asyncio.sleep(every_s)
            if (not self._writes_checkpoints()
                    or self.follower.positions == self._checkpoints.last_offsets):
                continue
            ckpt = self.follower.checkpoint(self._checkpoints.writer)
            if ckpt is None:
                continue
            started = time.monotonic()
            try:
                chunks, size = await self._checkpoints.write(ckpt)
            except TransientError as exc:
                log.warning("checkpoint not written, will retry", extra={"error": str(exc)})
                continue
            log.info("checkpoint written", extra={
                "checkpoint": ckpt.checkpoint_id, "chunks": chunks, "bytes": size,
                "seconds": round(time.monotonic() - started, 3),
                "policy_version": ckpt.policy_version})

    def _heartbeat_store(self) -> HeartbeatStore:
        """Heartbeats go where the deployment keeps its ledger: Postgres, or the compacted
        router.workers topic when persistence is off (docs/operations.md)."""
        if self.pool is not None:
            return PostgresHeartbeats(self.pool)
        return KafkaHeartbeats(self.settings, lambda: self.producer)

    async def _start_producer(self) -> None:
        """Start the producer of heartbeats, checkpoints and state events: the same kind as the
        signal loop's (:class:`~.kafka_sink.KafkaSink`), but its own instance, because it
        outlives the signal loop when stopping (the last heartbeat is sent after the loop's
        producer is closed)."""
        producer = OutputProducer(self.settings, "router-stream-worker-side")
        try:
            await producer.check_connection()  # BrokerUnavailable: why, in one line
        except BaseException:
            await producer.close(0)
            raise
        self.producer = producer
        self._spawn(self._stop_when_failed(producer), "side-producer")

    async def _stop_when_failed(self, producer: OutputProducer) -> None:
        """A producer that failed for good fails every later send: stop with one line (exit 2),
        as exactly-once mode's transactional producer does, and let the restart make a new one.
        (The signal loop's own producer is replaced in place instead: ``KafkaSink``.)"""
        reason = await producer.failed()
        failure = ProducerFailed(
            f"the side producer (heartbeats, checkpoints, state events) failed for good: "
            f"{reason}; stopping, a restart makes a new one")
        log.error(str(failure))
        self._crashed = self._crashed or failure
        self.request_stop()

    async def _wait_for_topics(self) -> None:
        """Verify the declared topics; while some are missing or wrong, wait up to
        ``startup_wait_s`` (not ready, logging what is missing) — a worker started before the
        init job is not a crash loop — then refuse to start with one line."""
        from router_stream.adapters.topics import TopicMismatch, verify_topics

        deadline = time.monotonic() + self.settings.startup_wait_s
        attempt = 0
        while True:
            try:
                await verify_topics(self.settings, self.engine.destinations)
                self._topics_ok = True
                return
            except TopicMismatch as exc:
                problems = "; ".join(str(p) for p in exc.problems)
                fix = exc.fix
            remaining = deadline - time.monotonic()
            if self._stopping.is_set():
                raise StartupRefused(f"stopped while waiting for topics: {problems}")
            if remaining <= 0:
                raise StartupRefused(f"refusing to start: {problems} ({fix})")
            delay = min(remaining, 10.0, 0.5 * 2 ** attempt)
            attempt += 1
            log.warning("waiting for topics", extra={
                "problems": problems, "retry_in_s": round(delay, 1),
                "gives_up_in_s": round(remaining, 1), "fix": fix})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"router-worker-{name}")
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._crashed = task.exception()
        log.error("background task failed; stopping", exc_info=task.exception(),
                  extra={"task": task.get_name()})
        self.request_stop()

    # --- run --------------------------------------------------------------------------------

    async def run(self, *, exit_when_idle: float | None = None) -> None:
        """Process batches until stopped (or idle for ``exit_when_idle`` s), then drain."""
        assert self.signals is not None, "start() first"
        idle_since: float | None = None
        try:
            while not self._stopping.is_set():
                n = await self.signals.step()
                if exit_when_idle is None:
                    continue
                if n or not await self._idle():
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= exit_when_idle:
                    if not await self.signals.group_caught_up():
                        idle_since = None  # a dead member's partitions are not done yet
                        continue
                    log.info("input idle, exiting", extra={"idle_s": exit_when_idle})
                    break
        finally:
            await self.stop()
        if self._crashed is not None:
            raise self._crashed
        if self.signals.failure is not None:  # a batch that failed while the loop was draining
            raise self.signals.failure

    async def run_until_idle(self, idle_s: float = 1.0) -> None:
        """Burst mode (like arq's ``burst=True``): start, process until nothing is left, stop."""
        await self.start()
        await self.run(exit_when_idle=idle_s)

    async def _idle(self) -> bool:
        assert self.signals is not None and self.follower is not None
        if self.signals.in_flight:
            return False
        lag = await self.signals.input_lag()
        if lag != 0 or self._pending_transitions or self._pending_policies:
            return False
        return self.projection is None or await self.projection.caught_up()

    async def _drain_projection(self, task: asyncio.Task[Any]) -> None:
        """``worker --persist``: let the projection write what this worker produced, within
        the drain deadline; what is left is written by the next projection run (nothing is
        lost either way: it is on Kafka, and offsets were committed only for what was written).
        The target is where the topics end now, after our last output: under load the other
        workers keep producing, and a moving end would hold the drain to its deadline."""
        assert self.projection is not None
        deadline = (self._drain_deadline or time.monotonic()) - 3.0  # room for the rest of stop()
        ends = None
        while not task.done() and time.monotonic() < deadline:
            ends = ends or await self.projection.end_offsets()
            if ends is not None and await self.projection.written_through(ends):
                return
            await asyncio.sleep(0.05)

    async def _stop_projection(self, task: asyncio.Task[Any]) -> None:
        """``worker --persist``: drain the projection, then let it stop itself (leave the group,
        close its pool). Cancelling it would interrupt that stop part-way at each of its awaits,
        so it is cancelled only if it has not ended within ``CANCEL_TIMEOUT_S``, and then its
        ``stop()`` is called once more (bounded): it finishes a stop that was interrupted."""
        assert self.projection is not None
        await self._drain_projection(task)
        self.projection.request_stop()
        await asyncio.wait({task}, timeout=CANCEL_TIMEOUT_S)
        await _cancel_all([task])
        with contextlib.suppress(Exception, TimeoutError):
            async with asyncio.timeout(CANCEL_TIMEOUT_S):
                await self.projection.stop()

    async def _run_projection(self, projection: Projection) -> None:
        """``worker --persist``: the projection as a task of its own; routing never waits for
        it (a database outage pauses only this task)."""
        try:
            await projection.start()
            await projection.run()
        finally:
            await projection.stop()

    def request_stop(self) -> None:
        """SIGTERM: stop fetching; the batch in flight still completes every commit step."""
        if not self._stopping.is_set():
            log.info("stop requested, draining")
            self._drain_deadline = time.monotonic() + self._drain_timeout_s
            self._stopping.set()
            if self.heartbeat is not None:
                self.heartbeat.wake()  # say "draining" now, not at the next interval

    @property
    def draining(self) -> bool:
        return self._stopping.is_set()

    def _past_drain_deadline(self) -> bool:
        return self._drain_deadline is not None and time.monotonic() > self._drain_deadline

    # --- stop -------------------------------------------------------------------------------

    async def stop(self) -> None:
        self.request_stop()
        if self.signals is not None:
            await self.signals.stop()
        await _cancel_all(self._tasks)
        self._tasks.clear()
        with contextlib.suppress(TransientError, TimeoutError):
            async with asyncio.timeout(5):
                await self._publish_pending()
        if self._projection_task is not None:
            await self._stop_projection(self._projection_task)
            self._projection_task = None
        if self.heartbeat is not None:
            failed = self._crashed is not None or (
                self.signals is not None and self.signals.failure is not None)
            await self.heartbeat.final(failed=failed)  # bounded, never raises
        if self.follower is not None:
            await self.follower.stop()
        if self.producer is not None:
            producer, self.producer = self.producer, None
            with contextlib.suppress(Exception):
                await producer.close(PRODUCER_CLOSE_S)
        if self.pool is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.pool.close()
        if self.http is not None:
            await self.http.stop()
        log.info("worker stopped", extra={"processed": self.signals.processed
                                          if self.signals else 0})

    # --- state events -> metrics and router.events ---------------------------------------------

    def _on_transitions(self, transitions: list[BreakerTransition]) -> None:
        self._pending_transitions.extend(transitions)
        for t in transitions:
            self.metrics.breaker_transitions.labels(t.target_id, t.to_state.value).inc()
            log.info("breaker transition", extra={
                "target": t.target_id, "from": t.from_state.value, "to": t.to_state.value,
                "at": t.at, "reason": t.reason})

    def _take_transitions(self) -> list[BreakerTransition]:
        taken, self._pending_transitions = self._pending_transitions, []
        return taken

    def _on_control(self, command: str, accepted: bool) -> None:
        self.metrics.control_commands.labels(
            command, "accepted" if accepted else "refused").inc()

    def _on_policy(self, event: PolicyEvent) -> None:
        if event.accepted:
            self.metrics.set_policy(self.engine.policy_version)
            if event.live and self.heartbeat is not None:
                self.heartbeat.wake()  # `policy show` sees the switch within a beat
        if event.live:  # a replay at start-up re-reads history that was recorded when it happened
            self._pending_policies.append(event)

    # --- periodic state events ----------------------------------------------------------------

    async def _publish_events(self) -> None:
        """Transitions the state topics caused, policy versions and trust snapshots, to
        router.events (the projection writes them to Postgres). A failed send keeps them and is
        retried at the next interval; routing never waits for it."""
        last_snapshot = 0.0
        while True:
            await asyncio.sleep(SIDE_WRITE_EVERY_S)
            try:
                await self._publish_pending()
                now = time.time()
                if now - last_snapshot >= TRUST_SNAPSHOT_EVERY_S:
                    await self._snapshot_trust(now)
                    last_snapshot = now
            except TransientError as exc:
                log.warning("state events not published, will retry", extra={"error": str(exc)})

    async def _publish_pending(self) -> None:
        transitions = self._take_transitions()
        policies, self._pending_policies = self._pending_policies, []
        events: list[RouterEvent] = [BreakerTransitionEvent.of(t) for t in transitions]
        events.extend(PolicyVersionEvent(
            version=p.version, policy_yaml=p.policy_yaml,
            status="active" if p.accepted else "rejected", published_by=p.published_by,
            status_reason=None if p.accepted else p.message, at=time.time()) for p in policies)
        try:
            await self._send_events(events)
        except BaseException:
            self._pending_transitions[:0] = transitions
            self._pending_policies[:0] = policies
            raise

    async def _send_events(self, events: list[RouterEvent]) -> None:
        producer = self.producer
        if not events or producer is None:
            return
        topic = self.settings.topic(EVENTS)
        try:
            await asyncio.gather(*[producer.send(topic, value, key)
                                   for key, value in map(encode_event, events)])
        except KafkaException as exc:
            raise BrokerUnavailable(f"publishing state events: {exc!r}") from exc

    async def _snapshot_trust(self, now: float) -> None:
        """Scores that moved (or are due for a refresh, :mod:`~router_stream.worker.
        trust_snapshots`). ``at`` is rounded to the snapshot period, so UNIQUE(source_id, at)
        keeps one row per source per period however many workers publish it."""
        trust = self.engine.snapshot(now).trust
        due = self._snapshots.due(trust, now)
        if due:
            at = math.floor(now / TRUST_SNAPSHOT_EVERY_S) * TRUST_SNAPSHOT_EVERY_S
            scores = [(source, min(1.0, max(0.0, score))) for source, score in due.items()]
            await self._send_events([  # chunked: one record stays far below max.message.bytes
                TrustSnapshotEvent(scores=dict(scores[i:i + SNAPSHOT_CHUNK]), at=at)
                for i in range(0, len(scores), SNAPSHOT_CHUNK)])
        self._snapshots.written(due, now, trust)

    async def _refresh_gauges(self) -> None:
        """router_ready every second, router_consumer_lag every LAG_REFRESH_S; trust_score and
        breaker_state are read at each scrape (:meth:`_state_for_metrics`), not copied into
        per-id gauges here."""
        last_lag = 0.0
        while True:
            self.metrics.ready.set(1 if all(self.readiness().values()) else 0)
            if self.signals is not None and time.monotonic() - last_lag >= LAG_REFRESH_S:
                last_lag = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LAG_REFRESH_S):
                        await self.signals.refresh_lag()
            await asyncio.sleep(1.0)

    def _state_for_metrics(self) -> tuple[dict[str, float], dict[str, str]]:
        snap = self.engine.snapshot(time.time())
        return snap.trust, snap.breakers

    # --- health -----------------------------------------------------------------------------

    def _alive(self) -> bool:
        return self._crashed is None

    def readiness(self) -> dict[str, bool]:
        checks = {
            "topics": self._topics_ok,
            "state_replayed": self.follower is not None and self.follower.caught_up.is_set(),
            "group_joined": self.signals is not None and self.signals.assigned.is_set(),
            "not_draining": not self._stopping.is_set(),
            "making_progress": self.signals is None
            or self.signals.stalled_for() < self.settings.stall_threshold_s,
        }
        return checks


CANCEL_TIMEOUT_S = 5.0
"""How long stop() waits for its background tasks to end once cancelled (part of the drain)."""


async def _cancel_all(tasks: list[asyncio.Task[Any]], timeout_s: float = CANCEL_TIMEOUT_S) -> None:
    """Cancel the worker's background tasks and wait for them, bounded.

    A cancellation can be lost (Python 3.11's ``asyncio.wait_for`` swallows one that lands as
    its inner await completes, in our code or a library's); awaiting such a task forever made
    ``stop()`` hang after "stop requested, draining". So: cancel again every half second until
    all have ended, and past ``timeout_s`` say which did not and go on stopping."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {t for t in tasks if not t.done()}
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(0.5, deadline - loop.time()))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: an error was already logged by _task_done
    if pending:
        log.error("background tasks did not stop when cancelled; going on stopping",
                  extra={"tasks": sorted(t.get_name() for t in pending)})


def install_signal_handlers(worker: RouterWorker, loop: asyncio.AbstractEventLoop) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)


async def run_worker(settings: Settings, *, exit_when_idle: float | None = None,
                     configure: Callable[[RouterWorker], None] | None = None) -> None:
    """Start a worker, stop it on SIGTERM/SIGINT (or when idle), drain."""
    worker = RouterWorker(settings)
    if configure is not None:
        configure(worker)
    install_signal_handlers(worker, asyncio.get_running_loop())
    try:
        await worker.start()
    except BaseException:
        await worker.stop()
        raise
    freeze_what_start_built()
    await worker.run(exit_when_idle=exit_when_idle)


def freeze_what_start_built() -> None:
    """Move what start-up built (modules, the policy, the restored state) out of the cyclic
    collector's view: it lives as long as the process, and each full collection would traverse
    it with the event loop stopped (25-66 ms every ~20 s at 1k signals/s, 2-6 ms frozen;
    docs/performance.md). Collected first, so no garbage cycle is frozen for good; objects frozen
    are still freed when their last reference goes."""
    gc.collect()
    gc.freeze()
