"""A bad record on a state topic (source-health, outcomes, router.control) is logged, counted
and skipped: it never stops the state follower, so it can never crash-loop every worker."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
import pytest

from router_stream.config import CONTROL, OUTCOMES, SOURCE_HEALTH, Settings
from router_stream.core.engine import RouterEngine
from router_stream.worker.policy_source import compile_policy_text
from router_stream.worker.state import StateFollower

POLICY = """
name: state
destinations: {pager: {}, slack: {}}
classify: [{name: all, when: {field: sender_id, exists: true}, kind: alert}]
routes: {alert: {strategy: first_healthy, tiers: [[pager], [slack]]}}
"""
NOW_MS = 1_800_000_000_000


@dataclass
class Rec:
    topic: str
    value: bytes | None
    offset: int = 0
    partition: int = 0
    timestamp: int = NOW_MS
    key: bytes | None = None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)


GARBAGE = [None, b"", b"\xff\xfe", b"{", b"[]", b"null", b'{"ok": "maybe"}', b"1e400",
           b'{"source_id": "\\ud800", "ts": 1}', orjson.dumps({"source_id": "x" * 10_000})]


@pytest.fixture
def follower():
    skipped: list[tuple[str, str]] = []
    settings = Settings(topic_prefix="t.")
    engine = RouterEngine(compile_policy_text(POLICY))
    f = StateFollower(settings, engine, on_transitions=lambda t: None, on_policy=lambda e: None,
                      reload_policy=lambda: ("", engine.policy),
                      on_skip=lambda topic, reason: skipped.append((topic, reason)))
    return f, engine, skipped


@pytest.mark.parametrize("logical", [SOURCE_HEALTH, OUTCOMES, CONTROL])
def test_garbage_on_a_state_topic_is_skipped_and_counted(follower, logical):
    f, engine, skipped = follower
    topic = f"t.{logical}"
    for i, value in enumerate(GARBAGE):
        f._fold(Rec(topic, value, offset=i))
    assert len(skipped) == len(GARBAGE) and {t for t, _ in skipped} == {topic}
    assert f.applied == len(GARBAGE)
    # ... and the records after them still apply
    good = {SOURCE_HEALTH: {"source_id": "pager", "ok": False, "ts": NOW_MS},
            OUTCOMES: {"signal_id": "s", "destination": "pager", "ok": False, "ts": NOW_MS},
            CONTROL: {"type": "breaker_force", "target": "pager", "state": "open"}}[logical]
    for i in range(5):
        f._fold(Rec(topic, orjson.dumps(good), offset=100 + i))
    assert engine.snapshot().breakers["pager"] == "open"


def test_a_record_the_engine_fails_on_is_skipped_not_raised(follower, monkeypatch):
    f, engine, skipped = follower

    def explode(event, now):
        raise OverflowError("date value out of range")

    monkeypatch.setattr(engine, "apply_health", explode)
    f._fold(Rec("t.source-health", orjson.dumps({"source_id": "pager", "ok": True,
                                                  "ts": NOW_MS})))
    assert skipped == [("t.source-health", "processing_error")]
    f._fold(Rec("t.outcomes", orjson.dumps({"signal_id": "s", "destination": "pager",
                                             "ok": True, "ts": NOW_MS}), offset=1))
    assert f.applied == 2 and len(skipped) == 1
