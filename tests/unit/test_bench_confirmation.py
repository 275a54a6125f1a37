"""The full bench's 30 s confirmation (bench/harness.py ``_phases``): the rate reported as
sustainable is one that held for the whole window, tried 10 % lower each time one grew a
backlog; only when none held is the search's figure kept, marked unconfirmed."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from bench import harness


class Contender:
    """Holds any short step up to ``short_cap``/s, and the 30 s window up to ``long_cap``/s
    (a contender that slows down over a longer run)."""

    def __init__(self, short_cap: float, long_cap: float, time_left_s: float = 1e9) -> None:
        self.name = "fake"
        self.short_cap, self.long_cap, self.time_left_s = short_cap, long_cap, time_left_s
        self.confirmed: list[float] = []

    async def warm_up(self) -> float:
        return 1.0

    async def burst(self) -> float:
        return self.short_cap

    async def latency(self, label: str, rate: float) -> dict[str, Any]:
        return {"p50_ms": 1.0, "p99_ms": 2.0, "p999_ms": 3.0, "count": 10, "missing": 0}

    async def step(self, rate: float, window: float) -> dict[str, Any]:
        if window == harness.FULL.confirm_window_s:
            self.confirmed.append(rate)
            self.time_left_s -= window
        bounded = rate <= (self.long_cap if window == harness.FULL.confirm_window_s
                           else self.short_cap)
        return {"rate": rate, "bounded": bounded, "generator_kept_up": True,
                "reason": "bounded" if bounded else "lag grows", "growth": 0.0,
                "final_lag": 0, "cpu_s_per_10k": 1.0}

    def has_time_for(self, seconds: float) -> bool:
        return 1.5 * seconds < self.time_left_s


async def phases(contender: Contender) -> dict[str, Any]:
    result: dict[str, Any] = {}
    await harness._phases(contender, result, harness.FULL,  # type: ignore[arg-type]
                          Console(quiet=True))
    return result


async def test_the_rate_found_is_kept_when_it_holds_for_the_window() -> None:
    contender = Contender(short_cap=10_000, long_cap=10_000)
    result = await phases(contender)
    assert len(contender.confirmed) == 1
    assert result["sustainable_rate"] == contender.confirmed[0]
    assert "unconfirmed" not in result


async def test_a_lower_rate_that_holds_for_the_window_is_the_sustainable_one() -> None:
    contender = Contender(short_cap=10_000, long_cap=8_000)
    result = await phases(contender)
    found = contender.confirmed[0]
    assert contender.confirmed == pytest.approx([found * s for s in (1.0, 0.9, 0.8)])
    assert result["sustainable_rate"] == pytest.approx(found * 0.8)
    assert result["sustainable_rate"] <= 8_000
    assert "unconfirmed" not in result
    assert set(result["latency"]) == {"1k", "50%", "90%"}


async def test_nothing_holding_down_to_70_percent_leaves_the_found_rate_unconfirmed() -> None:
    contender = Contender(short_cap=10_000, long_cap=1_000)
    result = await phases(contender)
    found = contender.confirmed[0]
    assert contender.confirmed == pytest.approx([found * s for s in harness.CONFIRM_SHARES])
    assert result["sustainable_rate"] == found and result["unconfirmed"]


async def test_further_tries_give_way_to_the_latency_windows_when_time_runs_short() -> None:
    contender = Contender(short_cap=10_000, long_cap=1_000, time_left_s=100)
    result = await phases(contender)
    assert len(contender.confirmed) == 2  # 100 s left: the found rate, then one 10 % lower
    assert result["unconfirmed"]
    assert set(result["latency"]) == {"1k", "50%", "90%"}
