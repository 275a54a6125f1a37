"""The worker's side producer (heartbeats, checkpoints, state events) failing for good: the
worker stops with one line (the signal loop's own producer is replaced instead:
tests/unit/test_kafka_sink_failed_producer.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from router_stream.config import Settings
from router_stream.errors import ProducerFailed, UserError
from router_stream.worker import service
from router_stream.worker.service import RouterWorker

OUT_OF_ORDER = "Broker: Broker received an out of order sequence number"


class TurnsFatal:
    """An OutputProducer as the worker uses it, until :meth:`turn_fatal`."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self._failure: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.closed = False

    async def check_connection(self) -> None:
        pass

    def turn_fatal(self, reason: str) -> None:
        self._failure.set_result(reason)

    async def failed(self) -> str:
        return await asyncio.shield(self._failure)

    async def close(self, timeout_s: float) -> None:
        self.closed = True


class IdleSignals:
    """A signal loop with nothing to consume: each step is one empty poll."""

    failure = None
    processed = 0

    async def step(self) -> int:
        await asyncio.sleep(0.01)  # the consumer's poll timeout
        return 0

    async def stop(self) -> None:
        pass


async def running_worker(monkeypatch: pytest.MonkeyPatch
                         ) -> tuple[RouterWorker, TurnsFatal, asyncio.Task[None]]:
    made: list[TurnsFatal] = []

    def make(settings: Settings, client_id: str) -> TurnsFatal:
        made.append(TurnsFatal(settings, client_id))
        return made[-1]

    monkeypatch.setattr(service, "OutputProducer", make)
    worker = RouterWorker(Settings(), http=False, verify=False)
    await worker._start_producer()
    worker.signals = IdleSignals()  # type: ignore[assignment]
    return worker, made[0], asyncio.create_task(worker.run())


async def test_a_side_producer_failed_for_good_stops_the_worker_with_one_line(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    worker, producer, run = await running_worker(monkeypatch)
    producer.turn_fatal(OUT_OF_ORDER)
    with pytest.raises(ProducerFailed, match="side producer .* failed for good: Broker: "
                       "Broker received an out of order") as stopped:
        await asyncio.wait_for(run, 10)
    assert not isinstance(stopped.value, UserError)  # the CLI's exit code 2
    assert producer.closed
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [str(stopped.value)]


async def test_a_healthy_side_producer_lets_the_worker_drain_as_usual(
        monkeypatch: pytest.MonkeyPatch):
    worker, producer, run = await running_worker(monkeypatch)
    worker.request_stop()
    await asyncio.wait_for(run, 10)  # no error
    assert producer.closed

