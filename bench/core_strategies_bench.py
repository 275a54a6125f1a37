"""Throughput of the pure selection strategies and consensus (not a test).

Setup: 1,000 sources/destinations, 10 % of them unavailable (open breakers), 100 routes of three
tiers (2 + 2 + 1 destinations), bandit arms and trust for every destination, and 100 consensus
rounds of 5 fresh observations each. Each strategy is called 100,000 times over pre-built inputs;
the best of ``--repeat`` runs is printed as selections per second.

    python bench/core_strategies_bench.py [--calls 100000] [--repeat 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence

from router_stream.core.strategies import (
    BanditArm,
    BanditConfig,
    ConsensusConfig,
    Observation,
    consensus,
    fanout,
    first_healthy,
    greedy,
    least_loaded,
    thompson,
    ucb,
    weighted,
)

SOURCES = 1_000


def _best_rate(run: Callable[[], None], calls: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return calls / best


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    setup = random.Random(args.seed)
    rng = random.Random(args.seed + 1)

    ids = [f"src-{i}" for i in range(SOURCES)]
    unavailable = frozenset(setup.sample(ids, SOURCES // 10))
    routes = [[setup.sample(ids, 2), setup.sample(ids, 2), [setup.choice(ids)]] for _ in range(100)]
    calls = [routes[setup.randrange(len(routes))] for _ in range(args.calls)]
    trust = {d: setup.random() for d in ids}
    arms = {d: BanditArm(1 + setup.random() * 20, 1 + setup.random() * 20) for d in ids}
    in_flight = {d: float(setup.randrange(50)) for d in ids}
    capacity = {d: float(setup.randrange(10, 100)) for d in ids}
    bandit = BanditConfig()
    now = 10_000.0
    rounds = [
        [Observation(s, 100.0 + setup.gauss(0, 1), now - setup.random() * 5)
         for s in setup.sample(ids, 5)]
        for _ in range(100)
    ]
    for r in rounds[::10]:  # some rounds carry a wild outlier
        r[0] = r[0]._replace(value=1e6)
    observations = [rounds[setup.randrange(len(rounds))] for _ in range(args.calls)]
    cfg = ConsensusConfig()

    def run_first_healthy() -> None:
        for tiers in calls:
            first_healthy(tiers, unavailable)

    def run_fanout() -> None:
        for tiers in calls:
            fanout(tiers, unavailable)

    def run_weighted() -> None:
        for tiers in calls:
            weighted(tiers, unavailable, trust, rng)

    def run_least_loaded() -> None:
        for tiers in calls:
            least_loaded(tiers, unavailable, in_flight, capacity)

    def run_thompson() -> None:
        for tiers in calls:
            thompson(tiers, unavailable, arms, rng, bandit)

    def run_ucb() -> None:
        for tiers in calls:
            ucb(tiers, unavailable, arms, bandit)

    def run_greedy() -> None:
        for tiers in calls:
            greedy(tiers, unavailable, arms, rng, bandit)

    def run_consensus() -> None:
        for round_ in observations:
            consensus(round_, now, cfg, trust, unavailable)

    cases: dict[str, Callable[[], None]] = {
        "first_healthy": run_first_healthy,
        "fanout": run_fanout,
        "weighted": run_weighted,
        "least_loaded": run_least_loaded,
        "thompson": run_thompson,
        "ucb": run_ucb,
        "greedy": run_greedy,
        "consensus(5 sources)": run_consensus,
    }
    print(f"{args.calls:,} calls, {SOURCES:,} sources, best of {args.repeat}")
    for name, run in cases.items():
        print(f"{name:<22} {_best_rate(run, args.calls, args.repeat):>14,.0f} selections/s")


if __name__ == "__main__":
    main()
