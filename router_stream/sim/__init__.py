"""Decision quality: a seeded world with ground truth, run through the real routing core.

``run(name, seed)`` builds a scenario's world (:mod:`.world`, :mod:`.scenarios`), feeds its
signals, health events and outcomes through a :class:`~router_stream.core.engine.RouterEngine`
the way the worker does (:mod:`.loop`), scores the decisions against the truth and against
simple baselines in the same run (:mod:`.consensus_run`, :mod:`.routing_run`), and
:mod:`.report` turns the figures into a table, JSON, plots and docs/decision-quality.md.

The core never imports this package; it imports the core.
"""

from __future__ import annotations

from typing import Any

from router_stream.sim.consensus_run import run_consensus
from router_stream.sim.routing_run import run_routing
from router_stream.sim.scenarios import SCENARIOS, ConsensusScenario


def run(name: str, seed: int = 0) -> dict[str, Any]:
    """The figures of scenario ``name`` with ``seed`` (``KeyError`` for an unknown name)."""
    scenario = SCENARIOS[name]
    if isinstance(scenario, ConsensusScenario):
        return run_consensus(scenario, seed)
    return run_routing(scenario, seed)


__all__ = ["SCENARIOS", "run"]
