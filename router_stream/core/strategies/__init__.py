"""Destination-selection strategies and their registry (SPEC §3).

``SELECTION_STRATEGIES[name](tiers, ctx)`` selects destinations for one signal. ``consensus`` is
registered by name in ``STRATEGY_NAMES`` but called directly (:func:`consensus.consensus`):
it produces a value from observations, not a destination.

The per-strategy functions (``first_healthy(tiers, unavailable)`` …) take only what they need
and are what the hot path and the benchmarks call; the registry adapters add one indirection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from router_stream.core.policy.fields import BANDIT_STRATEGIES
from router_stream.core.strategies.bandits import BanditArm, BanditConfig, greedy, thompson, ucb
from router_stream.core.strategies.base import Selection, Tiers
from router_stream.core.strategies.consensus import (
    ConsensusConfig,
    ConsensusResult,
    LastGood,
    Observation,
    consensus,
)
from router_stream.core.strategies.context import SelectionContext
from router_stream.core.strategies.fanout import fanout
from router_stream.core.strategies.first_healthy import first_healthy
from router_stream.core.strategies.least_loaded import LoadCounter, least_loaded
from router_stream.core.strategies.weighted import weighted

SelectionStrategy = Callable[[Tiers, SelectionContext], Selection | None]

SELECTION_STRATEGIES: Mapping[str, SelectionStrategy] = MappingProxyType(
    {
        "first_healthy": lambda tiers, ctx: first_healthy(tiers, ctx.unavailable),
        "fanout": lambda tiers, ctx: fanout(tiers, ctx.unavailable),
        "weighted": lambda tiers, ctx: weighted(
            tiers, ctx.unavailable, ctx.trust, ctx.rng, ctx.default_trust
        ),
        "least_loaded": lambda tiers, ctx: least_loaded(
            tiers, ctx.unavailable, ctx.in_flight, ctx.capacity, ctx.default_capacity
        ),
        "thompson": lambda tiers, ctx: thompson(
            tiers, ctx.unavailable, ctx.arms, ctx.rng, ctx.bandit
        ),
        "ucb": lambda tiers, ctx: ucb(tiers, ctx.unavailable, ctx.arms, ctx.bandit),
        "greedy": lambda tiers, ctx: greedy(tiers, ctx.unavailable, ctx.arms, ctx.rng, ctx.bandit),
    }
)

STRATEGY_NAMES: frozenset[str] = frozenset(SELECTION_STRATEGIES) | {"consensus"}


def get_strategy(name: str) -> SelectionStrategy:
    """The selection strategy called ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return SELECTION_STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(SELECTION_STRATEGIES))
        raise KeyError(f"unknown selection strategy {name!r} (known: {known})") from None


__all__ = [
    "BANDIT_STRATEGIES",
    "BanditArm",
    "BanditConfig",
    "ConsensusConfig",
    "ConsensusResult",
    "LastGood",
    "LoadCounter",
    "Observation",
    "SELECTION_STRATEGIES",
    "STRATEGY_NAMES",
    "Selection",
    "SelectionContext",
    "SelectionStrategy",
    "consensus",
    "fanout",
    "first_healthy",
    "get_strategy",
    "greedy",
    "least_loaded",
    "thompson",
    "ucb",
    "weighted",
]
