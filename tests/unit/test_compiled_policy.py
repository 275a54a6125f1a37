"""The example policy compiles onto the engine's types and routes the kinds it declares."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import orjson
from click.testing import CliRunner

from router_stream.cli import _register, cli
from router_stream.core.compiled import load_compiled
from router_stream.core.engine import RouterEngine
from router_stream.core.policy import load_policy
from tests.support.engine import NOW, Rec
from tests.support.policies import edited

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.yaml"


def test_the_core_reads_the_policy_sections_themselves():
    """One definition: trust and bandit settings are the sections; breaker and consensus
    configs carry every field of theirs, plus the core's own settings at their defaults."""
    text = EXAMPLE.read_text()
    compiled = load_compiled(text, str(EXAMPLE))
    policy = load_policy(text, str(EXAMPLE))
    assert compiled.trust_params == policy.trust
    assert compiled.trust_weights == policy.trust.weights
    assert compiled.routes["notification"].bandit == policy.routes["notification"].bandit
    assert asdict(compiled.breaker) == {**asdict(policy.breaker), "window_buckets": 12}
    consensus = compiled.routes["observation"].consensus
    section = policy.routes["observation"].consensus
    assert consensus is not None and section is not None
    assert asdict(consensus) == {**asdict(section), "scale_floor": 1e-9}


def test_example_policy_compiles_and_routes_each_kind():
    compiled = load_compiled(EXAMPLE.read_text(), str(EXAMPLE))
    assert compiled.version.startswith("p-")
    assert {"alert", "notification", "observation"} <= set(compiled.routes)
    engine = RouterEngine(compiled, seed=1)
    signals = [
        {"signal_id": "a1", "sender_id": "mon", "payload": {"severity": "critical"}},
        {"signal_id": "n1", "sender_id": "app-billing", "payload": {"text": "hi"}},
        {"signal_id": "o0", "sender_id": "probe", "metric": "cpu", "source_id": "probe-a",
         "value": 0.5},  # min_sources is 2: the first observation alone is not a consensus
        {"signal_id": "o1", "sender_id": "probe", "metric": "cpu", "source_id": "probe-b",
         "value": 0.5},
    ]
    result = engine.decide_batch([Rec(orjson.dumps(s), i) for i, s in enumerate(signals)], NOW)
    assert [(d.entry.signal_id, d.entry.reason.value) for d in result.dlq] == [
        ("o0", "no_healthy_destination")]
    kinds = {d.signal_id: (d.kind, d.strategy) for d in result.decisions}
    assert kinds == {"a1": ("alert", "first_healthy"), "n1": ("notification", "thompson"),
                     "o1": ("observation", "consensus")}
    assert result.decisions[0].destinations == ["pagerduty"]
    assert result.decisions[0].policy_version == compiled.version


def test_policy_cli_validate_exit_codes(tmp_path: Path):
    _register()
    runner = CliRunner()
    ok = runner.invoke(cli, ["policy", "validate", str(EXAMPLE), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["valid"] is True
    bad = tmp_path / "bad.yaml"
    bad.write_text(edited(EXAMPLE.read_text(), {"routes.notification.strategy": "telepathy"}))
    res = runner.invoke(cli, ["policy", "validate", str(bad), "--json"])
    assert res.exit_code == 1
    issues = json.loads(res.output)["issues"]
    assert any(i["path"] == "routes.notification.strategy" and i["line"] for i in issues), issues
    missing = runner.invoke(cli, ["policy", "validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 1


def test_policy_cli_diff_names_the_change(tmp_path: Path):
    _register()
    changed = tmp_path / "new.yaml"
    changed.write_text(edited(EXAMPLE.read_text(), {"routes.notification.strategy": "ucb"}))
    res = CliRunner().invoke(cli, ["policy", "diff", str(EXAMPLE), str(changed)])
    assert res.exit_code == 0, res.output
    assert "~ routes.notification.strategy: thompson -> ucb" in res.output


def _with_tenants(tenants: str) -> str:
    text = EXAMPLE.read_text()
    start = text.index("\ntenants:")
    end = text.index("\n\n", start + 1)
    return text[:start] + "\ntenants:\n" + tenants + text[end:]


def test_unknown_tenants_sharing_one_bucket_are_rate_limited_together():
    text = _with_tenants("  default: {rate: 0, burst: 3, shared: true}\n")
    engine = RouterEngine(load_compiled(text, "shared.yaml"), seed=1)
    signals = [{"signal_id": f"s{i}", "sender_id": "mon", "tenant": f"spoof-{i}",
                "payload": {"severity": "critical"}} for i in range(10)]
    result = engine.decide_batch([Rec(orjson.dumps(s), i) for i, s in enumerate(signals)], NOW)
    assert len(result.decisions) == 3
    assert [d.entry.reason.value for d in result.dlq] == ["rate_limited"] * 7


def test_unknown_tenant_options_compile_and_are_refused_on_a_named_tenant(tmp_path: Path):
    text = _with_tenants("  acme: {rate: 5}\n  default: {rate: 1, total: {rate: 50, burst: 100},"
                         " max_buckets: 1000}\n")
    unknown = load_compiled(text, "total.yaml").unknown_tenants
    assert (unknown.shared, unknown.max_buckets) == (False, 1000)
    assert unknown.total is not None and (unknown.total.rate, unknown.total.burst) == (50, 100)
    named = tmp_path / "named.yaml"
    named.write_text(_with_tenants("  acme: {rate: 5, shared: true}\n"))
    _register()
    res = CliRunner().invoke(cli, ["policy", "validate", str(named)])
    assert res.exit_code == 1
    assert "tenants.acme.shared: shared applies to tenants the policy does not name" in res.output
