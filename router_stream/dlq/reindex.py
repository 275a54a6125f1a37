"""``dlq reindex``: rebuild ``dlq_entries`` from the ``router.dlq`` topic.

The topic is read from the beginning up to the end offsets it had when the rebuild started
(records arriving meanwhile are the worker's to index). Each DLQ record becomes a row from its
SPEC §2 headers, built as the projection builds it (:mod:`router_stream.adapters.postgres.rows`);
rows are upserted on ``dlq_key`` by :func:`store.upsert_failures`, so entries that
are still in the table — and their status, discard reason, replay count — are kept, and a record
that failed again after a replay (more attempts) makes its entry ``pending`` again.

An entry whose input has a decision row that is its outcome (a later decision, or the earlier
one beside a ``duplicate`` entry or another signal_id: the projection's rule,
:func:`~router_stream.projection.writer.dead_letter_wins`) is not written, and counted as
``decided``: the projection replaced it. The rebuild never changes ``routing_decisions``.

A record without the headers that identify it (reason, original topic/partition/offset) or with
a reason outside the closed set is not a DLQ record this router wrote: it is counted as skipped.

Why it stays beside ``router-stream persist``: the projection follows the topic from its
group's committed offsets; a rebuild reads it from the beginning without a group and upserts
(keeping operators' statuses), which is what a new database or an upgrade needs.

Rows are masked like the worker's (:meth:`~router_stream.core.redaction.Redactor.dlq_parts`, the
redact section of the policy the caller passes) and record where their record is on the topic, so
``dlq replay`` can send a masked entry's original bytes. Rows written before migration 004 (no
coordinates) are masked in place: one rebuild after upgrading masks what was stored unmasked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router_stream.adapters import postgres as pg
from router_stream.adapters.kafka_io import read_records
from router_stream.adapters.postgres.rows import dlq_row_from_record, escape_nul
from router_stream.config import DLQ, Settings
from router_stream.core.redaction import DEFAULT_REDACTOR, Redactor
from router_stream.dlq import store
from router_stream.projection.writer import dead_letter_wins, ms

__all__ = ["ReindexReport", "reindex_dlq", "row_from_record"]

BATCH = 1000


@dataclass
class ReindexReport:
    read: int = 0
    inserted: int = 0
    updated: int = 0
    skipped: int = 0
    masked: int = 0  # records read whose key, value or headers are stored masked
    decided: int = 0  # entries not written: their input's outcome is its decision row


row_from_record = dlq_row_from_record
"""The ``dlq_entries`` row of one ``router.dlq`` record — the projection's one definition."""


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
            batch.append(escape_nul(row))  # as the projection stores a row Postgres refused
            if len(batch) >= BATCH:
                await _flush(conn, batch, report)
        await _flush(conn, batch, report)
    finally:
        await conn.close()
    return report


async def _flush(conn: Any, batch: list[dict[str, Any]], report: ReindexReport) -> None:
    known = await pg.known_outcomes(conn, (), [row["dlq_key"] for row in batch])
    if known.decided:
        rows = [row for row in batch if not _decided(row, known)]
        report.decided += len(batch) - len(rows)
        batch[:] = rows
    inserted, updated = await store.upsert_failures(conn, batch)
    report.inserted += inserted
    report.updated += updated
    batch.clear()


def _decided(row: dict[str, Any], known: pg.KnownOutcomes) -> bool:
    key = row["dlq_key"]
    when = known.decided.get(key)
    if when is None or row["supersedes_decision"]:
        return False
    failed, at = ms(row["last_failed_at"]), ms(when)
    return not dead_letter_wins((failed, failed), (at, at), duplicate=row["reason"] == "duplicate",
                                same_signal=known.signals[key] == {row["signal_id"]})
