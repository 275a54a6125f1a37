"""Trust score: components, decay, invalid inputs, and the [0, 1] invariant."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_stream.core.trust import (
    TrustParams,
    TrustState,
    TrustWeights,
    observe_deviation,
    observe_health,
    observe_outcome,
    raw_score,
    score,
)

PARAMS = TrustParams(ewma_alpha=0.5, stale_after_s=60.0, latency_target_ms=100.0)
WEIGHTS = TrustWeights()


def test_weights_must_sum_to_one() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        TrustWeights(0.5, 0.5, 0.5, 0.0, 0.0)


def test_weights_must_be_non_negative() -> None:
    with pytest.raises(ValueError, match="availability"):
        TrustWeights(freshness=0.5, error_rate=0.5, latency=0.2, deviation=0.0, availability=-0.2)


@pytest.mark.parametrize("bad", [0.0, 1.5, math.nan])
def test_params_reject_bad_alpha(bad: float) -> None:
    with pytest.raises(ValueError, match="ewma_alpha"):
        TrustParams(ewma_alpha=bad)


def test_unknown_source_scores_the_neutral_prior() -> None:
    assert score(TrustState.initial(PARAMS), 1e9, WEIGHTS, PARAMS) == pytest.approx(0.5)


def test_healthy_events_raise_and_failures_lower_trust() -> None:
    good = bad = TrustState.initial(PARAMS)
    for i in range(20):
        good = observe_health(good, now=float(i), params=PARAMS, ok=True, latency_ms=10.0,
                              error_rate=0.0, last_data_ts=float(i), completeness=1.0)
        bad = observe_health(bad, now=float(i), params=PARAMS, ok=False, latency_ms=1000.0,
                             error_rate=0.9, last_data_ts=float(i) - 120.0)
    assert score(good, 20.0, WEIGHTS, PARAMS) > 0.85
    assert score(bad, 20.0, WEIGHTS, PARAMS) < 0.25


def test_latency_component_is_target_over_latency() -> None:
    params = TrustParams(ewma_alpha=1.0, latency_target_ms=100.0)
    state = observe_health(TrustState(), now=0.0, params=params, latency_ms=400.0)
    assert state.latency == pytest.approx(0.25)
    state = observe_health(state, now=0.0, params=params, latency_ms=50.0)
    assert state.latency == 1.0
    state = observe_health(state, now=0.0, params=params, latency_ms=math.inf)
    assert state.latency == 0.0  # a timeout is the worst sample


def test_freshness_falls_linearly_to_zero_at_stale_after() -> None:
    params = TrustParams(ewma_alpha=1.0, stale_after_s=60.0)
    state = observe_health(TrustState(), now=100.0, params=params, last_data_ts=70.0)
    assert state.freshness == pytest.approx(0.5)
    state = observe_health(state, now=100.0, params=params, last_data_ts=0.0)
    assert state.freshness == 0.0
    state = observe_health(state, now=100.0, params=params, last_data_ts=500.0)  # clock skew
    assert state.freshness == 1.0


def test_completeness_scales_availability() -> None:
    params = TrustParams(ewma_alpha=1.0)
    state = observe_health(TrustState(), now=0.0, params=params, ok=True, completeness=0.4)
    assert state.availability == pytest.approx(0.4)
    state = observe_health(state, now=0.0, params=params, completeness=0.9)
    assert state.availability == pytest.approx(0.9)


def test_outcomes_move_error_rate_and_availability() -> None:
    state = TrustState()
    for _ in range(10):
        state = observe_outcome(state, ok=False, now=1.0, params=PARAMS, latency_ms=5.0)
    assert state.error_rate < 0.01 and state.availability < 0.01 and state.latency > 0.99


def test_deviation_uses_robust_z() -> None:
    params = TrustParams(ewma_alpha=1.0, deviation_z_max=4.0)
    assert observe_deviation(TrustState(), z=1.0, now=0.0, params=params).deviation == 0.75
    assert observe_deviation(TrustState(), z=-2.0, now=0.0, params=params).deviation == 0.5
    assert observe_deviation(TrustState(), z=math.inf, now=0.0, params=params).deviation == 0.0
    assert observe_deviation(TrustState(), z=math.nan, now=0.0, params=params) == TrustState()


def test_invalid_fields_are_ignored() -> None:
    state = TrustState()
    after = observe_health(state, now=5.0, params=PARAMS, latency_ms=-3.0, error_rate=math.nan,
                           last_data_ts=math.nan, completeness=math.nan)
    assert (after.latency, after.error_rate, after.freshness, after.availability) == (
        0.5, 0.5, 0.5, 0.5)
    assert after.last_ts == 5.0


def test_out_of_range_error_rate_is_clamped() -> None:
    params = TrustParams(ewma_alpha=1.0)
    assert observe_health(TrustState(), now=0.0, params=params, error_rate=7.0).error_rate == 0.0
    assert observe_health(TrustState(), now=0.0, params=params, error_rate=-7.0).error_rate == 1.0


def test_last_ts_never_moves_backwards_or_becomes_nan() -> None:
    state = observe_outcome(TrustState(), ok=True, now=100.0, params=PARAMS)
    state = observe_outcome(state, ok=True, now=50.0, params=PARAMS)
    state = observe_outcome(state, ok=True, now=math.nan, params=PARAMS)
    assert state.last_ts == 100.0


def test_score_decays_toward_floor_after_silence() -> None:
    params = TrustParams(ewma_alpha=1.0, stale_after_s=10.0, decay_half_life_s=20.0, floor=0.2)
    state = observe_outcome(TrustState(freshness=1, latency=1, deviation=1), ok=True, now=0.0,
                            params=params)
    assert score(state, 10.0, WEIGHTS, params) == pytest.approx(1.0)
    assert score(state, 30.0, WEIGHTS, params) == pytest.approx(0.6)  # one half-life: 0.2 + 0.8/2
    assert score(state, math.inf, WEIGHTS, params) == pytest.approx(0.2)


def test_decay_does_not_raise_a_score_below_the_floor() -> None:
    params = TrustParams(ewma_alpha=1.0, stale_after_s=1.0, floor=0.5)
    state = TrustState(0.1, 0.1, 0.1, 0.1, 0.1, last_ts=0.0)
    assert score(state, 1000.0, WEIGHTS, params) == pytest.approx(0.1)


def test_state_round_trips_through_json() -> None:
    state = observe_health(TrustState(), now=3.0, params=PARAMS, ok=True, latency_ms=20.0)
    assert TrustState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_from_dict_repairs_corrupt_values() -> None:
    state = TrustState.from_dict({"freshness": 9.0, "latency": -1.0, "deviation": math.nan,
                                  "last_ts": math.inf})
    assert (state.freshness, state.latency, state.deviation, state.last_ts) == (1.0, 0.0, 0.5, None)


any_float = st.floats(allow_nan=True, allow_infinity=True)
maybe = st.none() | any_float

Event = Callable[[TrustState, TrustParams], tuple[TrustState, float]]


def _health(now: float, ok: bool | None, latency: float | None, err: float | None,
            last_data: float | None, completeness: float | None) -> Event:
    return lambda s, p: (observe_health(s, now=now, params=p, ok=ok, latency_ms=latency,
                                        error_rate=err, last_data_ts=last_data,
                                        completeness=completeness), now)


def _outcome(now: float, ok: bool, latency: float | None) -> Event:
    return lambda s, p: (observe_outcome(s, ok=ok, now=now, params=p, latency_ms=latency), now)


def _deviation(now: float, z: float) -> Event:
    return lambda s, p: (observe_deviation(s, z=z, now=now, params=p), now)


events = st.one_of(
    st.builds(_health, any_float, st.none() | st.booleans(), maybe, maybe, maybe, maybe),
    st.builds(_outcome, any_float, st.booleans(), maybe),
    st.builds(_deviation, any_float, any_float),
)


@st.composite
def weights(draw: st.DrawFn) -> TrustWeights:
    raw = draw(st.lists(st.floats(0.0, 1.0), min_size=5, max_size=5).filter(lambda w: sum(w) > 0.1))
    total = sum(raw)
    return TrustWeights(*(w / total for w in raw))


@st.composite
def params(draw: st.DrawFn) -> TrustParams:
    positive = st.floats(1e-6, 2e6)  # within the policy's bounds (30 days)
    return TrustParams(
        ewma_alpha=draw(st.floats(1e-6, 1.0)),
        stale_after_s=draw(positive),
        latency_target_ms=draw(positive),
        decay_half_life_s=draw(positive),
        floor=draw(st.floats(0.0, 1.0)),
        initial=draw(st.floats(0.0, 1.0)),
        deviation_z_max=draw(positive),
    )


@settings(max_examples=300)
@given(st.lists(events, max_size=30), weights(), params(), any_float)
def test_trust_is_always_in_unit_interval(
    sequence: list[Event], w: TrustWeights, p: TrustParams, query_at: float
) -> None:
    state = TrustState.initial(p)
    for event in sequence:
        state, now = event(state, p)
        for value in (score(state, now, w, p), score(state, query_at, w, p), raw_score(state, w)):
            assert 0.0 <= value <= 1.0
    restored = TrustState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert 0.0 <= score(restored, query_at, w, p) <= 1.0
