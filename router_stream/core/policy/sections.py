"""The policy's sections other than classification and rollout: trust, breaker, destinations,
routes, defaults, tenants and redaction."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, Strict, model_validator
from pydantic.dataclasses import dataclass

from router_stream.core.policy.fields import (
    CONFIG_SECTION,
    DETECTORS,
    MAX_DURATION_S,
    MAX_RETRY_DELAY_S,
    Count,
    Detector,
    FieldPath,
    Fraction,
    Name,
    NonNegative,
    PositiveSeconds,
    Section,
    Share,
    Strategy,
)

# --- trust and breaker -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, config=CONFIG_SECTION)
class TrustWeights:
    """Weights of the five trust components; a convex combination keeps trust in [0, 1]."""

    freshness: Fraction = 0.2
    error_rate: Fraction = 0.3
    latency: Fraction = 0.1
    deviation: Fraction = 0.2
    availability: Fraction = 0.2

    @model_validator(mode="after")
    def _sum_to_one(self) -> TrustWeights:
        total = math.fsum(
            (self.freshness, self.error_rate, self.latency, self.deviation, self.availability)
        )
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1 (got {total:.6g})")
        return self


@dataclass(frozen=True, slots=True, config=CONFIG_SECTION)
class TrustPolicy:
    """The trust section, which is also :mod:`~router_stream.core.trust`'s parameters."""

    weights: TrustWeights = TrustWeights()
    min_trust: Fraction = 0.2
    """Below this a destination/source is skipped by trust-aware strategies."""
    stale_after_s: PositiveSeconds = 60.0
    """The age at which data freshness reaches 0, and the silence after which the score starts
    decaying (half-life ``decay_half_life_s``, toward ``floor``)."""
    latency_target_ms: PositiveSeconds = 250.0
    ewma_alpha: Share = 0.2
    """The weight of the newest sample."""
    decay_half_life_s: PositiveSeconds = 60.0
    floor: Fraction = 0.0
    initial: Fraction = 0.5
    """Every component's value for a source never observed: neutral, so unknown destinations are
    neither preferred nor starved."""
    deviation_z_max: PositiveSeconds = 3.5
    """The robust z-score at which the deviation sample reaches 0 (the consensus outlier
    threshold ``mad_k`` is the natural choice)."""


@dataclass(frozen=True, slots=True, config=CONFIG_SECTION)
class BreakerPolicy:
    """Breaker thresholds (the state machine: :mod:`~router_stream.core.breaker`)."""

    failure_threshold: Count = 5
    """Consecutive failures that open the breaker."""
    error_rate_threshold: Share = 0.5
    """... or this error rate over ``window_s``, once the window saw ``min_volume`` outcomes."""
    window_s: PositiveSeconds = 60.0
    min_volume: Count = 20
    cooldown_s: PositiveSeconds = 30.0
    """open -> half_open after this long; it grows by ``backoff_multiplier`` on every re-open,
    up to ``max_cooldown_s``."""
    max_cooldown_s: PositiveSeconds = 600.0
    backoff_multiplier: Annotated[float, Strict(), Field(ge=1.0, allow_inf_nan=False)] = 2.0
    half_open_probes: Count = 1
    """How many probes half_open admits at once, and how many must succeed to close."""
    probe_timeout_s: PositiveSeconds = 30.0
    """A probe whose outcome never arrives within this counts as failed, so a lost outcome
    cannot wedge the breaker half-open."""

    @model_validator(mode="after")
    def _cooldowns_ordered(self) -> BreakerPolicy:
        if self.max_cooldown_s < self.cooldown_s:
            raise ValueError(
                f"max_cooldown_s ({self.max_cooldown_s}) is below cooldown_s ({self.cooldown_s})"
            )
        return self


class BreakerOverride(Section):
    """A route's own breaker settings for its destinations; unset fields come from ``breaker``."""

    failure_threshold: int | None = Field(default=None, ge=1)
    error_rate_threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    window_s: PositiveSeconds | None = None
    min_volume: int | None = Field(default=None, ge=1)
    cooldown_s: PositiveSeconds | None = None
    max_cooldown_s: PositiveSeconds | None = None
    backoff_multiplier: float | None = Field(default=None, ge=1.0, allow_inf_nan=False)
    half_open_probes: int | None = Field(default=None, ge=1)
    probe_timeout_s: PositiveSeconds | None = None

    def over(self, base: BreakerPolicy) -> BreakerPolicy:
        """``base`` with this override's fields in place; raises ``ValidationError`` when the
        two together are not a valid breaker (cross_check reports that)."""
        return replace(base, **self.model_dump(exclude_none=True))


class Destination(Section):
    capacity: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    """In-flight signals it can take; ``least_loaded`` divides load by it."""
    description: str | None = None


# --- routes ----------------------------------------------------------------------------------

MAX_PRIOR = 1e6
"""The largest ``prior_alpha``/``prior_beta``. A prior counts as that many outcomes; more than a
million is a typo, and keeps Beta draws far from the float range."""
Prior = Annotated[float, Strict(), Field(gt=0.0, le=MAX_PRIOR, allow_inf_nan=False)]


@dataclass(frozen=True, slots=True, config=CONFIG_SECTION)
class BanditParams:
    """``epsilon``: exploration share of greedy; ``ucb_c``: exploration constant of UCB1
    (``mean + sqrt(ucb_c·ln N / n)``, 2 is the textbook value); ``prior_alpha``/``prior_beta``:
    the Beta prior of an arm never pulled; ``discount``: the weight each reward leaves on the
    arm's earlier evidence (1: all of it, for ever)."""

    seed: Annotated[int, Strict()] = 0
    epsilon: Fraction = 0.1
    ucb_c: NonNegative = 2.0
    prior_alpha: Prior = 1.0
    prior_beta: Prior = 1.0
    discount: Annotated[float, Strict(), Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 1.0


@dataclass(frozen=True, slots=True, config=CONFIG_SECTION)
class ConsensusParams:
    """Consensus parameters (see :mod:`~router_stream.core.strategies.consensus` for what each
    one decides)."""

    mad_k: Annotated[float, Strict(), Field(ge=0.6745, allow_inf_nan=False)] = 3.5
    """Modified z-score above which a source is an outlier (below 0.6745 nothing is inlier)."""
    max_dispersion: NonNegative = 0.05
    max_staleness_s: PositiveSeconds = 30.0
    synthetic_max_age_s: Annotated[
        float, Strict(), Field(ge=0.0, le=MAX_DURATION_S, allow_inf_nan=False)
    ] = 300.0
    min_sources: Count = 1
    default_trust: Fraction = 0.5


class RetryParams(Section):
    """When no destination is healthy: park and retry up to ``max_attempts`` times (0: DLQ)."""

    max_attempts: int = Field(default=0, ge=0, le=100)
    delay_ms: int = Field(default=1000, ge=0, le=int(MAX_RETRY_DELAY_S * 1000))
    """The first retry's delay; it doubles per attempt up to ``MAX_RETRY_DELAY_S``."""


def _non_empty_tier(tier: list[str]) -> list[str]:
    if not tier:
        raise ValueError("empty tier")
    return tier


Tier = Annotated[list[Name], AfterValidator(_non_empty_tier)]


class Route(Section):
    """How one kind is routed. Give ``tiers`` (ordered fallbacks) or ``destinations`` (one tier)."""

    strategy: Strategy
    tiers: list[Tier] | None = Field(default=None, min_length=1)
    destinations: list[Name] | None = Field(default=None, min_length=1)
    bandit: BanditParams | None = None
    consensus: ConsensusParams | None = None
    breaker: BreakerOverride | None = None
    """Breaker settings for this route's destinations (bandit routes have a default of their
    own, see docs/policy.md)."""
    retry: RetryParams = RetryParams()
    dedupe: bool = True
    on_duplicate: Literal["drop", "dlq"] = "drop"

    def tier_list(self) -> list[list[str]]:
        """The route as tiers: ``destinations`` is one tier."""
        if self.tiers is not None:
            return [list(tier) for tier in self.tiers]
        return [list(self.destinations or [])]

    def all_destinations(self) -> list[str]:
        return [dest for tier in self.tier_list() for dest in tier]


class Defaults(Section):
    """What happens to signals the classifier or the routes do not cover.

    ``unclassified``: no rule matched (and the signal has no ``kind``): ``dlq`` or a kind name to
    route it as. ``unrouted``: the signal's kind has no route: ``dlq`` or a kind to route it as.
    ``priority``: the priority of signals that neither carry one nor got one from a rule.
    """

    unclassified: Name = "dlq"
    unrouted: Name = "dlq"
    priority: int | None = Field(default=None, ge=0, le=9)


class BucketLimit(Section):
    """Token bucket: ``rate`` signals/s sustained, ``burst`` at once (default: max(rate, 1))."""

    rate: float = Field(ge=0.0, allow_inf_nan=False)
    burst: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)

    @property
    def effective_burst(self) -> float:
        return self.burst if self.burst is not None else max(self.rate, 1.0)


UNKNOWN_TENANT_OPTIONS = ("shared", "total", "max_buckets")


class TenantLimit(BucketLimit):
    """A tenant's bucket. The ``default`` entry (every tenant not named) also takes how those
    tenants share: ``shared`` (one bucket between them all), ``total`` (a bucket they all draw
    from as well) and ``max_buckets`` (own buckets remembered, least recently used forgotten)."""

    shared: bool = False
    total: BucketLimit | None = None
    max_buckets: int = Field(default=100_000, ge=1, le=10_000_000)


class RedactPolicy(Section):
    """What is masked in what is persisted: whole fields by path, and PII found in text."""

    fields: list[FieldPath] = Field(default_factory=list)
    detectors: list[Detector] = Field(default_factory=lambda: list(DETECTORS))

