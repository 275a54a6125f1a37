"""Outputs the broker refused for good: their inputs end in the DLQ, the rest of the batch stays
as decided, and a DLQ record too large for router.dlq becomes a reference."""

from __future__ import annotations

from dataclasses import replace

import orjson
from confluent_kafka import KafkaError, KafkaException

from router_stream.core.breaker import BreakerConfig
from router_stream.core.compiled import CompiledPolicy, RouteSpec
from router_stream.core.engine import RouterEngine
from router_stream.core.models import BreakerForce
from router_stream.core.refusals import Refused, as_reference, output_at, settle_refusals
from router_stream.core.trust import TrustParams, TrustWeights
from router_stream.worker.produce_errors import TopicMissing, is_refusal
from tests.support.engine import NOW, Rec


def _policy() -> CompiledPolicy:
    return CompiledPolicy(
        version="p", routes={
            "alert": RouteSpec("alert", "first_healthy", (("pager",), ("slack",))),
            "note": RouteSpec("note", "fanout", (("email", "webhook"),))},
        classify=lambda s: ("note", None) if s.payload.get("note") else ("alert", 1),
        unclassified_kind=None, destinations=("pager", "slack", "email", "webhook"),
        capacity={}, trust_weights=TrustWeights(), trust_params=TrustParams(),
        breaker=BreakerConfig(), tenant_limits={}, default_limit=None)


def sig(i: int, **payload: object) -> bytes:
    return orjson.dumps({"signal_id": f"s{i}", "sender_id": "svc", "ts": int(NOW * 1000),
                         "payload": payload})


def decided(values: list[bytes | None]):
    records = [Rec(v, offset=i, headers=[("h", None)]) for i, v in enumerate(values)]
    return records, RouterEngine(_policy()).decide_batch(records, NOW)


def _rd(code: int) -> KafkaException:
    return KafkaException(KafkaError(code))


def test_produce_errors_are_classified_refusal_or_transient():
    for refusal in (_rd(KafkaError.MSG_SIZE_TOO_LARGE), _rd(KafkaError.RECORD_LIST_TOO_LARGE),
                    _rd(KafkaError.TOPIC_AUTHORIZATION_FAILED), _rd(KafkaError.INVALID_RECORD),
                    TopicMissing("gone")):
        assert is_refusal(refusal), refusal
    for transient in (_rd(KafkaError._TRANSPORT), _rd(KafkaError._MSG_TIMED_OUT),
                      _rd(KafkaError.NOT_ENOUGH_REPLICAS), _rd(KafkaError.NOT_LEADER_FOR_PARTITION),
                      _rd(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER), _rd(KafkaError._QUEUE_FULL),
                      _rd(KafkaError.UNKNOWN_TOPIC_OR_PART), RuntimeError("x")):
        assert not is_refusal(transient), transient


def test_send_positions_name_routed_decisions_dlq_and_retries_in_send_order():
    _, result = decided([sig(0), sig(1, note=True), b"{"])
    # routed: s0->pager, s1->email, s1->webhook; decisions s0, s1; dlq: offset 2
    assert [output_at(result, i) for i in range(6)] == [
        ("routed", 0), ("routed", 1), ("routed", 2), ("decision", 0), ("decision", 1),
        ("dlq", 0)]


def test_a_refused_route_dead_letters_its_signal_only():
    records, result = decided([sig(0), sig(1, note=True), sig(2), b"{"])
    # the fanout's webhook copy of s1 is refused: s1 goes to the DLQ, all its outputs go
    repair = settle_refusals(result, records, [Refused("routed", 2, "routed.webhook", "TooBig")],
                             NOW)
    assert [d.signal_id for d in result.decisions] == ["s0", "s2"]
    assert [r.signal_id for r in result.routed] == ["s0", "s2"]
    assert repair.failed_routes == [("webhook", "s1")]
    reasons = {q.entry.original_offset: q.entry.reason.value for q in result.dlq}
    assert reasons == {3: "invalid_json", 1: "processing_error"}
    (new,) = repair.dlq
    assert new.entry.original_value == records[1].value
    assert new.entry.original_headers == [("h", None)]
    assert new.entry.signal_id == "s1"
    assert dict(new.headers)["x-dlq-error"] == b"produce to routed.webhook refused: TooBig"
    # its decision record may already be on router.decisions: this entry supersedes it
    assert dict(new.headers)["x-dlq-supersedes-decision"] == b"true"
    assert "x-dlq-supersedes-decision" not in dict(result.dlq[0].headers)


def test_a_dlq_record_too_large_for_the_dlq_topic_becomes_a_reference():
    big = b"{" + b"x" * 5000
    records, result = decided([sig(0), big])
    repair = settle_refusals(result, records, [Refused("dlq", 0, "router.dlq", "TooBig")], NOW)
    assert [d.signal_id for d in result.decisions] == ["s0"]
    (ref,) = result.dlq
    assert repair.dlq == [ref]
    h = dict(ref.headers)
    assert h["x-dlq-reference"] == b"true"
    assert int(h["x-dlq-original-size"]) == len(big) + len(b"k") + len(b"h")
    assert h["x-dlq-original-offset"] == b"1" and h["x-dlq-reason"] == b"invalid_json"
    assert b"stored as a reference: router.dlq: TooBig" in h["x-dlq-error"]
    assert ref.entry.original_value is None and ref.entry.original_headers == []
    assert ref.dlq_key == "signals/0/1"
    assert sum(len(v or b"") for _, v in ref.headers) < 600


def test_a_refused_decision_or_retry_dead_letters_its_input():
    records, result = decided([sig(0), sig(1)])
    settle_refusals(result, records, [Refused("decision", 1, "router.decisions", "Denied")], NOW)
    assert [d.signal_id for d in result.decisions] == ["s0"]
    assert [r.signal_id for r in result.routed] == ["s0"]
    assert [q.entry.original_offset for q in result.dlq] == [1]

    policy = replace(_policy(), routes={"alert": RouteSpec("alert", "first_healthy",
                                                            (("pager",),), max_attempts=3)})
    engine = RouterEngine(policy)
    assert engine.apply_control(BreakerForce(target="pager", state="open"), NOW).accepted
    records = [Rec(sig(i), offset=i) for i in range(2)]
    result = engine.decide_batch(records, NOW)
    assert len(result.retries) == 2
    settle_refusals(result, records, [Refused("retry", 0, "router.retry", "TooBig")], NOW)
    assert [t.signal_id for t in result.retries] == ["s1"]
    assert [(q.entry.original_offset, q.entry.reason.value) for q in result.dlq] == [
        (0, "processing_error")]


def test_as_reference_keeps_the_original_position_of_a_retried_record():
    records, result = decided([b"{" + b"y" * 100])
    ref = as_reference(result.dlq[0], "too large")
    assert ref.entry.original_topic == "signals" and ref.entry.original_offset == 0
