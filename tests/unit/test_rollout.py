"""Policy rollout in the engine: canary share, shadow evaluation, automatic rollback."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import orjson
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from router_stream.core.compiled import load_compiled
from router_stream.core.engine import RouterEngine
from router_stream.core.models import HealthEvent, RolloutRollback
from router_stream.core.rollout import RolloutMonitor, RolloutSpec, in_share
from tests.support.engine import NOW, Rec

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.yaml"


def _policy_text(mode: str, fraction: float, alert_tiers: list[list[str]],
                 min_signals: int = 50) -> str:
    base = yaml.safe_load(EXAMPLE.read_text())
    candidate = copy.deepcopy(base)
    candidate["routes"]["alert"]["tiers"] = alert_tiers
    candidate["routes"]["alert"].pop("retry", None)
    share = {"share": fraction} if mode == "canary" else {"sample": fraction}
    base["rollout"] = {"candidate": candidate, "mode": mode, **share,
                       "rollback": {"max_dlq_rate_delta": 0.05, "max_no_healthy_delta": 0.05,
                                    "window_s": 60, "min_signals": min_signals}}
    return yaml.safe_dump(base)


def _alerts(n: int, start: int = 0) -> list[Rec]:
    return [Rec(orjson.dumps({"signal_id": f"a{i}", "sender_id": f"svc-{i}",
                              "payload": {"severity": "critical"}}), i, f"svc-{i}".encode())
            for i in range(start, start + n)]


@settings(max_examples=25, deadline=None)
@given(st.floats(0.05, 0.95))
def test_share_is_stable_and_close_to_the_fraction(fraction):
    keys = [f"key-{i}".encode() for i in range(4000)]
    picked = [in_share(k, "", fraction) for k in keys]
    assert picked == [in_share(k, "", fraction) for k in keys]  # the same every time
    assert abs(sum(picked) / len(keys) - fraction) < 0.04


def test_canary_routes_its_share_of_keys_by_the_candidate():
    compiled = load_compiled(_policy_text("canary", 0.3, [["email"]]))
    candidate = compiled.rollout.candidate.version
    result = RouterEngine(compiled).decide_batch(_alerts(400), NOW)
    by_version = {}
    for d in result.decisions:
        by_version.setdefault(d.policy_version, set()).add(tuple(d.destinations))
    assert by_version == {compiled.version: {("pagerduty",)}, candidate: {("email",)}}
    share = sum(d.policy_version == candidate for d in result.decisions) / 400
    assert 0.22 < share < 0.38
    for d in result.decisions:  # a key's arm follows from the key alone
        assert (d.policy_version == candidate) == in_share(f"svc-{d.signal_id[1:]}".encode(), "", 0.3)


def test_shadow_records_the_candidate_choice_and_changes_nothing_else():
    text = _policy_text("shadow", 1.0, [["email"]])
    plain = yaml.safe_load(text)
    plain.pop("rollout")
    shadowed = RouterEngine(load_compiled(text), seed=3).decide_batch(_alerts(100), NOW)
    alone = RouterEngine(load_compiled(yaml.safe_dump(plain)), seed=3).decide_batch(
        _alerts(100), NOW)
    def same(d):  # the two policies differ by their rollout section, so by version only
        return orjson.dumps(replace(d.decision(), policy_version="-"))

    assert [same(d) for d in shadowed.decisions] == [same(d) for d in alone.decisions]
    assert len(shadowed.routed) == len(alone.routed) == 100
    assert len(shadowed.shadow) == 100
    assert {(s.baseline, s.candidate, s.agree) for s in shadowed.shadow} == {
        (("pagerduty",), ("email",), False)}


def test_a_broken_canary_is_rolled_back_automatically():
    compiled = load_compiled(_policy_text("canary", 0.5, [["sms"]], min_signals=50))
    engine = RouterEngine(compiled)
    for i in range(5):  # sms is down: the candidate cannot route alerts anywhere
        engine.apply_health(HealthEvent(source_id="sms", ts=int(NOW * 1000) + i, ok=False), NOW)
    first = engine.decide_batch(_alerts(200), NOW)
    assert len(first.rollout_events) == 1
    event = first.rollout_events[0]
    assert event.candidate_version == compiled.rollout.candidate.version
    assert "no_healthy_rate" in event.reason or "dlq_rate" in event.reason
    assert engine.rollout is None
    after = engine.decide_batch(_alerts(100, start=1000), NOW + 1)
    assert {tuple(d.destinations) for d in after.decisions} == {("pagerduty",)}
    assert after.dlq == [] and after.rollout_events == []


def test_a_good_canary_is_kept():
    engine = RouterEngine(load_compiled(_policy_text("canary", 0.5, [["email"]], min_signals=50)))
    result = engine.decide_batch(_alerts(300), NOW)
    assert result.rollout_events == [] and engine.rollout is not None


def test_rollback_command_stops_the_rollout_on_any_worker():
    compiled = load_compiled(_policy_text("canary", 0.5, [["email"]]))
    engine = RouterEngine(compiled)
    wrong = engine.apply_control(RolloutRollback(candidate_version="p-other"), NOW)
    assert not wrong.accepted and engine.rollout is not None
    ok = engine.apply_control(
        RolloutRollback(candidate_version=compiled.rollout.candidate.version), NOW)
    assert ok.accepted and engine.rollout is None


def test_monitor_forgets_outcomes_older_than_its_window():
    compiled = load_compiled(_policy_text("canary", 0.5, [["email"]]))
    spec = RolloutSpec(mode="canary", fraction=0.5, candidate=compiled, window_s=10,
                       min_signals=5, max_dlq_rate_delta=0.1)
    monitor = RolloutMonitor(spec)
    for i in range(10):
        monitor.observe("candidate", "dlq", NOW + i * 0.1)
        monitor.observe("baseline", "routed", NOW + i * 0.1)
    assert monitor.verdict(NOW + 1, "p-base") is not None
    assert monitor.verdict(NOW + 30, "p-base") is None  # the bad second left the window
