"""The crash-loop guard on the worker's partitions (the rules: :mod:`router_stream.core.crashloop`).

A record that kills the process outright — an interpreter fault, memory, a bug outside the
engine's per-record isolation — is met again by the next worker at the same committed offset.
:class:`CrashGuard` screens every fetched batch: on a partition it just took over it reads the
committed offset's metadata, commits the raised attempt count before anything is decided, keeps
a careful partition to one record per batch, and hands back the record to dead-letter once the
count reached ``max_restarts``.

A careful partition's other fetched records are held here and handed out one per batch, in
offset order ahead of what is fetched later. Seeking back to them instead would cost a fetch
each: librdkafka fetches a seeked partition only after the fetch in flight returns, which waits
up to ``fetch.wait.max.ms`` (500 ms) when the other partitions are idle (docs/performance.md,
2026-12-07). At most :data:`HELD_MAX` are held per partition (the
consumer keeps fetching it meanwhile); past that the partition is fetched again from the first
record not held.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from router_stream.core.crashloop import GuardMark, Verdict
from router_stream.worker.rdkafka import Partition, SignalConsumer

log = logging.getLogger("router_stream.worker")

Retry = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]

HELD_MAX = 1000


class CrashGuard:
    """Per-partition guard state of one worker; see the module docstring."""

    def __init__(self, max_restarts: int, retry: Retry) -> None:
        self._max_restarts = max_restarts
        self._retry = retry
        self._unchecked: set[Partition] = set()
        self._careful: dict[Partition, int] = {}  # partition -> careful up to this offset
        self._held: dict[Partition, list[Any]] = {}  # a careful partition's records still due

    @property
    def careful(self) -> bool:
        """Some partition is decided one record per batch: each only after the batches before
        it committed, so the committed offset names the record being decided."""
        return bool(self._careful)

    @property
    def holding(self) -> bool:
        """Records fetched earlier wait here: the next batch need not wait for a fetch."""
        return bool(self._held)

    def assigned(self, tps: set[Partition]) -> None:
        self._unchecked |= tps

    def revoked(self, tps: set[Partition]) -> None:
        self._unchecked -= tps
        for tp in tps:
            self._careful.pop(tp, None)
            self._held.pop(tp, None)

    def metadata(self, tp: Partition, next_offset: int) -> str:
        """The metadata to commit ``next_offset`` with. Inside a careful span this worker
        decides the record at ``next_offset`` right after, alone: that is one attempt at it."""
        until = self._careful.get(tp)
        if until is None or next_offset > until:
            return ""
        return GuardMark(1, until).to_metadata()

    async def screen(self, consumer: SignalConsumer, records: list[Any]
                     ) -> tuple[list[Any], list[Any]]:
        """The records to decide and the records to dead-letter unseen, in fetch order after
        the records held from earlier fetches."""
        held = [r for rs in self._held.values() for r in rs]
        self._held = {}
        records = [*held, *records]
        by_tp: dict[Partition, list[Any]] = {}
        for r in records:
            by_tp.setdefault(Partition(r.topic, r.partition), []).append(r)
        fresh = [tp for tp in by_tp if tp in self._unchecked]
        if not fresh and not self._careful:
            return records, []
        marks = await self._retry("guard", lambda: _committed(consumer, fresh)) if fresh else {}
        keep: dict[Partition, list[Any]] = {}
        poison: list[Any] = []
        for tp, rs in by_tp.items():
            if tp in marks:
                self._unchecked.discard(tp)
                committed, mark = marks[tp]
                rs = await self._first_batch(consumer, tp, rs, committed, mark, poison)
            keep[tp] = self._careful_slice(consumer, tp, rs)
        kept = {id(r) for rs in keep.values() for r in rs}
        return [r for r in records if id(r) in kept], poison

    async def _first_batch(self, consumer: SignalConsumer, tp: Partition, rs: list[Any],
                           committed: int | None, mark: GuardMark, poison: list[Any]
                           ) -> list[Any]:
        first = rs[0]
        if committed is not None and first.offset != committed:
            return rs  # not where the group left off (a parked retry, a seek): nothing to count
        verdict = mark.verdict(first.offset, self._max_restarts)
        if verdict is Verdict.POISON:
            log.error("a record at this offset stopped the worker %d times: dead-lettered "
                      "unseen (processing_error)", mark.attempts, extra={
                          "topic": tp.topic, "partition": tp.partition, "offset": first.offset})
            poison.append(first)
            self._careful[tp] = mark.until
            _rewind(consumer, tp, first.offset + 1)
            return []
        until = first.offset if verdict is Verdict.CAREFUL else rs[-1].offset
        attempt = mark.attempt(until)
        if verdict is Verdict.CAREFUL:
            self._careful[tp] = attempt.until
            log.warning("workers started on this offset before without getting past it: "
                        "deciding one record at a time", extra={
                            "topic": tp.topic, "partition": tp.partition,
                            "offset": first.offset, "attempts": mark.attempts,
                            "until": attempt.until})
        await self._retry("guard", lambda: _commit(consumer, tp, first.offset, attempt))
        return rs

    def _careful_slice(self, consumer: SignalConsumer, tp: Partition, rs: list[Any]
                       ) -> list[Any]:
        until = self._careful.get(tp)
        if until is None or not rs:
            return rs
        if rs[0].offset > until:
            del self._careful[tp]
            return rs
        if len(rs) > 1:
            self._held[tp] = rs[1:HELD_MAX + 1]
        if len(rs) > HELD_MAX + 1:
            _rewind(consumer, tp, rs[HELD_MAX + 1].offset)
        return rs[:1]


def _rewind(consumer: SignalConsumer, tp: Partition, offset: int) -> None:
    """Fetch ``tp`` again from ``offset`` (the records after it in this fetch are dropped)."""
    consumer.seek(tp, offset)


async def _committed(consumer: SignalConsumer, tps: Sequence[Partition]
                     ) -> dict[Partition, tuple[int | None, GuardMark]]:
    """Committed offset and guard mark of each partition."""
    found = await consumer.committed(tps)  # BrokerUnavailable: retried
    return {tp: (offset, GuardMark.parse(meta) if offset is not None else GuardMark())
            for tp, (offset, meta) in found.items()}


async def _commit(consumer: SignalConsumer, tp: Partition, offset: int,
                  mark: GuardMark) -> None:
    if not await consumer.commit({tp: (offset, mark.to_metadata())}):
        log.warning("crash-loop guard commit refused after a rebalance")
