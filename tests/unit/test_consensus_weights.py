"""Consensus blends by trust × track record: a source that keeps disagreeing counts for less
even while it is up, fresh and fast (issue 14; measured in docs/decision-quality.md)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_stream.core.compiled import load_compiled
from router_stream.core.engine import RouterEngine
from router_stream.core.strategies.consensus import ConsensusConfig, Observation, consensus
from router_stream.core.trust import DeviationRecord, TrustState

NOW = 1_800_000_000.0
CFG = ConsensusConfig(max_dispersion=0.5)


def _obs(**values: float) -> list[Observation]:
    return [Observation(s, v, NOW) for s, v in values.items()]


def test_track_record_scales_each_sources_weight_in_the_blend() -> None:
    obs = _obs(a=10.0, b=10.2, c=10.6)
    trust = {"a": 0.8, "b": 0.8, "c": 0.8}
    plain = consensus(obs, NOW, CFG, trust)
    assert plain is not None and plain.outliers == ()
    assert plain.value == pytest.approx(30.8 / 3)
    weighted = consensus(obs, NOW, CFG, trust, track_record={"a": 1.0, "b": 1.0, "c": 0.0})
    assert weighted is not None and weighted.value == pytest.approx(10.1)
    assert weighted.confidence == plain.confidence  # confidence stays agreement × trust


def test_no_weight_anywhere_is_an_equal_weight_mean() -> None:
    result = consensus(_obs(a=10.0, b=11.0), NOW, CFG, {"a": 0.5, "b": 0.5},
                       track_record={"a": 0.0, "b": 0.0})
    assert result is not None and result.value == pytest.approx(10.5)


def test_deviation_record_is_a_live_view_of_the_deviation_component() -> None:
    states = {"a": TrustState(deviation=0.25)}
    view = DeviationRecord(states)
    assert view.get("a") == 0.25 and view.get("x", 1.0) == 1.0 and len(view) == 1
    states["b"] = TrustState(deviation=0.75)
    assert dict(view) == {"a": 0.25, "b": 0.75}


def test_the_engine_discounts_a_source_that_kept_disagreeing() -> None:
    compiled = load_compiled("""
destinations: {store: {}}
classify: [{name: obs, when: {field: metric, exists: true}, kind: observation}]
routes:
  observation:
    strategy: consensus
    destinations: [store]
    consensus: {mad_k: 3.5, max_dispersion: 0.2}
    dedupe: false
""")
    engine = RouterEngine(compiled, seed=1)

    class Rec:
        def __init__(self, i: int, source: str, value: float) -> None:
            self.value = orjson.dumps({"signal_id": f"s{i}", "sender_id": source, "metric": "m",
                                       "source_id": source, "value": value,
                                       "ts": (NOW + i) * 1000})
            self.key, self.topic, self.partition, self.offset = b"m", "signals", 0, i
            self.timestamp, self.headers = int((NOW + i) * 1000), []

    # e is biased but within mad_k of the median: an inlier that blends in on equal weights.
    values = {"a": 99.5, "b": 100.5, "c": 100.0, "d": 100.2, "e": 101.6}
    last = None
    for round_ in range(30):
        for j, (source, value) in enumerate(values.items()):
            result = engine.decide_batch([Rec(round_ * 5 + j, source, value)], NOW + round_)
            last = result.decisions[0].value if result.decisions else last
    assert last is not None
    honest = sum(list(values.values())[:4]) / 4
    equal = sum(values.values()) / 5
    assert abs(last - honest) < 0.5 * abs(equal - honest)


@given(values=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=9),
       records=st.lists(st.floats(0.0, 1.0), min_size=9, max_size=9),
       trusts=st.lists(st.floats(0.0, 1.0), min_size=9, max_size=9))
@settings(max_examples=200, deadline=None)
def test_a_blend_stays_within_its_inliers_whatever_the_weights(values, records, trusts) -> None:
    obs = [Observation(f"s{i}", v, NOW) for i, v in enumerate(values)]
    names = [o.source_id for o in obs]
    result = consensus(obs, NOW, ConsensusConfig(max_dispersion=1e9, scale_floor=1.0),
                       dict(zip(names, trusts, strict=False)),
                       track_record=dict(zip(names, records, strict=False)))
    assert result is not None
    inliers = [o.value for o in obs if o.source_id in result.sources_used]
    assert min(inliers) <= result.value <= max(inliers)
