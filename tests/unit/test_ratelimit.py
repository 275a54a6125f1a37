"""Token buckets: admission, refill, clock handling, and the burst + rate·t bound."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_stream.core.ratelimit import RateLimit, TokenBucket, admit, admit_limit


def test_a_new_bucket_is_full_then_refuses() -> None:
    bucket = TokenBucket()
    results = []
    for _ in range(5):
        ok, bucket = admit(bucket, 10.0, rate=1.0, burst=3.0)
        results.append(ok)
    assert results == [True, True, True, False, False]


def test_tokens_refill_at_rate_up_to_burst() -> None:
    _, bucket = admit(TokenBucket(), 0.0, rate=2.0, burst=4.0, cost=4.0)
    assert admit(bucket, 0.4, rate=2.0, burst=4.0)[0] is False
    ok, refilled = admit(bucket, 0.5, rate=2.0, burst=4.0)
    assert ok and refilled.tokens == pytest.approx(0.0)
    _, later = admit(refilled, 1000.0, rate=2.0, burst=4.0, cost=0.0)
    assert later.tokens == 4.0


def test_a_refused_signal_keeps_the_refill() -> None:
    _, bucket = admit(TokenBucket(), 0.0, rate=1.0, burst=2.0, cost=2.0)
    ok, bucket = admit(bucket, 1.0, rate=1.0, burst=2.0, cost=2.0)
    assert not ok and bucket == TokenBucket(1.0, 1.0)


def test_cost_above_burst_is_never_admitted() -> None:
    assert admit(TokenBucket(), 0.0, rate=100.0, burst=5.0, cost=6.0)[0] is False


def test_backwards_clock_mints_no_tokens() -> None:
    _, bucket = admit(TokenBucket(), 100.0, rate=1.0, burst=1.0)
    ok, bucket = admit(bucket, 50.0, rate=1.0, burst=1.0)
    assert not ok and bucket.last_ts == 100.0
    assert admit(bucket, math.nan, rate=1.0, burst=1.0)[0] is False


def test_invalid_cost_and_limits_are_rejected() -> None:
    with pytest.raises(ValueError):
        admit(TokenBucket(), 0.0, rate=1.0, burst=1.0, cost=-1.0)
    with pytest.raises(ValueError):
        admit(TokenBucket(), 0.0, rate=1.0, burst=1.0, cost=math.nan)
    with pytest.raises(ValueError):
        RateLimit(rate=-1.0, burst=1.0)
    with pytest.raises(ValueError):
        RateLimit(rate=1.0, burst=0.0)


def test_admit_limit_and_json_round_trip() -> None:
    ok, bucket = admit_limit(TokenBucket(), 5.0, RateLimit(rate=1.0, burst=2.0))
    assert ok and TokenBucket.from_dict(json.loads(json.dumps(bucket.to_dict()))) == bucket


def _assert_bound(admitted: list[tuple[float, float]], rate: float, burst: float) -> None:
    """For every interval [s, e] spanned by two admission times, the cost admitted at times in
    it is at most burst + rate·(e − s) (checking intervals whose ends are admission times is
    enough: shrinking any interval to its first and last admissions keeps its cost)."""
    times = sorted({t for t, _ in admitted})
    for i, start in enumerate(times):
        for end in times[i:]:
            cost = sum(c for t, c in admitted if start <= t <= end)
            assert cost <= burst + rate * (end - start) + 1e-9 * (1.0 + cost)


rates = st.floats(0.0, 50.0)
bursts = st.floats(0.5, 20.0)
costs = st.floats(0.0, 5.0)


@settings(max_examples=300)
@given(rates, bursts, st.lists(st.tuples(st.floats(0.0, 2.0), costs), max_size=60))
def test_never_more_than_burst_plus_rate_t_for_increasing_arrivals(
    rate: float, burst: float, arrivals: list[tuple[float, float]]
) -> None:
    bucket, now, admitted = TokenBucket(), 1000.0, []
    for gap, cost in arrivals:
        now += gap
        ok, bucket = admit(bucket, now, rate, burst, cost)
        if ok:
            admitted.append((now, cost))
        assert 0.0 <= bucket.tokens <= burst
    _assert_bound(admitted, rate, burst)


@settings(max_examples=300)
@given(rates, bursts, st.lists(st.tuples(st.floats(0.0, 100.0), costs), max_size=60))
def test_bound_holds_on_the_monotone_clock_for_arbitrary_arrival_times(
    rate: float, burst: float, arrivals: list[tuple[float, float]]
) -> None:
    bucket, clock, admitted = TokenBucket(), -math.inf, []
    for now, cost in arrivals:
        clock = max(clock, now)
        ok, bucket = admit(bucket, now, rate, burst, cost)
        if ok:
            admitted.append((clock, cost))
    _assert_bound(admitted, rate, burst)
