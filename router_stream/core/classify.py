"""Classification rules compiled once per policy into plain closures.

The policy's rules are pydantic models made for validation and error messages; walking them per
signal would be slow. :func:`compile_rules` turns each condition into a predicate
``Signal -> bool`` with the regexes compiled, payload paths split, ``in`` lists turned into sets,
and the common shapes (one- and two-key payload paths, two-way ``all``/``any``) specialised so
a match costs a few dict lookups. Rules are tried in policy order; the first match decides.

Matching semantics (the policy docs repeat them):

* a path that does not resolve is *absent*; ``exists: true`` means present and not null;
* ``equals``/``in`` compare JSON values, and booleans only equal booleans (``1`` is not ``true``);
* ``contains_any``: a substring of a string value, or a shared element with a list value;
* ``regex``: an RE2 search (linear time, :mod:`.rulere`) on strings; ``range``: inclusive, numbers;
* a ``*`` path segment matches any key / list element; the test passes if any of them passes.

Priority of a classified signal: the signal's own ``priority`` if it has one, else the rule's,
else ``defaults.priority``. A signal that names its ``kind`` skips the rules altogether.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Final

from router_stream.core.models import Signal
from router_stream.core.policy import (
    AllOf,
    AnyOf,
    Condition,
    FieldMatch,
    NotOf,
    Policy,
    split_path,
)
from router_stream.core.policy.fields import is_list_index
from router_stream.core.rulere import compile_rule_regex

__all__ = ["Classifier", "CompiledRule", "compile_condition", "compile_rules"]


class _Missing:
    """The value of a path that does not resolve (distinct from JSON null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()

Getter = Callable[[Signal], Any]
Test = Callable[[Any], bool]
Predicate = Callable[[Signal], bool]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    kind: str
    priority: int | None
    matches: Predicate


class Classifier:
    """``classify(signal) -> (kind, priority) | None`` for one policy's rules."""

    __slots__ = ("_table", "default_priority", "rules")

    def __init__(self, rules: Sequence[CompiledRule], default_priority: int | None = None) -> None:
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self.default_priority = default_priority
        # (predicate, kind, priority) triples: one tuple unpack per rule instead of three
        # attribute reads on the hot path
        self._table = tuple(
            (r.matches, r.kind, r.priority if r.priority is not None else default_priority)
            for r in self.rules
        )

    def classify(self, signal: Signal) -> tuple[str, int | None] | None:
        """The signal's kind and priority, or ``None`` when no rule matches (unclassified)."""
        if signal.kind is not None:
            priority = signal.priority
            return signal.kind, self.default_priority if priority is None else priority
        for matches, kind, rule_priority in self._table:
            if matches(signal):
                priority = signal.priority
                return kind, rule_priority if priority is None else priority
        return None

    def match_rule(self, signal: Signal) -> CompiledRule | None:
        """The first rule that matches (ignores an explicit ``kind``); for decision records."""
        for rule in self.rules:
            if rule.matches(signal):
                return rule
        return None


def compile_rules(policy: Policy) -> Classifier:
    """Compile ``policy.classify`` once; the result is immutable and safe to share."""
    rules = [
        CompiledRule(rule.name, rule.kind, rule.priority, compile_condition(rule.when))
        for rule in policy.classify
    ]
    return Classifier(rules, policy.defaults.priority)


def compile_condition(condition: Condition) -> Predicate:
    if isinstance(condition, FieldMatch):
        return _compile_match(condition)
    if isinstance(condition, AllOf):
        return _all([compile_condition(c) for c in condition.all])
    if isinstance(condition, AnyOf):
        return _any([compile_condition(c) for c in condition.any])
    if isinstance(condition, NotOf):
        inner = compile_condition(condition.not_)
        return lambda signal: not inner(signal)
    raise TypeError(f"not a condition: {condition!r}")  # unreachable for a validated policy


# --- combinators -----------------------------------------------------------------------------


def _all(predicates: list[Predicate]) -> Predicate:
    return _joined(predicates, all, lambda a, b: lambda signal: a(signal) and b(signal))


def _any(predicates: list[Predicate]) -> Predicate:
    return _joined(predicates, any, lambda a, b: lambda signal: a(signal) or b(signal))


def _joined(predicates: list[Predicate], fold: Callable[[Iterable[bool]], bool],
            pair: Callable[[Predicate, Predicate], Predicate]) -> Predicate:
    """One predicate of several: itself for one, a plain ``and``/``or`` of two (no generator on
    the per-signal path), ``all``/``any`` over the rest."""
    if len(predicates) == 1:
        return predicates[0]
    if len(predicates) == 2:
        return pair(predicates[0], predicates[1])
    preds = tuple(predicates)
    return lambda signal: fold(p(signal) for p in preds)


# --- leaves: a getter and a test -------------------------------------------------------------


def _compile_match(match: FieldMatch) -> Predicate:
    test = _compile_test(match)
    parts = split_path(match.field)
    if "*" in parts:
        many = _multi_getter(parts)
        return lambda signal: any(test(v) for v in many(signal))
    if parts[0] != "payload":
        top: Getter = attrgetter(parts[0])
        # an unset optional field is None on the model: treat it as absent, not as null
        return lambda signal: test(_absent_if_none(top(signal)))
    keys = parts[1:]
    if len(keys) == 0:
        return lambda signal: test(signal.payload)
    if len(keys) == 1 and not keys[0].isdigit():
        key = keys[0]
        return lambda signal: test(signal.payload.get(key, MISSING))
    if len(keys) == 2 and not keys[0].isdigit() and not keys[1].isdigit():
        outer, inner = keys

        def two_keys(signal: Signal) -> bool:
            value = signal.payload.get(outer, MISSING)
            return test(value.get(inner, MISSING) if type(value) is dict else MISSING)

        return two_keys
    return lambda signal: test(_resolve(signal.payload, keys))


def _absent_if_none(value: Any) -> Any:
    return MISSING if value is None else value


def _resolve(value: Any, keys: Iterable[str]) -> Any:
    for key in keys:
        if type(value) is dict:
            value = value.get(key, MISSING)
        elif type(value) is list and is_list_index(key) and int(key) < len(value):
            value = value[int(key)]
        else:
            return MISSING
    return value


def _multi_getter(parts: Sequence[str]) -> Callable[[Signal], list[Any]]:
    keys = parts[1:]

    def values(signal: Signal) -> list[Any]:
        current: list[Any] = [signal.payload]
        for key in keys:
            nxt: list[Any] = []
            for value in current:
                if key == "*":
                    if type(value) is dict:
                        nxt.extend(value.values())
                    elif type(value) is list:
                        nxt.extend(value)
                else:
                    found = _resolve(value, (key,))
                    if found is not MISSING:
                        nxt.append(found)
            current = nxt
        return current

    return values


def _compile_test(match: FieldMatch) -> Test:
    op = match.operator
    if op == "equals":
        return _equals_test(match.equals)
    if op == "in":
        return _membership_test(match.in_ or [])
    if op == "contains_any":
        return _contains_any_test(match.contains_any or [])
    if op == "regex":
        search = compile_rule_regex(match.regex or "").search
        return lambda v: type(v) is str and search(v) is not None
    if op == "exists":
        want = bool(match.exists)
        return lambda v: (v is not MISSING and v is not None) is want
    if op == "range":
        return _range_test(match.range.min if match.range else None,
                           match.range.max if match.range else None)
    raise ValueError(f"unknown operator {op!r}")  # unreachable for a validated policy


def _equals_test(expected: Any) -> Test:
    if type(expected) is bool:
        return lambda v: v is expected
    if expected is None:
        return lambda v: v is None
    return lambda v: type(v) is not bool and v is not MISSING and v == expected


def _membership_test(options: list[Any]) -> Test:
    """``in``: bools only match bools, unhashable values (lists, objects) compare by equality."""
    bools = frozenset(o for o in options if type(o) is bool)
    hashable = frozenset(o for o in options if type(o) is not bool and isinstance(o, Hashable))
    others = [o for o in options if not isinstance(o, Hashable)]

    def test(v: Any) -> bool:
        if v is MISSING:
            return False
        if type(v) is bool:
            return v in bools
        if isinstance(v, Hashable):
            return v in hashable
        return v in others

    if not bools and not others:  # the usual case: strings/numbers; skip the Hashable ABC check

        def fast(v: Any) -> bool:
            if type(v) is bool:
                return False
            try:
                return v in hashable
            except TypeError:  # an unhashable value (list, object) cannot equal a hashable one
                return False

        return fast
    return test


def _contains_any_test(options: list[Any]) -> Test:
    substrings = tuple(o for o in options if type(o) is str)
    member = _membership_test(options)

    def test(v: Any) -> bool:
        if type(v) is str:
            return any(sub in v for sub in substrings)
        if type(v) is list:
            return any(member(item) for item in v)
        return False

    return test


def _range_test(low: float | None, high: float | None) -> Test:
    lo = float("-inf") if low is None else low
    hi = float("inf") if high is None else high
    return lambda v: (type(v) is int or type(v) is float) and lo <= v <= hi
