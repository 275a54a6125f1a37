"""The router engine: one entry point that decides a batch of signals against its state.

Pure: no I/O, time comes in as ``now`` (epoch seconds), randomness from a seeded RNG. The worker
owns one engine per process and feeds it

* ``decide_batch(records, now)`` for ``signals`` (and re-fed ``router.retry``) records, and
* ``apply_health`` / ``apply_outcome`` / ``apply_control`` for the low-volume state topics, which
  every worker reads in full — so the engine's trust, breaker, bandit, load and override state is
  a deterministic fold of those topics and equal on every worker.

Every input record ends in exactly one of: a decision, a DLQ record, a retry record, or (policy
permitting) a dropped duplicate; :class:`~router_stream.core.outputs.BatchResult` carries them.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from router_stream.core import breaker as brk
from router_stream.core import trust as tr
from router_stream.core.breaker import Breaker, BreakerState, BreakerTransition
from router_stream.core.compiled import CompiledPolicy, RouteSpec, routable_destinations
from router_stream.core.dedupe import DedupeWindow
from router_stream.core.models import (
    BreakerForce,
    BreakerReset,
    ControlCommand,
    Decision,
    DlqEntry,
    DlqReason,
    HealthEvent,
    InboundRecord,
    Outcome,
    OverrideClear,
    OverrideSet,
    PolicyPublish,
    RolloutRollback,
    Signal,
)
from router_stream.core.outputs import (
    BatchResult,
    DlqRecord,
    RetryRecord,
    RoutedRecord,
)
from router_stream.core.overrides import (
    ActiveOverrides,
    Override,
    OverrideKind,
    active,
    clear_override,
    set_override,
    unknown_target,
)
from router_stream.core.parsing import Rejection, parse_signal
from router_stream.core.ratelimit import TenantBuckets
from router_stream.core.rollout import (
    Arm,
    RolloutMonitor,
    RolloutSpec,
    ShadowOutcome,
    in_share,
)
from router_stream.core.rollout import Outcome as ArmOutcome
from router_stream.core.strategies import (
    BANDIT_STRATEGIES,
    SELECTION_STRATEGIES,
    BanditArm,
    LastGood,
    LoadCounter,
    Observation,
    SelectionContext,
    consensus,
)
from router_stream.core.strategies import bandits as bandit_mod
from router_stream.core.strategies.base import first_usable_tier
from router_stream.core.strategies.consensus import deviation_z, remember
from router_stream.core.wire import (
    DlqContext,
    Origin,
    decision_id_for,
    dlq_context,
    dlq_headers,
    one_line,
    origin_of,
    retry_headers,
    route_fields,
    routed_at_field,
    routed_head,
    routed_tail,
    trace_headers,
    without_router_headers,
)


@dataclass(frozen=True, slots=True)
class ControlResult:
    accepted: bool
    message: str
    transitions: list[BreakerTransition] = field(default_factory=list)
    policy_changed: bool = False


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """What the state looks like now: for metrics, trust snapshots and state-equality tests."""

    trust: dict[str, float]
    breakers: dict[str, str]
    policy_version: str
    overrides: list[dict[str, object]]


class BreakerTable(dict[str, Breaker]):
    """Breakers by target, plus the targets whose breaker is not closed, kept up to date on every
    write. ``tick`` (10 times a second) and every batch look only at those: scanning all of them
    cost ~0.6 of a core with 110k ids in state (bench/state_memory.py) and ~10 ms per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.not_closed: set[str] = set()

    def __setitem__(self, target: str, breaker: Breaker) -> None:
        super().__setitem__(target, breaker)
        if breaker.state is BreakerState.CLOSED:
            self.not_closed.discard(target)
        else:
            self.not_closed.add(target)

    def __delitem__(self, target: str) -> None:
        super().__delitem__(target)
        self.not_closed.discard(target)

    def clear(self) -> None:
        super().clear()
        self.not_closed.clear()

    def pop(self, *args: object) -> Breaker:
        raise NotImplementedError("BreakerTable: assign or del, so not_closed stays right")

    def update(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("BreakerTable: assign or del, so not_closed stays right")

    def setdefault(self, *args: object) -> Breaker:
        raise NotImplementedError("BreakerTable: assign or del, so not_closed stays right")

    def not_closed_items(self) -> list[tuple[str, Breaker]]:
        """The breakers not closed, in target order (deterministic whatever the history)."""
        return [(t, self[t]) for t in sorted(self.not_closed)]


class RouterEngine:
    """Per-worker routing state plus the functions that decide and fold events into it."""

    def __init__(self, policy: CompiledPolicy, *, seed: int = 0, dedupe_window_s: float = 3600.0,
                 dedupe_max_entries: int = 1_000_000, consumer_group: str | None = None):
        self._policy = policy
        self._group = consumer_group  # named on DLQ records (x-dlq-consumer-group)
        self._rng = random.Random(seed)
        self._trust: dict[str, tr.TrustState] = {}
        self._breakers = BreakerTable()
        self._arms: dict[str, BanditArm] = {}
        self._load: dict[str, LoadCounter] = {}
        self._overrides: dict[str, Override] = {}
        self._buckets = TenantBuckets()
        self._dedupe = DedupeWindow(dedupe_window_s, dedupe_max_entries)
        self._observations: dict[str, dict[str, Observation]] = {}
        self._last_good: dict[str, LastGood] = {}
        # Shadow evaluations draw from their own stream so that shadowing never changes what
        # the active policy decides.
        self._shadow_rng = random.Random(seed + 1)
        self._monitor = RolloutMonitor(policy.rollout) if policy.rollout else None

    # --- policy ------------------------------------------------------------------------------

    @property
    def policy(self) -> CompiledPolicy:
        return self._policy

    @property
    def policy_version(self) -> str:
        return self._policy.version

    @property
    def destinations(self) -> list[str]:
        return list(self._policy.destinations)

    def replace_policy(self, policy: CompiledPolicy) -> None:
        """Switch to an already-validated policy; state (trust, breakers, bandits) carries over,
        a rollout starts afresh."""
        self._policy = policy
        self._monitor = RolloutMonitor(policy.rollout) if policy.rollout else None

    # --- state topics ------------------------------------------------------------------------

    def _breaker(self, target: str) -> Breaker:
        b = self._breakers.get(target)
        if b is None:
            b = Breaker(target_id=target)
            self._breakers[target] = b
        return b

    def _trust_state(self, target: str) -> tr.TrustState:
        t = self._trust.get(target)
        return t if t is not None else tr.TrustState.initial(self._policy.trust_params)

    def apply_health(self, event: HealthEvent, now: float) -> list[BreakerTransition]:
        """Fold a health event: trust components, and the breaker when it says ok or not."""
        p = self._policy
        self._trust[event.source_id] = tr.observe_health(
            self._trust_state(event.source_id), now=event.ts, params=p.trust_params,
            ok=event.ok, latency_ms=event.latency_ms, error_rate=event.error_rate,
            last_data_ts=event.last_data_ts, completeness=event.completeness,
        )
        ok = event.ok
        if ok is None and event.error_rate is not None:
            ok = event.error_rate < p.breaker_for(event.source_id).error_rate_threshold
        if ok is None:
            return []
        return self._record(event.source_id, ok, event.ts)

    def apply_outcome(self, outcome: Outcome, now: float) -> list[BreakerTransition]:
        """Fold a delivery outcome: trust, breaker, bandit reward, in-flight load."""
        at = outcome.ts if outcome.ts is not None else now
        dest = outcome.destination
        self._trust[dest] = tr.observe_outcome(
            self._trust_state(dest), ok=outcome.ok, now=at, params=self._policy.trust_params,
            latency_ms=outcome.latency_ms,
        )
        reward = outcome.reward if outcome.reward is not None else (1.0 if outcome.ok else 0.0)
        bandit = self._bandit_config_for(dest)
        arm = self._arms.get(dest) or bandit_mod.new_arm(bandit)
        self._arms[dest] = bandit_mod.update(arm, reward, bandit)
        self._load[dest] = self._load.get(dest, LoadCounter()).on_outcome()
        return self._record(dest, outcome.ok, at)

    def _bandit_config_for(self, dest: str) -> bandit_mod.BanditConfig:
        for route in self._policy.routes.values():
            if route.strategy in BANDIT_STRATEGIES and dest in route.destinations:
                return route.bandit
        return bandit_mod.BanditConfig()

    def _record(self, target: str, ok: bool, at: float) -> list[BreakerTransition]:
        cfg = self._policy.breaker_for(target)
        polled, moves = brk.poll(self._breaker(target), at, cfg)
        updated, more = brk.record(polled, ok, at, cfg)
        self._breakers[target] = updated
        return [*moves, *more]

    def apply_control(self, cmd: ControlCommand, now: float, compiled: CompiledPolicy | None = None
                      ) -> ControlResult:
        """Apply an operator command. ``policy_publish`` needs the candidate already compiled by
        the caller (``compiled``; ``None`` means it failed validation and is rejected)."""
        if isinstance(cmd, PolicyPublish):
            if compiled is None:
                return ControlResult(False, f"policy {cmd.version} rejected: invalid")
            old = self._policy.version
            self.replace_policy(compiled)
            return ControlResult(True, f"policy {old} -> {compiled.version}", policy_changed=True)
        if isinstance(cmd, RolloutRollback):
            dropped = self.drop_rollout(cmd.candidate_version)
            return ControlResult(dropped, f"rollout of {cmd.candidate_version} "
                                 + ("rolled back" if dropped else "not running"))
        if isinstance(cmd, OverrideSet):
            created = cmd.issued_at if cmd.issued_at is not None else now
            target = cmd.target if cmd.target is not None else cmd.destinations[0]
            unknown = unknown_target(cmd.action, target, routable_destinations(self._policy))
            if unknown is not None:
                return ControlResult(False, f"override {cmd.override_id} refused: {unknown}")
            self._overrides = set_override(self._overrides, Override(
                override_id=cmd.override_id, kind=OverrideKind(cmd.action), target=target,
                expires_at=cmd.expires_at, created_at=created, kind_selector=cmd.kind,
                tenant_selector=cmd.tenant, reason=cmd.reason,
            ))
            return ControlResult(True, f"override {cmd.override_id} ({cmd.action}) set")
        if isinstance(cmd, OverrideClear):
            self._overrides = clear_override(self._overrides, cmd.override_id)
            return ControlResult(True, f"override {cmd.override_id} cleared")
        if isinstance(cmd, BreakerForce):
            target = BreakerState.OPEN if cmd.state == "open" else BreakerState.CLOSED
            return self._force(cmd.target, target, now, cmd.reason or "operator_force")
        if isinstance(cmd, BreakerReset):
            return self._force(cmd.target, BreakerState.CLOSED, now, "operator_reset")
        return ControlResult(False, f"{cmd.type} is handled by the worker, not the engine")

    def apply_override(self, override: Override) -> None:
        """Add any override kind (drain, exclude, force) directly."""
        self._overrides = set_override(self._overrides, override)

    def _force(self, target: str, to: BreakerState, now: float, reason: str) -> ControlResult:
        try:
            updated, moves = brk.force(self._breaker(target), to, now, reason,
                                       self._policy.breaker_for(target))
        except brk.InvalidTransition as exc:
            return ControlResult(False, str(exc))
        self._breakers[target] = updated
        return ControlResult(True, f"breaker {target} -> {to.value}", moves)

    def tick(self, now: float) -> list[BreakerTransition]:
        """Time-driven moves: open breakers whose cooldown elapsed go half-open; expired
        overrides are dropped."""
        moves: list[BreakerTransition] = []
        for target, b in self._breakers.not_closed_items():
            updated, more = brk.poll(b, now, self._policy.breaker_for(target))
            if more:
                self._breakers[target] = updated
                moves.extend(more)
        if self._overrides:
            self._overrides = {k: o for k, o in self._overrides.items() if o.is_active(now)}
        return moves

    def snapshot(self, now: float | None = None) -> StateSnapshot:
        p = self._policy
        at = now if now is not None else max(
            (t.last_ts for t in self._trust.values() if t.last_ts is not None), default=0.0
        )
        return StateSnapshot(
            trust={k: tr.score(v, at, p.trust_weights, p.trust_params)
                   for k, v in sorted(self._trust.items())},
            breakers={k: b.state.value for k, b in sorted(self._breakers.items())},
            policy_version=p.version,
            overrides=[o.to_dict() for o in sorted(self._overrides.values(),
                                                    key=lambda o: o.override_id)],
        )

    # --- the hot path ------------------------------------------------------------------------

    def decide_batch(self, records: Sequence[InboundRecord], now: float) -> BatchResult:
        """Decide every record of a batch. State changes (dedupe, rate limits, load, probes)
        apply in record order, so a batch decides exactly as the same records one by one."""
        result = BatchResult()
        batch = _BatchView(self, now)
        try:
            for record in records:
                self._decide_isolated(record, now, batch, result)
        finally:
            batch.fold_routed()
        result.breaker_transitions.extend(batch.transitions)
        self._check_rollout(now, result)
        return result

    def _decide_isolated(self, record: InboundRecord, now: float, batch: _BatchView,
                         result: BatchResult) -> None:
        """Decide one record; if anything raises while decoding, deciding or encoding it, what
        it had added to the batch is taken back and it goes to the DLQ as ``processing_error``
        (exception class and message in the error), so one record can never stop a batch."""
        mark = _mark(result)
        try:
            self._decide_one(record, now, batch, result)
        except Exception as exc:  # noqa: BLE001 - isolation is the point: any fault, one record
            _roll_back(result, mark, batch.routed)
            self._processing_error(result, record, exc, now)

    def _processing_error(self, result: BatchResult, record: InboundRecord, exc: Exception,
                          now: float) -> None:
        error = f"{type(exc).__name__}: {exc}"
        kind = type(exc)
        context = dlq_context(record, self._group, f"{kind.__module__}.{kind.__qualname__}",
                              "".join(traceback.format_exception(exc)))
        try:
            origin = origin_of(record)
        except Exception:  # noqa: BLE001 - headers claiming an impossible origin: use our own
            origin = Origin.own(record)
        result.dlq.append(_dlq_record(record, origin, DlqReason.PROCESSING_ERROR, error, None,
                                      now, None, None, context))

    def _decide_one(self, record: InboundRecord, now: float, batch: _BatchView,
                    result: BatchResult) -> None:
        origin = origin_of(record)
        if origin.dlq_id is not None and self._dedupe.seen_or_add(origin.replay_id, now):
            result.dropped_duplicates += 1  # one replay sent twice (dlq/replay.py's crash window)
            return
        parsed = parse_signal(record.value, record_ts_ms=record.timestamp, now=now)
        if isinstance(parsed, Rejection):
            self._dlq(result, record, origin, parsed.reason, parsed.error, parsed.signal_id, now)
            return
        rollout = self._policy.rollout
        if rollout is None:
            self._decide_signal(record, origin, parsed, now, batch, result)
            return
        self._decide_in_rollout(rollout, record, origin, parsed, now, batch, result)

    def _decide_signal(self, record: InboundRecord, origin: Origin, signal: Signal, now: float,
                       batch: _BatchView, result: BatchResult) -> None:
        kind_and_priority = self._classify(signal)
        if kind_and_priority is None:
            self._dlq(result, record, origin, DlqReason.UNCLASSIFIED,
                      "no classification rule matched and the policy's default is the DLQ",
                      signal.signal_id, now, signal)
            return
        kind, priority = kind_and_priority
        route = self._policy.routes.get(kind)
        if route is None:
            self._dlq(result, record, origin, DlqReason.NO_ROUTE,
                      f"no route for kind {kind!r}", signal.signal_id, now, signal, kind)
            return
        fresh = origin.attempts == 0
        if route.dedupe and fresh and self._dedupe.seen_or_add(signal.signal_id, now):
            if route.on_duplicate == "dlq":
                self._dlq(result, record, origin, DlqReason.DUPLICATE,
                          f"signal_id {signal.signal_id} already routed", signal.signal_id, now,
                          signal, kind)
            else:
                result.dropped_duplicates += 1
            return
        if not self._admit(signal.tenant, now):
            self._dlq(result, record, origin, DlqReason.RATE_LIMITED,
                      f"tenant {signal.tenant!r} is over its rate limit", signal.signal_id, now,
                      signal, kind)
            return
        if route.strategy == "consensus":
            self._decide_consensus(record, origin, signal, route, priority, now, batch, result)
        else:
            self._decide_select(record, origin, signal, route, priority, now, batch, result)

    # --- rollout -----------------------------------------------------------------------------

    def _decide_in_rollout(self, rollout: RolloutSpec, record: InboundRecord, origin: Origin,
                           signal: Signal, now: float, batch: _BatchView,
                           result: BatchResult) -> None:
        """Canary: the candidate decides the keys in its share, for real. Shadow: the active
        policy decides, and the candidate's choice for a sample is recorded beside it."""
        marks = (len(result.decisions), len(result.dlq), len(result.retries))
        if rollout.mode == "canary" and in_share(record.key, signal.signal_id, rollout.fraction):
            baseline = self._policy
            self._policy = rollout.candidate
            try:
                self._decide_signal(record, origin, signal, now, batch, result)
            finally:
                self._policy = baseline
            self._observe("candidate", result, marks, now)
            return
        self._decide_signal(record, origin, signal, now, batch, result)
        done = self._observe("baseline", result, marks, now)
        if rollout.mode == "shadow" and in_share(None, signal.signal_id, rollout.fraction):
            would = self._shadow_choice(rollout.candidate, signal, batch)
            if self._monitor is not None:
                self._monitor.observe("candidate", _outcome_of(would), now)
            result.shadow.append(ShadowOutcome(signal.signal_id, rollout.candidate.version,
                                               done, would, would == done))

    def _observe(self, arm: Arm, result: BatchResult, marks: tuple[int, int, int],
                 now: float) -> tuple[str, ...] | str:
        """Count the outcome one record just got in its arm; returns it (destinations or
        the DLQ reason) for shadow comparison."""
        decisions, dlq, retries = marks
        if len(result.decisions) > decisions:
            done: tuple[str, ...] | str = tuple(result.decisions[-1].destinations)
        elif len(result.retries) > retries:
            done = DlqReason.NO_HEALTHY_DESTINATION.value
        elif len(result.dlq) > dlq:
            done = result.dlq[-1].entry.reason.value
        else:
            return "duplicate"
        if self._monitor is not None:
            self._monitor.observe(arm, _outcome_of(done), now)
        return done

    def _shadow_choice(self, candidate: CompiledPolicy, signal: Signal, batch: _BatchView
                       ) -> tuple[str, ...] | str:
        """What ``candidate`` would route ``signal`` to, without changing any state: no dedupe
        entry, no rate-limit token, no probe slot, no load; its own random stream."""
        baseline = self._policy
        self._policy = candidate
        try:
            found = self._classify(signal)
        finally:
            self._policy = baseline
        if found is None:
            return DlqReason.UNCLASSIFIED.value
        route = candidate.routes.get(found[0])
        if route is None:
            return DlqReason.NO_ROUTE.value
        forced = batch.overrides.forced_destination(route.kind, signal.tenant)
        if forced is not None:
            return (forced,)
        if route.strategy == "consensus":
            usable = first_usable_tier(route.tiers, batch.unavailable)
            return (usable[1][0],) if usable else DlqReason.NO_HEALTHY_DESTINATION.value
        ctx = SelectionContext(
            rng=self._shadow_rng, unavailable=batch.unavailable, trust=batch.trust_scores,
            arms=self._arms, in_flight=_InFlight(self._load, batch.routed),
            capacity=candidate.capacity,
            bandit=route.bandit, default_trust=candidate.trust_params.initial,
        )
        selection = SELECTION_STRATEGIES[route.strategy](route.tiers, ctx)
        if selection is None:
            return DlqReason.NO_HEALTHY_DESTINATION.value
        return selection.destinations

    def _check_rollout(self, now: float, result: BatchResult) -> None:
        """Roll the candidate back when the monitor says it is worse than the baseline."""
        if self._monitor is None or self._policy.rollout is None:
            return
        event = self._monitor.verdict(now, self._policy.version)
        if event is not None:
            self.drop_rollout()
            result.rollout_events.append(event)

    def drop_rollout(self, candidate_version: str | None = None) -> bool:
        """Stop the rollout (all of it, or only if it runs ``candidate_version``)."""
        rollout = self._policy.rollout
        if rollout is None or (candidate_version is not None
                               and rollout.candidate.version != candidate_version):
            return False
        self._policy = replace(self._policy, rollout=None)
        self._monitor = None
        return True

    @property
    def rollout(self) -> RolloutSpec | None:
        return self._policy.rollout

    def _classify(self, signal: Signal) -> tuple[str, int | None] | None:
        if signal.kind is not None:
            return signal.kind, signal.priority
        found = self._policy.classify(signal)
        if found is not None:
            kind, priority = found
            return kind, signal.priority if signal.priority is not None else priority
        if self._policy.unclassified_kind is not None:
            return self._policy.unclassified_kind, signal.priority
        return None

    def _admit(self, tenant: str, now: float) -> bool:
        policy = self._policy
        return self._buckets.admit(tenant, now, policy.tenant_limits, policy.default_limit,
                                   policy.unknown_tenants)

    def _decide_select(self, record: InboundRecord, origin: Origin, signal: Signal,
                       route: RouteSpec, priority: int | None, now: float, batch: _BatchView,
                       result: BatchResult) -> None:
        forced = batch.overrides.forced_destination(route.kind, signal.tenant)
        if forced is not None:
            self._emit(record, origin, signal, route, priority, (forced,), None, 1.0, "override",
                       now, batch, result)
            return
        ctx = batch.context(route)
        while True:
            selection = SELECTION_STRATEGIES[route.strategy](route.tiers, ctx)
            if selection is None:
                self._no_healthy(record, origin, signal, route, now, result)
                return
            # A half-open destination admits a bounded number of probes; when its slots are
            # taken it is unavailable for the rest of the batch and the strategy chooses again.
            if not batch.probing or all(batch.take_probe(d) for d in selection.destinations):
                break
        self._emit(record, origin, signal, route, priority, selection.destinations,
                   selection.tier, selection.confidence, route.strategy, now, batch, result)

    def _decide_consensus(self, record: InboundRecord, origin: Origin, signal: Signal,
                          route: RouteSpec, priority: int | None, now: float,
                          batch: _BatchView, result: BatchResult) -> None:
        cfg = route.consensus
        if cfg is None:  # compile_policy sets it for every consensus route
            raise ValueError(f"route {route.kind!r} uses consensus without its parameters")
        metric = signal.metric or route.kind
        if signal.source_id is not None and signal.value is not None:
            self._observations.setdefault(metric, {})[signal.source_id] = Observation(
                signal.source_id, signal.value, signal.ts
            )
        observations = self._observations.get(metric, {})
        excluded = batch.unavailable_sources
        outcome = consensus(observations.values(), now, cfg, batch.trust_scores, excluded,
                            self._last_good.get(metric), tr.DeviationRecord(self._trust))
        if outcome is None:
            self._dlq(result, record, origin, DlqReason.NO_HEALTHY_DESTINATION,
                      f"metric {metric!r}: no usable source and no recent consensus",
                      signal.signal_id, now, signal, route.kind)
            return
        good = remember(outcome, now)
        if good is not None:
            self._last_good[metric] = good
            source = signal.source_id
            if source is not None and signal.value is not None:
                # Each observation moves its own source's deviation component once; scoring
                # every source of the metric on every observation would count old values again.
                z = deviation_z(signal.value, outcome)
                state = tr.observe_deviation(self._trust_state(source), z=z, now=now,
                                             params=self._policy.trust_params)
                self._trust[source] = state
                batch.trust_changed(source, state)
        usable = first_usable_tier(route.tiers, batch.unavailable)
        if usable is None:
            self._no_healthy(record, origin, signal, route, now, result)
            return
        tier, dests = usable
        extra = {"value": outcome.value, "method": outcome.method,
                 "sources_used": list(outcome.sources_used), "outliers": list(outcome.outliers)}
        self._emit(record, origin, signal, route, priority, (dests[0],), tier, outcome.confidence,
                   "consensus", now, batch, result, extra)

    def _no_healthy(self, record: InboundRecord, origin: Origin, signal: Signal,
                    route: RouteSpec, now: float, result: BatchResult) -> None:
        if origin.attempts < route.max_attempts:
            self._retry(record, origin, signal, route, now, result)
            return
        reason = (DlqReason.RETRIES_EXHAUSTED if route.max_attempts > 0
                  else DlqReason.NO_HEALTHY_DESTINATION)
        detail = f" after {origin.attempts} retries" if route.max_attempts > 0 else ""
        self._dlq(result, record, origin, reason,
                  f"every destination of kind {route.kind!r} is unavailable{detail}",
                  signal.signal_id, now, signal, route.kind)

    def _emit(self, record: InboundRecord, origin: Origin, signal: Signal, route: RouteSpec,
              priority: int | None, destinations: tuple[str, ...], tier: int | None,
              confidence: float, strategy: str, now: float, batch: _BatchView,
              result: BatchResult, consensus_extra: dict[str, object] | None = None) -> None:
        decision_id = decision_id_for(signal.signal_id)
        version = self._policy.version
        trust, breakers = batch.route_state(route)
        extra = consensus_extra
        # Positional, in field order: 22 keyword arguments cost ~0.7 µs more per decision.
        decision = Decision(
            decision_id, signal.signal_id, signal.tenant, route.kind, list(destinations),
            strategy, tier, version, confidence, trust, breakers,
            origin.topic, origin.partition, origin.offset,  # input_topic/_partition/_offset
            now, signal.ts, priority,  # decided_at, signal_ts, priority
            None, None,  # rule, override_id
            _float(extra, "value"),
            extra["method"] if extra else None,  # type: ignore[arg-type]
            extra["sources_used"] if extra else None,  # type: ignore[arg-type]
            extra["outliers"] if extra else None,  # type: ignore[arg-type]
            {"replay_of": origin.dlq_id} if origin.dlq_id is not None else {},
        )
        result.decisions.append(decision)
        # The routed value: the producer's bytes with the route spliced in (core.wire).
        head = routed_head(record.value, decision_id, signal.signal_id)
        tail = routed_tail(confidence, batch.routed_at, consensus_extra)
        routed = batch.routed
        trace = trace_headers(record.headers)
        for dest in destinations:
            value = head + batch.route_fields(dest, route.kind, strategy, tier, version) + tail
            # Positional (destination, key, value, signal_id, headers), as in Decision.
            result.routed.append(RoutedRecord(dest, record.key, value, signal.signal_id, trace))
            routed[dest] = routed.get(dest, 0) + 1

    def _retry(self, record: InboundRecord, origin: Origin, signal: Signal, route: RouteSpec,
               now: float, result: BatchResult) -> None:
        attempts = origin.attempts + 1
        delay = route.retry_delay_s * (2 ** (attempts - 1))
        not_before = now + delay
        first = origin.first_failed_at if origin.first_failed_at is not None else now
        headers = retry_headers(record.headers, origin, attempts, first, not_before,
                                signal.signal_id)
        result.retries.append(RetryRecord(record.key, record.value, headers, not_before, attempts,
                                          signal.signal_id))

    def _dlq(self, result: BatchResult, record: InboundRecord, origin: Origin,
             reason: DlqReason, error: str, signal_id: str | None, now: float,
             signal: Signal | None = None, kind: str | None = None) -> None:
        result.dlq.append(_dlq_record(record, origin, reason, error, signal_id, now, signal,
                                      kind, dlq_context(record, self._group)))


def dead_letter(record: InboundRecord, reason: DlqReason, error: str, now: float,
                signal_id: str | None = None, kind: str | None = None,
                consumer_group: str | None = None) -> DlqRecord:
    """The DLQ record of ``record`` as the engine would write it (origin and attempts from its
    headers when it was retried or replayed): for the worker, when an output of an already
    decided record cannot be written (:mod:`router_stream.core.refusals`)."""
    context = dlq_context(record, consumer_group)
    try:
        return _dlq_record(record, origin_of(record), reason, error, signal_id, now, None, kind,
                           context)
    except ValueError:  # headers claiming an impossible origin: its own position then
        own = Origin.own(record)
        return _dlq_record(record, own, reason, error, signal_id, now, None, kind, context)


def origin_key(record: InboundRecord) -> str:
    """``topic/partition/offset`` where ``record`` was first read: its decision's ``input_*``
    fields and its DLQ entry's ``dlq_key`` say the same."""
    return origin_of(record).key


def _dlq_record(record: InboundRecord, origin: Origin, reason: DlqReason, error: str,
                signal_id: str | None, now: float, signal: Signal | None,
                kind: str | None, context: DlqContext | None = None) -> DlqRecord:
    error = one_line(error)
    # A replayed record failing again is one more attempt; a retried one already counted it.
    attempts = origin.attempts + 1 if origin.dlq_id is not None else max(1, origin.attempts)
    first = origin.first_failed_at if origin.first_failed_at is not None else now
    original_headers = without_router_headers(record.headers)
    entry = DlqEntry(
        reason=reason, error=error, signal_id=signal_id,
        tenant=signal.tenant if signal is not None else None,
        kind=kind if kind is not None else (signal.kind if signal is not None else None),
        original_topic=origin.topic,
        original_partition=origin.partition, original_offset=origin.offset,
        original_key=record.key, original_value=record.value,
        original_headers=original_headers, attempts=attempts, first_failed_at=first,
    )
    headers = dlq_headers(original_headers, reason=reason, error=error, topic=origin.topic,
                          partition=origin.partition, offset=origin.offset, attempts=attempts,
                          first_failed_at=first, signal_id=signal_id, tenant=entry.tenant,
                          kind=entry.kind, context=context)
    return DlqRecord(entry, headers)


class _BatchView:
    """Per-batch derived state: which destinations are unavailable, trust scores, probe slots.

    Built lazily once per batch, not per signal: breakers and trust change only through the
    state topics, which are folded between batches.
    """

    def __init__(self, engine: RouterEngine, now: float) -> None:
        self._engine = engine
        self._now = now
        self.transitions: list[BreakerTransition] = []
        self.overrides: ActiveOverrides = active(engine._overrides.values(), now)
        unavailable: set[str] = set(self.overrides.drained)
        self._half_open: dict[str, int] = {}
        for target, b in engine._breakers.not_closed_items():
            cfg = engine._policy.breaker_for(target)
            polled, moves = brk.poll(b, now, cfg)
            if moves:
                engine._breakers[target] = polled
                self.transitions.extend(moves)
            if polled.state is BreakerState.OPEN:
                unavailable.add(target)
            elif polled.state is BreakerState.HALF_OPEN:
                slots = cfg.half_open_probes - polled.probes_in_flight - polled.probes_succeeded
                self._half_open[target] = max(0, slots)
                if slots <= 0:
                    unavailable.add(target)
        self.unavailable = unavailable
        self.unavailable_sources = unavailable | set(self.overrides.excluded)
        self._trust_scores: _Scores | None = None
        # Keyed by route identity: a rollout candidate may route the same kind differently.
        self._contexts: dict[int, SelectionContext] = {}
        self._route_state: dict[int, tuple[dict[str, float], dict[str, str]]] = {}
        self.probing = bool(self._half_open)
        # Signals routed per destination this batch, folded into the engine's load counters at
        # its end: one LoadCounter per destination and batch instead of one per routed record.
        self.routed: dict[str, int] = {}
        self.routed_at = routed_at_field(now)
        self._route_fields: dict[tuple[str, str, str, int | None, str], bytes] = {}

    @property
    def trust_scores(self) -> _Scores:
        if self._trust_scores is None:
            e = self._engine
            self._trust_scores = _Scores(e._trust, self._now, e._policy)
        return self._trust_scores

    def route_state(self, route: RouteSpec) -> tuple[dict[str, float], dict[str, str]]:
        """Trust and breaker state of a route's destinations, as recorded in its decisions.

        Computed once per route and batch and shared by the batch's decisions (read-only):
        building two dicts per decision was the engine's largest cost.
        """
        cached = self._route_state.get(id(route))
        if cached is None:
            dests = route.destinations
            cached = ({d: self.trust_of(d) for d in dests},
                      {d: self.breaker_state(d) for d in dests})
            self._route_state[id(route)] = cached
        return cached

    def route_fields(self, destination: str, kind: str, strategy: str, tier: int | None,
                     version: str) -> bytes:
        """:func:`~router_stream.core.wire.route_fields`, once per combination and batch."""
        key = (destination, kind, strategy, tier, version)
        fields = self._route_fields.get(key)
        if fields is None:
            fields = self._route_fields[key] = route_fields(*key)
        return fields

    def fold_routed(self) -> None:
        """Add the batch's routed counts to the engine's load counters (at the batch's end)."""
        load = self._engine._load
        for dest, n in self.routed.items():
            counter = load.get(dest)
            load[dest] = counter.on_routed(n) if counter is not None else LoadCounter(routed=n)
        self.routed.clear()

    def trust_changed(self, target: str, state: tr.TrustState) -> None:
        """Keep the batch's score cache equal to what a fresh batch would compute, so a batch
        decides exactly as its records would one by one. Only the recorded state of routes that
        name ``target`` is dropped: a consensus observation changes its *source's* trust on
        every signal, and rebuilding every route's state for it cost more than the decision."""
        for key, (trust, _breakers) in list(self._route_state.items()):
            if target in trust:
                del self._route_state[key]
        if self._trust_scores is not None:
            self._trust_scores.changed(target, state)

    def trust_of(self, target: str) -> float:
        score = self.trust_scores.get(target)
        return round(score if score is not None else self._engine._policy.trust_params.initial, 4)

    def breaker_state(self, target: str) -> str:
        b = self._engine._breakers.get(target)
        return b.state.value if b is not None else BreakerState.CLOSED.value

    def take_probe(self, target: str) -> bool:
        """Take a half-open probe slot (True for any non-half-open destination)."""
        slots = self._half_open.get(target)
        if slots is None:
            return True
        if slots <= 0:
            self.unavailable.add(target)
            return False
        e = self._engine
        cfg = e._policy.breaker_for(target)
        allowed, updated, moves = brk.allow_request(e._breaker(target), self._now, cfg)
        e._breakers[target] = updated
        self.transitions.extend(moves)
        self._route_state.clear()
        self._half_open[target] = slots - 1 if allowed else 0
        if not allowed or slots - 1 <= 0:
            self.unavailable.add(target)
        return allowed

    def context(self, route: RouteSpec) -> SelectionContext:
        ctx = self._contexts.get(id(route))
        if ctx is None:
            e = self._engine
            ctx = SelectionContext(
                rng=e._rng, unavailable=self.unavailable, trust=self.trust_scores,
                arms=e._arms, in_flight=_InFlight(e._load, self.routed),
                capacity=e._policy.capacity,
                bandit=route.bandit, default_trust=e._policy.trust_params.initial,
            )
            self._contexts[id(route)] = ctx
        return ctx


class _Scores(Mapping[str, float]):
    """Trust scores of a batch, computed on first use per target and then kept.

    Scoring every known source at the start of each batch cost O(sources) per batch — with 1,000
    sources and the small batches of a lightly loaded worker, more than deciding the batch. Only
    the targets a batch's routes and consensus metrics actually look at are scored now.
    """

    __slots__ = ("_states", "_now", "_weights", "_params", "_memo")

    def __init__(self, states: dict[str, tr.TrustState], now: float,
                 policy: CompiledPolicy) -> None:
        self._states = states
        self._now = now
        self._weights = policy.trust_weights
        self._params = policy.trust_params
        self._memo: dict[str, float] = {}

    def get(self, key: str, default: float | None = None) -> float | None:  # type: ignore[override]
        score = self._memo.get(key)
        if score is not None:
            return score
        state = self._states.get(key)
        if state is None:
            return default
        score = tr.score(state, self._now, self._weights, self._params)
        self._memo[key] = score
        return score

    def changed(self, key: str, state: tr.TrustState) -> None:
        self._memo[key] = tr.score(state, self._now, self._weights, self._params)

    def __getitem__(self, key: str) -> float:
        score = self.get(key)
        if score is None:
            raise KeyError(key)
        return score

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        return key in self._states


class _InFlight(dict[str, float]):
    """A live view of in-flight load per destination for ``least_loaded``: the engine's
    counters plus what the current batch has routed so far (``routed``, not yet folded in)."""

    def __init__(self, load: dict[str, LoadCounter], routed: dict[str, int]) -> None:
        super().__init__()
        self._load = load
        self._routed = routed

    def get(self, key: str, default: float | None = None) -> float:  # type: ignore[override]
        counter = self._load.get(key)
        pending = self._routed.get(key, 0)
        if counter is None:
            return float(pending) if pending else (default or 0.0)
        return float(max(0, counter.routed + pending - counter.completed))


def _mark(r: BatchResult) -> tuple[int, int, int, int, int, int]:
    """How much of a batch's result existed before one record was decided (a plain tuple: this
    runs once per signal), so a record that fails half-way can leave nothing of itself behind."""
    return (len(r.routed), len(r.decisions), len(r.dlq), len(r.retries), r.dropped_duplicates,
            len(r.shadow))


def _roll_back(r: BatchResult, mark: tuple[int, int, int, int, int, int],
               routed_counts: dict[str, int]) -> None:
    routed, decisions, dlq, retries, duplicates, shadow = mark
    for rec in r.routed[routed:]:
        left = routed_counts.get(rec.destination, 0) - 1
        if left > 0:
            routed_counts[rec.destination] = left
        else:
            routed_counts.pop(rec.destination, None)
    del r.routed[routed:]
    del r.decisions[decisions:]
    del r.dlq[dlq:]
    del r.retries[retries:]
    del r.shadow[shadow:]
    r.dropped_duplicates = duplicates


def _float(extra: dict[str, object] | None, key: str) -> float | None:
    if not extra:
        return None
    v = extra.get(key)
    return float(v) if isinstance(v, int | float) else None


_NO_HEALTHY_REASONS = frozenset({DlqReason.NO_HEALTHY_DESTINATION.value,
                                 DlqReason.RETRIES_EXHAUSTED.value})


def _outcome_of(done: tuple[str, ...] | str) -> ArmOutcome:
    if isinstance(done, tuple):
        return "routed"
    return "no_healthy" if done in _NO_HEALTHY_REASONS else "dlq"
