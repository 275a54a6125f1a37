"""``least_loaded``: the destination with the lowest in-flight load relative to its capacity.

In-flight load is signals routed minus outcomes received (:class:`LoadCounter`). Outcomes can be
lost, so the counter is clamped at zero and the router may reset it; it is an estimate, not an
accounting truth.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

from router_stream.core.strategies.base import Selection, Tiers, clamp01, first_usable_tier


@dataclass(frozen=True, slots=True)
class LoadCounter:
    """Signals routed to, and outcomes received from, one destination."""

    routed: int = 0
    completed: int = 0

    @property
    def in_flight(self) -> int:
        return max(0, self.routed - self.completed)

    def on_routed(self, n: int = 1) -> LoadCounter:
        return LoadCounter(self.routed + n, self.completed)

    def on_outcome(self, n: int = 1) -> LoadCounter:
        # An outcome without a matching routed signal (replay, lost state) must not go negative.
        return LoadCounter(self.routed, min(self.routed, self.completed + n))

    def to_dict(self) -> dict[str, Any]:
        return {"routed": self.routed, "completed": self.completed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadCounter:
        return cls(int(data.get("routed", 0)), int(data.get("completed", 0)))


def least_loaded(
    tiers: Tiers,
    unavailable: Container[str],
    in_flight: Mapping[str, float],
    capacity: Mapping[str, float],
    default_capacity: float = 1.0,
) -> Selection | None:
    """Lowest ``in_flight / capacity`` in the first usable tier; ties go to tier order. A
    destination with capacity ≤ 0 counts as infinitely loaded. Confidence is the chosen
    destination's headroom, ``1 − utilisation`` clamped to [0, 1]."""
    usable = first_usable_tier(tiers, unavailable)
    if usable is None:
        return None
    index, candidates = usable
    best = candidates[0]
    best_load = float("inf")
    for destination in candidates:
        cap = capacity.get(destination, default_capacity)
        load = max(0.0, in_flight.get(destination, 0.0)) / cap if cap > 0.0 else float("inf")
        if load < best_load:
            best, best_load = destination, load
    return Selection((best,), index, clamp01(1.0 - best_load))
