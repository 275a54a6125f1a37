"""Which trust scores a periodic snapshot writes: new, moved, or due for a refresh."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from router_stream.worker.trust_snapshots import SnapshotSelector


def test_first_snapshot_writes_everything_then_only_what_moved():
    sel = SnapshotSelector(min_change=0.001, refresh_every_s=600)
    trust = {"a": 0.5, "b": 0.7, "c": 0.9}
    assert sel.due(trust, 0) == trust
    sel.written(trust, 0, trust)
    later = {"a": 0.5004, "b": 0.69, "c": 0.9, "d": 0.1}
    assert sel.due(later, 10) == {"b": 0.69, "d": 0.1}  # a moved < 0.001, c did not move


def test_an_unchanged_score_is_written_again_after_the_refresh_period():
    sel = SnapshotSelector(min_change=0.001, refresh_every_s=600)
    sel.written({"a": 0.5}, 0, {"a": 0.5})
    assert sel.due({"a": 0.5}, 599) == {}
    assert sel.due({"a": 0.5}, 600) == {"a": 0.5}


def test_a_failed_write_is_not_remembered_so_the_next_snapshot_retries_it():
    sel = SnapshotSelector()
    trust = {"a": 0.5}
    assert sel.due(trust, 0) == trust  # the insert failed: written() was not called
    assert sel.due(trust, 10) == trust


def test_ids_that_left_the_state_are_forgotten():
    sel = SnapshotSelector()
    sel.written({"a": 0.5, "b": 0.6}, 0, {"a": 0.5, "b": 0.6})
    sel.written({}, 10, {"a": 0.5})
    assert len(sel) == 1
    assert sel.due({"a": 0.5, "b": 0.6}, 20) == {"b": 0.6}


@given(st.lists(st.dictionaries(st.sampled_from("abcdef"), st.floats(0, 1), max_size=6),
                min_size=1, max_size=30))
def test_every_id_has_a_written_row_within_min_change_of_its_score(rounds):
    """After each snapshot, the last written score of every id in state is within min_change
    of its current score — a reader of trust_snapshots is never further off than that."""
    sel = SnapshotSelector(min_change=0.01, refresh_every_s=1e9)
    last: dict[str, float] = {}
    for t, trust in enumerate(rounds):
        due = sel.due(trust, float(t))
        sel.written(due, float(t), trust)
        last = {k: v for k, v in last.items() if k in trust} | due
        for source, score in trust.items():
            assert abs(last[source] - score) < 0.01
