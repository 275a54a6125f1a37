"""The commit order, written down once: :class:`CommitPipeline`.

Per batch::

    decide    engine.decide_batch(records, now)                  pure, no I/O
    1. produce   sink.send(result) hands every output over;   sink.confirm(...) awaits EVERY ack
    2. commit    committer.commit(records): last offset + 1 per partition

Batches overlap: batch N+1 is decided and handed over while batch N awaits its
acknowledgements, but a batch commits only after the batch before it committed, so offsets are
committed strictly in batch order and only for batches whose every output was acknowledged.
Batches that became durable while an earlier one was committing are committed together, in one
commit (its offsets are the later batch's): commits never queue up behind each other. A batch
that fails (a non-transient error, or a transient one past ``give_up``) fails every later batch
before its commit, and the first error is kept in :attr:`failure` (raised by
:meth:`raise_failure`). At most ``depth`` batches and ``max_records`` records are uncommitted:
many small batches may overlap (their acknowledgements are awaited side by side), while what a
crash re-processes stays bounded by records.

The three collaborators are small Protocols so the order is unit-tested with fakes
(tests/unit/test_commit_pipeline.py); :mod:`.hotpath` wires them to librdkafka.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from router_stream.core.models import InboundRecord
from router_stream.core.outputs import BatchResult
from router_stream.core.redaction import Redactor


class DecidingPolicy(Protocol):
    @property
    def redactor(self) -> Redactor: ...


class Engine(Protocol):
    """What the pipeline needs of :class:`~router_stream.core.engine.RouterEngine`."""

    @property
    def policy(self) -> DecidingPolicy: ...

    def decide_batch(self, records: Sequence[InboundRecord], now: float) -> BatchResult: ...


class Handover(Protocol):
    """One batch's outputs in the producer's hands (delivery futures, or the hand-over's
    error), as :meth:`OutputSink.send` returns them."""


class OutputSink(Protocol):
    async def send(self, result: BatchResult) -> Handover:
        """Hand every output of ``result`` to the producer without waiting for an ack."""
        ...

    async def confirm(self, batch: Batch, handover: Handover | None) -> None:
        """Wait until every output of ``batch.result`` was acknowledged; ``handover`` None (a
        retry) sends the whole batch again. An output refused for good may rewrite the result
        (its input dead-lettered instead). Raises a ``TransientError`` when worth retrying."""
        ...


class Committer(Protocol):
    async def commit(self, records: Sequence[InboundRecord]) -> None:
        """Commit last offset + 1 of every partition of ``records`` (still owned)."""
        ...


Retry = Callable[[str, Callable[[], Awaitable[None]]], Awaitable[None]]
"""Runs a step through transient failures (``retry_transient`` with the worker's backoff)."""
Undecided = Callable[[BatchResult, Sequence[InboundRecord], float], None]
"""Adds the DLQ records of inputs that are not to be decided (the crash-loop guard's)."""
StepHook = Callable[[str, BatchResult], Awaitable[None]]
"""Called after each step ("decided", "produced", "committed"); tests crash the worker there."""


@dataclass(eq=False)
class Batch:
    records: list[InboundRecord]
    result: BatchResult
    now: float
    fetch_time: float
    redactor: Redactor  # the deciding policy's: a policy switch mid-flight changes nothing here
    handover: Handover | None
    prev: Batch | None
    task: asyncio.Task[None] = field(init=False)
    durable: bool = False  # every output acknowledged (step 1 done)
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False


class _PreviousBatchFailed(Exception):
    """A batch stops because the one before it failed (the earlier error is the one raised)."""


async def _after_commit_of(prev: Batch | None) -> None:
    if prev is None:
        return
    await prev.committed.wait()
    if prev.failed:
        raise _PreviousBatchFailed("the previous batch failed")


def _offset(record: InboundRecord) -> int:
    return record.offset


async def _no_retry(step: str, op: Callable[[], Awaitable[None]]) -> None:
    await op()


class CommitPipeline:
    def __init__(
        self,
        engine: Engine,
        sink: OutputSink,
        committer: Committer,
        *,
        depth: int,
        max_records: int | None = None,
        retry: Retry = _no_retry,
        on_step: StepHook | None = None,
        on_committed: Callable[[Batch], Awaitable[None]] | None = None,
        on_drained: Callable[[], None] | None = None,
        on_undecided: Undecided | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.engine = engine
        self._sink = sink
        self._committer = committer
        self._depth = depth
        self._max_records = max_records
        self._retry = retry
        self._on_step = on_step
        self._on_committed = on_committed
        self._on_drained = on_drained
        self._on_undecided = on_undecided
        self._in_flight: list[Batch] = []
        self._failure: BaseException | None = None

    @property
    def in_flight(self) -> int:
        """Batches decided but not yet committed (or failed)."""
        return len(self._in_flight)

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the pipeline, if any (the first, in batch order)."""
        return self._failure

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def wait_in_flight(self) -> None:
        """Until every batch in flight is committed or has failed (rebalance, drain)."""
        while self._in_flight:
            await asyncio.wait([b.task for b in self._in_flight])

    @property
    def records_in_flight(self) -> int:
        return sum(len(b.records) for b in self._in_flight)

    async def wait_for_room(self, records: int = 0) -> None:
        """Until a batch of up to ``records`` more fits: fewer than ``depth`` batches and (one
        batch always fits) at most ``max_records`` records in flight with it. Raises a
        failure."""
        while self._in_flight and not self._has_room(records):
            await asyncio.wait([self._in_flight[0].task])
        self.raise_failure()

    def _has_room(self, records: int) -> bool:
        if len(self._in_flight) >= self._depth:
            return False
        return self._max_records is None or (
            self.records_in_flight + records <= self._max_records)

    async def launch(self, records: list[InboundRecord], fetch_time: float | None = None,
                     now: float | None = None,
                     undecided: Sequence[InboundRecord] = ()) -> Batch:
        """Decide ``records``, hand their outputs over, and run the rest of the commit order in
        a task of its own. ``undecided`` records are committed with them without being decided
        (``on_undecided`` dead-letters them). Returns the batch (its ``task`` ends committed or
        failed)."""
        now = time.time() if now is None else now
        result = self.engine.decide_batch(records, now)
        if undecided:
            if self._on_undecided is None:
                raise ValueError("undecided records need on_undecided")
            self._on_undecided(result, undecided, now)
            # in offset order within each partition: the commit takes each partition's last
            records = sorted([*records, *undecided], key=_offset)
        await self._hook("decided", result)
        handover = await self._sink.send(result)
        self.raise_failure()  # the batch before failed during the hand-over: this one must not
        batch = Batch(records, result, now, time.monotonic() if fetch_time is None else fetch_time,
                      self.engine.policy.redactor, handover,
                      self._in_flight[-1] if self._in_flight else None)
        batch.task = asyncio.create_task(self._make_durable(batch), name="router-batch")
        self._in_flight.append(batch)
        return batch

    async def _make_durable(self, batch: Batch) -> None:
        """Steps 1-2 of one batch: its acknowledgements are awaited at once (overlapping the
        previous batch's commit); its commit only after the previous batch's commit."""
        result = batch.result
        try:
            await self._retry("produce", lambda: self._confirm(batch))
            await self._hook("produced", result)
            batch.durable = True
            await _after_commit_of(batch.prev)
            if not batch.committed.is_set():  # else an earlier batch's commit covered it
                run = self._durable_run(batch)
                records = [r for b in run for r in b.records]
                await self._retry("commit", lambda: self._committer.commit(records))
                for b in run:
                    b.committed.set()
            await self._hook("committed", result)
            if self._on_committed is not None:
                await self._on_committed(batch)
        except BaseException as exc:  # noqa: BLE001 - kept and raised in batch order
            batch.failed = True
            if self._failure is None and not isinstance(exc, _PreviousBatchFailed):
                self._failure = exc
        finally:
            batch.committed.set()
            batch.prev = None  # no chain of finished batches kept alive
            self._in_flight.remove(batch)
            if not self._in_flight and self._on_drained is not None:
                self._on_drained()

    def _durable_run(self, batch: Batch) -> list[Batch]:
        """``batch`` and the durable batches right after it: committed in one go."""
        at = self._in_flight.index(batch)
        run = [batch]
        for later in self._in_flight[at + 1:]:
            if not later.durable or later.committed.is_set():
                break
            run.append(later)
        return run

    async def _confirm(self, batch: Batch) -> None:
        """The first attempt waits for the hand-over made at launch; a retry sends again."""
        handover, batch.handover = batch.handover, None
        await self._sink.confirm(batch, handover)

    async def _hook(self, step: str, result: BatchResult) -> None:
        if self._on_step is not None:
            await self._on_step(step, result)
