"""Fire-and-forget reporting of delivery outcomes to the ``outcomes`` topic.

``report`` never blocks and never raises for a full buffer: it encodes the outcome, appends it to a
bounded buffer and returns ``False`` (counting a drop) when the buffer is full. A background task
sends the buffer in batches through one librdkafka (confluent-kafka) producer (``acks=all``).
``flush`` waits until everything reported so far is acknowledged and raises if any of it failed;
``close`` flushes. An outcome too large for Kafka (``message.max.bytes``) is logged, counted in
``stats.too_large`` and dropped instead of failing: no retry could ever write it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from router_stream.adapters.kafka_failures import RdkafkaLog, rdkafka_reason
from router_stream.adapters.rdkafka import AckingProducer, ClientThread
from router_stream.client._outcomes import encode_outcome, outcome_for
from router_stream.client._records import RoutedSignal
from router_stream.config import OUTCOMES
from router_stream.core.models import Outcome
from router_stream.errors import BrokerUnavailable, OperationTimeout

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ReporterStats:
    """Outcomes acknowledged by the broker, refused for a full buffer, failed to send, and
    dropped as larger than the producer or the broker accepts (``message.max.bytes``)."""

    sent: int = 0
    dropped: int = 0
    failed: int = 0
    too_large: int = 0


class OutcomeReporter:
    """Sends outcomes to ``<topic_prefix>outcomes`` (key = destination).

    ``kafka_options`` are librdkafka settings added to the producer's (``security.protocol``,
    ``ssl.ca.location``, ``sasl.*``, ``message.timeout.ms``, ...).
    Use as ``async with OutcomeReporter(...) as reporter:`` or call ``start``/``close``.
    """

    def __init__(self, bootstrap_servers: str, *, topic_prefix: str = "",
                 max_buffer: int = 10_000, batch_size: int = 500,
                 kafka_options: Mapping[str, Any] | None = None) -> None:
        if max_buffer < 1 or batch_size < 1:
            raise ValueError("max_buffer and batch_size must be >= 1")
        self.topic = f"{topic_prefix}{OUTCOMES}"
        self.stats = ReporterStats()
        self._max_buffer = max_buffer
        self._batch_size = batch_size
        self._buffer: deque[tuple[bytes, bytes]] = deque()
        self._failed_since_flush = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._log = RdkafkaLog()
        self._thread = ClientThread("outcome-reporter")
        self._acking = AckingProducer({
            "bootstrap.servers": bootstrap_servers, "acks": "all", "linger.ms": 5,
            **dict(kafka_options or {}), **self._log.config()}, self._thread)
        self._sender: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        await reach(self._thread, self._acking.producer, self._log, "outcome reporter")
        self._acking.start()
        self._sender = asyncio.create_task(self._send_loop(), name="outcome-reporter")

    async def __aenter__(self) -> OutcomeReporter:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def report(self, routed: RoutedSignal, *, ok: bool, latency_ms: float | None = None,
               reward: float | None = None, cost: float | None = None) -> bool:
        """Queue the outcome of one delivery; ``False`` when the buffer is full (dropped)."""
        return self.report_outcome(outcome_for(routed, ok=ok, latency_ms=latency_ms,
                                               reward=reward, cost=cost))

    def report_outcome(self, outcome: Outcome) -> bool:
        """Queue an outcome built by the caller; ``False`` when the buffer is full or the
        reporter closed (dropped)."""
        if self._closed or len(self._buffer) >= self._max_buffer:
            self.stats.dropped += 1
            return False
        self._buffer.append(encode_outcome(outcome))
        self._drained.clear()
        self._wake.set()
        return True

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every outcome reported so far is acknowledged.

        Raises :class:`BrokerUnavailable` if any outcome since the previous flush failed to send,
        :class:`OperationTimeout` if the broker does not acknowledge within ``timeout_s``.
        """
        try:
            await asyncio.wait_for(self._drained.wait(), timeout_s)
        except TimeoutError:
            raise OperationTimeout(f"outcomes not acknowledged within {timeout_s}s") from None
        failed, self._failed_since_flush = self._failed_since_flush, 0
        if failed:
            raise BrokerUnavailable(f"{failed} outcome(s) could not be written to {self.topic}")

    async def close(self, timeout_s: float = 30.0) -> None:
        """Flush (best effort: failures are logged, not raised) and stop the producer; later
        reports are dropped."""
        self._closed = True
        try:
            if self._sender is not None:
                await self.flush(timeout_s)
        except (BrokerUnavailable, OperationTimeout) as exc:
            log.warning("outcomes lost on close: %s", exc)
        finally:
            if self._sender is not None:
                self._sender.cancel()
                await asyncio.gather(self._sender, return_exceptions=True)
                self._sender = None
            await self._acking.stop(timeout_s)
            self._thread.close()

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buffer:
                n = min(len(self._buffer), self._batch_size)
                batch = [self._buffer.popleft() for _ in range(n)]
                await self._send(batch)
            self._drained.set()

    async def _send(self, batch: list[tuple[bytes, bytes]]) -> None:
        futures = []
        too_large: list[BaseException] = []
        for queued, (key, value) in enumerate(batch):
            try:
                futures.append(await self._acking.produce(self.topic, value, key=key))
            except KafkaException as exc:
                if not _too_large(exc):  # the producer refuses the rest of the batch outright
                    self._fail(len(batch) - queued, exc)
                    break
                too_large.append(exc)
        results = await asyncio.gather(*futures, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        errors = [r for r in failures if not _too_large(r)]
        too_large += [r for r in failures if _too_large(r)]
        self.stats.sent += len(results) - len(failures)
        if too_large:
            self._drop(len(too_large), too_large[0])
        if errors:
            self._fail(len(errors), errors[0])

    def _fail(self, count: int, exc: BaseException) -> None:
        self.stats.failed += count
        self._failed_since_flush += count
        log.warning("%d outcome(s) not written to %s: %s", count, self.topic, exc)

    def _drop(self, count: int, exc: BaseException) -> None:
        self.stats.too_large += count
        log.warning("%d outcome(s) too large for %s dropped: %s", count, self.topic, exc)


def _too_large(result: object) -> bool:
    """True for an outcome Kafka refuses however often it is sent (``message.max.bytes``)."""
    return (isinstance(result, KafkaException) and bool(result.args)
            and isinstance(result.args[0], KafkaError)
            and result.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE)


async def reach(thread: ClientThread, client: Any, log: RdkafkaLog, who: str,
                timeout_s: float = 10.0) -> None:
    """Return once ``client`` reached a broker; BrokerUnavailable with the reason when it
    cannot within ``timeout_s``."""
    try:
        await thread.run(client.list_topics, None, timeout_s)
    except KafkaException as exc:
        await thread.run(client.poll, 0)  # delivers the reasons to ``log``
        reason = rdkafka_reason(log.reasons[-1]) if log.reasons else exc.args[0].str()
        raise BrokerUnavailable(f"{who} cannot reach Kafka: {reason}") from exc
