"""Bandits over destinations: ``thompson`` (Beta posteriors), ``ucb`` (UCB1), ``greedy``
(epsilon-greedy), learning from ``outcomes`` rewards in [0, 1].

Each destination is an arm with Beta(alpha, beta) posterior and plain counters; a reward ``r``
adds ``r`` to alpha and ``1 − r`` to beta (the fractional Bernoulli update), so binary ok/failed
rewards and graded rewards share one model. All randomness comes from the caller's seeded
``random.Random``, so a decision sequence is reproducible. Candidates are the first usable tier.
Confidence is the chosen arm's posterior mean.
"""

from __future__ import annotations

import math
import random
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

from router_stream.core.strategies.base import Selection, Tiers, clamp01, first_usable_tier


@dataclass(frozen=True, slots=True)
class BanditConfig:
    """``epsilon``: exploration share of greedy; ``ucb_c``: exploration constant of UCB1
    (``mean + sqrt(ucb_c·ln N / n)``, 2 is the textbook value); ``prior_alpha``/``prior_beta``:
    the Beta prior of an arm never pulled."""

    epsilon: float = 0.1
    ucb_c: float = 2.0
    prior_alpha: float = 1.0
    prior_beta: float = 1.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.epsilon <= 1.0):
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if not (math.isfinite(self.ucb_c) and self.ucb_c >= 0.0):
            raise ValueError(f"ucb_c must be a finite number >= 0, got {self.ucb_c}")
        if not (self.prior_alpha > 0.0 and self.prior_beta > 0.0):
            raise ValueError("prior_alpha and prior_beta must be > 0")


@dataclass(frozen=True, slots=True)
class BanditArm:
    """Statistics of one destination."""

    alpha: float = 1.0
    beta: float = 1.0
    pulls: int = 0
    reward_sum: float = 0.0

    @property
    def mean(self) -> float:
        """Posterior mean reward."""
        return self.alpha / (self.alpha + self.beta)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "pulls": self.pulls,
            "reward_sum": self.reward_sum,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BanditArm:
        return cls(
            alpha=float(data.get("alpha", 1.0)),
            beta=float(data.get("beta", 1.0)),
            pulls=int(data.get("pulls", 0)),
            reward_sum=float(data.get("reward_sum", 0.0)),
        )


def new_arm(cfg: BanditConfig) -> BanditArm:
    return BanditArm(alpha=cfg.prior_alpha, beta=cfg.prior_beta)


def update(arm: BanditArm, reward: float) -> BanditArm:
    """Fold one reward in. Rewards are clamped to [0, 1]; a NaN reward is ignored."""
    if math.isnan(reward):
        return arm
    r = clamp01(reward)
    return BanditArm(arm.alpha + r, arm.beta + (1.0 - r), arm.pulls + 1, arm.reward_sum + r)


def thompson(
    tiers: Tiers,
    unavailable: Container[str],
    arms: Mapping[str, BanditArm],
    rng: random.Random,
    cfg: BanditConfig,
) -> Selection | None:
    """Sample every candidate's posterior once; the highest sample wins."""
    usable = first_usable_tier(tiers, unavailable)
    if usable is None:
        return None
    index, candidates = usable
    betavariate = rng.betavariate
    best_arm = _prior = BanditArm(cfg.prior_alpha, cfg.prior_beta)
    best = candidates[0]
    best_sample = -1.0
    for destination in candidates:
        arm = arms.get(destination, _prior)
        sample = betavariate(arm.alpha, arm.beta)
        if sample > best_sample:
            best, best_sample, best_arm = destination, sample, arm
    return Selection((best,), index, best_arm.mean)


def ucb(
    tiers: Tiers,
    unavailable: Container[str],
    arms: Mapping[str, BanditArm],
    cfg: BanditConfig,
) -> Selection | None:
    """UCB1: an arm never pulled is tried first (tier order); otherwise the highest
    ``empirical mean + sqrt(ucb_c·ln(total pulls) / pulls)``. Deterministic."""
    usable = first_usable_tier(tiers, unavailable)
    if usable is None:
        return None
    index, candidates = usable
    prior = BanditArm(cfg.prior_alpha, cfg.prior_beta)
    chosen = [(d, arms.get(d, prior)) for d in candidates]
    for destination, arm in chosen:
        if arm.pulls == 0:
            return Selection((destination,), index, arm.mean)
    log_total = math.log(sum(arm.pulls for _, arm in chosen))
    best, best_arm, best_bound = chosen[0][0], chosen[0][1], -math.inf
    for destination, arm in chosen:
        bound = arm.reward_sum / arm.pulls + math.sqrt(cfg.ucb_c * log_total / arm.pulls)
        if bound > best_bound:
            best, best_arm, best_bound = destination, arm, bound
    return Selection((best,), index, best_arm.mean)


def greedy(
    tiers: Tiers,
    unavailable: Container[str],
    arms: Mapping[str, BanditArm],
    rng: random.Random,
    cfg: BanditConfig,
) -> Selection | None:
    """Epsilon-greedy: with probability ``epsilon`` a uniform random candidate, otherwise the
    highest posterior mean (ties go to tier order)."""
    usable = first_usable_tier(tiers, unavailable)
    if usable is None:
        return None
    index, candidates = usable
    prior = BanditArm(cfg.prior_alpha, cfg.prior_beta)
    if rng.random() < cfg.epsilon:
        destination = candidates[rng.randrange(len(candidates))]
        return Selection((destination,), index, arms.get(destination, prior).mean)
    best, best_mean = candidates[0], -1.0
    for destination in candidates:
        mean = arms.get(destination, prior).mean
        if mean > best_mean:
            best, best_mean = destination, mean
    return Selection((best,), index, best_mean)
