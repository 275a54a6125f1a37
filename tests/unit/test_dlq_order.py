"""dlq.order.KeyGate: entries of a key go in original order; a blocked entry holds back the later
entries of its key only, and only unless reordering is allowed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from router_stream.dlq.order import Blocked, KeyGate

A, B = ("signals", b"a"), ("signals", b"b")


def test_a_key_without_a_blocker_is_admitted_in_any_position() -> None:
    gate = KeyGate()
    assert all(gate.admit(A, (0, n)) for n in range(5))
    assert gate.held_entries == 0


def test_entries_after_a_blocked_one_are_held_and_counted_by_why() -> None:
    gate = KeyGate()
    gate.block(A, (0, 10), Blocked.NOT_SELECTED)
    assert gate.admit(A, (0, 9))  # before the blocker: in order
    assert not gate.admit(A, (0, 11))
    assert not gate.admit(A, (1, 0))  # a later partition of the topic comes after
    assert gate.admit(B, (0, 11))  # other keys are not held
    assert gate.held == {Blocked.NOT_SELECTED: 2} and gate.held_keys == {A}


def test_the_earliest_blocker_of_a_key_wins() -> None:
    gate = KeyGate()
    gate.block(A, (0, 10), Blocked.SEND_FAILED)
    gate.block(A, (0, 5), Blocked.REFUSED)
    gate.block(A, (0, 7), Blocked.UNAVAILABLE)
    assert not gate.admit(A, (0, 6))
    assert gate.held == {Blocked.REFUSED: 1}


def test_entries_without_a_key_and_allow_reorder_are_never_held() -> None:
    gate = KeyGate()
    gate.block(None, (0, 1), Blocked.SEND_FAILED)
    assert gate.admit(None, (0, 2))
    free = KeyGate(allow_reorder=True)
    free.block(A, (0, 1), Blocked.SEND_FAILED)
    assert free.admit(A, (0, 2)) and free.held_entries == 0


@given(st.lists(st.tuples(st.sampled_from([A, B]), st.integers(0, 50), st.booleans()),
                max_size=60, unique_by=lambda e: (e[0], e[1])))
def test_what_goes_never_follows_a_blocked_entry_of_its_key(
        entries: list[tuple[tuple[str, bytes], int, bool]]) -> None:
    """Walked in original order, blocking the entries marked as failing: nothing admitted comes
    after a failing entry of its key, and every entry is admitted, blocked or held once."""
    gate = KeyGate()
    sent: list[tuple[tuple[str, bytes], int]] = []
    failing: list[tuple[tuple[str, bytes], int]] = []
    for key, offset, fails in sorted(entries, key=lambda e: e[1]):
        if not gate.admit(key, (0, offset)):
            continue
        if fails:
            gate.block(key, (0, offset), Blocked.SEND_FAILED)
            failing.append((key, offset))
        else:
            sent.append((key, offset))
    for key, offset in sent:
        assert not any(k == key and o < offset for k, o in failing)
    assert len(sent) + len(failing) + gate.held_entries == len(entries)
