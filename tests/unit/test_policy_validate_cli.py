"""`router-stream policy validate FILE` on ten broken policy files (issue 5 acceptance).

Each file is the example policy with one realistic mistake — the kind an operator makes while
editing it. The command must exit 1 and name the path of the mistake (and its line), in the
human output and in ``--json``; the untouched example must still exit 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from router_stream.cli import _register, cli
from tests.support.policies import replaced

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.yaml"

# (what is broken, original text, replacement, the path the error must name)
BROKEN = [
    ("weights do not sum to 1", "deviation: 0.2, availability: 0.2}",
     "deviation: 0.2, availability: 0.3}", "trust.weights"),
    ("cooldown cap below the cooldown", "max_cooldown_s: 600", "max_cooldown_s: 5", "breaker"),
    ("unknown strategy", "strategy: thompson", "strategy: telepathy",
     "routes.notification.strategy"),
    ("route to an undeclared destination", "- [opsgenie, sms]", "- [opsgenie, smss]",
     "routes.alert.tiers[1][1]"),
    ("empty tier", "- [slack, email]            # fallback", "- []",
     "routes.alert.tiers[2]"),
    ("bad regex", r'regex: "(?i)\\b(down|outage|unreachable)\\b"', 'regex: "(down|outage"',
     "classify[2].when.any[0].regex"),
    ("regex RE2 cannot run", r'regex: "^app-"', r'regex: "^app-(?!test)"',
     "classify[4].when.regex"),
    ("a rule's kind has no route", "    kind: notification\n    priority: 3",
     "    kind: digest\n    priority: 3", "classify[3].kind"),
    ("priority out of range", "priority: 9", "priority: 12", "classify[1].priority"),
    ("unknown PII detector", "detectors: [email, phone, card, ssn, ipv4, ipv6]",
     "detectors: [email, passport]", "redact.detectors[1]"),
    ("negative tenant rate", "tiny-co: {rate: 10}", "tiny-co: {rate: -10}",
     "tenants.tiny-co.rate"),
]


def test_the_example_is_valid() -> None:
    _register()
    res = CliRunner().invoke(cli, ["policy", "validate", str(EXAMPLE)])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(("mistake", "old", "new", "path"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_policy_is_rejected_with_its_path(tmp_path: Path, mistake: str, old: str,
                                                   new: str, path: str) -> None:
    _register()
    text = EXAMPLE.read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(replaced(text, (old, new)))
    runner = CliRunner()

    human = runner.invoke(cli, ["policy", "validate", str(broken)])
    assert human.exit_code == 1, human.output
    assert f"{path}:" in human.output, human.output

    as_json = runner.invoke(cli, ["policy", "validate", "--json", str(broken)])
    assert as_json.exit_code == 1
    report = json.loads(as_json.output)
    assert report["valid"] is False
    named = [i for i in report["issues"] if i["path"] == path]
    assert named, report["issues"]
    assert all(isinstance(i["line"], int) and i["message"] for i in named), named
