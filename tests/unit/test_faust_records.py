"""router_stream.faust's Record types read what the engine writes and write what the worker reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
import pytest

from router_stream.core.compiled import load_compiled
from router_stream.core.engine import RouterEngine
from router_stream.core.parsing import parse_outcome
from router_stream.faust import OutcomeRecord, RoutedRecord

NOW = 1_700_000_000.0
POLICY = """
name: faust-records
destinations: {slack: {}}
routes:
  note: {strategy: first_healthy, tiers: [[slack]]}
"""


@dataclass
class Rec:
    value: bytes
    key: bytes | None = b"k"
    topic: str = "signals"
    partition: int = 0
    offset: int = 0
    timestamp: int = int(NOW * 1000)
    headers: list = field(default_factory=list)


def routed(**signal) -> RoutedRecord:
    result = RouterEngine(load_compiled(POLICY)).decide_batch(
        [Rec(orjson.dumps({"sender_id": "app", "kind": "note", **signal}))], NOW)
    return RoutedRecord.loads(result.routed[0].value)


def test_routed_record_reads_the_engine_output_and_keeps_unknown_fields():
    r = routed(signal_id="s1", payload={"text": "hi"}, custom=[1, 2], ts=int(NOW * 1000))
    assert (r.id, r.sender_id, r.tenant, r.payload) == ("s1", "app", "default", {"text": "hi"})
    assert (r.route.destination, r.route.kind, r.route.tier) == ("slack", "note", 0)
    assert r.custom == [1, 2] and r.ts == int(NOW * 1000)
    assert routed().id  # derived by the router, named by the route


def test_outcome_record_is_what_the_worker_reads_without_nulls():
    r = routed(signal_id="s1")
    value = OutcomeRecord.for_delivery(r, ok=False, latency_ms=5.0, ts=NOW).dumps()
    assert b"null" not in value and b"__faust" not in value
    outcome = parse_outcome(value, record_ts_ms=0)
    assert (outcome.signal_id, outcome.destination, outcome.ok, outcome.ts, outcome.latency_ms,
            outcome.decision_id) == ("s1", "slack", False, NOW, 5.0, r.route.decision_id)
    with pytest.raises(ValueError):
        OutcomeRecord.for_delivery(r, ok=True, reward=2.0)
