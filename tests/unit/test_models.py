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


def test_signal_defaults() -> None:
    signal = Signal("id", "s1", JAN1)
    assert signal.tenant == "default" and signal.payload == {} and signal.kind is None
    assert Signal("id", "s1", JAN1).payload is not signal.payload  # a fresh dict each time


def test_derived_id_ignores_payload_key_order() -> None:
    a = deterministic_signal_id("s", JAN1, {"x": 1, "y": {"b": 2, "a": 1}})
    assert a == deterministic_signal_id("s", JAN1, {"y": {"a": 1, "b": 2}, "x": 1})


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


def test_payload_beyond_json_cannot_derive_an_id() -> None:
    with pytest.raises(TypeError):
        deterministic_signal_id("s", 0, {"big": 2**70})


def test_signal_is_frozen() -> None:
    signal = Signal("id", "s", 0.0)
    with pytest.raises(AttributeError):
        signal.tenant = "other"  # type: ignore[misc]


def test_expiry() -> None:
    signal = Signal("id", "s", JAN1, ttl_ms=2000)
    assert signal.expires_at == JAN1 + 2
    assert not signal.is_expired(JAN1 + 2)
    assert signal.is_expired(JAN1 + 2.001)
    assert not Signal("id", "s", 0.0).is_expired(1e12)


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
