"""The whole policy: its sections, and a rollout's candidate, which is a policy itself."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from router_stream.core.policy.checks import cross_check, format_loc
from router_stream.core.policy.conditions import Rule
from router_stream.core.policy.fields import Fraction, Name, PositiveSeconds, Section
from router_stream.core.policy.sections import (
    BreakerPolicy,
    Defaults,
    Destination,
    RedactPolicy,
    Route,
    TenantLimit,
    TrustPolicy,
)

DEFER_CROSS_CHECKS = "defer_cross_checks"
"""A validation context key: :func:`~router_stream.core.policy.loading.load_policy` runs the
cross-section checks itself, to report them with their lines."""


class Rollback(Section):
    """Automatic rollback of a candidate: compared over ``window_s`` once it saw ``min_signals``."""

    max_dlq_rate_delta: Fraction = 0.02
    max_no_healthy_delta: Fraction = 0.02
    window_s: PositiveSeconds = 300.0
    min_signals: int = Field(default=100, ge=1)


class Rollout(Section):
    """A candidate policy run beside the active one.

    ``shadow``: the candidate also decides a ``sample`` of signals, and only its decisions are
    recorded (nothing is routed by it). ``canary``: a ``share`` of keys is routed by it for real.
    """

    candidate: Policy | None = None
    candidate_file: str | None = Field(default=None, min_length=1)
    mode: Literal["shadow", "canary"]
    sample: Fraction | None = None
    share: Fraction | None = None
    rollback: Rollback = Rollback()

    @model_validator(mode="after")
    def _consistent(self) -> Rollout:
        if (self.candidate is None) == (self.candidate_file is None):
            raise ValueError("give exactly one of candidate (inline) or candidate_file")
        if self.mode == "shadow" and self.share is not None:
            raise ValueError("share applies to mode canary; shadow mode uses sample")
        if self.mode == "canary" and self.sample is not None:
            raise ValueError("sample applies to mode shadow; canary mode uses share")
        if self.mode == "canary" and self.share is None:
            raise ValueError("canary mode needs share (fraction of keys, 0..1)")
        return self

    @property
    def fraction(self) -> float:
        """The share of keys (canary) or sample of signals (shadow, default all)."""
        if self.mode == "canary":
            return self.share if self.share is not None else 0.0
        return self.sample if self.sample is not None else 1.0


# --- the policy ------------------------------------------------------------------------------


def _destinations_shorthand(value: Any) -> Any:
    """``destinations: [a, b]`` and ``a:`` (null) both mean "declared, no settings"."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return {item: {} for item in value}
    if isinstance(value, dict):
        return {key: {} if item is None else item for key, item in value.items()}
    return value


class Policy(Section):
    """A whole policy file. See ``examples/policy.yaml`` for every section in use."""

    name: str | None = None
    description: str | None = None
    trust: TrustPolicy = TrustPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    destinations: dict[Name, Destination] = Field(default_factory=dict)
    classify: list[Rule] = Field(default_factory=list)
    routes: dict[Name, Route] = Field(default_factory=dict)
    defaults: Defaults = Defaults()
    tenants: dict[Name, TenantLimit] = Field(default_factory=dict)
    redact: RedactPolicy = RedactPolicy()
    rollout: Rollout | None = None

    @field_validator("destinations", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _destinations_shorthand(value)

    @model_validator(mode="after")
    def _cross_sections(self, info: ValidationInfo) -> Policy:
        if isinstance(info.context, dict) and info.context.get(DEFER_CROSS_CHECKS):
            return self
        issues = cross_check(self)
        if issues:
            raise ValueError("; ".join(f"{format_loc(loc)}: {why}" for loc, why in issues))
        return self

    def tenant_limit(self, tenant: str) -> TenantLimit | None:
        """A tenant's limit; unlisted tenants get the ``default`` entry's (own bucket each)."""
        return self.tenants.get(tenant) or self.tenants.get("default")


Rollout.model_rebuild()
