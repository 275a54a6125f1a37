"""Deciding signals while a rollout runs (:mod:`router_stream.core.rollout` has the spec and the
monitor): which policy decides each signal, what the candidate would have done with a shadow
sample, and each arm's outcomes counted for the automatic rollback.
"""

from __future__ import annotations

from router_stream.core.decide import Decider, Deciding, classify
from router_stream.core.models import DlqReason
from router_stream.core.outputs import BatchResult
from router_stream.core.rollout import (
    Arm,
    RolloutEvent,
    RolloutMonitor,
    RolloutSpec,
    ShadowOutcome,
    in_share,
)
from router_stream.core.rollout import Outcome as ArmOutcome
from router_stream.core.state import RouterState
from router_stream.core.strategies import SELECTION_STRATEGIES
from router_stream.core.strategies.base import first_usable_tier

Done = tuple[str, ...] | str  # the destinations, or the DLQ reason
_NO_HEALTHY_REASONS = frozenset({DlqReason.NO_HEALTHY_DESTINATION.value,
                                 DlqReason.RETRIES_EXHAUSTED.value})


class RolloutRouter:
    """One running rollout: canary, the candidate decides the keys in its share, for real;
    shadow, the active policy decides and the candidate's choice for a sample is recorded."""

    def __init__(self, spec: RolloutSpec, decider: Decider, state: RouterState) -> None:
        self._spec = spec
        self._decider = decider
        self._state = state
        self._monitor = RolloutMonitor(spec)

    def decide(self, d: Deciding) -> None:
        spec, result, signal = self._spec, d.result, d.signal
        marks = (len(result.decisions), len(result.dlq), len(result.retries))
        if spec.mode == "canary" and in_share(d.record.key, signal.signal_id, spec.fraction):
            d.policy = spec.candidate
            self._decider.decide(d)
            self._observe("candidate", result, marks, d.now)
            return
        self._decider.decide(d)
        done = self._observe("baseline", result, marks, d.now)
        if spec.mode == "shadow" and in_share(None, signal.signal_id, spec.fraction):
            would = self._shadow_choice(d)
            self._monitor.observe("candidate", _outcome_of(would), d.now)
            result.shadow.append(ShadowOutcome(signal.signal_id, spec.candidate.version,
                                               done, would, would == done))

    def verdict(self, now: float, baseline_version: str) -> RolloutEvent | None:
        """A rollback event when the candidate is measurably worse, else ``None``."""
        return self._monitor.verdict(now, baseline_version)

    def _observe(self, arm: Arm, result: BatchResult, marks: tuple[int, int, int],
                 now: float) -> Done:
        """Count the outcome one record just got in its arm; returns it for shadow comparison."""
        decisions, dlq, retries = marks
        if len(result.decisions) > decisions:
            done: Done = tuple(result.decisions[-1].destinations)
        elif len(result.retries) > retries:
            done = DlqReason.NO_HEALTHY_DESTINATION.value
        elif len(result.dlq) > dlq:
            done = result.dlq[-1].entry.reason.value
        else:
            return "duplicate"
        self._monitor.observe(arm, _outcome_of(done), now)
        return done

    def _shadow_choice(self, d: Deciding) -> Done:
        """What the candidate would route the signal to, without changing any state: no dedupe
        entry, no rate-limit token, no probe slot, no load; its own random stream."""
        candidate, signal, batch = self._spec.candidate, d.signal, d.batch
        found = classify(signal, candidate)
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
        ctx = batch.new_context(route, candidate, self._state.shadow_rng,
                                batch.trust_scores(d.policy))
        selection = SELECTION_STRATEGIES[route.strategy](route.tiers, ctx)
        if selection is None:
            return DlqReason.NO_HEALTHY_DESTINATION.value
        return selection.destinations


def _outcome_of(done: Done) -> ArmOutcome:
    if isinstance(done, tuple):
        return "routed"
    return "no_healthy" if done in _NO_HEALTHY_REASONS else "dlq"
