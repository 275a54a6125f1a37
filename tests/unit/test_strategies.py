"""Selection strategies: each one's rule, determinism under a seed, and shared invariants
(only available destinations of the first usable tier, confidence in [0, 1], None iff nothing is
available)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_stream.core.strategies import (
    SELECTION_STRATEGIES,
    STRATEGY_NAMES,
    BanditArm,
    BanditConfig,
    LoadCounter,
    Selection,
    SelectionContext,
    fanout,
    first_healthy,
    get_strategy,
    greedy,
    least_loaded,
    ucb,
    weighted,
)
from router_stream.core.strategies.bandits import new_arm, update

TIERS = [["p1", "p2"], ["s1"], ["f1", "f2"]]


# --- first_healthy -------------------------------------------------------------------------------

def test_first_healthy_prefers_the_primary() -> None:
    assert first_healthy(TIERS, frozenset()) == Selection(("p1",), 0, 1.0)


def test_first_healthy_skips_unavailable_within_and_across_tiers() -> None:
    assert first_healthy(TIERS, {"p1"}) == Selection(("p2",), 0, 1.0)
    assert first_healthy(TIERS, {"p1", "p2"}) == Selection(("s1",), 1, 0.5)
    assert first_healthy(TIERS, {"p1", "p2", "s1", "f1"}) == Selection(("f2",), 2, 1 / 3)


def test_first_healthy_returns_none_when_everything_is_unavailable() -> None:
    assert first_healthy(TIERS, {"p1", "p2", "s1", "f1", "f2"}) is None
    assert first_healthy([], frozenset()) is None
    assert first_healthy([[], []], frozenset()) is None


# --- fanout --------------------------------------------------------------------------------------

def test_fanout_sends_to_every_available_destination_of_the_first_usable_tier() -> None:
    assert fanout(TIERS, frozenset()) == Selection(("p1", "p2"), 0, 1.0)
    assert fanout(TIERS, {"p2"}) == Selection(("p1",), 0, 0.5)
    assert fanout(TIERS, {"p1", "p2", "s1"}) == Selection(("f1", "f2"), 2, 1 / 3)
    assert fanout(TIERS, {"p1", "p2", "s1", "f1", "f2"}) is None


# --- weighted ------------------------------------------------------------------------------------

def test_weighted_follows_trust() -> None:
    rng = random.Random(7)
    trust = {"a": 0.6, "b": 0.3, "c": 0.1}
    counts: Counter[str] = Counter()
    for _ in range(20_000):
        selection = weighted([["a", "b", "c"]], frozenset(), trust, rng)
        assert selection is not None
        counts[selection.destinations[0]] += 1
    assert counts["a"] / 20_000 == pytest.approx(0.6, abs=0.02)
    assert counts["b"] / 20_000 == pytest.approx(0.3, abs=0.02)
    assert counts["c"] / 20_000 == pytest.approx(0.1, abs=0.02)


def test_weighted_with_zero_trust_everywhere_is_uniform_and_confidence_is_trust() -> None:
    rng = random.Random(1)
    picks = Counter(weighted([["a", "b"]], frozenset(), {"a": 0.0, "b": 0.0}, rng)
                    for _ in range(2000))
    assert {s.destinations[0] for s in picks if s} == {"a", "b"}
    selection = weighted([["a", "b"]], {"a"}, {"b": 0.8}, rng)
    assert selection == Selection(("b",), 0, 0.8)


def test_weighted_is_deterministic_under_a_seed() -> None:
    trust = {"a": 0.5, "b": 0.5, "c": 0.2}
    runs = [[weighted([["a", "b", "c"]], frozenset(), trust, rng) for _ in range(200)]
            for rng in (random.Random(3), random.Random(3))]
    assert runs[0] == runs[1]


# --- least_loaded --------------------------------------------------------------------------------

def test_least_loaded_uses_in_flight_relative_to_capacity() -> None:
    tiers = [["a", "b", "c"]]
    in_flight = {"a": 5.0, "b": 8.0, "c": 1.0}
    capacity = {"a": 10.0, "b": 40.0, "c": 1.0}
    assert least_loaded(tiers, frozenset(), in_flight, capacity) == Selection(("b",), 0, 0.8)
    assert least_loaded(tiers, {"b"}, in_flight, capacity) == Selection(("a",), 0, 0.5)


def test_least_loaded_ties_go_to_tier_order_and_zero_capacity_is_last() -> None:
    assert least_loaded([["a", "b"]], frozenset(), {}, {}) == Selection(("a",), 0, 1.0)
    selection = least_loaded([["a", "b"]], frozenset(), {"b": 3.0}, {"a": 0.0, "b": 1.0})
    assert selection == Selection(("b",), 0, 0.0)


def test_load_counter_never_goes_negative() -> None:
    counter = LoadCounter().on_routed(3).on_outcome(1)
    assert counter.in_flight == 2
    assert counter.on_outcome(10).in_flight == 0
    assert LoadCounter.from_dict(counter.to_dict()) == counter


# --- bandits -------------------------------------------------------------------------------------

def test_update_is_a_fractional_bernoulli_update() -> None:
    arm = update(update(BanditArm(), 1.0), 0.25)
    assert arm == BanditArm(alpha=2.25, beta=1.75, pulls=2, reward_sum=1.25)
    assert update(arm, 5.0).alpha == 3.25  # clamped to 1
    assert update(arm, float("nan")) is arm
    assert BanditArm.from_dict(arm.to_dict()) == arm


def _run_bandit(name: str, seed: int, rounds: int) -> list[str]:
    """A seeded Bernoulli environment: arm 'c' pays most often."""
    payout = {"a": 0.2, "b": 0.5, "c": 0.8}
    env = random.Random(seed + 1000)
    ctx = SelectionContext(rng=random.Random(seed), bandit=BanditConfig(epsilon=0.1))
    arms = {d: new_arm(ctx.bandit) for d in payout}
    ctx.arms = arms
    choices = []
    for _ in range(rounds):
        selection = get_strategy(name)([list(payout)], ctx)
        assert selection is not None and 0.0 <= selection.confidence <= 1.0
        chosen = selection.destinations[0]
        arms[chosen] = update(arms[chosen], 1.0 if env.random() < payout[chosen] else 0.0)
        choices.append(chosen)
    return choices


@pytest.mark.parametrize("name", ["thompson", "ucb", "greedy"])
def test_bandits_converge_to_the_best_arm(name: str) -> None:
    late = Counter(_run_bandit(name, seed=42, rounds=3000)[-1000:])
    assert late["c"] / 1000 > 0.8


@pytest.mark.parametrize("name", ["thompson", "ucb", "greedy"])
def test_bandits_are_deterministic_under_a_seed(name: str) -> None:
    assert _run_bandit(name, seed=5, rounds=300) == _run_bandit(name, seed=5, rounds=300)


def test_thompson_differs_across_seeds() -> None:
    assert _run_bandit("thompson", seed=1, rounds=200) != _run_bandit("thompson", 2, 200)


def test_ucb_tries_every_untried_arm_first() -> None:
    arms = {"a": BanditArm(5.0, 1.0, 4, 4.0)}
    assert ucb([["a", "b", "c"]], frozenset(), arms, BanditConfig()) == Selection(("b",), 0, 0.5)


def test_greedy_without_exploration_takes_the_best_mean() -> None:
    arms = {"a": BanditArm(2.0, 8.0), "b": BanditArm(9.0, 1.0)}
    selection = greedy([["a", "b"]], frozenset(), arms, random.Random(0), BanditConfig(epsilon=0))
    assert selection == Selection(("b",), 0, 0.9)


def test_bandit_config_is_validated() -> None:
    with pytest.raises(ValueError):
        BanditConfig(epsilon=1.5)
    with pytest.raises(ValueError):
        BanditConfig(prior_alpha=0.0)


# --- registry and shared invariants --------------------------------------------------------------

def test_registry_names_every_strategy() -> None:
    expected = {"first_healthy", "fanout", "weighted", "least_loaded", "thompson", "ucb",
                "greedy", "consensus"}
    assert expected == STRATEGY_NAMES
    with pytest.raises(KeyError, match="unknown selection strategy 'nope'"):
        get_strategy("nope")


names = [f"d{i}" for i in range(8)]
tiers_st = st.lists(st.lists(st.sampled_from(names), max_size=4, unique=True), max_size=4)
unit = st.floats(-1.0, 2.0)


@settings(max_examples=300)
@given(
    st.sampled_from(sorted(SELECTION_STRATEGIES)),
    tiers_st,
    st.frozensets(st.sampled_from(names)),
    st.dictionaries(st.sampled_from(names), unit),
    st.dictionaries(st.sampled_from(names), st.floats(0.0, 100.0)),
    st.dictionaries(st.sampled_from(names), st.floats(0.0, 10.0)),
    st.dictionaries(st.sampled_from(names), st.tuples(st.floats(0.1, 50), st.floats(0.1, 50),
                                                      st.integers(0, 50))),
    st.integers(0, 2**32),
)
def test_every_strategy_picks_only_available_destinations_of_the_first_usable_tier(
    name: str,
    tiers: list[list[str]],
    unavailable: frozenset[str],
    trust: dict[str, float],
    in_flight: dict[str, float],
    capacity: dict[str, float],
    raw_arms: dict[str, tuple[float, float, int]],
    seed: int,
) -> None:
    arms = {d: BanditArm(a, b, n, min(float(n), a)) for d, (a, b, n) in raw_arms.items()}
    ctx = SelectionContext(rng=random.Random(seed), unavailable=unavailable, trust=trust,
                           arms=arms, in_flight=in_flight, capacity=capacity)
    selection = SELECTION_STRATEGIES[name](tiers, ctx)
    usable = [(i, [d for d in tier if d not in unavailable]) for i, tier in enumerate(tiers)]
    usable = [(i, available) for i, available in usable if available]
    if not usable:
        assert selection is None
        return
    assert selection is not None
    tier, available = usable[0]
    assert selection.tier == tier
    assert selection.destinations and set(selection.destinations) <= set(available)
    assert 0.0 <= selection.confidence <= 1.0
