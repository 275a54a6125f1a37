"""Bytes off the wire to validated messages, or a :class:`Rejection` saying why not.

Parsing never raises: whatever bytes a producer sends, the caller gets a message or a rejection
with a DLQ reason and a one-line error naming the failing field. ``invalid_json`` means the bytes
are not JSON (orjson is strict: invalid UTF-8, NaN/Infinity, lone surrogates and numbers that
overflow a double are all rejected); ``invalid_signal`` means JSON of the wrong shape.

Signals take two paths. The fast one: ``msgspec`` decodes the bytes straight into a typed
:class:`_WireSignal` whose constraints are the signal's rules for the usual shapes (ids, ``ts``
as integer epoch milliseconds or text), and the :class:`Signal` is built from it positionally.
Anything that path refuses, or might read differently from orjson (``ts`` as a float, an
integer in the payload beyond 64 bits, nesting deeper than msgspec's limit), takes the checked
path: ``orjson`` and a plain-Python check per field, which names the failing field in the DLQ
error. The checked path defines what a signal is; the unit tests hold the fast path to it (same
signal or a fall back).
Measured side by side in docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgspec
import orjson
from pydantic import BaseModel, ValidationError

from router_stream.core.models import (
    CONTROL_ADAPTER,
    MAX_EPOCH_MS,
    MAX_ID_LEN,
    ControlCommand,
    DlqReason,
    HealthEvent,
    Outcome,
    Signal,
    deterministic_signal_id,
    to_epoch_seconds,
)
from router_stream.errors import SignalRejected, error_for_reason

__all__ = [
    "Rejection",
    "parse_control",
    "parse_health",
    "parse_outcome",
    "parse_signal",
]

_M = TypeVar("_M", bound=BaseModel)


@dataclass(slots=True, frozen=True)
class Rejection:
    """Why a record cannot become a message: goes to the DLQ with this reason and error."""

    reason: DlqReason
    error: str
    signal_id: str | None = None

    def to_error(self) -> SignalRejected:
        """The matching :mod:`router_stream.errors` exception, for callers that raise."""
        return error_for_reason(self.reason.value, self.error, signal_id=self.signal_id)


class _Invalid(Exception):
    """Internal: one field failed; carries the one-line error. Never escapes this module."""


_JSON_TYPE = {dict: "object", list: "array", str: "string", int: "number", float: "number",
              bool: "boolean", type(None): "null"}


def _json_type(value: object) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


_TOMBSTONE = "tombstone: a record with a null value is not a message"


def _decode(value: bytes | None) -> Any:
    if value is None:
        raise _Invalid(_TOMBSTONE)
    return orjson.loads(value)


# --- signals ---------------------------------------------------------------------------------


def parse_signal(value: bytes | None, *, record_ts_ms: int, now: float) -> Signal | Rejection:
    """Parse one ``signals`` record value.

    ``record_ts_ms`` is the Kafka record timestamp, used when the signal has no ``ts`` (a
    negative one, i.e. no timestamp, falls back to ``now``). A signal whose ``ttl_ms`` has
    already run out at ``now`` is rejected as ``expired`` here, before any routing work.
    """
    if value is None:
        return Rejection(DlqReason.INVALID_SIGNAL, _TOMBSTONE)
    try:
        wire = _decode_wire(value)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):  # deep nesting
        return _parse_checked(value, record_ts_ms, now)
    payload = wire.payload
    if payload is None:
        payload = {}
    else:
        try:
            ints_fit = _ints_fit(payload.values())
        except RecursionError:
            ints_fit = False
        if not ints_fit:
            return _parse_checked(value, record_ts_ms, now)
    wire_ts = wire.ts
    if type(wire_ts) is int:
        ts = wire_ts / 1000.0  # what to_epoch_seconds returns for it
    elif wire_ts is None:
        ts = record_ts_ms / 1000.0 if record_ts_ms >= 0 else now
    else:
        try:
            ts = to_epoch_seconds(wire_ts)
        except ValueError:
            return _parse_checked(value, record_ts_ms, now)
    sender_id = wire.sender_id
    signal_id = wire.signal_id
    if signal_id is None:
        try:
            signal_id = deterministic_signal_id(sender_id, ts, payload)
        except (TypeError, OverflowError):
            return _parse_checked(value, record_ts_ms, now)
    ttl_ms = wire.ttl_ms
    tenant = wire.tenant
    signal = Signal(signal_id, sender_id, ts, "default" if tenant is None else tenant, wire.kind,
                    wire.priority, ttl_ms, payload, wire.metric, wire.source_id, wire.value)
    if ttl_ms is not None and now > ts + ttl_ms / 1000.0:
        return _expired(signal, now)
    return signal


_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LEN)]
_U64_MAX = 2**64 - 1
_I64_MIN = -(2**63)


class _WireSignal(msgspec.Struct, gc=False):
    """A signal in its usual shape, for the fast path; see the module docstring.

    Every constraint is one the checked path enforces as well, or a narrower one: ``ts`` is
    integer epoch milliseconds or text (a float goes the checked way), and ``ttl_ms`` stops at
    the largest int64 (msgspec's bound limit; orjson reads integers up to 2**64 - 1 as
    integers). So whatever this accepts, the checked path accepts with the same values.
    """

    sender_id: _Id
    signal_id: _Id | None = None
    tenant: _Id | None = None
    ts: Annotated[int, msgspec.Meta(ge=0, le=MAX_EPOCH_MS)] | str | None = None
    kind: _Id | None = None
    priority: Annotated[int, msgspec.Meta(ge=0, le=9)] | None = None
    ttl_ms: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] | None = None
    payload: dict[str, Any] | None = None
    metric: _Id | None = None
    source_id: _Id | None = None
    value: float | None = None


_decode_wire = msgspec.json.Decoder(_WireSignal).decode


def _ints_fit(items: Iterable[Any]) -> bool:
    """Whether orjson would read every integer in ``items`` (decoded JSON) as msgspec did:
    orjson reads integers outside [-2**63, 2**64 - 1] as floats, msgspec as ints. Recursive,
    within msgspec's nesting limit; the caller takes a RecursionError as "no"."""
    for item in items:
        kind = type(item)
        if kind is int:
            if not _I64_MIN <= item <= _U64_MAX:
                return False
        elif kind is dict:
            if not _ints_fit(item.values()):
                return False
        elif kind is list and not _ints_fit(item):
            return False
    return True


def _expired(signal: Signal, now: float) -> Rejection:
    return Rejection(
        DlqReason.EXPIRED,
        f"expired: ts {signal.ts:.3f} + ttl_ms {signal.ttl_ms} is before now {now:.3f}",
        signal.signal_id,
    )


def _parse_checked(value: bytes, record_ts_ms: int, now: float) -> Signal | Rejection:
    """The checked path: orjson, then one plain-Python check per field (see the module
    docstring). Every rejection's reason and error text comes from here."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejection(DlqReason.INVALID_JSON, f"invalid JSON: {exc}")
    if type(data) is not dict:
        return Rejection(
            DlqReason.INVALID_SIGNAL, f"a signal must be a JSON object, got {_json_type(data)}"
        )
    default_ts = record_ts_ms / 1000.0 if record_ts_ms >= 0 else now
    try:
        signal = _signal_from_dict(data, default_ts)
    except _Invalid as exc:
        return Rejection(DlqReason.INVALID_SIGNAL, str(exc), _known_id(data))
    if signal.ttl_ms is not None and now > signal.ts + signal.ttl_ms / 1000.0:
        return _expired(signal, now)
    return signal


def _signal_from_dict(data: dict[str, Any], default_ts: float) -> Signal:
    # Checked in the order of the errors it reports: the first failing field names the problem.
    get = data.get
    sender_id = get("sender_id")
    if not (type(sender_id) is str and 0 < len(sender_id) <= MAX_ID_LEN):
        if sender_id is None:
            raise _Invalid("sender_id: required")
        _check_id(sender_id, "sender_id")
    ts = get("ts")
    if type(ts) is int and 0 <= ts <= MAX_EPOCH_MS:
        ts = ts / 1000.0  # what to_epoch_seconds returns for it
    else:
        ts = default_ts if ts is None else _ts_field(ts)
    payload = get("payload")
    if payload is None:
        payload = {}
    elif type(payload) is not dict:
        raise _Invalid(f"payload: must be an object, got {_json_type(payload)}")
    signal_id = get("signal_id")
    if signal_id is None:
        signal_id = _derived_id(sender_id, ts, payload)
    elif not (type(signal_id) is str and 0 < len(signal_id) <= MAX_ID_LEN):
        _check_id(signal_id, "signal_id")
    tenant = get("tenant")
    if tenant is None:
        tenant = "default"
    elif not (type(tenant) is str and 0 < len(tenant) <= MAX_ID_LEN):
        _check_id(tenant, "tenant")
    kind, metric, source_id = get("kind"), get("metric"), get("source_id")
    if kind is not None:
        _check_id(kind, "kind")
    if metric is not None:
        _check_id(metric, "metric")
    if source_id is not None:
        _check_id(source_id, "source_id")
    priority, ttl_ms, value = get("priority"), get("ttl_ms"), get("value")
    if priority is not None:
        priority = _integer(priority, "priority", 0, 9)
    if ttl_ms is not None:
        ttl_ms = _integer(ttl_ms, "ttl_ms", 1, None)
    if value is not None:
        value = _number(value, "value")
    return Signal(signal_id, sender_id, ts, tenant, kind, priority, ttl_ms, payload, metric,
                  source_id, value)


def _check_id(value: object, name: str) -> None:
    if type(value) is not str:
        raise _Invalid(f"{name}: must be a string, got {_json_type(value)}")
    if not value or len(value) > MAX_ID_LEN:
        raise _Invalid(f"{name}: must be 1 to {MAX_ID_LEN} characters, got {len(value)}")


def _ts_field(value: object) -> float:
    try:
        return to_epoch_seconds(value)
    except ValueError as exc:
        raise _Invalid(f"ts: {exc}") from None


def _integer(value: object, name: str, low: int, high: int | None) -> int:
    """An integer field's value. A number without a fraction (``5.0``) is that integer, as JSON
    Schema's ``integer`` holds: producers whose numbers are floats write ``5.0`` for 5."""
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int:
        raise _Invalid(f"{name}: must be an integer, got {_json_type(value)}")
    if value < low or (high is not None and value > high):
        bounds = f"{low} to {high}" if high is not None else f">= {low}"
        raise _Invalid(f"{name}: must be {bounds}, got {value}")
    return value


def _number(value: object, name: str) -> float:
    if type(value) is int or type(value) is float:
        return float(value)  # orjson never yields NaN/inf; big ints arrive as finite floats
    raise _Invalid(f"{name}: must be a number, got {_json_type(value)}")


def _derived_id(sender_id: str, ts: float, payload: dict[str, Any]) -> str:
    try:
        return deterministic_signal_id(sender_id, ts, payload)
    except (TypeError, OverflowError) as exc:  # defensive: orjson output always re-encodes
        raise _Invalid(f"payload: cannot be canonicalised: {exc}") from None


def _known_id(data: dict[str, Any]) -> str | None:
    """The producer's signal_id, if usable, so a rejected signal can still be traced."""
    signal_id = data.get("signal_id")
    if type(signal_id) is str and 0 < len(signal_id) <= MAX_ID_LEN:
        return signal_id
    return None


# --- the other inbound topics (low volume: pydantic validates) -------------------------------


def parse_health(value: bytes | None, *, record_ts_ms: int) -> HealthEvent | Rejection:
    """Parse a ``source-health`` value; ``ts`` defaults to the record timestamp."""
    return _parse_model(HealthEvent, value, {"ts": record_ts_ms})


def parse_outcome(value: bytes | None, *, record_ts_ms: int) -> Outcome | Rejection:
    """Parse an ``outcomes`` value; ``ts`` defaults to the record timestamp."""
    return _parse_model(Outcome, value, {"ts": record_ts_ms})


def parse_control(value: bytes | None) -> ControlCommand | Rejection:
    """Parse a ``router.control`` value into one of the ControlCommand variants."""
    data = _decode_object(value)
    if isinstance(data, Rejection):
        return data
    try:
        return CONTROL_ADAPTER.validate_python(data)
    except ValidationError as exc:
        return Rejection(DlqReason.INVALID_SIGNAL, _first_error(exc))


def _parse_model(
    model: type[_M], value: bytes | None, defaults: dict[str, Any]
) -> _M | Rejection:
    data = _decode_object(value)
    if isinstance(data, Rejection):
        return data
    for key, default in defaults.items():
        if data.get(key) is None:
            data[key] = default
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return Rejection(DlqReason.INVALID_SIGNAL, _first_error(exc))


def _decode_object(value: bytes | None) -> dict[str, Any] | Rejection:
    try:
        data = _decode(value)
    except orjson.JSONDecodeError as exc:
        return Rejection(DlqReason.INVALID_JSON, f"invalid JSON: {exc}")
    except _Invalid as exc:
        return Rejection(DlqReason.INVALID_SIGNAL, str(exc))
    if type(data) is not dict:
        return Rejection(
            DlqReason.INVALID_SIGNAL, f"expected a JSON object, got {_json_type(data)}"
        )
    return data


def _first_error(exc: ValidationError) -> str:
    """One line: the first error's field path and message, and how many more there were."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    path = ".".join(str(part) for part in first["loc"]) or "(root)"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{path}: {first['msg']}{more}"
