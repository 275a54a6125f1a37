"""``weighted``: a trust-weighted random choice within the first usable tier."""

from __future__ import annotations

import random
from collections.abc import Container, Mapping

from router_stream.core.strategies.base import Selection, Tiers, clamp01, first_usable_tier


def weighted(
    tiers: Tiers,
    unavailable: Container[str],
    trust: Mapping[str, float],
    rng: random.Random,
    default_trust: float = 0.5,
) -> Selection | None:
    """Pick destination ``d`` with probability proportional to its trust (clamped to [0, 1];
    unknown destinations get ``default_trust``). If every candidate has zero trust the choice is
    uniform, so traffic keeps flowing and trust can recover. Confidence is the chosen
    destination's trust."""
    usable = first_usable_tier(tiers, unavailable)
    if usable is None:
        return None
    index, candidates = usable
    weights = [clamp01(trust.get(d, default_trust)) for d in candidates]
    total = sum(weights)
    if total <= 0.0:
        chosen = rng.randrange(len(candidates))
    else:
        point = rng.random() * total
        chosen = len(candidates) - 1  # guards against rounding leaving point >= the last sum
        running = 0.0
        for i, w in enumerate(weights):
            running += w
            if point < running:
                chosen = i
                break
    return Selection((candidates[chosen],), index, weights[chosen])
