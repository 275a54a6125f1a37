"""Messages: validation rules, timestamp normalisation, deterministic ids, the error tree."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from router_stream import errors
from router_stream.core.models import (
    CONTROL_ADAPTER,
    BreakerForce,
    Decision,
    DlqEntry,
    DlqReason,
    HealthEvent,
    Outcome,
    OverrideSet,
    PolicyPublish,
    Signal,
    deterministic_signal_id,
    to_epoch_seconds,
)

JAN1 = 1704067200.0  # 2024-01-01T00:00:00Z


# --- timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "seconds"),
    [
        ("2024-01-01T00:00:00Z", JAN1),
        ("2024-01-01T01:00:00+01:00", JAN1),
        ("2024-01-01T00:00:00.250Z", JAN1 + 0.25),
        (1704067200000, JAN1),
        (1704067200500.0, JAN1 + 0.5),
        (0, 0.0),
    ],
)
def test_ts_forms_normalise_to_epoch_seconds(wire: object, seconds: float) -> None:
    assert to_epoch_seconds(wire) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("wire", "fragment"),
    [
        ("2024-01-01T00:00:00", "UTC offset"),
        ("yesterday", "not an RFC 3339"),
        (True, "boolean"),
        (-1, "out of range"),
        (10**16, "out of range"),
        ([1], "got list"),
    ],
)
def test_bad_ts_is_rejected_with_reason(wire: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        to_epoch_seconds(wire)


# --- Signal ----------------------------------------------------------------------------------


def test_signal_defaults_and_derived_id() -> None:
    signal = Signal(sender_id="s1", ts=1704067200000, payload={"a": 1})
    assert signal.tenant == "default"
    assert signal.ts == JAN1
    assert signal.signal_id.startswith("sig-") and len(signal.signal_id) == 36
    assert signal.signal_id == deterministic_signal_id("s1", JAN1, {"a": 1})


def test_explicit_signal_id_is_kept() -> None:
    assert Signal(signal_id="mine", sender_id="s", ts=0).signal_id == "mine"


def test_derived_id_ignores_ts_form_and_payload_key_order() -> None:
    a = Signal(sender_id="s", ts="2024-01-01T00:00:00Z", payload={"x": 1, "y": {"b": 2, "a": 1}})
    b = Signal(sender_id="s", ts=1704067200000, payload={"y": {"a": 1, "b": 2}, "x": 1})
    assert a.signal_id == b.signal_id


def test_derived_id_changes_with_each_input() -> None:
    base = deterministic_signal_id("s", JAN1, {"x": 1})
    assert deterministic_signal_id("t", JAN1, {"x": 1}) != base
    assert deterministic_signal_id("s", JAN1 + 0.001, {"x": 1}) != base
    assert deterministic_signal_id("s", JAN1, {"x": 2}) != base


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=5)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10,
)


@given(
    sender=st.text(min_size=1, max_size=20),
    ms=st.integers(0, 4_102_444_800_000),
    payload=st.dictionaries(st.text(max_size=6), json_values, max_size=5),
)
def test_derived_id_is_stable_across_reserialisation(
    sender: str, ms: int, payload: dict[str, object]
) -> None:
    first = deterministic_signal_id(sender, ms / 1000, payload)
    reshuffled = orjson.loads(orjson.dumps(dict(reversed(list(payload.items())))))
    assert deterministic_signal_id(sender, ms / 1000, reshuffled) == first
    assert first == deterministic_signal_id(sender, ms / 1000, payload)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"ts": 0}, "sender_id"),
        ({"sender_id": "", "ts": 0}, "sender_id"),
        ({"sender_id": "s", "ts": 0, "priority": 10}, "priority"),
        ({"sender_id": "s", "ts": 0, "priority": -1}, "priority"),
        ({"sender_id": "s", "ts": 0, "priority": True}, "priority"),
        ({"sender_id": "s", "ts": 0, "priority": 1.0}, "priority"),
        ({"sender_id": "s", "ts": 0, "ttl_ms": 0}, "ttl_ms"),
        ({"sender_id": "s", "ts": 0, "payload": []}, "payload"),
        ({"sender_id": "s", "ts": 0, "value": "3"}, "value"),
        ({"sender_id": "s", "ts": 0, "value": True}, "value"),
        ({"sender_id": "s", "ts": "noon"}, "ts"),
        ({"sender_id": "s", "ts": 0, "tenant": "x" * 300}, "tenant"),
    ],
)
def test_signal_validation_names_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Signal.model_validate(fields)
    assert field in {str(err["loc"][0]) for err in info.value.errors()}


def test_uncanonicalisable_payload_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="cannot derive signal_id"):
        Signal(sender_id="s", ts=0, payload={"big": 2**70})


def test_signal_is_frozen_and_ignores_unknown_fields() -> None:
    signal = Signal.model_validate({"sender_id": "s", "ts": 0, "future_field": 1})
    assert not hasattr(signal, "future_field")
    with pytest.raises(ValidationError):
        signal.tenant = "other"  # type: ignore[misc]


def test_trusted_construction_equals_validated_construction() -> None:
    validated = Signal(sender_id="s", ts=1000, kind="alert", priority=3, payload={"a": [1]},
                       metric="m", source_id="src", value=1.5, ttl_ms=10)
    trusted = Signal.trusted(validated.model_dump())
    assert trusted == validated
    assert trusted.model_dump_json() == validated.model_dump_json()
    assert trusted.model_fields_set == validated.model_fields_set | set(Signal.model_fields)
    with pytest.raises(ValidationError):
        trusted.kind = "x"  # type: ignore[misc]


def test_expiry() -> None:
    signal = Signal(sender_id="s", ts=JAN1 * 1000, ttl_ms=2000)
    assert signal.expires_at == JAN1 + 2
    assert not signal.is_expired(JAN1 + 2)
    assert signal.is_expired(JAN1 + 2.001)
    assert not Signal(sender_id="s", ts=0).is_expired(1e12)


# --- other messages --------------------------------------------------------------------------


def test_health_event_ranges_and_ts() -> None:
    event = HealthEvent(source_id="a", ts="2024-01-01T00:00:00Z", error_rate=0.1,
                        last_data_ts=1704067200000)
    assert event.ts == event.last_data_ts == JAN1
    with pytest.raises(ValidationError):
        HealthEvent(source_id="a", ts=0, error_rate=1.5)
    with pytest.raises(ValidationError):
        HealthEvent(source_id="a", ts=0, latency_ms=-1)


def test_outcome_reward_bounds() -> None:
    assert Outcome(signal_id="s", destination="d", ok=True, reward=1.0).reward == 1.0
    for bad in (-0.1, 1.1):
        with pytest.raises(ValidationError):
            Outcome(signal_id="s", destination="d", ok=True, reward=bad)


@pytest.mark.parametrize(
    ("payload", "cls"),
    [
        ({"type": "policy_publish", "policy_yaml": "routes: {}", "version": "p-1"}, PolicyPublish),
        ({"type": "override_set", "override_id": "o1", "destinations": ["a"], "expires_at": 5.0},
         OverrideSet),
        ({"type": "breaker_force", "target": "pager", "state": "open"}, BreakerForce),
    ],
)
def test_control_commands_dispatch_on_type(payload: dict[str, object], cls: type) -> None:
    assert isinstance(CONTROL_ADAPTER.validate_python(payload), cls)


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "reboot"},
        {"type": "override_set", "override_id": "o1", "destinations": [], "expires_at": 5.0},
        {"type": "breaker_force", "target": "pager", "state": "half_open"},
        {"type": "override_clear", "override_id": "o1", "surprise": 1},
    ],
)
def test_bad_control_commands_are_rejected(payload: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CONTROL_ADAPTER.validate_python(payload)


def _decision() -> Decision:
    return Decision(
        decision_id="d1", signal_id="s1", tenant="t", kind="alert", destinations=["pager"],
        strategy="first_healthy", tier=0, policy_version="p-abc", confidence=0.9,
        trust={"pager": 0.8}, breakers={"pager": "closed"}, input_topic="signals",
        input_partition=2, input_offset=7, decided_at=2.0, signal_ts=1.0,
    )


def test_decision_serialises_every_spec_field() -> None:
    body = orjson.loads(_decision().to_json())
    for name in ("decision_id", "signal_id", "tenant", "kind", "destinations", "strategy", "tier",
                 "policy_version", "confidence", "trust", "breakers", "input_topic",
                 "input_partition", "input_offset", "decided_at", "signal_ts", "value", "method",
                 "sources_used", "outliers"):
        assert name in body


def test_dlq_entry_headers() -> None:
    entry = DlqEntry(
        reason=DlqReason.EXPIRED, error="too\nold", signal_id="s1", original_topic="signals",
        original_partition=1, original_offset=42, original_value=b"\x00raw",
        original_headers=[("trace", b"t1"), ("x-dlq-reason", b"stale")], first_failed_at=5.5,
    )
    assert entry.error == "too old"
    headers = dict(entry.kafka_headers())
    assert headers["x-dlq-reason"] == b"expired"
    assert headers["x-dlq-original-offset"] == b"42"
    assert headers["x-signal-id"] == b"s1"
    assert headers["trace"] == b"t1"
    assert [k for k, _ in entry.kafka_headers()].count("x-dlq-reason") == 1


# --- error tree ------------------------------------------------------------------------------


def test_every_dlq_reason_has_exactly_one_error_class() -> None:
    assert set(errors.REASON_TO_ERROR) == {reason.value for reason in DlqReason}
    for reason, cls in errors.REASON_TO_ERROR.items():
        assert cls.reason == reason
        assert issubclass(cls, errors.SignalRejected)
    assert len(set(errors.REASON_TO_ERROR.values())) == len(DlqReason)


def test_retriable_flags() -> None:
    assert errors.BrokerUnavailable.retriable and errors.DatabaseUnavailable.retriable
    assert errors.OperationTimeout.retriable
    assert errors.NoHealthyDestination.retriable
    assert not errors.InvalidJson.retriable and not errors.ProcessingError.retriable
    assert not errors.UserError.retriable


def test_policy_error_is_a_user_error_listing_issues() -> None:
    exc = errors.PolicyError([("routes.a", "bad (line 3)"), ("", "empty")], source="p.yaml")
    assert isinstance(exc, errors.UserError)
    assert exc.lines() == ["routes.a: bad (line 3)", "empty"]
    assert "p.yaml" in str(exc) and "routes.a: bad (line 3)" in str(exc)


def test_error_for_reason_falls_back_to_processing_error() -> None:
    assert isinstance(errors.error_for_reason("expired", "x", signal_id="s"), errors.Expired)
    assert isinstance(errors.error_for_reason("nope", "x"), errors.ProcessingError)
