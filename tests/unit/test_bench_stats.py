"""Percentiles, lag boundedness and the sustainable-rate search of the benchmark harness."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.harness import mixed_rate  # noqa: E402
from bench.stats import (  # noqa: E402
    RateSearch,
    cdf_points,
    lag_bounded,
    percentile,
    summarize_latencies,
)
from bench.workload import WorkloadSpec  # noqa: E402

# --- percentiles ----------------------------------------------------------------------------


def test_nearest_rank_percentiles() -> None:
    values = list(range(1, 1001))  # 1..1000
    assert percentile(values, 50) == 500
    assert percentile(values, 99) == 990
    assert percentile(values, 99.9) == 999
    assert percentile(values, 100) == 1000
    assert percentile([7.0], 99.9) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 0)


def test_lost_samples_count_as_infinitely_late() -> None:
    s = summarize_latencies([1.0] * 990 + [math.inf] * 10)
    assert s["p50_ms"] == 1.0 and s["p99_ms"] == 1.0 and s["p999_ms"] == math.inf
    s = summarize_latencies([1.0] * 980 + [math.inf] * 20)
    assert s["p99_ms"] == math.inf


def test_cdf_is_monotone_and_ends_at_one() -> None:
    pts = cdf_points([random.Random(1).expovariate(1) for _ in range(5000)], points=50)
    assert pts[-1][1] == 1.0
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in zip(pts, pts[1:], strict=False))


# --- lag ------------------------------------------------------------------------------------


def _series(rate: float, capacity: float, seconds: float = 5.0, jitter: float = 0.0,
            start_lag: float = 0.0) -> list[tuple[float, float]]:
    """Lag of a consumer handling ``capacity`` of ``rate`` offered, sampled every 0.25 s."""
    rng = random.Random(3)
    out, lag = [], start_lag
    for k in range(1, int(seconds / 0.25) + 1):
        lag = max(0.0, lag + (rate - capacity) * 0.25)
        out.append((k * 0.25, lag + rng.uniform(0, jitter)))
    return out


def test_keeping_up_with_batch_jitter_is_bounded() -> None:
    v = lag_bounded(_series(10_000, 12_000, jitter=3_000), 10_000)
    assert v.bounded, v.reason


def test_falling_behind_by_ten_percent_is_not_bounded() -> None:
    v = lag_bounded(_series(10_000, 9_000), 10_000)
    assert not v.bounded
    assert v.growth == pytest.approx(0.10, abs=0.01)


def test_slow_growth_under_the_threshold_is_bounded_but_a_high_plateau_is_not() -> None:
    assert lag_bounded(_series(10_000, 9_800), 10_000).bounded
    plateau = [(t, 50_000.0) for t, _ in _series(10_000, 10_000)]
    v = lag_bounded(plateau, 10_000)
    assert not v.bounded and "lag" in v.reason


def test_a_backlog_that_drains_is_bounded() -> None:
    v = lag_bounded(_series(5_000, 8_000, start_lag=9_000), 5_000)
    assert v.bounded, v.reason


def test_too_few_samples_is_not_bounded() -> None:
    assert not lag_bounded([(0.25, 0.0), (0.5, 0.0)], 1000).bounded


# --- the search ----------------------------------------------------------------------------


def _search(capacity: float, start: float, **kw: float) -> RateSearch:
    s = RateSearch(start=start, **kw)  # type: ignore[arg-type]
    while (rate := s.next_rate()) is not None:
        s.record(rate, lag_bounded(_series(rate, capacity), rate).bounded)
    return s


@pytest.mark.parametrize("capacity,start", [(20_000, 5_000), (20_000, 30_000), (3_000, 2_000),
                                            (100_000, 1_000)])
def test_search_lands_just_below_capacity(capacity: float, start: float) -> None:
    s = _search(capacity, start, growth=1.5, tolerance=0.05, max_steps=20)
    assert s.sustainable is not None
    assert 0.9 * capacity <= s.sustainable <= capacity / 0.95  # 5 % growth tolerated by design


def test_search_respects_max_steps() -> None:
    s = _search(1e9, 1_000, max_steps=4)
    assert len(s.steps) == 4 and s.sustainable == pytest.approx(1_000 * 1.5**3)


def test_nothing_passes_down_to_the_floor() -> None:
    s = _search(50, 1_000, floor=100, max_steps=20)
    assert s.sustainable is None


def test_generator_limit_ends_the_search_as_a_lower_bound() -> None:
    s = RateSearch(start=1_000)
    s.record(1_000, True)
    s.record(1_500, True, generator_kept_up=False)
    assert s.next_rate() is None
    assert s.limited_by_generator and s.sustainable == 1_500


def test_a_noisy_failure_below_a_later_pass_is_forgotten() -> None:
    s = RateSearch(start=1_000, growth=2.0)
    s.record(1_000, True)
    s.record(2_000, False)
    s.record(s.next_rate() or 0, True)  # ~1414
    s.record(2_000, True)  # the earlier failure was noise
    assert s.failed is None and s.next_rate() == 4_000


def test_mixed_rate_is_the_share_weighted_harmonic_mean() -> None:
    spec = WorkloadSpec()
    assert mixed_rate({"alert": 10.0, "notification": 10.0, "observation": 10.0}, spec) == (
        pytest.approx(10.0))
    slow_obs = mixed_rate({"alert": 100.0, "notification": 100.0, "observation": 1.0}, spec)
    assert slow_obs < 4.0  # 29 % of the signals at 1/s dominate the time
