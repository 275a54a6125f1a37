"""Policy file: every validation error with its path and YAML line, versions, diffs."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from router_stream.core.policy import (
    STRATEGIES,
    Policy,
    diff_policies,
    load_policy,
    policy_version,
)
from router_stream.errors import PolicyError, UserError
from tests.support.policies import replaced

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"

BASE = """\
destinations:
  pager: {}
  slack: {}
  email: {capacity: 10}
classify:
  - name: crit
    when: {field: payload.severity, equals: critical}
    kind: alert
routes:
  alert:
    strategy: first_healthy
    tiers:
      - [pager]
      - [slack, email]
"""


def issues_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(textwrap.dedent(text), "test.yaml")
    return info.value.lines()


def one_issue(text: str) -> str:
    issues = issues_of(text)
    assert len(issues) == 1, issues
    return issues[0]


# --- valid policies --------------------------------------------------------------------------


def test_example_policy_is_valid_and_uses_every_section() -> None:
    policy = load_policy(EXAMPLE.read_text(), str(EXAMPLE))
    assert len(policy.destinations) >= 6
    assert {"pagerduty", "slack", "email", "webhook"} <= set(policy.destinations)
    assert policy.routes["alert"].strategy == "first_healthy"
    assert len(policy.routes["alert"].tier_list()) == 3
    assert policy.routes["notification"].strategy == "thompson"
    assert policy.routes["observation"].strategy == "consensus"
    assert {rule.kind for rule in policy.classify} == {"alert", "notification", "observation"}
    assert policy.tenants and policy.redact.fields


def test_minimal_policy_has_defaults() -> None:
    policy = load_policy("{}")
    assert policy.trust.weights.error_rate == pytest.approx(0.3)
    assert policy.breaker.half_open_probes == 1
    assert policy.defaults.unclassified == "dlq"
    assert policy.routes == {}


def test_destination_shorthands() -> None:
    as_list = load_policy("destinations: [a, b]")
    as_nulls = load_policy("destinations:\n  a:\n  b:\n")
    assert set(as_list.destinations) == set(as_nulls.destinations) == {"a", "b"}
    assert policy_version(as_list) == policy_version(as_nulls)


def test_route_helpers() -> None:
    policy = load_policy(BASE)
    assert policy.routes["alert"].tier_list() == [["pager"], ["slack", "email"]]
    assert policy.routes["alert"].all_destinations() == ["pager", "slack", "email"]


def test_tenant_limit_falls_back_to_default_entry() -> None:
    policy = load_policy("tenants: {default: {rate: 10}, acme: {rate: 100, burst: 5}}")
    assert policy.tenant_limit("acme").rate == 100  # type: ignore[union-attr]
    fallback = policy.tenant_limit("unknown")
    assert fallback is not None and fallback.rate == 10 and fallback.effective_burst == 10
    assert load_policy("{}").tenant_limit("x") is None


def test_every_strategy_is_accepted() -> None:
    for strategy in STRATEGIES:
        route = f"{{strategy: {strategy}, destinations: [a]}}"
        load_policy(f"destinations: [a]\nroutes: {{k: {route}}}")


def test_inline_candidate_rollout() -> None:
    policy = load_policy(BASE + textwrap.dedent("""\
        rollout:
          mode: canary
          share: 0.1
          candidate:
            destinations: [pager]
            routes: {alert: {strategy: fanout, destinations: [pager]}}
            classify: []
        """))
    assert policy.rollout is not None and policy.rollout.candidate is not None
    assert policy.rollout.fraction == 0.1
    shadow = load_policy("rollout: {mode: shadow, candidate_file: next.yaml}")
    assert shadow.rollout is not None and shadow.rollout.fraction == 1.0


def test_unrouted_default_allows_rule_kinds_without_routes() -> None:
    load_policy(replaced(BASE, ("kind: alert", "kind: page")) + "defaults: {unrouted: alert}\n")


def test_policy_error_is_a_user_error() -> None:
    with pytest.raises(UserError):
        load_policy("routes: 5")


# --- each validation error, with path and line -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("trust:\n  weights: {freshness: 0.5, error_rate: 0.6}\n",
         "trust.weights: weights must sum to 1 (got 1.6) (line 2)"),
        ("trust:\n  weights: {freshness: 1.5, error_rate: 0, latency: 0, deviation: 0,"
         " availability: 0}\n",
         "trust.weights.freshness: Input should be less than or equal to 1 (line 2)"),
        ("trust:\n  wieghts: {}\n", "trust.wieghts: unknown field (line 2)"),
        ("breaker:\n  cooldown_s: 100\n  max_cooldown_s: 10\n",
         "breaker: max_cooldown_s (10.0) is below cooldown_s (100.0) (line 1)"),
        ("breaker:\n  probe_timeout_s: 99999999999\n",
         "breaker.probe_timeout_s: Input should be less than or equal to 2592000 (line 2)"),
        ("routes:\n  a:\n    strategy: fanout\n    destinations: [x]\n"
         "    retry: {max_attempts: 3, delay_ms: 999999999999}\n",
         "routes.a.retry.delay_ms: Input should be less than or equal to 86400000 (line 5)"),
        ("breaker:\n  failure_threshold: 0\n",
         "breaker.failure_threshold: Input should be greater than or equal to 1 (line 2)"),
        ("destinations:\n  'bad name': {}\n",
         "destinations.bad name: 'bad name' must be 1-200 characters of letters, digits, '.',"
         " '_', '-' (line 2)"),
        ("classify:\n  - name: r\n    when: {field: payload.x, regex: '(oops'}\n    kind: a\n",
         "classify[0].when.regex: regex '(oops' is not RE2 syntax: missing ): (oops (line 3)"),
        ("classify:\n  - name: r\n    when: {field: payload.x, regex: '(a)\\1'}\n    kind: a\n",
         "classify[0].when.regex: regex '(a)\\\\1' is not RE2 syntax: invalid escape sequence: \\1"
         " (backreferences are not supported in RE2) (line 3)"),
        ("classify:\n  - name: r\n    when: {field: payload.x, regex: 'a(?=b)'}\n    kind: a\n",
         "classify[0].when.regex: regex 'a(?=b)' is not RE2 syntax: invalid perl operator: (?="
         " (lookaround is not supported in RE2) (line 3)"),
        ("classify:\n  - name: r\n    when: {field: payload.x, regex: '(?<!a)b'}\n    kind: a\n",
         "classify[0].when.regex: regex '(?<!a)b' is not RE2 syntax: invalid perl operator: (?<!"
         " (lookaround is not supported in RE2) (line 3)"),
        ("classify:\n  - name: r\n    when: {field: payload.x, regex: '(a|b){1,1000}c'}\n"
         "    kind: a\n",
         "classify[0].when.regex: regex '(a|b){1,1000}c' is too large: 4004 RE2 instructions,"
         " at most 2000 (a large counted repetition such as {1,1000}?) (line 3)"),
        ("classify:\n  - name: r\n    when: {field: payload.x, regex: 'a++'}\n    kind: a\n",
         "classify[0].when.regex: regex 'a++' is not RE2 syntax: bad repetition operator: ++"
         " (atomic groups and possessive quantifiers are not supported in RE2) (line 3)"),
        ("classify:\n  - name: r\n    when: {field: value, range: {min: 5, max: 1}}\n"
         "    kind: a\n",
         "classify[0].when.range: range min (5) is greater than max (1) (line 3)"),
        ("classify:\n  - name: r\n    when: {field: value, range: {}}\n    kind: a\n",
         "classify[0].when.range: range needs min, max or both (line 3)"),
        ("classify:\n  - name: r\n    when: {field: colour, exists: true}\n    kind: a\n",
         "classify[0].when.field: bad field path 'colour': 'colour' is not a signal field"),
        ("classify:\n  - name: r\n    when: {field: tenant.x, exists: true}\n    kind: a\n",
         "classify[0].when.field: bad field path 'tenant.x': only payload has nested fields"),
        ("classify:\n  - name: r\n    when: {field: payload.x}\n    kind: a\n",
         "classify[0].when: no operator: give one of equals, in, contains_any, regex, exists,"
         " range (line 3)"),
        ("classify:\n  - name: r\n    when: {field: payload.x, equals: 1, exists: true}\n"
         "    kind: a\n",
         "classify[0].when: more than one operator (equals, exists): combine them with 'all'"
         " (line 3)"),
        ("classify:\n  - name: r\n    when: {field: payload.x, in: []}\n    kind: a\n",
         "classify[0].when.in: List should have at least 1 item after validation, not 0 (line 3)"),
        ("classify:\n  - name: r\n    when:\n      all:\n        - 5\n    kind: a\n",
         "classify[0].when.all[0]: a condition is a mapping: {field, <operator>} or all/any/not"
         " (line 5)"),
        ("classify:\n  - name: r\n    when:\n      not: {field: payload.x, startswith: a}\n"
         "    kind: a\n",
         "classify[0].when.not.startswith: unknown field (line 4)"),
        ("classify:\n  - name: r\n    when: {field: payload.x, exists: true}\n",
         "classify[0].kind: required (line 2)"),
        ("classify:\n  - name: r\n    when: {field: payload.x, exists: true}\n    kind: a\n"
         "    priority: 10\n",
         "classify[0].priority: Input should be less than or equal to 9 (line 5)"),
        ("destinations: [a]\nroutes:\n  k:\n    strategy: magic\n    destinations: [a]\n",
         "routes.k.strategy: unknown strategy 'magic' (expected 'first_healthy', 'fanout',"
         " 'weighted', 'least_loaded', 'thompson', 'ucb', 'greedy' or 'consensus') (line 4)"),
        ("destinations: [a]\nroutes:\n  k:\n    strategy: fanout\n    tiers:\n      - [a]\n"
         "      - []\n",
         "routes.k.tiers[1]: empty tier (line 7)"),
        ("destinations: [a]\nroutes:\n  k:\n    strategy: fanout\n    tiers: [a]\n",
         "routes.k.tiers[0]: must be a list, got string (line 5)"),
        ("destinations: [a]\nroutes:\n  k:\n    strategy: fanout\n    destinations: [a]\n"
         "    on_duplicate: keep\n",
         "routes.k.on_duplicate: unknown value 'keep' (expected 'drop' or 'dlq') (line 6)"),
        ("destinations: [a]\nroutes:\n  k:\n    strategy: consensus\n    destinations: [a]\n"
         "    consensus: {mad_k: 0.1}\n",
         "routes.k.consensus.mad_k: Input should be greater than or equal to 0.6745 (line 6)"),
        ("destinations: [a]\nroutes:\n  k:\n    strategy: thompson\n    destinations: [a]\n"
         "    bandit: {epsilon: 2}\n",
         "routes.k.bandit.epsilon: Input should be less than or equal to 1 (line 6)"),
        ("tenants:\n  acme: {rate: -1}\n",
         "tenants.acme.rate: Input should be greater than or equal to 0 (line 2)"),
        ("tenants:\n  acme: {burst: 5}\n", "tenants.acme.rate: required (line 2)"),
        ("redact:\n  detectors: [email, dna]\n",
         "redact.detectors[1]: unknown value 'dna' (expected 'email', 'phone', 'card', 'ssn',"
         " 'ipv4' or 'ipv6') (line 2)"),
        ("redact:\n  fields: [payload..x]\n",
         "redact.fields[0]: bad field path 'payload..x': empty segment (line 2)"),
        ("rollout:\n  mode: canary\n  candidate_file: x.yaml\n",
         "rollout: canary mode needs share (fraction of keys, 0..1) (line 1)"),
        ("rollout:\n  mode: shadow\n  share: 0.5\n  candidate_file: x.yaml\n",
         "rollout: share applies to mode canary; shadow mode uses sample (line 1)"),
        ("rollout:\n  mode: shadow\n", "rollout: give exactly one of candidate (inline) or"
         " candidate_file (line 1)"),
        ("rollout:\n  mode: shadow\n  sample: 1.5\n  candidate_file: x\n",
         "rollout.sample: Input should be less than or equal to 1 (line 3)"),
        ("rollout:\n  mode: blue-green\n  candidate_file: x\n",
         "rollout.mode: unknown value 'blue-green' (expected 'shadow' or 'canary') (line 2)"),
        ("routes: 5\n", "routes: must be a mapping, got number (line 1)"),
        ("surprise: 1\n", "surprise: unknown field (line 1)"),
    ],
)
def test_section_errors_name_path_reason_and_line(text: str, expected: str) -> None:
    assert one_issue(text).startswith(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (replaced(BASE, ("[slack, email]", "[slack, emial]")),
         "routes.alert.tiers[1][1]: undeclared destination 'emial' (did you mean 'email'?)"
         " (line 14)"),
        (replaced(BASE, ("[slack, email]", "[slack, slack]")),
         "routes.alert.tiers[1][1]: destination 'slack' appears more than once in this route"
         " (line 14)"),
        (BASE + "  other:\n    strategy: fanout\n",
         "routes.other: no destinations: give tiers (ordered fallbacks) or destinations"
         " (line 15)"),
        (BASE + "  other:\n    strategy: fanout\n    destinations: [pager]\n    tiers: [[pager]]\n",
         "routes.other: give either tiers or destinations, not both (line 15)"),
        (BASE + "  other:\n    strategy: fanout\n    destinations: [pager]\n"
         "    bandit: {seed: 1}\n",
         "routes.other.bandit: bandit parameters do not apply to strategy fanout (line 18)"),
        (BASE + "  other:\n    strategy: ucb\n    destinations: [pager]\n    consensus: {}\n",
         "routes.other.consensus: consensus parameters do not apply to strategy ucb (line 18)"),
        (replaced(BASE, ("kind: alert", "kind: page")),
         "classify[0].kind: rule 'crit' produces kind 'page', which has no route (add"
         " routes.page or set defaults.unrouted) (line 8)"),
        (replaced(BASE, ("kind: alert", "kind: dlq")), "classify[0].kind: kind 'dlq' is reserved"
         " (line 8)"),
        (BASE + "defaults:\n  unclassified: misc\n",
         "defaults.unclassified: kind 'misc' has no route (line 16)"),
        (BASE + "defaults:\n  unrouted: alrt\n",
         "defaults.unrouted: kind 'alrt' has no route (did you mean 'alert'?) (line 16)"),
        (BASE + "rollout:\n  mode: shadow\n  candidate:\n    rollout: {mode: shadow,"
         " candidate_file: x}\n",
         "rollout.candidate.rollout: a candidate policy cannot have its own rollout (line 18)"),
        (BASE + "rollout:\n  mode: shadow\n  candidate:\n    routes:\n      x:\n"
         "        strategy: fanout\n        destinations: [ghost]\n",
         "rollout.candidate.routes.x.destinations[0]: undeclared destination 'ghost' (line 21)"),
    ],
)
def test_cross_section_errors_name_path_reason_and_line(text: str, expected: str) -> None:
    assert one_issue(text) == expected


def test_duplicate_rule_names() -> None:
    text = replaced(BASE, ("routes:", "  - name: crit\n    when: {field: kind, exists: true}\n"
                                      "    kind: alert\nroutes:"))
    assert one_issue(text) == (
        "classify[1].name: duplicate rule name 'crit' (first used by classify[0]) (line 9)"
    )


def test_all_issues_are_reported_together() -> None:
    issues = issues_of("trust: {weights: {freshness: 2}}\nbreaker: {window_s: -1}\nnope: 1\n")
    assert [issue.split(":")[0] for issue in issues] == [
        "trust.weights.freshness", "breaker.window_s", "nope",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "policy is empty"),
        ("# only a comment\n", "policy is empty"),
        ("- a\n- b\n", "a policy is a mapping of sections (line 1)"),
        ("routes: {a: [\n", "invalid YAML: "),
        ("trust:\n  min_trust: 0.1\n  min_trust: 0.2\n",
         "trust.min_trust: duplicate key (line 3)"),
        ("x: !!python/object:os.system {}\n", "invalid YAML: "),
    ],
)
def test_document_level_errors(text: str, expected: str) -> None:
    assert one_issue(text).startswith(expected)


def test_yaml_syntax_error_has_a_line() -> None:
    assert one_issue("a: 1\nb: 2\nc: [\n  - d: :\n").endswith("(line 4)")


@pytest.mark.parametrize("broken", ["  slack: {capacity: 500", "  slack: [500", "  slack: 'x",
                                    " slack: {capacity: 500}", "\tslack: {capacity: 500}"])
def test_a_yaml_mistake_is_reported_at_its_own_line_not_where_the_parser_noticed(
    broken: str,
) -> None:
    lines = EXAMPLE.read_text().splitlines()
    assert lines[26] == "  slack: {capacity: 500}", "examples/policy.yaml drifted"
    lines[26] = broken
    with pytest.raises(PolicyError) as caught:
        load_policy("\n".join(lines) + "\n")
    [issue] = caught.value.fields()
    assert issue["line"] == 27, issue
    assert issue["message"].startswith("invalid YAML: ") and issue["path"] == ""


def test_direct_construction_runs_the_cross_checks_too() -> None:
    data = yaml.safe_load(replaced(BASE, ("[slack, email]", "[slack, ghost]")))
    with pytest.raises(ValidationError, match="undeclared destination 'ghost'"):
        Policy.model_validate(data)


def test_policy_is_frozen() -> None:
    policy = load_policy(BASE)
    with pytest.raises(ValidationError):
        policy.routes["alert"].strategy = "fanout"  # type: ignore[misc]


# --- version -------------------------------------------------------------------------------


def test_version_format_and_sensitivity() -> None:
    base = load_policy(BASE)
    version = policy_version(base)
    assert version.startswith("p-") and len(version) == 14
    assert policy_version(load_policy(BASE)) == version
    changed = load_policy(replaced(BASE, ("[slack, email]", "[email, slack]")))
    assert policy_version(changed) != version  # tier order is behaviour


def test_version_ignores_spelled_out_defaults_and_comments() -> None:
    spelled = (BASE + "defaults:\n  unclassified: dlq  # the default\n"
               "breaker: {half_open_probes: 1}\n")
    assert policy_version(load_policy(spelled)) == policy_version(load_policy(BASE))


def _shuffle(value: Any, draw: st.DrawFn) -> Any:
    if isinstance(value, dict):
        keys = draw(st.permutations(list(value)))
        return {key: _shuffle(value[key], draw) for key in keys}
    if isinstance(value, list):
        return [_shuffle(item, draw) for item in value]
    return value


@st.composite
def reordered_example(draw: st.DrawFn) -> str:
    data = yaml.safe_load(EXAMPLE.read_text())
    style = draw(st.sampled_from([None, True, False]))
    return yaml.safe_dump(_shuffle(data, draw), sort_keys=False, default_flow_style=style)


EXAMPLE_VERSION = policy_version(load_policy(EXAMPLE.read_text()))


@settings(max_examples=40, deadline=None)
@given(reordered_example())
def test_version_is_stable_under_key_reordering(text: str) -> None:
    assert policy_version(load_policy(text)) == EXAMPLE_VERSION


# --- diff ----------------------------------------------------------------------------------


def test_diff_lines() -> None:
    a = load_policy(BASE + "tenants: {acme: {rate: 5}}\n")
    text = replaced(BASE, ("first_healthy", "fanout"), ("capacity: 10", "capacity: 20"),
                    ("  email: {capacity: 20}", "  email: {capacity: 20}\n  sms: {}"))
    b = load_policy(text + "tenants: {beta: {rate: 1}}\n")
    lines = diff_policies(a, b)
    assert "~ routes.alert.strategy: first_healthy -> fanout" in lines
    assert "~ destinations.email.capacity: 10.0 -> 20.0" in lines
    assert "+ destinations.sms" in lines
    assert "- tenants.acme" in lines
    assert "+ tenants.beta" in lines
    assert diff_policies(a, a) == []


def test_diff_matches_rules_by_name() -> None:
    two = replaced(BASE, ("routes:", "  - name: other\n    when: {field: kind, exists: true}\n"
                                     "    kind: alert\nroutes:"))
    a = load_policy(two)
    data = yaml.safe_load(two)
    data["classify"].reverse()
    data["classify"][0]["kind"] = "alert"
    b = load_policy(yaml.safe_dump(data))
    assert diff_policies(a, b) == ["~ classify: rule order ['crit', 'other'] -> ['other', 'crit']"]
    data2 = copy.deepcopy(yaml.safe_load(two))
    data2["classify"][1]["priority"] = 4
    assert diff_policies(a, load_policy(yaml.safe_dump(data2))) == [
        "+ classify.other.priority: 4"
    ]
