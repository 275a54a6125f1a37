"""The router engine: one entry point that decides a batch of signals against its state.

Pure: no I/O, time comes in as ``now`` (epoch seconds), randomness from a seeded RNG. The worker
owns one engine per process and feeds it

* ``decide_batch(records, now)`` for ``signals`` (and re-fed ``router.retry``) records, and
* ``apply_health`` / ``apply_outcome`` / ``apply_control`` for the low-volume state topics, which
  every worker reads in full — so the engine's trust, breaker, bandit, load and override state is
  a deterministic fold of those topics and equal on every worker.

Every input record ends in exactly one of: a decision, a DLQ record, a retry record, or (policy
permitting) a dropped duplicate; :class:`~router_stream.core.outputs.BatchResult` carries them.

The engine owns the policy and the batch loop; the rest lives beside it: the state and its folds
(:mod:`.state`), the per-batch view (:mod:`.batchview`), the decide path (:mod:`.decide`),
rollouts (:mod:`.rollout_routing`), DLQ records (:mod:`.deadletter`) and formats (:mod:`.wire`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from router_stream.core.batchview import BatchView
from router_stream.core.breaker import BreakerState, BreakerTransition
from router_stream.core.compiled import CompiledPolicy
from router_stream.core.deadletter import dlq_record, processing_error
from router_stream.core.decide import Decider, Deciding
from router_stream.core.models import (
    BreakerForce,
    BreakerReset,
    ControlCommand,
    HealthEvent,
    InboundRecord,
    Outcome,
    OverrideClear,
    OverrideSet,
    PolicyPublish,
    RolloutRollback,
)
from router_stream.core.outputs import BatchResult, Mark
from router_stream.core.overrides import Override, set_override
from router_stream.core.parsing import Rejection, parse_signal
from router_stream.core.rollout import RolloutSpec
from router_stream.core.rollout_routing import RolloutRouter
from router_stream.core.state import ControlResult, RouterState, StateSnapshot
from router_stream.core.wire import dlq_context, origin_of

__all__ = ["ControlResult", "RouterEngine", "StateSnapshot"]


class RouterEngine:
    """Per-worker routing state plus the functions that decide and fold events into it."""

    def __init__(self, policy: CompiledPolicy, *, seed: int = 0, dedupe_window_s: float = 3600.0,
                 dedupe_max_entries: int = 1_000_000, consumer_group: str | None = None):
        self._policy = policy
        self._group = consumer_group  # named on DLQ records (x-dlq-consumer-group)
        self.state = RouterState(seed, dedupe_window_s, dedupe_max_entries)
        self._decider = Decider(self.state, consumer_group)
        self._rollout = self._rollout_router(policy)

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
        self._rollout = self._rollout_router(policy)

    def _rollout_router(self, policy: CompiledPolicy) -> RolloutRouter | None:
        spec = policy.rollout
        return RolloutRouter(spec, self._decider, self.state) if spec is not None else None

    @property
    def rollout(self) -> RolloutSpec | None:
        return self._policy.rollout

    def drop_rollout(self, candidate_version: str | None = None) -> bool:
        """Stop the rollout (all of it, or only if it runs ``candidate_version``)."""
        rollout = self._policy.rollout
        if rollout is None or (candidate_version is not None
                               and rollout.candidate.version != candidate_version):
            return False
        self._policy = replace(self._policy, rollout=None)
        self._rollout = None
        return True

    # --- state topics ------------------------------------------------------------------------

    def apply_health(self, event: HealthEvent, now: float) -> list[BreakerTransition]:
        """Fold a health event: trust components, and the breaker when it says ok or not. A
        ``ts`` more than :data:`~router_stream.core.state.MAX_EVENT_LEAD_S` after ``now`` is
        taken as ``now``, here and for outcomes."""
        return self.state.apply_health(event, now, self._policy)

    def apply_outcome(self, outcome: Outcome, now: float) -> list[BreakerTransition]:
        """Fold a delivery outcome: trust, breaker, bandit reward, in-flight load."""
        return self.state.apply_outcome(outcome, now, self._policy)

    def apply_control(self, cmd: ControlCommand, now: float, compiled: CompiledPolicy | None = None
                      ) -> ControlResult:
        """Apply an operator command. ``policy_publish`` needs the candidate already compiled by
        the caller (``compiled``; ``None`` means it failed validation and is rejected)."""
        state = self.state
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
            return state.set_override(cmd, now, self._policy)
        if isinstance(cmd, OverrideClear):
            return state.clear_override(cmd)
        if isinstance(cmd, BreakerForce):
            target = BreakerState.OPEN if cmd.state == "open" else BreakerState.CLOSED
            return state.force(cmd.target, target, now, cmd.reason or "operator_force",
                               self._policy)
        if isinstance(cmd, BreakerReset):
            return state.force(cmd.target, BreakerState.CLOSED, now, "operator_reset",
                               self._policy)
        return ControlResult(False, f"{cmd.type} is handled by the worker, not the engine")

    def apply_override(self, override: Override) -> None:
        """Add any override kind (drain, exclude, force) directly."""
        self.state.overrides = set_override(self.state.overrides, override)

    def tick(self, now: float) -> list[BreakerTransition]:
        """Time-driven moves: open breakers whose cooldown elapsed go half-open; expired
        overrides are dropped."""
        return self.state.tick(now, self._policy)

    def snapshot(self, now: float | None = None) -> StateSnapshot:
        return self.state.snapshot(now, self._policy)

    # --- the hot path ------------------------------------------------------------------------

    def decide_batch(self, records: Sequence[InboundRecord], now: float) -> BatchResult:
        """Decide every record of a batch. State changes (dedupe, rate limits, load, probes)
        apply in record order, so a batch decides exactly as the same records one by one."""
        result = BatchResult()
        batch = BatchView(self.state, self._policy, now)
        try:
            for record in records:
                mark = result.mark()
                try:
                    self._decide_one(record, now, batch, result)
                except Exception as exc:  # noqa: BLE001 - isolation is the point: any fault
                    self._isolate(record, exc, mark, now, batch, result)
        finally:
            batch.fold_routed()
        result.breaker_transitions.extend(batch.transitions)
        self._check_rollout(now, result)
        return result

    def _isolate(self, record: InboundRecord, exc: Exception, mark: Mark, now: float,
                 batch: BatchView, result: BatchResult) -> None:
        """A record raised while being decoded, decided or encoded: what it had added to the
        batch since ``mark`` is taken back and it goes to the DLQ as ``processing_error``
        (exception class and message in the error), so one record can never stop a batch."""
        for taken in result.take_back(mark):
            batch.count_routed(taken.destination, -1)
        result.dlq.append(processing_error(record, exc, now, self._group))

    def _decide_one(self, record: InboundRecord, now: float, batch: BatchView,
                    result: BatchResult) -> None:
        origin = origin_of(record)
        if origin.dlq_id is not None and self.state.dedupe.seen_or_add(origin.replay_id, now):
            result.dropped_duplicates += 1  # one replay sent twice (dlq/replay.py's crash window)
            return
        parsed = parse_signal(record.value, record_ts_ms=record.timestamp, now=now)
        if isinstance(parsed, Rejection):
            result.dlq.append(dlq_record(record, origin, parsed.reason, parsed.error, now,
                                         signal_id=parsed.signal_id,
                                         context=dlq_context(record, self._group)))
            return
        deciding = Deciding(record, origin, parsed, self._policy, batch, result, now)
        if self._rollout is None:
            self._decider.decide(deciding)
        else:
            self._rollout.decide(deciding)

    def _check_rollout(self, now: float, result: BatchResult) -> None:
        """Roll the candidate back when the monitor says it is worse than the baseline."""
        if self._rollout is None or self._policy.rollout is None:
            return
        event = self._rollout.verdict(now, self._policy.version)
        if event is not None:
            self.drop_rollout()
            result.rollout_events.append(event)
