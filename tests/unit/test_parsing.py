"""Bytes to Signal / HealthEvent / Outcome / ControlCommand, or a Rejection: never an exception."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from router_stream.core.models import (
    MAX_ID_LEN,
    DlqReason,
    HealthEvent,
    Outcome,
    OverrideClear,
    Signal,
    deterministic_signal_id,
    to_epoch_seconds,
)
from router_stream.core.parsing import (
    Rejection,
    parse_control,
    parse_health,
    parse_outcome,
    parse_signal,
)
from router_stream.core.parsing import _parse_checked as parse_checked
from router_stream.errors import InvalidSignal
from tests.support.schemas import schema_errors

NOW = 1704067200.0


def parse(value: bytes | None, record_ts_ms: int = 1704067100000) -> Signal | Rejection:
    return parse_signal(value, record_ts_ms=record_ts_ms, now=NOW)


def rejected(value: bytes | None) -> Rejection:
    result = parse(value)
    assert isinstance(result, Rejection), result
    return result


def test_minimal_signal_gets_defaults() -> None:
    signal = parse(b'{"sender_id": "s1"}')
    assert isinstance(signal, Signal)
    assert signal.tenant == "default"
    assert signal.ts == 1704067100.0  # the record timestamp
    assert signal.payload == {}
    assert signal.signal_id == deterministic_signal_id("s1", 1704067100.0, {})


def test_missing_record_timestamp_falls_back_to_now() -> None:
    signal = parse(b'{"sender_id": "s1"}', record_ts_ms=-1)
    assert isinstance(signal, Signal) and signal.ts == NOW


def test_full_signal() -> None:
    body = {"signal_id": "x1", "tenant": "acme", "sender_id": "s", "ts": "2024-01-01T00:00:00Z",
            "kind": "observation", "priority": 7, "ttl_ms": 60000, "payload": {"a": [1, 2]},
            "metric": "temp", "source_id": "sensor-1", "value": 21}
    signal = parse(orjson.dumps(body))
    assert isinstance(signal, Signal)
    assert msgspec.structs.asdict(signal) == {**body, "ts": NOW, "value": 21.0}
    assert isinstance(signal.value, float)


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"\xff\xfe", b'{"a": NaN}', b'{"a": Infinity}', b"1e999", b'"\\ud800"',
     b"[" * 2000 + b"]" * 2000],
)
def test_not_json_is_invalid_json(raw: bytes) -> None:
    rejection = rejected(raw)
    assert rejection.reason is DlqReason.INVALID_JSON
    assert rejection.error.startswith("invalid JSON: ")
    assert "\n" not in rejection.error


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "tombstone"),
        (b"[]", "must be a JSON object, got array"),
        (b'"s"', "got string"),
        (b"null", "got null"),
        (b"{}", "sender_id: required"),
        (b'{"sender_id": 5}', "sender_id: must be a string, got number"),
        (b'{"sender_id": ""}', "sender_id: must be 1 to 256 characters"),
        (b'{"sender_id": "s", "ts": true}', "ts: must be an RFC 3339"),
        (b'{"sender_id": "s", "ts": "2024-01-01"}', "ts: not an RFC 3339 timestamp"),
        (b'{"sender_id": "s", "ts": "soon"}', "ts: not an RFC 3339 timestamp"),
        (b'{"sender_id": "s", "payload": [1]}', "payload: must be an object, got array"),
        (b'{"sender_id": "s", "priority": 10}', "priority: must be 0 to 9, got 10"),
        (b'{"sender_id": "s", "priority": "high"}', "priority: must be an integer, got string"),
        (b'{"sender_id": "s", "priority": true}', "priority: must be an integer, got boolean"),
        (b'{"sender_id": "s", "priority": 5.5}', "priority: must be an integer, got number"),
        (b'{"sender_id": "s", "priority": 9.0e1}', "priority: must be 0 to 9, got 90"),
        (b'{"sender_id": "s", "ttl_ms": 0.0}', "ttl_ms: must be >= 1, got 0"),
        (b'{"sender_id": "s", "ttl_ms": 0}', "ttl_ms: must be >= 1, got 0"),
        (b'{"sender_id": "s", "value": "1"}', "value: must be a number, got string"),
        (b'{"sender_id": "s", "tenant": {}}', "tenant: must be a string, got object"),
        (b'{"sender_id": "s", "kind": ""}', "kind: must be 1 to 256 characters"),
        (b'{"sender_id": "s", "metric": 1}', "metric: must be a string"),
        (b'{"sender_id": "s", "source_id": []}', "source_id: must be a string"),
        (b'{"sender_id": "s", "signal_id": 7}', "signal_id: must be a string"),
    ],
)
def test_wrong_shapes_are_invalid_signal_with_field_path(raw: bytes | None, message: str) -> None:
    rejection = rejected(raw)
    assert rejection.reason is DlqReason.INVALID_SIGNAL
    assert message in rejection.error


def test_an_integer_written_with_a_fraction_of_zero_is_that_integer() -> None:
    """JSON Schema's ``integer`` (signal.schema.json) includes ``5.0``; so does the parser."""
    signal = parse(b'{"sender_id": "s", "priority": 5.0, "ttl_ms": 6e5}')
    assert isinstance(signal, Signal)
    assert (signal.priority, signal.ttl_ms) == (5, 600000)
    assert type(signal.priority) is int and type(signal.ttl_ms) is int
    assert schema_errors("signal.schema.json", {"sender_id": "s", "priority": 5.0,
                                                "ttl_ms": 6e5}) == []


def test_rejection_keeps_the_signal_id_when_known() -> None:
    rejection = rejected(b'{"signal_id": "abc", "sender_id": 1}')
    assert rejection.signal_id == "abc"
    error = rejection.to_error()
    assert isinstance(error, InvalidSignal) and error.signal_id == "abc"


def test_expired_signal_is_rejected_with_its_id() -> None:
    raw = orjson.dumps(
        {"signal_id": "e1", "sender_id": "s", "ts": (NOW - 10) * 1000, "ttl_ms": 5000}
    )
    rejection = rejected(raw)
    assert rejection.reason is DlqReason.EXPIRED and rejection.signal_id == "e1"
    fresh = orjson.dumps({"sender_id": "s", "ts": (NOW - 10) * 1000, "ttl_ms": 10000})
    assert isinstance(parse(fresh), Signal)  # exactly at the deadline is still in time


def test_null_optional_fields_mean_absent() -> None:
    signal = parse(b'{"sender_id": "s", "tenant": null, "payload": null, "kind": null, "ts": null}')
    assert isinstance(signal, Signal)
    assert signal.tenant == "default" and signal.payload == {} and signal.kind is None


def test_deterministic_id_is_stable_across_key_order_and_ts_form() -> None:
    a = parse(b'{"sender_id": "s", "ts": 1704067200000, "payload": {"a": 1, "b": 2}}')
    b = parse(b'{"payload": {"b": 2, "a": 1}, "ts": "2024-01-01T00:00:00Z", "sender_id": "s"}')
    assert isinstance(a, Signal) and isinstance(b, Signal)
    assert a.signal_id == b.signal_id


# --- ts is RFC 3339's date-time, as the topics' JSON Schemas say ------------------------------

RFC3339_READS = {  # text -> epoch seconds
    "2024-01-01T00:00:00Z": 1704067200.0,
    "2024-01-01t00:00:00z": 1704067200.0,
    "2024-01-01T00:00:00.5+01:00": 1704067200.0 - 3600 + 0.5,
    "2024-01-01T00:00:00.123456789-08:00": 1704067200.0 + 8 * 3600 + 0.123456,  # to the µs
    "2024-01-01T00:00:00+23:59": 1704067200.0 - 23 * 3600 - 59 * 60,
    "1969-12-31T23:59:59Z": -1.0,
    "0001-01-01T00:00:00Z": -62135596800.0,  # the first instant a UTC datetime holds
    "9999-12-31T23:59:59.999Z": 253402300799.999,  # MAX_EPOCH_MS, where numbers end too
}
RFC3339_REFUSED = [
    "2024-01-01 00:00:00Z",  # ISO 8601 and RFC 3339's note allow a space; its grammar does not
    "2024-01-01T00:00Z", "2024-01-01T00Z", "20240101T000000Z", "2024-W01-1T00:00:00Z",
    "2024-01-01T00:00:00,5Z", "2024-01-01T00:00:00+0100", "2024-01-01T00:00:00+01",
    "2024-13-01T00:00:00Z", "2024-01-01T00:00:00+24:00", "\uff12024-01-01T00:00:00Z",
    "2024-01-01T00:00:00+00:60", "2024-01-01T00:00:00-05:99",  # fromisoformat reads +01:39
    "2024-01-01T00:00:60Z",  # a leap second: RFC 3339 allows it, datetime cannot hold it
]


RFC3339_OUT_OF_RANGE = [  # valid RFC 3339, but their instant is outside what a UTC datetime holds
    "9999-12-31T23:59:59-00:01", "9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59.9995Z",
    "0001-01-01T00:00:00+00:01", "0001-01-01T23:00:00+23:59",
]


@pytest.mark.parametrize(("ts", "seconds"), RFC3339_READS.items())
def test_rfc3339_timestamps_are_read(ts: str, seconds: float) -> None:
    signal = parse(orjson.dumps({"sender_id": "s", "ts": ts}))
    assert isinstance(signal, Signal)
    assert signal.ts == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize(("ts", "why"), [
    *((ts, "not an RFC 3339 timestamp") for ts in RFC3339_REFUSED),
    *((ts, "RFC 3339 timestamp out of range") for ts in RFC3339_OUT_OF_RANGE),
])
def test_other_iso8601_forms_and_text_out_of_range_are_refused(ts: str, why: str) -> None:
    result = parse(orjson.dumps({"sender_id": "s", "ts": ts}))
    assert isinstance(result, Rejection)
    assert result.reason is DlqReason.INVALID_SIGNAL
    assert why in result.error


def test_a_zoneless_timestamp_is_refused_by_name() -> None:
    result = parse(b'{"sender_id": "s", "ts": "2024-01-01T00:00:00"}')
    assert isinstance(result, Rejection)
    assert "needs a UTC offset or 'Z'" in result.error


# --- both paths agree with a reference model of the rules ----------------------------------

_Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN)]


class ReferenceSignal(BaseModel):
    """The signal rules written as a pydantic model, independently of the parser: the oracle
    for what a valid signal is and which values it gets."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    signal_id: _Id
    sender_id: _Id
    ts: float
    tenant: _Id = "default"
    kind: _Id | None = None
    priority: int | None = Field(default=None, ge=0, le=9, strict=True)
    ttl_ms: int | None = Field(default=None, gt=0, strict=True)
    payload: dict[str, Any] = Field(default_factory=dict)
    metric: _Id | None = None
    source_id: _Id | None = None
    value: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _derive_id(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("signal_id") is not None:
            return data
        sender, payload = data.get("sender_id"), data.get("payload", {})
        try:
            ts = to_epoch_seconds(data.get("ts"))
        except ValueError:
            return data
        if isinstance(sender, str) and sender and isinstance(payload, dict):
            return {**data, "signal_id": deterministic_signal_id(sender, ts, payload)}
        return data

    @field_validator("ts", mode="before")
    @classmethod
    def _normalise_ts(cls, value: object) -> float:
        return to_epoch_seconds(value)

    @field_validator("priority", "ttl_ms", mode="before")
    @classmethod
    def _integral_number(cls, value: object) -> object:
        """JSON Schema's ``integer``: a number without a fraction, ``5.0`` included."""
        return int(value) if type(value) is float and value.is_integer() else value

    @field_validator("value", mode="before")
    @classmethod
    def _no_bool_value(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value


field_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 20), st.integers(0, 2**60),
    st.integers(2**63 - 2, 2**64 + 2), st.integers(-(2**70), 2**70),
    st.text(max_size=3),
    st.sampled_from(["x" * MAX_ID_LEN, "x" * (MAX_ID_LEN + 1), "\u00e9" * MAX_ID_LEN]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(-(2**53), 2**53), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(-(2**53), 2**53), max_size=2),
    st.dictionaries(st.text(max_size=2), st.lists(st.integers(-(2**64), 2**64) | st.floats(
        allow_nan=False, allow_infinity=False), max_size=2), max_size=2),
    st.sampled_from(["2024-01-01T00:00:00", "s", *RFC3339_READS, *RFC3339_REFUSED,
                     *RFC3339_OUT_OF_RANGE]),
)
signal_dicts = st.fixed_dictionaries(
    {},
    optional={name: field_values for name in (
        "signal_id", "tenant", "sender_id", "ts", "kind", "priority", "ttl_ms", "payload",
        "metric", "source_id", "value", "unknown")},
)


def _json(value: object) -> bytes:
    """JSON text for ``value``; integers beyond 64 bits written out in full, as a producer
    in another language may (orjson refuses to encode them)."""
    return msgspec.json.encode(value)


def _wire_form(signal: Signal | Rejection) -> object:
    """Every value of a parse result in a form that tells ``1`` from ``1.0`` and ``-0.0``."""
    if isinstance(signal, Rejection):
        return signal
    return msgspec.json.encode(signal)


@given(signal_dicts)
def test_parser_accepts_exactly_what_the_reference_model_accepts(data: dict[str, Any]) -> None:
    raw = _json(data)
    result = parse_signal(raw, record_ts_ms=0, now=0.0)  # now=0: nothing is expired
    model_input = {k: v for k, v in orjson.loads(raw).items() if v is not None}
    model_input.setdefault("ts", 0)
    try:
        expected: ReferenceSignal | None = ReferenceSignal.model_validate(model_input)
    except (ValidationError, TypeError):  # TypeError: a payload that cannot be canonicalised
        expected = None
    if expected is None:
        assert isinstance(result, Rejection)
        assert result.reason is DlqReason.INVALID_SIGNAL
    else:
        assert isinstance(result, Signal)
        assert msgspec.structs.asdict(result) == expected.model_dump()


@given(signal_dicts)
def test_what_the_parser_accepts_is_valid_by_the_signal_schema(data: dict[str, Any]) -> None:
    """A signal the router routes reaches consumers unchanged inside a RoutedSignal, whose schema
    includes the signal's: so every signal the parser accepts must be valid by that schema."""
    raw = _json(data)
    if isinstance(parse_signal(raw, record_ts_ms=0, now=0.0), Signal):
        assert schema_errors("signal.schema.json", orjson.loads(raw)) == []


@given(signal_dicts)
def test_fast_path_gives_what_the_checked_path_gives(data: dict[str, Any]) -> None:
    raw = _json(data)
    fast = parse_signal(raw, record_ts_ms=1704067100000, now=NOW)
    assert _wire_form(fast) == _wire_form(parse_checked(raw, 1704067100000, NOW))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"sender_id": "s", "payload": {"big": 18446744073709551616}}',
        b'{"sender_id": "s", "payload": {"a": [{"b": -9223372036854775809}]}}',
        b'{"sender_id": "s", "payload": {"edge": 18446744073709551615, "low": -9223372036854775808}}',
        b'{"sender_id": "s", "ttl_ms": 18446744073709551615, "ts": 1}',
        b'{"sender_id": "s", "ttl_ms": 18446744073709551616}',
        b'{"sender_id": "s", "ts": 1.5e12}',
        b'{"sender_id": "s", "ts": "2024-01-01T00:00:00Z"}',
        b'{"sender_id": "s", "value": -0.0}',
        b'{"sender_id": "s", "value": 123456789012345678901234567890}',
        b'{"sender\u005fid": "s"}',
        b'{"sender_id": "a", "sender_id": "b", "payload": {"k": 1, "k": 2.0}}',
        b'{"sender_id": "s", "payload": {"deep": ' + b"[" * 1020 + b"]" * 1020 + b"}}",
        b'{"sender_id": "s", "payload": {"deep": ' + b"[" * 900 + b"1" + b"]" * 900 + b"}}",
        b'{"sender_id": "s", "signal_id": "x", "payload": {"d": ' + b"[" * 200 + b"]" * 200 + b"}}",
        b'{"sender_id": "s", "unknown": NaN}',
        b'{"sender_id": "s", "signal_id": ""}',
    ],
)
def test_fast_path_hands_unusual_input_to_the_checked_path(raw: bytes) -> None:
    fast = parse_signal(raw, record_ts_ms=1704067100000, now=NOW)
    assert _wire_form(fast) == _wire_form(parse_checked(raw, 1704067100000, NOW))


# --- never raises ----------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_parse_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    assert isinstance(parse(raw), Signal | Rejection)


json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["sender_id", "ts", "payload", "kind", "priority", "value", "x"])
        | st.text(max_size=5),
        inner, max_size=6),
    max_leaves=20,
)


@given(json_docs)
def test_parse_never_raises_on_arbitrary_json(doc: Any) -> None:
    try:
        raw = orjson.dumps(doc)
    except TypeError:  # integers beyond 64 bits cannot be encoded; not our input
        return
    result = parse(raw)
    assert isinstance(result, Signal | Rejection)
    if isinstance(result, Rejection):
        assert result.error and "\n" not in result.error


@given(
    st.text(min_size=1, max_size=30),
    st.dictionaries(st.text(max_size=5), st.integers(-(2**53), 2**53), max_size=4),
)
def test_parsed_id_is_deterministic(sender: str, payload: dict[str, int]) -> None:
    raw = orjson.dumps({"sender_id": sender, "ts": 1704067200123, "payload": payload})
    first, second = parse(raw), parse(raw)
    assert isinstance(first, Signal) and isinstance(second, Signal)
    assert first.signal_id == second.signal_id
    assert first.signal_id == deterministic_signal_id(sender, 1704067200.123, payload)


# --- health / outcome / control --------------------------------------------------------------


def test_parse_health_defaults_ts_to_record_time() -> None:
    event = parse_health(b'{"source_id": "db", "ok": false, "latency_ms": 12}', record_ts_ms=5000)
    assert isinstance(event, HealthEvent) and event.ts == 5.0 and event.ok is False


@pytest.mark.parametrize(
    ("raw", "reason", "fragment"),
    [
        (b"nope", DlqReason.INVALID_JSON, "invalid JSON"),
        (b"[]", DlqReason.INVALID_SIGNAL, "expected a JSON object"),
        (b'{"source_id": "db", "error_rate": 2}', DlqReason.INVALID_SIGNAL, "error_rate:"),
        (b'{"ok": true}', DlqReason.INVALID_SIGNAL, "source_id: Field required"),
    ],
)
def test_parse_health_rejections(raw: bytes, reason: DlqReason, fragment: str) -> None:
    result = parse_health(raw, record_ts_ms=0)
    assert isinstance(result, Rejection) and result.reason is reason and fragment in result.error


def test_parse_outcome() -> None:
    outcome = parse_outcome(b'{"signal_id": "s", "destination": "d", "ok": true, "reward": 0.5}',
                            record_ts_ms=2000)
    assert isinstance(outcome, Outcome) and outcome.reward == 0.5 and outcome.ts == 2.0
    bad = parse_outcome(b'{"signal_id": "s", "destination": "d", "ok": true, "reward": 5}',
                        record_ts_ms=0)
    assert isinstance(bad, Rejection) and bad.error.startswith("reward:")


def test_parse_control() -> None:
    clear = parse_control(b'{"type": "override_clear", "override_id": "o"}')
    assert isinstance(clear, OverrideClear)
    bad = parse_control(b'{"type": "launch"}')
    assert isinstance(bad, Rejection) and bad.reason is DlqReason.INVALID_SIGNAL
    assert isinstance(parse_control(None), Rejection)
