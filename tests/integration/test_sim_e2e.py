"""The simulator through a real worker on Kafka gives the in-process figures within noise: the
worker adds no decision error (issue 14, ``router-stream simulate --e2e``)."""

from __future__ import annotations

import dataclasses

from router_stream.config import Settings
from router_stream.sim import SCENARIOS
from router_stream.sim.e2e import run_routing_e2e
from router_stream.sim.routing_run import run_routing
from router_stream.sim.scenarios import RoutingScenario


async def test_a_bandit_route_through_a_worker_decides_like_the_core_in_process(
        settings: Settings) -> None:
    base = SCENARIOS["bandit-breaker"]
    assert isinstance(base, RoutingScenario)
    scenario = dataclasses.replace(base, signals=600, rate=50.0)  # 12 s of real time
    worker = await run_routing_e2e(scenario, "thompson", 0, settings)
    in_process = run_routing(scenario, 0)["strategies"]["thompson"]
    assert worker["decisions"] == in_process["decisions"] == 600
    assert worker["dlq_share"] < 0.01 and in_process["dlq_share"] < 0.01
    assert abs(worker["delivery"] - in_process["delivery"]) < 0.03
    assert worker["best_share_second_half"] >= 0.95
