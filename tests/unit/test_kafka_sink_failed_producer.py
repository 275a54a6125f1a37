"""The signal loop's producer failing for good (``KafkaError.fatal()``): the next send or the
batch's retry gets a new producer, logged once, instead of retrying on the dead one forever."""

from __future__ import annotations

import asyncio
import logging

import pytest

from router_stream.config import Settings
from router_stream.core.outputs import BatchResult
from router_stream.worker import kafka_sink
from router_stream.worker.kafka_sink import KafkaSink
from router_stream.worker.metrics import WorkerMetrics
from router_stream.worker.rdkafka import DeliveryReports
from router_stream.worker.sink import OutputTopics


class Producer:
    """An OutputProducer as KafkaSink uses it, with nothing to send (an empty batch)."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self.failed = False
        self.closed = False

    async def check_connection(self) -> None:
        pass

    def has_failed(self) -> bool:
        return self.failed

    def reports(self, n: int) -> DeliveryReports:
        return DeliveryReports(asyncio.get_running_loop(), n)

    def hand_over(self, *args: object) -> None:
        raise AssertionError("an empty batch hands nothing over")

    async def close(self, timeout_s: float) -> None:
        self.closed = True


async def _sink(monkeypatch: pytest.MonkeyPatch) -> tuple[KafkaSink, list[Producer]]:
    made: list[Producer] = []

    def make(settings: Settings, client_id: str) -> Producer:
        made.append(Producer(settings, client_id))
        return made[-1]
    monkeypatch.setattr(kafka_sink, "OutputProducer", make)

    async def quiesce() -> None:
        pass
    settings = Settings()
    sink = KafkaSink(settings, OutputTopics.of(settings), WorkerMetrics(), quiesce=quiesce)
    await sink.start()
    return sink, made


async def test_a_failed_producer_is_replaced_before_the_next_send(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    sink, made = await _sink(monkeypatch)
    await sink.send(BatchResult())
    assert len(made) == 1  # a healthy producer is kept
    made[0].failed = True
    with caplog.at_level(logging.ERROR, logger="router_stream.worker"):
        deliveries = await sink.send(BatchResult())
        await sink.send(BatchResult())
    assert len(made) == 2 and sink.producer is made[1]
    assert deliveries.producer is made[1]
    await asyncio.sleep(0)  # the old one is closed in the background
    assert made[0].closed
    assert [r.getMessage() for r in caplog.records] == [
        "the output producer failed for good; a new one replaces it"]
    await sink.stop()
