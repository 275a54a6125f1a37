"""Dedupe window: duplicates within the window, expiry, bounded memory, idempotence."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_stream.core.dedupe import DedupeWindow


def test_second_sighting_within_window_is_a_duplicate() -> None:
    window = DedupeWindow(10.0)
    assert window.seen_or_add("a", 0.0) is False
    assert window.seen_or_add("a", 9.9) is True
    assert window.seen_or_add("b", 9.9) is False


def test_ids_expire_window_after_first_sighting() -> None:
    window = DedupeWindow(10.0)
    window.seen_or_add("a", 0.0)
    window.seen_or_add("a", 5.0)  # a repeat does not extend the memory
    assert window.seen_or_add("a", 10.0) is False
    assert len(window) == 1


def test_memory_is_bounded_by_window_and_max_entries() -> None:
    window = DedupeWindow(1.0, max_entries=100)
    for i in range(10_000):
        window.seen_or_add(f"id-{i}", i * 0.001)
        assert len(window) <= 100
    spaced = DedupeWindow(1.0)
    for i in range(1000):
        spaced.seen_or_add(f"id-{i}", float(i))
    assert len(spaced) == 1


def test_backwards_and_nan_clock_do_not_expire_or_poison() -> None:
    window = DedupeWindow(10.0)
    window.seen_or_add("a", 100.0)
    assert window.seen_or_add("b", 0.0) is False
    assert window.seen_or_add("a", math.nan) is True
    assert window.seen_or_add("b", 109.0) is True


def test_round_trip_through_json() -> None:
    window = DedupeWindow(5.0, max_entries=10)
    for i in range(4):
        window.seen_or_add(str(i), float(i))
    restored = DedupeWindow.from_dict(json.loads(json.dumps(window.to_dict())))
    assert restored.to_dict() == window.to_dict()
    assert restored.seen_or_add("3", 4.0) is True
    assert DedupeWindow.from_dict(DedupeWindow(1.0).to_dict()).to_dict() == DedupeWindow(
        1.0).to_dict()


def test_invalid_window_is_rejected() -> None:
    with pytest.raises(ValueError):
        DedupeWindow(0.0)


ops = st.lists(st.tuples(st.sampled_from("abcdefg"), st.floats(0.0, 4.0)), max_size=80)


@settings(max_examples=300)
@given(ops, st.floats(0.5, 10.0))
def test_seen_or_add_is_idempotent(sequence: list[tuple[str, float]], window_s: float) -> None:
    once, twice = DedupeWindow(window_s), DedupeWindow(window_s)
    now = 0.0
    for signal_id, step in sequence:
        now += step
        first = once.seen_or_add(signal_id, now)
        assert twice.seen_or_add(signal_id, now) == first
        assert twice.seen_or_add(signal_id, now) is True
        assert twice.to_dict() == once.to_dict()


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from("abcdefg"), st.floats(-3.0, 100.0)), max_size=80),
       st.floats(0.5, 10.0))
def test_matches_a_first_seen_reference_model(
    sequence: list[tuple[str, float]], window_s: float
) -> None:
    window = DedupeWindow(window_s)
    first_seen: dict[str, float] = {}
    clock = -math.inf
    for signal_id, now in sequence:
        clock = max(clock, now)
        expected = signal_id in first_seen and clock - first_seen[signal_id] < window_s
        if not expected:
            first_seen[signal_id] = clock
        assert window.seen_or_add(signal_id, now) is expected
