"""The engine's state and how events fold into it.

Trust, breakers, bandit arms, in-flight load and overrides are a deterministic fold of the
low-volume state topics (``source-health``, ``outcomes``, ``router.control``), which every
worker reads in full, so they are equal on every worker. Dedupe entries, rate-limit buckets,
consensus observations and the random streams change as batches are decided
(:mod:`router_stream.core.decide`). Every fold takes the policy in force as an argument.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from router_stream.core import breaker as brk
from router_stream.core import trust as tr
from router_stream.core.breaker import Breaker, BreakerState, BreakerTransition
from router_stream.core.compiled import CompiledPolicy, routable_destinations
from router_stream.core.dedupe import DedupeWindow
from router_stream.core.models import HealthEvent, Outcome, OverrideClear, OverrideSet
from router_stream.core.overrides import Override, OverrideKind, clear_override, set_override
from router_stream.core.overrides import unknown_target as unknown_override_target
from router_stream.core.ratelimit import TenantBuckets
from router_stream.core.strategies import (
    BANDIT_STRATEGIES,
    BanditArm,
    LastGood,
    LoadCounter,
    Observation,
)
from router_stream.core.strategies import bandits as bandit_mod

MAX_EVENT_LEAD_S = 300.0
"""How far a health event's or outcome's ``ts`` may be ahead of the ``now`` it is folded at;
one further ahead is folded at ``now``. Otherwise a time far in the future would hold a breaker
open, and trust undecayed, until that time."""


def event_time(ts: float, now: float) -> float:
    """When an event with ``ts``, folded at ``now``, happened (see ``MAX_EVENT_LEAD_S``)."""
    return now if ts > now + MAX_EVENT_LEAD_S else ts


@dataclass(frozen=True, slots=True)
class ControlResult:
    """What an operator command did: accepted or not, a one-line message, breaker moves."""

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
    write, so ``tick`` and every batch look only at those (docs/performance.md)."""

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


class RouterState:
    """Everything the engine knows besides its policy."""

    def __init__(self, seed: int, dedupe_window_s: float, dedupe_max_entries: int) -> None:
        self.rng = random.Random(seed)
        # Shadow evaluations draw from their own stream, so shadowing never changes what the
        # active policy decides.
        self.shadow_rng = random.Random(seed + 1)
        self.trust: dict[str, tr.TrustState] = {}
        self.breakers = BreakerTable()
        self.arms: dict[str, BanditArm] = {}
        self.load: dict[str, LoadCounter] = {}
        self.overrides: dict[str, Override] = {}
        self.buckets = TenantBuckets()
        self.dedupe = DedupeWindow(dedupe_window_s, dedupe_max_entries)
        self.observations: dict[str, dict[str, Observation]] = {}
        self.last_good: dict[str, LastGood] = {}

    def breaker(self, target: str) -> Breaker:
        """``target``'s breaker (a new, closed one for a target never seen)."""
        b = self.breakers.get(target)
        if b is None:
            b = Breaker(target_id=target)
            self.breakers[target] = b
        return b

    def trust_state(self, target: str, policy: CompiledPolicy) -> tr.TrustState:
        t = self.trust.get(target)
        return t if t is not None else tr.TrustState.initial(policy.trust_params)

    # --- the state topics --------------------------------------------------------------------

    def apply_health(self, event: HealthEvent, now: float, policy: CompiledPolicy
                     ) -> list[BreakerTransition]:
        """Fold a health event: trust components, and the breaker when it says ok or not."""
        at = event_time(event.ts, now)
        self.trust[event.source_id] = tr.observe_health(
            self.trust_state(event.source_id, policy), now=at,
            params=policy.trust_params, ok=event.ok, latency_ms=event.latency_ms,
            error_rate=event.error_rate, last_data_ts=event.last_data_ts,
            completeness=event.completeness,
        )
        ok = event.ok
        if ok is None and event.error_rate is not None:
            ok = event.error_rate < policy.breaker_for(event.source_id).error_rate_threshold
        if ok is None:
            return []
        return self._record(event.source_id, ok, at, policy)

    def apply_outcome(self, outcome: Outcome, now: float, policy: CompiledPolicy
                      ) -> list[BreakerTransition]:
        """Fold a delivery outcome: trust, breaker, bandit reward, in-flight load."""
        at = event_time(outcome.ts, now) if outcome.ts is not None else now
        dest = outcome.destination
        self.trust[dest] = tr.observe_outcome(
            self.trust_state(dest, policy), ok=outcome.ok, now=at, params=policy.trust_params,
            latency_ms=outcome.latency_ms,
        )
        reward = outcome.reward if outcome.reward is not None else (1.0 if outcome.ok else 0.0)
        bandit = _bandit_config_for(dest, policy)
        arm = self.arms.get(dest) or bandit_mod.new_arm(bandit)
        self.arms[dest] = bandit_mod.update(arm, reward, bandit)
        self.load[dest] = self.load.get(dest, LoadCounter()).on_outcome()
        return self._record(dest, outcome.ok, at, policy)

    def _record(self, target: str, ok: bool, at: float, policy: CompiledPolicy
                ) -> list[BreakerTransition]:
        cfg = policy.breaker_for(target)
        polled, moves = brk.poll(self.breaker(target), at, cfg)
        updated, more = brk.record(polled, ok, at, cfg)
        self.breakers[target] = updated
        return [*moves, *more]

    # --- operator commands -------------------------------------------------------------------

    def set_override(self, cmd: OverrideSet, now: float, policy: CompiledPolicy
                     ) -> ControlResult:
        created = cmd.issued_at if cmd.issued_at is not None else now
        target = cmd.target if cmd.target is not None else cmd.destinations[0]
        unknown = unknown_override_target(cmd.action, target, routable_destinations(policy))
        if unknown is not None:
            return ControlResult(False, f"override {cmd.override_id} refused: {unknown}")
        self.overrides = set_override(self.overrides, Override(
            override_id=cmd.override_id, kind=OverrideKind(cmd.action), target=target,
            expires_at=cmd.expires_at, created_at=created, kind_selector=cmd.kind,
            tenant_selector=cmd.tenant, reason=cmd.reason,
        ))
        return ControlResult(True, f"override {cmd.override_id} ({cmd.action}) set")

    def clear_override(self, cmd: OverrideClear) -> ControlResult:
        self.overrides = clear_override(self.overrides, cmd.override_id)
        return ControlResult(True, f"override {cmd.override_id} cleared")

    def force(self, target: str, to: BreakerState, now: float, reason: str,
              policy: CompiledPolicy) -> ControlResult:
        """Move ``target``'s breaker by operator command."""
        try:
            updated, moves = brk.force(self.breaker(target), to, now, reason,
                                       policy.breaker_for(target))
        except brk.InvalidTransition as exc:
            return ControlResult(False, str(exc))
        self.breakers[target] = updated
        return ControlResult(True, f"breaker {target} -> {to.value}", moves)

    # --- time ----------------------------------------------------------------------------------

    def tick(self, now: float, policy: CompiledPolicy) -> list[BreakerTransition]:
        """Time-driven moves: open breakers whose cooldown elapsed go half-open; expired
        overrides are dropped."""
        moves: list[BreakerTransition] = []
        for target, b in self.breakers.not_closed_items():
            updated, more = brk.poll(b, now, policy.breaker_for(target))
            if more:
                self.breakers[target] = updated
                moves.extend(more)
        if self.overrides:
            self.overrides = {k: o for k, o in self.overrides.items() if o.is_active(now)}
        return moves

    def snapshot(self, now: float | None, policy: CompiledPolicy) -> StateSnapshot:
        """Trust scores at ``now`` (default: the latest trust observation), breaker states,
        the policy version and the overrides."""
        at = now if now is not None else max(
            (t.last_ts for t in self.trust.values() if t.last_ts is not None), default=0.0
        )
        return StateSnapshot(
            trust={k: tr.score(v, at, policy.trust_weights, policy.trust_params)
                   for k, v in sorted(self.trust.items())},
            breakers={k: b.state.value for k, b in sorted(self.breakers.items())},
            policy_version=policy.version,
            overrides=[o.to_dict() for o in sorted(self.overrides.values(),
                                                    key=lambda o: o.override_id)],
        )


def _bandit_config_for(dest: str, policy: CompiledPolicy) -> bandit_mod.BanditConfig:
    for route in policy.routes.values():
        if route.strategy in BANDIT_STRATEGIES and dest in route.destinations:
            return route.bandit
    return bandit_mod.BanditConfig()
