"""The policy file (SPEC §4): pydantic models, loading with YAML line numbers, version, diff.

A policy is validated in two passes. The models check each section on its own (types, ranges,
unknown fields, regexes, ``range`` bounds, trust weights summing to 1, empty tiers);
:func:`cross_check` then checks what spans sections (routes name declared destinations, every
kind a rule produces has a route, rule names are unique, strategy parameters match the strategy).
:func:`load_policy` runs both on YAML text and reports *every* issue as
``routes.alert.tiers[1]: empty tier (line 23)``, the path and line coming from the YAML node
marks, so ``router-stream policy validate`` can point at the exact line.

Constructing :class:`Policy` directly (``Policy.model_validate(...)``) runs both passes too; the
cross-section issues then surface as one ``ValueError`` at the root because pydantic cannot place
them, which is why the CLI and the worker go through :func:`load_policy`.

:func:`policy_version` hashes the canonical JSON of the validated model (defaults filled in,
sorted keys), so reordering keys or spelling out a default does not change the version, while
any change that alters behaviour does. A candidate under ``rollout.candidate_file`` is only a
path here: reading it is I/O, done by the caller, which then validates it with this module.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal, get_args

import orjson
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from router_stream.core.rulere import RuleRegexError, compile_rule_regex
from router_stream.errors import PolicyError, PolicyIssue

__all__ = [
    "DETECTORS",
    "SIGNAL_FIELDS",
    "STRATEGIES",
    "AllOf",
    "AnyOf",
    "BanditParams",
    "BreakerPolicy",
    "BucketLimit",
    "Condition",
    "ConsensusParams",
    "Defaults",
    "Destination",
    "Detector",
    "FieldMatch",
    "NotOf",
    "Policy",
    "Range",
    "RedactPolicy",
    "RetryParams",
    "Rollback",
    "Rollout",
    "Route",
    "Rule",
    "TenantLimit",
    "TrustPolicy",
    "TrustWeights",
    "cross_check",
    "diff_policies",
    "load_policy",
    "policy_version",
    "split_path",
]

Loc = tuple[str | int, ...]

Strategy = Literal[
    "first_healthy", "fanout", "weighted", "least_loaded", "thompson", "ucb", "greedy", "consensus"
]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
BANDIT_STRATEGIES = frozenset({"thompson", "ucb", "greedy"})

Detector = Literal["email", "phone", "card", "ssn", "ipv4", "ipv6"]
DETECTORS: tuple[Detector, ...] = get_args(Detector)

SIGNAL_FIELDS = frozenset({
    "signal_id", "tenant", "sender_id", "ts", "kind", "priority", "ttl_ms", "metric",
    "source_id", "value", "payload",
})
"""Signal attributes a classify/redact path may start with; ``payload`` may continue."""

RESERVED_KIND = "dlq"  # ``defaults.unclassified: dlq`` would be ambiguous with a kind "dlq"
_NAME = r"^[A-Za-z0-9._-]{1,200}$"
"""Destinations become topic names (``routed.<destination>``) and kinds become metric labels."""

_DEFER_CROSS_CHECKS = "defer_cross_checks"


def split_path(path: str) -> tuple[str, ...]:
    """``payload.user.email`` -> ``("payload", "user", "email")``; validates the shape.

    The first segment must be a Signal field; only ``payload`` may have more segments
    (``*`` matches any key, a number indexes a list).
    """
    parts = tuple(path.split("."))
    if not path or any(not part for part in parts):
        raise ValueError(f"bad field path {path!r}: empty segment")
    head = parts[0]
    if head not in SIGNAL_FIELDS:
        fields = ", ".join(sorted(SIGNAL_FIELDS))
        raise ValueError(f"bad field path {path!r}: {head!r} is not a signal field ({fields})")
    if head != "payload" and len(parts) > 1:
        raise ValueError(f"bad field path {path!r}: only payload has nested fields")
    return parts


def _check_path(path: str) -> str:
    split_path(path)
    return path


FieldPath = Annotated[str, AfterValidator(_check_path)]
Name = Annotated[str, Field(pattern=_NAME)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# Durations are bounded so a typo (an extra few zeros) is refused at validate time rather than
# pinning a breaker open or a parked signal for centuries.
MAX_DURATION_S = 30 * 86_400.0
PositiveSeconds = Annotated[float, Field(gt=0.0, le=MAX_DURATION_S, allow_inf_nan=False)]


class _Section(BaseModel):
    """Every policy model: frozen, strict types, and unknown keys are errors (typo safety)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)


# --- trust and breaker -----------------------------------------------------------------------


class TrustWeights(_Section):
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


class TrustPolicy(_Section):
    weights: TrustWeights = TrustWeights()
    min_trust: Fraction = 0.2
    """Below this a destination/source is skipped by trust-aware strategies."""
    stale_after_s: PositiveSeconds = 60.0
    latency_target_ms: PositiveSeconds = 250.0
    ewma_alpha: float = Field(default=0.2, gt=0.0, le=1.0)
    decay_half_life_s: PositiveSeconds = 60.0
    floor: Fraction = 0.0
    initial: Fraction = 0.5
    deviation_z_max: PositiveSeconds = 3.5


class BreakerPolicy(_Section):
    failure_threshold: int = Field(default=5, ge=1)
    error_rate_threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    window_s: PositiveSeconds = 60.0
    min_volume: int = Field(default=20, ge=1)
    cooldown_s: PositiveSeconds = 30.0
    max_cooldown_s: PositiveSeconds = 600.0
    backoff_multiplier: float = Field(default=2.0, ge=1.0, allow_inf_nan=False)
    half_open_probes: int = Field(default=1, ge=1)
    probe_timeout_s: PositiveSeconds = 30.0

    @model_validator(mode="after")
    def _cooldowns_ordered(self) -> BreakerPolicy:
        if self.max_cooldown_s < self.cooldown_s:
            raise ValueError(
                f"max_cooldown_s ({self.max_cooldown_s}) is below cooldown_s ({self.cooldown_s})"
            )
        return self


class BreakerOverride(_Section):
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
        """``base`` with this override's fields in place (not re-validated: cross_check does)."""
        return base.model_copy(update=self.model_dump(exclude_none=True))


class Destination(_Section):
    capacity: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    """In-flight signals it can take; ``least_loaded`` divides load by it."""
    description: str | None = None


# --- classification --------------------------------------------------------------------------


class Range(_Section):
    min: float | None = Field(default=None, allow_inf_nan=False)
    max: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounds(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"range min ({self.min:g}) is greater than max ({self.max:g})")
        return self


OPERATORS = ("equals", "in", "contains_any", "regex", "exists", "range")


class FieldMatch(_Section):
    """One test on one signal field: ``{field: payload.severity, in: [critical, high]}``."""

    field: FieldPath
    equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in", min_length=1)
    contains_any: list[Any] | None = Field(default=None, min_length=1)
    regex: str | None = None
    exists: bool | None = None
    range: Range | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compile_rule_regex(value)
            except RuleRegexError as exc:
                raise ValueError(f"regex {value!r} is not RE2 syntax: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_operator(self) -> FieldMatch:
        given = self.operators()
        if not given:
            raise ValueError(f"no operator: give one of {', '.join(OPERATORS)}")
        if len(given) > 1:
            raise ValueError(
                f"more than one operator ({', '.join(given)}): combine them with 'all'"
            )
        return self

    def operators(self) -> list[str]:
        """The operators this match sets (``equals: null`` counts: it tests for null)."""
        fields_set = self.model_fields_set
        return [op for op in OPERATORS if ("in_" if op == "in" else op) in fields_set]

    @property
    def operator(self) -> str:
        return self.operators()[0]


class AllOf(_Section):
    all: list[Condition] = Field(min_length=1)


class AnyOf(_Section):
    any: list[Condition] = Field(min_length=1)


class NotOf(_Section):
    not_: Condition = Field(alias="not")


def _condition_tag(value: Any) -> str | None:
    """Which condition shape a mapping is, from its keys (so errors name only that shape)."""
    if isinstance(value, dict):
        for key in ("all", "any", "not"):
            if key in value:
                return f"<{key}>"
        return "<match>"
    return _MODEL_TAGS.get(type(value))


Condition = Annotated[
    Annotated[FieldMatch, Tag("<match>")]
    | Annotated[AllOf, Tag("<all>")]
    | Annotated[AnyOf, Tag("<any>")]
    | Annotated[NotOf, Tag("<not>")],
    Discriminator(
        _condition_tag,
        custom_error_type="condition_shape",
        custom_error_message="a condition is a mapping: {field, <operator>} or all/any/not",
    ),
]
_MODEL_TAGS: dict[type, str] = {FieldMatch: "<match>", AllOf: "<all>", AnyOf: "<any>",
                                NotOf: "<not>"}
AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()


class Rule(_Section):
    """Classification rule; rules are tried in order and the first match decides."""

    name: str = Field(min_length=1)
    when: Condition
    kind: Name
    priority: int | None = Field(default=None, ge=0, le=9)


# --- routes ----------------------------------------------------------------------------------


class BanditParams(_Section):
    seed: int = 0
    epsilon: Fraction = 0.1
    ucb_c: float = Field(default=2.0, ge=0.0, allow_inf_nan=False)
    prior_alpha: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    prior_beta: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    discount: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    """Weight an arm's earlier evidence keeps at each new outcome (1: stationary arms)."""


class ConsensusParams(_Section):
    mad_k: float = Field(default=3.5, ge=0.6745, allow_inf_nan=False)
    """Modified z-score above which a source is an outlier (below 0.6745 nothing is inlier)."""
    max_dispersion: float = Field(default=0.05, ge=0.0, allow_inf_nan=False)
    max_staleness_s: PositiveSeconds = 30.0
    synthetic_max_age_s: float = Field(default=300.0, ge=0.0, le=MAX_DURATION_S,
                                       allow_inf_nan=False)
    min_sources: int = Field(default=1, ge=1)
    default_trust: Fraction = 0.5


class RetryParams(_Section):
    """When no destination is healthy: park and retry up to ``max_attempts`` times (0: DLQ)."""

    max_attempts: int = Field(default=0, ge=0, le=100)
    delay_ms: int = Field(default=1000, ge=0, le=86_400_000)  # doubles per attempt


def _non_empty_tier(tier: list[str]) -> list[str]:
    if not tier:
        raise ValueError("empty tier")
    return tier


Tier = Annotated[list[Name], AfterValidator(_non_empty_tier)]


class Route(_Section):
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


class Defaults(_Section):
    """What happens to signals the classifier or the routes do not cover.

    ``unclassified``: no rule matched (and the signal has no ``kind``): ``dlq`` or a kind name to
    route it as. ``unrouted``: the signal's kind has no route: ``dlq`` or a kind to route it as.
    ``priority``: the priority of signals that neither carry one nor got one from a rule.
    """

    unclassified: Name = "dlq"
    unrouted: Name = "dlq"
    priority: int | None = Field(default=None, ge=0, le=9)


class BucketLimit(_Section):
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


class RedactPolicy(_Section):
    """What is masked in what is persisted: whole fields by path, and PII found in text."""

    fields: list[FieldPath] = Field(default_factory=list)
    detectors: list[Detector] = Field(default_factory=lambda: list(DETECTORS))


class Rollback(_Section):
    """Automatic rollback of a candidate: compared over ``window_s`` once it saw ``min_signals``."""

    max_dlq_rate_delta: Fraction = 0.02
    max_no_healthy_delta: Fraction = 0.02
    window_s: PositiveSeconds = 300.0
    min_signals: int = Field(default=100, ge=1)


class Rollout(_Section):
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


class Policy(_Section):
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
        if isinstance(info.context, dict) and info.context.get(_DEFER_CROSS_CHECKS):
            return self
        issues = cross_check(self)
        if issues:
            raise ValueError("; ".join(f"{_format_loc(loc)}: {why}" for loc, why in issues))
        return self

    def tenant_limit(self, tenant: str) -> TenantLimit | None:
        """A tenant's limit; unlisted tenants get the ``default`` entry's (own bucket each)."""
        return self.tenants.get(tenant) or self.tenants.get("default")


Rollout.model_rebuild()


# --- cross-section checks --------------------------------------------------------------------


def cross_check(policy: Policy, prefix: Loc = ()) -> list[tuple[Loc, str]]:
    """Issues that involve more than one section, each with the path it is about."""
    issues: list[tuple[Loc, str]] = []
    issues += _check_routes(policy)
    issues += _check_rules(policy)
    issues += _check_defaults(policy)
    issues += _check_tenants(policy)
    issues += _check_route_breakers(policy)
    rollout = policy.rollout
    if rollout is not None and rollout.candidate is not None:
        if rollout.candidate.rollout is not None:
            issues.append((("rollout", "candidate", "rollout"),
                           "a candidate policy cannot have its own rollout"))
        issues += cross_check(rollout.candidate, ("rollout", "candidate"))
    return [(prefix + loc, why) for loc, why in issues]


def _check_tenants(policy: Policy) -> Iterator[tuple[Loc, str]]:
    for name, limit in policy.tenants.items():
        if name == "default":
            continue
        for option in UNKNOWN_TENANT_OPTIONS:
            if option in limit.model_fields_set:
                yield (("tenants", name, option),
                       f"{option} applies to tenants the policy does not name: give it under "
                       "tenants.default")


def _check_routes(policy: Policy) -> Iterator[tuple[Loc, str]]:
    declared = policy.destinations
    for kind, route in policy.routes.items():
        base: Loc = ("routes", kind)
        if route.tiers is not None and route.destinations is not None:
            yield base, "give either tiers or destinations, not both"
        elif route.tiers is None and route.destinations is None:
            yield base, "no destinations: give tiers (ordered fallbacks) or destinations"
        yield from _check_route_params(base, route)
        seen: set[str] = set()
        for loc, dest in _route_members(base, route):
            if dest not in declared:
                hint = _did_you_mean(dest, declared)
                yield loc, f"undeclared destination {dest!r}{hint}"
            elif dest in seen:
                yield loc, f"destination {dest!r} appears more than once in this route"
            seen.add(dest)


def _route_members(base: Loc, route: Route) -> Iterator[tuple[Loc, str]]:
    for i, tier in enumerate(route.tiers or []):
        for j, dest in enumerate(tier):
            yield (*base, "tiers", i, j), dest
    if route.tiers is None:  # both given is reported on its own; check only the tiers then
        for j, dest in enumerate(route.destinations or []):
            yield (*base, "destinations", j), dest


def _check_route_params(base: Loc, route: Route) -> Iterator[tuple[Loc, str]]:
    if route.bandit is not None and route.strategy not in BANDIT_STRATEGIES:
        yield (*base, "bandit"), f"bandit parameters do not apply to strategy {route.strategy}"
    if route.consensus is not None and route.strategy != "consensus":
        yield (*base, "consensus"), (
            f"consensus parameters do not apply to strategy {route.strategy}"
        )


def _check_route_breakers(policy: Policy) -> Iterator[tuple[Loc, str]]:
    """A route's breaker must be a valid breaker once merged, and a destination that two routes
    name cannot have two different ones (a breaker is per destination, not per route)."""
    owner: dict[str, tuple[str, BreakerOverride]] = {}
    for kind, route in policy.routes.items():
        if route.breaker is None:
            continue
        merged = route.breaker.over(policy.breaker)
        if merged.max_cooldown_s < merged.cooldown_s:
            yield ("routes", kind, "breaker"), (
                f"max_cooldown_s ({merged.max_cooldown_s}) is below cooldown_s "
                f"({merged.cooldown_s})")
        for dest in route.all_destinations():
            first = owner.setdefault(dest, (kind, route.breaker))
            if first[1] != route.breaker:
                yield ("routes", kind, "breaker"), (
                    f"destination {dest!r} already has the breaker of route {first[0]!r}; "
                    "a destination has one breaker")


def _check_rules(policy: Policy) -> Iterator[tuple[Loc, str]]:
    first_index: dict[str, int] = {}
    for i, rule in enumerate(policy.classify):
        if rule.name in first_index:
            yield ("classify", i, "name"), (
                f"duplicate rule name {rule.name!r}"
                f" (first used by classify[{first_index[rule.name]}])"
            )
        first_index.setdefault(rule.name, i)
        if rule.kind == RESERVED_KIND:
            yield ("classify", i, "kind"), f"kind {RESERVED_KIND!r} is reserved"
        elif rule.kind not in policy.routes and policy.defaults.unrouted == RESERVED_KIND:
            yield ("classify", i, "kind"), (
                f"rule {rule.name!r} produces kind {rule.kind!r}, which has no route "
                f"(add routes.{rule.kind} or set defaults.unrouted)"
            )


def _check_defaults(policy: Policy) -> Iterator[tuple[Loc, str]]:
    for name in ("unclassified", "unrouted"):
        kind = getattr(policy.defaults, name)
        if kind != RESERVED_KIND and kind not in policy.routes:
            hint = _did_you_mean(kind, policy.routes)
            yield ("defaults", name), f"kind {kind!r} has no route{hint}"


def _did_you_mean(word: str, choices: Sequence[str] | dict[str, Any]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- loading with line numbers ---------------------------------------------------------------


def load_policy(text: str, source: str = "<string>") -> Policy:
    """Parse and validate policy YAML; raise :class:`PolicyError` listing every issue."""
    root, data = _parse_yaml(text, source)
    if root is None or data is None:
        raise PolicyError([("", "policy is empty")], source)
    issues = _duplicate_keys(root, ())
    if not isinstance(data, dict):
        issues.append(("", f"a policy is a mapping of sections (line {root.start_mark.line + 1})"))
    if issues:
        raise PolicyError(issues, source)
    try:
        policy = Policy.model_validate(data, context={_DEFER_CROSS_CHECKS: True})
    except ValidationError as exc:
        raise PolicyError([_pydantic_issue(err, root) for err in exc.errors()], source) from None
    cross = cross_check(policy)
    if cross:
        raise PolicyError(
            [(_format_loc(loc), f"{why} (line {_line_of(root, loc)})") for loc, why in cross],
            source,
        )
    return policy


def _parse_yaml(text: str, source: str) -> tuple[Node | None, Any]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        raise PolicyError([("", _yaml_problem(exc))], source) from None
    except yaml.YAMLError as exc:
        raise PolicyError([("", f"invalid YAML: {exc}")], source) from None
    finally:
        loader.dispose()
    return root, data


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """The reason, at the line of the mistake. PyYAML marks where it noticed the problem,
    which for an unclosed bracket or quote is a later line; the construct left open
    (``context_mark``) is where the mistake is. A block's context is the whole enclosing
    mapping or sequence, so there the problem's own line is the better one."""
    problem, context = exc.problem_mark, exc.context_mark
    what = exc.problem or exc.context
    left_open = context is not None and "block" not in (exc.context or "")
    if context is not None and left_open and (problem is None or context.line < problem.line):
        found = f" on line {problem.line + 1}" if problem is not None else ""
        return f"invalid YAML: {what}{found}, {exc.context} (line {context.line + 1})"
    mark = problem or context
    return f"invalid YAML: {what}" + (f" (line {mark.line + 1})" if mark is not None else "")


def _duplicate_keys(node: Node, loc: Loc) -> list[PolicyIssue]:
    """PyYAML silently keeps the last of two equal keys; in a policy that hides a mistake."""
    issues: list[PolicyIssue] = []
    if isinstance(node, MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, ScalarNode) else "?"
            if name in seen and name != "<<":
                where = _format_loc((*loc, name))
                issues.append((where, f"duplicate key (line {key.start_mark.line + 1})"))
            seen.add(name)
            issues += _duplicate_keys(value, (*loc, name))
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            issues += _duplicate_keys(item, (*loc, i))
    return issues


def _line_of(root: Node, loc: Loc) -> int:
    """1-based line of the deepest YAML node on ``loc`` (a mapping entry's line is its key's)."""
    node, line = root, root.start_mark.line
    for part in loc:
        if isinstance(part, str) and part.startswith("<"):
            continue  # a union tag pydantic adds; not in the document
        child = _child(node, part)
        if child is None:
            break
        line, node = child
    return line + 1


def _child(node: Node, part: str | int) -> tuple[int, Node] | None:
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == str(part):
                return key.start_mark.line, value
    elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return item.start_mark.line, item
    return None


def _format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("<") or part == "[key]":
            continue
        else:
            out += f".{part}" if out else part
    return out


def _pydantic_issue(err: ErrorDetails, root: Node) -> PolicyIssue:
    loc = tuple(err["loc"])
    line = _line_of(root, loc)
    return _format_loc(loc), f"{_reason(err, loc)} (line {line})"


def _reason(err: ErrorDetails, loc: Loc) -> str:
    kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "literal_error":
        subject = "strategy" if loc and loc[-1] == "strategy" else "value"
        return f"unknown {subject} {err.get('input')!r} (expected {ctx.get('expected')})"
    if kind == "string_pattern_mismatch":
        return f"{err.get('input')!r} must be 1-200 characters of letters, digits, '.', '_', '-'"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping, got {_yaml_type(err.get('input'))}"
    if kind == "list_type":
        return f"must be a list, got {_yaml_type(err.get('input'))}"
    return msg


def _yaml_type(value: object) -> str:
    names = {dict: "mapping", list: "list", str: "string", int: "number", float: "number",
             bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# --- version and diff ------------------------------------------------------------------------


def canonical_json(policy: Policy) -> bytes:
    """The policy as JSON with defaults filled in and keys sorted: equal policies, equal bytes."""
    return orjson.dumps(policy.model_dump(mode="json", by_alias=True), option=orjson.OPT_SORT_KEYS)


def policy_version(policy: Policy) -> str:
    """``p-`` + 12 hex digits of sha256 over :func:`canonical_json`."""
    return "p-" + hashlib.sha256(canonical_json(policy)).hexdigest()[:12]


def diff_policies(a: Policy, b: Policy) -> list[str]:
    """What changes from ``a`` to ``b``, one line each: ``~ path: old -> new``, ``+ path``,
    ``- path``. Rules are matched by name, so reordering shows as a change of ``classify``."""
    return list(_diff(_plain(a), _plain(b), ""))


def _plain(policy: Policy) -> dict[str, Any]:
    dumped: dict[str, Any] = policy.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


def _diff(old: Any, new: Any, path: str) -> Iterator[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in new:
                yield f"- {sub}"
            elif key not in old:
                yield f"+ {sub}" if isinstance(new[key], dict) else f"+ {sub}: {_show(new[key])}"
            else:
                yield from _diff(old[key], new[key], sub)
    elif _named_list(old) and _named_list(new):
        old_by, new_by = {r["name"]: r for r in old}, {r["name"]: r for r in new}
        yield from _diff(old_by, new_by, path)
        if [n for n in old_by if n in new_by] != [n for n in new_by if n in old_by]:
            yield f"~ {path}: rule order {list(old_by)} -> {list(new_by)}"
    elif old != new:
        yield f"~ {path}: {_show(old)} -> {_show(new)}"


def _named_list(value: Any) -> bool:
    return (isinstance(value, list) and all(isinstance(i, dict) and "name" in i for i in value)
            and len({i["name"] for i in value}) == len(value) and bool(value))


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
