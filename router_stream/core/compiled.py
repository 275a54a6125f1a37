"""A policy compiled for the hot path: plain frozen dataclasses the engine reads per signal.

The policy file (:mod:`router_stream.core.policy`) is a validated pydantic model, made for
humans and error messages. Deciding a signal must not walk that model: :func:`compile_policy`
turns it once into routes, precompiled classification rules and rate limits. The trust, breaker,
bandit and consensus sections are slotted dataclasses the core reads as they are (the breaker
and consensus configs extend them with settings the file does not have).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from router_stream.core.breaker import BreakerConfig
from router_stream.core.models import Signal
from router_stream.core.policy import BreakerPolicy, ConsensusParams, Policy, TenantLimit
from router_stream.core.ratelimit import NO_OPTIONS, RateLimit, UnknownTenants
from router_stream.core.redaction import DEFAULT_REDACTOR, Redactor
from router_stream.core.rollout import RolloutSpec
from router_stream.core.strategies import BANDIT_STRATEGIES, BanditConfig, ConsensusConfig
from router_stream.core.trust import TrustParams, TrustWeights

Classify = Callable[[Signal], "tuple[str, int | None] | None"]


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """How one kind is routed. ``max_attempts`` bounds how often a signal whose destinations are
    all unavailable is parked on the retry topic (0: straight to the DLQ)."""

    kind: str
    strategy: str
    tiers: tuple[tuple[str, ...], ...]
    bandit: BanditConfig = field(default_factory=BanditConfig)
    consensus: ConsensusConfig | None = None
    max_attempts: int = 0
    retry_delay_s: float = 1.0
    dedupe: bool = True
    on_duplicate: Literal["drop", "dlq"] = "drop"

    destinations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Precomputed: read once per decision on the hot path.
        object.__setattr__(self, "destinations", tuple(d for tier in self.tiers for d in tier))


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    version: str
    routes: Mapping[str, RouteSpec]
    classify: Classify
    unclassified_kind: str | None
    destinations: tuple[str, ...]
    capacity: Mapping[str, float]
    trust_weights: TrustWeights
    trust_params: TrustParams
    breaker: BreakerConfig
    tenant_limits: Mapping[str, RateLimit]
    default_limit: RateLimit | None
    rollout: RolloutSpec | None = None
    # how tenants the policy does not name share default_limit (and a total over all of them)
    unknown_tenants: UnknownTenants = NO_OPTIONS
    # Destinations whose breaker is not ``breaker``: set by their route (see breaker_for).
    destination_breakers: Mapping[str, BreakerConfig] = field(default_factory=dict)
    # What persisting and logging mask. The default is what a policy without a redact section
    # gets (every detector), so a CompiledPolicy built by hand never persists PII by omission.
    redactor: Redactor = field(default_factory=lambda: DEFAULT_REDACTOR)

    def breaker_for(self, target: str) -> BreakerConfig:
        """The breaker settings of a destination or source."""
        return self.destination_breakers.get(target, self.breaker)


def routable_destinations(policy: CompiledPolicy) -> tuple[str, ...]:
    """Every destination ``policy`` can route to: its own and its rollout candidate's, so each
    needs a ``routed.<destination>`` topic."""
    found = dict.fromkeys(policy.destinations)
    if policy.rollout is not None:
        found.update(dict.fromkeys(policy.rollout.candidate.destinations))
    return tuple(found)


def compile_policy(
    policy: Policy, read_candidate: Callable[[str], str] | None = None
) -> CompiledPolicy:
    """Map a validated :class:`Policy` onto the hot path's types (once per policy version).

    A ``rollout`` candidate given inline is compiled too; one given as ``candidate_file`` is read
    through ``read_candidate`` (I/O stays with the caller) and validated like any policy.
    """
    from router_stream.core.classify import compile_rules
    from router_stream.core.policy import policy_version

    routes: dict[str, RouteSpec] = {}
    for kind, route in policy.routes.items():
        routes[kind] = RouteSpec(
            kind=kind,
            strategy=route.strategy,
            tiers=tuple(tuple(tier) for tier in route.tier_list()),
            bandit=route.bandit or BanditConfig(),
            consensus=ConsensusConfig(**asdict(route.consensus or ConsensusParams()))
            if route.strategy == "consensus" else None,
            max_attempts=route.retry.max_attempts,
            retry_delay_s=route.retry.delay_ms / 1000.0,
            dedupe=route.dedupe,
            on_duplicate=route.on_duplicate,
        )
    # `defaults.unrouted: <kind>` routes a kind without a route like that kind.
    if policy.defaults.unrouted != "dlq" and policy.defaults.unrouted in routes:
        fallback = routes[policy.defaults.unrouted]
        routes = _UnroutedFallback(routes, fallback)
    classifier = compile_rules(policy)
    limits = {
        name: RateLimit(rate=limit.rate, burst=limit.effective_burst)
        for name, limit in policy.tenants.items() if name != "default"
    }
    default = policy.tenants.get("default")
    rollout = _rollout(policy, read_candidate)
    redactor = Redactor.of(policy.redact)
    if rollout is not None:  # mask what either policy names: the candidate decides real signals
        redactor = redactor.union(rollout.candidate.redactor)
    return CompiledPolicy(
        version=policy_version(policy),
        routes=routes,
        classify=classifier.classify,
        unclassified_kind=None if policy.defaults.unclassified == "dlq"
        else policy.defaults.unclassified,
        destinations=tuple(policy.destinations),
        capacity={k: d.capacity for k, d in policy.destinations.items() if d.capacity},
        trust_weights=policy.trust.weights,
        trust_params=policy.trust,
        breaker=_breaker_config(policy.breaker),
        destination_breakers=destination_breakers(policy),
        tenant_limits=limits,
        default_limit=RateLimit(rate=default.rate, burst=default.effective_burst)
        if default else None,
        unknown_tenants=_unknown_tenants(default),
        rollout=rollout,
        redactor=redactor,
    )


def _unknown_tenants(default: TenantLimit | None) -> UnknownTenants:
    if default is None:
        return NO_OPTIONS
    total = default.total
    return UnknownTenants(
        shared=default.shared,
        total=RateLimit(rate=total.rate, burst=total.effective_burst) if total else None,
        max_buckets=default.max_buckets,
    )


# A bandit route's arms fail as a matter of course: a failure is evidence for the bandit, and only
# a destination that fails this share of its window's deliveries is dead enough to eject.
BANDIT_DEAD_ERROR_RATE = 0.9


def bandit_breaker(b: BreakerPolicy) -> BreakerPolicy:
    """The breaker of a bandit route without one of its own: it opens on an error rate of at
    least :data:`BANDIT_DEAD_ERROR_RATE` over the window, or on a run of failures as long as
    ``min_volume`` (``failure_threshold`` raised to it) — not on the short runs that any arm
    succeeding half the time produces."""
    return replace(
        b,
        failure_threshold=max(b.failure_threshold, b.min_volume),
        error_rate_threshold=max(b.error_rate_threshold, BANDIT_DEAD_ERROR_RATE),
    )


def destination_breakers(policy: Policy) -> dict[str, BreakerConfig]:
    """Breaker settings of the destinations that do not use the policy's ``breaker``: those of a
    route with its own ``breaker``, and those named only by bandit routes (:func:`bandit_breaker`).
    """
    own: dict[str, BreakerPolicy] = {}
    bandit_only: dict[str, bool] = {}
    for route in policy.routes.values():
        for dest in route.all_destinations():
            if route.breaker is not None:
                own[dest] = route.breaker.over(policy.breaker)
            is_bandit = route.strategy in BANDIT_STRATEGIES
            bandit_only[dest] = bandit_only.get(dest, True) and is_bandit
    for dest, only in bandit_only.items():
        if only and dest not in own:
            own[dest] = bandit_breaker(policy.breaker)
    return {dest: _breaker_config(b) for dest, b in sorted(own.items())}


def _breaker_config(b: BreakerPolicy) -> BreakerConfig:
    return BreakerConfig(**asdict(b))


def _rollout(policy: Policy, read_candidate: Callable[[str], str] | None) -> RolloutSpec | None:
    from router_stream.core.policy import load_policy

    rollout = policy.rollout
    if rollout is None:
        return None
    candidate = rollout.candidate
    if candidate is None and rollout.candidate_file is not None:
        if read_candidate is None:
            raise ValueError("rollout.candidate_file needs a reader (the caller does the I/O)")
        candidate = load_policy(read_candidate(rollout.candidate_file), rollout.candidate_file)
    if candidate is None:
        return None
    rb = rollout.rollback
    return RolloutSpec(
        mode=rollout.mode, fraction=rollout.fraction, candidate=compile_policy(candidate),
        max_dlq_rate_delta=rb.max_dlq_rate_delta, max_no_healthy_delta=rb.max_no_healthy_delta,
        window_s=rb.window_s, min_signals=rb.min_signals,
    )


def load_compiled(text: str, source: str = "<string>",
                  read_candidate: Callable[[str], str] | None = None) -> CompiledPolicy:
    """Validate a policy file's text and compile it; raises ``PolicyError`` when invalid."""
    from router_stream.core.policy import load_policy

    return compile_policy(load_policy(text, source), read_candidate)


class _UnroutedFallback(dict[str, RouteSpec]):
    """Routes, where a kind without a route of its own is routed like ``defaults.unrouted``."""

    def __init__(self, routes: dict[str, RouteSpec], fallback: RouteSpec) -> None:
        super().__init__(routes)
        self._fallback = fallback

    def get(self, key: str, default: RouteSpec | None = None) -> RouteSpec | None:  # type: ignore[override]
        found = super().get(key)
        return found if found is not None else self._fallback
