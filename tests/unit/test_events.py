"""router.events: one format (core/events.py), its JSON Schema generated from it, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router_stream.core.breaker import BreakerState, BreakerTransition
from router_stream.core.events import (
    _ADAPTER,
    BreakerTransitionEvent,
    PolicyStatusEvent,
    PolicyVersionEvent,
    ShadowEvent,
    TrustSnapshotEvent,
    decode_event,
    encode_event,
)
from router_stream.core.outputs import BatchResult
from router_stream.core.rollout import RolloutEvent, ShadowOutcome
from router_stream.worker.sink import batch_events

SCHEMA = Path(__file__).parents[2] / "topics" / "schemas" / "router-event.schema.json"

EVENTS = [
    BreakerTransitionEvent.of(BreakerTransition("d1", BreakerState.CLOSED, BreakerState.OPEN,
                                                10.5, "5 consecutive failures")),
    TrustSnapshotEvent(scores={"s1": 0.25, "s\u00002": 1.0}, at=20.0),
    ShadowEvent.of(ShadowOutcome("sig", "v2", ("a", "b"), "no_route", False), at=30.0),
    PolicyVersionEvent(version="v3", policy_yaml="version: v3\n", status="active",
                       published_by="ops", at=40.0),
    PolicyStatusEvent.rollback(RolloutEvent("v4", "v3", "dlq rate +20%", 50.0)),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.type)
def test_every_event_round_trips_and_is_keyed_by_its_id(event) -> None:
    key, value = encode_event(event)
    assert decode_event(value) == event
    assert key == event.key.encode("utf-8", "surrogatepass")
    assert json.loads(value)["type"] == event.type


@pytest.mark.parametrize("value", [None, b"", b"{", b"[]", b'{"type": "nope"}',
                                   b'{"type": "trust_snapshot", "scores": {"s": 2}, "at": 1}',
                                   b'{"type": "breaker_transition", "target": "d"}'])
def test_what_is_not_an_event_is_a_value_error(value) -> None:
    with pytest.raises(ValueError):
        decode_event(value)


def test_the_schema_file_is_the_one_generated_from_the_models() -> None:
    schema = json.loads(SCHEMA.read_text())
    generated = _ADAPTER.json_schema()
    assert {k: v for k, v in schema.items() if k in generated} == generated


def test_a_batch_publishes_its_transitions_shadow_evaluations_and_rollbacks() -> None:
    result = BatchResult(
        breaker_transitions=[BreakerTransition("d1", BreakerState.OPEN, BreakerState.HALF_OPEN,
                                               1.0, "cooldown")],
        shadow=[ShadowOutcome("sig", "v2", ("a",), ("a",), True)],
        rollout_events=[RolloutEvent("v2", "v1", "too many DLQ", 2.0)])
    types = [decode_event(v).type for _, v in batch_events(result)]
    assert types == ["breaker_transition", "shadow", "policy_status"]
    assert batch_events(BatchResult()) == []
