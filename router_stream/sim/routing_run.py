"""Run a :class:`RoutingScenario`: the engine's destination choices against the baselines.

Each signal is decided by the engine; its delivery is drawn from the world and reported back as
an ``outcomes`` record once its latency has passed, as a destination's delivery report would be.
Choices are scored by the chosen destination's success probability at that instant (expected
delivery, so the figures do not depend on the delivery coin flips), and the baselines are scored
the same way at the same instants:

* ``random`` — a uniformly random destination;
* ``round_robin`` — destinations in turn;
* ``priority`` — the first destination of the route, always (a fixed list without breakers);
* ``oracle`` — the destination with the highest success probability at that instant.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from router_stream.core.breaker import BreakerState, BreakerTransition
from router_stream.core.outputs import BatchResult
from router_stream.sim.loop import EPOCH, CoreLoop
from router_stream.sim.scenarios import RoutingScenario
from router_stream.sim.stats import mean, rounded
from router_stream.sim.world import Destination

WINDOW = 100  # decisions in the trailing window that decides when a bandit has moved


@dataclass(slots=True)
class _Choices:
    """What one chooser did at every decision: the destination (``None``: dead-lettered) and
    its success probability then."""

    times: list[float] = field(default_factory=list)
    chosen: list[str | None] = field(default_factory=list)
    success: list[float] = field(default_factory=list)

    def add(self, t: float, chosen: str | None, success: float) -> None:
        self.times.append(t)
        self.chosen.append(chosen)
        self.success.append(success)


def run_routing(scenario: RoutingScenario, seed: int) -> dict[str, Any]:
    """Figures of every strategy of the scenario on the same world and seed (JSON-ready)."""
    instants = _instants(scenario, seed)
    strategies = {s: _run_strategy(scenario, s, seed, instants) for s in scenario.strategies}
    baselines = _baselines(scenario, seed, instants)
    return {
        "scenario": scenario.name, "title": scenario.title, "kind": "routing",
        "signals": scenario.signals, "rate": scenario.rate,
        "strategies": {s: fig for s, (fig, _) in strategies.items()},
        "baselines": {name: _choice_figures(scenario, c) for name, c in baselines.items()},
        "series": {s: series for s, (_, series) in strategies.items()},
    }


def _instants(scenario: RoutingScenario, seed: int) -> list[float]:
    """Arrival times: a Poisson process at ``rate`` (the same for every strategy)."""
    rng = random.Random(f"{seed}/arrivals")
    t, out = 0.0, []
    for _ in range(scenario.signals):
        t += rng.expovariate(scenario.rate)
        out.append(t)
    return out


def _run_strategy(scenario: RoutingScenario, strategy: str, seed: int, instants: list[float]
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    dests = {d.name: d for d in scenario.destinations}
    delivery = random.Random(f"{seed}/delivery/{strategy}")
    choices = _Choices()
    decided: list[tuple[float, BatchResult]] = []
    loop = CoreLoop(scenario.policy(strategy), seed, lambda t, r: decided.append((t, r)))
    retried = 0
    for i, t in enumerate(instants):
        loop.signal(t, {"signal_id": f"sig-{i}", "sender_id": "sim"})
        for at, result in decided:
            retried += len(result.retries)
            for d in result.decisions:
                name = d.destinations[0]
                ok, latency = dests[name].deliver(at, delivery)
                loop.outcome(at + latency / 1000.0, signal_id=d.signal_id, destination=name,
                             ok=ok, latency_ms=latency)
                choices.add(at, name, dests[name].success(at))
            for _ in result.dlq:
                choices.add(at, None, 0.0)
        decided.clear()
    loop.advance(scenario.duration_s + 3600.0)  # let retries and late outcomes land
    figures = _choice_figures(scenario, choices)
    figures["retried"] = retried
    figures["breaker"] = _breaker_figures(scenario, loop, choices)
    series = {"t": choices.times, "chosen": choices.chosen, "success": choices.success,
              "best": [max(d.success(t) for d in scenario.destinations) for t in choices.times],
              "transitions": [tr.to_dict() for tr in loop.transitions]}
    return figures, series


def _baselines(scenario: RoutingScenario, seed: int, instants: list[float]
               ) -> dict[str, _Choices]:
    names = [d.name for d in scenario.destinations]
    order = [d for tier in scenario.tiers for d in tier] if scenario.tiers else names
    rng = random.Random(f"{seed}/baseline")
    out = {k: _Choices() for k in ("random", "round_robin", "priority", "oracle")}
    for i, t in enumerate(instants):
        p = {d.name: d.success(t) for d in scenario.destinations}
        picks = {"random": names[rng.randrange(len(names))], "round_robin": names[i % len(names)],
                 "priority": order[0], "oracle": max(names, key=lambda n: p[n])}
        for k, name in picks.items():
            out[k].add(t, name, p[name])
    return out


def _choice_figures(scenario: RoutingScenario, c: _Choices) -> dict[str, Any]:
    """Delivery, dead-destination share, DLQ share, best-destination share and regret."""
    n = len(c.chosen)
    by_name = {d.name: d for d in scenario.destinations}
    best = [max(d.success(t) for d in scenario.destinations) for t in c.times]
    regret = [b - s for b, s in zip(best, c.success, strict=True)]
    to_best = [s >= b for b, s in zip(best, c.success, strict=True)]
    dead = sum(1 for name, t in zip(c.chosen, c.times, strict=True)
               if name is not None and by_name[name].dead(t))
    half = n // 2
    out: dict[str, Any] = {
        "decisions": n,
        "delivery": rounded(mean(c.success)),
        "dlq_share": rounded(c.chosen.count(None) / n if n else math.nan),
        "dead_share": rounded(dead / n if n else math.nan),
        "best_share": rounded(sum(to_best) / n if n else math.nan),
        "best_share_second_half": rounded(sum(to_best[half:]) / (n - half) if n else math.nan),
        "regret": rounded(math.fsum(regret), 2),
        "shares": {d.name: rounded(c.chosen.count(d.name) / n) for d in scenario.destinations},
    }
    if scenario.change_at is not None:
        out["moved_after"] = _moved_after(scenario, c)
    return out


def _moved_after(scenario: RoutingScenario, c: _Choices) -> int | None:
    """Decisions after the change until the new best destination has at least half of the
    trailing :data:`WINDOW` decisions; ``None`` if it never gets there."""
    change = scenario.change_at if scenario.change_at is not None else math.inf
    first = next((i for i, t in enumerate(c.times) if t >= change), None)
    if first is None:
        return None
    new_best = max(scenario.destinations, key=lambda d: d.success(c.times[first])).name
    hits = 0
    for i in range(first, len(c.chosen)):
        hits += c.chosen[i] == new_best
        if i - WINDOW >= first:
            hits -= c.chosen[i - WINDOW] == new_best
        if i - first + 1 >= WINDOW // 2 and hits * 2 >= min(WINDOW, i - first + 1):
            return i - first + 1
    return None


def _breaker_figures(scenario: RoutingScenario, loop: CoreLoop, choices: _Choices
                     ) -> list[dict[str, Any]]:
    """Per destination death (success 0 from some instant) that the router met (sent it
    traffic): event time from its start to the breaker opening, and from the recovery to the
    breaker closing again, with the bound that recovery must meet: the cooldown then in effect
    plus one probe's round trip."""
    out = []
    cfg = loop.engine.policy.breaker
    for d in scenario.destinations:
        for start, end in _dead_windows(d, scenario.duration_s):
            if not any(name == d.name and start <= t < end
                       for t, name in zip(choices.times, choices.chosen, strict=True)):
                continue
            opened = _first(loop.transitions, d.name, BreakerState.OPEN, start)
            closed = _first(loop.transitions, d.name, BreakerState.CLOSED, end)
            reopens = [tr for tr in loop.transitions if tr.target_id == d.name
                       and tr.to_state is BreakerState.OPEN and start <= tr.at - EPOCH < end]
            cooldown = min(cfg.max_cooldown_s,
                           cfg.cooldown_s * cfg.backoff_multiplier ** max(0, len(reopens) - 1))
            probe = cfg.half_open_probes * (1.0 / scenario.rate + 5 * d.latency_ms / 1000.0)
            out.append({
                "destination": d.name, "dead_from": start, "dead_until": end,
                "open_after_s": rounded(opened - start) if opened is not None else None,
                "closed_after_recovery_s": rounded(closed - end) if closed is not None else None,
                "recovery_bound_s": rounded(cooldown + probe),
            })
    return out


def _first(transitions: list[BreakerTransition], target: str, to: BreakerState,
           after: float) -> float | None:
    for tr in transitions:
        if tr.target_id == target and tr.to_state is to and tr.at - EPOCH >= after:
            return tr.at - EPOCH
    return None


def _dead_windows(d: Destination, duration: float, step: float = 0.05
                  ) -> list[tuple[float, float]]:
    """The intervals in which ``d`` delivers nothing, found on a fine grid."""
    windows: list[tuple[float, float]] = []
    start = None
    for i in range(int(duration / step) + 1):
        t = round(i * step, 6)
        if d.dead(t) and start is None:
            start = t
        elif not d.dead(t) and start is not None:
            windows.append((start, t))
            start = None
    if start is not None:
        windows.append((start, duration))
    return windows
