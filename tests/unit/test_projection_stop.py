"""One stop of the projection is one ``projection stopped`` line, however many of its owners
stop it: ``run()`` stops it when it ends, and ``worker --persist``'s task stops it again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from router_stream.config import Settings
from router_stream.projection import Projection
from router_stream.worker import service
from router_stream.worker.service import RouterWorker


def stopped_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "router_stream.projection" and r.getMessage() == "projection stopped"]


async def nothing() -> None:
    pass


async def test_the_worker_s_projection_says_it_stopped_once(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture):
    projection = Projection(Settings(), http=False)
    monkeypatch.setattr(projection, "start", nothing)  # no broker, no database
    projection.request_stop()  # the worker's drain
    with caplog.at_level(logging.INFO, logger="router_stream.projection"):
        await RouterWorker(Settings(), http=False)._run_projection(projection)
    assert stopped_lines(caplog) == ["projection stopped"]


async def test_stopping_a_stopped_projection_again_does_nothing(caplog: pytest.LogCaptureFixture):
    projection = Projection(Settings(), http=False)
    with caplog.at_level(logging.INFO, logger="router_stream.projection"):
        await projection.stop()
        await projection.stop()
    assert stopped_lines(caplog) == ["projection stopped"]
    assert not projection.readiness()["not_draining"]


class SlowToStop:
    """A projection whose stop (leaving the group, closing the pool) takes three awaits over
    0.9 s: longer than the half second between two cancellations of ``_cancel_all``."""

    def __init__(self, *, deaf: bool = False) -> None:
        self.deaf = deaf  # ignores request_stop: only cancellation ends its run
        self.stopping = asyncio.Event()
        self.closed = False

    async def end_offsets(self) -> dict[str, int]:
        return {}

    async def written_through(self, ends: object) -> bool:
        return True

    def request_stop(self) -> None:
        if not self.deaf:
            self.stopping.set()

    async def run(self) -> None:
        try:
            await self.stopping.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        if not self.closed:
            for _ in range(3):
                await asyncio.sleep(0.3)
            self.closed = True


async def stop_projection_of_worker(projection: SlowToStop) -> None:
    worker = RouterWorker(Settings(), http=False)
    worker.projection = projection  # type: ignore[assignment]
    await worker._stop_projection(asyncio.create_task(projection.run()))


async def test_the_worker_lets_its_projection_finish_stopping():
    projection = SlowToStop()
    await stop_projection_of_worker(projection)
    assert projection.closed


async def test_a_projection_that_does_not_end_is_cancelled_and_its_stop_finished(
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(service, "CANCEL_TIMEOUT_S", 1.0)
    projection = SlowToStop(deaf=True)
    await stop_projection_of_worker(projection)
    assert projection.closed
