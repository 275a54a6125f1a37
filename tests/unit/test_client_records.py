"""The client's parsers and outcome encoding against what the product really writes."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_stream.client import (
    Decision,
    DlqReason,
    InvalidRecord,
    encode_outcome,
    outcome_for,
    parse_decision,
    parse_dlq,
    parse_routed,
)
from router_stream.core.compiled import load_compiled
from router_stream.core.engine import RouterEngine
from router_stream.core.parsing import parse_outcome

NOW = 1_700_000_000.0


@dataclass
class Rec:
    value: bytes | None
    key: bytes | None = b"k"
    topic: str = "signals"
    partition: int = 0
    offset: int = 0
    timestamp: int = int(NOW * 1000)
    headers: list = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.headers = self.headers or []


POLICY = """
name: p1
destinations: {slack: {}}
routes:
  note: {strategy: first_healthy, tiers: [[slack]]}
defaults: {unclassified: dlq, unrouted: dlq}
"""


def engine() -> RouterEngine:
    return RouterEngine(load_compiled(POLICY))


def test_parses_the_routed_record_the_engine_writes():
    signal = {"signal_id": "s1", "sender_id": "svc", "kind": "note", "ts": int(NOW * 1000),
              "payload": {"text": "hi"}, "custom": [1, 2]}
    result = engine().decide_batch([Rec(orjson.dumps(signal), key=b"svc")], NOW)
    routed = parse_routed(result.routed[0].value, result.routed[0].key)
    assert routed.signal_id == "s1"
    assert routed.signal == signal  # the producer's fields, unknown ones too, without `route`
    assert routed.key == b"svc"
    assert routed.decision_id == result.decisions[0].decision_id
    assert (routed.destination, routed.route.kind, routed.route.strategy, routed.route.tier,
            routed.route.policy_version) == ("slack", "note", "first_healthy", 0,
                                             result.decisions[0].policy_version)
    assert routed.route.routed_at == NOW and routed.route.confidence == 1.0
    assert routed.payload == {"text": "hi"} and routed.tenant == "default"


def test_signal_id_comes_from_the_route_when_the_producer_sent_none():
    raw = orjson.dumps({"sender_id": "svc", "kind": "note", "ts": int(NOW * 1000)})
    result = engine().decide_batch([Rec(raw)], NOW)
    assert parse_routed(result.routed[0].value).signal_id == result.decisions[0].signal_id


@pytest.mark.parametrize("value, message", [
    (None, "not a JSON object"),
    (b"{nope", "not JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"signal_id": "s"}', "no route object"),
    (b'{"route": {"decision_id": "d", "destination": "x", "kind": "k", "strategy": "s",'
     b' "tier": 0, "policy_version": "v", "confidence": 1, "routed_at": 1}}', "no signal_id"),
    (b'{"signal_id": "s", "route": {"decision_id": "", "destination": "x", "kind": "k",'
     b' "strategy": "s", "tier": 0, "policy_version": "v", "confidence": 1,'
     b' "routed_at": 1}}', "decision_id"),
    (b'{"signal_id": "s", "route": {"decision_id": "d", "destination": "x", "kind": "k",'
     b' "strategy": "s", "tier": true, "policy_version": "v", "confidence": 1,'
     b' "routed_at": 1}}', "tier"),
])
def test_a_record_that_is_not_a_routed_record_is_refused_with_a_reason(value, message):
    with pytest.raises(InvalidRecord, match=message):
        parse_routed(value)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_invalid_record(value):
    """Only InvalidRecord may escape: a consumer skips those and nothing else."""
    with contextlib.suppress(InvalidRecord):
        parse_routed(value)


def test_parses_the_decision_the_engine_writes_and_keeps_unknown_fields():
    raw = orjson.dumps({"signal_id": "s1", "sender_id": "svc", "kind": "note",
                        "ts": int(NOW * 1000)})
    decision = engine().decide_batch([Rec(raw)], NOW).decisions[0]
    assert parse_decision(decision.to_json()) == decision.decision()
    newer = orjson.loads(decision.to_json()) | {"added_in_1_1": 7}
    parsed = parse_decision(orjson.dumps(newer))
    assert isinstance(parsed, Decision) and parsed.extra == {"added_in_1_1": 7}
    with pytest.raises(InvalidRecord):
        parse_decision(b'{"signal_id": "s1"}')


def test_parses_the_dlq_record_the_engine_writes():
    raw = orjson.dumps({"signal_id": "s9", "sender_id": "svc", "kind": "nope",
                        "ts": int(NOW * 1000)})
    rec = Rec(raw, key=b"svc", offset=41, headers=[("trace", b"t-1")])
    dlq = engine().decide_batch([rec], NOW).dlq[0]
    entry = parse_dlq(dlq.headers, rec.key, rec.value)
    assert entry.reason is DlqReason.NO_ROUTE
    assert (entry.signal_id, entry.original_offset, entry.original_value) == ("s9", 41, raw)
    assert entry.original_headers == [("trace", b"t-1")]
    assert entry.first_failed_at == NOW
    with pytest.raises(InvalidRecord, match="x-dlq-reason"):
        parse_dlq([], None, raw)
    with pytest.raises(InvalidRecord):
        parse_dlq([(k, b"bogus" if k == "x-dlq-reason" else v) for k, v in dlq.headers],
                  None, raw)


def test_the_outcome_written_is_the_outcome_the_worker_reads():
    raw = orjson.dumps({"signal_id": "s1", "sender_id": "svc", "kind": "note",
                        "ts": int(NOW * 1000)})
    routed = parse_routed(engine().decide_batch([Rec(raw)], NOW).routed[0].value)
    outcome = outcome_for(routed, ok=False, latency_ms=12.5, reward=0.25, cost=0.1, ts=NOW + 1)
    key, value = encode_outcome(outcome)
    assert key == b"slack"
    assert orjson.loads(value)["ts"] == int((NOW + 1) * 1000)  # epoch ms on the wire
    read = parse_outcome(value, record_ts_ms=0)
    assert read == outcome
    assert read.decision_id == routed.decision_id and math.isclose(read.ts, NOW + 1)


def test_unset_outcome_fields_are_left_out():
    raw = orjson.dumps({"signal_id": "s1", "sender_id": "svc", "kind": "note"})
    routed = parse_routed(engine().decide_batch([Rec(raw)], NOW).routed[0].value)
    _, value = encode_outcome(outcome_for(routed, ok=True, ts=NOW))
    assert set(orjson.loads(value)) == {"signal_id", "destination", "ok", "ts", "decision_id"}
    with pytest.raises(ValueError):
        outcome_for(routed, ok=True, reward=1.5)
