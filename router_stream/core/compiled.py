"""A policy compiled for the hot path: plain frozen dataclasses the engine reads per signal.

The policy file (:mod:`router_stream.core.policy`) is a validated pydantic model, made for
humans and error messages. Deciding a signal must not walk that model: :func:`compile_policy`
maps it once onto the core's own parameter types (``TrustWeights``, ``BreakerConfig``,
``ConsensusConfig`` …) and precompiled classification rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from router_stream.core.breaker import BreakerConfig
from router_stream.core.models import Signal
from router_stream.core.ratelimit import RateLimit
from router_stream.core.strategies import BanditConfig, ConsensusConfig
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
