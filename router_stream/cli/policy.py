"""``router-stream policy validate|show|diff|publish``: the policy file's lifecycle."""

from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path

import click

from router_stream.cli import cli
from router_stream.config import Settings
from router_stream.core.compiled import compile_policy
from router_stream.core.models import PolicyPublish
from router_stream.core.policy import Policy, diff_policies, load_policy, policy_version
from router_stream.errors import PolicyError, UserError

_file = click.argument("file", type=click.Path(path_type=Path, dir_okay=False))


def read_policy(file: Path) -> tuple[str, Policy]:
    """The file's text and its validated policy; a missing file is a user error (exit 1)."""
    try:
        text = file.read_text()
    except OSError as exc:
        raise UserError(f"cannot read policy file {file}: {exc.strerror}") from exc
    return text, load_policy(text, str(file))


@cli.group()
def policy() -> None:
    """Validate, inspect, compare and publish routing policies.

    \b
    Examples:
      router-stream policy validate examples/policy.yaml
      router-stream policy diff old.yaml new.yaml
      router-stream policy publish examples/policy.yaml   # hot reload on every worker
    """


@policy.command()
@_file
@click.option("--json", "as_json", is_flag=True, help="Print {valid, version, issues} as JSON.")
def validate(file: Path, as_json: bool) -> None:
    """Check FILE; print every issue with its path and line. Exit 0 valid, 1 invalid."""
    try:
        _, parsed = read_policy(file)
    except PolicyError as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "issues": exc.lines()}))
        else:
            click.secho(str(exc), fg="red", err=True)
        raise SystemExit(1) from None
    version = policy_version(parsed)
    if as_json:
        click.echo(json.dumps({"valid": True, "version": version, "issues": []}))
    else:
        click.echo(f"{file}: valid, version {version}")


@policy.command()
@_file
@click.option("--json", "as_json", is_flag=True)
def show(file: Path, as_json: bool) -> None:
    """Summarise FILE: version, destinations and how each kind is routed."""
    _, parsed = read_policy(file)
    compiled = compile_policy(parsed)
    summary = {
        "version": compiled.version,
        "destinations": list(compiled.destinations),
        "routes": {k: {"strategy": r.strategy, "tiers": [list(t) for t in r.tiers],
                       "retry_max_attempts": r.max_attempts}
                   for k, r in compiled.routes.items()},
        "rules": [rule.name for rule in parsed.classify],
        "tenants": {k: v.model_dump() for k, v in parsed.tenants.items()},
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"version       {summary['version']}")
    click.echo(f"destinations  {', '.join(summary['destinations'])}")
    for kind, route in summary["routes"].items():
        tiers = " -> ".join("|".join(t) for t in route["tiers"])
        click.echo(f"route {kind:<12} {route['strategy']:<14} {tiers}")


@policy.command()
@click.argument("old", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("new", type=click.Path(path_type=Path, dir_okay=False))
def diff(old: Path, new: Path) -> None:
    """What changes from OLD to NEW, one line per change (exit 0 either way)."""
    _, a = read_policy(old)
    _, b = read_policy(new)
    lines = diff_policies(a, b)
    click.echo(f"{policy_version(a)} -> {policy_version(b)}")
    for line in lines or ["(no changes)"]:
        click.echo(line)


@policy.command()
@_file
def publish(file: Path) -> None:
    """Validate FILE, then switch every worker to it through router.control (no restart).

    A file that fails validation is never sent. Workers validate again on receipt, so a bad
    policy can never replace a good one.
    """
    text, parsed = read_policy(file)
    text, parsed = _inline_candidate(file, text, parsed)
    version = policy_version(parsed)
    command = PolicyPublish(policy_yaml=text, version=version, source=str(file),
                            issued_by=getpass.getuser())
    asyncio.run(_publish(Settings(), command, text, parsed))
    click.echo(f"published {version} from {file}")


def _inline_candidate(file: Path, text: str, parsed: Policy) -> tuple[str, Policy]:
    """Workers cannot read the operator's files: a rollout ``candidate_file`` is inlined into
    the published text (and validated again)."""
    rollout = parsed.rollout
    if rollout is None or rollout.candidate_file is None:
        return text, parsed
    import yaml

    candidate_path = file.parent / rollout.candidate_file
    _, candidate = read_policy(candidate_path)
    data = yaml.safe_load(text)
    data["rollout"].pop("candidate_file")
    data["rollout"]["candidate"] = yaml.safe_load(candidate_path.read_text())
    inlined = yaml.safe_dump(data, sort_keys=False)
    return inlined, load_policy(inlined, f"{file} (candidate inlined)")


async def _publish(settings: Settings, command: PolicyPublish, text: str, parsed: Policy) -> None:
    """Send the command first: the policy is live once workers read it; then record it."""
    from router_stream.adapters import postgres
    from router_stream.adapters.control import send_control

    await send_control(settings, command)
    conn = await postgres.connect(settings)
    try:
        await postgres.record_policy_version(
            conn, command.version, text, status="active", published_by=command.issued_by or "",
            policy_json=parsed.model_dump(mode="json", by_alias=True),
        )
    finally:
        await conn.close()
