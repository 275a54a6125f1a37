"""Cross-section checks: what one section cannot check alone (routes name declared
destinations, every kind a rule produces has a route, rule names are unique, strategy parameters
match the strategy, one breaker per destination)."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from router_stream.core.policy.fields import BANDIT_STRATEGIES, RESERVED_KIND
from router_stream.core.policy.sections import UNKNOWN_TENANT_OPTIONS, BreakerOverride, Route

if TYPE_CHECKING:
    from router_stream.core.policy.model import Policy

Loc = tuple[str | int, ...]


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
        try:
            route.breaker.over(policy.breaker)
        except ValidationError as exc:
            for err in exc.errors():
                yield ("routes", kind, "breaker"), err["msg"].removeprefix("Value error, ")
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


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("<") or part == "[key]":
            continue
        else:
            out += f".{part}" if out else part
    return out
