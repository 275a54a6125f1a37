"""Kafka records -> Postgres rows (adapters/postgres/rows.py): everything a row needs is in its record."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from router_stream.adapters.postgres import (
    BREAKER_TRANSITION_COLUMNS,
    DECISION_COLUMNS,
    SHADOW_COLUMNS,
    TRUST_SNAPSHOT_COLUMNS,
)
from router_stream.adapters.postgres.rows import (
    decision_row,
    decode_decision,
    dlq_row_from_record,
    escape_nul,
    shadow_row,
    transition_row,
    trust_rows,
)
from router_stream.core.breaker import BreakerState, BreakerTransition
from router_stream.core.events import BreakerTransitionEvent, ShadowEvent, TrustSnapshotEvent
from router_stream.core.models import Decision, DlqEntry, DlqReason
from router_stream.core.outputs import BatchResult, DlqRecord
from router_stream.core.policy import RedactPolicy
from router_stream.core.redaction import DEFAULT_REDACTOR, Redactor
from router_stream.core.rollout import ShadowOutcome
from router_stream.projection.writer import ProjectionBatch


def _decision(**kw: Any) -> Decision:
    base = dict(decision_id="dec-1", signal_id="s-1", tenant="t", kind="alert",
                destinations=["pager"], strategy="first_healthy", tier=0, policy_version="v",
                confidence=0.9, trust={"pager": 0.8}, breakers={"pager": "closed"},
                input_topic="signals", input_partition=1, input_offset=7, decided_at=2e9,
                signal_ts=2e9 - 1)
    return Decision(**(base | kw))


def _fields(d: Decision) -> Any:
    return decode_decision(d.to_json())


def _entry(**kw: Any) -> DlqEntry:
    base = dict(reason=DlqReason.NO_ROUTE, error="no route", signal_id="s-9", tenant="acme",
                kind="alert", original_topic="signals", original_partition=2,
                original_offset=9, original_key=b"k", original_value=b'{"x": 1}',
                original_headers=[("x-trace", b"t1")], first_failed_at=100.0)
    return DlqEntry(**(base | kw))


def test_a_decision_record_holds_every_column(kafka_log) -> None:
    d = _decision(method="blend", value=1.5, sources_used=["a", "b"], outliers=["c"],
                  extra={"replay_of": "x"}, rule="r1")
    (rec,) = kafka_log().of(BatchResult(decisions=[d]), 1000)
    row = dict(zip(DECISION_COLUMNS, decision_row(decode_decision(rec.value)), strict=True))
    assert (row["decision_id"], row["signal_id"], row["tenant"], row["kind"]) == (
        "dec-1", "s-1", "t", "alert")
    assert (row["destinations"], row["strategy"], row["tier"]) == (("pager",), "first_healthy", 0)
    assert (row["policy_version"], row["confidence"]) == ("v", 0.9)
    assert orjson.loads(row["state"]) == {"trust": {"pager": 0.8}, "breakers": {"pager": "closed"},
                                          "rule": "r1", "extra": {"replay_of": "x"}}
    assert row["consensus"] == {"value": 1.5, "method": "blend", "sources_used": ("a", "b"),
                                "outliers": ("c",)}
    assert (row["input_topic"], row["input_partition"], row["input_offset"]) == ("signals", 1, 7)
    assert (row["signal_ts"].timestamp(), row["decided_at"].timestamp()) == (2e9 - 1, 2e9)


def test_a_decision_row_holds_no_container_the_collector_keeps_tracking() -> None:
    """Rows of a batch in flight are not rescanned by every collection (docs/performance.md)."""
    import gc

    row = decision_row(_fields(_decision(priority=3, override_id="o-1")))
    gc.collect()  # untracks the destinations tuple (and the row, if it saw that one first)
    gc.collect()
    assert not gc.is_tracked(row)
    assert orjson.loads(row[9]) == {"trust": {"pager": 0.8}, "breakers": {"pager": "closed"},
                                    "priority": 3, "override_id": "o-1"}


def test_a_state_that_escapes_nul_is_a_dict_that_escape_nul_reaches() -> None:
    row = decision_row(_fields(_decision(trust={"pa\x00ger": 0.8}, rule="r\x00")))
    assert row[9] == {"trust": {"pa\x00ger": 0.8}, "breakers": {"pager": "closed"}, "rule": "r\x00"}
    assert escape_nul(row)[9]["rule"] == "r\\u0000"


@pytest.mark.parametrize("value", [b"[]", b"{}", b'{"signal_id": "s"}', b"nope", None])
def test_what_is_not_a_decision_is_a_value_error(value) -> None:
    with pytest.raises(ValueError):
        ProjectionBatch().add_decision(decode_decision(value), "t/0/0", 0, DEFAULT_REDACTOR)


def test_a_decision_with_a_field_of_the_wrong_type_or_out_of_range_is_a_value_error() -> None:
    wrong_type = _decision().to_json().replace(b'"tier":0', b'"tier":"zero"')
    with pytest.raises(ValueError):
        decode_decision(wrong_type)
    with pytest.raises(ValueError):
        ProjectionBatch().add_decision(_fields(_decision(decided_at=1e20)), "t/0/0", 0,
                                       DEFAULT_REDACTOR)


def test_a_dlq_record_holds_every_column_and_where_it_is(kafka_log) -> None:
    e = _entry()
    (rec,) = kafka_log("p.").of(BatchResult(dlq=[DlqRecord(e, e.kafka_headers())]), 5_000)
    row = dlq_row_from_record(rec)
    assert row is not None
    assert row["dlq_key"] == "signals/2/9" and row["reason"] == "no_route"
    assert (row["signal_id"], row["tenant"], row["kind"]) == ("s-9", "acme", "alert")
    assert row["original_headers"] == [("x-trace", b"t1")]  # x-dlq-* stripped
    assert (row["dlq_topic"], row["dlq_partition"], row["dlq_offset"]) == ("p.router.dlq", 0, 0)
    assert row["first_failed_at"].timestamp() == 5.0  # min(first failure, the record's time)


@pytest.mark.parametrize(("first", "stored"), [
    (5.0004, 5.0004),  # later in the record's (floored) millisecond: this trip's own time
    (5.0, 5.0),
    (5.001, 5.0),  # after the record was written: a clock ahead, capped at the record's time
])
def test_a_first_failure_within_the_record_s_millisecond_keeps_its_microseconds(
    kafka_log, first: float, stored: float,
) -> None:
    e = _entry(first_failed_at=first)
    (rec,) = kafka_log("p.").of(BatchResult(dlq=[DlqRecord(e, e.kafka_headers())]), 5_000)
    row = dlq_row_from_record(rec)
    assert row is not None
    assert row["first_failed_at"].timestamp() == pytest.approx(stored, abs=1e-6)
    assert row["last_failed_at"] >= row["first_failed_at"]  # the table's CHECK


def test_a_dlq_row_is_masked_by_the_policy_and_knows_its_record(kafka_log) -> None:
    redactor = Redactor.of(RedactPolicy(fields=["tenant"]))
    e = _entry(original_key=b"555-123-4567", original_value=b'{"ssn": "123-45-6789"}')
    (rec,) = kafka_log().of(BatchResult(dlq=[DlqRecord(e, e.kafka_headers())]), 200_000)
    row = dlq_row_from_record(rec, redactor)
    assert row is not None and row["masked"] is True
    assert (row["original_key"], row["original_value"]) == (b"[PHONE]", b'{"ssn":"[SSN]"}')
    assert row["tenant"].startswith("[REDACTED]~h")
    named = dict(zip(DECISION_COLUMNS, decision_row(_fields(
        _decision(signal_id="s-bob@example.com", tenant="acme")), redactor), strict=True))
    assert named["signal_id"].startswith("***@example.com~h")
    assert named["tenant"] == row["tenant"]  # one tenant masks to one id everywhere


def test_a_record_without_the_dlq_headers_is_not_a_dlq_row(kafka_log) -> None:
    rec = kafka_log().append("router.dlq", b"k", b"v", 1, [("x-dlq-reason", b"no_route")])
    assert dlq_row_from_record(rec) is None
    rec = kafka_log().append("router.dlq", b"k", b"v", 1, [
        ("x-dlq-reason", b"made_up"), ("x-dlq-original-topic", b"s"),
        ("x-dlq-original-partition", b"0"), ("x-dlq-original-offset", b"1")])
    assert dlq_row_from_record(rec) is None


def test_event_rows_follow_the_adapter_column_orders() -> None:
    t = BreakerTransitionEvent.of(BreakerTransition("pager", BreakerState.CLOSED,
                                                    BreakerState.OPEN, 5.0, "failures"))
    assert len(transition_row(t)) == len(BREAKER_TRANSITION_COLUMNS)
    rows = trust_rows(TrustSnapshotEvent(scores={"a": 0.5, "b": 1.0}, at=10.0))
    assert rows == [("a", 0.5, {}, 10.0), ("b", 1.0, {}, 10.0)]
    assert all(len(r) == len(TRUST_SNAPSHOT_COLUMNS) for r in rows)
    # jsonb columns take a str as already-serialised JSON: a bare DLQ reason is not JSON
    shadow = shadow_row(ShadowEvent.of(ShadowOutcome("s-1", "p-2", ("a", "b"), "unclassified",
                                                     False), 1.0))
    assert len(shadow) == len(SHADOW_COLUMNS)
    assert shadow[2] == ["a", "b"] and orjson.loads(shadow[3]) == "unclassified"


def test_nul_is_escaped_in_every_string_of_a_row_and_nothing_else_changes() -> None:
    row = ("a\x00b", 1, None, b"\x00", ["x\x00"], {"k\x00": {"v": "\x00\x00"}}, ("\x00",))
    assert escape_nul(row) == ("a\\u0000b", 1, None, b"\x00", ["x\\u0000"],
                               {"k\\u0000": {"v": "\\u0000\\u0000"}}, ("\\u0000",))
    clean = ("a", 1, {"b": ["c"]})
    assert escape_nul(clean) == clean


@pytest.mark.parametrize("module", ["router_stream.projection", "router_stream.worker",
                                    "router_stream.cli.persist"])
def test_each_entry_point_imports_first_in_a_fresh_interpreter(module: str) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
