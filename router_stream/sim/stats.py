"""Small summary statistics of a run's error and choice series (no numpy: the core's
dependencies only)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by nearest rank (``nan`` for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def ratio(a: float, b: float) -> float:
    return a / b if b > 0.0 else math.inf if a > 0.0 else math.nan


def rounded(x: float, digits: int = 4) -> float | None:
    """A figure for JSON: rounded, and ``None`` for a figure that does not exist (nan)."""
    return None if math.isnan(x) else round(x, digits)
