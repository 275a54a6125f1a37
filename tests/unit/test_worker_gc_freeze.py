"""``run_worker`` freezes what start-up built before the worker's first batch, not before."""

from __future__ import annotations

import gc
import weakref

import pytest

from router_stream.config import Settings
from router_stream.worker import service


class _Worker:
    """Records the frozen-object count when started and when run."""

    seen: dict[str, int] = {}

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def start(self) -> None:
        self.built = [[i] for i in range(1000)]  # start-up's long-lived objects
        _Worker.seen["start"] = gc.get_freeze_count()

    async def run(self, exit_when_idle: float | None = None) -> None:
        _Worker.seen["run"] = gc.get_freeze_count()

    async def stop(self) -> None:
        pass


async def test_start_up_objects_are_frozen_before_the_first_batch(monkeypatch):
    monkeypatch.setattr(service, "RouterWorker", _Worker)
    monkeypatch.setattr(service, "install_signal_handlers", lambda worker, loop: None)
    gc.unfreeze()
    try:
        await service.run_worker(Settings())
    finally:
        gc.unfreeze()
    assert _Worker.seen["start"] == 0
    assert _Worker.seen["run"] >= 1000


def test_a_garbage_cycle_is_collected_not_frozen():
    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    alive = weakref.ref(a)
    del a, b
    gc.unfreeze()
    try:
        service.freeze_what_start_built()
        assert alive() is None
    finally:
        gc.unfreeze()


@pytest.fixture(autouse=True)
def _no_freeze_left_behind():
    yield
    gc.unfreeze()
