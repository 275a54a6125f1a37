"""The engine: a batch of records in, decisions / DLQ / retries out, state folded from events."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_stream.core.compiled import RouteSpec
from router_stream.core.engine import RouterEngine
from router_stream.core.models import HealthEvent, Outcome
from router_stream.core.wire import decision_id_for, routed_body
from tests.support.engine import NOW, Rec, ms, policy, sig


def accounted(result) -> int:
    return len(result.decisions) + len(result.dlq) + len(result.retries) + result.dropped_duplicates


def test_first_healthy_uses_primary_then_fails_over_and_back():
    engine = RouterEngine(policy())
    r = engine.decide_batch([Rec(sig(1))], NOW)
    assert [d.destinations for d in r.decisions] == [["pager"]]
    assert r.routed[0].destination == "pager"

    moves = []
    for i in range(3):
        moves += engine.apply_health(HealthEvent(source_id="pager", ts=ms(NOW + i), ok=False), NOW + i)
    assert [m.to_state.value for m in moves] == ["open"]
    r = engine.decide_batch([Rec(sig(2), offset=1)], NOW + 3)
    assert r.decisions[0].destinations == ["slack"] and r.decisions[0].tier == 1
    assert r.decisions[0].breakers["pager"] == "open"

    # After the cooldown the breaker half-opens: one probe goes to pager, the rest fail over.
    r = engine.decide_batch([Rec(sig(3), offset=2), Rec(sig(4), offset=3)], NOW + 20)
    assert [d.destinations for d in r.decisions] == [["pager"], ["slack"]]
    assert [t.to_state.value for t in r.breaker_transitions] == ["half_open"]
    engine.apply_outcome(Outcome(signal_id="s3", destination="pager", ok=True, ts=ms(NOW + 21)),
                         NOW + 21)
    r = engine.decide_batch([Rec(sig(5), offset=4)], NOW + 22)
    assert r.decisions[0].destinations == ["pager"]
    assert engine.snapshot().breakers["pager"] == "closed"


def test_invalid_records_go_to_the_dlq_byte_exact_with_headers():
    engine = RouterEngine(policy())
    bad = [b"{not json", b'{"payload": {}}', None, b"[1,2]"]
    r = engine.decide_batch([Rec(v, offset=i) for i, v in enumerate(bad)], NOW)
    assert [d.entry.reason.value for d in r.dlq] == [
        "invalid_json", "invalid_signal", "invalid_signal", "invalid_signal"]
    for i, d in enumerate(r.dlq):
        assert d.entry.original_value == bad[i]
        h = dict(d.headers)
        assert h["x-dlq-original-offset"] == str(i).encode()
        assert h["x-dlq-original-topic"] == b"signals"
        assert h["x-dlq-attempts"] == b"1"
        assert h["x-dlq-error"]


def test_unclassified_unrouted_expired_rate_limited_and_duplicate():
    engine = RouterEngine(policy())
    records = [
        Rec(sig(1, payload={"x": 1})),                      # no rule matches
        Rec(sig(2, kind="mystery")),                        # a kind without a route
        Rec(sig(3, ttl_ms=10, ts=int(NOW * 1000) - 60_000)),  # expired
        Rec(sig(4, tenant="tiny")), Rec(sig(5, tenant="tiny")), Rec(sig(6, tenant="tiny")),
        Rec(sig(7)), Rec(sig(7)),                           # a duplicate id
    ]
    r = engine.decide_batch(records, NOW)
    assert sorted(d.entry.reason.value for d in r.dlq) == [
        "expired", "no_route", "rate_limited", "unclassified"]
    assert {d.signal_id for d in r.decisions} == {"s4", "s5", "s7"}
    assert r.dropped_duplicates == 1
    assert accounted(r) == len(records)


def test_routed_value_keeps_the_signal_and_adds_the_route():
    engine = RouterEngine(policy())
    original = sig(1, extra={"nested": [1, 2]})
    r = engine.decide_batch([Rec(original)], NOW)
    routed = orjson.loads(r.routed[0].value)
    assert {k: v for k, v in routed.items() if k != "route"} == orjson.loads(original)
    assert routed["route"]["decision_id"] == decision_id_for("s1") == r.decisions[0].decision_id
    assert routed["route"]["destination"] == "pager"
    assert routed["route"]["policy_version"] == "p-test"
    assert routed["route"]["signal_id"] == "s1"


def test_route_names_the_signal_id_the_router_derived():
    engine = RouterEngine(policy())
    raw = orjson.dumps({"sender_id": "svc", "ts": int(NOW * 1000),
                        "payload": {"severity": "critical"}})
    r = engine.decide_batch([Rec(raw)], NOW)
    routed = orjson.loads(r.routed[0].value)
    assert "signal_id" not in routed
    assert routed["route"]["signal_id"] == r.decisions[0].signal_id != ""


def every_alert_destination_down(max_attempts: int) -> RouterEngine:
    """An engine whose alert route retries ``max_attempts`` times, its destinations all open."""
    routes = dict(policy().routes)
    routes["alert"] = replace(routes["alert"], max_attempts=max_attempts, retry_delay_s=1.0)
    engine = RouterEngine(policy(routes=routes))
    for dest in ("pager", "slack", "email"):
        for _ in range(3):
            engine.apply_health(HealthEvent(source_id=dest, ts=ms(NOW), ok=False), NOW)
    return engine


def test_no_healthy_destination_retries_then_exhausts():
    engine = every_alert_destination_down(max_attempts=2)
    r = engine.decide_batch([Rec(sig(1), offset=42)], NOW)
    assert len(r.retries) == 1 and r.retries[0].attempts == 1
    again = Rec(r.retries[0].value, topic="router.retry", offset=0, headers=r.retries[0].headers)
    r2 = engine.decide_batch([again], NOW + 1)
    assert r2.retries[0].attempts == 2
    last = Rec(r2.retries[0].value, topic="router.retry", offset=1, headers=r2.retries[0].headers)
    r3 = engine.decide_batch([last], NOW + 2)
    assert [d.entry.reason.value for d in r3.dlq] == ["retries_exhausted"]
    entry = r3.dlq[0].entry
    assert (entry.original_topic, entry.original_offset, entry.attempts) == ("signals", 42, 2)


def test_retries_run_out_with_the_first_trip_s_record_timestamp_in_the_dlq_headers():
    """Each retry record has a timestamp of its own (when it was parked); the dead letter says
    when the signal was first written, as x-dlq-original-timestamp promises."""
    engine = every_alert_destination_down(max_attempts=1)
    first_written = ms(NOW) - 5_000
    r = engine.decide_batch([Rec(sig(1), offset=42, timestamp=first_written)], NOW)
    parked = Rec(r.retries[0].value, topic="router.retry", offset=0,
                 timestamp=ms(NOW + 1), headers=r.retries[0].headers)
    [dead] = engine.decide_batch([parked], NOW + 2).dlq
    headers = dict(dead.headers)
    assert headers["x-dlq-original-timestamp"] == str(first_written).encode()


def test_no_healthy_destination_goes_to_dlq_without_retry_budget():
    engine = RouterEngine(policy())
    for dest in ("pager", "slack", "email"):
        for _ in range(3):
            engine.apply_health(HealthEvent(source_id=dest, ts=ms(NOW), ok=False), NOW)
    r = engine.decide_batch([Rec(sig(1))], NOW)
    assert [d.entry.reason.value for d in r.dlq] == ["no_healthy_destination"]


def test_consensus_blends_honest_sources_and_flags_the_outlier():
    engine = RouterEngine(policy())
    values = {"s1": 100.0, "s2": 101.0, "s3": 99.0, "s4": 100.5, "liar": 5000.0}
    records = [
        Rec(orjson.dumps({"signal_id": f"o-{src}", "sender_id": src, "ts": int(NOW * 1000),
                          "metric": "temp", "source_id": src, "value": v}), offset=i)
        for i, (src, v) in enumerate(values.items())
    ]
    r = engine.decide_batch(records, NOW)
    last = r.decisions[-1]
    assert last.method == "blend" and last.outliers == ["liar"]
    assert 99.0 <= last.value <= 101.0
    assert last.destinations == ["tsdb"]


def test_override_forces_a_destination():
    from router_stream.core.models import OverrideSet

    engine = RouterEngine(policy())
    res = engine.apply_control(OverrideSet(override_id="o1", kind="alert", destinations=["email"],
                                           expires_at=NOW + 60), NOW)
    assert res.accepted
    r = engine.decide_batch([Rec(sig(1))], NOW)
    assert r.decisions[0].destinations == ["email"] and r.decisions[0].strategy == "override"
    r = engine.decide_batch([Rec(sig(2))], NOW + 61)
    assert r.decisions[0].destinations == ["pager"]


def test_override_naming_a_destination_the_policy_lacks_is_refused_and_changes_nothing():
    from router_stream.core.models import OverrideSet

    engine = RouterEngine(policy())
    forced = engine.apply_control(OverrideSet(
        override_id="o1", kind="alert", destinations=["nosuchdest"], expires_at=NOW + 60), NOW)
    drained = engine.apply_control(OverrideSet(
        override_id="o2", action="drain", target="nosuchdest", expires_at=NOW + 60), NOW)
    excluded = engine.apply_control(OverrideSet(
        override_id="o3", action="exclude_source", target="any-source", expires_at=NOW + 60), NOW)
    assert not forced.accepted and "'nosuchdest' is not in the active policy" in forced.message
    assert not drained.accepted
    assert excluded.accepted  # sources are not declared by the policy
    assert [o["override_id"] for o in engine.snapshot(NOW).overrides] == ["o3"]
    r = engine.decide_batch([Rec(sig(1))], NOW)
    assert r.decisions[0].destinations == ["pager"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["ok", "bad", "dup", "junk", "obs", "note"]), max_size=40),
       st.integers(1, 7))
def test_a_batch_decides_like_records_one_by_one(kinds, chunk):
    def make(i: int, k: str) -> Rec:
        if k == "bad":
            return Rec(b"{", offset=i)
        if k == "dup":
            return Rec(sig(0), offset=i)
        if k == "junk":
            return Rec(sig(i, payload={}), offset=i)
        if k == "obs":
            return Rec(orjson.dumps({"signal_id": f"o{i}", "sender_id": "x", "metric": "m",
                                     "source_id": f"src{i % 3}", "value": 10 + i % 3}), offset=i)
        if k == "note":
            return Rec(sig(i, kind="note"), offset=i)
        return Rec(sig(i), offset=i)

    records = [make(i, k) for i, k in enumerate(kinds)]
    whole = RouterEngine(policy(), seed=7).decide_batch(records, NOW)
    pieces = RouterEngine(policy(), seed=7)
    parts = [pieces.decide_batch(records[i:i + chunk], NOW) for i in range(0, len(records), chunk)]
    assert [d.to_json() for d in whole.decisions] == [
        d.to_json() for p in parts for d in p.decisions]
    assert [d.entry for d in whole.dlq] == [d.entry for p in parts for d in p.dlq]
    assert accounted(whole) == len(records)


def test_trust_and_breaker_state_is_a_deterministic_fold():
    events = [HealthEvent(source_id=s, ts=ms(NOW + i), ok=i % 3 != 0, latency_ms=10.0 * i)
              for i, s in enumerate(["pager", "slack", "pager", "email"] * 5)]
    a, b = RouterEngine(policy()), RouterEngine(policy())
    for e in events:
        a.apply_health(e, e.ts)
        b.apply_health(e, e.ts)
    assert a.snapshot(NOW + 30) == b.snapshot(NOW + 30)
    assert all(0.0 <= v <= 1.0 for v in a.snapshot(NOW + 30).trust.values())


@pytest.mark.parametrize("raw", [b'{"a":1}', b' {"a":1} \n', b"{}"])
def test_route_splice_handles_whitespace_and_empty_objects(raw):
    out = orjson.loads(routed_body(raw) + b'"route":{"x":1}}')
    assert out == {**orjson.loads(raw), "route": {"x": 1}}


def test_workers_polling_at_different_moments_record_the_same_transition():
    """Time-driven moves carry the instant they became due, so two workers agree on them."""
    a, b = RouterEngine(policy()), RouterEngine(policy())
    for engine in (a, b):
        for i in range(3):
            engine.apply_health(HealthEvent(source_id="pager", ts=ms(NOW + i), ok=False), NOW + i)
    moves_a = a.tick(NOW + 12.5)
    moves_b = b.tick(NOW + 13.9)
    assert moves_a == moves_b
    assert [(m.to_state.value, m.at) for m in moves_a] == [("half_open", NOW + 2 + 10.0)]


def test_drain_and_exclude_overrides_arrive_as_control_commands():
    from router_stream.core.models import OverrideSet

    engine = RouterEngine(policy())
    drain = OverrideSet(override_id="d1", action="drain", target="pager", expires_at=NOW + 60)
    assert engine.apply_control(drain, NOW).accepted
    r = engine.decide_batch([Rec(sig(1))], NOW)
    assert r.decisions[0].destinations == ["slack"]  # the primary is drained
    exclude = OverrideSet(override_id="x1", action="exclude_source", target="liar",
                          expires_at=NOW + 60)
    assert engine.apply_control(exclude, NOW).accepted
    assert {o["kind"] for o in engine.snapshot().overrides} == {"drain", "exclude_source"}


def test_override_commands_must_match_their_action():
    from pydantic import ValidationError

    from router_stream.core.models import OverrideSet

    with pytest.raises(ValidationError):
        OverrideSet(override_id="bad", action="drain", destinations=["x"], expires_at=NOW)
    with pytest.raises(ValidationError):
        OverrideSet(override_id="bad", expires_at=NOW)  # force without destinations


def test_dlq_entries_carry_tenant_and_kind_when_known():
    engine = RouterEngine(policy())
    r = engine.decide_batch([Rec(sig(1, tenant="tiny")), Rec(sig(2, tenant="tiny")),
                             Rec(sig(3, tenant="tiny")), Rec(b"{", offset=9)], NOW)
    limited = [q.entry for q in r.dlq if q.entry.reason.value == "rate_limited"]
    assert [(e.tenant, e.kind) for e in limited] == [("tiny", "alert")]
    broken = [q.entry for q in r.dlq if q.entry.reason.value == "invalid_json"]
    assert [(e.tenant, e.kind) for e in broken] == [(None, None)]


# --- BreakerTable: the not-closed index tick and every batch rely on -------------------------------


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"),
                          st.sampled_from(["closed", "open", "half_open", "del"])), max_size=60))
def test_breaker_table_knows_exactly_which_breakers_are_not_closed(ops):
    from router_stream.core.breaker import Breaker, BreakerState
    from router_stream.core.state import BreakerTable

    table = BreakerTable()
    for target, what in ops:
        if what == "del":
            if target in table:
                del table[target]
        else:
            table[target] = Breaker(target_id=target, state=BreakerState(what))
        assert table.not_closed == {t for t, b in table.items()
                                    if b.state is not BreakerState.CLOSED}
    assert [t for t, _ in table.not_closed_items()] == sorted(table.not_closed)
    with pytest.raises(NotImplementedError):
        table.update({})


def test_tick_moves_an_open_breaker_among_many_closed_ones():
    from router_stream.core.breaker import BreakerState

    engine = RouterEngine(policy())
    for i in range(2000):  # closed breakers: never looked at by tick
        engine.apply_outcome(Outcome(signal_id=f"s{i}", destination=f"d{i}", ok=True,
                                     ts=ms(NOW)), NOW)
    for i in range(10):
        engine.apply_outcome(Outcome(signal_id=f"f{i}", destination="pager", ok=False,
                                     ts=ms(NOW + 1)), NOW + 1)
    assert engine.state.breakers.not_closed == {"pager"}
    moves = engine.tick(NOW + 3600)
    assert [(m.target_id, m.to_state) for m in moves] == [("pager", BreakerState.HALF_OPEN)]


def test_the_trace_context_travels_on_every_routed_copy_and_nothing_else_does():
    engine = RouterEngine(policy(routes={"alert": RouteSpec(
        "alert", "fanout", (("pager", "slack"),))}))
    traced = [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
              ("tracestate", b"vendor=1"), ("x-secret", b"not for downstream"), ("x-null", None)]
    r = engine.decide_batch([Rec(sig(1, payload={"severity": "high"}), headers=traced),
                             Rec(sig(2, payload={"severity": "high"}), offset=1)], NOW)
    by_signal = {}
    for routed in r.routed:
        by_signal.setdefault(routed.signal_id, set()).add(
            tuple(routed.headers) if routed.headers else None)
    assert by_signal == {"s1": {tuple(traced[:2])}, "s2": {None}}
    assert len(r.routed) == 4  # fanout: two copies each
