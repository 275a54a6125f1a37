"""Circuit breaker: triggers, cooldown and backoff, probes, operator force, and the invariant that
every emitted transition is in the table (so open never reaches closed without half_open)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_stream.core.breaker import (
    _ALLOWED,
    Breaker,
    BreakerConfig,
    BreakerState,
    BreakerTransition,
    InvalidTransition,
    _transition,
    allow_request,
    force,
    poll,
    record,
    window_counts,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
CFG = BreakerConfig(failure_threshold=3, error_rate_threshold=0.5, window_s=10.0, min_volume=6,
                    cooldown_s=5.0, max_cooldown_s=18.0, backoff_multiplier=2.0,
                    half_open_probes=2, probe_timeout_s=4.0, window_buckets=5)


def _moves(transitions: list[BreakerTransition]) -> list[tuple[BreakerState, BreakerState]]:
    return [(t.from_state, t.to_state) for t in transitions]


def _opened(now: float = 0.0) -> Breaker:
    b = Breaker("dest")
    for _ in range(CFG.failure_threshold):
        b, _t = record(b, False, now, CFG)
    assert b.state is OPEN
    return b


def test_consecutive_failures_open_the_breaker() -> None:
    b = Breaker("dest")
    b, t1 = record(b, False, 0.0, CFG)
    b, t2 = record(b, False, 0.1, CFG)
    assert b.state is CLOSED and t1 == t2 == []
    b, t3 = record(b, False, 0.2, CFG)
    assert b.state is OPEN and b.opened_at == 0.2 and b.open_count == 1
    assert t3 == [BreakerTransition("dest", CLOSED, OPEN, 0.2, "consecutive_failures")]


def test_a_success_resets_the_consecutive_count() -> None:
    b = Breaker("dest")
    for ok in (False, False, True, False, False):
        b, _ = record(b, ok, 0.0, CFG)
    assert b.state is CLOSED and b.consecutive_failures == 2


def test_error_rate_over_window_opens_with_minimum_volume() -> None:
    b = Breaker("dest")
    events = [False, True, False, True, False]  # 3/5 failed but below min_volume
    for i, ok in enumerate(events):
        b, t = record(b, ok, float(i), CFG)
        assert t == []
    b, t = record(b, True, 5.0, CFG)  # 6 events, 3 failed, but the trigger is on a failure
    assert t == []
    b, t = record(b, False, 6.0, CFG)
    assert _moves(t) == [(CLOSED, OPEN)] and t[0].reason == "error_rate"


def test_below_error_rate_threshold_stays_closed() -> None:
    b = Breaker("dest")
    for i in range(30):
        b, t = record(b, i % 3 != 0, float(i) / 10, CFG)  # one failure in three
        assert t == []
    assert b.state is CLOSED


def test_old_events_leave_the_window() -> None:
    b = Breaker("dest")
    for i in range(5):
        b, _ = record(b, i % 2 == 0, float(i), CFG)
    b, _ = record(b, True, 100.0, CFG)
    assert window_counts(b) == (1, 0)


def test_window_memory_is_bounded() -> None:
    b = Breaker("dest")
    for i in range(2000):
        b, _ = record(b, True, i * 0.37, CFG)
    assert len(b.window()) <= CFG.window_buckets and len(b.buckets) == 3 * len(b.window())


def test_late_events_outside_the_window_are_not_counted() -> None:
    b, _ = record(Breaker("dest"), True, 100.0, CFG)
    b, _ = record(b, False, 1.0, CFG)
    assert window_counts(b) == (1, 0)


def test_open_moves_to_half_open_only_after_cooldown() -> None:
    b = _opened(0.0)
    same, t = poll(b, 4.9, CFG)
    assert same is b and t == []
    b, t = poll(b, 5.0, CFG)
    assert b.state is HALF_OPEN and _moves(t) == [(OPEN, HALF_OPEN)]
    assert t[0].reason == "cooldown_elapsed"


def test_open_ignores_outcomes_and_refuses_requests() -> None:
    b = _opened(0.0)
    b2, t = record(b, True, 1.0, CFG)
    assert b2 is b and t == []
    allowed, b3, t = allow_request(b, 1.0, CFG)
    assert not allowed and b3 is b and t == []


def test_half_open_admits_a_bounded_number_of_probes() -> None:
    b = _opened(0.0)
    allowed, b, t = allow_request(b, 6.0, CFG)
    assert allowed and b.state is HALF_OPEN and _moves(t) == [(OPEN, HALF_OPEN)]
    allowed, b, t = allow_request(b, 6.1, CFG)
    assert allowed and t == []
    allowed, b, _ = allow_request(b, 6.2, CFG)
    assert not allowed and b.probes_in_flight == 2


def test_successful_probes_close_and_reset_cooldown() -> None:
    b = _opened(0.0)
    b, _ = poll(b, 5.0, CFG)
    b, t = record(b, False, 5.5, CFG)  # re-open: cooldown doubles
    assert b.cooldown_s == 10.0 and _moves(t) == [(HALF_OPEN, OPEN)]
    b, _ = poll(b, 15.5, CFG)
    _, b, _ = allow_request(b, 15.6, CFG)
    b, t = record(b, True, 15.7, CFG)
    assert b.state is HALF_OPEN and t == []
    b, t = record(b, True, 15.8, CFG)
    assert b.state is CLOSED and _moves(t) == [(HALF_OPEN, CLOSED)]
    assert b.cooldown_s is None and b.consecutive_failures == 0 and b.buckets == ()
    b = _opened(20.0)
    assert b.cooldown_s == CFG.cooldown_s


def test_cooldown_grows_by_multiplier_up_to_the_cap() -> None:
    b = _opened(0.0)
    now, cooldowns = 0.0, []
    for _ in range(5):
        now += b.cooldown_s or CFG.cooldown_s
        b, _ = poll(b, now, CFG)
        assert b.state is HALF_OPEN
        b, _ = record(b, False, now, CFG)
        cooldowns.append(b.cooldown_s)
    assert cooldowns == [10.0, 18.0, 18.0, 18.0, 18.0]
    assert b.open_count == 6


def test_a_lost_probe_times_out_and_reopens() -> None:
    b = _opened(0.0)
    _, b, _ = allow_request(b, 5.0, CFG)
    b, t = poll(b, 8.9, CFG)
    assert t == []
    b, t = poll(b, 9.0, CFG)
    assert _moves(t) == [(HALF_OPEN, OPEN)] and t[0].reason == "probe_timeout"
    assert b.cooldown_s == 10.0


def test_transition_table_rejects_open_to_closed() -> None:
    with pytest.raises(InvalidTransition, match="open -> closed"):
        _transition(_opened(), CLOSED, 1.0, "nope")


def test_force_close_from_open_goes_through_half_open() -> None:
    b, t = force(_opened(0.0), CLOSED, 1.0, "operator reset", CFG)
    assert b.state is CLOSED
    assert _moves(t) == [(OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert {x.reason for x in t} == {"operator reset"}


def test_force_open_and_probe_now() -> None:
    b, t = force(Breaker("dest"), OPEN, 1.0, "op", CFG)
    assert b.state is OPEN and _moves(t) == [(CLOSED, OPEN)] and b.opened_at == 1.0
    b, t = force(b, HALF_OPEN, 2.0, "op", CFG)
    assert b.state is HALF_OPEN and _moves(t) == [(OPEN, HALF_OPEN)]
    b, t = force(b, OPEN, 3.0, "op", CFG)
    assert _moves(t) == [(HALF_OPEN, OPEN)] and b.cooldown_s == CFG.cooldown_s


def test_force_to_current_state_is_a_no_op_and_closed_to_half_open_is_refused() -> None:
    b = Breaker("dest")
    assert force(b, CLOSED, 1.0, "op", CFG) == (b, [])
    with pytest.raises(InvalidTransition):
        force(b, HALF_OPEN, 1.0, "op", CFG)


def test_breaker_and_transition_round_trip_through_json() -> None:
    b = _opened(0.0)
    b, _ = record(Breaker("x"), False, 3.0, CFG)
    assert Breaker.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    b, t = force(_opened(0.0), CLOSED, 1.0, "op", CFG)
    for event in t:
        assert BreakerTransition.from_dict(json.loads(json.dumps(event.to_dict()))) == event


@pytest.mark.parametrize("field,value", [("failure_threshold", 0), ("error_rate_threshold", 0.0),
                                         ("cooldown_s", -1.0), ("max_cooldown_s", 1.0),
                                         ("backoff_multiplier", 0.5), ("half_open_probes", 0)])
def test_config_rejects_bad_values(field: str, value: float) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError):
        BreakerConfig(**kwargs)


# An operation is (kind, time step, flag/target). Time mostly moves forward but may step back.
ops = st.lists(
    st.tuples(
        st.sampled_from(["ok", "fail", "poll", "allow", "force"]),
        st.floats(-1.0, 12.0, allow_nan=False),
        st.sampled_from(list(BreakerState)),
    ),
    max_size=80,
)
configs = st.builds(
    BreakerConfig,
    failure_threshold=st.integers(1, 4),
    error_rate_threshold=st.floats(0.1, 1.0),
    window_s=st.floats(1.0, 20.0),
    min_volume=st.integers(1, 6),
    cooldown_s=st.floats(0.5, 5.0),
    max_cooldown_s=st.floats(5.0, 30.0),
    backoff_multiplier=st.floats(1.0, 3.0),
    half_open_probes=st.integers(1, 3),
    probe_timeout_s=st.floats(0.5, 10.0),
    window_buckets=st.integers(1, 6),
)


@settings(max_examples=400)
@given(ops, configs)
def test_every_transition_is_in_the_table_and_the_chain_is_consistent(
    sequence: list[tuple[str, float, BreakerState]], cfg: BreakerConfig
) -> None:
    b = Breaker("dest")
    now = 0.0
    emitted: list[BreakerTransition] = []
    for kind, step, target in sequence:
        now += step
        before = b
        if kind in ("ok", "fail"):
            b, t = record(b, kind == "ok", now, cfg)
        elif kind == "poll":
            b, t = poll(b, now, cfg)
        elif kind == "allow":
            allowed, b, t = allow_request(b, now, cfg)
            assert allowed == (b.state is CLOSED or (b.state is HALF_OPEN and
                                                     b.probes_in_flight > before.probes_in_flight))
        else:
            try:
                b, t = force(b, target, now, "test", cfg)
            except InvalidTransition:
                assert (before.state, target) == (CLOSED, HALF_OPEN)
                t = []
        state = before.state
        for event in t:
            assert event.from_state is state, "chain broken"
            assert event.to_state in _ALLOWED[event.from_state]
            assert (event.from_state, event.to_state) != (OPEN, CLOSED)
            state = event.to_state
        assert state is b.state
        emitted.extend(t)
        assert b.probes_in_flight + b.probes_succeeded <= cfg.half_open_probes
        assert len(b.window()) <= cfg.window_buckets
        if b.cooldown_s is not None:
            assert cfg.cooldown_s <= b.cooldown_s <= cfg.max_cooldown_s
        assert Breaker.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    # Every path from open into closed passes through half_open.
    for previous, current in zip(emitted, emitted[1:], strict=False):
        assert current.from_state is previous.to_state


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 30)), max_size=60))
def test_window_counts_equal_a_direct_count_of_the_events_in_the_window(steps):
    """The flat bucket window counts exactly the events whose bucket is within the last
    ``window_buckets`` buckets of the newest one (late events outside it are not counted)."""
    cfg = BreakerConfig(failure_threshold=10_000, min_volume=10_000, window_s=10.0,
                        window_buckets=5)
    width = cfg.window_s / cfg.window_buckets
    b = Breaker(target_id="d")
    counted: list[tuple[int, bool]] = []
    now, newest = 1_000.0, None
    for ok, dt in steps:
        now += dt
        index = math.floor(now / width)  # as the breaker computes it
        newest = index if newest is None else max(newest, index)
        if index > newest - cfg.window_buckets:
            counted.append((index, ok))
        b, _ = record(b, ok, now, cfg)
        live = [(i, o) for i, o in counted if i > newest - cfg.window_buckets]
        assert window_counts(b) == (len(live), sum(not o for _, o in live))
        assert len(b.window()) <= cfg.window_buckets
