"""The messages router-stream reads and writes (SPEC §2, §3): one type per topic value.

Inbound messages other than signals (:class:`HealthEvent`, :class:`Outcome`,
:class:`ControlCommand`) and the DLQ record (:class:`DlqEntry`) are frozen pydantic models: they
are validated at the edge, and a validated value is never changed afterwards.

:class:`Signal`, built once per signal, is a frozen ``msgspec.Struct`` that only the parser
(:mod:`router_stream.core.parsing`) builds, after validating (its cost: docs/performance.md).
:class:`Decision` is a slotted dataclass: the shape of a ``router.decisions`` value (its fields,
in order, are the value's members) and what readers decode it into; the engine writes the value
itself, from parts (:class:`~router_stream.core.wire.OutputEncoder`), without building one.

Timestamps are epoch seconds (``float``) everywhere inside the core; :func:`to_epoch_seconds`
normalises the two wire forms (RFC 3339 text, epoch milliseconds).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol, Self, cast

import msgspec
import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

__all__ = [
    "MAX_EPOCH_MS",
    "BreakerForce",
    "BreakerReset",
    "ControlCommand",
    "Decision",
    "DlqEntry",
    "DlqReason",
    "HealthEvent",
    "InboundRecord",
    "Outcome",
    "OverrideClear",
    "OverrideSet",
    "PolicyPublish",
    "PolicyReload",
    "RolloutRollback",
    "Signal",
    "CONTROL_ADAPTER",
    "deterministic_signal_id",
    "to_epoch_seconds",
]

MAX_EPOCH_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: larger values are certainly not epoch milliseconds."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EARLIEST_S = (datetime.min.replace(tzinfo=UTC) - _EPOCH).total_seconds()  # 0001-01-01T00:00:00Z
_LATEST_S = MAX_EPOCH_MS / 1000

MAX_ID_LEN = 256
"""Ids travel as Kafka keys and Postgres keys; bound them so one signal cannot bloat either."""


class DlqReason(StrEnum):
    """Why a record is in ``router.dlq`` (SPEC §2: a closed, documented set).

    Each reason has exactly one error class in :data:`router_stream.errors.REASON_TO_ERROR`.
    """

    INVALID_JSON = "invalid_json"
    INVALID_SIGNAL = "invalid_signal"
    UNCLASSIFIED = "unclassified"
    NO_ROUTE = "no_route"
    NO_HEALTHY_DESTINATION = "no_healthy_destination"
    RATE_LIMITED = "rate_limited"
    EXPIRED = "expired"
    DUPLICATE = "duplicate"
    PROCESSING_ERROR = "processing_error"
    RETRIES_EXHAUSTED = "retries_exhausted"


class InboundRecord(Protocol):
    """What the core needs from a consumed Kafka record; adapters satisfy it structurally.

    The core never imports a Kafka client's record type (quixstreams does the same).
    """

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


# --- timestamps and ids ----------------------------------------------------------------------


# RFC 3339 section 5.6's date-time (ASCII digits only; seconds required; '.' before a fraction);
# group 1 is the offset, which the grammar requires and this reports by name when it is missing.
# Its hours and minutes are checked here: datetime.fromisoformat reads "+00:99" as +01:39.
# datetime.fromisoformat alone would also take ISO 8601's other forms (week dates, basic format,
# a space for 'T', minutes without seconds), which the topics' JSON Schemas refuse.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"([Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)


def to_epoch_seconds(value: object) -> float:
    """Normalise a wire timestamp to epoch seconds.

    Accepts RFC 3339 text (an explicit UTC offset or ``Z`` is required: a zone-less time is
    ambiguous, and guessing would misplace the signal by hours) or epoch **milliseconds** as a
    JSON number. Raises ``ValueError`` with a one-line reason otherwise.

    Text names an instant from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z, as a number
    ends at the latter: the range of a UTC datetime, so that a decision's ``signal_ts`` is
    always a time its Postgres row (and any other reader's datetime) holds. Offsets can push
    text in the years 0001 and 9999 past either end (``9999-12-31T23:59:59-00:01``).
    """
    kind = type(value)
    if kind is int or kind is float:
        value = cast(float, value)
        if not math.isfinite(value) or value < 0 or value > MAX_EPOCH_MS:
            raise ValueError(f"epoch milliseconds out of range: {value!r}")
        return value / 1000.0
    if kind is str:
        value = cast(str, value)
        shape = _RFC3339.fullmatch(value)
        if shape is None:
            raise ValueError(f"not an RFC 3339 timestamp: {value[:64]!r}")
        if shape.group(1) is None:
            raise ValueError(f"RFC 3339 timestamp needs a UTC offset or 'Z': {value[:64]!r}")
        try:
            parsed = datetime.fromisoformat(value.upper())  # RFC 3339 allows 't' and 'z'
        except ValueError:  # a date or time out of range: month 13, second 60, ...
            raise ValueError(f"not an RFC 3339 timestamp: {value[:64]!r}") from None
        seconds = (parsed - _EPOCH).total_seconds()  # ~20% faster than .timestamp()
        if not _EARLIEST_S <= seconds <= _LATEST_S:
            raise ValueError("RFC 3339 timestamp out of range (0001-01-01T00:00:00Z to "
                             f"9999-12-31T23:59:59.999Z in UTC): {value[:64]!r}")
        return seconds
    if kind is bool:
        raise ValueError("must be an RFC 3339 string or epoch milliseconds, not a boolean")
    raise ValueError(f"must be an RFC 3339 string or epoch milliseconds, got {kind.__name__}")


def deterministic_signal_id(sender_id: str, ts: float, payload: dict[str, Any]) -> str:
    """The id of a signal that came without one: the same signal always gets the same id.

    sha256 over the canonical JSON (sorted keys) of ``[sender_id, ts in whole microseconds,
    payload]``: a JSON array cannot be ambiguous the way joined strings can, and normalising
    ts to microseconds makes ``"...Z"`` and the same instant in epoch ms agree. Truncated to
    128 bits: distinct signals never collide in practice, and the id stays short for a key.
    """
    material = orjson.dumps(
        (sender_id, round(ts * 1_000_000), payload), option=orjson.OPT_SORT_KEYS
    )
    return "sig-" + hashlib.sha256(material).hexdigest()[:32]


# --- inbound messages ------------------------------------------------------------------------

_FROZEN = ConfigDict(frozen=True, extra="ignore", strict=True)
NonEmptyId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN)]


class Signal(msgspec.Struct, frozen=True, gc=False):
    """A signal to route (topic ``signals``), as :func:`router_stream.core.parsing.parse_signal`
    validated it: ``ts`` in epoch seconds, ``tenant`` and ``signal_id`` filled in.

    Unknown top-level fields are not kept (forward compatibility); the routed copy of a signal
    is built from the original bytes, so nothing a producer sent is lost. Constructing one
    directly does not validate: only the parser makes signals from untrusted input.
    ``gc=False``: a signal holds JSON data only, so it can never be part of a reference cycle.
    """

    signal_id: str
    sender_id: str
    ts: float
    tenant: str = "default"
    kind: str | None = None
    priority: int | None = None
    ttl_ms: int | None = None
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    metric: str | None = None
    source_id: str | None = None
    value: float | None = None

    @property
    def expires_at(self) -> float | None:
        """Epoch seconds after which the signal is stale and goes to the DLQ as ``expired``."""
        return None if self.ttl_ms is None else self.ts + self.ttl_ms / 1000.0

    def is_expired(self, now: float) -> bool:
        expires = self.expires_at
        return expires is not None and now > expires


class HealthEvent(BaseModel):
    """A data source's or destination's health report (topic ``source-health``)."""

    model_config = _FROZEN

    source_id: NonEmptyId
    ts: float
    ok: bool | None = None
    latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    last_data_ts: float | None = None
    completeness: float | None = Field(default=None, ge=0, le=1)

    @field_validator("ts", "last_data_ts", mode="before")
    @classmethod
    def _normalise_ts(cls, value: object) -> float | None:
        return None if value is None else to_epoch_seconds(value)


class Outcome(BaseModel):
    """What happened to a routed signal at its destination (topic ``outcomes``).

    ``reward`` feeds the bandits; when absent it is derived from ``ok`` (1.0 / 0.0) by them.
    ``ts`` (default: the record timestamp) places the outcome in breaker windows.
    """

    model_config = _FROZEN

    signal_id: NonEmptyId
    destination: NonEmptyId
    ok: bool
    ts: float | None = None
    decision_id: str | None = Field(default=None, max_length=MAX_ID_LEN)
    latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    reward: float | None = Field(default=None, ge=0, le=1)
    cost: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @field_validator("ts", mode="before")
    @classmethod
    def _normalise_ts(cls, value: object) -> float | None:
        return None if value is None else to_epoch_seconds(value)


# --- control commands (topic router.control) --------------------------------------------------

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
"""A command's number is finite: pydantic reads the text ``"inf"`` or ``"nan"`` as a float, and an
override until infinity never expires, nor can a checkpoint (JSON) hold it."""


class _Command(BaseModel):
    """Fields every control command carries: who, when, and an id to apply it once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: str | None = None
    issued_at: FiniteFloat | None = None
    issued_by: str | None = None


class PolicyPublish(_Command):
    """Switch every worker to this policy; a policy that fails validation is ignored."""

    type: Literal["policy_publish"] = "policy_publish"
    policy_yaml: str = Field(min_length=1)
    version: str = Field(min_length=1)
    source: str | None = None


class PolicyReload(_Command):
    """Re-read the policy from the worker's configured file / the policy_versions table."""

    type: Literal["policy_reload"] = "policy_reload"


class OverrideSet(_Command):
    """Operator override until ``expires_at`` (epoch seconds):

    * ``force_destination``: route signals matching (``tenant``, ``kind``) to ``destinations``
      (``None`` in a scope field matches everything);
    * ``drain``: send no new traffic to the destination ``target``;
    * ``exclude_source``: leave the source ``target`` out of consensus.
    """

    type: Literal["override_set"] = "override_set"
    override_id: NonEmptyId
    action: Literal["force_destination", "drain", "exclude_source"] = "force_destination"
    tenant: str | None = None
    kind: str | None = None
    destinations: list[NonEmptyId] = Field(default_factory=list)
    target: NonEmptyId | None = None
    expires_at: FiniteFloat
    reason: str = ""

    @model_validator(mode="after")
    def _fields_match_action(self) -> Self:
        if self.action == "force_destination":
            if not self.destinations or self.target is not None:
                raise ValueError("force_destination needs destinations and no target")
        elif self.target is None or self.destinations or self.tenant or self.kind:
            raise ValueError(f"{self.action} needs a target and no destinations, tenant or kind")
        return self


class OverrideClear(_Command):
    type: Literal["override_clear"] = "override_clear"
    override_id: NonEmptyId


class BreakerForce(_Command):
    """Move a destination's/source's breaker open or closed now. Forced open it recovers by its
    cooldown (:func:`router_stream.core.breaker.force`); ``expires_at`` is accepted and unused,
    as docs/contract.md says."""

    type: Literal["breaker_force"] = "breaker_force"
    target: NonEmptyId
    state: Literal["open", "closed"]
    expires_at: FiniteFloat | None = None
    reason: str = ""


class BreakerReset(_Command):
    """Return a breaker to normal operation: closed, counters cleared, no forced state."""

    type: Literal["breaker_reset"] = "breaker_reset"
    target: NonEmptyId


class RolloutRollback(_Command):
    """Stop the rollout of ``candidate_version`` on every worker (sent by the worker whose
    monitor saw the candidate do worse than the baseline, or by an operator)."""

    type: Literal["rollout_rollback"] = "rollout_rollback"
    candidate_version: NonEmptyId
    reason: str = ""


ControlCommand = Annotated[
    PolicyPublish | PolicyReload | OverrideSet | OverrideClear | BreakerForce | BreakerReset
    | RolloutRollback,
    Field(discriminator="type"),
]
CONTROL_ADAPTER: TypeAdapter[ControlCommand] = TypeAdapter(ControlCommand)


# --- outputs ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Decision:
    """One routing decision (SPEC §3), published to ``router.decisions`` and Postgres.

    A slotted dataclass rather than a pydantic model, serialised with ``orjson.dumps``
    (:meth:`to_json`); the engine writes the same bytes without building one (see the module
    docstring) and hands out :class:`~router_stream.core.outputs.DecisionRecord` views of them.
    ``trust``/``breakers`` hold only the state that mattered for this decision (the candidates'
    scores / breaker states), not whole tables.
    """

    decision_id: str
    signal_id: str
    tenant: str
    kind: str
    destinations: list[str]
    strategy: str
    tier: int | None
    policy_version: str
    confidence: float
    trust: dict[str, float]
    breakers: dict[str, str]
    input_topic: str
    input_partition: int
    input_offset: int
    decided_at: float
    signal_ts: float
    priority: int | None = None
    rule: str | None = None
    override_id: str | None = None
    # consensus decisions only
    value: float | None = None
    method: Literal["blend", "single", "synthetic"] | None = None
    sources_used: list[str] | None = None
    outliers: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(self)


class DlqEntry(BaseModel):
    """A record that could not be routed, kept byte-exact with the reason (SPEC §2, §5)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: DlqReason
    error: str
    signal_id: str | None = None
    tenant: str | None = None  # known once the record parsed as a signal
    kind: str | None = None  # known once it was classified
    original_topic: str
    original_partition: int = Field(ge=0)
    original_offset: int = Field(ge=0)
    original_key: bytes | None = None
    original_value: bytes | None = None
    # Kafka allows a header without a value: ``None`` is kept as it came, byte-exact.
    original_headers: list[tuple[str, bytes | None]] = Field(default_factory=list)
    attempts: int = Field(default=1, ge=1)
    first_failed_at: float

    @field_validator("error")
    @classmethod
    def _one_line(cls, value: str) -> str:
        """Headers and log lines want one line; keep the first 1000 characters of it."""
        return " ".join(value.split())[:1000]

    def kafka_headers(self) -> list[tuple[str, bytes | None]]:
        """The headers this entry travels with (:func:`router_stream.core.wire.dlq_headers`)."""
        from router_stream.core.wire import dlq_headers

        return dlq_headers(self.original_headers, reason=self.reason, error=self.error,
                           topic=self.original_topic, partition=self.original_partition,
                           offset=self.original_offset, attempts=self.attempts,
                           first_failed_at=self.first_failed_at, signal_id=self.signal_id,
                           tenant=self.tenant, kind=self.kind)
