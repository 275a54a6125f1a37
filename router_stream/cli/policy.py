"""``router-stream policy validate|show|diff|publish|active|rollback``: the policy file's
lifecycle, and which worker runs which version (``policy show`` without a file)."""

from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path

import click

from router_stream.cli import cli
from router_stream.cli.terminal import cell, printable
from router_stream.config import Settings
from router_stream.core.compiled import compile_policy
from router_stream.core.heartbeat import FleetView, WorkerHeartbeat
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
@click.option("--json", "as_json", is_flag=True,
              help="Print {valid, version, issues: [{path, line, message}]} as JSON.")
def validate(file: Path, as_json: bool) -> None:
    """Check FILE; print every issue with its path and line. Exit 0 valid, 1 invalid.

    \b
    Examples:
      router-stream policy validate examples/policy.yaml
      router-stream policy validate new.yaml --json | jq '.issues[] | "\\(.line): \\(.message)"'
    """
    try:
        _, parsed = read_policy(file)
    except PolicyError as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "issues": exc.fields()}))
        else:
            click.secho(str(exc), fg="red", err=True)
        raise SystemExit(1) from None
    version = policy_version(parsed)
    if as_json:
        click.echo(json.dumps({"valid": True, "version": version, "issues": []}))
    else:
        click.echo(f"{file}: valid, version {version}")


@policy.command()
@click.argument("file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the same as JSON (for scripts).")
@click.option("--all", "include_gone", is_flag=True,
              help="Also list workers stopped, failed or stale for more than an hour.")
@click.option("--source", type=click.Choice(["postgres", "kafka"]), default=None,
              help="Where the workers' heartbeats are: worker_heartbeats in Postgres, or the "
                   "router.workers topic [postgres; kafka when ROUTER_PERSIST=false].")
def show(file: Path | None, as_json: bool, include_gone: bool, source: str | None) -> None:
    """The active policy version and which worker runs which; or summarise FILE.

    Without FILE: every worker's id, group, partitions, the policy version it decides with
    (marked when it is not the active one), its rollout, when it was last heard from and its
    status. Workers silent for more than 3 heartbeat intervals are `stale`.

    \b
    Examples:
      router-stream policy show
      router-stream policy show --json | jq '.workers[] | select(.on_active_version == false)'
      router-stream policy show examples/policy.yaml
    """
    if file is None:
        settings = Settings()
        view = asyncio.run(policy_status(
            settings, source=source or ("postgres" if settings.persist else "kafka"),
            include_gone=include_gone))
        _print_fleet(view, settings, as_json)
        return
    if include_gone or source is not None:
        raise UserError("--all and --source describe the running workers: not with a FILE")
    _print_file_summary(file, as_json)


def _print_file_summary(file: Path, as_json: bool) -> None:
    """Version, destinations and how each kind is routed."""
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
    """What changes from OLD to NEW, one line per change (exit 0 either way).

    \b
    Example:
      router-stream policy diff examples/policy.yaml new.yaml
    """
    _, a = read_policy(old)
    _, b = read_policy(new)
    lines = diff_policies(a, b)
    click.echo(f"{policy_version(a)} -> {policy_version(b)}")
    for line in lines or ["(no changes)"]:
        click.echo(line)


@policy.command()
@_file
@click.option("--create-topics", is_flag=True,
              help="First create the missing topics its destinations need (as `topics apply`).")
def publish(file: Path, create_topics: bool) -> None:
    """Validate FILE, then switch every worker to it through router.control (no restart).

    A file that fails validation is never sent, nor one whose destinations have no
    routed.<destination> topic (exit 1 naming them; --create-topics creates them first).
    Workers validate again on receipt, so a bad policy can never replace a good one.

    \b
    Examples:
      router-stream policy publish examples/policy.yaml
      router-stream policy publish new.yaml --create-topics
    """
    text, parsed = read_policy(file)
    text, parsed = _inline_candidate(file, text, parsed)
    version = policy_version(parsed)
    command = PolicyPublish(policy_yaml=text, version=version, source=str(file),
                            issued_by=getpass.getuser())
    asyncio.run(publish_policy(Settings(), command, file, text, parsed,
                               create_topics=create_topics))
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


async def publish_policy(settings: Settings, command: PolicyPublish, file: Path, text: str,
                         parsed: Policy, *, create_topics: bool = False) -> None:
    """Check (or create) the topics it routes to, send the command — the policy is live once
    workers read it — then record it."""
    from router_stream.adapters import postgres
    from router_stream.adapters.control import send_control
    from router_stream.adapters.preflight import check_policy_topics

    compiled = compile_policy(parsed)
    if create_topics:
        from router_stream.adapters.topics import apply_topics
        from router_stream.core.compiled import routable_destinations

        await apply_topics(settings, routable_destinations(compiled))
    await check_policy_topics(settings, compiled, file)
    await send_control(settings, command)
    conn = await postgres.connect(settings)
    try:
        await postgres.record_policy_version(
            conn, command.version, text, status="active", published_by=command.issued_by or "",
            policy_json=parsed.model_dump(mode="json", by_alias=True),
        )
    finally:
        await conn.close()


@policy.command("active")
@click.option("--json", "as_json", is_flag=True,
              help="Print [{version, status, status_reason, published_at, published_by}] as "
                   "JSON, newest first.")
def active(as_json: bool) -> None:
    """The active policy version and the recent history, from policy_versions.

    Status is one of active, candidate, superseded, rolled_back, rejected (a worker refused it).

    \b
    Example:
      router-stream policy active --json
    """
    rows = asyncio.run(policy_history(Settings()))
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no policy has been published yet")
        return
    for r in rows:
        marker = "*" if r["status"] == "active" else " "
        reason = f"  ({r['status_reason']})" if r["status_reason"] else ""
        when = f"{r['published_at']:%Y-%m-%d %H:%M:%S}"
        # a version's status reason and publisher may be what a router.control record said
        click.echo(printable(f"{marker} {r['version']}  {r['status']:<11} {when}"
                             f"  {r['published_by'] or '-'}{reason}"))


@policy.command()
@click.option("--to", "to_version", help="Version to return to [the one active before].")
@click.option("--reason", default="", help="Why (recorded on the version rolled back).")
def rollback(to_version: str | None, reason: str) -> None:
    """Switch every worker back to the previous policy (or --to VERSION).

    The version to return to is republished through router.control; the one rolled back is
    marked `rolled_back` in policy_versions.

    \b
    Examples:
      router-stream policy rollback --reason "new tiers dropped pages"
      router-stream policy rollback --to p-5e955a450e20
    """
    current, target = asyncio.run(rollback_policy(Settings(), to_version, reason,
                                                  getpass.getuser()))
    click.echo(f"rolled back {current} -> {target}")


async def policy_history(settings: Settings, limit: int = 20) -> list[dict[str, object]]:
    """policy_versions, newest first."""
    from router_stream.adapters import postgres

    conn = await postgres.connect(settings)
    try:
        rows = await conn.fetch(
            "SELECT version, status, status_reason, published_at, published_by"
            " FROM policy_versions ORDER BY published_at DESC, created_at DESC LIMIT $1", limit)
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def rollback_policy(settings: Settings, to_version: str | None, reason: str,
                          issued_by: str) -> tuple[str, str]:
    """Republish the previous (or the given) version; returns (rolled back, now active)."""
    from router_stream.adapters import postgres
    from router_stream.adapters.control import send_control

    conn = await postgres.connect(settings)
    try:
        current = await conn.fetchrow(
            "SELECT version FROM policy_versions WHERE status = 'active'")
        if current is None:
            raise UserError("no active policy to roll back (see `router-stream policy active`)")
        if to_version is None:
            target = await conn.fetchrow(
                "SELECT version, policy FROM policy_versions WHERE status = 'superseded'"
                " ORDER BY status_changed_at DESC, published_at DESC LIMIT 1")
        else:
            target = await conn.fetchrow(
                "SELECT version, policy FROM policy_versions WHERE version = $1", to_version)
        if target is None:
            raise UserError(f"no policy version {to_version!r} recorded" if to_version
                            else "no earlier policy to return to")
        if target["version"] == current["version"]:
            raise UserError(f"{target['version']} is already active")
        text = target["policy"]
        parsed = load_policy(text, f"policy_versions/{target['version']}")
        command = PolicyPublish(policy_yaml=text, version=policy_version(parsed),
                                source=f"rollback of {current['version']}", issued_by=issued_by)
        await send_control(settings, command)
        await postgres.record_policy_version(conn, command.version, text, status="active",
                                             published_by=issued_by)
        await postgres.mark_policy_status(conn, current["version"], "rolled_back",
                                          reason or f"rolled back to {command.version}")
    finally:
        await conn.close()
    return current["version"], command.version


# --- which worker runs which version (`policy show` without a file) -----------------------------


async def policy_status(settings: Settings, *, source: str = "postgres",
                        include_gone: bool = False) -> FleetView:
    """The active version and every worker's last heartbeat, judged on the store's clock.

    ``source="postgres"``: ``policy_versions`` and ``worker_heartbeats``. ``source="kafka"``
    (deployments without Postgres): the last policy published on ``router.control`` that
    passes validation — what the workers themselves switched to — and ``router.workers``.
    """
    from router_stream.core.heartbeat import fleet_view

    if source == "postgres":
        active, heartbeats, now, notes = await _from_postgres(settings)
    elif source == "kafka":
        active, heartbeats, now, notes = await _from_kafka(settings)
    else:
        raise UserError(f"unknown heartbeat source {source!r} (postgres or kafka)")
    return fleet_view(heartbeats, active, now, include_gone=include_gone, notes=notes)


_Status = tuple[str | None, list[WorkerHeartbeat], float, list[str]]


async def _from_postgres(settings: Settings) -> _Status:
    from router_stream.adapters import postgres
    from router_stream.adapters.heartbeat_store import (
        not_migrated_as_user_error,
        read_postgres_heartbeats,
    )

    conn = await postgres.connect(settings)
    try:
        with postgres.unavailable_as_router_error("reading policy_versions"), \
                not_migrated_as_user_error():
            active = await conn.fetchval(
                "SELECT version FROM policy_versions WHERE status = 'active'")
        heartbeats, now = await read_postgres_heartbeats(conn, settings.topic_prefix)
    finally:
        await conn.close()
    notes = [] if active is not None else [
        "no policy has been published: each worker runs its ROUTER_POLICY_FILE"]
    return active, heartbeats, now, notes


async def _from_kafka(settings: Settings) -> _Status:
    import time

    from router_stream.adapters.heartbeat_store import read_kafka_heartbeats

    (active, notes), heartbeats = await asyncio.gather(
        _last_published_version(settings), read_kafka_heartbeats(settings))
    return active, heartbeats, time.time(), notes


async def _last_published_version(settings: Settings) -> tuple[str | None, list[str]]:
    """What the workers switched to last: they replay router.control and keep the last policy
    that validates, so the same rule here gives the version they should all be on."""
    from router_stream.adapters.kafka_io import read_records
    from router_stream.config import CONTROL
    from router_stream.core.models import PolicyReload
    from router_stream.core.parsing import parse_control
    from router_stream.worker.policy_source import compile_policy_text

    commands: list[PolicyPublish | PolicyReload] = []
    async for record in read_records(settings, settings.topic(CONTROL), until_end=True):
        cmd = parse_control(record.value)
        if isinstance(cmd, PolicyPublish | PolicyReload):
            commands.append(cmd)
    for cmd in reversed(commands):
        if isinstance(cmd, PolicyReload):
            return None, ["the last policy command was a reload: each worker re-read its "
                          "ROUTER_POLICY_FILE, so the active version is the one they report"]
        try:
            return compile_policy_text(cmd.policy_yaml, f"policy {cmd.version}").version, []
        except PolicyError:
            continue  # the workers rejected it too and kept the one before
    return None, ["no policy has been published: each worker runs its ROUTER_POLICY_FILE"]


def _print_fleet(view: FleetView, settings: Settings, as_json: bool) -> None:
    from router_stream.core.heartbeat import (
        format_ago,
        format_partitions,
        format_rollout,
        format_version,
    )

    if as_json:
        click.echo(json.dumps(view.as_json(), indent=2))
        return
    click.echo(f"active policy  {printable(view.active_version or 'unknown')}")
    for note in view.notes:
        click.echo(f"               ({printable(note)})")
    if not view.rows:
        click.echo("no worker has recorded a heartbeat" + (
            f" ({view.hidden} stopped or stale for over an hour: --all)" if view.hidden else ""))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("worker", "group", "partitions", "policy", "rollout", "last seen", "status",
                  "signals")
    for row in view.rows:
        hb = row.heartbeat
        style = None if row.state in ("running", "draining") and row.on_active is not False \
            else "yellow"
        cells = (hb.worker_id, hb.group_id, format_partitions(hb.partitions, settings.topic_prefix),
                 format_version(row), format_rollout(hb), format_ago(row.age_s), row.state,
                 str(hb.signals_processed))
        # cells, not markup: a heartbeat's ids are whatever its writer put there
        table.add_row(*map(cell, cells), style=style)
    console = Console()
    if not console.is_terminal:  # piped or captured: whole rows, no wrapping at 80 columns
        console = Console(width=400)
    console.print(table)
    click.echo(_summary(view))


def _summary(view: FleetView) -> str:
    states: dict[str, int] = {}
    for row in view.rows:
        states[row.state] = states.get(row.state, 0) + 1
    parts = [f"{len(view.rows)} worker(s): "
             + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))]
    behind = sum(1 for r in view.rows
                 if r.state in ("running", "draining") and r.on_active is False)
    if behind:
        parts.append(f"{behind} live worker(s) NOT on the active version")
    if view.hidden:
        parts.append(f"{view.hidden} more stopped/failed/stale for over an hour (--all)")
    return "; ".join(parts)
