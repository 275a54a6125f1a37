"""Operator overrides with a TTL (SPEC §1, §6 ``override set|list|clear``).

Three kinds, each expiring at ``expires_at`` (epoch seconds) so a forgotten override cannot pin
traffic forever:

- ``force_destination``: send signals matching a (kind, tenant) selector to ``target``;
  ``None`` in a selector field matches anything;
- ``drain``: no new traffic to destination ``target``;
- ``exclude_source``: ignore source ``target`` in consensus and trust.

The stored form is a mapping ``override_id -> Override`` (set replaces by id, clear removes).
Before deciding a batch the router calls :func:`active` once, which drops expired overrides and
indexes the rest, so the per-signal helpers are dictionary/set lookups.

When several force overrides match a signal the most specific selector wins (kind and tenant >
kind only > tenant only > neither); among equally specific ones the newest (``created_at``, then
``override_id``) wins. How a forced destination interacts with a drain is the router's policy;
these helpers answer each question on its own.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class OverrideKind(StrEnum):
    FORCE_DESTINATION = "force_destination"
    DRAIN = "drain"
    EXCLUDE_SOURCE = "exclude_source"


@dataclass(frozen=True, slots=True)
class Override:
    """One operator override. ``kind_selector``/``tenant_selector`` are used by
    ``force_destination`` only."""

    override_id: str
    kind: OverrideKind
    target: str
    expires_at: float
    created_at: float = 0.0
    kind_selector: str | None = None
    tenant_selector: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("override target must not be empty")
        if not (math.isfinite(self.expires_at) and math.isfinite(self.created_at)):
            raise ValueError("override expires_at and created_at must be finite numbers")

    def is_active(self, now: float) -> bool:
        return now < self.expires_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "override_id": self.override_id,
            "kind": self.kind.value,
            "target": self.target,
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "kind_selector": self.kind_selector,
            "tenant_selector": self.tenant_selector,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Override:
        return cls(
            override_id=str(data["override_id"]),
            kind=OverrideKind(data["kind"]),
            target=str(data["target"]),
            expires_at=float(data["expires_at"]),
            created_at=float(data.get("created_at", 0.0)),
            kind_selector=_text_or_none(data.get("kind_selector"), "kind_selector"),
            tenant_selector=_text_or_none(data.get("tenant_selector"), "tenant_selector"),
            reason=str(data.get("reason", "")),
        )


def _text_or_none(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"override {name}: expected a string or null, got {type(value).__name__}")


def unknown_target(action: str, target: str, destinations: Collection[str]) -> str | None:
    """Why an override naming ``target`` cannot take effect under a policy routing to
    ``destinations`` (None: it can). Forcing to or draining a destination the policy lacks
    would route to a topic nothing declared (force) or silently do nothing (drain); a source
    left out of consensus needs no declaration."""
    if action == OverrideKind.EXCLUDE_SOURCE or target in destinations:
        return None
    known = ", ".join(sorted(destinations)) or "none"
    return f"destination {target!r} is not in the active policy (destinations: {known})"


def set_override(current: Mapping[str, Override], override: Override) -> dict[str, Override]:
    """A new mapping with ``override`` added (or replacing the one with the same id)."""
    updated = dict(current)
    updated[override.override_id] = override
    return updated


def clear_override(current: Mapping[str, Override], override_id: str) -> dict[str, Override]:
    """A new mapping without ``override_id`` (clearing an unknown id is a no-op)."""
    return {key: value for key, value in current.items() if key != override_id}


def prune(current: Mapping[str, Override], now: float) -> dict[str, Override]:
    """The stored mapping without expired overrides (for housekeeping of the table)."""
    return {key: value for key, value in current.items() if value.is_active(now)}


_Selector = tuple[str | None, str | None]


@dataclass(frozen=True, slots=True)
class ActiveOverrides:
    """The unexpired overrides at one instant, indexed for per-signal lookups."""

    forced: Mapping[_Selector, str]
    drained: frozenset[str]
    excluded: frozenset[str]
    overrides: tuple[Override, ...]

    def forced_destination(self, kind: str, tenant: str) -> str | None:
        """The destination forced for (kind, tenant), most specific selector first."""
        forced = self.forced
        if not forced:
            return None
        for selector in ((kind, tenant), (kind, None), (None, tenant), (None, None)):
            destination = forced.get(selector)
            if destination is not None:
                return destination
        return None

    def is_drained(self, destination: str) -> bool:
        return destination in self.drained

    def is_excluded(self, source: str) -> bool:
        return source in self.excluded


def active(overrides: Iterable[Override], now: float) -> ActiveOverrides:
    """Drop overrides expired at ``now`` and index the rest."""
    live = sorted(
        (o for o in overrides if o.is_active(now)),
        key=lambda o: (o.created_at, o.override_id),
    )
    forced: dict[_Selector, str] = {}
    drained: set[str] = set()
    excluded: set[str] = set()
    for override in live:  # oldest first, so the newest per selector wins
        if override.kind is OverrideKind.FORCE_DESTINATION:
            forced[(override.kind_selector, override.tenant_selector)] = override.target
        elif override.kind is OverrideKind.DRAIN:
            drained.add(override.target)
        else:
            excluded.add(override.target)
    return ActiveOverrides(forced, frozenset(drained), frozenset(excluded), tuple(live))
