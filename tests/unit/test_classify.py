"""Compiled classification: every operator and combinator, rule order, priorities."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from router_stream.core.classify import compile_condition, compile_rules
from router_stream.core.models import Signal
from router_stream.core.policy import FieldMatch, Policy, Rule, load_policy


def signal(payload: dict[str, Any] | None = None, **fields: Any) -> Signal:
    return Signal(fields.pop("signal_id", "sig-1"), fields.pop("sender_id", "s1"), 0.0,
                  payload=payload or {}, **fields)


def matches(condition: str, sig: Signal) -> bool:
    """Compile one YAML condition and run it: the rule-level unit under test."""
    rule = Rule.model_validate({"name": "r", "kind": "k", "when": yaml.safe_load(condition)})
    return compile_condition(rule.when)(sig)


# --- operators -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "payload", "expected"),
    [
        ("{field: payload.sev, equals: critical}", {"sev": "critical"}, True),
        ("{field: payload.sev, equals: critical}", {"sev": "low"}, False),
        ("{field: payload.sev, equals: critical}", {}, False),
        ("{field: payload.n, equals: 1}", {"n": 1.0}, True),
        ("{field: payload.n, equals: 1}", {"n": True}, False),  # booleans only equal booleans
        ("{field: payload.flag, equals: true}", {"flag": 1}, False),
        ("{field: payload.flag, equals: true}", {"flag": True}, True),
        ("{field: payload.x, equals: null}", {"x": None}, True),
        ("{field: payload.x, equals: null}", {}, False),  # absent is not null
        ("{field: payload.obj, equals: {a: 1}}", {"obj": {"a": 1}}, True),
        ("{field: payload.sev, in: [critical, high]}", {"sev": "high"}, True),
        ("{field: payload.sev, in: [critical, high]}", {"sev": "low"}, False),
        ("{field: payload.sev, in: [critical, high]}", {}, False),
        ("{field: payload.n, in: [1, 2]}", {"n": True}, False),
        ("{field: payload.n, in: [true, 2]}", {"n": True}, True),
        ("{field: payload.n, in: [true, 2]}", {"n": 1}, False),
        ("{field: payload.l, in: [[1, 2], x]}", {"l": [1, 2]}, True),
        ("{field: payload.l, in: [[1, 2], x]}", {"l": [2, 1]}, False),
        ("{field: payload.msg, contains_any: [disk, cpu]}", {"msg": "disk full"}, True),
        ("{field: payload.msg, contains_any: [disk, cpu]}", {"msg": "memory"}, False),
        ("{field: payload.tags, contains_any: [billing, x]}", {"tags": ["user", "billing"]}, True),
        ("{field: payload.tags, contains_any: [billing, x]}", {"tags": ["user"]}, False),
        ("{field: payload.tags, contains_any: [billing]}", {"tags": 5}, False),
        ("{field: payload.msg, regex: '(?i)\\bdown\\b'}", {"msg": "DB is DOWN now"}, True),
        ("{field: payload.msg, regex: '(?i)\\bdown\\b'}", {"msg": "downstream"}, False),
        ("{field: payload.msg, regex: '1'}", {"msg": 1}, False),  # strings only
        ("{field: payload.x, exists: true}", {"x": 0}, True),
        ("{field: payload.x, exists: true}", {"x": None}, False),
        ("{field: payload.x, exists: true}", {}, False),
        ("{field: payload.x, exists: false}", {}, True),
        ("{field: payload.x, exists: false}", {"x": "v"}, False),
        ("{field: payload.v, range: {min: 1, max: 5}}", {"v": 1}, True),
        ("{field: payload.v, range: {min: 1, max: 5}}", {"v": 5.0}, True),
        ("{field: payload.v, range: {min: 1, max: 5}}", {"v": 5.01}, False),
        ("{field: payload.v, range: {min: 1}}", {"v": 1e9}, True),
        ("{field: payload.v, range: {max: 0}}", {"v": -3}, True),
        ("{field: payload.v, range: {min: 0}}", {"v": "7"}, False),  # numbers only
        ("{field: payload.v, range: {min: 0}}", {"v": True}, False),
    ],
)
def test_operators(condition: str, payload: dict[str, Any], expected: bool) -> None:
    assert matches(condition, signal(payload)) is expected


@pytest.mark.parametrize(
    ("condition", "payload", "expected"),
    [
        ("{field: payload.a.b, equals: 1}", {"a": {"b": 1}}, True),
        ("{field: payload.a.b, equals: 1}", {"a": 5}, False),
        ("{field: payload.a.b.c, equals: 1}", {"a": {"b": {"c": 1}}}, True),
        ("{field: payload.a.b.c, equals: 1}", {"a": {"b": [1]}}, False),
        ("{field: payload.items.1, equals: y}", {"items": ["x", "y"]}, True),
        ("{field: payload.items.5, exists: true}", {"items": ["x"]}, False),
        ("{field: payload.0, exists: true}", {"0": "digit key"}, True),
        ("{field: payload.items.*.sev, equals: high}", {"items": [{"sev": "low"}, {"sev": "high"}]},
         True),
        ("{field: payload.items.*.sev, equals: high}", {"items": [{"sev": "low"}]}, False),
        ("{field: payload.*, equals: 3}", {"a": 1, "b": 3}, True),
        ("{field: payload, exists: true}", {}, True),
    ],
)
def test_payload_paths(condition: str, payload: dict[str, Any], expected: bool) -> None:
    assert matches(condition, signal(payload)) is expected


def test_top_level_fields() -> None:
    sig = signal({}, sender_id="app-7", tenant="acme", metric="temp", value=21.5, priority=2)
    assert matches("{field: sender_id, regex: '^app-'}", sig)
    assert matches("{field: tenant, in: [acme]}", sig)
    assert matches("{field: metric, exists: true}", sig)
    assert matches("{field: value, range: {min: 20, max: 22}}", sig)
    assert matches("{field: priority, equals: 2}", sig)
    assert not matches("{field: source_id, exists: true}", sig)  # unset optional = absent
    assert not matches("{field: ttl_ms, equals: null}", sig)


# --- regexes run on RE2 ----------------------------------------------------------------------


def test_a_catastrophic_backtracking_pattern_is_decided_in_linear_time() -> None:
    # under a backtracking engine this signal costs 2^n steps: minutes from n = 32 on
    condition = "{field: payload.text, regex: '^(a+)+$'}"
    assert not matches(condition, signal({"text": "a" * 10_000 + "!"}))
    assert matches(condition, signal({"text": "a" * 10_000}))


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("(?i)\\b(down|outage|unreachable)\\b", "Host UNREACHABLE since 3am", True),
        ("(?i)\\b(down|outage|unreachable)\\b", "breakdown", False),
        ("^app-\\d+$", "app-42", True),
        ("^app-\\d+$", "app-42\n", False),  # RE2's $ is the end of the text, not before a \n
        ("(?P<host>[a-z]+)\\.example", "db.example.com", True),
        ("[[:digit:]]{3}", "code 404", True),
        ("\\p{Greek}", "alpha α", True),
    ],
)
def test_the_re2_dialect(pattern: str, text: str, expected: bool) -> None:
    match = FieldMatch.model_validate({"field": "payload.text", "regex": pattern})
    assert compile_condition(match)(signal({"text": text})) is expected


def test_combinators() -> None:
    both = "{all: [{field: payload.a, equals: 1}, {field: payload.b, equals: 2}]}"
    either = "{any: [{field: payload.a, equals: 1}, {field: payload.b, equals: 2}]}"
    three = ("{all: [{field: payload.a, exists: true}, {field: payload.b, exists: true},"
             " {field: payload.c, exists: true}]}")
    three_any = three.replace("all", "any")
    negated = "{not: {field: payload.a, equals: 1}}"
    nested = ("{all: [{any: [{field: payload.a, equals: 1}, {field: payload.a, equals: 9}]},"
              " {not: {field: payload.b, exists: true}}]}")
    assert matches(both, signal({"a": 1, "b": 2}))
    assert not matches(both, signal({"a": 1}))
    assert matches(either, signal({"b": 2}))
    assert not matches(either, signal({"a": 2}))
    assert matches(three, signal({"a": 1, "b": 1, "c": 1}))
    assert not matches(three, signal({"a": 1, "b": 1}))
    assert matches(three_any, signal({"c": 1}))
    assert not matches(three_any, signal({}))
    assert matches(negated, signal({"a": 2})) and not matches(negated, signal({"a": 1}))
    assert matches(nested, signal({"a": 9})) and not matches(nested, signal({"a": 9, "b": 0}))
    assert matches("{all: [{field: payload.a, equals: 1}]}", signal({"a": 1}))


# --- rules: order, kinds, priorities ---------------------------------------------------------

POLICY = textwrap.dedent("""\
    destinations: [pager, mail]
    classify:
      - name: critical
        when: {field: payload.sev, equals: critical}
        kind: alert
        priority: 9
      - name: any-sev
        when: {field: payload.sev, exists: true}
        kind: notice
      - name: also-critical
        when: {field: payload.sev, equals: critical}
        kind: notice
        priority: 1
    routes:
      alert: {strategy: first_healthy, destinations: [pager]}
      notice: {strategy: fanout, destinations: [mail]}
    defaults: {priority: 4}
    """)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICY)


def test_first_matching_rule_wins(policy: Policy) -> None:
    classifier = compile_rules(policy)
    assert classifier.classify(signal({"sev": "critical"})) == ("alert", 9)
    assert classifier.classify(signal({"sev": "low"})) == ("notice", 4)  # defaults.priority
    rule = classifier.match_rule(signal({"sev": "low"}))
    assert rule is not None and rule.name == "any-sev"


def test_unmatched_signal_is_unclassified(policy: Policy) -> None:
    classifier = compile_rules(policy)
    assert classifier.classify(signal({"other": 1})) is None
    assert classifier.match_rule(signal({})) is None


def test_explicit_kind_skips_rules(policy: Policy) -> None:
    classifier = compile_rules(policy)
    assert classifier.classify(signal({"sev": "critical"}, kind="custom")) == ("custom", 4)
    assert classifier.classify(signal({}, kind="custom", priority=1)) == ("custom", 1)


def test_signal_priority_beats_rule_priority(policy: Policy) -> None:
    assert compile_rules(policy).classify(signal({"sev": "critical"}, priority=2)) == ("alert", 2)


def test_no_rules_classifies_nothing() -> None:
    classifier = compile_rules(load_policy("{}"))
    assert classifier.rules == ()
    assert classifier.classify(signal({"sev": "critical"})) is None


def test_example_policy_classifies_its_demo_signals() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"
    classifier = compile_rules(load_policy(example.read_text()))
    assert classifier.classify(signal({}, metric="cpu", source_id="a", value=1.0)) == (
        "observation", 5)
    assert classifier.classify(signal({"severity": "critical"})) == ("alert", 9)
    assert classifier.classify(signal({"severity": "critical", "test": True})) is None
    assert classifier.classify(signal({"message": "api is DOWN"})) == ("alert", 7)
    assert classifier.classify(signal({"error_rate": 0.7})) == ("alert", 7)
    assert classifier.classify(signal({"channel_hint": "email", "tags": ["billing"]})) == (
        "notification", 3)
    assert classifier.classify(signal({}, sender_id="app-shop")) == ("notification", 5)
    assert classifier.classify(signal({"hello": "world"})) is None


# --- the compiled predicate agrees with a direct reading of the rule --------------------------

values = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["a", "b", "ab"]),
                   st.lists(st.sampled_from(["a", "b", 1]), max_size=3))


def reference(match: FieldMatch, payload: dict[str, Any]) -> bool:
    """The documented semantics, written as plainly as possible."""
    present = "x" in payload
    v = payload.get("x")

    def same(a: Any, b: Any) -> bool:
        return (type(a) is bool) == (type(b) is bool) and a == b

    op = match.operator
    if op == "equals":
        return present and same(v, match.equals)
    if op == "in":
        return present and any(same(v, o) for o in match.in_ or [])
    if op == "contains_any":
        opts = match.contains_any or []
        if isinstance(v, str):
            return any(isinstance(o, str) and o in v for o in opts)
        if isinstance(v, list):
            return any(same(item, o) for item in v for o in opts)
        return False
    if op == "exists":
        return (present and v is not None) is match.exists
    raise AssertionError(op)


@given(
    st.sampled_from(["equals", "in", "contains_any", "exists"]),
    values,
    st.lists(values.filter(lambda v: v is not None and not isinstance(v, list)), min_size=1,
             max_size=3),
    st.dictionaries(st.just("x"), values, max_size=1),
)
def test_compiled_matches_reference(op: str, arg: Any, options: list[Any],
                                    payload: dict[str, Any]) -> None:
    raw: dict[str, Any] = {"field": "payload.x"}
    if op == "equals":
        raw["equals"] = arg
    elif op == "exists":
        raw["exists"] = bool(arg)
    else:
        raw[op] = options
    match = FieldMatch.model_validate(raw)
    assert compile_condition(match)(signal(payload)) is reference(match, payload)
