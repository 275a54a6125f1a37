"""Kafka records -> Postgres rows: the one definition of every row the projection writes.

Everything a row needs is in its record: a decision row in the ``router.decisions`` value
(:meth:`Decision.to_json`, decoded into a :class:`DecisionRecord`), a DLQ row in the
``router.dlq`` record's ``x-dlq-*`` headers, its original bytes and its own position, an event
row in the ``router.events`` value (:mod:`router_stream.core.events`). Rows are masked by the
active policy's ``redact`` section (:class:`~router_stream.core.redaction.Redactor`) as the
worker masked them before.

Postgres cannot store U+0000 in ``text`` or ``jsonb``. A row it refuses for that is stored with
every U+0000 in its strings replaced by the six characters ``\\u0000`` (:func:`escape_nul`);
the Kafka record keeps the original. Tuples follow the column order of
:mod:`.tables` (``DECISION_COLUMNS``, ``DLQ_COLUMNS`` ...).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
import orjson

from router_stream.adapters.postgres.tables import dlq_key
from router_stream.core.events import (
    BreakerTransitionEvent,
    PolicyStatusEvent,
    PolicyVersionEvent,
    ShadowEvent,
    TrustSnapshotEvent,
)
from router_stream.core.models import MAX_ID_LEN, DlqReason, InboundRecord
from router_stream.core.redaction import DEFAULT_REDACTOR, Redactor
from router_stream.core.wire import (
    DLQ_HEADERS,
    H_ATTEMPTS,
    H_ERROR,
    H_FIRST_FAILED,
    H_KIND,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_SIGNAL_ID,
    H_SUPERSEDES,
    H_TENANT,
    H_TOPIC,
    INT32_MAX,
    INT64_MAX,
    TOPIC_NAME,
    valid_position,
)

__all__ = ["DecisionRecord", "decision_extra", "decision_row", "decode_decision",
           "dlq_row_from_record", "escape_nul", "input_key", "shadow_row", "transition_row",
           "trust_rows"]

NUL_ESCAPE = "\\u0000"
_REASONS = frozenset(r.value for r in DlqReason)
_NO_EXTRA = msgspec.Raw(b"{}")


_Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_LEN)]


class DecisionRecord(msgspec.Struct, gc=False):
    """What a decision's row needs of a ``router.decisions`` value (``Decision.to_json``: an
    object keyed by ``Decision``'s field names; other keys are ignored). ``trust``,
    ``breakers`` and ``extra`` stay JSON text: the row stores them as they came.
    ``gc=False``: decoded JSON only, which cannot form a cycle, so a batch of them adds nothing
    to the garbage collector's passes."""

    # The ids a signal may carry (their indexes refuse a few KB), and the table's CHECKs:
    # checked here, where a bad record is skipped at once; a row Postgres refuses costs the
    # writer a bisection of its batch.
    decision_id: _Id
    signal_id: _Id
    tenant: _Id
    kind: _Id
    destinations: tuple[str, ...]
    strategy: str
    tier: Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)] | None
    policy_version: str
    confidence: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    trust: msgspec.Raw
    breakers: msgspec.Raw
    input_topic: Annotated[str, msgspec.Meta(pattern=TOPIC_NAME.pattern)]
    input_partition: Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)]
    input_offset: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
    decided_at: datetime
    signal_ts: datetime | None
    priority: int | None = None
    rule: str | None = None
    override_id: str | None = None
    value: float | None = None
    method: str | None = None
    sources_used: tuple[str, ...] | None = None
    outliers: tuple[str, ...] | None = None
    extra: msgspec.Raw = _NO_EXTRA


# strict=False: what turns the epoch seconds of decided_at and signal_ts into datetimes (in C,
# a tenth of datetime.fromtimestamp's cost); it also takes numbers written as strings.
_DECISION = msgspec.json.Decoder(DecisionRecord, strict=False)


def decode_decision(value: bytes | None) -> DecisionRecord:
    """A ``router.decisions`` value; ``ValueError`` (``msgspec.ValidationError``) when it is not
    a JSON object with the fields and types of a decision."""
    return _DECISION.decode(value or b"null")


def input_key(d: DecisionRecord) -> str:
    """The decided record's position, as ``dlq_key`` writes a DLQ entry's original position."""
    return dlq_key(d.input_topic, d.input_partition, d.input_offset)


def decision_extra(d: DecisionRecord) -> Any:
    """The decision's ``extra`` (an operator's replay says ``replay_of`` there), decoded."""
    return None if d.extra == _NO_EXTRA else orjson.loads(bytes(d.extra))


def decision_row(d: DecisionRecord, redactor: Redactor = DEFAULT_REDACTOR,
                 tenants: dict[str, str] | None = None) -> tuple[Any, ...]:
    """A decision in ``DECISION_COLUMNS`` order and the columns' own types (what
    :func:`~router_stream.adapters.postgres.copy_decisions` copies as is), its
    signal-supplied ids (``signal_id``, ``tenant``) masked; ``tenants`` caches tenant masks.
    Everything else in a decision comes from the policy or the router's state.

    Made of strings, numbers, datetimes, tuples and JSON text only (no dict or list unless
    the decision is a consensus one or holds U+0000), so the collector untracks a row after
    one look at it."""
    tenant_id = d.tenant
    tenant = None if tenants is None else tenants.get(tenant_id)
    if tenant is None:
        tenant = redactor.identifier(tenant_id, "tenant")
        if tenants is not None:
            tenants[tenant_id] = tenant
    consensus = None if d.method is None else {
        "value": d.value, "method": d.method, "sources_used": d.sources_used,
        "outliers": d.outliers}
    return (d.decision_id, redactor.identifier(d.signal_id, "signal_id"), tenant, d.kind,
            d.destinations, d.strategy, d.tier, d.policy_version, d.confidence, _state(d),
            consensus, d.input_topic, d.input_partition, d.input_offset, d.signal_ts,
            d.decided_at)


def _state(d: DecisionRecord) -> bytes | dict[str, Any]:
    """The ``state`` column: trust and breaker state, and the decision's ``priority``,
    ``rule``, ``override_id`` and ``extra`` where set, as JSON text; as a dict when the text
    escapes U+0000 (which jsonb refuses), so that :func:`escape_nul` can reach its strings."""
    parts = [b'{"trust":', d.trust, b',"breakers":', d.breakers]
    for name, value in ((b"priority", d.priority), (b"rule", d.rule),
                        (b"override_id", d.override_id)):
        if value is not None:
            parts += (b',"', name, b'":', orjson.dumps(value))
    if d.extra != _NO_EXTRA and orjson.loads(bytes(d.extra)):
        parts += (b',"extra":', d.extra)
    parts.append(b"}")
    text = b"".join(parts)
    return orjson.loads(text) if b"\\u0000" in text else text


_ONE_MS = timedelta(milliseconds=1)


def _epoch(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _signal_fields(value: bytes | None) -> tuple[str | None, str | None]:
    """(tenant, kind) when the value is a JSON object that names them (records dead-lettered
    before the ``x-dlq-tenant``/``x-dlq-kind`` headers existed)."""
    try:
        parsed = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    tenant, kind = parsed.get("tenant", "default"), parsed.get("kind")
    return (tenant if isinstance(tenant, str) else None, kind if isinstance(kind, str) else None)


def dlq_row_from_record(record: InboundRecord, redactor: Redactor = DEFAULT_REDACTOR
                        ) -> dict[str, Any] | None:
    """The ``dlq_entries`` row of one ``router.dlq`` record (``DLQ_COLUMNS`` keys), masked by
    ``redactor``, or None if it is not a DLQ record this router wrote (no reason or original
    position, or a reason outside the closed set)."""
    found: dict[str, bytes] = {}
    for name, value in record.headers or ():
        if name in DLQ_HEADERS and value is not None:
            found[name] = value
    try:
        reason = found[H_REASON].decode()
        topic = found[H_TOPIC].decode()
        partition, offset = int(found[H_PARTITION]), int(found[H_OFFSET])
        attempts = max(1, int(found.get(H_ATTEMPTS, b"1")))
        failed_at = _epoch(record.timestamp / 1000.0)
        first = _epoch(float(found[H_FIRST_FAILED])) if H_FIRST_FAILED in found else failed_at
        # The record timestamp is whole milliseconds, floored: a first failure later in that
        # millisecond (the worker's clock, to the microsecond) is this very trip's, and kept.
        if failed_at < first < failed_at + _ONE_MS:
            failed_at = first
    except (KeyError, ValueError, UnicodeDecodeError, OverflowError, OSError):
        return None
    if (reason not in _REASONS or not valid_position(topic, partition, offset)
            or attempts > INT32_MAX):
        return None
    tenant, kind = _signal_fields(record.value)
    if H_TENANT in found or H_KIND in found:
        tenant, kind = _text(found.get(H_TENANT)), _text(found.get(H_KIND))
    m = redactor.dlq_parts(
        error=found.get(H_ERROR, b"").decode("utf-8", "replace"),
        signal_id=_text(found.get(H_SIGNAL_ID)), tenant=tenant, kind=kind, key=record.key,
        value=record.value,
        headers=[(k, v) for k, v in record.headers or () if k not in DLQ_HEADERS])
    return {
        "dlq_key": dlq_key(topic, partition, offset), "reason": reason,
        "error": m.error, "signal_id": m.signal_id, "tenant": m.tenant, "kind": m.kind,
        "attempts": attempts, "original_topic": topic,
        "original_partition": partition, "original_offset": offset,
        "original_key": m.key, "original_headers": m.headers, "original_value": m.value,
        "original_timestamp": None,
        "first_failed_at": min(first, failed_at), "last_failed_at": failed_at,
        "masked": m.masked, "dlq_topic": record.topic, "dlq_partition": record.partition,
        "dlq_offset": record.offset,
        # not a column: the entry replaces a decision record of the same input (refusals)
        "supersedes_decision": H_SUPERSEDES in found,
    }


def transition_row(t: BreakerTransitionEvent) -> tuple[Any, ...]:
    """``BREAKER_TRANSITION_COLUMNS`` order."""
    return (t.target, t.from_state.value, t.to_state.value, t.reason, {}, t.at)


def trust_rows(t: TrustSnapshotEvent) -> list[tuple[Any, ...]]:
    """``TRUST_SNAPSHOT_COLUMNS`` order, one row per source."""
    return [(source, score, {}, t.at) for source, score in t.scores.items()]


def shadow_row(o: ShadowEvent, redactor: Redactor = DEFAULT_REDACTOR) -> tuple[Any, ...]:
    """``SHADOW_COLUMNS`` order (its signal_id masked like the decision's). A DLQ reason is
    passed as JSON *text* (the adapter takes a ``str`` as already-serialised JSON)."""
    return (redactor.identifier(o.signal_id, "signal_id"), o.candidate_version,
            _choice(o.baseline), _choice(o.candidate), o.agree, o.at)


def _choice(choice: list[str] | str) -> list[str] | str:
    return choice if isinstance(choice, list) else orjson.dumps(choice).decode()


def policy_version_args(p: PolicyVersionEvent) -> dict[str, Any]:
    """Keyword arguments of :func:`router_stream.adapters.postgres.record_policy_version`."""
    return {"version": p.version, "policy": p.policy_yaml, "status": p.status,
            "published_by": p.published_by, "status_reason": p.status_reason}


def policy_status_args(p: PolicyStatusEvent) -> dict[str, Any]:
    """Keyword arguments of :func:`router_stream.adapters.postgres.mark_policy_status`."""
    return {"version": p.version, "status": p.status, "reason": p.reason}


def escape_nul(value: Any) -> Any:
    """``value`` with U+0000 in every string (also inside lists, tuples and dict keys/values)
    replaced by the six characters ``\\u0000``; anything else unchanged."""
    if isinstance(value, str):
        return value.replace("\x00", NUL_ESCAPE) if "\x00" in value else value
    if isinstance(value, tuple):
        return tuple(escape_nul(v) for v in value)
    if isinstance(value, list):
        return [escape_nul(v) for v in value]
    if isinstance(value, dict):
        return {escape_nul(k): escape_nul(v) for k, v in value.items()}
    return value
