"""Operator overrides: TTL expiry, selector precedence, drain and exclude lookups."""

from __future__ import annotations

import json

import pytest

from router_stream.core.overrides import (
    Override,
    OverrideKind,
    active,
    clear_override,
    prune,
    set_override,
)

FORCE, DRAIN, EXCLUDE = (OverrideKind.FORCE_DESTINATION, OverrideKind.DRAIN,
                         OverrideKind.EXCLUDE_SOURCE)


def _force(oid: str, target: str, kind: str | None, tenant: str | None, created: float = 0.0,
           expires: float = 100.0) -> Override:
    return Override(oid, FORCE, target, expires_at=expires, created_at=created,
                    kind_selector=kind, tenant_selector=tenant)


def test_expired_overrides_are_dropped() -> None:
    overrides = [Override("d1", DRAIN, "dest-a", expires_at=10.0),
                 Override("x1", EXCLUDE, "src-a", expires_at=20.0)]
    at5, at10 = active(overrides, 5.0), active(overrides, 10.0)
    assert at5.is_drained("dest-a") and at5.is_excluded("src-a")
    assert not at10.is_drained("dest-a") and at10.is_excluded("src-a")
    assert not at10.is_drained("dest-b") and len(at10.overrides) == 1


def test_most_specific_force_selector_wins() -> None:
    overrides = [_force("any", "d-any", None, None), _force("tenant", "d-tenant", None, "t1"),
                 _force("kind", "d-kind", "alert", None), _force("both", "d-both", "alert", "t1")]
    now = active(overrides, 0.0)
    assert now.forced_destination("alert", "t1") == "d-both"
    assert now.forced_destination("alert", "t2") == "d-kind"
    assert now.forced_destination("metric", "t1") == "d-tenant"
    assert now.forced_destination("metric", "t2") == "d-any"


def test_newest_override_wins_for_the_same_selector() -> None:
    overrides = [_force("b", "new", "alert", None, created=2.0),
                 _force("a", "old", "alert", None, created=1.0)]
    assert active(overrides, 0.0).forced_destination("alert", "t") == "new"
    assert active([], 0.0).forced_destination("alert", "t") is None


def test_set_replaces_by_id_and_clear_removes() -> None:
    store = set_override({}, Override("o1", DRAIN, "a", expires_at=5.0))
    store = set_override(store, Override("o1", DRAIN, "b", expires_at=5.0))
    assert [o.target for o in store.values()] == ["b"]
    assert clear_override(store, "o1") == {} and clear_override(store, "zz") == store
    assert prune(store, 5.0) == {} and prune(store, 4.0) == store


def test_round_trip_and_validation() -> None:
    override = _force("o", "dest", "alert", None, created=1.0)
    assert Override.from_dict(json.loads(json.dumps(override.to_dict()))) == override
    with pytest.raises(ValueError):
        Override("o", DRAIN, "", expires_at=1.0)
