"""Consume one destination's routed topic and report every delivery's outcome.

One batch at a time, in this order:

1. fetch up to ``batch_max`` records of ``routed.<destination>``;
2. for each: skip it if its ``decision_id`` was handled within the dedupe window (the router
   writes at least once); otherwise call the handler, timing it, and report the outcome
   (``ok`` unless the handler raised, timed out or returned ``Delivery(ok=False)``);
3. wait until the batch's outcomes are acknowledged by the broker;
4. commit the batch's offsets — without waiting for the coordinator, and at most every
   ``COMMIT_INTERVAL_S`` (offsets of batches done meanwhile are merged into the next commit);
   a stop, and a rebalance that takes partitions away, commit what is pending and wait.

A crash redelivers what was not committed yet (at least once: up to ``COMMIT_INTERVAL_S`` of
batches whose outcomes were already written); the dedupe window is per process.
A record that is not a routed record is logged, counted and committed: it can never stall a
partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import ValidationError

from router_stream.adapters.kafka_failures import RdkafkaLog, commit_failures, commit_rebalanced
from router_stream.adapters.kafka_io import fetch
from router_stream.adapters.rdkafka import ClientThread
from router_stream.client._records import InvalidRecord, RoutedSignal, parse_routed
from router_stream.client._reporter import OutcomeReporter, reach
from router_stream.config import ROUTED_PREFIX
from router_stream.core.dedupe import DedupeWindow
from router_stream.errors import BrokerUnavailable

log = logging.getLogger(__name__)

_HANDLER_FIELDS = frozenset({("reward",), ("cost",)})
"""The outcome fields a handler's :class:`Delivery` sets: reported without them if invalid."""
COMMIT_INTERVAL_S = 0.1
"""Offsets are committed without waiting, at most this often. A synchronous commit per batch
held the next fetch for the coordinator's answer: with an unlingered reporter at 500 records/s,
a delivery p50 / p99 of 3.7-4.2 / 7.5-9.3 ms after routing, against 0.4 / 1.3-1.7 ms
(docs/performance.md)."""
REPORTER_LINGER_MS = 1
"""The ``linger.ms`` of the reporter a consumer makes for itself (``kafka_options`` may set
another). Each batch waits for its outcomes' acknowledgements before the next fetch, so the
linger delays the next batch; without one, batches of one record each cost a produce request:
at 2,000 records/s, 0 ms gave a delivery p50 / p99 of 0.7 / 5.9 ms for 0.71 cores, 1 ms 2.1 /
5.3 ms for 0.43, the reporter's default 5 ms 6.8 / 12.5 ms for 0.32 (docs/performance.md)."""


@dataclass(slots=True, frozen=True)
class Delivery:
    """What a handler may return to qualify its outcome (returning ``None`` means ok)."""

    ok: bool = True
    reward: float | None = None
    """Bandit reward in [0, 1]; default 1 when ok, else 0."""
    cost: float | None = None


class Handler(Protocol):
    """An async function that delivers one routed signal; raising reports ``ok=false``."""

    def __call__(self, routed: RoutedSignal, /) -> Awaitable[Delivery | None]: ...


@dataclass(slots=True)
class ConsumerStats:
    """Counters of one :class:`DestinationConsumer` since it started."""

    handled: int = 0
    """Deliveries passed to the handler (ok or not)."""
    failed: int = 0
    """Deliveries whose outcome was reported as not ok."""
    duplicates: int = 0
    invalid: int = 0
    commits: int = 0


class DestinationConsumer:
    """Reads ``<topic_prefix>routed.<destination>`` in consumer group ``group_id``.

    ``await consumer.run(handler)`` until :meth:`request_stop`. Outcomes go through ``reporter``
    (one is created and closed with the consumer when not given). ``kafka_options`` are
    librdkafka settings added to both clients' (``security.protocol``, ``ssl.ca.location``,
    ``sasl.*``, ...).
    """

    def __init__(self, destination: str, *, bootstrap_servers: str, group_id: str,
                 topic_prefix: str = "", reporter: OutcomeReporter | None = None,
                 dedupe_window_s: float = 3600.0, dedupe_max: int = 100_000,
                 batch_max: int = 500, handler_timeout_s: float | None = 30.0,
                 kafka_options: Mapping[str, Any] | None = None) -> None:
        self.destination = destination
        self.topic = f"{topic_prefix}{ROUTED_PREFIX}{destination}"
        self.stats = ConsumerStats()
        self._batch_max = batch_max
        self._handler_timeout_s = handler_timeout_s
        self._seen = DedupeWindow(dedupe_window_s, dedupe_max)
        options = dict(kafka_options or {})
        self._owns_reporter = reporter is None
        self._reporter = reporter or OutcomeReporter(
            bootstrap_servers, topic_prefix=topic_prefix,
            kafka_options={"linger.ms": REPORTER_LINGER_MS, **options})
        self._log = RdkafkaLog()
        self._thread = ClientThread("destination-consumer")
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap_servers, "group.id": group_id,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            **options, **self._log.config(), "on_commit": self._on_commit})
        self._stop = asyncio.Event()
        # Offsets of batches whose outcomes are written: the newest per partition, and those not
        # sent yet. Touched by the loop between fetches and by the rebalance callbacks inside a
        # fetch (or the close), never at once.
        self._last: dict[tuple[str, int], int] = {}
        self._pending: dict[tuple[str, int], int] = {}
        self._sent_at = 0.0

    @property
    def reporter(self) -> OutcomeReporter:
        return self._reporter

    async def start(self) -> None:
        if self._owns_reporter:
            await self._reporter.start()
        try:
            await reach(self._thread, self._consumer, self._log, f"consumer of {self.topic}")
            await self._thread.run(lambda: self._consumer.subscribe(
                [self.topic], on_revoke=self._on_revoke, on_lost=self._on_lost))
        except (BrokerUnavailable, KafkaException) as exc:
            if self._owns_reporter:
                await self._reporter.close()
            raise BrokerUnavailable(f"consumer of {self.topic}: {exc}") from exc

    async def stop(self) -> None:
        try:
            await self._thread.run(self._consumer.close)  # leaves the group
            self._thread.close()
        finally:
            if self._owns_reporter:
                await self._reporter.close()

    async def __aenter__(self) -> DestinationConsumer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def request_stop(self) -> None:
        """Make :meth:`run` return after the batch in hand is handled and committed."""
        self._stop.set()

    async def run(self, handler: Handler) -> None:
        """Handle batches until :meth:`request_stop`, then commit and wait; raises
        :class:`BrokerUnavailable` (without committing the batch) when its outcomes cannot be
        written."""
        try:
            while not self._stop.is_set():
                batch = await fetch(self._thread, self._consumer, self._batch_max, 0.2, log)
                if batch:
                    for record in batch:
                        await self._handle(handler, record.value, record.key)
                    await self._reporter.flush()
                    for r in batch:
                        self._last[(r.topic, r.partition)] = r.offset + 1
                        self._pending[(r.topic, r.partition)] = r.offset + 1
                await self._commit(wait=False)
        except BaseException:
            await asyncio.shield(self._commit_on_failure())
            raise
        await self._commit(wait=True)

    async def _handle(self, handler: Handler, value: bytes | None, key: bytes | None) -> None:
        try:
            routed = parse_routed(value, key)
        except InvalidRecord as exc:
            self.stats.invalid += 1
            log.warning("skipping a record of %s: %s", self.topic, exc)
            return
        if routed.decision_id in self._seen:
            self.stats.duplicates += 1
            return
        delivery = await self._call(handler, routed)
        latency_ms = delivery.latency_ms
        self.stats.handled += 1
        self.stats.failed += not delivery.ok
        self._seen.seen_or_add(routed.decision_id, time.monotonic())
        try:
            self._reporter.report(routed, ok=delivery.ok, latency_ms=latency_ms,
                                  reward=delivery.reward, cost=delivery.cost)
        except ValidationError as exc:
            if {e["loc"][:1] for e in exc.errors()} <= _HANDLER_FIELDS:
                log.warning("handler of %s returned %s; reporting ok=%s only", self.topic,
                            _one_line(exc), delivery.ok)
                self._reporter.report(routed, ok=delivery.ok, latency_ms=latency_ms)
            else:  # parse_routed should have refused the record; never stall the partition
                log.warning("no outcome reported for %s on %s: %s", routed.signal_id[:64],
                            self.topic, _one_line(exc))

    async def _call(self, handler: Handler, routed: RoutedSignal) -> _Timed:
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(handler(routed), self._handler_timeout_s)
        except TimeoutError:
            log.warning("handler of %s timed out on %s", self.topic, routed.signal_id)
            result = Delivery(ok=False)
        except Exception as exc:
            # One line per failure; the traceback at DEBUG (a failing destination fails often).
            log.warning("handler of %s failed on %s: %r", self.topic, routed.signal_id, exc)
            log.debug("handler failure", exc_info=True)
            result = Delivery(ok=False)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if not isinstance(result, Delivery):
            result = Delivery()
        return _Timed(result.ok, result.reward, result.cost, elapsed_ms)

    async def _commit(self, *, wait: bool) -> None:
        """``wait=False``: send the pending offsets, at most every :data:`COMMIT_INTERVAL_S` (a
        failure is logged by :meth:`_on_commit` and covered by the next commit). ``wait=True``:
        commit the newest offset of every partition and wait for the coordinator (which answers
        commits in order, so every earlier one is settled too); raises
        :class:`BrokerUnavailable` unless a rebalance took the partitions away."""
        now = time.monotonic()
        offsets = self._last if wait else self._pending
        if not offsets or (not wait and now - self._sent_at < COMMIT_INTERVAL_S):
            return
        positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        self._pending, self._sent_at = {}, now

        def commit() -> None:
            if wait:
                self._consumer.commit(offsets=positions, asynchronous=False)
            else:
                self._consumer.commit(offsets=positions, asynchronous=True)

        try:
            await self._thread.run(commit)
            self.stats.commits += 1
            if wait:
                self._last = {}  # committed: a revoke at the close need not commit it again
        except KafkaException as exc:
            if not commit_rebalanced(exc):
                raise BrokerUnavailable(f"commit on {self.topic} failed: {exc.args[0].str()}"
                                        ) from exc
            # A rebalance took the partitions away; their new owner redelivers (at least once).
            log.warning("commit on %s failed after a rebalance: %s", self.topic,
                        exc.args[0].str())

    async def _commit_on_failure(self) -> None:
        """``run`` is failing: send what is pending (its outcomes are written) without
        waiting, so a restart redelivers less."""
        self._sent_at = 0.0  # now, whatever the interval
        try:
            await self._commit(wait=False)
        except (BrokerUnavailable, RuntimeError) as exc:  # RuntimeError: the consumer closed
            log.warning("pending offsets of %s not committed: %s", self.topic, exc)

    def _on_commit(self, error: KafkaError | None, tps: list[TopicPartition]) -> None:
        """librdkafka's answer to a commit, inside a fetch on the consumer's thread."""
        for e in commit_failures(error, tps):
            log.warning("an offset commit of %s failed; the next commit covers it: %s",
                        self.topic, e.str())

    def _on_revoke(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        """Partitions are taken away (inside a fetch, on the consumer's thread): commit their
        pending offsets and wait, so their next owner starts after them."""
        revoked = {(tp.topic, tp.partition) for tp in tps}
        mine = [TopicPartition(t, p, o) for (t, p), o in self._last.items() if (t, p) in revoked]
        self._forget(revoked)
        if not mine:
            return
        try:
            consumer.commit(offsets=mine, asynchronous=False)
            self.stats.commits += 1
        except KafkaException as exc:  # their new owner redelivers them (at least once)
            log.warning("commit on %s at a rebalance failed: %s", self.topic, exc.args[0].str())

    def _on_lost(self, _consumer: Consumer, tps: list[TopicPartition]) -> None:
        """Partitions lost without a revoke (the session expired): a commit would be refused."""
        self._forget({(tp.topic, tp.partition) for tp in tps})

    def _forget(self, parts: set[tuple[str, int]]) -> None:
        self._last = {k: o for k, o in self._last.items() if k not in parts}
        self._pending = {k: o for k, o in self._pending.items() if k not in parts}


def _one_line(exc: ValidationError) -> str:
    return " ".join(str(exc).split())[:200]


@dataclass(slots=True, frozen=True)
class _Timed:
    ok: bool
    reward: float | None
    cost: float | None
    latency_ms: float
