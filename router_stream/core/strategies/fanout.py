"""``fanout``: every available destination of the first usable tier."""

from __future__ import annotations

from collections.abc import Container

from router_stream.core.strategies.base import (
    Selection,
    Tiers,
    first_usable_tier,
    tier_confidence,
)


def fanout(tiers: Tiers, unavailable: Container[str]) -> Selection | None:
    """All available destinations of the first tier that has any, in tier order. Confidence is
    the tier's confidence scaled by the share of the tier that is reachable."""
    usable = first_usable_tier(tiers, unavailable)
    if usable is None:
        return None
    index, available = usable
    share = len(available) / len(tiers[index])
    return Selection(tuple(available), index, tier_confidence(index) * share)
