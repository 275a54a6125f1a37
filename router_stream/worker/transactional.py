"""Steps 1 and 2 of the commit order in ``exactly_once`` mode: one Kafka transaction per batch.

:class:`TransactionalOutputs` is both seams of :class:`~.pipeline.CommitPipeline` (its
``OutputSink`` and its ``Committer``), run at depth 1 — transactions are sequential::

    send      begin_transaction; hand every output over (routed.<d>, router.decisions,
              router.dlq, router.retry, router.events), as in at-least-once (:mod:`.sink`)
    confirm   await every acknowledgement: written to the log, not yet visible
    commit    send_offsets_to_transaction(input offsets, with the crash-loop guard's metadata,
              and the consumer's group metadata); commit_transaction — the outputs and the
              offsets become visible together, to read_committed consumers only

What goes wrong, and what becomes of the batch:

* **fatal** (``KafkaError.fatal()``: a newer instance took the transactional.id and fenced this
  one, or the producer failed for good) -> :class:`~router_stream.errors.ProducerFenced`: the
  worker stops with one line, nothing more committed;
* **the group moved the partitions away** (another member's generation, KIP-447) -> abort; the
  batch is dropped and its next owner re-processes it from the committed offsets;
* **anything else** (broker unreachable, timeouts, a transaction the broker aborted) -> abort,
  and the *same decided batch* is sent again in a new transaction (``BrokerUnavailable``:
  retried with backoff by the pipeline). Not decided again: a second decision of the same
  records would count them as duplicates of themselves and move trust and breakers twice;
* **a record refused for good** (too large for its topic, ...) -> abort; each refused output is
  sent alone in a probe transaction that is always aborted (the broker refuses a whole produce
  batch for one record in it); those refused again are dead-lettered
  (:mod:`router_stream.core.refusals`) and the rewritten batch goes in a new transaction.

transactional.id: ``<group_id>.<worker_id or hostname>`` (:func:`transactional_id`), one per
worker process. Stable across restarts, so a restarted worker's ``init_transactions`` aborts
what its previous run left open at once; unique per live worker, because a second holder fences
the first. Zombies of a rebalance are fenced by the group generation in the offsets (KIP-447),
not by the id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from router_stream.adapters.kafka_failures import is_rd_rebalanced_away
from router_stream.config import Settings
from router_stream.core.models import InboundRecord
from router_stream.core.outputs import BatchResult
from router_stream.core.refusals import Refused, output_at
from router_stream.errors import BrokerUnavailable, ProducerFenced, RouterError
from router_stream.worker.crashguard import CrashGuard
from router_stream.worker.metrics import WorkerMetrics
from router_stream.worker.pipeline import Batch, Handover
from router_stream.worker.produce_errors import TopicMissing, is_refusal
from router_stream.worker.rdkafka import OutputProducer, Partition, SignalConsumer
from router_stream.worker.sink import (
    Deliveries,
    OutputTopics,
    Refusal,
    dead_letter_refused,
    delivery_outcomes,
    report_failed_routes,
    send_alone,
    send_outputs,
)

log = logging.getLogger("router_stream.worker")

PRODUCER_CLOSE_S = 5.0
REFUSAL_ROUNDS = 3
"""Times one batch may be rewritten for refused records before it counts as a failure
(transient: retried); a DLQ record refused again becomes a reference on the second round."""


def transactional_id(settings: Settings) -> str:
    """``<group_id>.<worker_id or hostname>``: see the module docstring."""
    return settings.member_name


class TransactionalOutputs:
    """The output sink and the committer of ``exactly_once`` mode; see the module docstring."""

    def __init__(self, settings: Settings, outputs: OutputTopics, metrics: WorkerMetrics, *,
                 consumer: Callable[[], SignalConsumer | None], guard: CrashGuard,
                 side_producer: Callable[[], OutputProducer | None]) -> None:
        self._settings = settings
        self._outputs = outputs
        self._metrics = metrics
        self._consumer = consumer
        self._guard = guard
        self._side_producer = side_producer
        self.transactional_id = transactional_id(settings)
        self._producer: OutputProducer | None = None
        self._open = False  # a transaction is open on the producer
        self._offsets_sent = False  # ... and holds the batch's offsets
        self._batch: Batch | None = None  # the batch of the open transaction
        self._resend = False  # its transaction was aborted after its outputs were confirmed

    @property
    def producer(self) -> OutputProducer:
        assert self._producer is not None, "start() first"
        return self._producer

    async def start(self) -> None:
        """The transactional producer; ``init_transactions`` aborts what a previous run under
        the same transactional.id left open."""
        self._producer = OutputProducer(self._settings, "router-stream-worker",
                                        self.transactional_id)
        await self._producer.check_connection()
        try:
            await self._producer.init_transactions()
        except KafkaException as exc:
            raise self._error("starting transactions", exc) from exc
        log.info("exactly_once: transactional producer ready",
                 extra={"transactional_id": self.transactional_id})

    async def stop(self) -> None:
        """Abort a transaction still open (its batch was not committed: the next owner
        re-processes it), then close the producer."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if self._open:
            try:
                await producer.abort_transaction()
            except KafkaException as exc:  # the broker aborts it at its timeout
                log.warning("could not abort the open transaction", extra={"error": repr(exc)})
        await producer.close(PRODUCER_CLOSE_S)

    # --- OutputSink -----------------------------------------------------------------------

    async def send(self, result: BatchResult) -> Deliveries:
        """Begin the batch's transaction and hand its outputs over. Only a fatal error is
        raised; any other comes back in the hand-over, for :meth:`confirm` to retry."""
        try:
            await self._begin()
        except ProducerFenced:
            raise
        except RouterError as exc:
            return Deliveries([], error=exc)
        return await send_outputs(self.producer, self._outputs, result)

    async def confirm(self, batch: Batch, handover: Handover | None) -> None:
        """Await every acknowledgement of the batch's transaction; ``handover`` None (a retry)
        sends the batch again in a new one. Refused records are dead-lettered and the batch
        rewritten (module docstring)."""
        self._batch = batch
        if not isinstance(handover, Deliveries):
            handover = await self._send_again(batch.result)
        for _ in range(REFUSAL_ROUNDS):
            refusals = await self._settle(handover)
            if not refusals:
                self._resend = False
                return
            await self._abort()
            await self._dead_letter_refused(batch, refusals)
            handover = await self._send_again(batch.result)
        await self._abort()
        raise BrokerUnavailable("records of the batch are refused again after being "
                                "dead-lettered; retrying the batch")

    async def _send_again(self, result: BatchResult) -> Deliveries:
        await self._begin()
        handover = await send_outputs(self.producer, self._outputs, result)
        if handover.error is not None:
            await self._abort()
            raise handover.error
        return handover

    async def _settle(self, handover: Deliveries) -> list[Refusal]:
        """The sends the broker refused for good; any other failure aborts the transaction and
        is raised (fatal: :class:`ProducerFenced`)."""
        if handover.error is not None:
            await self._abort()
            raise handover.error
        outcomes = await delivery_outcomes(handover)
        refusals: list[Refusal] = []
        failed: BaseException | None = None
        for i, ((dest, topic), outcome) in enumerate(zip(handover.sends, outcomes,
                                                            strict=True)):
            if not isinstance(outcome, BaseException):
                continue
            if is_refusal(outcome):
                refusals.append(Refusal(i, topic, dest, outcome))
            elif isinstance(outcome, KafkaException) and _kafka_error(outcome).fatal():
                raise self._error("producing the batch", outcome) from outcome
            else:
                failed = failed or outcome
        if failed is not None and not refusals:  # after a refusal the rest fail with it
            await self._abort()
            raise BrokerUnavailable(f"producing the batch: {failed!r}") from failed
        return refusals

    async def _dead_letter_refused(self, batch: Batch, refusals: list[Refusal]) -> None:
        """Probe each refused output alone; the inputs of those refused again go to the DLQ
        (their outputs out of the batch), a refused state event is dropped."""
        result = batch.result
        outputs = len(result.routed) + len(result.decisions) + len(result.dlq) + len(
            result.retries)
        refused: list[Refused] = []
        events: list[int] = []
        for r in refusals:
            if r.position >= outputs:
                events.append(r.position - outputs)
                continue
            kind, index = output_at(result, r.position)
            error: BaseException | None = r.error
            if not isinstance(r.error, TopicMissing):
                error = await self._probe(result, r.position)
            if error is not None:
                refused.append(Refused(kind, index, r.topic, repr(error)))
        if events:
            log.error("router.events refused state events; their rows will be missing",
                      extra={"refused": len(events)})
            _drop_events(result, events)
        if not refused:
            return
        repair = dead_letter_refused(batch, refused, self._settings, self._metrics)
        side = self._side_producer()
        if side is not None:
            report_failed_routes(side, self._settings, repair.failed_routes, batch.now)

    async def _probe(self, result: BatchResult, position: int) -> BaseException | None:
        """Send one output alone in a transaction that is then aborted: its refusal, or None
        when the broker accepts it on its own."""
        kind, index = output_at(result, position)
        await self._begin()
        try:
            await send_alone(self.producer, self._outputs, result, kind, index)
            return None
        except (KafkaException, TopicMissing) as exc:
            if is_refusal(exc):
                return exc
            raise self._error("sending a refused record alone", exc) from exc
        finally:
            await self._abort()

    # --- Committer ------------------------------------------------------------------------

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        """Add the batch's input offsets to its transaction and commit it. A batch whose
        partitions the group moved away is aborted and left to their next owner."""
        consumer = self._consumer()
        assert consumer is not None
        last: dict[Partition, int] = {}
        for r in records:
            last[Partition(r.topic, r.partition)] = r.offset + 1
        if not last.keys() <= consumer.assignment():
            await self._drop("partitions revoked before the batch's transaction committed")
            return
        if self._resend:
            assert self._batch is not None
            await self.confirm(self._batch, None)
        offsets = {tp: (off, self._guard.metadata(tp, off)) for tp, off in last.items()}
        try:
            with self._metrics.commit_seconds.time():
                if not self._offsets_sent:
                    await self.producer.send_offsets(offsets, await consumer.group_metadata())
                    self._offsets_sent = True
                await self.producer.commit_transaction()
        except KafkaException as exc:
            await self._commit_failed(exc)
            return
        self._open = self._offsets_sent = False
        self._batch = None

    async def _commit_failed(self, exc: KafkaException) -> None:
        """Returns when the batch is dropped (its partitions moved away); raises otherwise."""
        error = _kafka_error(exc)
        if error.fatal():
            raise self._error("committing the transaction", exc) from exc
        if error.retriable() and not error.txn_requires_abort():
            raise BrokerUnavailable(f"committing the transaction: {error.str()}") from exc
        # (not _STATE: that is the producer's own state.) The partitions' next owner, or this
        # member after the eager rebalance, starts again from the committed offset.
        if is_rd_rebalanced_away(error) and error.name() != "_STATE":
            await self._drop(f"the group moved the partitions away ({error.name()})")
            return
        await self._abort()
        self._resend = True  # the next attempt sends the batch again, then commits
        raise BrokerUnavailable(f"transaction aborted: {error.str()}") from exc

    async def _drop(self, why: str) -> None:
        await self._abort()
        self._batch = None
        log.warning("batch aborted, its next owner re-processes it", extra={"reason": why})

    # --- the transaction ------------------------------------------------------------------

    async def _begin(self) -> None:
        if self._open:
            await self._abort()
        try:
            self.producer.begin_transaction()
        except KafkaException as exc:
            raise self._error("beginning a transaction", exc) from exc
        self._open = True
        self._offsets_sent = False

    async def _abort(self) -> None:
        if not self._open:
            return
        try:
            await self.producer.abort_transaction()
        except KafkaException as exc:
            raise self._error("aborting a transaction", exc) from exc
        self._open = self._offsets_sent = False

    def _error(self, what: str, exc: BaseException) -> RouterError:
        """A producer error as the error tree's: fatal -> :class:`ProducerFenced`, else
        transient."""
        error = _kafka_error(exc) if isinstance(exc, KafkaException) else None
        if error is not None and error.fatal():
            return ProducerFenced(
                f"exactly_once: {what}: {error.str()} — transactional.id "
                f"{self.transactional_id!r} was taken over (another worker with the same "
                "ROUTER_WORKER_ID, or this one was stopped past the transaction timeout); "
                "stopping without committing")
        reason = error.str() if error is not None else repr(exc)
        return BrokerUnavailable(f"{what}: {reason}")


def _kafka_error(exc: KafkaException) -> KafkaError:
    error: Any = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        return error
    return KafkaError(KafkaError._FAIL, str(exc))


def _drop_events(result: BatchResult, indices: list[int]) -> None:
    """Remove the state events at ``indices`` of :func:`~.sink.batch_events`' order."""
    lists: list[list[Any]] = [result.breaker_transitions, result.shadow, result.rollout_events]
    for i in sorted(set(indices), reverse=True):
        for items in lists:
            if i < len(items):
                del items[i]
                break
            i -= len(items)
