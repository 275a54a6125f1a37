"""Hostile policies and control commands: each is refused with one line, never a hang or a crash.

Bandit priors near the float range (and arms restored with such counts), ``"inf"``/``"nan"`` as
a control command's number, field paths with non-ASCII or endless digits, integers beyond 64
bits, and YAML merge keys (``<<``) of merges that expand exponentially.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from router_stream.cli import _register, cli
from router_stream.core.compiled import load_compiled
from router_stream.core.models import DlqReason, PolicyPublish
from router_stream.core.overrides import Override, OverrideKind
from router_stream.core.parsing import Rejection, parse_control
from router_stream.core.policy.loading import MAX_NODES, load_policy
from router_stream.core.strategies.bandits import BanditArm, BanditConfig, beta_sample, thompson
from router_stream.errors import PolicyError
from router_stream.worker.policy_source import compile_policy_text

ROUTES = "destinations: {slack: {}}\nroutes: {alert: {strategy: first_healthy, tiers: [[slack]]}}\n"


def policy_issues(text: str) -> list[tuple[Any, Any, Any]]:
    with pytest.raises(PolicyError) as caught:
        load_policy(text)
    return [(i["path"], i["line"], i["message"]) for i in caught.value.fields()]


# --- bandit priors and Beta draws ------------------------------------------------------------


@pytest.mark.parametrize("prior", ["1.0e+308", "1.0e+200", "1000000.5"])
@pytest.mark.parametrize("field", ["prior_alpha", "prior_beta"])
def test_a_bandit_prior_beyond_a_million_is_refused_with_its_path(field: str, prior: str) -> None:
    text = ("destinations: {slack: {}, email: {}}\n"
            "routes:\n"
            "  alert:\n"
            "    strategy: thompson\n"
            "    destinations: [slack, email]\n"
            f"    bandit: {{{field}: {prior}}}\n")
    assert policy_issues(text) == [
        (f"routes.alert.bandit.{field}", 6, "Input should be less than or equal to 1000000"),
    ]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("a", "b"), [
    (1e308, 1e308), (1e200, 1e200), (1e154, 1e154),  # Cheng's BB: a NaN loop, or 2ab overflows
    (1.5, 1e308), (1.0000001, 1e308),
    (0.5, 1e308), (1e308, 0.5),  # the library's gamma draws of an overflowing shape
])
def test_a_beta_draw_returns_near_the_mean_for_any_finite_positive_parameters(
        a: float, b: float) -> None:
    rng = random.Random(0)
    mean = 1.0 / (1.0 + b / a)
    for _ in range(100):
        x = beta_sample(rng, a, b)
        assert 0.0 <= x <= 1.0
        assert x == pytest.approx(mean, abs=1e-6)


@pytest.mark.timeout(10)
def test_thompson_decides_with_arms_restored_with_counts_near_the_float_range() -> None:
    arms = {"slack": BanditArm(alpha=1e308, beta=1.0), "email": BanditArm(alpha=1.5, beta=1e308)}
    chosen = thompson((("email", "slack"),), (), arms, random.Random(1), BanditConfig())
    assert chosen is not None and chosen.destinations == ("slack",)


# --- control commands ------------------------------------------------------------------------

_OVERRIDE = '"type":"override_set","override_id":"o1","action":"drain","target":"slack"'


@pytest.mark.parametrize(("fields", "path"), [
    (f'{_OVERRIDE},"expires_at":"inf"', "override_set.expires_at"),
    (f'{_OVERRIDE},"expires_at":"Infinity"', "override_set.expires_at"),
    (f'{_OVERRIDE},"expires_at":"-inf"', "override_set.expires_at"),
    (f'{_OVERRIDE},"expires_at":"nan"', "override_set.expires_at"),
    (f'{_OVERRIDE},"expires_at":1e300,"issued_at":"nan"', "override_set.issued_at"),
    ('"type":"override_clear","override_id":"o1","issued_at":"NaN"', "override_clear.issued_at"),
    ('"type":"breaker_force","target":"slack","state":"open","expires_at":"inf"',
     "breaker_force.expires_at"),
    ('"type":"breaker_reset","target":"slack","issued_at":"nan"', "breaker_reset.issued_at"),
    ('"type":"policy_publish","version":"p-x","policy_yaml":"x","issued_at":"Infinity"',
     "policy_publish.issued_at"),
    ('"type":"rollout_rollback","candidate_version":"p-x","issued_at":"-Infinity"',
     "rollout_rollback.issued_at"),
])
def test_a_control_command_with_a_non_finite_number_is_refused_in_one_line(
        fields: str, path: str) -> None:
    refused = parse_control(("{" + fields + "}").encode())
    assert refused == Rejection(DlqReason.INVALID_SIGNAL, f"{path}: Input should be a finite number")


def test_an_override_cannot_be_built_with_a_non_finite_time() -> None:
    Override("o1", OverrideKind.DRAIN, "slack", expires_at=1.9e9, created_at=1.8e9)
    with pytest.raises(ValueError, match="finite"):
        Override("o1", OverrideKind.DRAIN, "slack", expires_at=math.inf)
    with pytest.raises(ValueError, match="finite"):
        Override("o1", OverrideKind.DRAIN, "slack", expires_at=1.9e9, created_at=math.nan)


# --- field paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(("segment", "shown"), [
    ("²", "'²'"), ("٣", "'٣'"), ("1" * 19, "'1111111111111111111'"),
    ("1" * 5000, "'11111111111111111111...'"),
])
def test_a_path_segment_of_digits_that_is_no_list_index_is_refused(segment: str, shown: str) -> None:
    text = (f"{ROUTES}classify:\n"
            f"  - {{name: r, when: {{field: payload.items.{segment}, exists: true}}, kind: alert}}\n"
            f"redact: {{fields: [payload.{segment}.x]}}\n")
    why = f"bad field path: segment {shown} is not a list index (1-18 ASCII digits)"
    assert policy_issues(text) == [("classify[0].when.field", 4, why), ("redact.fields[0]", 5, why)]


# --- integers --------------------------------------------------------------------------------


def test_an_integer_beyond_64_bits_is_a_policy_error_with_its_path() -> None:
    rule = "  - {{name: r, when: {{field: payload.n, in: [{0}, {1}]}}, kind: alert}}\n"
    load_compiled(f"{ROUTES}classify:\n" + rule.format(2**64 - 1, -(2**63)))  # 64 bits: held
    with pytest.raises(PolicyError) as caught:
        load_compiled(f"{ROUTES}classify:\n" + rule.format(123456789012345678901234567890, 1))
    assert caught.value.lines() == ["classify[0].when.in[0]: integer beyond 64 bits (line 4)"]


def test_an_integer_beyond_64_bits_anywhere_is_reported_where_it_is() -> None:
    text = ("destinations: {slack: {}}\n"
            "classify:\n"
            f"  - {{name: r, when: {{field: payload.n, equals: {{a: [1, {-(2**63) - 1}]}}}},"
            " kind: alert}\n"
            "routes: {alert: {strategy: thompson, destinations: [slack],"
            " bandit: {seed: 0x1FFFFFFFFFFFFFFFFFFFF}}}\n")
    assert policy_issues(text) == [
        ("classify[0].when.equals.a[1]", 3, "integer beyond 64 bits"),
        ("routes.alert.bandit.seed", 4, "integer beyond 64 bits"),
    ]


def test_policy_validate_prints_one_line_for_an_integer_beyond_64_bits(tmp_path: Path) -> None:
    path = tmp_path / "bigint.yaml"
    path.write_text(f"{ROUTES}classify:\n"
                    "  - {name: r, when: {field: payload.n, in: [123456789012345678901234567890]},"
                    " kind: alert}\n")
    _register()
    result = CliRunner().invoke(cli, ["policy", "validate", str(path)])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.exception
    assert "classify[0].when.in[0]: integer beyond 64 bits (line 4)" in result.output
    assert "Traceback" not in result.output


# --- YAML merge keys -------------------------------------------------------------------------


def merge_bomb(levels: int) -> str:
    """Every level merges the one before twice: 2**levels entries from ~30 bytes a level."""
    lines = ["l0: &l0 {x: 1}"]
    lines += [f"l{i}: &l{i} {{<<: [*l{i - 1}, *l{i - 1}]}}" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(5)
@pytest.mark.parametrize("levels", [18, 30])
def test_merge_keys_that_expand_exponentially_are_refused_before_construction(levels: int) -> None:
    assert policy_issues(merge_bomb(levels)) == [
        ("", None, f"merge keys (<<) expand the document to more than {MAX_NODES:,}"
                   " mapping entries"),
    ]


@pytest.mark.timeout(5)
def test_a_merge_bomb_on_router_control_is_refused_like_any_invalid_policy() -> None:
    cmd = parse_control(orjson.dumps({"type": "policy_publish", "version": "p-x",
                                      "policy_yaml": ROUTES + merge_bomb(30)}))
    assert isinstance(cmd, PolicyPublish)
    with pytest.raises(PolicyError) as caught:
        compile_policy_text(cmd.policy_yaml, f"policy {cmd.version}")  # as every worker does
    assert caught.value.lines() == [
        f"merge keys (<<) expand the document to more than {MAX_NODES:,} mapping entries"]


def test_a_merge_of_an_enclosing_mapping_is_refused_and_a_plain_merge_still_loads() -> None:
    shared = "destinations: {slack: {}, email: {}}\nroutes:\n"
    merged = load_policy(shared + "  alert: &base {strategy: first_healthy, tiers: [[slack]]}\n"
                                  "  page: {<<: *base}\n")
    assert merged.routes["page"].tier_list() == [["slack"]]
    text = shared + "  alert: &base {strategy: first_healthy, tiers: [[slack]], b: {<<: *base}}\n"
    assert policy_issues(text) == [
        ("", 3, "a merge key (<<) merges a mapping that encloses it"),
    ]
