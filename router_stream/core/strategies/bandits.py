"""Bandits over destinations: ``thompson`` (Beta posteriors), ``ucb`` (UCB1), ``greedy``
(epsilon-greedy), learning from ``outcomes`` rewards in [0, 1].

Each destination is an arm with Beta(alpha, beta) posterior and plain counters; a reward ``r``
adds ``r`` to alpha and ``1 − r`` to beta (the fractional Bernoulli update), so binary ok/failed
rewards and graded rewards share one model. With ``discount`` γ < 1 an arm's evidence is
multiplied by γ before each of its rewards is added (``alpha ← prior + γ·(alpha − prior) + r``),
so it holds about its last ``1/(1 − γ)`` outcomes and follows a destination whose success changes
(discounted Thompson sampling); γ = 1 is the stationary model. All randomness comes from the
caller's seeded ``random.Random``, so a decision sequence is reproducible. Candidates are the first
usable tier. Confidence is the chosen arm's posterior mean.
"""

from __future__ import annotations

import math
import random
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

from router_stream.core.policy.sections import BanditParams
from router_stream.core.strategies.base import Selection, Tiers, clamp01, first_usable_tier

BanditConfig = BanditParams
"""A bandit route's parameters: the policy's ``bandit`` section."""


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


_STATIONARY = BanditConfig()


def update(arm: BanditArm, reward: float, cfg: BanditConfig = _STATIONARY) -> BanditArm:
    """Fold one reward in, after discounting the arm's evidence by ``cfg.discount``. Rewards
    are clamped to [0, 1]; a NaN reward is ignored. ``pulls`` and ``reward_sum`` stay plain
    totals."""
    if math.isnan(reward):
        return arm
    r = clamp01(reward)
    alpha, beta = arm.alpha, arm.beta
    g = cfg.discount
    if g < 1.0:
        alpha = cfg.prior_alpha + g * (alpha - cfg.prior_alpha)
        beta = cfg.prior_beta + g * (beta - cfg.prior_beta)
    return BanditArm(alpha + r, beta + (1.0 - r), arm.pulls + 1, arm.reward_sum + r)


def _evidence(arm: BanditArm, cfg: BanditConfig) -> tuple[float, float]:
    """UCB's (pulls, reward sum): the plain totals, or with discounting the discounted ones
    the posterior holds."""
    if cfg.discount >= 1.0:
        return float(arm.pulls), arm.reward_sum
    wins = max(0.0, arm.alpha - cfg.prior_alpha)
    return wins + max(0.0, arm.beta - cfg.prior_beta), wins


_LOG4 = math.log(4.0)
_BB_EARLY = 1.0 + math.log(5.0)
MAX_SAMPLED_EVIDENCE = 1e12
"""Above this ``a + b`` a Beta draw is its mean: the draw's standard deviation is below 5e-7,
while the algorithms below lose their precision there and, near the float range, loop forever or
divide by zero. Each outcome adds 1 to an arm's ``a + b``: 10**12 outcomes, or a restored
state, get here."""


def beta_sample(rng: random.Random, a0: float, b0: float) -> float:
    """One draw from Beta(a0, b0). Beta(1, 1) is Uniform(0, 1): one ``rng.random()``. With both
    parameters above 1 (an arm with evidence on both sides), Cheng's algorithm BB (Cheng 1978,
    "Generating beta variates with nonintegral shape parameters", as R's ``rbeta``): two
    uniforms per try, accepted at the first try most of the time, where ``rng.betavariate``
    draws two gamma variates. Other parameters: ``rng.betavariate``; past
    :data:`MAX_SAMPLED_EVIDENCE`, the mean."""
    if a0 == 1.0 and b0 == 1.0:
        return rng.random()
    if not a0 + b0 <= MAX_SAMPLED_EVIDENCE:  # a NaN too: no draw below would accept it
        return 1.0 / (1.0 + b0 / a0)  # a0 / (a0 + b0), without a0 + b0 overflowing
    if a0 <= 1.0 or b0 <= 1.0:
        return rng.betavariate(a0, b0)
    a, b = (a0, b0) if a0 <= b0 else (b0, a0)
    total = a + b
    scale = math.sqrt((total - 2.0) / (2.0 * a * b - total))
    shift = a + 1.0 / scale
    random_ = rng.random
    while True:
        u1 = random_()
        if not 0.0 < u1 < 1.0:  # log(u1 / (1 - u1)) needs 0 < u1 < 1
            continue
        u2 = random_()
        # |log(u1 / (1 - u1))| < 37 for doubles and scale < 1 (a, b > 1): exp cannot overflow
        v = scale * math.log(u1 / (1.0 - u1))
        w = a * math.exp(v)
        z = u1 * u1 * u2
        r = shift * v - _LOG4
        s = a + r - w
        if s + _BB_EARLY >= 5.0 * z or z <= 0.0:  # z = 0: log(z) = -inf < s, accepted
            break
        t = math.log(z)
        if s > t or r + total * math.log(total / (b + w)) >= t:
            break
    return w / (b + w) if a == a0 else b / (b + w)


def thompson(tiers: Tiers, unavailable: Container[str], arms: Mapping[str, BanditArm],
             rng: random.Random, cfg: BanditConfig) -> Selection | None:
    """Sample every candidate's posterior once (:func:`beta_sample`); the highest sample
    wins."""
    usable = first_usable_tier(tiers, unavailable)
    if usable is None:
        return None
    index, candidates = usable
    best_arm = _prior = BanditArm(cfg.prior_alpha, cfg.prior_beta)
    best = candidates[0]
    best_sample = -1.0
    for destination in candidates:
        arm = arms.get(destination, _prior)
        sample = beta_sample(rng, arm.alpha, arm.beta)
        if sample > best_sample:
            best, best_sample, best_arm = destination, sample, arm
    return Selection((best,), index, best_arm.mean)


def ucb(tiers: Tiers, unavailable: Container[str], arms: Mapping[str, BanditArm],
        cfg: BanditConfig) -> Selection | None:
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
    evidence = [_evidence(arm, cfg) for _, arm in chosen]
    log_total = math.log(max(1.0, sum(n for n, _ in evidence)))
    best, best_arm, best_bound = chosen[0][0], chosen[0][1], -math.inf
    for (destination, arm), (n, wins) in zip(chosen, evidence, strict=True):
        if n <= 0.0:
            return Selection((destination,), index, arm.mean)
        bound = wins / n + math.sqrt(cfg.ucb_c * log_total / n)
        if bound > best_bound:
            best, best_arm, best_bound = destination, arm, bound
    return Selection((best,), index, best_arm.mean)


def greedy(tiers: Tiers, unavailable: Container[str], arms: Mapping[str, BanditArm],
           rng: random.Random, cfg: BanditConfig) -> Selection | None:
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
