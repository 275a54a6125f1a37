"""The decision-quality goals of issue 14, checked against a run's figures.

Each :class:`Goal` names the scenario and figure it reads, the target, and whether the run met
it. ``router-stream simulate`` prints them, docs/decision-quality.md records them, and the fast
tests (tests/unit/test_sim_goals.py) assert the same targets on a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Figures = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Goal:
    scenario: str
    what: str
    value: float | None
    target: str
    met: bool

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "what": self.what, "value": self.value,
                "target": self.target, "met": self.met}


def _at_most(limit: float) -> tuple[str, Callable[[float], bool]]:
    return f"≤ {limit:g}", lambda v: v <= limit


def _below(limit: float) -> tuple[str, Callable[[float], bool]]:
    return f"< {limit:g}", lambda v: v < limit


def _at_least(limit: float) -> tuple[str, Callable[[float], bool]]:
    return f"≥ {limit:g}", lambda v: v >= limit


def _goal(scenario: str, what: str, value: float | None,
          test: tuple[str, Callable[[float], bool]]) -> Goal:
    target, ok = test
    return Goal(scenario, what, value, target, value is not None and ok(value))


def goals(results: dict[str, Figures]) -> list[Goal]:
    """Every goal whose scenario is in ``results`` (keyed by scenario name)."""
    out: list[Goal] = []
    for name, fig in results.items():
        out.extend(_goals_of(name, fig))
    return out


def _goals_of(name: str, fig: Figures) -> Iterator[Goal]:
    if name == "consensus":
        yield _goal(name, "consensus MAE / oracle MAE", fig["mae_ratio_to_oracle"], _at_most(1.2))
        yield _goal(name, "consensus MAE / naive-mean MAE", fig["mae_ratio_to_naive_mean"],
                    _at_most(0.3))
        yield _goal(name, "synthetic fallback share", fig["synthetic_rate"], _below(0.1))
    elif name == "breaker":
        s = fig["strategies"]["first_healthy"]
        for b in s["breaker"]:
            label = f"{b['destination']} dead at {b['dead_from']:g} s"
            yield _goal(name, f"{label}: breaker open after (s, event time)",
                        b["open_after_s"], _below(1.0))
            back = b["closed_after_recovery_s"]
            yield _goal(name, f"{label}: back after recovery (s)", back,
                        _at_most(b["recovery_bound_s"]))
        yield _goal(name, "share of signals sent to a dead destination", s["dead_share"],
                    _below(0.01))
    elif name == "bandit":
        yield _goal(name, "thompson: best-arm share of the second half",
                    fig["strategies"]["thompson"]["best_share_second_half"], _at_least(0.95))
    elif name == "bandit-flip":
        moved = fig["strategies"]["thompson"]["moved_after"]
        yield _goal(name, "thompson: decisions until the new best arm has half the traffic",
                    moved, _at_most(500))
    elif name in ("bandit-breaker", "bandit-breaker-poor"):
        yield _goal(name, "dead-lettered share (an arm succeeds ≥ 50 %)",
                    fig["strategies"]["thompson"]["dlq_share"], _below(0.01))
