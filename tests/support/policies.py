"""Policy variants for tests, made so that an edit which no longer applies fails loudly.

``edited`` changes the parsed YAML by path (``"routes.alert.tiers"``, ``"classify[0].kind"``)
and raises ``KeyError`` when a path is not in the policy, so a variant cannot quietly equal its
base after the base changes. ``replaced`` edits the text itself, for tests whose expectations
depend on the layout (line numbers), and asserts that each old text occurs exactly once.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import yaml

_STEP = re.compile(r"(?:^|\.)([^.\[\]]+)|\[(\d+)\]")


def _steps(path: str) -> list[str | int]:
    steps: list[str | int] = []
    end = 0
    for match in _STEP.finditer(path):
        if match.start() != end:
            break
        key, index = match.groups()
        steps.append(key if key is not None else int(index))
        end = match.end()
    if not steps or end != len(path):
        raise ValueError(f"not a policy path: {path!r}")
    return steps


def _child(node: Any, step: str | int, path: str) -> Any:
    if isinstance(step, int) and isinstance(node, list) and step < len(node):
        return node[step]
    if isinstance(step, str) and isinstance(node, dict) and step in node:
        return node[step]
    raise KeyError(f"{path}: the policy has no {step!r} there")


def _parent(data: Any, path: str) -> tuple[Any, str | int]:
    *head, last = _steps(path)
    node = data
    for step in head:
        node = _child(node, step, path)
    return node, last


def edited(text: str, changes: Mapping[str, Any] | None = None, *,
           add: Mapping[str, Any] | None = None) -> str:
    """``text`` with each path in ``changes`` set to a new value (the path must exist) and each
    path in ``add`` created (its parent must exist and it must not: a mapping key is added, a
    list index inserts before that item); returned as YAML."""
    data = copy.deepcopy(yaml.safe_load(text))
    for path, value in (changes or {}).items():
        parent, last = _parent(data, path)
        _child(parent, last, path)
        parent[last] = value
    for path, value in (add or {}).items():
        parent, last = _parent(data, path)
        if isinstance(last, int) and isinstance(parent, list) and last <= len(parent):
            parent.insert(last, value)
        elif isinstance(last, str) and isinstance(parent, dict) and last not in parent:
            parent[last] = value
        else:
            raise KeyError(f"{path}: cannot be added to the policy (already there, or no such "
                           "place)")
    return yaml.safe_dump(data, sort_keys=False)


def replaced(text: str, *edits: tuple[str, str]) -> str:
    """``text`` with each ``(old, new)`` applied in turn; each ``old`` must occur exactly once."""
    for old, new in edits:
        found = text.count(old)
        assert found == 1, f"{old!r} occurs {found} times in the policy text, not once"
        text = text.replace(old, new)
    return text
