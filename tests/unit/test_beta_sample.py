"""Thompson sampling's Beta draws (``beta_sample``): the distribution for every regime of its
parameters (uniform, Cheng's BB, the library fallback), checked by moments and by deciles
against ``random.betavariate``'s draws."""

from __future__ import annotations

import math
import random

import pytest

from router_stream.core.strategies.bandits import beta_sample

N = 20_000


def _draws(a: float, b: float, seed: int = 3) -> list[float]:
    rng = random.Random(seed)
    return [beta_sample(rng, a, b) for _ in range(N)]


@pytest.mark.parametrize(("a", "b"), [
    (1.0, 1.0),  # uniform
    (1.5, 1.2), (2.0, 30.0), (30.0, 2.0), (5.3, 5.3), (120.5, 3.2), (500.0, 700.0),  # BB
    (1.0, 5.0), (0.5, 3.0),  # the library's betavariate
])
def test_the_draws_have_the_beta_distributions_mean_and_variance(a, b):
    xs = _draws(a, b)
    mean = a / (a + b)
    var = a * b / ((a + b) ** 2 * (a + b + 1))
    got_mean = sum(xs) / N
    got_var = sum((x - got_mean) ** 2 for x in xs) / (N - 1)
    assert all(0.0 <= x <= 1.0 for x in xs)
    assert abs(got_mean - mean) < 5 * math.sqrt(var / N)
    assert got_var == pytest.approx(var, rel=0.06)


@pytest.mark.parametrize(("a", "b"), [(1.2, 1.3), (2.5, 7.0), (9.0, 2.0)])
def test_the_deciles_match_the_librarys_betavariate(a, b):
    ours = sorted(_draws(a, b))
    rng = random.Random(4)
    theirs = sorted(rng.betavariate(a, b) for _ in range(N))
    for k in range(1, 10):
        i = k * N // 10
        assert ours[i] == pytest.approx(theirs[i], abs=0.015), f"decile {k}"


def test_a_prior_arm_costs_one_uniform_draw():
    rng, twin = random.Random(9), random.Random(9)
    assert [beta_sample(rng, 1.0, 1.0) for _ in range(5)] == [twin.random() for _ in range(5)]


def test_extreme_parameters_stay_in_range():
    rng = random.Random(5)
    for a, b in [(1.0000001, 50_000.0), (50_000.0, 1.0000001), (1e6, 1e6), (1.0001, 1.0001)]:
        xs = [beta_sample(rng, a, b) for _ in range(2_000)]
        assert all(0.0 <= x <= 1.0 for x in xs)
        assert sum(xs) / len(xs) == pytest.approx(a / (a + b), abs=0.02)
