"""Loading a policy from YAML: every issue reported with its path and line, the line taken
from the YAML node marks, so ``router-stream policy validate`` can point at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from router_stream.core.policy.checks import Loc, cross_check, format_loc
from router_stream.core.policy.model import DEFER_CROSS_CHECKS, Policy
from router_stream.errors import PolicyError, PolicyIssue

MAX_NODES = 200_000
"""The most YAML nodes a policy may expand to through its aliases: a few hundred bytes of
aliases of aliases (an "alias bomb") expand to billions, which every walk over the document
would then visit. Also the most mapping entries its merge keys (``<<``) may make."""

MERGE_TAG = "tag:yaml.org,2002:merge"

INTEGERS = range(-(2**63), 2**64)
"""The integers a policy may hold: its canonical JSON (and so its version) holds no others, and a
signal carries a larger one as a float, which no integer in a rule would equal."""


def load_policy(text: str, source: str = "<string>") -> Policy:
    """Parse and validate policy YAML; raise :class:`PolicyError` listing every issue."""
    try:
        return _load(text, source)
    except RecursionError:  # PyYAML, pydantic and the checks recurse into nested blocks
        raise PolicyError([("", "the document is nested too deep")], source) from None


def _load(text: str, source: str) -> Policy:
    root, data = _parse_yaml(text, source)
    if root is None or data is None:
        raise PolicyError([("", "policy is empty")], source)
    issues = _duplicate_keys(root) or _wide_integers(data, root)
    if not isinstance(data, dict):
        issues.append(("", f"a policy is a mapping of sections (line {root.start_mark.line + 1})"))
    if issues:
        raise PolicyError(issues, source)
    try:
        policy = Policy.model_validate(data, context={DEFER_CROSS_CHECKS: True})
    except ValidationError as exc:
        raise PolicyError([_pydantic_issue(err, root) for err in exc.errors()], source) from None
    cross = cross_check(policy)
    if cross:
        raise PolicyError(
            [(format_loc(loc), f"{why} (line {_line_of(root, loc)})") for loc, why in cross],
            source,
        )
    return policy


def _parse_yaml(text: str, source: str) -> tuple[Node | None, Any]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _check_merges(root, source)
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        raise PolicyError([("", _yaml_problem(exc))], source) from None
    except yaml.YAMLError as exc:
        raise PolicyError([("", f"invalid YAML: {exc}")], source) from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        # PyYAML's constructors fail so on a tagged value they cannot build (a !!timestamp of
        # 99999-99-99, a !!binary that is no base64)
        detail = f" ({exc})" if isinstance(exc, ValueError | OverflowError) else ""
        raise PolicyError([("", f"invalid YAML: a value its tag cannot hold{detail}")],
                          source) from None
    finally:
        loader.dispose()
    return root, data


def _check_merges(root: Node, source: str) -> None:
    """Refuse merge keys (``<<``) that would make more than :data:`MAX_NODES` mapping entries,
    or that merge a mapping enclosing them. PyYAML copies a merged mapping's entries into every
    mapping that merges it, so a few hundred bytes of merges of merges take exponential time and
    memory to construct; they are counted here on the node graph, each node once."""
    entries: dict[int, int] = {}  # id(mapping) -> its entries once merged
    total = 0
    for node in _mappings_inside_out(root):
        size = _merged_entries(node, entries)
        if size is None:
            raise PolicyError([("", "a merge key (<<) merges a mapping that encloses it"
                                    f" (line {node.start_mark.line + 1})")], source)
        entries[id(node)] = size
        total += size
        if total > MAX_NODES:
            raise PolicyError([("", "merge keys (<<) expand the document to more than"
                                    f" {MAX_NODES:,} mapping entries")], source)


def _mappings_inside_out(root: Node) -> Iterator[MappingNode]:
    """Every mapping of the node graph once, each after the nodes inside it (an alias of an
    enclosing node, which only a cycle makes, is not waited for)."""
    entered: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, inside_done = stack.pop()
        if inside_done:
            if isinstance(node, MappingNode):
                yield node
        elif id(node) not in entered:
            entered.add(id(node))
            stack.append((node, True))
            if isinstance(node, SequenceNode):
                stack.extend((child, False) for child in node.value)
            elif isinstance(node, MappingNode):
                stack.extend((child, False) for pair in node.value for child in pair)


def _merged_entries(node: MappingNode, entries: dict[int, int]) -> int | None:
    """``node``'s entries once its merge keys are applied, from those of the mappings it merges
    (in ``entries``); None when one of them is not counted yet: it encloses ``node``."""
    size = 0
    for key, value in node.value:
        if key.tag != MERGE_TAG:
            size += 1
            continue
        for merged in value.value if isinstance(value, SequenceNode) else [value]:
            if isinstance(merged, MappingNode):  # anything else: PyYAML refuses it
                if id(merged) not in entries:
                    return None
                size += entries[id(merged)]
    return size


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


def _duplicate_keys(root: Node) -> list[PolicyIssue]:
    """PyYAML silently keeps the last of two equal keys; in a policy that hides a mistake.
    Also refuses a document that expands past :data:`MAX_NODES`. Walked without recursion, in
    document order: a step is a node to visit, or an issue found in its place among them."""
    issues: list[PolicyIssue] = []
    stack: list[tuple[Node, Loc] | PolicyIssue] = [(root, ())]
    visited = 0
    while stack:
        step = stack.pop()
        if isinstance(step[0], str):
            issues.append(step)
            continue
        node, loc = step
        visited += 1
        if visited > MAX_NODES:
            issues.append(("", f"the document expands to more than {MAX_NODES:,} YAML nodes"
                               " through its aliases"))
            return issues
        steps: list[tuple[Node, Loc] | PolicyIssue] = []
        if isinstance(node, MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                name = key.value if isinstance(key, ScalarNode) else "?"
                if name in seen and name != "<<":
                    steps.append((format_loc((*loc, name)),
                                  f"duplicate key (line {key.start_mark.line + 1})"))
                seen.add(name)
                steps.append((value, (*loc, name)))
        elif isinstance(node, SequenceNode):
            steps = [(child, (*loc, i)) for i, child in enumerate(node.value)]
        stack.extend(reversed(steps))
    return issues


def _wide_integers(data: Any, root: Node) -> list[PolicyIssue]:
    """Integers outside :data:`INTEGERS`, each with its path and line. Walked once the
    document is known to be within :data:`MAX_NODES`, in document order."""
    issues: list[PolicyIssue] = []
    stack: list[tuple[Any, Loc]] = [(data, ())]
    while stack:
        value, loc = stack.pop()
        if isinstance(value, dict):
            items = [(item, (*loc, key if isinstance(key, str | int) else str(key)))
                     for key, item in value.items()]
            stack.extend(reversed(items))
        elif isinstance(value, list):
            stack.extend(reversed([(item, (*loc, i)) for i, item in enumerate(value)]))
        elif type(value) is int and value not in INTEGERS:
            issues.append((format_loc(loc),
                           f"integer beyond 64 bits (line {_line_of(root, loc)})"))
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



def _pydantic_issue(err: ErrorDetails, root: Node) -> PolicyIssue:
    loc = tuple(err["loc"])
    line = _line_of(root, loc)
    return format_loc(loc), f"{_reason(err, loc)} (line {line})"


def _reason(err: ErrorDetails, loc: Loc) -> str:
    kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
    if kind == "missing":
        return "required"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return "unknown field"
    if kind == "literal_error":
        subject = "strategy" if loc and loc[-1] == "strategy" else "value"
        return f"unknown {subject} {err.get('input')!r} (expected {ctx.get('expected')})"
    if kind == "string_pattern_mismatch":
        return f"{err.get('input')!r} must be 1-200 characters of letters, digits, '.', '_', '-'"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind in ("model_type", "model_attributes_type", "dict_type", "dataclass_type"):
        return f"must be a mapping, got {_yaml_type(err.get('input'))}"
    if kind == "list_type":
        return f"must be a list, got {_yaml_type(err.get('input'))}"
    return msg


def _yaml_type(value: object) -> str:
    names = {dict: "mapping", list: "list", str: "string", int: "number", float: "number",
             bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)
