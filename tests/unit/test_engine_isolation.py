"""One record can never stop a batch: any fault while decoding, deciding or encoding it sends it
to the DLQ as ``processing_error`` and every other record of the batch is decided as usual."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from router_stream.core import decide as decide_mod
from router_stream.core.breaker import BreakerConfig
from router_stream.core.compiled import CompiledPolicy, RouteSpec
from router_stream.core.engine import RouterEngine
from router_stream.core.models import DlqEntry
from router_stream.core.strategies import SELECTION_STRATEGIES
from router_stream.core.trust import TrustParams, TrustWeights
from tests.support.engine import NOW, Rec

NUL_SIGNAL = (b'{"signal_id":"a\\u0000b","sender_id":"s","ts":1800000000000,'
              b'"payload":{"text":"refund"}}')
NULL_HEADERS = [("x-trace", b"t1"), ("x-null", None)]


def _classify(signal):
    if signal.payload.get("explode"):
        raise RuntimeError("rule blew up on\nthis signal")
    return ("alert", 1)


def policy(**changes) -> CompiledPolicy:
    base = CompiledPolicy(
        version="p-iso",
        routes={"alert": RouteSpec("alert", "first_healthy", (("pager",), ("slack",)))},
        classify=_classify, unclassified_kind=None, destinations=("pager", "slack"),
        capacity={}, trust_weights=TrustWeights(), trust_params=TrustParams(),
        breaker=BreakerConfig(), tenant_limits={}, default_limit=None,
    )
    return replace(base, **changes)


def sig(i: int, **payload: object) -> bytes:
    return orjson.dumps({"signal_id": f"s{i}", "sender_id": "svc", "ts": int(NOW * 1000),
                         "payload": {"text": "x", **payload}})


def batch_around(bad: Rec, n: int = 4) -> list[Rec]:
    """``bad`` in the middle of ``n`` valid signals, offsets in order."""
    records = [Rec(sig(i), offset=i) for i in range(n)]
    records.insert(n // 2, bad)
    return [replace(r, offset=i) for i, r in enumerate(records)]


def outcomes(result) -> dict[int, str]:
    """input offset -> what it became; fails if any offset has two outcomes or none."""
    seen: dict[int, str] = {}
    for d in result.decisions:
        assert d.input_offset not in seen
        seen[d.input_offset] = "decision"
    for q in result.dlq:
        assert q.entry.original_offset not in seen
        seen[q.entry.original_offset] = q.entry.reason.value
    return seen


def test_a_nul_escape_in_ids_routes_with_the_producers_bytes():
    for records in ([Rec(NUL_SIGNAL)], batch_around(Rec(NUL_SIGNAL))):
        result = RouterEngine(policy()).decide_batch(records, NOW)
        assert set(outcomes(result).values()) == {"decision"}
        assert len(outcomes(result)) == len(records)
        nul = next(d for d in result.decisions if d.signal_id == "a\x00b")
        routed = next(r for r in result.routed if r.signal_id == "a\x00b")
        assert routed.value.startswith(NUL_SIGNAL[:-1]) and nul.destinations == ["pager"]


@pytest.mark.parametrize("value", [b'{"signal_id": "s9", "sender_id"', sig(9)])
def test_null_header_values_are_kept_byte_exact(value):
    bad = Rec(value, headers=list(NULL_HEADERS))
    for records in ([bad], batch_around(bad)):
        result = RouterEngine(policy()).decide_batch(records, NOW)
        assert len(outcomes(result)) == len(records)
    if value == sig(9):
        assert [d.signal_id for d in result.decisions].count("s9") == 1
        return
    (q,) = result.dlq
    assert q.entry.reason.value == "invalid_json"
    assert q.entry.original_value == value
    assert q.entry.original_headers == NULL_HEADERS
    assert q.headers[:2] == NULL_HEADERS
    assert q.entry.kafka_headers()[:2] == NULL_HEADERS
    # the model round-trips the null value (it is what the Postgres row and replay read)
    again = DlqEntry.model_validate(q.entry.model_dump())
    assert again.original_headers == NULL_HEADERS


def test_a_rule_that_raises_dead_letters_only_its_signal():
    bad = Rec(sig(99, explode=True))
    for records in ([bad], batch_around(bad)):
        result = RouterEngine(policy()).decide_batch(records, NOW)
        seen = outcomes(result)
        assert len(seen) == len(records)
        (q,) = result.dlq
        assert q.entry.reason.value == "processing_error"
        assert q.entry.error == "RuntimeError: rule blew up on this signal"
        assert dict(q.headers)["x-dlq-error"] == b"RuntimeError: rule blew up on this signal"
        assert dict(q.headers)["x-dlq-reason"] == b"processing_error"
        assert q.entry.original_value == bad.value
        assert sorted(r.signal_id for r in result.routed) == sorted(
            d.signal_id for d in result.decisions)


def test_a_strategy_that_raises_dead_letters_and_the_batch_goes_on(monkeypatch):
    real = SELECTION_STRATEGIES["first_healthy"]
    calls = []

    def flaky(tiers, ctx):
        calls.append(1)
        if len(calls) == 2:
            raise ZeroDivisionError("division by zero")
        return real(tiers, ctx)

    monkeypatch.setattr(decide_mod, "SELECTION_STRATEGIES",
                        {**SELECTION_STRATEGIES, "first_healthy": flaky})
    records = [Rec(sig(i), offset=i) for i in range(4)]
    result = RouterEngine(policy()).decide_batch(records, NOW)
    assert outcomes(result) == {0: "decision", 1: "processing_error", 2: "decision",
                                3: "decision"}
    assert result.dlq[0].entry.error == "ZeroDivisionError: division by zero"


def test_a_fault_while_encoding_takes_back_the_half_built_decision(monkeypatch):
    real = decide_mod.routed_body

    def broken(value):
        if b'"s2"' in value:
            raise MemoryError("no room to splice")
        return real(value)

    monkeypatch.setattr(decide_mod, "routed_body", broken)
    engine = RouterEngine(policy())
    result = engine.decide_batch([Rec(sig(i), offset=i) for i in range(4)], NOW)
    assert outcomes(result) == {0: "decision", 1: "decision", 2: "processing_error",
                                3: "decision"}
    assert [r.signal_id for r in result.routed] == ["s0", "s1", "s3"]
    # the load counter saw three routed signals, not four
    assert engine.state.load["pager"].routed == 3


def test_router_headers_with_null_or_impossible_values_do_not_fail_the_record():
    odd = [("x-dlq-original-topic", None), ("x-dlq-original-partition", b"-4"),
           ("x-dlq-original-offset", b"7"), ("x-dlq-attempts", None)]
    bad_json = Rec(b"{", headers=odd)
    result = RouterEngine(policy()).decide_batch(batch_around(bad_json), NOW)
    assert len(outcomes(result)) == 5
    (q,) = result.dlq
    assert q.entry.original_topic == "signals" and q.entry.original_offset == 2
    negative = Rec(b"{", headers=[("x-dlq-original-topic", b"t"),
                                  ("x-dlq-original-partition", b"-4"),
                                  ("x-dlq-original-offset", b"7")])
    result = RouterEngine(policy()).decide_batch([negative], NOW)
    assert result.dlq[0].entry.original_partition == 0


def test_an_error_message_with_a_lone_surrogate_is_escaped_in_the_header(monkeypatch):
    def classify(signal):
        raise ValueError("bad \udc80 text")

    result = RouterEngine(policy(classify=classify)).decide_batch([Rec(sig(1))], NOW)
    (q,) = result.dlq
    assert dict(q.headers)["x-dlq-error"] == b"ValueError: bad \\udc80 text"


def test_a_dead_letter_carries_the_context_connect_and_spring_put_on_theirs():
    bad = Rec(sig(99, explode=True), timestamp=1_700_000_000_123)
    bad_json = Rec(b"{", offset=1)
    engine = RouterEngine(policy(), consumer_group="routers")
    result = engine.decide_batch([bad, bad_json], NOW)
    crashed, unparsed = (dict(q.headers) for q in result.dlq)
    assert crashed["x-dlq-exception"] == b"builtins.RuntimeError"
    trace = crashed["x-dlq-stacktrace"].decode()
    assert trace.startswith("Traceback") or "_classify" in trace
    assert "RuntimeError: rule blew up" in trace and len(trace) <= 4096
    assert crashed["x-dlq-original-timestamp"] == b"1700000000123"
    assert crashed["x-dlq-consumer-group"] == unparsed["x-dlq-consumer-group"] == b"routers"
    assert "x-dlq-exception" not in unparsed  # only a processing_error has an exception

    # failing again later keeps the first trip's timestamp, and no header is added twice
    again = Rec(None, offset=7, timestamp=1_900_000_000_000)
    again.value, again.headers = bad.value, list(result.dlq[0].headers)
    (q,) = engine.decide_batch([again], NOW + 1).dlq
    names = [k for k, _ in q.headers]
    assert dict(q.headers)["x-dlq-original-timestamp"] == b"1700000000123"
    assert len(names) == len(set(names)) == len(result.dlq[0].headers)
