"""``dlq replay``: send DLQ entries back to where they came from, exactly as they arrived.

What is sent for an entry: its **original bytes and key** to its **original topic**, with its
original headers (minus any router headers of an earlier trip), its original record timestamp
when known, and the headers that let the worker's engine treat it as a re-fed record
(``core.wire.origin_of``):

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

**Where to.** Replay sends only to the topic the router reads signals from
(:func:`replay_topics`). Every entry the router writes names it: a record re-fed from
``router.retry`` keeps its first origin (``core.wire.origin_of``). An entry naming any other topic
(a ``router.dlq`` record the router did not write) is not sent, stays ``pending``, and is
reported with one line saying why (``ReplayReport.unavailable``), as is an entry whose topic does
not exist; the other entries are replayed.

**Order.** Entries are walked in their original order — original topic, partition, offset,
which for an entry dead-lettered more than once is its first failure (the row keeps those
coordinates) — whatever order their rows were written in, a page (``WINDOW`` rows) at a time by
keyset (:func:`store.pending_in_order`): memory is one window whatever the size. Within a key
(original topic and key) the replay keeps that order; across keys nothing is promised. An entry
whose key has an earlier entry that is not sent now (pending but not selected, refused by
``--max-attempts``, masked and unavailable, refused by the broker) is held back and stays
``pending`` unless ``allow_reorder`` (:class:`~router_stream.dlq.order.KeyGate`).

Steps, and what each guarantees:

1. take the replay lock (one replay per database at a time); count the selected entries
   (``pending``, ``attempts < max_attempts``, the first ``limit``) and the refused ones; check
   that the topics replay sends to exist (an entry naming another topic, or a missing one, is
   left out of the walk: unavailable);
2. per window: take the next page in original order (read ahead on a second connection while
   the previous window was sent), gate it, read back the original records of its masked
   entries from ``router.dlq``, queue it with the idempotent ``acks=all`` producer (batches per
   partition in order, so a key's records reach their partition in order), wait for every ack;
3. mark the acknowledged entries ``replayed`` (``WHERE status = 'pending'``, on a third
   connection, while the next window is sent). An entry is marked only after its ack; one the
   broker refused stays ``pending`` and holds back its key; an unreachable broker stops the
   replay (the rest stay ``pending``).

So running replay twice sends nothing the second time, and an interrupted replay run again
sends only what was not marked. SIGINT is handled: the acks in flight are awaited (at most
``ACK_GRACE_S``) and marked before the command exits. The one window left is a kill (SIGKILL,
a crash) between an ack (2) and its mark (3), at most two windows of entries: they are still
``pending`` and the rerun sends them again with the same ``x-dlq-original-*`` coordinates and
``x-dlq-attempts``. The worker's engine remembers each replay it decided by those
(``_Origin.replay_id``, in its dedupe window) and drops the second copy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from router_stream import tracing
from router_stream.adapters import postgres as pg
from router_stream.adapters.kafka_io import (
    ConsumedRecord,
    OutRecord,
    RateLimiter,
    RecordWriter,
    read_at,
)
from router_stream.config import SIGNALS, Settings
from router_stream.core.refusals import is_reference
from router_stream.core.wire import (
    H_OFFSET,
    H_PARTITION,
    H_SIGNAL_ID,
    H_TOPIC,
    Origin,
    replay_headers,
)
from router_stream.dlq import store
from router_stream.dlq.filters import DlqFilter
from router_stream.dlq.order import Blocked, KeyGate, KeyId, Position
from router_stream.dlq.store import DlqRow
from router_stream.errors import BrokerUnavailable, OperationTimeout, RouterError, UserError

__all__ = ["DEFAULT_MAX_ATTEMPTS", "ReplayReport", "original_problem", "read_originals",
           "replay_dlq", "replay_record", "replay_topics", "target_problem"]

DEFAULT_MAX_ATTEMPTS = 5
T = TypeVar("T")
WINDOW = 5000  # entries sent and acknowledged (and marked) before the next are sent
ACK_GRACE_S = 10.0  # interrupted: how long the acks in flight are still waited for


@dataclass
class ReplayReport:
    """What a replay did (or, with ``dry_run``, would do)."""

    dry_run: bool
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    selected: int = 0  # pending, under the attempt limit, at most --limit
    sent: list[int] = field(default_factory=list)  # acknowledged and marked replayed
    would_send: int = 0  # dry run: entries that would be sent
    refused: int = 0  # pending entries at or over max_attempts
    not_pending: list[int] = field(default_factory=list)  # ids asked for that are not pending
    # entries that cannot be replayed (masked with their router.dlq record gone, references,
    # naming a topic replay does not send to, or one that does not exist): (id, why), never sent
    unavailable: list[tuple[int, str]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)  # refused by the broker
    held: dict[str, int] = field(default_factory=dict)  # held back (stay pending), by why
    held_keys: int = 0

    @property
    def held_entries(self) -> int:
        return sum(self.held.values())


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
    origin = Origin(row.original_topic, row.original_partition, row.original_offset,
                    row.attempts, None)
    headers = replay_headers(kept, row.id, origin, row.first_failed_at.timestamp(), signal_id)
    timestamp_ms = (None if row.original_timestamp is None
                    else int(row.original_timestamp.timestamp() * 1000))
    return OutRecord(topic=row.original_topic, value=value, key=key, headers=headers,
                     timestamp_ms=timestamp_ms)


def replay_topics(settings: Settings) -> frozenset[str]:
    """The topics replay sends to: the one the router reads signals from. (A record re-fed from
    ``router.retry`` keeps its first origin, so its entry names this topic too.)"""
    return frozenset({settings.topic(SIGNALS)})


def target_problem(row: DlqRow, topics: AbstractSet[str],
                   missing: Mapping[str, str] | None = None) -> str | None:
    """Why ``row`` is not sent to its original topic: it is none of ``topics``, so the router
    did not write the entry's record (or ROUTER_TOPIC_PREFIX is not the router's), or the topic
    is in ``missing`` (topic -> why); None when it can go there."""
    topic = row.original_topic
    if topic not in topics:
        return (f"entry {row.id} not replayed: its original topic {topic} is not the topic the"
                f" router reads signals from ({', '.join(sorted(topics))}; check"
                f" ROUTER_TOPIC_PREFIX), and replay sends nowhere else; discard it with"
                f" `dlq discard {row.id} --reason ...`")
    if missing and topic in missing:
        return f"entry {row.id} not replayed: {missing[topic]}"
    return None


async def _missing_topics(writer: RecordWriter, topics: Sequence[str]) -> dict[str, str]:
    """Which of ``topics`` do not exist, with why; each is checked on its own, so a missing
    one stops only its entries."""
    missing: dict[str, str] = {}
    for topic in topics:
        try:
            await writer.ensure_topics([topic])
        except UserError as exc:
            missing[topic] = str(exc)
    return missing


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


async def read_originals(settings: Settings, rows: list[DlqRow]
                         ) -> tuple[dict[int, ConsumedRecord], dict[int, str]]:
    """The original records of the masked ``rows``, read back from ``router.dlq``, by id; and
    why, by id, for the ones that cannot be replayed."""
    originals: dict[int, ConsumedRecord] = {}
    problems: dict[int, str] = {}
    by_topic: dict[str, list[DlqRow]] = {}
    for row in rows:
        problem = reference_problem(row)
        if problem is not None:
            problems[row.id] = problem
        elif row.masked:
            by_topic.setdefault(row.dlq_topic or "", []).append(row)
    for topic, masked in sorted(by_topic.items()):
        positions = [(r.dlq_partition or 0, r.dlq_offset or 0) for r in masked]
        try:
            found = await read_at(settings, topic, positions)
        except UserError as exc:  # the DLQ topic itself is gone
            problems.update((r.id, f"entry {r.id} not replayed: its bytes are masked in"
                                   f" Postgres and {exc}") for r in masked)
            continue
        for row, position in zip(masked, positions, strict=True):
            record = found.get(position)
            problem = original_problem(row, record)
            if problem is not None:
                problems[row.id] = problem
            elif record is not None:
                originals[row.id] = record
    return originals, problems


async def replay_dlq(
    settings: Settings,
    where: DlqFilter,
    *,
    limit: int | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    rate: float | None = None,
    dry_run: bool = False,
    allow_reorder: bool = False,
    on_selected: Callable[[int], None] | None = None,
    on_sent: Callable[[int], None] | None = None,
    on_preview: Callable[[DlqRow], None] | None = None,
) -> ReplayReport:
    """Replay the ``pending`` entries matching ``where`` (see the module docstring).

    ``on_selected(n)`` is called once with the number of entries selected, ``on_sent(n)`` after
    each window is marked, and, in a dry run, ``on_preview(row)`` for each entry that would be
    sent, in the order it would be.
    """
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
            await _select(conn, where, pending, report, limit)
            if on_selected is not None:
                on_selected(report.selected)
            targets = replay_topics(settings)
            replay = _Replay(settings, conn, pending, report, KeyGate(allow_reorder), rate,
                             targets)
            if dry_run:
                await replay.run(None, on_sent, on_preview)
            elif report.selected:
                async with RecordWriter(settings) as writer:
                    named = await store.topics_of(conn, pending, max_attempts=max_attempts)
                    replay.missing = await _missing_topics(
                        writer, [t for t in named if t in targets])
                    await replay.run(writer, on_sent, on_preview)
    finally:
        await conn.close()
    return report


async def _select(conn: asyncpg.Connection, where: DlqFilter, pending: DlqFilter,
                  report: ReplayReport, limit: int | None) -> None:
    """Count what is selected and refused; an unknown id is a user error."""
    max_attempts = report.max_attempts
    report.refused = await store.count_entries(conn, pending, min_attempts=max_attempts)
    selected = await store.count_entries(conn, pending, max_attempts=max_attempts)
    report.selected = selected if limit is None else min(selected, limit)
    if where.ids:
        found = {r.id for r in await store.list_entries(conn, DlqFilter(ids=where.ids))}
        missing = sorted(set(where.ids) - found)
        if missing:
            raise UserError(f"no DLQ entry with id {', '.join(map(str, missing))}")
        pending_ids = {r.id for r in await store.list_entries(conn, pending)}
        report.not_pending = sorted(found - pending_ids)


def _key_of(row: DlqRow) -> KeyId | None:
    return None if row.original_key is None else (row.original_topic, row.original_key)


def _position(row: DlqRow) -> Position:
    return row.original_partition, row.original_offset


class _Replay:
    """One replay's walk over the selection, a window (one page of rows in original order) at a
    time: gated, sent and acknowledged, then marked while the next window is sent. Three
    connections: the next page is read, and a window marked, while another is sent."""

    def __init__(self, settings: Settings, conn: asyncpg.Connection, pending: DlqFilter,
                 report: ReplayReport, gate: KeyGate, rate: float | None,
                 targets: AbstractSet[str]) -> None:
        self._settings = settings
        self._targets = targets
        self.missing: dict[str, str] = {}  # topics of ``targets`` that do not exist -> why
        self._conn = conn
        self._pending = pending
        self._report = report
        self._gate = gate
        self._pacer = RateLimiter(rate)
        self._paced = rate is not None
        # With a rate, windows of about one second's worth, so entries are marked as they go.
        self._window = WINDOW if rate is None else max(1, min(WINDOW, int(rate)))
        self._marking: asyncio.Future[None] | None = None

    async def run(self, writer: RecordWriter | None, on_sent: Callable[[int], None] | None,
                  on_preview: Callable[[DlqRow], None] | None) -> None:
        report = self._report
        reader = await pg.connect(self._settings)
        marker = await pg.connect(self._settings)
        pages = store.pending_in_order(reader, self._pending, max_attempts=report.max_attempts,
                                       page=self._window, limit=report.selected)
        upcoming = asyncio.ensure_future(anext(pages, None))
        try:
            while (page := await upcoming) is not None:
                upcoming = asyncio.ensure_future(anext(pages, None))
                rows, originals = await self._admitted(page)
                if writer is None:
                    report.would_send += len(rows)
                    for row in rows:
                        if on_preview is not None:
                            on_preview(row)
                    continue
                await self._send_window(writer, rows, originals, marker, on_sent)
        finally:
            upcoming.cancel()
            await asyncio.gather(upcoming, return_exceptions=True)
            try:
                await self._marked()
            finally:
                await pages.aclose()
                await reader.close()
                await marker.close()
                report.held = {str(why): n for why, n in self._gate.held.items()}
                report.held_keys = len(self._gate.held_keys)

    async def _admitted(self, page: list[DlqRow]
                        ) -> tuple[list[DlqRow], dict[int, ConsumedRecord]]:
        """The rows of ``page`` that go now, in order, and the originals of the masked ones."""
        gate = self._gate
        # left out before the gate: every entry of their key names the same topic
        page = [row for row in page if not self._skipped(row)]
        keys = sorted({k for k in map(_key_of, page) if k is not None})
        earlier = await store.earliest_pending(self._conn, keys, self._pending,
                                               max_attempts=self._report.max_attempts)
        for key, (partition, offset, refused) in earlier.items():
            gate.block(key, (partition, offset), Blocked.REFUSED if refused else
                       Blocked.NOT_SELECTED)
        admitted = [row for row in page if gate.admit(_key_of(row), _position(row))]
        originals, problems = await read_originals(self._settings, admitted)
        if not problems:
            return admitted, originals
        rows = []
        for row in admitted:
            problem = problems.get(row.id)
            if problem is None:
                rows.append(row)
                continue
            self._report.unavailable.append((row.id, problem))
            gate.block(_key_of(row), _position(row), Blocked.UNAVAILABLE)
        # an entry admitted before a later-blocked one of its key is still in order
        return [r for r in rows if gate.admit(_key_of(r), _position(r))], originals

    def _skipped(self, row: DlqRow) -> bool:
        """True (and reported) when ``row`` cannot go to its original topic."""
        problem = target_problem(row, self._targets, self.missing)
        if problem is not None:
            self._report.unavailable.append((row.id, problem))
        return problem is not None

    async def _send_window(self, writer: RecordWriter, rows: list[DlqRow],
                           originals: dict[int, ConsumedRecord], marker: asyncpg.Connection,
                           on_sent: Callable[[int], None] | None) -> None:
        """Send ``rows`` and wait for every ack; their mark runs while the next window is sent.

        A record the broker refuses (too large, ...) blocks its key and the walk goes on; an
        unreachable broker stops the replay after marking what was acknowledged. Interrupted
        (SIGINT cancels the task), it still waits a bounded time for the acks in flight and
        marks them, so a rerun does not send them again.
        """
        futures: list[tuple[DlqRow, asyncio.Future[None]]] = []
        stop: RouterError | None = None
        started, traced = time.time(), tracing.tracer() is not None
        sent_headers: dict[int, Any] = {}  # for the router.replay spans
        try:
            try:
                batch: list[tuple[DlqRow, OutRecord]] = []
                refused = False
                for row in rows:
                    if refused and not self._gate.admit(_key_of(row), _position(row)):
                        continue  # behind a record of its key refused earlier in this window
                    record = replay_record(row, originals.get(row.id))
                    refusal = writer.refusal(record)
                    if refusal is not None:
                        self._refused(row, refusal)
                        refused = True
                        continue
                    batch.append((row, record))
                    if traced:
                        sent_headers[row.id] = record.headers
                    if self._paced:  # one at a time, at the rate
                        await self._pacer.wait()
                        futures += await self._send(writer, batch)
                        batch = []
                futures += await self._send(writer, batch)
            except (BrokerUnavailable, OperationTimeout) as exc:
                stop = exc  # what was queued before it is awaited and marked below
            if futures:
                await asyncio.wait({f for _, f in futures})
        except asyncio.CancelledError:
            if futures:
                await asyncio.wait([f for _, f in futures], timeout=ACK_GRACE_S)
            acked, _ = self._settle(futures)
            await _uncancelled(self._marked())
            await _uncancelled(self._mark(marker, acked, on_sent))
            raise
        acked, stop_after = self._settle(futures)
        if traced:
            tracing.record_spans("router.replay", (
                (sent_headers.get(i), {"router.dlq_id": i}) for i in acked), started)
        await self._marked()  # the previous window's
        self._marking = asyncio.ensure_future(self._mark(marker, acked, on_sent))
        stop = stop or stop_after
        if stop is not None:
            await self._marked()
            cls = BrokerUnavailable if stop.retriable else RouterError
            raise cls(f"replay stopped after {len(self._report.sent)} of {self._report.selected}"
                      f" entries: {stop} (the rest stay pending; run the same replay again)"
                      ) from stop

    @staticmethod
    async def _send(writer: RecordWriter, batch: list[tuple[DlqRow, OutRecord]]
                    ) -> list[tuple[DlqRow, asyncio.Future[None]]]:
        futures = await writer.send_many([record for _, record in batch])
        return [(row, future) for (row, _), future in zip(batch, futures, strict=True)]

    def _settle(self, futures: list[tuple[DlqRow, asyncio.Future[None]]]
                ) -> tuple[list[int], RouterError | None]:
        """The acknowledged ids, and what stops the replay; a refused entry blocks its key."""
        acked: list[int] = []
        stop: RouterError | None = None
        for row, future in futures:
            if not future.done() or future.cancelled():
                continue
            exc = future.exception()
            if exc is None:
                acked.append(row.id)
            elif isinstance(exc, BrokerUnavailable | OperationTimeout) or not isinstance(
                    exc, RouterError):
                stop = stop or (exc if isinstance(exc, RouterError) else RouterError(repr(exc)))
            else:
                self._refused(row, exc)
        return acked, stop

    async def _mark(self, marker: asyncpg.Connection, acked: list[int],
                    on_sent: Callable[[int], None] | None) -> None:
        await store.mark_replayed(marker, acked)
        self._report.sent.extend(acked)
        if on_sent is not None and acked:
            on_sent(len(acked))

    async def _marked(self) -> None:
        """Wait for the window being marked (its error, if any, is raised here)."""
        marking, self._marking = self._marking, None
        if marking is not None:
            await _uncancelled(marking)

    def _refused(self, row: DlqRow, exc: RouterError) -> None:
        self._report.failed.append((row.id, f"entry {row.id} not replayed: {exc}"))
        self._gate.block(_key_of(row), _position(row), Blocked.SEND_FAILED)


async def _uncancelled(step: Awaitable[T]) -> T:
    """Run ``step`` to the end even if the caller is cancelled meanwhile."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        return await task
