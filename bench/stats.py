"""The pure arithmetic of the benchmark: percentiles, "is the lag bounded?", and the search for the
sustainable rate. No I/O, no clock: tests/unit/test_bench_stats.py drives them with synthetic
series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 < q <= 100) by the nearest-rank method.

    Nearest rank, not interpolation: p99.9 of 1,000 samples is the largest one, a latency that
    really happened. Callers sort once and ask for several percentiles.
    """
    if not sorted_values:
        return math.nan
    if not 0.0 < q <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {q}")
    # the epsilon keeps float error (99.9 / 100 * 1000 = 999.0000000000001) off the next rank
    rank = math.ceil(q / 100.0 * len(sorted_values) - 1e-9)
    return float(sorted_values[max(rank, 1) - 1])


def summarize_latencies(latencies_ms: Sequence[float]) -> dict[str, float | int]:
    """count, p50, p99, p99.9 and max of a latency sample (ms)."""
    values = sorted(latencies_ms)
    return {"count": len(values), "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99), "p999_ms": percentile(values, 99.9),
            "max_ms": values[-1] if values else math.nan}


def cdf_points(latencies_ms: Sequence[float], points: int = 200) -> list[tuple[float, float]]:
    """(latency, fraction <= latency) at ``points`` evenly spaced ranks, for plotting."""
    values = sorted(latencies_ms)
    if not values:
        return []
    n = len(values)
    step = max(1, n // points)
    out = [(float(values[i]), (i + 1) / n) for i in range(0, n, step)]
    if out[-1][1] != 1.0:
        out.append((float(values[-1]), 1.0))
    return out


# --- lag --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LagVerdict:
    bounded: bool
    growth: float
    """Least-squares slope of the lag as a fraction of the offered rate (0: flat, 1: nothing
    gets through)."""
    final_lag: float
    reason: str


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) points; 0 when fewer than two distinct times."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in points) / var


def lag_bounded(samples: Sequence[tuple[float, float]], rate: float, *, settle: float = 0.25,
                max_growth: float = 0.05, max_lag_s: float = 2.0,
                min_lag: float = 500.0) -> LagVerdict:
    """Did the consumer keep up with ``rate`` over a window of (t seconds, lag records) samples?

    Bounded means both: the lag does not trend upwards (least-squares slope over the window after
    the first ``settle`` fraction is at most ``max_growth`` x rate — a contender that handles 95 %
    of the offered rate grows its lag by 5 % of the rate every second), and the lag at the end is
    at most ``max_lag_s`` seconds of input (at least ``min_lag`` records, for low rates and
    batch-sized jitter). The slope alone would accept a lag that jumped and stayed high; the
    final lag alone would accept slow growth in a short window.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    if len(samples) < 3:
        return LagVerdict(False, math.nan, math.nan, "too few lag samples")
    t0, t1 = samples[0][0], samples[-1][0]
    cut = t0 + settle * (t1 - t0)
    tail = [(t, y) for t, y in samples if t >= cut]
    if len(tail) < 2:
        tail = list(samples[-2:])
    growth = slope(tail) / rate
    final = samples[-1][1]
    limit = max(rate * max_lag_s, min_lag)
    if growth > max_growth:
        return LagVerdict(False, growth, final, f"lag grows at {growth:.0%} of the offered rate")
    if final > limit:
        return LagVerdict(False, growth, final, f"lag {final:.0f} > {limit:.0f} records")
    return LagVerdict(True, growth, final, "bounded")


# --- the sustainable-rate search --------------------------------------------------------------


@dataclass
class RateSearch:
    """Open-loop step search for the highest rate whose lag stays bounded.

    Start at ``start`` (an estimate, e.g. the drain rate), multiply by ``growth`` while steps pass;
    after the first failure, bisect (geometrically) between the best pass and the lowest failure
    until they are within ``tolerance`` or ``max_steps`` steps were run. A pass above an earlier
    failure (noise) clears that failure and the climb goes on; a failure at or below the best pass
    ends the search with the best pass. A generator that could not offer the rate ends the search
    (``limited_by_generator``): the result is then a lower bound. Pure: the caller runs each
    step and reports it.
    """

    start: float
    growth: float = 1.5
    tolerance: float = 0.10
    max_steps: int = 6
    floor: float = 100.0
    passed: float | None = None
    failed: float | None = None
    steps: list[tuple[float, bool]] = field(default_factory=list)
    limited_by_generator: bool = False

    def next_rate(self) -> float | None:
        """The next rate to offer, or None when the search is over."""
        if len(self.steps) >= self.max_steps or self.limited_by_generator:
            return None
        if not self.steps:
            return self.start
        if self.failed is None:
            assert self.passed is not None
            return self.passed * self.growth
        if self.passed is None:
            nxt = self.failed / self.growth
            return nxt if nxt >= self.floor else None
        if self.failed / self.passed <= 1.0 + self.tolerance:
            return None
        return math.sqrt(self.passed * self.failed)

    def record(self, rate: float, bounded: bool, *, generator_kept_up: bool = True) -> None:
        self.steps.append((rate, bounded))
        if not generator_kept_up:
            self.limited_by_generator = True
            if bounded:
                self.passed = max(self.passed or 0.0, rate)
            return
        if bounded:
            self.passed = max(self.passed or 0.0, rate)
            if self.failed is not None and self.failed <= self.passed:
                self.failed = None  # an earlier failure was noise: keep climbing
        else:
            self.failed = rate if self.failed is None else min(self.failed, rate)

    @property
    def sustainable(self) -> float | None:
        return self.passed
