"""Consensus: filtering, MAD outliers, blend vs single, synthetic fallback, and the outlier bound
stated in ``router_stream/core/strategies/consensus.py``."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_stream.core.strategies.consensus import (
    BLEND,
    SINGLE,
    SYNTHETIC,
    ConsensusConfig,
    ConsensusResult,
    LastGood,
    Observation,
    consensus,
    deviation_z,
    remember,
)

CFG = ConsensusConfig(mad_k=3.5, max_dispersion=0.05, max_staleness_s=30.0,
                      synthetic_max_age_s=100.0, min_sources=2)
NOW = 1000.0


def _obs(*values: float, ts: float = NOW) -> list[Observation]:
    return [Observation(f"s{i}", v, ts) for i, v in enumerate(values)]


def test_close_values_are_blended_by_trust() -> None:
    result = consensus(_obs(100.0, 101.0, 102.0), NOW, CFG, {"s0": 1.0, "s1": 0.0, "s2": 1.0})
    assert result is not None
    assert result.method == BLEND and result.value == pytest.approx(101.0)
    assert result.sources_used == ("s0", "s1", "s2") and result.outliers == ()
    assert result.confidence == pytest.approx(2 / 3)


def test_untrusted_everywhere_blends_equally() -> None:
    result = consensus(_obs(100.0, 103.0), NOW, CFG, {"s0": 0.0, "s1": 0.0})
    assert result is not None and result.value == pytest.approx(101.5)
    assert result.confidence == 0.0


def test_an_outlier_is_removed() -> None:
    result = consensus(_obs(100.0, 100.5, 101.0, 99.5, 5000.0), NOW, CFG)
    assert result is not None and result.method == BLEND
    assert result.outliers == ("s4",) and "s4" not in result.sources_used
    assert 99.5 <= result.value <= 101.0
    assert result.confidence == pytest.approx(0.8 * 0.5)


def test_zero_mad_makes_every_value_off_the_median_an_outlier() -> None:
    result = consensus(_obs(7.0, 7.0, 7.0, 7.0001, -3.0), NOW, CFG)
    assert result is not None and result.value == 7.0
    assert result.outliers == ("s3", "s4") and result.mad == 0.0


def test_high_dispersion_takes_the_single_most_trusted_inlier() -> None:
    trust = {"s0": 0.2, "s1": 0.9, "s2": 0.4}
    result = consensus(_obs(100.0, 110.0, 120.0), NOW, CFG, trust)
    assert result is not None
    assert (result.method, result.value, result.sources_used) == (SINGLE, 110.0, ("s1",))
    dispersion = 20.0 / 110.0
    assert result.confidence == pytest.approx(0.9 * CFG.max_dispersion / dispersion)


def test_single_ties_go_to_the_value_nearest_the_median() -> None:
    result = consensus(_obs(100.0, 110.0, 121.0), NOW, CFG)
    assert result is not None and result.sources_used == ("s1",)


def test_stale_excluded_and_non_finite_observations_are_dropped() -> None:
    observations = [Observation("old", 1.0, NOW - 31.0), Observation("open", 2.0, NOW),
                    Observation("nan", math.nan, NOW), Observation("inf", math.inf, NOW),
                    Observation("a", 50.0, NOW - 30.0), Observation("b", 50.0, NOW)]
    result = consensus(observations, NOW, CFG, excluded={"open"})
    assert result is not None and result.sources_used == ("a", "b") and result.value == 50.0


def test_a_source_counts_once_with_its_newest_value() -> None:
    observations = [Observation("a", 10.0, NOW - 5), Observation("a", 10.0, NOW - 4),
                    Observation("a", 10.0, NOW - 3), Observation("b", 20.0, NOW - 1),
                    Observation("a", 20.0, NOW)]
    result = consensus(observations, NOW, CFG)
    assert result is not None and result.value == 20.0 and result.outliers == ()


def test_too_few_sources_falls_back_to_decaying_synthetic() -> None:
    last = LastGood(value=42.0, ts=NOW - 25.0, confidence=0.8)
    result = consensus(_obs(1.0), NOW, CFG, last_good=last)
    assert result is not None and result.confidence == pytest.approx(0.6)
    assert result._replace(confidence=0.6) == ConsensusResult(42.0, SYNTHETIC, (), (), 0.6, 0.0)
    assert consensus(_obs(1.0), NOW + 75.0, CFG, last_good=last) is not None
    assert consensus(_obs(1.0), NOW + 75.1, CFG, last_good=last) is None
    assert consensus(_obs(1.0), NOW, CFG) is None


def test_synthetic_results_are_not_remembered() -> None:
    live = consensus(_obs(5.0, 5.0), NOW, CFG)
    assert remember(live, NOW) == LastGood(5.0, NOW, 1.0 * 0.5)
    fake = consensus([], NOW + 1, CFG, last_good=LastGood(5.0, NOW, 0.5))
    assert fake is not None and remember(fake, NOW + 1) is None and remember(None, NOW) is None
    last = LastGood(1.5, 2.0, 0.25)
    assert LastGood.from_dict(json.loads(json.dumps(last.to_dict()))) == last


def test_deviation_z_for_trust_feedback() -> None:
    result = consensus(_obs(100.0, 100.5, 101.0, 99.5, 5000.0), NOW, CFG)
    assert result is not None
    assert deviation_z(result.value, result) == 0.0
    assert deviation_z(5000.0, result) > CFG.mad_k
    exact = consensus(_obs(3.0, 3.0), NOW, CFG)
    assert exact is not None and deviation_z(3.5, exact) == math.inf


def test_near_zero_metrics_resolve_as_single() -> None:
    result = consensus(_obs(0.0, 0.001, -0.001), NOW, CFG)
    assert result is not None and result.method == SINGLE and result.value == 0.0


@pytest.mark.parametrize("field,value", [("mad_k", 0.5), ("max_dispersion", -1.0),
                                         ("min_sources", 0), ("default_trust", 2.0)])
def test_config_is_validated(field: str, value: float) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError):
        ConsensusConfig(**kwargs)


# --- properties ----------------------------------------------------------------------------------

finite = st.floats(-1e9, 1e9, allow_nan=False)
trusts = st.floats(-0.5, 1.5, allow_nan=False)
configs = st.builds(ConsensusConfig, mad_k=st.floats(0.6745, 10.0),
                    max_dispersion=st.floats(0.0, 2.0), min_sources=st.just(1))


@settings(max_examples=500)
@given(
    st.data(),
    st.lists(finite, min_size=1, max_size=9),
    configs,
)
def test_a_strict_honest_majority_bounds_the_result(
    data: st.DataObject, honest: list[float], cfg: ConsensusConfig
) -> None:
    """Claim (module docstring): with h honest values in [lo, hi], W = hi − lo, and a < h
    arbitrary values (a ≤ ⌊(n−1)/2⌋ for n = h + a), a blend/single result lies in
    [lo − k·W/0.6745, hi + k·W/0.6745].

    Proof.
    1. The median m lies in [lo, hi]. At least h > n/2 values are ≤ hi, so every order statistic
       of rank ≤ h — in particular the middle one (odd n) or both middle ones (even n; h ≥ n/2+1
       so the (n/2+1)-th also qualifies) — is ≤ hi; symmetrically ≥ lo. Their mean is in
       [lo, hi].
    2. MAD ≤ W. Each honest x has |x − m| ≤ W because x and m both lie in [lo, hi]. So more than
       half of the deviations are ≤ W, and by the same order-statistic argument their median is
       ≤ W.
    3. Every inlier x satisfies 0.6745·|x − m|/MAD ≤ k, i.e. |x − m| ≤ k·MAD/0.6745 ≤ k·W/0.6745
       (with MAD = 0 the inliers equal m exactly). With step 1, x ∈ [lo − kW/0.6745,
       hi + kW/0.6745].
    4. A single result is one inlier; a blend is a convex combination of inliers (non-negative
       weights, clamped to the inliers' [min, max]), hence within their range. Both lie in the
       interval of step 3. ∎
    Trust does not enter the argument, so the arbitrary sources may also be the most trusted.
    (The slack below covers float rounding of the median, the MAD and the limit.)
    """
    adversarial = data.draw(st.lists(st.floats(allow_nan=False, allow_infinity=False),
                                     max_size=len(honest) - 1))
    observations = [Observation(f"h{i}", v, NOW) for i, v in enumerate(honest)]
    observations += [Observation(f"a{i}", v, NOW) for i, v in enumerate(adversarial)]
    order = data.draw(st.permutations(range(len(observations))))
    observations = [observations[i] for i in order]
    trust = data.draw(st.dictionaries(st.sampled_from([o.source_id for o in observations]),
                                      trusts))
    result = consensus(observations, NOW, cfg, trust)
    assert result is not None and result.method in (BLEND, SINGLE)
    lo, hi = min(honest), max(honest)
    reach = cfg.mad_k * (hi - lo) / 0.6745
    slack = 1e-9 * (1.0 + abs(lo) + abs(hi) + reach)
    assert lo - reach - slack <= result.value <= hi + reach + slack
    assert 0.0 <= result.confidence <= 1.0


@settings(max_examples=300)
@given(st.lists(st.tuples(finite, trusts), min_size=1, max_size=12), configs)
def test_the_result_lies_within_the_inliers(
    values: list[tuple[float, float]], cfg: ConsensusConfig
) -> None:
    observations = [Observation(f"s{i}", v, NOW) for i, (v, _) in enumerate(values)]
    trust = {f"s{i}": t for i, (_, t) in enumerate(values)}
    result = consensus(observations, NOW, cfg, trust)
    assert result is not None
    used = [o.value for o in observations if o.source_id in result.sources_used]
    assert used and min(used) <= result.value <= max(used)
    assert set(result.sources_used).isdisjoint(result.outliers)
    if result.method == BLEND:
        assert len(result.sources_used) + len(result.outliers) == len(observations)
    else:
        assert len(result.sources_used) == 1
    assert 0.0 <= result.confidence <= 1.0


@settings(max_examples=200)
@given(st.floats(0.0, 1.0), st.floats(-50.0, 500.0), st.floats(1.0, 200.0))
def test_synthetic_confidence_decays_within_unit_interval(
    confidence: float, age: float, max_age: float
) -> None:
    cfg = ConsensusConfig(synthetic_max_age_s=max_age)
    ts = NOW - age
    result = consensus([], NOW, cfg, last_good=LastGood(1.0, ts, confidence))
    if NOW - ts > max_age:
        assert result is None
    else:
        assert result is not None and 0.0 <= result.confidence <= confidence
