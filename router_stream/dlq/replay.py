"""``dlq replay``: send DLQ entries back to where they came from, exactly as they arrived.

What is sent for an entry: its **original bytes and key** to its **original topic**, with its
original headers (minus any router headers of an earlier trip), its original record timestamp
when known, and the headers that let the worker's engine treat it as a re-fed record
(``core.engine._origin``):

=============================  ==============================================================
``x-dlq-id``                   the entry's id in ``dlq_entries``
``x-dlq-attempts``             the entry's ``attempts`` (failures so far)
``x-dlq-original-topic`` /     where the signal was first read, so its decision keeps that
``-partition`` / ``-offset``   origin and a second failure lands on the same ``dlq_key``
``x-dlq-first-failed-at``      kept across trips
``x-signal-id``                when known
=============================  ==============================================================

A **masked** entry (``dlq_entries.masked``: its key, value or headers were masked in Postgres
per the policy's ``redact`` section) is sent from its record on ``router.dlq``, read back at the
entry's ``dlq_topic``/``dlq_partition``/``dlq_offset``: the original key, bytes and headers,
byte-exact, with the headers above (``x-signal-id`` from that record, not the masked column).
When that record is gone (past the topic's retention, or the topic was recreated and the position
holds another entry's record), the entry cannot be replayed byte-exact: it is not sent, stays
``pending``, and is reported with one line saying why (``ReplayReport.unavailable``). Masked
bytes are never sent.

The engine counts the replay: a record carrying ``x-dlq-id`` that fails again is DLQ'd with
``attempts + 1`` on the same ``dlq_key``, and the DLQ writer turns the entry back to ``pending``
with that count, so an entry that keeps failing reaches ``--max-attempts`` and stops there.

Order of the steps, and what each guarantees:

1. take the replay lock (one replay per database at a time) and select ``pending`` entries
   with ``attempts < max_attempts`` (the rest are refused and reported, never sent); read the
   original records of masked entries back from ``router.dlq``;
2. send a chunk with the idempotent ``acks=all`` producer and wait for every ack;
3. mark the acknowledged entries ``replayed`` (``WHERE status = 'pending'``), then the next
   chunk. An entry is marked only after its ack; an entry whose send failed stays ``pending``.

So running replay twice sends nothing the second time. The one window left is a crash between
an ack (2) and its mark (3): that entry is still ``pending`` and a later replay sends it again;
the worker then writes no second decision row (``routing_decisions.signal_id`` is unique).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from router_stream.adapters import postgres as pg
from router_stream.adapters.kafka_io import (
    ConsumedRecord,
    OutRecord,
    RateLimiter,
    RecordWriter,
    read_at,
)
from router_stream.config import Settings
from router_stream.core.outputs import (
    DLQ_HEADERS,
    H_ATTEMPTS,
    H_DLQ_ID,
    H_FIRST_FAILED,
    H_OFFSET,
    H_PARTITION,
    H_SIGNAL_ID,
    H_TOPIC,
)
from router_stream.core.refusals import is_reference
from router_stream.dlq import store
from router_stream.dlq.filters import DlqFilter
from router_stream.dlq.store import DlqRow
from router_stream.errors import BrokerUnavailable, RouterError, UserError

__all__ = ["DEFAULT_MAX_ATTEMPTS", "ReplayReport", "original_problem", "read_originals",
           "replay_dlq", "replay_record"]

DEFAULT_MAX_ATTEMPTS = 5
CHUNK = 200


@dataclass
class ReplayReport:
    """What a replay did (or, with ``dry_run``, would do)."""

    dry_run: bool
    selected: list[DlqRow] = field(default_factory=list)  # pending, under the attempt limit
    sent: list[int] = field(default_factory=list)  # acknowledged and marked replayed
    refused: int = 0  # pending entries at or over max_attempts
    not_pending: list[int] = field(default_factory=list)  # ids asked for that are not pending
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    # masked entries whose original record could not be read back: (id, why), never sent
    unavailable: list[tuple[int, str]] = field(default_factory=list)
    originals: dict[int, ConsumedRecord] = field(default_factory=dict, repr=False)

    @property
    def sendable(self) -> list[DlqRow]:
        """The selected entries that can be sent (all but the unavailable ones)."""
        unavailable = {entry_id for entry_id, _ in self.unavailable}
        return [r for r in self.selected if r.id not in unavailable]


def replay_record(row: DlqRow, original: ConsumedRecord | None = None, *,
                  preview: bool = False) -> OutRecord:
    """The record that replays ``row`` (see the module docstring for the headers).

    A masked row needs ``original``, its record read back from ``router.dlq``; ``preview``
    builds it from the (masked) columns instead, for showing what would be sent.
    """
    if row.original_value is None and row.value_size is not None:
        raise ValueError("replay_record needs the row loaded with its value")
    key, value = row.original_key, row.original_value
    kept: list[tuple[str, bytes | None]] = list(row.original_headers)
    signal_id = None if row.signal_id is None else row.signal_id.encode()
    if row.masked and not preview:
        if original is None:
            raise ValueError(f"DLQ entry {row.id} is masked: replay needs its router.dlq record")
        key, value, kept = original.key, original.value, list(original.headers)
        signal_id = next((v for k, v in original.headers if k == H_SIGNAL_ID), None)
    headers: list[tuple[str, bytes | None]] = [(k, v) for k, v in kept if k not in DLQ_HEADERS]
    headers += [
        (H_DLQ_ID, str(row.id).encode()),
        (H_ATTEMPTS, str(row.attempts).encode()),
        (H_TOPIC, row.original_topic.encode()),
        (H_PARTITION, str(row.original_partition).encode()),
        (H_OFFSET, str(row.original_offset).encode()),
        (H_FIRST_FAILED, repr(row.first_failed_at.timestamp()).encode()),
    ]
    if signal_id is not None:
        headers.append((H_SIGNAL_ID, signal_id))
    timestamp_ms = (None if row.original_timestamp is None
                    else int(row.original_timestamp.timestamp() * 1000))
    return OutRecord(topic=row.original_topic, value=value, key=key, headers=headers,
                     timestamp_ms=timestamp_ms)


def reference_problem(row: DlqRow) -> str | None:
    """Why ``row`` cannot be replayed from the DLQ: it is a reference (its record was too large
    for router.dlq, docs/worker.md), whose bytes are only at its original position."""
    if not is_reference(row.error):
        return None
    return (f"entry {row.id} not replayed: it is a reference (its record was too large for the"
            f" DLQ topic); the original is on {row.original_topic} partition"
            f" {row.original_partition} offset {row.original_offset}")


def original_problem(row: DlqRow, record: ConsumedRecord | None) -> str | None:
    """Why ``record`` (read at ``row``'s DLQ coordinates) cannot be replayed for ``row``;
    None when it is the entry's record."""
    where = f"{row.dlq_topic} partition {row.dlq_partition} offset {row.dlq_offset}"
    if record is None:
        return (f"entry {row.id} not replayed: its bytes are masked in Postgres and its original"
                f" record is gone from {where} (past the topic's retention?); discard it with"
                f" `dlq discard {row.id} --reason ...`")
    origin = {k: v for k, v in record.headers if k in (H_TOPIC, H_PARTITION, H_OFFSET)}
    expected = {H_TOPIC: row.original_topic.encode(),
                H_PARTITION: str(row.original_partition).encode(),
                H_OFFSET: str(row.original_offset).encode()}
    if origin != expected:
        return (f"entry {row.id} not replayed: its bytes are masked in Postgres and the record at"
                f" {where} is not this entry's (was the topic recreated?)")
    return None


async def read_originals(settings: Settings, report: ReplayReport) -> None:
    """Read back the original record of every selected masked entry (``report.originals``);
    the ones that cannot be replayed go to ``report.unavailable``."""
    by_topic: dict[str, list[DlqRow]] = {}
    for row in report.selected:
        problem = reference_problem(row)
        if problem is not None:
            report.unavailable.append((row.id, problem))
        elif row.masked:
            by_topic.setdefault(row.dlq_topic or "", []).append(row)
    for topic, rows in sorted(by_topic.items()):
        positions = [(r.dlq_partition or 0, r.dlq_offset or 0) for r in rows]
        try:
            found = await read_at(settings, topic, positions)
        except UserError as exc:  # the DLQ topic itself is gone
            report.unavailable += [(r.id, f"entry {r.id} not replayed: its bytes are masked in"
                                          f" Postgres and {exc}") for r in rows]
            continue
        for row, position in zip(rows, positions, strict=True):
            record = found.get(position)
            problem = original_problem(row, record)
            if problem is not None:
                report.unavailable.append((row.id, problem))
            elif record is not None:
                report.originals[row.id] = record


async def replay_dlq(
    settings: Settings,
    where: DlqFilter,
    *,
    limit: int | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    rate: float | None = None,
    dry_run: bool = False,
    on_selected: Callable[[int], None] | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Replay the ``pending`` entries matching ``where`` (see the module docstring)."""
    if where.statuses and where.statuses != ("pending",):
        raise UserError("only pending entries are replayed; drop --status or use --status pending")
    if max_attempts < 1:
        raise UserError("--max-attempts must be at least 1")
    RateLimiter(rate)  # validates --rate before anything is read
    pending = where.with_statuses("pending")
    report = ReplayReport(dry_run=dry_run, max_attempts=max_attempts)
    conn = await pg.connect(settings)
    try:
        async with store.replay_lock(conn):
            report.selected = await store.list_entries(
                conn, pending, limit=limit, with_value=True, max_attempts=max_attempts)
            report.refused = await store.count_entries(conn, pending, min_attempts=max_attempts)
            if where.ids:
                found = {r.id for r in await store.list_entries(conn, DlqFilter(ids=where.ids))}
                missing = sorted(set(where.ids) - found)
                if missing:
                    raise UserError(f"no DLQ entry with id {', '.join(map(str, missing))}")
                pending_ids = {r.id for r in await store.list_entries(conn, pending)}
                report.not_pending = sorted(found - pending_ids)
            await read_originals(settings, report)
            if on_selected is not None:
                on_selected(len(report.sendable))
            if not dry_run and report.sendable:
                await _send_all(settings, conn, report, rate, on_sent)
    finally:
        await conn.close()
    return report


async def _send_all(settings: Settings, conn: asyncpg.Connection, report: ReplayReport,
                    rate: float | None, on_sent: Callable[[int], None] | None) -> None:
    rows = report.sendable
    pacer = RateLimiter(rate)
    # With a rate, chunks of about one second's worth, so entries are marked as they go.
    size = CHUNK if rate is None else max(1, min(CHUNK, int(rate)))
    async with RecordWriter(settings) as writer:
        await writer.ensure_topics(sorted({r.original_topic for r in rows}))
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            acked, failure = await _send_chunk(writer, chunk, pacer, report.originals)
            await store.mark_replayed(conn, acked)
            report.sent.extend(acked)
            if on_sent is not None and acked:
                on_sent(len(acked))
            if failure is not None:
                cls = BrokerUnavailable if failure.retriable else RouterError
                raise cls(
                    f"replay stopped after {len(report.sent)} of {len(rows)} entries: {failure}"
                    " (the rest stay pending; run the same replay again)") from failure


async def _send_chunk(writer: RecordWriter, chunk: list[DlqRow], pacer: RateLimiter,
                      originals: dict[int, ConsumedRecord],
                      ) -> tuple[list[int], RouterError | None]:
    """Send a chunk and wait for every ack; returns the acknowledged ids and the first error."""
    futures: list[tuple[int, asyncio.Future[tuple[int, int]]]] = []
    failure: RouterError | None = None
    for row in chunk:
        await pacer.wait()
        try:
            record = replay_record(row, originals.get(row.id))
            futures.append((row.id, await writer.send(record)))
        except RouterError as exc:
            failure = exc
            break
    outcomes = await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
    acked = [entry_id for (entry_id, _), outcome in zip(futures, outcomes, strict=True)
             if not isinstance(outcome, BaseException)]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if failure is None and errors:
        first = errors[0]
        failure = first if isinstance(first, RouterError) else RouterError(repr(first))
    return acked, failure
