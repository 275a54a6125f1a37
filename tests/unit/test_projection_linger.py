"""``ROUTER_PROJECTION_LINGER_MS``: the projection fetches (so writes one transaction) at most
once per linger; a fetch that found nothing does not count, and a backlog's reads, started
while the previous batch is written, are not held back once the linger has passed."""

from __future__ import annotations

from typing import Any

import pytest

from router_stream.config import Settings
from router_stream.projection import service
from router_stream.projection.service import Projection


class _Clock:
    def __init__(self) -> None:
        self.now = 500.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(service.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(service.asyncio, "sleep", clock.sleep)
    return clock


def _fetches(monkeypatch: pytest.MonkeyPatch, answers: list[list[Any]]) -> list[float]:
    """Fetches answer ``answers`` in turn (lists of records: none here, the rows are not the
    point); returns the clock readings at which they were made."""
    made: list[float] = []

    async def fetch_messages(*args: Any) -> list[Any]:
        made.append(service.time.monotonic())
        return answers.pop(0)
    monkeypatch.setattr(service, "fetch_messages", fetch_messages)
    monkeypatch.setattr(Projection, "_build", lambda self, fetched, messages, traced: None)
    return made


async def test_a_trickle_is_fetched_once_per_linger(clock: _Clock,
                                                       monkeypatch: pytest.MonkeyPatch):
    made = _fetches(monkeypatch, [["r"], ["r"], [], ["r"]])
    projection = Projection(Settings(projection_linger_ms=100), http=False)
    for _ in range(4):
        await projection._read(object())  # type: ignore[arg-type]
        clock.now += 0.01  # the batch is written in 10 ms
    # each waits out the linger after the last fetch that found records; the empty third one
    # does not restart it, so the fourth goes at once
    assert [round(t - made[0], 3) for t in made] == [0.0, 0.1, 0.2, 0.21]


async def test_a_backlog_is_not_held_back(clock: _Clock, monkeypatch: pytest.MonkeyPatch):
    made = _fetches(monkeypatch, [["r"], ["r"], ["r"]])
    projection = Projection(Settings(projection_linger_ms=100), http=False)
    for _ in range(3):
        await projection._read(object())  # type: ignore[arg-type]
        clock.now += 0.4  # each batch takes longer to write than the linger
    assert clock.slept == []
    assert len(made) == 3


async def test_no_linger_never_waits(clock: _Clock, monkeypatch: pytest.MonkeyPatch):
    _fetches(monkeypatch, [["r"], ["r"]])
    projection = Projection(Settings(projection_linger_ms=0), http=False)
    await projection._read(object())  # type: ignore[arg-type]
    await projection._read(object())  # type: ignore[arg-type]
    assert clock.slept == []
