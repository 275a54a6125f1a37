"""Steps 1 and 2 of the commit order on librdkafka (:mod:`.rdkafka`): :class:`KafkaSink` makes a
batch's outputs durable, dead-lettering the records the broker refuses for good, and
:class:`KafkaCommitter` commits its input offsets (with the crash-loop guard's metadata). Both
are the seams of :class:`~.pipeline.CommitPipeline`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from confluent_kafka import KafkaException

from router_stream.config import Settings
from router_stream.core.models import InboundRecord
from router_stream.core.outputs import BatchResult, DlqRecord
from router_stream.core.refusals import (
    OutputKind,
    Refused,
    as_reference,
    output_at,
)
from router_stream.errors import BrokerUnavailable
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
    report_failed_routes,
    send_alone,
    send_outputs,
    settle_deliveries,
)

log = logging.getLogger("router_stream.worker")

PRODUCER_CLOSE_S = 5.0
"""How long stopping waits for the producer: every batch was acknowledged or dead-lettered by
then, so what it still holds are records given up on (a topic deleted under them)."""


class KafkaSink:
    """Step 1: :func:`~.sink.send_outputs` / :func:`~.sink.settle_deliveries`, the records the
    broker refuses for good dead-lettered one by one, and a new producer after the broker
    refused records."""

    def __init__(self, settings: Settings, outputs: OutputTopics, metrics: WorkerMetrics,
                 *, quiesce: Callable[[], Awaitable[None]]) -> None:
        self._settings = settings
        self._outputs = outputs
        self._producer: OutputProducer | None = None
        self._metrics = metrics
        self._quiesce = quiesce
        self._needs_new_producer = False
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def producer(self) -> OutputProducer:
        assert self._producer is not None, "start() first"
        return self._producer

    async def start(self) -> None:
        self._producer = OutputProducer(self._settings, "router-stream-worker")
        await self._producer.check_connection()

    async def stop(self) -> None:
        """Deliver what the producer still holds (every batch was acknowledged or dead-lettered
        by now: what is left was given up on, a topic deleted under it)."""
        for task in list(self._closing):
            task.cancel()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.close(PRODUCER_CLOSE_S)

    async def _renew(self) -> None:
        """A new producer (new producer id), the old one closed in the background: it stops only
        once every record it holds is delivered or expired."""
        old = self._producer
        self._producer = None
        if old is not None:
            task = asyncio.create_task(old.close(PRODUCER_CLOSE_S), name="router-old-producer")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        await self.start()  # BrokerUnavailable: retried

    async def send(self, result: BatchResult) -> Deliveries:
        self._replace_if_failed()
        if self._needs_new_producer:
            await self._quiesce()
            await self._renew()
            self._needs_new_producer = False
        return await send_outputs(self.producer, self._outputs, result)

    async def confirm(self, batch: Batch, handover: Handover | None) -> None:
        """The first attempt waits for the deliveries handed over when the batch was launched;
        a retry sends the whole batch again (at-least-once on Kafka). Records the broker
        refuses for good go to the DLQ and the batch goes on."""
        result = batch.result
        self._replace_if_failed()
        try:
            if not isinstance(handover, Deliveries):
                await self._renew_after_refusal()  # BrokerUnavailable: retried
                handover = await send_outputs(self.producer, self._outputs, result)
            refusals = await settle_deliveries(handover)
            if refusals:
                await self._dead_letter_refused(batch, refusals)
        except BrokerUnavailable as exc:
            for dest, n in getattr(exc, "failed_destinations", {}).items():
                self._metrics.routing_errors.labels(dest).inc(n)
            raise

    async def _dead_letter_refused(self, batch: Batch, refusals: list[Refusal]) -> None:
        """The records the broker refused for good: their inputs go to the DLQ (a DLQ record
        too large for router.dlq as a reference), a refused route counts as a routing error
        and a failed outcome of its destination, and the batch goes on."""
        result = batch.result
        outputs = len(result.routed) + len(result.decisions) + len(result.dlq) + len(
            result.retries)
        refused: list[Refused] = []
        for r in refusals:
            if r.position >= outputs:  # a router.events record: an audit row, not an input
                log.error("router.events refused a state event; its row will be missing",
                          extra={"topic": r.topic, "error": repr(r.error)})
                continue
            kind, index = output_at(result, r.position)
            error: BaseException | tuple[str, int, int] = r.error
            if not isinstance(r.error, TopicMissing):
                error = await self._alone(result, kind, index)
            if isinstance(error, tuple):  # accepted on its own
                continue
            refused.append(Refused(kind, index, r.topic, repr(error)))
        if not refused:
            return
        repair = dead_letter_refused(batch, refused, self._settings, self._metrics)
        await self._send_repair(repair.dlq)
        if repair.dlq:  # some may have become references on the way
            result.dlq[-len(repair.dlq):] = repair.dlq
        report_failed_routes(self.producer, self._settings, repair.failed_routes, batch.now)

    async def _alone(self, result: BatchResult, kind: OutputKind, index: int
                     ) -> BaseException | tuple[str, int, int]:
        """Send one refused output again on its own: the broker refuses a whole produce batch
        for one record in it that is too large, and the others pass alone. Returns where it
        landed, or the error if it is refused again; a transient error is raised (the batch
        is retried)."""
        self._needs_new_producer = True
        await self._renew_after_refusal()
        try:
            return await send_alone(self.producer, self._outputs, result, kind, index)
        except KafkaException as exc:
            if not is_refusal(exc):
                raise BrokerUnavailable(f"sending a refused record again: {exc!r}") from exc
            self._needs_new_producer = True
            return exc

    def _replace_if_failed(self) -> None:
        """A producer that failed for good (``KafkaError.fatal()``, e.g. an idempotent producer
        that lost its sequence) fails every later send: the batch's retry gets a new one instead
        of retrying on it forever."""
        if self._producer is not None and self._producer.has_failed():
            if not self._needs_new_producer:
                log.error("the output producer failed for good; a new one replaces it")
            self._needs_new_producer = True

    async def _renew_after_refusal(self) -> None:
        """An idempotent producer whose batch was refused fails every later send to that
        partition (OutOfOrderSequenceNumber); a new producer (new producer id) does not."""
        if self._needs_new_producer:
            await self._renew()
        self._needs_new_producer = False

    async def _send_repair(self, dlq: list[DlqRecord]) -> None:
        """Send the DLQ records that replace refused outputs; one of them refused again (too
        large for router.dlq) goes as a reference. A refused reference is transient: retried."""
        for _ in range(2):
            await self._renew_after_refusal()
            deliveries = await send_outputs(self.producer, self._outputs, BatchResult(dlq=dlq))
            refusals = await settle_deliveries(deliveries)
            if not refusals:
                return
            for r in refusals:
                dlq[r.position] = as_reference(dlq[r.position], f"{r.topic}: {r.error!r}")
            self._needs_new_producer = True
        raise BrokerUnavailable("router.dlq refuses even a reference record")


class KafkaCommitter:
    """Step 2: the consumer commits the batch's offsets with the crash-loop guard's metadata (the
    lag gauge follows from :meth:`~.hotpath.SignalLoop.refresh_lag`). The commit is sent, not
    waited for: a lost one is covered by the next, and a revoke waits for the last
    (:meth:`~.rdkafka.SignalConsumer.settle_commits`)."""

    def __init__(self, consumer: Callable[[], SignalConsumer | None], guard: CrashGuard) -> None:
        self._consumer = consumer
        self._guard = guard

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        """Commit last offset + 1 of every partition in the batch we still own. Refused after
        a rebalance: the new owner re-processes from our last commit (more at-least-once
        copies on Kafka; one row per signal in the projection)."""
        consumer = self._consumer()
        assert consumer is not None
        last: dict[Partition, int] = {}
        for r in records:
            last[Partition(r.topic, r.partition)] = r.offset + 1
        owned = consumer.assignment()
        offsets = {tp: off for tp, off in last.items() if tp in owned}
        if not offsets:
            return
        marked = {tp: (off, self._guard.metadata(tp, off)) for tp, off in offsets.items()}
        await consumer.commit(marked, wait=False)
