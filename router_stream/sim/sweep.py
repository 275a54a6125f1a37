"""The tuning sweep: one knob at a time around examples/policy.yaml, on the scenario it moves.

Each row is one setting and the figures an operator trades off with it, so a value can be
picked for a deployment's own priorities; docs/decision-quality.md shows the table and why the
example policy uses the values it does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from router_stream.sim.consensus_run import run_consensus
from router_stream.sim.routing_run import run_routing
from router_stream.sim.scenarios import (
    EXAMPLE_BANDIT,
    EXAMPLE_BREAKER,
    EXAMPLE_CONSENSUS,
    EXAMPLE_TRUST,
    SCENARIOS,
    ConsensusScenario,
    RoutingScenario,
)
from router_stream.sim.stats import ratio, rounded

Row = dict[str, Any]


def _consensus(**changes: Any) -> ConsensusScenario:
    scenario = SCENARIOS["consensus"]
    assert isinstance(scenario, ConsensusScenario)
    return dataclasses.replace(scenario, **changes)


def _routing(name: str, **changes: Any) -> RoutingScenario:
    scenario = SCENARIOS[name]
    assert isinstance(scenario, RoutingScenario)
    return dataclasses.replace(scenario, **changes)


def _consensus_row(scenario: ConsensusScenario, seed: int) -> Row:
    fig = run_consensus(scenario, seed)
    est = fig["estimators"]
    return {"MAE": est["consensus"]["mae"], "p99": est["consensus"]["p99"],
            "MAE / floor": rounded(ratio(est["consensus"]["mae"], est["honest_mean"]["mae"])),
            "MAE / naive": fig["mae_ratio_to_naive_mean"], "synthetic": fig["synthetic_rate"]}


def _mad_k(seed: int) -> list[Row]:
    return [{"mad_k": k, **_consensus_row(_consensus(consensus={**EXAMPLE_CONSENSUS,
                                                               "mad_k": k}), seed)}
            for k in (1.5, 2.0, 2.5, 3.0, 3.5)]


def _deviation_weight(seed: int) -> list[Row]:
    rows = []
    for w in (0.1, 0.2, 0.4, 0.6):
        others = {k: v for k, v in EXAMPLE_TRUST["weights"].items() if k != "deviation"}
        scale = (1.0 - w) / sum(others.values())
        weights = {**{k: round(v * scale, 6) for k, v in others.items()}, "deviation": w}
        weights["availability"] = round(1.0 - sum(v for k, v in weights.items()
                                                  if k != "availability"), 6)
        trust = {**EXAMPLE_TRUST, "weights": weights}
        rows.append({"trust.weights.deviation": w,
                     **_consensus_row(_consensus(trust=trust), seed)})
    return rows


def _breaker(seed: int) -> list[Row]:
    rows = []
    for threshold in (3, 5, 10):
        for cooldown in (10, 30, 60):
            scenario = _routing("breaker", breaker={**EXAMPLE_BREAKER,
                                                    "failure_threshold": threshold,
                                                    "cooldown_s": cooldown})
            fig = run_routing(scenario, seed)["strategies"]["first_healthy"]
            death: dict[str, Any] = next(
                (b for b in fig["breaker"] if b["destination"] == "primary"), {})
            rows.append({"failure_threshold": threshold, "cooldown_s": cooldown,
                         "open after (s)": death.get("open_after_s"),
                         "back after (s)": death.get("closed_after_recovery_s"),
                         "to dead": fig["dead_share"], "delivery": fig["delivery"]})
    return rows


def _bandit(seed: int) -> list[Row]:
    rows = []
    for discount in (1.0, 0.995, 0.99, 0.98):
        for prior in (1, 5):
            bandit = {**EXAMPLE_BANDIT, "discount": discount, "prior_alpha": prior,
                      "prior_beta": prior}
            stationary = run_routing(_routing("bandit", strategies=("thompson",),
                                              bandit=bandit), seed)["strategies"]["thompson"]
            flip = run_routing(_routing("bandit-flip", strategies=("thompson",),
                                        bandit=bandit), seed)["strategies"]["thompson"]
            rows.append({"discount": discount, "prior": f"Beta({prior}, {prior})",
                         "stationary: best, 2nd half": stationary["best_share_second_half"],
                         "stationary: regret": stationary["regret"],
                         "flip: moved after": flip["moved_after"], "flip: regret": flip["regret"]})
    return rows


SWEEPS: dict[str, tuple[str, Callable[[int], list[Row]]]] = {
    "mad_k": ("consensus: outlier cut `consensus.mad_k`", _mad_k),
    "deviation": ("consensus: `trust.weights.deviation` (the others scaled to fit)",
                  _deviation_weight),
    "breaker": ("breaker scenario: `breaker.failure_threshold` × `breaker.cooldown_s`",
                _breaker),
    "bandit": ("thompson: `bandit.discount` × prior (stationary 0.9/0.8/0.5 and the flip)",
               _bandit),
}


def sweep(seed: int) -> dict[str, dict[str, Any]]:
    """Every sweep: ``{name: {"title": …, "rows": [...]}}``."""
    return {name: {"title": title, "rows": run(seed)} for name, (title, run) in SWEEPS.items()}
