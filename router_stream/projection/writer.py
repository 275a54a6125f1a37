"""One projection batch -> one Postgres transaction, with every row's failure isolated to it.

A batch is written in one transaction, idempotently (``ON CONFLICT`` on signal_id, dlq_key and
the events' natural keys), and the later outcome of an input record wins (:func:`latest_outcomes`;
between two decisions of one input, ``tables._DECISIONS``'s own rule).

Row isolation: when Postgres refuses a table's rows for their *content* (SQLSTATE class 22 data
exception — e.g. U+0000 in text —, 23 integrity constraint, 54 program limit) or a value cannot
be converted, the rows are split in halves (each write is a savepoint) until the refused row is
found. That row is written again with U+0000 escaped (:func:`~.rows.escape_nul`); if Postgres
still refuses it, it is skipped and reported with its Kafka position — the record stays on its
topic, so nothing is lost, and the partition never stalls on it. Any other error (the database
unreachable, a timeout) aborts the transaction and is the caller's to retry.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from router_stream.adapters import postgres as pg
from router_stream.adapters.postgres.rows import (
    DecisionRecord,
    decision_extra,
    decision_row,
    escape_nul,
    input_key,
    policy_status_args,
    policy_version_args,
    shadow_row,
    transition_row,
    trust_rows,
)
from router_stream.core.events import (
    BreakerTransitionEvent,
    PolicyStatusEvent,
    PolicyVersionEvent,
    RouterEvent,
    ShadowEvent,
    TrustSnapshotEvent,
)
from router_stream.core.redaction import Redactor

log = logging.getLogger("router_stream.projection")

ROW_CONTENT_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})
_SIGNAL = pg.DECISION_COLUMNS.index("signal_id")


@dataclass(frozen=True, slots=True)
class Skipped:
    """A row Postgres refused even escaped: where its record is, and why."""

    table: str
    position: str  # topic/partition/offset of the Kafka record
    error: str


class DecisionRow(msgspec.Struct, gc=False):
    """A decision's row (``DECISION_COLUMNS``, masked) and what "latest outcome wins" needs.
    ``gc=False``: a batch holds thousands, none part of a cycle."""

    row: tuple[Any, ...]
    input_key: str  # the decided record's position, as a DLQ entry's dlq_key
    replay: bool  # an operator's replay of a DLQ entry
    at: str
    ts: int


@dataclass
class ProjectionBatch:
    """The rows of one fetch, each with the position of its record (``topic/partition/offset``)
    and, for decisions and DLQ rows, the record's timestamp (ms) for "latest outcome wins"."""

    decisions: list[DecisionRow] = field(default_factory=list)
    dlq: list[tuple[dict[str, Any], str, int]] = field(default_factory=list)
    events: list[tuple[RouterEvent, str]] = field(default_factory=list)
    _tenants: dict[str, str] = field(default_factory=dict)  # tenant -> its mask

    def __len__(self) -> int:
        return len(self.decisions) + len(self.dlq) + len(self.events)

    def add_decision(self, d: DecisionRecord, at: str, ts: int, redactor: Redactor) -> None:
        """Add the row of ``d`` masked by ``redactor``."""
        extra = decision_extra(d)
        replay = isinstance(extra, dict) and bool(extra.get("replay_of"))
        self.decisions.append(DecisionRow(decision_row(d, redactor, self._tenants),
                                          input_key(d), replay, at, ts))


@dataclass
class WriteReport:
    written: dict[str, int] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)

    def add(self, table: str, n: int) -> None:
        self.written[table] = self.written.get(table, 0) + n


def is_row_content_error(exc: BaseException) -> bool:
    """True when ``exc`` says a row's content is wrong, not that the database is unwell."""
    if isinstance(exc, (ValueError, TypeError, OverflowError)):  # value conversion for COPY
        return True
    state = getattr(exc, "sqlstate", None)
    return (isinstance(exc, asyncpg.PostgresError) and isinstance(state, str)
            and state[:2] in ROW_CONTENT_SQLSTATE_CLASSES)


async def write_batch(conn: asyncpg.Connection, batch: ProjectionBatch,
                      redactor: Redactor) -> WriteReport:
    """Write ``batch`` in one transaction; rows refused for their content are isolated
    (module docstring) and listed in the report.

    First without a savepoint per table (two round trips each, and the batch's whole write is
    on the projection's critical path); when Postgres refuses a row, that transaction is rolled
    back and the batch written again with the savepoints that isolate the row."""
    with pg.unavailable_as_router_error("writing a projection batch to Postgres"):
        try:
            return await _write_at_once(conn, batch, redactor)
        except Exception as exc:  # noqa: BLE001 - classified here; anything else is re-raised
            if not is_row_content_error(exc):
                raise
        report = WriteReport()
        async with conn.transaction():
            decisions, dlq = await latest_outcomes(conn, batch)
            await _rows(conn, "routing_decisions", pg.copy_decisions, decisions, report)
            await _rows(conn, "dlq_entries", pg.insert_dlq_entries, dlq, report)
            await _events(conn, batch.events, redactor, report)
    return report


async def _write_at_once(conn: asyncpg.Connection, batch: ProjectionBatch,
                         redactor: Redactor) -> WriteReport:
    report = WriteReport()
    async with conn.transaction():
        decisions, dlq = await latest_outcomes(conn, batch)
        if decisions:
            report.add("routing_decisions", await pg.copy_decisions(
                conn, [row for row, _ in decisions], savepoint=False))
        if dlq:
            report.add("dlq_entries", await pg.insert_dlq_entries(
                conn, [row for row, _ in dlq], savepoint=False))
        await _events(conn, batch.events, redactor, report)
    return report


async def latest_outcomes(conn: asyncpg.Connection, batch: ProjectionBatch
                          ) -> tuple[list[tuple[tuple[Any, ...], str]],
                                     list[tuple[dict[str, Any], str]]]:
    """Keep the ledger at exactly one outcome per input record across re-processing: the
    rows of ``batch`` to write, after deleting the stored rows they replace.

    Re-deciding a record after a worker crash is not always deterministic (rate-limit buckets
    and the dedupe window start empty in a new process, a TTL may run out during the recovery,
    breaker cooldowns depend on the clock), so one input may have a decision record *and* a DLQ
    record on Kafka. The later attempt wins: it is the one whose outputs were all acknowledged
    before the input's offset was committed, while an earlier attempt may have died after its
    decision record and before its routed records. "Later" compares a decision record's Kafka
    timestamp, or a stored decision's ``decided_at``, with a DLQ entry's ``last_failed_at`` (its
    record's timestamp); a decision wins a tie. The loser's stored row is deleted: a *pending*
    DLQ entry (one an operator already replayed or discarded stays, beside the decision), or a
    decision that is not an operator's replay. A decision of an operator's replay of the
    entry (marked by ``x-dlq-id``) is always written, and a DLQ entry of an input that has one
    is not (a replay that failed again re-opens its entry through the DLQ table's own rule).
    A DLQ key written twice keeps its failure with the most attempts.

    Records of one input with different signal_ids are not attempts of one record: a producer
    copied another record's origin headers (``x-dlq-original-*``, meant for retries and
    replays). Between those the *first* wins, so a forged record cannot delete another input's
    row. The same holds between a decision and a ``duplicate`` entry of one input. A worker that
    decides an input again after its batch failed (a rebalance during a broker outage) finds
    the signal in its dedupe window: that ``duplicate`` is the input's own earlier decision. And
    an input dead-lettered as a duplicate of *another* input's signal keeps that entry when a
    restarted worker, its dedupe window empty, decides it: the signal's decision row is the
    other input's.

    A DLQ entry marked ``x-dlq-supersedes-decision`` (the broker refused an output of the input
    after its decision record was written, and the worker dead-lettered the input instead) wins
    over a decision of the same attempt, earlier or not.

    Two decisions of one input are not decided here: the later replaces the earlier in
    ``routing_decisions`` itself (its ``ON CONFLICT`` rule)."""
    replays = {d.input_key for d in batch.decisions if d.replay}
    decided = _Times()  # fresh decisions of each input
    for d in batch.decisions:
        if d.input_key not in replays:
            decided.add(d.input_key, d.ts, d.row[_SIGNAL])
    failed = _Times()  # DLQ records of each input
    latest: dict[str, tuple[dict[str, Any], str]] = {}
    for row, at, ts in batch.dlq:
        key = row["dlq_key"]
        failed.add(key, ts, row["signal_id"])
        prev = latest.get(key)
        if prev is None or row["attempts"] >= prev[0]["attempts"]:
            latest[key] = (row, at)
    superseding = {key for key, (row, _) in latest.items() if row.get("supersedes_decision")}
    known = await pg.known_outcomes(conn, list(decided.last), list(latest))
    duplicates = known.duplicates | {
        key for key, (row, _) in latest.items() if row["reason"] == "duplicate"}
    for key, when in known.decided.items():
        decided.add(key, ms(when), *known.signals[key])
    for key, when in known.pending.items():
        failed.add(key, ms(when), *known.signals[key])

    def dead_lettered(key: str) -> bool:
        """The input's outcome is its DLQ entry."""
        if key in superseding:
            return True
        if key in replays or key in known.replayed or key not in failed.last:
            return False
        if key not in decided.last:
            return True
        return dead_letter_wins(
            (failed.first[key], failed.last[key]), (decided.first[key], decided.last[key]),
            duplicate=key in duplicates, same_signal=failed.signals[key] == decided.signals[key])

    await pg.delete_decisions_of_inputs(
        conn, [k for k in known.decided if dead_lettered(k)] + sorted(superseding))
    await pg.delete_pending_dlq_entries(
        conn, [k for k in known.pending if not dead_lettered(k)])
    decisions = [(d.row, d.at) for d in batch.decisions
                 if d.input_key in replays or not dead_lettered(d.input_key)]
    dlq = [(row, at) for key, (row, at) in latest.items()
           if dead_lettered(key) or (key not in decided.last and key not in known.replayed)]
    return decisions, dlq


def dead_letter_wins(failed: tuple[int, int], decided: tuple[int, int], *, duplicate: bool,
                     same_signal: bool) -> bool:
    """Whether an input's DLQ entry, not its decision, is its outcome (:func:`latest_outcomes`):
    each side's records as (first, last) time in ms. Judged by the last records, or by the
    first for a ``duplicate`` entry or when the two sides carry different signal_ids (not
    attempts of one record); a decision wins a tie."""
    if duplicate or not same_signal:
        return failed[0] < decided[0]
    return failed[1] > decided[1]


class _Times:
    """The first and the last time (ms) of each input's records of one kind, and their
    signal_ids."""

    def __init__(self) -> None:
        self.first: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.signals: dict[str, set[str | None]] = {}

    def add(self, key: str, ms: int, *signal_ids: str | None) -> None:
        self.first[key] = min(ms, self.first.get(key, ms))
        self.last[key] = max(ms, self.last.get(key, ms))
        self.signals.setdefault(key, set()).update(signal_ids)


def ms(when: datetime) -> int:
    """A stored time as a record timestamp (ms)."""
    return int(when.timestamp() * 1000)


Insert = Callable[[asyncpg.Connection, Sequence[Any]], Awaitable[int]]


async def _rows(conn: asyncpg.Connection, table: str, insert: Insert,
                rows: Sequence[tuple[Any, str]], report: WriteReport) -> None:
    """``insert`` the rows, bisecting to the rows Postgres refuses for their content."""
    if not rows:
        return
    try:
        async with conn.transaction():  # a savepoint: a refusal leaves the batch usable
            report.add(table, await insert(conn, [r for r, _ in rows]))
        return
    except Exception as exc:  # noqa: BLE001 - classified here; anything else is re-raised
        if not is_row_content_error(exc):
            raise
        error: BaseException = exc
    if len(rows) > 1:
        mid = len(rows) // 2
        await _rows(conn, table, insert, rows[:mid], report)
        await _rows(conn, table, insert, rows[mid:], report)
        return
    row, at = rows[0]
    escaped = escape_nul(row)
    if escaped != row:
        try:
            async with conn.transaction():
                report.add(table, await insert(conn, [escaped]))
            return
        except Exception as exc:  # noqa: BLE001 - as above
            if not is_row_content_error(exc):
                raise
            error = exc
    _skip(report, table, at, error)


def _skip(report: WriteReport, table: str, at: str, error: BaseException) -> None:
    skipped = Skipped(table, at, f"{type(error).__name__}: {error}"[:500])
    report.skipped.append(skipped)
    log.error("row refused by Postgres, skipped (the record stays on its topic)", extra={
        "table": skipped.table, "position": skipped.position, "error": skipped.error})


async def _events(conn: asyncpg.Connection, events: Sequence[tuple[RouterEvent, str]],
                  redactor: Redactor, report: WriteReport) -> None:
    transitions: list[tuple[Any, str]] = []
    trust: list[tuple[Any, str]] = []
    shadow: list[tuple[Any, str]] = []
    for event, at in events:
        if isinstance(event, BreakerTransitionEvent):
            transitions.append((transition_row(event), at))
        elif isinstance(event, TrustSnapshotEvent):
            trust.extend((row, at) for row in trust_rows(event))
        elif isinstance(event, ShadowEvent):
            shadow.append((shadow_row(event, redactor), at))
    await _rows(conn, "breaker_transitions", pg.insert_breaker_transitions, transitions, report)
    await _rows(conn, "trust_snapshots", pg.insert_trust_snapshots, trust, report)
    await _rows(conn, "shadow_decisions", pg.insert_shadow_decisions, shadow, report)
    for event, at in events:  # in order: a publish then a rollback must end rolled back
        if isinstance(event, PolicyVersionEvent):
            await _policy(conn, "policy_versions", at, report, pg.record_policy_version,
                          policy_version_args(event))
        elif isinstance(event, PolicyStatusEvent):
            await _policy(conn, "policy_versions", at, report, pg.mark_policy_status,
                          policy_status_args(event))


async def _policy(conn: asyncpg.Connection, table: str, at: str, report: WriteReport,
                  write: Callable[..., Awaitable[None]], args: dict[str, Any]) -> None:
    for attempt in (args, escape_nul(args)):
        try:
            async with conn.transaction():
                await write(conn, **attempt)
            report.add(table, 1)
            return
        except Exception as exc:  # noqa: BLE001 - classified here; anything else is re-raised
            if not is_row_content_error(exc):
                raise
            error: BaseException = exc
    _skip(report, table, at, error)
