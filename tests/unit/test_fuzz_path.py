"""Fuzz the whole decide path — bytes off the wire, decode, classify, route, encode — with what a
hostile producer can send: arbitrary bytes, JSON with any unicode (NUL, escaped lone surrogates,
RTL marks, emoji), huge and deeply nested values, and arbitrary header lists (null values,
binary, duplicates).

Invariants: nothing raises; every input ends as exactly one decision, DLQ entry or retry (or a
dropped duplicate); a DLQ record keeps the input's key, value and headers byte-exact; every
routed value and decision serialises to JSON. ``make test`` runs a bounded number of examples;
``make chaos`` runs more (``ROUTER_FUZZ_EXAMPLES``). The counts are printed.
"""

from __future__ import annotations

import os

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router_stream.core.engine import RouterEngine
from router_stream.core.wire import DLQ_HEADERS
from router_stream.worker.policy_source import compile_policy_text
from tests.support.engine import NOW, Rec

EXAMPLES = int(os.environ.get("ROUTER_FUZZ_EXAMPLES", "150"))

POLICY = """
name: fuzz
destinations: {pager: {}, slack: {}, email: {}, desk-a: {}, desk-b: {}, tsdb: {}}
classify:
  - name: alerts
    when: {field: payload.severity, in: [critical, high]}
    kind: alert
  - name: outages
    when: {field: payload.text, regex: "(?i)out(age)?"}
    kind: alert
  - name: tickets
    when: {field: payload.type, equals: ticket}
    kind: ticket
  - name: metrics
    when: {field: metric, exists: true}
    kind: observation
routes:
  alert: {strategy: first_healthy, tiers: [[pager], [slack], [email]]}
  ticket: {strategy: weighted, destinations: [desk-a, desk-b]}
  observation: {strategy: consensus, tiers: [[tsdb]]}
defaults: {unclassified: dlq, unrouted: dlq}
tenants:
  default: {rate: 1000000, burst: 1000000}
"""


tried = {"examples": 0, "records": 0}


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest):
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nfuzz (decode -> decide -> encode): {tried['examples']} "
                                f"examples, {tried['records']} records "
                                f"(ROUTER_FUZZ_EXAMPLES={EXAMPLES})")


# --- strategies ---------------------------------------------------------------------------------

# Any code point a JSON string can carry, weighted towards the awkward ones.
AWKWARD = st.sampled_from(["\x00", "\u202e", "\u200f", "\ufeff", "\U0001f4a5", "\U0001f308",
                           "\u05d0", "\\", '"', "\n", "\x7f", "\uffff"])
TEXT = st.text(st.characters(exclude_categories=("Cs",)) | AWKWARD, max_size=40)
SCALAR = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
          | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
JSONISH = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=5)
                       | st.dictionaries(TEXT, inner, max_size=5), max_leaves=30)
TS = st.integers(-10, 2**64 - 1) | st.sampled_from([int(NOW * 1000), "2027-01-15T08:00:00Z",
                                                 "yesterday", "2027-01-15T08:00:00"])


@st.composite
def signal_like(draw: st.DrawFn) -> bytes:
    """A JSON object shaped more or less like a signal."""
    body: dict[str, object] = {}
    for name, strategy in (("signal_id", TEXT), ("sender_id", TEXT), ("tenant", TEXT),
                           ("ts", TS), ("kind", TEXT | st.sampled_from(["alert", "ticket"])),
                           ("priority", st.integers(-3, 12) | TEXT),
                           ("ttl_ms", st.integers(-5, 10**12)), ("metric", TEXT),
                           ("source_id", TEXT), ("value", SCALAR)):
        if draw(st.booleans()):
            body[name] = draw(strategy)
    payload = draw(st.dictionaries(st.sampled_from(["severity", "text", "type", "x"])
                                   | TEXT, JSONISH, max_size=4))
    if draw(st.booleans()):
        payload["severity"] = draw(st.sampled_from(["critical", "high", "low"]))
    body["payload"] = payload if draw(st.integers(0, 9)) else draw(JSONISH)
    return orjson.dumps(body)


@st.composite
def escaped_surrogate(draw: st.DrawFn) -> bytes:
    """JSON text with a lone surrogate written as an escape (orjson refuses it)."""
    unit = draw(st.integers(0xD800, 0xDFFF))
    return b'{"signal_id": "s\\u%04x", "sender_id": "a", "payload": {}}' % unit


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 3000))
    inner = b'{"a": ' * depth + b"1" + b"}" * depth
    return b'{"signal_id": "d", "sender_id": "s", "payload": ' + inner + b"}"


@st.composite
def huge(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(10_000, 1_000_000))
    where = draw(st.sampled_from(["sender_id", "signal_id", "payload"]))
    blob = "x" * n
    body = {"signal_id": "h", "sender_id": "s", "payload": {"severity": "critical"}}
    body[where] = {"blob": blob} if where == "payload" else blob
    return orjson.dumps(body)


VALUES = (st.none() | st.binary(max_size=200) | signal_like() | escaped_surrogate()
          | st.builds(lambda b: b[: len(b) // 2], signal_like()))
HEADER_NAME = st.sampled_from(["x-trace", "traceparent", "x-trace-id", "", "x-dup", "x-dlq-reason",
                               "x-dlq-original-offset", "x-dlq-original-topic", "x-signal-id",
                               "x-retry-not-before", "x-dlq-original-partition", "x-dlq-attempts",
                               "x-dlq-first-failed-at", "x-dlq-original-timestamp"]) | TEXT
# numbers past int64 and past the 4,300 digits int() converts, and the like with a NUL or a sign
DIGITS = st.builds(lambda n, c: c * n, st.sampled_from([1, 10, 19, 20, 31, 4301, 6000]),
                   st.sampled_from([b"9", b"0", b"1"]))
HEADER_VALUE = (st.none() | st.binary(max_size=40) | DIGITS
                | st.builds(lambda d, x: x + d, DIGITS, st.sampled_from([b"-", b"\x00", b"+"])))
HEADERS = st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=6)
KEYS = st.none() | st.binary(max_size=20)


@st.composite
def batch(draw: st.DrawFn, values: st.SearchStrategy[bytes | None] = VALUES,
          most: int = 8) -> list[Rec]:
    n = draw(st.integers(1, most))
    return [Rec(draw(values), offset=i, key=draw(KEYS), headers=draw(HEADERS)) for i in range(n)]


# --- invariants ---------------------------------------------------------------------------------

ENGINE_POLICY = compile_policy_text(POLICY)


def check(records: list[Rec]) -> None:
    tried["examples"] += 1
    tried["records"] += len(records)
    result = RouterEngine(ENGINE_POLICY).decide_batch(records, NOW)
    by_offset = {r.offset: r for r in records}
    outcomes = ([d.input_offset for d in result.decisions]
                + [q.entry.original_offset for q in result.dlq])
    # a record whose forged x-dlq-original-* headers parse is decided under that origin: count
    # outcomes, not offsets, for those; fresh ones must match their own offset exactly once
    assert len(outcomes) + len(result.retries) + result.dropped_duplicates == len(records)
    for q in result.dlq:
        e = q.entry
        # byte-exact: some input has exactly this value, key and (router headers aside) headers
        assert any(r.value == e.original_value and r.key == e.original_key
                   and e.original_headers == [(k, v) for k, v in r.headers
                                              if k not in DLQ_HEADERS] for r in records)
        assert q.headers[:len(e.original_headers)] == e.original_headers
        assert all(isinstance(v, bytes) for k, v in q.headers if k in DLQ_HEADERS)
        assert "\n" not in e.error
    for d in result.decisions:
        orjson.loads(d.to_json())
        assert d.input_offset in by_offset or d.input_topic != "signals"
    for r in result.routed:
        body = orjson.loads(r.value)
        assert body["route"]["destination"] == r.destination


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch())
def test_any_batch_of_records_is_fully_accounted_for(records: list[Rec]) -> None:
    check(records)


@settings(max_examples=max(5, EXAMPLES // 30), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(batch(deep() | huge(), most=3))
def test_huge_and_deep_values_are_accounted_for(records: list[Rec]) -> None:
    check(records)


def test_the_inputs_of_issue_15_alone_and_in_a_batch() -> None:
    nul = (b'{"signal_id":"a\\u0000b","sender_id":"s","ts":1800000000000,'
           b'"payload":{"text":"refund"}}')
    truncated = b'{"signal_id": "t", "sender_id"'
    for bad in (Rec(nul, 0), Rec(truncated, 0, headers=[("x-trace", b"t1"), ("x-null", None)])):
        check([bad])
        valid = [Rec(orjson.dumps({"signal_id": f"v{i}", "sender_id": "s",
                                   "payload": {"severity": "high"}}), i) for i in range(1, 5)]
        check([*valid[:2], bad, *valid[2:]])
