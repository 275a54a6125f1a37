"""``first_healthy``: ordered tiers, first available destination of the first usable tier wins.

This is the hot path of most routes. Building a ``Selection`` costs more than the whole loop, and
the same few (destination, tier) pairs are chosen over and over, so results are memoised. The memo
holds immutable values only, so the function stays pure; it is cleared when it grows past
``_MEMO_LIMIT`` so that memory stays bounded whatever the policies name.
"""

from __future__ import annotations

from collections.abc import Container

from router_stream.core.strategies.base import Selection, Tiers, tier_confidence

_MEMO_LIMIT = 65_536
_memo: dict[tuple[str, int], Selection] = {}


def _selection(destination: str, tier: int) -> Selection:
    selection = Selection((destination,), tier, tier_confidence(tier))
    if len(_memo) >= _MEMO_LIMIT:
        _memo.clear()
    _memo[(destination, tier)] = selection
    return selection


def first_healthy(tiers: Tiers, unavailable: Container[str]) -> Selection | None:
    """The first destination, in tier order, not in ``unavailable``; ``None`` when all are
    unavailable, so the router can retry or DLQ with ``no_healthy_destination``. Confidence is
    :func:`tier_confidence` of the tier it came from."""
    for index, tier in enumerate(tiers):
        for destination in tier:
            if destination not in unavailable:
                return _memo.get((destination, index)) or _selection(destination, index)
    return None
