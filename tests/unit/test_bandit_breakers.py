"""Bandits on non-stationary arms (``discount``) and the breakers of bandit routes.

A bandit route's arms fail as a matter of course; its breakers must eject a dead arm, not every
arm that is merely worse than perfect (issue 14). The simulator measures both at scale
(tests/unit/test_sim_goals.py); these pin the mechanisms.
"""

from __future__ import annotations

import random

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from router_stream.core.compiled import BANDIT_DEAD_ERROR_RATE, load_compiled
from router_stream.core.engine import RouterEngine
from router_stream.core.models import Outcome
from router_stream.core.strategies import BanditConfig, SelectionContext, get_strategy
from router_stream.core.strategies.bandits import BanditArm, new_arm, update
from router_stream.errors import PolicyError

NOW = 1_800_000_000.0


def test_discount_keeps_the_prior_plus_a_geometric_share_of_the_evidence() -> None:
    cfg = BanditConfig(discount=0.5)
    arm = update(update(new_arm(cfg), 1.0, cfg), 0.0, cfg)
    # (1 + 0.5·0 + 1) then (1 + 0.5·1 + 0): alpha; beta (1 + 0) then (1 + 0.5·0 + 1)
    assert arm == BanditArm(alpha=1.5, beta=2.0, pulls=2, reward_sum=1.0)
    stationary = update(update(new_arm(BanditConfig()), 1.0), 0.0)
    assert (stationary.alpha, stationary.beta) == (2.0, 2.0)


def test_discounted_evidence_is_bounded_by_one_over_one_minus_discount() -> None:
    cfg = BanditConfig(discount=0.99)
    arm = new_arm(cfg)
    for _ in range(5000):
        arm = update(arm, 1.0, cfg)
    assert arm.alpha - cfg.prior_alpha == pytest.approx(100.0, rel=0.01)
    assert arm.pulls == 5000


@pytest.mark.parametrize("discount", [0.0, -0.1, 1.01, float("nan")])
def test_discount_outside_0_1_is_refused(discount: float) -> None:
    with pytest.raises(ValueError, match="discount"):
        BanditConfig(discount=discount)


@pytest.mark.parametrize("name", ["thompson", "ucb", "greedy"])
def test_a_discounted_bandit_follows_the_arm_that_became_best(name: str) -> None:
    cfg = BanditConfig(discount=0.99)
    env = random.Random(7)
    ctx = SelectionContext(rng=random.Random(3), bandit=cfg)
    arms = {d: new_arm(cfg) for d in ("a", "b")}
    ctx.arms = arms
    late = []
    for i in range(4000):
        payout = {"a": 0.9, "b": 0.5} if i < 2000 else {"a": 0.5, "b": 0.9}
        selection = get_strategy(name)([["a", "b"]], ctx)
        assert selection is not None
        chosen = selection.destinations[0]
        arms[chosen] = update(arms[chosen], 1.0 if env.random() < payout[chosen] else 0.0, cfg)
        if i >= 3000:
            late.append(chosen)
    assert late.count("b") / len(late) > 0.8


def _policy(route: dict, breaker: dict | None = None, extra_routes: dict | None = None) -> str:
    return yaml.safe_dump({
        "breaker": {"failure_threshold": 3, **(breaker or {})},
        "destinations": {d: {} for d in ("a", "b", "c")},
        "classify": [{"name": "all", "when": {"field": "sender_id", "exists": True},
                      "kind": "work"}],
        "routes": {"work": route, **(extra_routes or {})},
    })


def test_a_bandit_routes_destinations_open_on_error_rate_not_on_a_run_of_failures() -> None:
    compiled = load_compiled(_policy({"strategy": "thompson", "destinations": ["a", "b"]}))
    bandit = compiled.breaker_for("a")
    assert bandit.error_rate_threshold == BANDIT_DEAD_ERROR_RATE
    assert bandit.failure_threshold == compiled.breaker.min_volume
    assert compiled.breaker_for("c") == compiled.breaker  # named by no route
    engine = RouterEngine(compiled, seed=1)
    moves = []
    for i in range(40):  # 10 failures in a row, then a 50 % arm: nothing opens
        ok = i >= 10 and i % 2 == 0
        moves += engine.apply_outcome(Outcome(signal_id=f"s{i}", destination="a", ok=ok,
                                              ts=NOW + i), NOW + i)
    assert moves == []
    for i in range(40, 60):  # dead: opens within min_volume failures
        moves += engine.apply_outcome(Outcome(signal_id=f"s{i}", destination="a", ok=False,
                                              ts=NOW + i), NOW + i)
    assert [m.to_state.value for m in moves] == ["open"]


def test_a_destination_shared_with_a_non_bandit_route_keeps_the_policy_breaker() -> None:
    compiled = load_compiled(_policy(
        {"strategy": "thompson", "destinations": ["a", "b"]},
        extra_routes={"alert": {"strategy": "first_healthy", "destinations": ["b", "c"]}}))
    assert compiled.breaker_for("a").error_rate_threshold == BANDIT_DEAD_ERROR_RATE
    assert compiled.breaker_for("b") == compiled.breaker


def test_a_routes_own_breaker_applies_to_its_destinations() -> None:
    compiled = load_compiled(_policy({"strategy": "thompson", "destinations": ["a", "b"],
                                      "breaker": {"error_rate_threshold": 0.8,
                                                  "cooldown_s": 5}}))
    cfg = compiled.breaker_for("b")
    assert (cfg.error_rate_threshold, cfg.cooldown_s, cfg.failure_threshold) == (0.8, 5.0, 3)


def test_two_routes_cannot_give_one_destination_two_breakers() -> None:
    with pytest.raises(PolicyError, match="already has the breaker of route"):
        load_compiled(_policy(
            {"strategy": "thompson", "destinations": ["a", "b"],
             "breaker": {"failure_threshold": 9}},
            extra_routes={"alert": {"strategy": "first_healthy", "destinations": ["b"],
                                    "breaker": {"failure_threshold": 2}}}))


def test_a_routes_breaker_is_checked_once_merged() -> None:
    with pytest.raises(PolicyError, match="max_cooldown_s"):
        load_compiled(_policy({"strategy": "thompson", "destinations": ["a"],
                               "breaker": {"cooldown_s": 900}}))


def test_discount_is_a_policy_parameter() -> None:
    compiled = load_compiled(_policy({"strategy": "thompson", "destinations": ["a"],
                                      "bandit": {"discount": 0.99}}))
    assert compiled.routes["work"].bandit.discount == 0.99
    with pytest.raises(PolicyError, match="discount"):
        load_compiled(_policy({"strategy": "thompson", "destinations": ["a"],
                               "bandit": {"discount": 1.5}}))


@given(rewards=st.lists(st.floats(0.0, 1.0), max_size=300),
       discount=st.floats(0.5, 1.0), prior=st.floats(0.1, 10.0))
@settings(max_examples=200, deadline=None)
def test_a_discounted_posterior_keeps_its_prior_and_bounded_evidence(
        rewards: list[float], discount: float, prior: float) -> None:
    cfg = BanditConfig(prior_alpha=prior, prior_beta=prior, discount=discount)
    arm = new_arm(cfg)
    for r in rewards:
        arm = update(arm, r, cfg)
    evidence = arm.alpha + arm.beta - 2 * prior
    assert arm.alpha >= prior - 1e-9 and arm.beta >= prior - 1e-9
    assert evidence <= (1 / (1 - discount) if discount < 1 else len(rewards)) + 1e-6
    assert 0.0 <= arm.mean <= 1.0 and arm.pulls == len(rewards)
