"""The queries the DLQ commands run on ``dlq_entries`` (schema: migrations/001_init.sql).

Connections come from :func:`router_stream.adapters.postgres.connect`; a lost database is
translated to :class:`~router_stream.errors.DatabaseUnavailable` here, as the adapter does.

Status moves are guarded in SQL, not only in Python: ``mark_replayed`` and ``discard`` change
``pending`` rows only, so two operators racing cannot replay a discarded entry or discard one
that was just replayed, and a second ``replay`` finds nothing to send.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from typing import Any

import asyncpg

from router_stream.adapters import postgres as pg
from router_stream.dlq.filters import DlqFilter
from router_stream.errors import UserError

__all__ = [
    "DlqRow",
    "SummaryRow",
    "count_entries",
    "discard",
    "get_entry",
    "list_entries",
    "earliest_pending",
    "mark_replayed",
    "pending_in_order",
    "replay_lock",
    "summary",
    "topics_of",
    "upsert_failures",
]

_LIST_COLUMNS = (
    "id, dlq_key, reason, error, signal_id, tenant, kind, attempts, status, original_topic,"
    " original_partition, original_offset, original_key, original_headers, first_failed_at,"
    " last_failed_at, created_at, replayed_at, replay_count, discarded_at, discard_reason,"
    " original_timestamp, octet_length(original_value) AS value_size, masked, dlq_topic,"
    " dlq_partition, dlq_offset"
)


@dataclass(frozen=True)
class DlqRow:
    """One ``dlq_entries`` row. ``original_value`` is loaded only when asked for (show/replay).

    ``masked``: ``original_key``/``original_value``/``original_headers`` are masked copies, and
    the original record is on ``dlq_topic`` at ``dlq_partition``/``dlq_offset``
    (migrations/004_dlq_masking.sql). ``value_size`` is the size of the stored value.
    """

    id: int
    dlq_key: str
    reason: str
    error: str
    signal_id: str | None
    tenant: str | None
    kind: str | None
    attempts: int
    status: str
    original_topic: str
    original_partition: int
    original_offset: int
    original_key: bytes | None
    original_headers: list[tuple[str, bytes | None]]
    first_failed_at: datetime
    last_failed_at: datetime
    created_at: datetime
    replayed_at: datetime | None
    replay_count: int
    discarded_at: datetime | None
    discard_reason: str | None
    original_timestamp: datetime | None
    value_size: int | None
    original_value: bytes | None = field(default=None, repr=False)
    masked: bool = False
    dlq_topic: str | None = None
    dlq_partition: int | None = None
    dlq_offset: int | None = None

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> DlqRow:
        values = dict(record)
        values["original_headers"] = pg.decode_headers(values.get("original_headers") or [])
        # Not cls(**values): the frozen __init__ sets each field through object.__setattr__,
        # several times slower for a replay's ~10^5 rows.
        row = cls.__new__(cls)
        row.__dict__.update(_ROW_DEFAULTS)
        row.__dict__.update(values)
        return row


_ROW_DEFAULTS = {f.name: f.default for f in fields(DlqRow) if f.default is not MISSING}


@dataclass(frozen=True)
class SummaryRow:
    reason: str
    status: str
    count: int
    oldest: datetime
    newest: datetime


@contextlib.contextmanager
def _db(what: str) -> Iterator[None]:
    with pg.unavailable_as_router_error(what):
        yield


async def list_entries(conn: asyncpg.Connection, where: DlqFilter, *, limit: int | None = None,
                       with_value: bool = False, max_attempts: int | None = None,
                       ) -> list[DlqRow]:
    """Entries matching ``where``, oldest id first; ``max_attempts`` keeps attempts below it."""
    sql, args = where.where()
    if max_attempts is not None:
        args.append(max_attempts)
        sql += f" AND attempts < ${len(args)}"
    columns = _LIST_COLUMNS + (", original_value" if with_value else "")
    query = f"SELECT {columns} FROM dlq_entries WHERE {sql} ORDER BY id"
    if limit is not None:
        args.append(limit)
        query += f" LIMIT ${len(args)}"
    with _db("listing DLQ entries"):
        records = await conn.fetch(query, *args)
    return [DlqRow.from_record(r) for r in records]


async def count_entries(conn: asyncpg.Connection, where: DlqFilter,
                        *, min_attempts: int | None = None, max_attempts: int | None = None
                        ) -> int:
    """Entries matching ``where`` with ``min_attempts <= attempts < max_attempts``."""
    sql, args = where.where()
    if min_attempts is not None:
        args.append(min_attempts)
        sql += f" AND attempts >= ${len(args)}"
    if max_attempts is not None:
        args.append(max_attempts)
        sql += f" AND attempts < ${len(args)}"
    with _db("counting DLQ entries"):
        return int(await conn.fetchval(f"SELECT count(*) FROM dlq_entries WHERE {sql}", *args))


# The replay order (dlq.order): original topic, partition, offset; id only breaks ties.
_ORIGIN_ORDER = "original_topic, original_partition, original_offset, id"


async def pending_in_order(conn: asyncpg.Connection, where: DlqFilter, *, max_attempts: int,
                           page: int, limit: int | None = None
                           ) -> AsyncGenerator[list[DlqRow], None]:
    """Pending entries matching ``where`` with ``attempts < max_attempts``, values loaded, in
    original order, ``page`` rows at a time (keyset pages on ``dlq_entries_pending_origin``:
    memory stays at one page whatever the size, and no transaction is held between pages).

    Rows the caller changes between pages (marked ``replayed``) are behind the keyset and are
    not read again; the first ``limit`` matching entries are read at most.
    """
    sql, args = where.with_statuses("pending").where()
    args.append(max_attempts)
    sql += f" AND attempts < ${len(args)}"
    after: tuple[str, int, int, int] | None = None
    remaining = limit
    while remaining is None or remaining > 0:
        size = page if remaining is None else min(page, remaining)
        query_args = [*args, size]
        keyset = ""
        if after is not None:
            n = len(query_args)
            query_args += list(after)
            keyset = (f" AND ({_ORIGIN_ORDER}) > (${n + 1}, ${n + 2}, ${n + 3}, ${n + 4})")
        query = (f"SELECT {_LIST_COLUMNS}, original_value FROM dlq_entries WHERE {sql}{keyset}"
                 f" ORDER BY {_ORIGIN_ORDER} LIMIT ${len(args) + 1}")
        with _db("reading DLQ entries to replay"):
            records = await conn.fetch(query, *query_args)
        if not records:
            return
        rows = [DlqRow.from_record(r) for r in records]
        last = rows[-1]
        after = (last.original_topic, last.original_partition, last.original_offset, last.id)
        if remaining is not None:
            remaining -= len(rows)
        yield rows
        if len(rows) < size:
            return


async def topics_of(conn: asyncpg.Connection, where: DlqFilter, *, max_attempts: int
                    ) -> list[str]:
    """The original topics of the entries matching ``where`` under ``max_attempts``."""
    sql, args = where.where()
    args.append(max_attempts)
    with _db("listing DLQ topics"):
        records = await conn.fetch(f"SELECT DISTINCT original_topic FROM dlq_entries WHERE {sql}"
                                   f" AND attempts < ${len(args)} ORDER BY 1", *args)
    return [r["original_topic"] for r in records]


async def earliest_pending(conn: asyncpg.Connection, keys: Sequence[tuple[str, bytes]],
                           selected: DlqFilter, *, max_attempts: int,
                           ) -> dict[tuple[str, bytes], tuple[int, int, bool]]:
    """For each ``(original_topic, original_key)`` in ``keys``: the earliest pending entry that
    a replay of ``selected`` under ``max_attempts`` does not send, as ``(partition, offset,
    refused)`` (``refused``: it matches but is at or over ``max_attempts``)."""
    if not keys:
        return {}
    sql, args = selected.where(first_placeholder=4)
    # Per key, the pending entries in order on dlq_entries_pending_key, up to the first one that
    # is not sent: LIMIT 1 stops there instead of reading every entry of the key.
    query = (
        "SELECT k.k_topic, k.k_key, e.original_partition, e.original_offset, e.refused"
        " FROM unnest($1::text[], $2::bytea[]) AS k(k_topic, k_key) CROSS JOIN LATERAL ("
        f"SELECT original_partition, original_offset, COALESCE(({sql}), false) AS refused"
        " FROM dlq_entries WHERE status = 'pending' AND original_topic = k.k_topic"
        " AND md5(original_key) = md5(k.k_key) AND original_key = k.k_key"
        f" AND NOT COALESCE(({sql}) AND attempts < $3, false)"
        " ORDER BY original_partition, original_offset LIMIT 1) AS e")
    with _db("finding earlier pending DLQ entries"):
        records = await conn.fetch(query, [t for t, _ in keys], [k for _, k in keys],
                                   max_attempts, *args)
    return {(r["k_topic"], bytes(r["k_key"])):
            (r["original_partition"], r["original_offset"], r["refused"]) for r in records}


async def get_entry(conn: asyncpg.Connection, entry_id: int) -> DlqRow:
    """One entry with its original bytes; an unknown id is a user error (exit code 1)."""
    with _db("reading a DLQ entry"):
        record = await conn.fetchrow(
            f"SELECT {_LIST_COLUMNS}, original_value FROM dlq_entries WHERE id = $1", entry_id)
    if record is None:
        raise UserError(f"no DLQ entry with id {entry_id}")
    return DlqRow.from_record(record)


async def summary(conn: asyncpg.Connection, where: DlqFilter) -> list[SummaryRow]:
    """Counts by (reason, status) with the oldest/newest failure, largest count first."""
    sql, args = where.where()
    with _db("summarising DLQ entries"):
        records = await conn.fetch(
            "SELECT reason, status, count(*) AS count, min(last_failed_at) AS oldest,"
            f" max(last_failed_at) AS newest FROM dlq_entries WHERE {sql}"
            " GROUP BY reason, status ORDER BY count(*) DESC, reason, status", *args)
    return [SummaryRow(**dict(r)) for r in records]


async def discard(conn: asyncpg.Connection, where: DlqFilter, reason: str,
                  *, limit: int | None = None) -> list[int]:
    """Mark matching ``pending`` entries discarded with ``reason``; returns their ids."""
    sql, args = where.with_statuses("pending").where()
    args.append(reason)
    reason_arg = f"${len(args)}"
    limit_sql = ""
    if limit is not None:
        args.append(limit)
        limit_sql = f" LIMIT ${len(args)}"
    with _db("discarding DLQ entries"):
        records = await conn.fetch(
            "UPDATE dlq_entries SET status = 'discarded', discarded_at = now(),"
            f" discard_reason = {reason_arg} WHERE id IN (SELECT id FROM dlq_entries WHERE {sql}"
            f" ORDER BY id{limit_sql} FOR UPDATE) AND status = 'pending' RETURNING id", *args)
    return sorted(int(r["id"]) for r in records)


async def mark_replayed(conn: asyncpg.Connection, ids: Sequence[int]) -> int:
    """``pending`` -> ``replayed`` for ``ids`` (called only after the broker acknowledged)."""
    if not ids:
        return 0
    with _db("marking DLQ entries replayed"):
        status = await conn.execute(
            "UPDATE dlq_entries SET status = 'replayed', replayed_at = now(),"
            " replay_count = replay_count + 1 WHERE id = ANY($1::bigint[]) AND status = 'pending'",
            list(ids))
    return int(status.rsplit(" ", 1)[-1])


# A key of its own (not the migrations'): replays serialise with each other, nothing else.
_REPLAY_LOCK = 0x52535F444C515250  # "RS_DLQRP"


@contextlib.asynccontextmanager
async def replay_lock(conn: asyncpg.Connection) -> Any:
    """Hold the replay lock for the block, or fail at once if another replay holds it.

    Two replays running at the same time could both read an entry as ``pending`` and both send
    it; one lock per database makes "only pending entries are sent" true for concurrent runs.
    """
    with _db("taking the DLQ replay lock"):
        got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", _REPLAY_LOCK)
    if not got:
        raise UserError("another `dlq replay` is running against this database; try again later")
    try:
        yield
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", _REPLAY_LOCK)


# --- reindex -----------------------------------------------------------------------------------

# NEWER: a later failure of the record (a replay that failed again); it makes the entry pending.
# LEGACY: a row written before migration 004 (no router.dlq coordinates): it gets the masked
# columns and the coordinates of its record, and keeps its status and history.
_NEWER = "(EXCLUDED.attempts > d.attempts AND d.status <> 'discarded')"
_LEGACY = "(d.dlq_offset IS NULL)"


def _when(condition: str, column: str) -> str:
    return f"{column} = CASE WHEN {condition} THEN EXCLUDED.{column} ELSE d.{column} END"


_UPSERT = f"""
INSERT INTO dlq_entries AS d ({", ".join(pg.DLQ_COLUMNS)})
SELECT dlq_key, reason, error, signal_id, tenant, kind, attempts, original_topic,
       original_partition, original_offset, original_key, original_headers::jsonb,
       original_value, original_timestamp, first_failed_at, last_failed_at, masked, dlq_topic,
       dlq_partition, dlq_offset
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[],
            $8::text[], $9::int4[], $10::int8[], $11::bytea[], $12::text[], $13::bytea[],
            $14::timestamptz[], $15::timestamptz[], $16::timestamptz[], $17::bool[],
            $18::text[], $19::int4[], $20::int8[])
     AS t({", ".join(pg.DLQ_COLUMNS)})
ORDER BY dlq_key
ON CONFLICT (dlq_key) DO UPDATE SET
    {_when(_NEWER, "reason")}, {_when(_NEWER, "attempts")},
    last_failed_at = CASE WHEN {_NEWER} THEN GREATEST(d.last_failed_at, EXCLUDED.last_failed_at)
                          ELSE d.last_failed_at END,
    status = CASE WHEN {_NEWER} THEN 'pending' ELSE d.status END,
    {_when(f"{_NEWER} OR {_LEGACY}", "error")},
    signal_id = CASE WHEN {_LEGACY} THEN COALESCE(EXCLUDED.signal_id, d.signal_id)
                     ELSE COALESCE(d.signal_id, EXCLUDED.signal_id) END,
    tenant = CASE WHEN {_LEGACY} THEN COALESCE(EXCLUDED.tenant, d.tenant)
                  ELSE COALESCE(d.tenant, EXCLUDED.tenant) END,
    kind = CASE WHEN {_LEGACY} THEN COALESCE(EXCLUDED.kind, d.kind)
                ELSE COALESCE(d.kind, EXCLUDED.kind) END,
    {", ".join(_when(f"{_NEWER} OR {_LEGACY}", c) for c in (
        "original_key", "original_headers", "original_value", "masked", "dlq_topic",
        "dlq_partition", "dlq_offset"))}
WHERE {_NEWER} OR {_LEGACY}
RETURNING (xmax = 0) AS inserted
"""


async def upsert_failures(conn: asyncpg.Connection, rows: Sequence[Mapping[str, Any]]
                          ) -> tuple[int, int]:
    """Write DLQ rows (``DLQ_COLUMNS`` keys); returns ``(inserted, updated)``.

    A new ``dlq_key`` is inserted. An existing one is left as it is, except when the new row is
    a *later* failure of the same record (more attempts: a replay that failed again) and the
    entry was not discarded: then it becomes ``pending`` again with the new attempts, reason and
    error. So a rebuild from ``router.dlq`` keeps every row an operator already worked on, and
    the same record written twice is one row either way. A row written before migration 004
    (no ``dlq_offset``) also takes the new row's masked columns and coordinates, keeping its
    status: rebuilding masks what was stored unmasked.
    """
    if not rows:
        return 0, 0
    latest: dict[str, Mapping[str, Any]] = {}
    for row in rows:  # one statement may not update a row twice: keep the last failure per key
        prev = latest.get(row["dlq_key"])
        if prev is None or row["attempts"] >= prev["attempts"]:
            latest[row["dlq_key"]] = row
    columns = [[row.get(c) for row in latest.values()] for c in pg.DLQ_COLUMNS]
    headers_at = pg.DLQ_COLUMNS.index("original_headers")
    columns[headers_at] = [pg.json_text(pg.encode_headers(h or [])) for h in columns[headers_at]]
    with _db("rebuilding DLQ entries"):
        records = await conn.fetch(_UPSERT, *columns)
    inserted = sum(1 for r in records if r["inserted"])
    return inserted, len(records) - inserted
