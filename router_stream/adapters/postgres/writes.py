"""Idempotent batch writes.

``insert_*`` take a sequence of rows, each either a tuple in the documented column order
(``DECISION_COLUMNS`` etc.) or a mapping with those keys (missing optional keys are NULL /
the column default), and return how many rows were new. A batch is COPYed into a session
staging table and moved with one ``INSERT ... SELECT ... ON CONFLICT``, idempotent on each
table's natural key; :func:`copy_decisions` COPYs decision rows straight into their table and
takes that path only for a batch that meets a row already there. The staging table is per
session: fine with asyncpg pools, not with a transaction-mode pgbouncer (which does not keep
temp tables). Measurements: docs/performance.md, "Postgres writes".
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

import asyncpg

from router_stream.adapters.postgres.connections import unavailable_as_router_error
from router_stream.adapters.postgres.tables import (
    _BREAKER_TRANSITIONS,
    _DECISIONS,
    _DLQ,
    _INPUT_KEY,
    _SHADOW,
    _TRUST_SNAPSHOTS,
    _records,
    _Table,
    _with_dlq_key,
)


async def _write(conn: asyncpg.Connection, table: _Table, rows: Sequence[Any], *,
                 savepoint: bool = True,
                 reduce: Callable[[list[list[Any]]], list[list[Any]]] | None = None) -> int:
    """COPY the batch into the session's staging table, then INSERT ... SELECT ... ON CONFLICT.
    ``savepoint=False`` (see :func:`copy_decisions`): in the caller's transaction as it is.
    ``reduce``: applied to the converted rows first (one row per key, for a DO UPDATE)."""
    if not rows:
        return 0
    records = _records(table, rows)
    if reduce is not None:
        records = reduce(records)
    with unavailable_as_router_error(f"writing {table.name}"):
        if not savepoint:
            return await _staged(conn, table, records)
        outer = conn.is_in_transaction()
        async with conn.transaction():
            inserted = await _staged(conn, table, records)
            if outer:  # ON COMMIT DELETE ROWS only empties it when the outer transaction ends
                await conn.execute(f"TRUNCATE {table.staging}")
        return inserted


async def _staged(conn: asyncpg.Connection, table: _Table, records: list[list[Any]]) -> int:
    await conn.execute(table.staging_ddl())
    await conn.copy_records_to_table(table.staging, records=records, columns=table.column_names)
    status = await conn.execute(table.insert_sql())
    return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <n>"


_SIGNAL = _DECISIONS.column_names.index("signal_id")
_INPUT = slice(_DECISIONS.column_names.index("input_topic"),
               _DECISIONS.column_names.index("input_offset") + 1)
_DECIDED_AT = _DECISIONS.column_names.index("decided_at")


def one_decision_per_signal(rows: list[Any]) -> list[Any]:
    """The rows of a batch that the decisions table's ``ON CONFLICT`` rule keeps, one per
    signal_id (rows in ``DECISION_COLUMNS`` order, timestamps converted): the first, replaced by
    a later decision of the same input. One INSERT cannot update a row twice, and a COPY
    refuses a key twice, so a batch holding two attempts of one input is reduced first."""
    kept: dict[Any, Any] = {}
    for row in rows:
        prev = kept.get(row[_SIGNAL])
        if prev is None or (prev[_INPUT] == row[_INPUT] and prev[_DECIDED_AT] < row[_DECIDED_AT]):
            kept[row[_SIGNAL]] = row
    return rows if len(kept) == len(rows) else list(kept.values())


async def insert_decisions(conn: asyncpg.Connection, rows: Sequence[Any]) -> int:
    """Write decision rows; a signal_id already present is skipped, unless the row is a later
    decision of the same input (a re-processed record), which replaces it. Returns rows
    inserted or replaced."""
    return await _write(conn, _DECISIONS, rows, reduce=one_decision_per_signal)


async def copy_decisions(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]], *,
                         savepoint: bool = True) -> int:
    """Write decision rows given as tuples of the columns' own types (``DECISION_COLUMNS``
    order, timestamps as ``datetime``): COPY straight into ``routing_decisions``, and only when
    a row is already there (a re-processed batch) through :func:`insert_decisions`. Same result,
    without the staging table on the common path. Returns rows inserted.

    ``savepoint=False`` saves the savepoint's two round trips when the caller is ready to roll
    its whole transaction back on any error, a row already there included (raised as
    ``UniqueViolationError``)."""
    if not rows:
        return 0
    # In signal_id order, as insert_decisions: concurrent writers take the keys' locks in the
    # same order, so one waits for the other instead of deadlocking.
    ordered = sorted(one_decision_per_signal(list(rows)), key=itemgetter(_SIGNAL))
    with unavailable_as_router_error("writing routing_decisions"):
        if not savepoint:
            await conn.copy_records_to_table(
                _DECISIONS.name, records=ordered, columns=_DECISIONS.column_names)
            return len(ordered)
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    _DECISIONS.name, records=ordered, columns=_DECISIONS.column_names)
            return len(ordered)
        except asyncpg.exceptions.UniqueViolationError:
            return await insert_decisions(conn, ordered)


@dataclass(frozen=True, slots=True)
class KnownOutcomes:
    """What Postgres already holds for some inputs (original topic/partition/offset keys)."""

    pending: dict[str, datetime]  # input -> its pending DLQ entry's last_failed_at
    duplicates: set[str]  # inputs whose pending DLQ entry says ``duplicate``
    decided: dict[str, datetime]  # input -> its latest decision's decided_at (not a replay's)
    replayed: set[str]  # inputs with a decision of an operator's replay
    signals: dict[str, set[str | None]]  # input -> the signal_ids of those rows


async def known_outcomes(conn: asyncpg.Connection, decided: Sequence[str],
                         dead_lettered: Sequence[str]) -> KnownOutcomes:
    """In one round trip: which of the inputs ``decided`` have a *pending* DLQ entry, and
    which of the inputs ``dead_lettered`` have a decision row, with their times."""
    if not decided and not dead_lettered:
        return KnownOutcomes({}, set(), {}, set(), {})
    # Joins with the unnested keys, not `dlq_key = ANY($1)`: a sequential scan filtered by ANY
    # compares every row with every key (5,000 keys x 3,000 rows: 0.28 s a batch). Decisions
    # are probed one key at a time (LATERAL): until routing_decisions is first ANALYZEd, the
    # planner has no statistics on the input-key expression and chose a hash join over a
    # sequential scan that builds every row's key, for every batch.
    rows = await conn.fetch(
        "SELECT d.reason AS what, d.dlq_key AS key, d.last_failed_at AS at,"
        " d.signal_id AS signal FROM unnest($1::text[]) AS k(key)"
        " JOIN dlq_entries d ON d.dlq_key = k.key WHERE d.status = 'pending'"
        " UNION ALL"
        " SELECT CASE WHEN r.replay THEN 'replayed' ELSE 'decided' END, k.key, r.at, r.signal"
        " FROM unnest($2::text[]) AS k(key) CROSS JOIN LATERAL"
        " (SELECT state->'extra'->>'replay_of' IS NOT NULL AS replay, max(decided_at) AS at,"
        "  min(signal_id) AS signal"
        f"  FROM routing_decisions WHERE {_INPUT_KEY} = k.key GROUP BY 1) AS r",
        list(decided), list(dead_lettered),
    )
    found = KnownOutcomes({}, set(), {}, set(), {})
    for r in rows:
        if r["what"] != "replayed":
            found.signals.setdefault(r["key"], set()).add(r["signal"])
        if r["what"] == "decided":
            found.decided[r["key"]] = r["at"]
        elif r["what"] == "replayed":
            found.replayed.add(r["key"])
        else:  # a pending entry's reason
            found.pending[r["key"]] = r["at"]
            if r["what"] == "duplicate":
                found.duplicates.add(r["key"])
    return found


async def delete_decisions_of_inputs(conn: asyncpg.Connection, keys: Sequence[str]) -> int:
    """Delete the decision rows of ``keys`` (input topic/partition/offset), except those of an
    operator's replay: a DLQ entry that supersedes them is the inputs' outcome. Returns how
    many were deleted."""
    if not keys:
        return 0
    status = await conn.execute(
        f"DELETE FROM routing_decisions WHERE {_INPUT_KEY} = ANY($1::text[])"
        " AND state->'extra'->>'replay_of' IS NULL",  # an operator's replay decides anew
        list(keys))
    return int(status.rsplit(" ", 1)[-1])


async def delete_pending_dlq_entries(conn: asyncpg.Connection, keys: Sequence[str]) -> int:
    """Delete the DLQ entries of ``keys`` that are still pending (an entry an operator replayed
    or discarded stays): a later decision of the same input is its outcome. Returns how many
    were deleted."""
    if not keys:
        return 0
    status = await conn.execute(
        "DELETE FROM dlq_entries WHERE dlq_key = ANY($1::text[]) AND status = 'pending'",
        list(keys))
    return int(status.rsplit(" ", 1)[-1])


async def insert_dlq_entries(conn: asyncpg.Connection, rows: Sequence[Any], *,
                             savepoint: bool = True) -> int:
    """Write DLQ entries; a dlq_key already present is skipped unless the new entry has more
    attempts (a replay that failed again). Returns rows inserted or updated.

    ``savepoint=False``: no savepoint of its own and the staging table left filled, for a
    caller that writes DLQ entries once in its transaction and rolls it all back on an error."""
    return await _write(conn, _DLQ, [_with_dlq_key(r) for r in rows], savepoint=savepoint)


async def insert_breaker_transitions(conn: asyncpg.Connection, rows: Sequence[Any]) -> int:
    """Record breaker transitions; the same (target, at, from, to) twice is one row."""
    return await _write(conn, _BREAKER_TRANSITIONS, rows)


async def insert_shadow_decisions(conn: asyncpg.Connection, rows: Sequence[Any]) -> int:
    """Record shadow evaluations of a rollout candidate; idempotent per (signal, candidate)."""
    return await _write(conn, _SHADOW, rows)


async def insert_trust_snapshots(conn: asyncpg.Connection, rows: Sequence[Any]) -> int:
    """Record trust scores; the same (source_id, at) twice is one row."""
    return await _write(conn, _TRUST_SNAPSHOTS, rows)
