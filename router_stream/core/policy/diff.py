"""A policy's version (a hash of its canonical JSON) and the diff between two policies."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import orjson

from router_stream.core.policy.model import Policy


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
