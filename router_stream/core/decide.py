"""Deciding one parsed signal, top to bottom: classify, find its route, drop or refuse a
duplicate, admit it under its tenant's rate limit, choose destinations (a selection strategy, an
override or consensus), then emit its decision and routed records — or park it on
``router.retry``, or dead-letter it.

Each step reads what it needs from one :class:`Deciding` (the record, where it was first read,
the signal, the policy deciding it, the batch and the batch's result) and appends its outputs to
that result. State changes (dedupe, rate limits, consensus observations, probes, load) go to
the engine's :class:`~router_stream.core.state.RouterState`.
"""

from __future__ import annotations

import msgspec

from router_stream.core import trust as tr
from router_stream.core.batchview import BatchView
from router_stream.core.compiled import CompiledPolicy, RouteSpec
from router_stream.core.deadletter import dlq_record
from router_stream.core.models import DlqReason, InboundRecord, Signal
from router_stream.core.outputs import BatchResult, DecisionRecord, RetryRecord, RoutedRecord
from router_stream.core.policy.fields import MAX_RETRY_DELAY_S
from router_stream.core.state import RouterState, event_time
from router_stream.core.strategies import SELECTION_STRATEGIES, Observation, consensus
from router_stream.core.strategies.base import first_usable_tier
from router_stream.core.strategies.consensus import deviation_z, remember
from router_stream.core.wire import (
    Origin,
    consensus_members,
    dlq_context,
    retry_headers,
    routed_body,
    trace_headers,
)


class Deciding(msgspec.Struct):
    """One signal being decided, and everything its steps read (a ``msgspec.Struct``: one is
    built per signal, and that is cheaper than a dataclass)."""

    record: InboundRecord
    origin: Origin
    signal: Signal
    policy: CompiledPolicy  # the active policy, or a rollout's candidate for its share
    batch: BatchView
    result: BatchResult
    now: float


Picked = tuple[tuple[str, ...], int | None, float]
"""Destinations, the tier they came from and the confidence: a strategy's
:class:`~router_stream.core.strategies.base.Selection`, or an override's or consensus's pick."""


def classify(signal: Signal, policy: CompiledPolicy) -> tuple[str, int | None] | None:
    """The signal's kind and priority: its own, the first matching rule's, or the policy's
    default kind; ``None`` when it stays unclassified."""
    if signal.kind is not None:
        return signal.kind, signal.priority
    found = policy.classify(signal)
    if found is not None:
        kind, priority = found
        return kind, signal.priority if signal.priority is not None else priority
    if policy.unclassified_kind is not None:
        return policy.unclassified_kind, signal.priority
    return None


class Decider:
    """The decide path over the engine's state; DLQ records name ``consumer_group``."""

    def __init__(self, state: RouterState, consumer_group: str | None) -> None:
        self._state = state
        self._group = consumer_group

    def decide(self, d: Deciding) -> None:
        signal = d.signal
        kind_and_priority = classify(signal, d.policy)
        if kind_and_priority is None:
            self.dead_letter(d, DlqReason.UNCLASSIFIED,
                             "no classification rule matched and the policy's default is the DLQ")
            return
        kind, priority = kind_and_priority
        route = d.policy.routes.get(kind)
        if route is None:
            self.dead_letter(d, DlqReason.NO_ROUTE, f"no route for kind {kind!r}", kind)
            return
        state = self._state
        fresh = d.origin.attempts == 0
        if route.dedupe and fresh and state.dedupe.seen_or_add(signal.signal_id, d.now):
            if route.on_duplicate == "dlq":
                self.dead_letter(d, DlqReason.DUPLICATE,
                                 f"signal_id {signal.signal_id} already routed", kind)
            else:
                d.result.dropped_duplicates += 1
            return
        policy = d.policy
        if not state.buckets.admit(signal.tenant, d.now, policy.tenant_limits,
                                   policy.default_limit, policy.unknown_tenants):
            self.dead_letter(d, DlqReason.RATE_LIMITED,
                             f"tenant {signal.tenant!r} is over its rate limit", kind)
            return
        if route.strategy == "consensus":
            self._consensus(d, route, priority)
        else:
            self._select(d, route, priority)

    def _select(self, d: Deciding, route: RouteSpec, priority: int | None) -> None:
        batch = d.batch
        overrides = batch.overrides
        forced = (overrides.forced_destination(route.kind, d.signal.tenant) if overrides.forced
                  else None)
        if forced is not None:
            self._emit(d, route, priority, ((forced,), None, 1.0), "override")
            return
        ctx = batch.context(route, d.policy)
        while True:
            selection = SELECTION_STRATEGIES[route.strategy](route.tiers, ctx)
            if selection is None:
                self._no_healthy(d, route)
                return
            # A half-open destination admits a bounded number of probes; when its slots are
            # taken it is unavailable for the rest of the batch and the strategy chooses again.
            if not batch.probing or all(batch.take_probe(dest, d.policy)
                                        for dest in selection.destinations):
                break
        self._emit(d, route, priority, selection, route.strategy)

    def _consensus(self, d: Deciding, route: RouteSpec, priority: int | None) -> None:
        cfg = route.consensus
        if cfg is None:  # compile_policy sets it for every consensus route
            raise ValueError(f"route {route.kind!r} uses consensus without its parameters")
        signal, state, batch, now = d.signal, self._state, d.batch, d.now
        metric = signal.metric or route.kind
        if signal.source_id is not None and signal.value is not None:
            # Observation(...) without the NamedTuple __new__ (once per observation)
            # at most MAX_EVENT_LEAD_S ahead: one dated in 9999 would stay fresh for good
            state.observations.setdefault(metric, {})[signal.source_id] = tuple.__new__(
                Observation, (signal.source_id, signal.value, event_time(signal.ts, now)))
        observations = state.observations.get(metric, {})
        outcome = consensus(observations.values(), now, cfg, batch.trust_scores(d.policy),
                            batch.unavailable_sources, state.last_good.get(metric),
                            batch.track_record)
        if outcome is None:
            self.dead_letter(d, DlqReason.NO_HEALTHY_DESTINATION,
                             f"metric {metric!r}: no usable source and no recent consensus",
                             route.kind)
            return
        good = remember(outcome, now)
        if good is not None:
            state.last_good[metric] = good
            source = signal.source_id
            if source is not None and signal.value is not None:
                # Each observation moves only its own source's deviation component, once.
                z = deviation_z(signal.value, outcome)
                trust = tr.observe_deviation(state.trust_state(source, d.policy), z=z, now=now,
                                             params=d.policy.trust_params)
                state.trust[source] = trust
                batch.trust_changed(source, trust)
        usable = first_usable_tier(route.tiers, batch.unavailable)
        if usable is None:
            self._no_healthy(d, route)
            return
        tier, dests = usable
        consensus_json = consensus_members(outcome.value, outcome.method,
                                           outcome.sources_used, outcome.outliers)
        self._emit(d, route, priority, ((dests[0],), tier, outcome.confidence), "consensus",
                   consensus_json)

    def _no_healthy(self, d: Deciding, route: RouteSpec) -> None:
        """Every destination unavailable: retry later while the route allows, else the DLQ."""
        attempts = d.origin.attempts
        if attempts < route.max_attempts:
            self._retry(d, route)
            return
        reason = (DlqReason.RETRIES_EXHAUSTED if route.max_attempts > 0
                  else DlqReason.NO_HEALTHY_DESTINATION)
        detail = f" after {attempts} retries" if route.max_attempts > 0 else ""
        self.dead_letter(d, reason,
                         f"every destination of kind {route.kind!r} is unavailable{detail}",
                         route.kind)

    def _emit(self, d: Deciding, route: RouteSpec, priority: int | None, picked: Picked,
              strategy: str, consensus: bytes | None = None) -> None:
        """The decision (SPEC §3) and one routed record per destination (SPEC §2), their bytes
        built by the batch's :class:`~router_stream.core.wire.OutputEncoder`; ``consensus``: a
        consensus decision's value, method, sources_used and outliers, serialised."""
        signal, origin, batch = d.signal, d.origin, d.batch
        destinations, tier, confidence = picked
        signal_id = signal.signal_id
        version = d.policy.version
        enc = batch.encoder
        parts = enc.route(route.kind, destinations, strategy, tier, version)
        ids = enc.ids(signal_id)
        conf = enc.number(confidence)
        replay: dict[str, object] | None = (
            {"replay_of": origin.dlq_id} if origin.dlq_id is not None else None)
        state = batch.route_state(route, d.policy)[2]
        value = enc.decision(ids, signal.tenant, parts, conf, state, origin, signal.ts, priority,
                             consensus, replay)
        # Positional, in field order (docs/performance.md).
        d.result.decisions.append(DecisionRecord(value, signal_id, route.kind,
                                                 list(destinations), strategy, version,
                                                 confidence))
        record = d.record
        body = routed_body(record.value)
        trace = trace_headers(record.headers)
        routed, counts = d.result.routed, batch.routed
        for i, dest in enumerate(destinations):
            routed.append(RoutedRecord(dest, record.key,
                                       enc.routed(body, ids, parts.routed[i], conf, consensus),
                                       signal_id, trace))
            counts[dest] = counts.get(dest, 0) + 1

    def _retry(self, d: Deciding, route: RouteSpec) -> None:
        """Park the signal on ``router.retry`` with exponential backoff, each wait at most
        ``MAX_RETRY_DELAY_S``."""
        origin, record, now = d.origin, d.record, d.now
        attempts = origin.attempts + 1
        not_before = now + min(route.retry_delay_s * 2 ** (attempts - 1), MAX_RETRY_DELAY_S)
        first = origin.first_failed_at if origin.first_failed_at is not None else now
        headers = retry_headers(record.headers, origin, attempts, first, not_before,
                                d.signal.signal_id, dlq_context(record, self._group))
        d.result.retries.append(RetryRecord(record.key, record.value, headers, not_before,
                                            attempts, d.signal.signal_id))

    def dead_letter(self, d: Deciding, reason: DlqReason, error: str,
                    kind: str | None = None) -> None:
        record = d.record
        d.result.dlq.append(dlq_record(
            record, d.origin, reason, error, d.now, signal_id=d.signal.signal_id,
            signal=d.signal, kind=kind, context=dlq_context(record, self._group)))

