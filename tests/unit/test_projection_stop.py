"""One stop of the projection is one ``projection stopped`` line, however many of its owners
stop it: ``run()`` stops it when it ends, and ``worker --persist``'s task stops it again."""

from __future__ import annotations

import logging

import pytest

from router_stream.config import Settings
from router_stream.projection import Projection
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
