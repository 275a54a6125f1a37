"""The named scenarios: a world, a policy, and how long to run it.

Each scenario is a frozen description; :mod:`router_stream.sim.run` turns one and a seed into
figures. Policies are written as the policy file a user would write (``policy_yaml``) and go
through the same validation and compilation as the worker's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from router_stream.sim.world import Destination, Fault, Schedule, Truth


def _example_policy() -> dict[str, Any]:
    """examples/policy.yaml (shipped with the package): the settings a user starts from, and
    the ones the scenarios run with, so its recommended values are the ones measured."""
    text = (resources.files("router_stream._data") / "examples" / "policy.yaml").read_text()
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


_EXAMPLE = _example_policy()
EXAMPLE_TRUST: dict[str, Any] = _EXAMPLE["trust"]
EXAMPLE_BREAKER: dict[str, Any] = _EXAMPLE["breaker"]
EXAMPLE_CONSENSUS: dict[str, Any] = _EXAMPLE["routes"]["observation"]["consensus"]
EXAMPLE_BANDIT: dict[str, Any] = {
    k: v for k, v in _EXAMPLE["routes"]["notification"]["bandit"].items() if k != "seed"}


def policy_yaml(name: str, kind: str, route: dict[str, Any], destinations: list[str],
                breaker: dict[str, Any] | None = None, trust: dict[str, Any] | None = None
                ) -> str:
    """A one-route policy file: everything classified as ``kind`` goes by ``route``."""
    doc = {
        "name": f"sim-{name}",
        "trust": trust if trust is not None else EXAMPLE_TRUST,
        "breaker": {**EXAMPLE_BREAKER, **(breaker or {})},
        "destinations": {d: {} for d in destinations},
        "classify": [{"name": "everything", "when": {"field": "sender_id", "exists": True},
                      "kind": kind}],
        "routes": {kind: {**route, "dedupe": False}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    source_id: str
    noise: float = 0.5
    interval_s: float = 1.0
    faults: tuple[Fault, ...] = ()


@dataclass(frozen=True, slots=True)
class ConsensusScenario:
    """Sources observing one metric, reconciled by a consensus route."""

    name: str
    title: str
    sources: tuple[SourceSpec, ...]
    duration_s: float = 600.0
    truth: Truth = Truth()
    consensus: dict[str, Any] = field(default_factory=lambda: dict(EXAMPLE_CONSENSUS))
    trust: dict[str, Any] = field(default_factory=lambda: dict(EXAMPLE_TRUST))
    health_interval_s: float = 5.0
    trust_sample_s: float = 5.0

    @property
    def policy(self) -> str:
        return policy_yaml(self.name, "observation",
                           {"strategy": "consensus", "destinations": ["metrics-store"],
                            "consensus": self.consensus}, ["metrics-store"], trust=self.trust)


@dataclass(frozen=True, slots=True)
class RoutingScenario:
    """Signals at ``rate`` per second for ``signals`` signals, routed over destinations whose
    success changes in time; ``strategies`` are run one after the other on the same world. A
    strategy written ``name@γ`` is that bandit with ``discount: γ`` instead of the scenario's."""

    name: str
    title: str
    destinations: tuple[Destination, ...]
    strategies: tuple[str, ...]
    signals: int
    rate: float = 20.0
    tiers: tuple[tuple[str, ...], ...] | None = None  # None: one tier of every destination
    breaker: dict[str, Any] = field(default_factory=dict)
    bandit: dict[str, Any] | None = field(default_factory=lambda: dict(EXAMPLE_BANDIT))
    change_at: float | None = None  # the moment the best destination changes, if it does

    def policy(self, label: str) -> str:
        names = [d.name for d in self.destinations]
        strategy, _, discount = label.partition("@")
        route: dict[str, Any] = {"strategy": strategy}
        if self.tiers is not None:
            route["tiers"] = [list(t) for t in self.tiers]
        else:
            route["destinations"] = names
        if strategy in ("thompson", "ucb", "greedy"):
            route["bandit"] = {**(self.bandit or {}),
                               **({"discount": float(discount)} if discount else {})}
        return policy_yaml(self.name, "work", route, names, self.breaker)

    @property
    def duration_s(self) -> float:
        return self.signals / self.rate


Scenario = ConsensusScenario | RoutingScenario

_DURATION = 600.0


def _consensus_two_faulty() -> ConsensusScenario:
    """Five sources, two of them faulty in turn with every fault kind (never more than two
    faulty at once, so honest sources are a majority)."""
    a = (Fault("bias", 60, 150, 6.0), Fault("stuck", 180, 270, 4.0),
         Fault("drift", 300, 390, 0.05), Fault("noise", 420, 510, 8.0),
         Fault("stale", 530, 590))
    b = (Fault("spikes", 60, 150, 10.0), Fault("flapping", 180, 270, 10.0),
         Fault("stale", 300, 390), Fault("bias", 420, 510, -3.0),
         Fault("drift", 530, 590, -0.1))
    sources = (SourceSpec("src-1"), SourceSpec("src-2"), SourceSpec("src-3"),
               SourceSpec("src-4", faults=a), SourceSpec("src-5", faults=b))
    return ConsensusScenario(
        "consensus", "Consensus, 5 sources, 2 faulty (every fault kind in turn)", sources,
        _DURATION)


def _breaker() -> RoutingScenario:
    """first_healthy over three tiers: the primary dies for two minutes and recovers, the
    secondary degrades slowly, the fallback flaps."""
    dests = (
        Destination("primary", Schedule("dies", p=0.995, start=120, end=240)),
        Destination("secondary", Schedule("degrades", p=0.99, p_end=0.7, start=0, end=600)),
        Destination("fallback", Schedule("flaps", p=0.99, start=300, end=420, period_s=10)),
    )
    return RoutingScenario(
        "breaker", "Breakers: first_healthy over 3 tiers, primary dies 120-240 s", dests,
        ("first_healthy",), signals=12_000, rate=20.0,
        tiers=(("primary",), ("secondary",), ("fallback",)))


def _bandit() -> RoutingScenario:
    arms = tuple(Destination(n, Schedule("steady", p=p)) for n, p in
                 (("arm-90", 0.9), ("arm-80", 0.8), ("arm-50", 0.5)))
    return RoutingScenario(
        "bandit", "Bandits over Bernoulli arms 0.9 / 0.8 / 0.5, 10k decisions", arms,
        ("thompson", "ucb", "greedy", "thompson@1"), signals=10_000, rate=50.0)


def _bandit_flip() -> RoutingScenario:
    """The issue's non-stationary pair: the better arm of 0.9 / 0.5 flips half way."""
    arms = (Destination("arm-a", Schedule("switch", p=0.9, p_end=0.5, start=100.0)),
            Destination("arm-b", Schedule("switch", p=0.5, p_end=0.9, start=100.0)))
    return RoutingScenario(
        "bandit-flip", "Bandits, 0.9 / 0.5 pair that flips after 5k of 10k decisions", arms,
        ("thompson", "ucb", "greedy", "thompson@1"), signals=10_000, rate=50.0,
        change_at=100.0)


def _bandit_breaker() -> RoutingScenario:
    """The issue's failing combination: arms that fail as a matter of course behind breakers
    that open after 3 consecutive failures."""
    arms = (Destination("arm-90", Schedule("steady", p=0.9)),
            Destination("arm-50", Schedule("steady", p=0.5)))
    return RoutingScenario(
        "bandit-breaker", "Bandit + breakers: 0.9 / 0.5 arms, breaker at 3 consecutive failures",
        arms, ("thompson",), signals=3_000, rate=20.0, breaker={"failure_threshold": 3})


def _bandit_dead_arm() -> RoutingScenario:
    """A bandit route's breakers must still eject an arm that dies."""
    arms = (Destination("arm-90", Schedule("dies", p=0.9, start=60, end=120)),
            Destination("arm-80", Schedule("steady", p=0.8)))
    return RoutingScenario(
        "bandit-dead-arm", "Bandit + breakers: the 0.9 arm of 0.9 / 0.8 dies 60-120 s", arms,
        ("thompson",), signals=3_600, rate=20.0)


def _bandit_breaker_poor() -> RoutingScenario:
    arms = (Destination("arm-60", Schedule("steady", p=0.6)),
            Destination("arm-50", Schedule("steady", p=0.5)))
    return RoutingScenario(
        "bandit-breaker-poor",
        "Bandit + breakers: 0.6 / 0.5 arms, breaker at 3 consecutive failures",
        arms, ("thompson",), signals=3_000, rate=20.0, breaker={"failure_threshold": 3})


SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (_consensus_two_faulty(), _breaker(), _bandit(), _bandit_flip(),
                        _bandit_breaker(), _bandit_breaker_poor(), _bandit_dead_arm())
}
