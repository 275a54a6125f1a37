"""Token buckets: admission, refill, clock handling, and the burst + rate·t bound."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_stream.core.ratelimit import (
    RateLimit,
    TenantBuckets,
    TokenBucket,
    UnknownTenants,
    admit,
    admit_limit,
)


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


# --- TenantBuckets: bounded memory under unbounded tenant values ------------------------------

LIMIT = RateLimit(rate=1.0, burst=2.0)


def test_an_unknown_tenants_bucket_is_dropped_once_refilled_to_full() -> None:
    buckets = TenantBuckets()
    assert buckets.admit("a", 0.0, {}, LIMIT)
    assert buckets.admit("b", 1.9, {}, LIMIT)  # a: 1 + 1.9 tokens >= 2: full, forgotten
    assert len(buckets) == 1
    assert buckets.admit("c", 2.0, {}, LIMIT, cost=2.0)  # b: 1 + 0.1 < 2: kept
    assert len(buckets) == 2


def test_unknown_tenants_are_capped_least_recently_used_first() -> None:
    buckets, options = TenantBuckets(), UnknownTenants(max_buckets=100)
    for i in range(10_000):
        buckets.admit(f"t{i}", 0.0, {}, RateLimit(rate=0.0, burst=5.0), options)
        assert len(buckets) <= 100
    assert len(buckets) == 100


def test_named_tenants_keep_their_own_buckets_outside_the_cap() -> None:
    buckets, options = TenantBuckets(), UnknownTenants(max_buckets=1)
    named = {"acme": RateLimit(rate=0.0, burst=1.0)}
    assert buckets.admit("acme", 0.0, named, LIMIT, options)
    for i in range(10):
        buckets.admit(f"spoof{i}", 0.0, named, LIMIT, options)
    assert not buckets.admit("acme", 0.0, named, LIMIT, options)  # its empty bucket survived


def test_a_shared_bucket_cannot_be_walked_around_by_new_tenant_values() -> None:
    buckets, options = TenantBuckets(), UnknownTenants(shared=True)
    zero = RateLimit(rate=0.0, burst=5.0)
    admitted = sum(buckets.admit(f"t{i}", 0.0, {}, zero, options) for i in range(1000))
    assert admitted == 5 and len(buckets) == 0


def test_a_total_caps_all_unknown_tenants_together() -> None:
    buckets = TenantBuckets()
    options = UnknownTenants(total=RateLimit(rate=0.0, burst=20.0))
    own = RateLimit(rate=0.0, burst=5.0)
    admitted = sum(buckets.admit(f"t{i}", 0.0, {}, own, options) for i in range(1000))
    assert admitted == 20
    named = {"acme": RateLimit(rate=0.0, burst=3.0)}  # named tenants are not in the total
    assert sum(buckets.admit("acme", 0.0, named, own, options) for _ in range(5)) == 3


def test_a_total_applies_without_a_per_tenant_limit() -> None:
    buckets = TenantBuckets()
    options = UnknownTenants(total=RateLimit(rate=0.0, burst=3.0))
    assert sum(buckets.admit(f"t{i}", 0.0, {}, None, options) for i in range(10)) == 3
    assert len(buckets) == 0


def test_a_signal_refused_by_the_total_takes_no_token_from_its_tenant() -> None:
    buckets = TenantBuckets()
    options = UnknownTenants(total=RateLimit(rate=1.0, burst=1.0))
    own = RateLimit(rate=0.0, burst=1.0)
    assert buckets.admit("other", 0.0, {}, own, options)  # the total is empty now
    assert not buckets.admit("a", 0.0, {}, own, options)
    assert buckets.admit("a", 1.0, {}, own, options)  # a's one token was kept


def test_unknown_tenant_options_are_validated() -> None:
    with pytest.raises(ValueError, match="max_buckets"):
        UnknownTenants(max_buckets=0)


class _Reference:
    """One bucket per tenant, never forgotten: what TenantBuckets must decide like."""

    def __init__(self) -> None:
        self.buckets: dict[str, TokenBucket] = {}

    def admit(self, tenant: str, now: float, limit: RateLimit, cost: float) -> bool:
        ok, self.buckets[tenant] = admit_limit(self.buckets.get(tenant, TokenBucket()), now,
                                               limit, cost)
        return ok


@settings(max_examples=300)
@given(rates, bursts, st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(0.0, 3.0),
                                         costs), max_size=80))
def test_forgetting_full_buckets_never_changes_a_decision(
    rate: float, burst: float, arrivals: list[tuple[str, float, float]]
) -> None:
    limit = RateLimit(rate=rate, burst=burst)
    bounded, reference, now = TenantBuckets(), _Reference(), 0.0
    for tenant, gap, cost in arrivals:
        now += gap
        assert bounded.admit(tenant, now, {}, limit, cost=cost) is reference.admit(
            tenant, now, limit, cost)
        assert len(bounded) <= len(reference.buckets)


@settings(max_examples=200)
@given(rates, bursts, st.lists(st.tuples(st.integers(0, 10**6), st.floats(0.0, 2.0)),
                               max_size=80))
def test_rotating_tenants_never_exceed_the_total_bound(
    rate: float, burst: float, arrivals: list[tuple[int, float]]
) -> None:
    options = UnknownTenants(total=RateLimit(rate=rate, burst=burst), max_buckets=3)
    buckets, now, admitted = TenantBuckets(), 1000.0, []
    for tenant, gap in arrivals:
        now += gap
        if buckets.admit(f"t{tenant}", now, {}, RateLimit(rate=100.0, burst=100.0), options):
            admitted.append((now, 1.0))
        assert len(buckets) <= 3
    _assert_bound(admitted, rate, burst)
