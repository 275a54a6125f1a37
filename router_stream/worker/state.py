"""Shared routing state: every worker folds ``source-health``, ``outcomes`` and ``router.control``
IN FULL into its engine.

Why not a faust GlobalTable: those three topics are low volume and *are* the state's log already.
Reading them in full (all partitions assigned, no consumer group, from the beginning at start-up,
then live) makes each worker's trust / breaker / bandit / override / policy state a deterministic
replay of the same records, equal on every worker within one fetch (~100 ms) of the event — with
no second changelog to keep consistent with the first, no standby replicas and no recovery
protocol of our own. Start-up cost is proportional to the retained history of those topics, so
``topics/topics.yaml`` keeps them on bounded retention (and, for an exact replay order, on one
partition each: across partitions, records are applied in timestamp order per fetch).

Replay uses each record's timestamp as ``now`` (never the wall clock), so replaying the same
topics yields the same state; time-driven moves (cooldowns, override expiry) run from
``engine.tick(wall clock)`` only once the replay caught up with the end offsets seen at start.

Retention bounds what a replay can see, so a starting worker first restores the newest
checkpoint (:mod:`.checkpoints`: the state plus the offsets it reflects) and replays only the
records after it; :meth:`StateFollower.checkpoint` takes one for the worker that writes them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from router_stream.adapters.checkpoint_store import (
    Checkpoint,
    PolicyOrigin,
    StatePartition,
    new_checkpoint_id,
)
from router_stream.adapters.kafka_failures import RdkafkaLog, rdkafka_error
from router_stream.adapters.kafka_io import fetch
from router_stream.adapters.rdkafka import ClientThread, connect, reader, watermarks
from router_stream.config import CONTROL, OUTCOMES, SOURCE_HEALTH, Settings
from router_stream.core.breaker import BreakerTransition
from router_stream.core.checkpoint import CheckpointRefused, capture, restore_state
from router_stream.core.compiled import routable_destinations
from router_stream.core.engine import ControlResult
from router_stream.core.models import OverrideSet, PolicyPublish, PolicyReload
from router_stream.core.overrides import OverrideKind
from router_stream.core.parsing import Rejection, parse_control, parse_health, parse_outcome
from router_stream.errors import BrokerUnavailable, PolicyError
from router_stream.worker.policy_source import compile_policy_text

log = logging.getLogger("router_stream.worker.state")

TICK_INTERVAL_S = 0.1
FETCH_WAIT_MS = 100
FETCH_MIN_BYTES = 64 * 1024
"""The follower's fetches wait at the broker for 64 KiB or 100 ms, whichever comes first: state
records reach the engine up to 100 ms later, and a stream of them costs a fetch per 100 ms
instead of one per few records. With outcomes at 1k/s, answered at the first record, the
follower cost the worker 0.21 cores and the broker 0.27-0.56; held, 0.04 and 0.15
(docs/performance.md, "The state follower's fetches")."""
CLUSTER_TOPICS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class PolicyEvent:
    """A policy publish/reload the follower applied (or refused), for the worker to record."""

    version: str
    policy_yaml: str
    accepted: bool
    message: str
    published_by: str
    live: bool  # False while replaying history at start-up


class StateFollower:
    """Owns the consumer of the state topics and the order in which they reach the engine."""

    def __init__(
        self,
        settings: Settings,
        engine: Any,
        *,
        on_transitions: Callable[[list[BreakerTransition]], None],
        on_policy: Callable[[PolicyEvent], None],
        reload_policy: Callable[[], tuple[str, Any]],
        policy: PolicyOrigin | None = None,
        checkpoint: Checkpoint | None = None,
        on_control: Callable[[str, bool], None] | None = None,
        on_skip: Callable[[str, str], None] = lambda topic, reason: None,
    ) -> None:
        self._settings = settings
        self._on_skip = on_skip  # (topic, reason) of a state record skipped
        # The active policy's text and origin, for checkpoints (None: an engine built by a
        # test, not from a policy file — no checkpoint can say how to rebuild it).
        self.policy = policy
        self._checkpoint = checkpoint
        self.restored: Checkpoint | None = None
        self.positions: dict[StatePartition, int] = {}
        self._engine = engine
        self._on_transitions = on_transitions
        self._on_policy = on_policy
        self._reload_policy = reload_policy
        self._topics = [settings.topic(t) for t in (SOURCE_HEALTH, OUTCOMES, CONTROL)]
        self._consumer: Consumer | None = None
        self._thread = ClientThread("state-follower")
        self._end_at_start: dict[StatePartition, int] = {}
        self._clock = 0.0
        self.caught_up = asyncio.Event()
        self.applied = 0
        self._on_control = on_control
        # The cluster's topic names, read before folding live control records (None: unknown,
        # so commands are not checked against them).
        self._cluster_topics: frozenset[str] | None = None

    async def start(self) -> None:
        """Assign every partition of the three topics and remember where "now" ends."""
        log_ = RdkafkaLog()
        consumer = reader(self._settings, log_, client_id="router-stream-state",
                          fetch_wait_ms=FETCH_WAIT_MS, fetch_min_bytes=FETCH_MIN_BYTES)
        try:
            await connect(self._thread, consumer, log_, self._settings)
            tps = await self._partitions(consumer)
            if not tps:
                raise BrokerUnavailable(f"no partitions found for {', '.join(self._topics)}")
            begin: dict[StatePartition, int] = {}
            for tp in tps:
                begin[tp], self._end_at_start[tp] = await watermarks(
                    self._thread, consumer, TopicPartition(*tp))
            self.positions = self._start_positions(begin)
            await self._thread.run(consumer.assign, [
                TopicPartition(tp.topic, tp.partition, offset)
                for tp, offset in self.positions.items()])
        except KafkaException as exc:
            await self._close(consumer)
            raise rdkafka_error(self._settings, "reading the state topics", exc) from exc
        except BaseException:
            await self._close(consumer)
            raise
        self._consumer = consumer
        await self._check_caught_up()

    async def _close(self, consumer: Consumer) -> None:
        await asyncio.shield(self._thread.run(consumer.close))

    def _start_positions(self, begin: dict[StatePartition, int]) -> dict[StatePartition, int]:
        """Where to start reading each partition: after the checkpoint when one can be
        restored, else the beginning. Restores the checkpoint into the engine."""
        ckpt = self._checkpoint
        if ckpt is not None:
            try:
                starts = self._restore(ckpt, begin)
            except (CheckpointRefused, PolicyError) as exc:
                log.warning("checkpoint not restored; replaying the state topics in full",
                            extra={"checkpoint": ckpt.checkpoint_id,
                                   "error": str(exc).replace("\n", "; ")})
            else:
                self.restored = ckpt
                return starts
        trimmed = {f"{tp.topic}/{tp.partition}": off for tp, off in begin.items() if off > 0}
        if trimmed:
            log.warning("state topics start after offset 0 and there is no checkpoint: state "
                        "older than their retention is not replayed", extra={"first": trimmed})
        return dict(begin)

    def _restore(self, ckpt: Checkpoint, begin: dict[StatePartition, int]
                 ) -> dict[StatePartition, int]:
        beyond = [f"{tp.topic}/{tp.partition}" for tp, off in ckpt.offsets.items()
                  if tp in self._end_at_start and off > self._end_at_start[tp]]
        if beyond:
            raise CheckpointRefused(f"its offsets are past the end of {', '.join(beyond)} "
                                    "(were the topics recreated?)")
        if not isinstance(ckpt.state, dict):  # a captured checkpoint was never encoded
            raise CheckpointRefused("checkpoint holds no document")
        engine = self._engine
        baseline = engine.policy
        try:
            if ckpt.policy.origin == "control":  # a replay would end on this published policy
                engine.replace_policy(compile_policy_text(ckpt.policy.text, ckpt.policy.source))
            restore_state(engine, ckpt.state)
        except (CheckpointRefused, PolicyError):
            engine.replace_policy(baseline)
            raise
        except Exception as exc:  # noqa: BLE001 - a MemoryError, say: refused like a bad
            # document, so the worker replays in full instead of failing to start
            engine.replace_policy(baseline)
            raise CheckpointRefused(f"{type(exc).__name__}: {exc}") from exc
        if ckpt.policy.origin == "control":
            self.policy = ckpt.policy
            self._on_policy(PolicyEvent(engine.policy_version, ckpt.policy.text, True,
                                        f"restored from checkpoint {ckpt.checkpoint_id}", "",
                                        live=False))
        self._clock = ckpt.clock
        starts: dict[StatePartition, int] = {}
        for tp, first in begin.items():
            at = ckpt.offsets.get(tp, 0)
            if at < first:
                log.warning("records between the checkpoint and the start of a state topic "
                            "were deleted by retention; state misses them", extra={
                                "partition": f"{tp.topic}/{tp.partition}", "checkpoint_at": at,
                                "first_offset": first})
            starts[tp] = max(at, first)
        log.info("checkpoint restored", extra={
            "checkpoint": ckpt.checkpoint_id, "written_at": ckpt.written_at,
            "policy_version": engine.policy_version,
            "records_after": sum(max(0, self._end_at_start[tp] - at)
                                 for tp, at in starts.items())})
        return starts

    def checkpoint(self, writer: str) -> Checkpoint | None:
        """The engine's shared state now and the offsets it reflects (None before the replay
        caught up, or without a known policy origin). Synchronous on purpose: the follower
        folds a fetched batch without awaiting, so between awaits state and offsets agree."""
        if not self.caught_up.is_set() or self.policy is None:
            return None
        return Checkpoint(
            checkpoint_id=new_checkpoint_id(), offsets=dict(self.positions), clock=self._clock,
            policy=self.policy, policy_version=self._engine.policy_version,
            state=capture(self._engine), written_at=time.time(), writer=writer)

    async def _partitions(self, consumer: Consumer) -> list[StatePartition]:
        """Every partition of the three topics; a just-created topic may need a few metadata
        refreshes before its partitions have leaders."""
        deadline = time.monotonic() + 15.0
        while True:
            topics = (await self._thread.run(consumer.list_topics, None, 10.0)).topics
            found = {t: sorted(topics[t].partitions) if t in topics else [] for t in self._topics}
            if all(found.values()) or time.monotonic() > deadline:
                return [StatePartition(t, p) for t, ps in found.items() for p in ps]
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await self._close(consumer)
        self._thread.close()

    async def run(self) -> None:
        """Fold records as they come; tick the engine's clock every ~100 ms once caught up."""
        assert self._consumer is not None, "start() first"
        while True:
            records = await fetch(self._thread, self._consumer, 5000, TICK_INTERVAL_S, log)
            records.sort(key=lambda r: (r.timestamp, r.topic, r.partition, r.offset))
            if self.caught_up.is_set() and any(r.topic == self._topics[2] for r in records):
                self._cluster_topics = await self._read_cluster_topics()
            for record in records:
                self._fold(record)
            if not self.caught_up.is_set():
                await self._check_caught_up()
            if self.caught_up.is_set():
                self._emit(self._engine.tick(time.time()))

    async def _read_cluster_topics(self) -> frozenset[str] | None:
        """Every topic the cluster has (a metadata request for all topics creates none)."""
        assert self._consumer is not None
        try:
            metadata = await self._thread.run(self._consumer.list_topics, None,
                                              CLUSTER_TOPICS_TIMEOUT_S)
        except KafkaException as exc:
            log.warning("cannot list the cluster's topics: control commands are applied "
                        "without checking their routed topics", extra={"error": str(exc)})
            return None
        return frozenset(metadata.topics)

    def _missing_topics(self, cmd: Any, compiled: Any) -> list[str]:
        """The routed topics a live command would send to that the cluster lacks. Only live
        commands are checked: a replay must decide as the command was decided when it came."""
        topics = self._cluster_topics
        if topics is None or not self.caught_up.is_set():
            return []
        if isinstance(cmd, PolicyPublish) and compiled is not None:
            wanted = routable_destinations(compiled)
        elif isinstance(cmd, OverrideSet) and cmd.action == OverrideKind.FORCE_DESTINATION.value:
            wanted = tuple(cmd.destinations)
        else:
            return []
        return [t for t in map(self._settings.routed_topic, wanted) if t not in topics]

    async def _check_caught_up(self) -> None:
        """Caught up once every partition's position reached its end offset at start: the
        offset after the last record folded, or the fetch position when control records
        (transaction markers) or compaction leave a gap before the end."""
        assert self._consumer is not None
        behind = [tp for tp, end in self._end_at_start.items()
                  if self.positions.get(tp, 0) < end]
        if behind:
            fetched = await self._thread.run(self._consumer.position,
                                             [TopicPartition(*tp) for tp in behind])
            if any(tp.offset < self._end_at_start[StatePartition(tp.topic, tp.partition)]
                   for tp in fetched):
                return
        if not self.caught_up.is_set():
            log.info("state topics replayed", extra={"records": self.applied,
                                                     "policy_version": self._engine.policy_version})
            self.caught_up.set()

    def _fold(self, record: Any) -> None:
        """Apply one record. Whatever it holds, it cannot stop the follower: a record the
        engine fails on is logged, counted and skipped like one that does not parse (every
        worker skips it alike, so the state stays equal on all of them)."""
        try:
            self._apply(record)
        except Exception as exc:  # noqa: BLE001 - one bad record must not crash-loop every worker
            log.error("state record failed and was skipped", extra={
                "topic": record.topic, "partition": record.partition, "offset": record.offset,
                "error": self._engine.policy.redactor.text(f"{type(exc).__name__}: {exc}")})
            self._on_skip(record.topic, "processing_error")

    def _apply(self, record: Any) -> None:
        self._clock = max(self._clock, record.timestamp / 1000.0)
        now = self._clock
        topic = record.topic
        self.applied += 1
        self.positions[StatePartition(topic, record.partition)] = record.offset + 1
        if topic == self._topics[0]:
            event = parse_health(record.value, record_ts_ms=record.timestamp)
            if not isinstance(event, Rejection):
                self._emit(self._engine.apply_health(event, now))
            else:
                self._skip(record, event)
        elif topic == self._topics[1]:
            outcome = parse_outcome(record.value, record_ts_ms=record.timestamp)
            if not isinstance(outcome, Rejection):
                self._emit(self._engine.apply_outcome(outcome, now))
            else:
                self._skip(record, outcome)
        else:
            cmd = parse_control(record.value)
            if isinstance(cmd, Rejection):
                self._skip(record, cmd)
            else:
                self._control(cmd, now)

    def _control(self, cmd: Any, now: float) -> None:
        live = self.caught_up.is_set()
        if isinstance(cmd, PolicyReload):
            self._reload(cmd, live)
            return
        compiled = None
        if isinstance(cmd, PolicyPublish):
            try:
                compiled = compile_policy_text(cmd.policy_yaml, f"policy {cmd.version}")
            except PolicyError as exc:
                log.error("policy rejected, keeping the active one", extra={
                    "version": cmd.version, "error": str(exc).replace("\n", "; "),
                    "active": self._engine.policy_version})
        missing = self._missing_topics(cmd, compiled)
        if missing:
            result = ControlResult(False, f"{cmd.type} refused: topic(s) {', '.join(missing)} "
                                   "do not exist (create them with `router-stream topics apply "
                                   "--policy FILE`)")
            log.error("control refused", extra={
                "command": cmd.type, "command_id": cmd.command_id, "detail": result.message})
            compiled = None
        else:
            result = self._engine.apply_control(cmd, now, compiled)
        if isinstance(cmd, PolicyPublish) and result.accepted:
            self.policy = PolicyOrigin("control", cmd.policy_yaml, f"policy {cmd.version}")
        self._emit(list(result.transitions))
        if not missing:
            (log.info if result.accepted or not live else log.warning)(
                "control applied" if result.accepted else "control refused", extra={
                    "command": cmd.type, "command_id": cmd.command_id,
                    "detail": result.message, "replay": not live})
        if live and self._on_control is not None:
            self._on_control(cmd.type, result.accepted)
        if isinstance(cmd, PolicyPublish):
            self._on_policy(PolicyEvent(
                compiled.version if compiled is not None else cmd.version, cmd.policy_yaml,
                result.accepted, result.message, cmd.issued_by or "", live))

    def _reload(self, cmd: PolicyReload, live: bool) -> None:
        try:
            text, compiled = self._reload_policy()
        except Exception as exc:  # a bad file on reload keeps the running policy
            log.error("policy reload failed, keeping the active one", extra={"error": str(exc)})
            return
        self._engine.replace_policy(compiled)
        self.policy = PolicyOrigin("file", text, self._settings.policy_file or "<policy>")
        self._on_policy(PolicyEvent(compiled.version, text, True, "reloaded from file",
                                    cmd.issued_by or "", live))

    def _emit(self, transitions: list[BreakerTransition]) -> None:
        if transitions:
            self._on_transitions(transitions)

    def _skip(self, record: Any, rejection: Rejection) -> None:
        # The error can quote the record (``ts: not an RFC 3339 timestamp: '...'``): masked.
        log.warning("state record ignored", extra={
            "topic": record.topic, "partition": record.partition, "offset": record.offset,
            "reason": rejection.reason.value,
            "error": self._engine.policy.redactor.text(rejection.error)})
        self._on_skip(record.topic, rejection.reason.value)
