"""``dlq reindex``: rebuild ``dlq_entries`` from the ``router.dlq`` topic.

The topic is read from the beginning up to the end offsets it had when the rebuild started
(records arriving meanwhile are the worker's to index). Each DLQ record becomes a row from its
SPEC §2 headers; rows are upserted on ``dlq_key`` by :func:`store.upsert_failures`, so entries that
are still in the table — and their status, discard reason, replay count — are kept, and a record
that failed again after a replay (more attempts) makes its entry ``pending`` again.

A record without the headers that identify it (reason, original topic/partition/offset) or with
a reason outside the closed set is not a DLQ record this router wrote: it is counted as skipped.

Rows are masked like the worker's (:meth:`~router_stream.core.redaction.Redactor.dlq_parts`, the
redact section of the policy the caller passes) and record where their record is on the topic, so
``dlq replay`` can send a masked entry's original bytes. Rows written before migration 004 (no
coordinates) are masked in place: one rebuild after upgrading masks what was stored unmasked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from router_stream.adapters import postgres as pg
from router_stream.adapters.kafka_io import ConsumedRecord, read_records
from router_stream.config import DLQ, Settings
from router_stream.core.models import DlqReason
from router_stream.core.outputs import (
    DLQ_HEADERS,
    H_ATTEMPTS,
    H_ERROR,
    H_FIRST_FAILED,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_SIGNAL_ID,
    H_TOPIC,
)
from router_stream.core.redaction import DEFAULT_REDACTOR, Redactor
from router_stream.dlq import store

__all__ = ["ReindexReport", "reindex_dlq", "row_from_record"]

BATCH = 1000
_REASONS = frozenset(r.value for r in DlqReason)


@dataclass
class ReindexReport:
    read: int = 0
    inserted: int = 0
    updated: int = 0
    skipped: int = 0
    masked: int = 0  # records read whose key, value or headers are stored masked


def _epoch(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


def _signal_fields(value: bytes | None) -> tuple[str | None, str | None]:
    """(tenant, kind) when the value is a JSON object that names them (for the filters)."""
    try:
        parsed = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    tenant, kind = parsed.get("tenant", "default"), parsed.get("kind")
    return (tenant if isinstance(tenant, str) else None, kind if isinstance(kind, str) else None)


def row_from_record(record: ConsumedRecord, redactor: Redactor = DEFAULT_REDACTOR
                    ) -> dict[str, Any] | None:
    """The ``dlq_entries`` row of one ``router.dlq`` record, masked by ``redactor``, or None if
    it is not a DLQ record."""
    found: dict[str, bytes] = {}
    for name, value in record.headers:
        if name in DLQ_HEADERS and value is not None:
            found[name] = value
    try:
        reason = found[H_REASON].decode()
        topic = found[H_TOPIC].decode()
        partition, offset = int(found[H_PARTITION]), int(found[H_OFFSET])
        attempts = max(1, int(found.get(H_ATTEMPTS, b"1")))
        failed_at = _epoch(record.timestamp / 1000.0)
        first = _epoch(float(found[H_FIRST_FAILED])) if H_FIRST_FAILED in found else failed_at
    except (KeyError, ValueError, UnicodeDecodeError, OverflowError, OSError):
        return None
    if reason not in _REASONS or partition < 0 or offset < 0:
        return None
    tenant, kind = _signal_fields(record.value)
    signal_id = found.get(H_SIGNAL_ID)
    m = redactor.dlq_parts(
        error=found.get(H_ERROR, b"").decode("utf-8", "replace"),
        signal_id=signal_id.decode("utf-8", "replace") if signal_id else None,
        tenant=tenant, kind=kind, key=record.key, value=record.value,
        headers=[(k, v) for k, v in record.headers if k not in DLQ_HEADERS])
    return {
        "dlq_key": pg.dlq_key(topic, partition, offset), "reason": reason,
        "error": m.error, "signal_id": m.signal_id, "tenant": m.tenant, "kind": m.kind,
        "attempts": attempts, "original_topic": topic,
        "original_partition": partition, "original_offset": offset,
        "original_key": m.key, "original_headers": m.headers, "original_value": m.value,
        "original_timestamp": None,
        "first_failed_at": min(first, failed_at), "last_failed_at": failed_at,
        "masked": m.masked, "dlq_topic": record.topic, "dlq_partition": record.partition,
        "dlq_offset": record.offset,
    }


async def reindex_dlq(settings: Settings, *, topic: str | None = None,
                      redactor: Redactor = DEFAULT_REDACTOR) -> ReindexReport:
    """Read ``router.dlq`` (or ``topic``) from the beginning and upsert every entry, masked by
    ``redactor`` (the policy's; the default masks every detector)."""
    report = ReindexReport()
    batch: list[dict[str, Any]] = []
    conn = await pg.connect(settings)
    try:
        async for record in read_records(settings, topic or settings.topic(DLQ),
                                         from_beginning=True, until_end=True):
            report.read += 1
            row = row_from_record(record, redactor)
            if row is None:
                report.skipped += 1
                continue
            report.masked += row["masked"]
            batch.append(row)
            if len(batch) >= BATCH:
                await _flush(conn, batch, report)
        await _flush(conn, batch, report)
    finally:
        await conn.close()
    return report


async def _flush(conn: Any, batch: list[dict[str, Any]], report: ReindexReport) -> None:
    inserted, updated = await store.upsert_failures(conn, batch)
    report.inserted += inserted
    report.updated += updated
    batch.clear()
