"""What every selection strategy returns, and the tier conventions they share.

A route names destinations as ordered *tiers* (primary, secondary, …, fallback); a flat list of
destinations is one tier. ``unavailable`` is the set of destinations the router has ruled out for
this batch (open breakers, half-open breakers with no probe slot, drained destinations), built once
per batch so that strategies only do set lookups.

:class:`Selection` is a ``NamedTuple`` rather than a dataclass: strategies run once per signal and
a tuple is the cheapest immutable record CPython can build.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import NamedTuple

Tiers = Sequence[Sequence[str]]


class Selection(NamedTuple):
    """Where to send one signal: ``destinations`` (one, or several for fanout), the ``tier`` they
    came from, and the strategy's ``confidence`` in [0, 1]."""

    destinations: tuple[str, ...]
    tier: int
    confidence: float


_TIER_CONFIDENCE: tuple[float, ...] = tuple(1.0 / (1 + i) for i in range(32))


def tier_confidence(tier: int) -> float:
    """Confidence of a choice made in ``tier``: 1 for the primary, 1/2 for the secondary, …
    Falling back is itself evidence that something is wrong."""
    return _TIER_CONFIDENCE[tier] if tier < 32 else 1.0 / (1 + tier)


def first_usable_tier(tiers: Tiers, unavailable: Container[str]) -> tuple[int, list[str]] | None:
    """The first tier with at least one available destination, and those destinations in the
    tier's order; ``None`` when every destination is unavailable."""
    for index, tier in enumerate(tiers):
        available = [d for d in tier if d not in unavailable]
        if available:
            return index, available
    return None


def clamp01(x: float) -> float:
    """Clamp to [0, 1]; NaN becomes 0 (an unknown quantity earns no confidence)."""
    return x if 0.0 <= x <= 1.0 else (1.0 if x > 1.0 else 0.0)
