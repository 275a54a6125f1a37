"""The crash-loop guard's rules: the count in a committed offset's metadata, and the verdict."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from router_stream.core.crashloop import GuardMark, Verdict


@given(st.integers(0, 10**9 - 1), st.integers(-1, 2**62))
def test_a_mark_round_trips_through_commit_metadata(attempts, until):
    mark = GuardMark(attempts, until)
    assert GuardMark.parse(mark.to_metadata()) == mark


@given(st.text(max_size=80) | st.none())
def test_metadata_someone_else_wrote_counts_as_no_attempt(text):
    parsed = GuardMark.parse(text)
    if not (text or "").startswith("router-stream attempts="):
        assert parsed == GuardMark()


def test_a_record_that_keeps_killing_workers_is_poison_after_n_restarts():
    mark = GuardMark()
    assert mark.verdict(100, 3) is Verdict.NORMAL
    mark = mark.attempt(last_offset=599)  # the batch 100..599 was being decided: crash
    assert mark == GuardMark(1, 599)
    assert mark.verdict(100, 3) is Verdict.CAREFUL  # next start: one record at a time
    # walking the span, the worker commits 150 with one attempt counted and dies on it
    mark = GuardMark(1, 599)
    for expected in (2, 3):
        assert mark.verdict(150, 3) is Verdict.CAREFUL
        mark = mark.attempt(last_offset=150)
        assert mark == GuardMark(expected, 599)
    assert mark.verdict(150, 3) is Verdict.POISON


def test_careful_ends_after_the_span():
    assert GuardMark(0, 599).verdict(599, 3) is Verdict.CAREFUL
    assert GuardMark(0, 599).verdict(600, 3) is Verdict.NORMAL
