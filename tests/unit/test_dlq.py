"""The pure parts of the DLQ tools: time input, filters, replay records, reindex rows, display."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_stream.adapters.kafka_io import ConsumedRecord
from router_stream.core.models import DlqEntry, DlqReason
from router_stream.core.policy import RedactPolicy
from router_stream.core.redaction import Redactor
from router_stream.dlq.filters import DlqFilter
from router_stream.dlq.reindex import row_from_record
from router_stream.dlq.replay import original_problem, replay_record
from router_stream.dlq.store import DlqRow
from router_stream.dlq.timespec import parse_duration, parse_instant
from router_stream.dlq.view import describe_bytes, entry_detail
from router_stream.errors import UserError

NOW = datetime(2025, 1, 2, 12, 0, tzinfo=UTC)


# --- time input ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("10m", 600), ("1.5h", 5400), ("2d", 172800), ("1w", 604800), ("250ms", 0.25),
    (" 3H ", 10800),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "m", "-5m", "0s", "1y", "ten minutes"])
def test_bad_durations_are_user_errors(text: str) -> None:
    with pytest.raises(UserError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["366d", "53w", "99999999d", "9" * 400 + "w"])
def test_durations_beyond_the_maximum_are_user_errors(text: str) -> None:
    with pytest.raises(UserError, match=r"duration too long: .* \(at most 365d\)"):
        parse_duration(text)


def test_the_maximum_is_inclusive_and_the_callers_to_choose() -> None:
    assert parse_duration("365d") == timedelta(days=365)
    with pytest.raises(UserError, match="at most 1d"):
        parse_duration("2d", maximum=timedelta(days=1))


def test_a_relative_instant_reaches_back_at_most_ten_years() -> None:
    assert parse_instant("3650d", NOW) == NOW - timedelta(days=3650)
    with pytest.raises(UserError, match="at most 3650d"):
        parse_instant("99999999d", NOW)  # was an OverflowError traceback


def test_instants_relative_iso_and_naive_as_utc() -> None:
    assert parse_instant("1h", NOW) == NOW - timedelta(hours=1)
    assert parse_instant("2025-01-01T00:00:00Z", NOW) == datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_instant("2025-01-01T02:00:00+02:00", NOW) == datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_instant("2025-01-01 00:00", NOW) == datetime(2025, 1, 1, tzinfo=UTC)
    with pytest.raises(UserError, match="not a time"):
        parse_instant("last tuesday", NOW)


# --- filters ---------------------------------------------------------------------------------


def test_empty_filter_matches_everything() -> None:
    assert DlqFilter().where() == ("TRUE", [])
    assert DlqFilter().is_empty and not DlqFilter(ids=(1,)).is_empty


def test_filter_fields_become_numbered_placeholders() -> None:
    since = NOW - timedelta(hours=1)
    sql, args = DlqFilter(ids=(3, 4), reasons=("no_route",), tenants=("acme",),
                          since=since).where(first_placeholder=2)
    assert sql == ("id = ANY($2::bigint[]) AND reason = ANY($3::text[]) AND "
                   "tenant = ANY($4::text[]) AND last_failed_at >= $5")
    assert args == [[3, 4], ["no_route"], ["acme"], since]


def test_filter_rejects_unknown_values_and_empty_windows() -> None:
    with pytest.raises(UserError, match="unknown reason 'nope'"):
        DlqFilter(reasons=("nope",))
    with pytest.raises(UserError, match="unknown status"):
        DlqFilter(statuses=("gone",))
    with pytest.raises(UserError, match="--since is after --until"):
        DlqFilter(since=NOW, until=NOW - timedelta(seconds=1))


def test_with_statuses_replaces_the_status_selection() -> None:
    f = DlqFilter(statuses=("replayed",), reasons=("expired",)).with_statuses("pending")
    assert f.statuses == ("pending",) and f.reasons == ("expired",)


# --- replay records ---------------------------------------------------------------------------


def row(**changes: object) -> DlqRow:
    values: dict[str, object] = dict(
        id=17, dlq_key="signals/2/40", reason="no_healthy_destination", error="down",
        signal_id="sig-1", tenant="acme", kind="alert", attempts=2, status="pending",
        original_topic="signals", original_partition=2, original_offset=40,
        original_key=b"sender-1",
        original_headers=[("traceparent", b"abc"), ("x-dlq-reason", b"stale"), ("n", None)],
        first_failed_at=NOW, last_failed_at=NOW, created_at=NOW, replayed_at=None,
        replay_count=0, discarded_at=None, discard_reason=None, original_timestamp=None,
        value_size=9, original_value=b'{"a": 1 }',
    )
    values.update(changes)
    return DlqRow(**values)  # type: ignore[arg-type]


def test_replay_record_is_the_original_plus_origin_headers() -> None:
    record = replay_record(row())
    assert (record.topic, record.key, record.value) == ("signals", b"sender-1", b'{"a": 1 }')
    assert record.timestamp_ms is None
    assert record.headers == [
        ("traceparent", b"abc"), ("n", None),  # originals kept in order, stale x-dlq-* dropped
        ("x-dlq-id", b"17"), ("x-dlq-original-topic", b"signals"),
        ("x-dlq-original-partition", b"2"), ("x-dlq-original-offset", b"40"),
        ("x-dlq-attempts", b"2"),  # in the order DLQ and retry records carry them (core.wire)
        ("x-dlq-first-failed-at", repr(NOW.timestamp()).encode()), ("x-signal-id", b"sig-1"),
    ]


def test_replay_record_restores_the_record_timestamp_and_a_tombstone() -> None:
    record = replay_record(row(original_timestamp=NOW, original_value=None, value_size=None,
                               signal_id=None, original_key=None))
    assert record.timestamp_ms == int(NOW.timestamp() * 1000)
    assert record.value is None and record.key is None
    assert "x-signal-id" not in dict(record.headers)


# --- reindex rows ------------------------------------------------------------------------------


def consumed(headers: list[tuple[str, bytes]], value: bytes | None = b'{"tenant": "t1"}',
             timestamp: int = 1735819200000) -> ConsumedRecord:
    return ConsumedRecord("router.dlq", 0, 5, b"k", value, timestamp, headers)


def test_reindex_row_from_the_engines_dlq_headers() -> None:
    entry = DlqEntry(reason=DlqReason.EXPIRED, error="too old", signal_id="s-9",
                     original_topic="signals", original_partition=1, original_offset=77,
                     original_key=b"k", original_value=b'{"tenant": "t1", "kind": "alert"}',
                     original_headers=[("trace", b"x")], attempts=3,
                     first_failed_at=1735819100.25)
    got = row_from_record(consumed(entry.kafka_headers(), entry.original_value))
    assert got is not None
    assert got["dlq_key"] == "signals/1/77" and got["reason"] == "expired"
    assert (got["attempts"], got["signal_id"], got["error"]) == (3, "s-9", "too old")
    assert (got["tenant"], got["kind"]) == ("t1", "alert")
    assert got["original_headers"] == [("trace", b"x")]
    assert got["first_failed_at"] == datetime.fromtimestamp(1735819100.25, UTC)
    assert got["last_failed_at"] == datetime(2025, 1, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("headers", [
    [],
    [("x-dlq-reason", b"no_route"), ("x-dlq-original-topic", b"s")],  # no partition/offset
    [("x-dlq-reason", b"made_up"), ("x-dlq-original-topic", b"s"),
     ("x-dlq-original-partition", b"0"), ("x-dlq-original-offset", b"1")],
    [("x-dlq-reason", b"no_route"), ("x-dlq-original-topic", b"s"),
     ("x-dlq-original-partition", b"zero"), ("x-dlq-original-offset", b"1")],
])
def test_records_that_are_not_dlq_records_are_skipped(headers: list[tuple[str, bytes]]) -> None:
    assert row_from_record(consumed(headers)) is None


NO_MASKING = Redactor.of(RedactPolicy(detectors=[]))


@given(st.binary(max_size=64))
def test_reindex_never_raises_on_any_value(value: bytes) -> None:
    headers = [("x-dlq-reason", b"invalid_json"), ("x-dlq-original-topic", b"s"),
               ("x-dlq-original-partition", b"0"), ("x-dlq-original-offset", b"1")]
    got = row_from_record(consumed(headers, value), NO_MASKING)
    assert got is not None and got["original_value"] == value and not got["masked"]
    masked = row_from_record(consumed(headers, value))  # default: every detector
    assert masked is not None and masked["masked"] is (masked["original_value"] != value)


def test_reindex_rows_are_masked_and_say_where_their_record_is() -> None:
    entry = DlqEntry(reason=DlqReason.RATE_LIMITED, error="tenant 'bob@example.com' is over",
                     signal_id="s-1", tenant="bob@example.com", original_topic="signals",
                     original_partition=1, original_offset=77, original_key=b"555-123-4567",
                     original_value=b'{"tenant": "bob@example.com", "payload": {"x": 1}}',
                     original_headers=[("ssn", b"123-45-6789")], first_failed_at=1735819100.0)
    got = row_from_record(consumed(entry.kafka_headers(), entry.original_value))
    assert got is not None and got["masked"] is True
    assert (got["dlq_topic"], got["dlq_partition"], got["dlq_offset"]) == ("router.dlq", 0, 5)
    assert "bob@" not in str(got) and "555-123" not in str(got) and "123-45" not in str(got)
    assert got["original_headers"] == [("ssn", b"[SSN]")]
    assert got["tenant"].startswith("***@example.com~h")


# --- display -----------------------------------------------------------------------------------


def test_bytes_are_text_json_or_base64() -> None:
    assert describe_bytes(None) == {"encoding": "null", "size": 0}
    assert describe_bytes(b"plain") == {"encoding": "text", "size": 5, "text": "plain"}
    assert describe_bytes(b'{"a":1}') == {"encoding": "json", "size": 7, "json": {"a": 1}}
    binary = describe_bytes(b"\xff\x00")
    assert binary["encoding"] == "base64" and base64.b64decode(binary["base64"]) == b"\xff\x00"
    assert binary["hex_preview"] == "ff 00"


def test_a_masked_entry_is_replayed_from_its_dlq_record_byte_exact() -> None:
    masked = row(masked=True, dlq_topic="router.dlq", dlq_partition=3, dlq_offset=9,
                 signal_id="***@example.com~h0123456789abcdef", original_key=b"[PHONE]",
                 original_value=b'{"to":"***@example.com"}')
    with pytest.raises(ValueError, match="masked"):
        replay_record(masked)
    original = ConsumedRecord(
        "router.dlq", 3, 9, b"555-123-4567", b'{"to": "bob@example.com"}', 0,
        [("traceparent", b"abc"), ("x-dlq-reason", b"no_healthy_destination"),
         ("x-dlq-original-topic", b"signals"), ("x-dlq-original-partition", b"2"),
         ("x-dlq-original-offset", b"40"), ("x-signal-id", b"s-bob@example.com")])
    assert original_problem(masked, original) is None
    record = replay_record(masked, original)
    assert (record.key, record.value) == (b"555-123-4567", b'{"to": "bob@example.com"}')
    headers = dict(record.headers)
    assert headers["traceparent"] == b"abc" and headers["x-signal-id"] == b"s-bob@example.com"
    assert headers["x-dlq-id"] == b"17" and "x-dlq-reason" not in headers
    preview = replay_record(masked, preview=True)  # what a dry run shows: the masked copy
    assert (preview.key, preview.value) == (b"[PHONE]", b'{"to":"***@example.com"}')


def test_a_masked_entry_whose_record_is_gone_or_replaced_is_not_replayable() -> None:
    masked = row(masked=True, dlq_topic="router.dlq", dlq_partition=3, dlq_offset=9)
    gone = original_problem(masked, None)
    assert gone is not None and "is gone from router.dlq partition 3 offset 9" in gone
    other = ConsumedRecord("router.dlq", 3, 9, b"k", b"v", 0, [
        ("x-dlq-original-topic", b"signals"), ("x-dlq-original-partition", b"2"),
        ("x-dlq-original-offset", b"41")])
    assert "not this entry's" in (original_problem(masked, other) or "")


def test_detail_of_an_entry_masked_at_rest_says_where_the_original_is() -> None:
    detail = entry_detail(row(masked=True, dlq_topic="router.dlq", dlq_partition=3,
                              dlq_offset=9))
    assert detail["masked"] is True and detail["masked_at_rest"] is True
    assert detail["dlq_record"] == {"topic": "router.dlq", "partition": 3, "offset": 9}


def test_detail_masks_value_key_headers_and_error_per_policy() -> None:
    redact = RedactPolicy(fields=["payload.secret"], detectors=["email"])
    r = row(original_value=b'{"payload": {"secret": 1, "to": "a.b@example.org"}}',
            original_key=b"a.b@example.org", error="bad address a.b@example.org",
            original_headers=[("reply-to", b"a.b@example.org")])
    detail = entry_detail(r, redact)
    assert "a.b@" not in str(detail)
    assert detail["value"]["json"]["payload"] == {"secret": "[REDACTED]",
                                                  "to": "***@example.org"}
    assert detail["masked"] is True
    assert "a.b@example.org" in str(entry_detail(r))  # without a policy nothing is masked


def test_a_reference_entry_is_not_replayed_and_says_where_its_original_is() -> None:
    from router_stream.core.refusals import as_reference
    from router_stream.dlq.replay import reference_problem

    assert reference_problem(row()) is None
    error = "no classification rule matched | stored as a reference: router.dlq: TooLarge"
    problem = reference_problem(row(error=error, original_value=None, value_size=None))
    assert problem == ("entry 17 not replayed: it is a reference (its record was too large for"
                       " the DLQ topic); the original is on signals partition 2 offset 40")
    # the marker the check goes by is the one as_reference writes
    from router_stream.core.deadletter import dead_letter
    from router_stream.core.models import DlqReason

    @dataclass
    class Rec:
        topic: str = "signals"
        partition: int = 2
        offset: int = 40
        key: bytes | None = b"k"
        value: bytes | None = b"{" * 10
        timestamp: int = 0
        headers: list = field(default_factory=list)

    ref = as_reference(dead_letter(Rec(), DlqReason.INVALID_JSON, "bad", 1.0), "too large")
    assert reference_problem(row(error=ref.entry.error)) is not None
