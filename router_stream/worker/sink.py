"""Making a :class:`~router_stream.core.outputs.BatchResult` durable: the produce step.

:func:`send_outputs` hands every routed record, decision, DLQ record, retry record and state
event (``router.events``: the batch's breaker transitions, shadow evaluations and rollbacks) to
the (idempotent, ``acks=all``) producer; :func:`settle_deliveries` waits until *every* delivery
was answered. Nothing here touches Postgres: it is a projection of these records, written by
``router-stream persist`` (:mod:`router_stream.projection`).

The producer is librdkafka's (:class:`~router_stream.worker.rdkafka.OutputProducer`); its errors
are translated here into the project's tree (``raise ... from exc``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import KafkaException

from router_stream.config import DECISIONS, DLQ, EVENTS, OUTCOMES, Settings
from router_stream.core.events import (
    BreakerTransitionEvent,
    PolicyStatusEvent,
    RouterEvent,
    ShadowEvent,
    encode_event,
)
from router_stream.core.outputs import BatchResult
from router_stream.core.refusals import OutputKind, Refused, Repair, settle_refusals
from router_stream.errors import BrokerUnavailable, RouterError
from router_stream.worker.metrics import WorkerMetrics
from router_stream.worker.pipeline import Batch
from router_stream.worker.produce_errors import TopicMissing, is_refusal
from router_stream.worker.rdkafka import Delivered, DeliveryReports, OutputProducer

log = logging.getLogger("router_stream.worker")

RETRY = "router.retry"


@dataclass(frozen=True)
class OutputTopics:
    """Physical names of the topics a batch writes to."""

    decisions: str
    dlq: str
    retry: str
    settings: Settings
    events: str = EVENTS

    @classmethod
    def of(cls, settings: Settings) -> OutputTopics:
        return cls(settings.topic(DECISIONS), settings.topic(DLQ), settings.topic(RETRY), settings,
                   settings.topic(EVENTS))

    def routed(self, destination: str) -> str:
        return self.settings.routed_topic(destination)


class ProduceFailed(BrokerUnavailable):
    """Some deliveries of a batch failed; ``failed_destinations`` counts routed failures."""

    def __init__(self, message: str, failed_destinations: dict[str, int],
                 refused: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.failed_destinations = failed_destinations
        # topic -> error, for deliveries the broker refused outright (record too large, ...):
        # retrying cannot fix those until an operator fixes the topic, and the idempotent
        # producer that sent them is unusable for that partition afterwards.
        self.refused = refused or {}


@dataclass
class Deliveries:
    """One batch's records handed to the producer (:func:`send_outputs`): where each went
    (``sends``: destination or None, topic) and the broker's answers (``reports``), or the error
    that stopped the hand-over. :func:`settle_deliveries` completes step 1."""

    sends: list[tuple[str | None, str]]
    reports: DeliveryReports | None = None
    error: RouterError | None = None
    producer: OutputProducer | None = None  # to ask whether a topic still exists


async def send_outputs(
    producer: OutputProducer, topics: OutputTopics, result: BatchResult
) -> Deliveries:
    """The first half of step 1: hand every output record to the producer without waiting for a
    single acknowledgement, so the next batch can be decided while these are in flight. Never
    raises a Kafka error: a failed hand-over is returned and raised by :func:`settle_deliveries`.

    A record the broker can never accept (:func:`~.produce_errors.is_refusal`: too large,
    invalid, not authorised) or whose topic does not exist is answered with its error at once
    instead of stopping the hand-over, so :func:`settle_deliveries` can dead-letter that one."""
    outputs = list(_outputs(topics, result))
    missing = await _missing_topics(producer, {topic for _, topic, *_ in outputs})
    reports = producer.reports(len(outputs))
    hand_over = producer.hand_over
    try:
        for i, (_, topic, value, key, headers) in enumerate(outputs):
            if topic in missing:
                reports.answer(i, TopicMissing(f"topic {topic} does not exist"))
                continue
            if value is None and key is None:
                value = b""  # a tombstone without a key: Kafka needs one of the two
            try:
                hand_over(reports, i, topic, value, key, headers)
            except KafkaException as exc:
                if not is_refusal(exc):
                    raise
                reports.answer(i, exc)
    except KafkaException as exc:  # not a refusal: a full queue, the client failing
        return Deliveries([], error=BrokerUnavailable(f"sending: {exc!r}"))
    return Deliveries([(dest, topic) for dest, topic, *_ in outputs], reports,
                      producer=producer)


Output = tuple[str | None, str, bytes | None, bytes | None, list[tuple[str, bytes | None]] | None]
"""(routed destination or None, topic, value, key, headers) of one record to send."""


def _outputs(topics: OutputTopics, result: BatchResult) -> Iterator[Output]:
    """Every record of ``result`` in the order of ``core.refusals.output_at``: routed,
    decisions, DLQ, retries, then ``router.events``."""
    routed = topics.routed
    for r in result.routed:
        yield r.destination, routed(r.destination), r.value, r.key, r.headers
    decisions = topics.decisions
    traces = decision_traces(result)
    for d in result.decisions:
        yield None, decisions, d.to_json(), d.signal_id.encode(), traces.get(d.signal_id)
    for q in result.dlq:
        yield None, topics.dlq, q.entry.original_value, q.entry.original_key, q.headers
    for t in result.retries:
        yield None, topics.retry, t.value, t.key, t.headers
    for key, value in batch_events(result):
        yield None, topics.events, value, key, None


async def _missing_topics(producer: OutputProducer, names: set[str]) -> set[str]:
    """The topics a broker answered do not exist (asked once per batch, from cached
    metadata)."""
    return {topic for topic in names if await producer.topic_missing(topic)}


def decision_traces(result: BatchResult) -> dict[str, list[tuple[str, bytes | None]]]:
    """The trace-context headers of each decided signal, by signal id, from its routed records
    (the decision record carries the same context as the signal's routed copies)."""
    return {r.signal_id: r.headers for r in result.routed if r.headers}


async def send_alone(producer: OutputProducer, topics: OutputTopics, result: BatchResult,
                     kind: OutputKind, index: int) -> tuple[str, int, int]:
    """Send one output of ``result`` in a produce batch of its own and wait for it; returns
    where it landed. Raises the producer's error."""
    value: bytes | None
    if kind == "routed":
        r = result.routed[index]
        topic, value, key, headers = topics.routed(r.destination), r.value, r.key, r.headers
    elif kind == "decision":
        d = result.decisions[index]
        topic, value, key = topics.decisions, d.to_json(), d.signal_id.encode()
        headers = decision_traces(result).get(d.signal_id)
    elif kind == "dlq":
        q = result.dlq[index]
        topic, value, key, headers = (topics.dlq, q.entry.original_value, q.entry.original_key,
                                      q.headers)
    else:
        t = result.retries[index]
        topic, value, key, headers = topics.retry, t.value, t.key, t.headers
    if await producer.topic_missing(topic):
        raise TopicMissing(f"topic {topic} does not exist")
    if value is None and key is None:
        value = b""  # a tombstone without a key: Kafka needs one of the two
    delivered: Delivered = await producer.send(topic, value, key, headers)
    return delivered.topic, delivered.partition, delivered.offset


@dataclass(frozen=True, slots=True)
class Refusal:
    """A send the broker refused for good: its position among the batch's sends."""

    position: int
    topic: str
    destination: str | None
    error: BaseException


async def settle_deliveries(deliveries: Deliveries) -> list[Refusal]:
    """The second half of step 1 for the hot path: wait until the broker answered every record.
    Returns the records it refused for good (:func:`is_refusal`), to be dead-lettered one by
    one; raises :class:`ProduceFailed` (transient: retry the batch) if anything else failed."""
    if deliveries.error is not None:
        raise deliveries.error
    sends = deliveries.sends
    outcomes = await delivery_outcomes(deliveries)
    refusals: list[Refusal] = []
    failed: dict[str, int] = {}
    first: BaseException | None = None
    for i, ((dest, topic), outcome) in enumerate(zip(sends, outcomes, strict=True)):
        if not isinstance(outcome, BaseException):
            continue
        if is_refusal(outcome):
            refusals.append(Refusal(i, topic, dest, outcome))
            continue
        first = first or outcome
        if dest is not None:
            failed[dest] = failed.get(dest, 0) + 1
    if first is not None:
        n = len(outcomes) - len(refusals) - sum(not isinstance(o, BaseException) for o in outcomes)
        raise ProduceFailed(f"{n} of {len(sends)} deliveries failed: {first!r}", failed,
                            {r.topic: repr(r.error) for r in refusals}) from first
    return refusals


STUCK_CHECK_S = 2.0
"""How long deliveries may be outstanding before the topics they wait for are checked: the
producer retries a topic deleted under it until its request timeout (30 s), and so would hold
back every partition that long."""


async def delivery_outcomes(deliveries: Deliveries) -> list[Any]:
    """Each send's delivered message or exception. A routed record still unanswered after
    :data:`STUCK_CHECK_S` whose topic is gone from fresh metadata fails with
    :class:`TopicMissing` at once (the producer may still deliver it if the topic comes back:
    at-least-once, as a retried batch would be)."""
    reports = deliveries.reports
    assert reports is not None
    producer = deliveries.producer
    gone: dict[int, TopicMissing] = {}
    while not reports.done.done():
        await asyncio.wait([reports.done], timeout=None if producer is None else STUCK_CHECK_S)
        if reports.done.done() or producer is None:
            break
        pending = [i for i in reports.unanswered if i not in gone]
        checked: dict[str, bool] = {}
        for i in pending:
            dest, topic = deliveries.sends[i]
            if dest is None:
                continue
            if topic not in checked:
                checked[topic] = await producer.topic_missing(topic, fresh=True)
            if checked[topic]:
                gone[i] = TopicMissing(f"topic {topic} does not exist")
        if all(i in gone for i in pending):
            break
    return [gone.get(i) or r for i, r in enumerate(reports.results)]


def dead_letter_refused(batch: Batch, refused: list[Refused], settings: Settings,
                        metrics: WorkerMetrics) -> Repair:
    """Rewrite the batch so the outputs the broker refused for good are out of it and their
    inputs dead-lettered (:func:`~router_stream.core.refusals.settle_refusals`); a refused
    route counts as a routing error of its destination."""
    log.error("the broker refused records for good; their signals go to the DLQ",
              extra={"refused": {r.topic: r.error for r in refused}})
    repair = settle_refusals(batch.result, batch.records, refused, batch.now, settings.group_id)
    for dest, _ in repair.failed_routes:
        metrics.routing_errors.labels(dest).inc()
    return repair


def report_failed_routes(producer: OutputProducer, settings: Settings,
                         routes: list[tuple[str, str]], now: float) -> None:
    """A refused route is a failed delivery to that destination: reported on ``outcomes``
    like any other, so every worker's breaker for it sees the failure (the state stays a
    fold of the state topics). Best effort: the DLQ entry is what must not be lost."""
    topic = settings.topic(OUTCOMES)
    for dest, signal_id in routes:
        value = orjson.dumps({"signal_id": signal_id, "destination": dest, "ok": False,
                              "ts": int(now * 1000)})
        try:
            producer.send(topic, value, dest.encode())
        except KafkaException as exc:
            log.warning("could not report a refused route", extra={"error": repr(exc)})


def batch_events(result: BatchResult) -> list[tuple[bytes, bytes]]:
    """The ``router.events`` records of a batch: its breaker transitions, shadow evaluations
    and rollbacks (key, value)."""
    if not (result.breaker_transitions or result.shadow or result.rollout_events):
        return []
    now = time.time()
    events: list[RouterEvent] = [BreakerTransitionEvent.of(t) for t in result.breaker_transitions]
    events.extend(ShadowEvent.of(o, now) for o in result.shadow)
    events.extend(PolicyStatusEvent.rollback(e) for e in result.rollout_events)
    return [encode_event(e) for e in events]
