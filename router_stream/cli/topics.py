"""``router-stream topics apply|list``: Kafka topics per topics/ (work: adapters/topics.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from router_stream.cli import cli
from router_stream.cli.terminal import cell
from router_stream.config import Settings
from router_stream.errors import ConfigError


def _policy_opt(what: str) -> Any:
    return click.option(
        "--policy", "policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help=f"Also {what} routed.<destination> for every destination this policy names "
             "[env ROUTER_POLICY_FILE].",
    )


def _dest_opt(what: str) -> Any:
    return click.option(
        "--destination", "-d", "destinations", multiple=True, metavar="NAME",
        help=f"Also {what} routed.<NAME> (repeatable).",
    )
_file_opt = click.option(
    "--file", "topics_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None, help="Topic declarations [ROUTER_TOPICS_FILE, else the topics/topics.yaml "
    "shipped with router-stream].",
)
_json_opt = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(f"invalid ROUTER_* settings: {exc}") from exc


def _destinations(
    settings: Settings, policy_file: Path | None, named: tuple[str, ...]
) -> list[str]:
    from router_stream.adapters.topics import policy_destinations

    policy = policy_file or (Path(settings.policy_file) if settings.policy_file else None)
    return sorted({*named, *(policy_destinations(policy) if policy else ())})


@cli.group()
def topics() -> None:
    """Kafka topics: create and verify them as topics/topics.yaml declares.

    Every name gets ROUTER_TOPIC_PREFIX in front.

    \b
    Example:
      router-stream topics apply --policy policy.yaml
      router-stream topics list --json
    """


@topics.command()
@_policy_opt("create/verify")
@_dest_opt("create/verify")
@_file_opt
@click.option("--alter-configs", is_flag=True,
              help="Set the configs of existing topics that differ from their declaration.")
@_json_opt
def apply(
    policy_file: Path | None, destinations: tuple[str, ...], topics_file: Path | None,
    alter_configs: bool, as_json: bool,
) -> None:
    """Create missing topics and verify existing ones (partitions, replication, configs).

    Without --alter-configs it never changes an existing topic: a difference is reported (exit
    code 2) for an operator to resolve. With it, the configs that differ are set as declared
    (one by one; the topic's other configs stay) and each change is printed; partitions and
    replication are never changed. On a cluster with fewer brokers than the declared
    replication factor, the factor is clamped with a warning (development stacks).

    \b
    Example:
      router-stream topics apply --policy policy.yaml
      router-stream topics apply -d pagerduty -d slack --json
      router-stream topics apply --policy policy.yaml --alter-configs
    """
    from router_stream.adapters.topics import apply_topics, configured_declarations

    settings = _settings()
    declarations = configured_declarations(settings, topics_file)
    wanted = _destinations(settings, policy_file, destinations)
    report = asyncio.run(apply_topics(settings, wanted, declarations,
                                      alter_configs=alter_configs))
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    for warning in report.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    for name in report.created:
        click.echo(f"created  {name}")
    for change in report.altered:
        click.echo(f"altered  {change}")
    for name in report.verified:
        click.echo(f"ok       {name}")


@topics.command("list")
@_policy_opt("list (as missing when absent)")
@_dest_opt("list")
@_file_opt
@_json_opt
def list_(
    policy_file: Path | None, destinations: tuple[str, ...], topics_file: Path | None,
    as_json: bool,
) -> None:
    """Show router-stream's topics under the prefix (and declared ones that are missing):
    partitions, replicas, cleanup policy and retention as the cluster has them. Changes nothing.

    \b
    Examples:
      router-stream topics list
      ROUTER_TOPIC_PREFIX=prod. router-stream topics list --json
    """
    from router_stream.adapters.topics import configured_declarations, list_topics

    settings = _settings()
    declarations = configured_declarations(settings, topics_file)
    wanted = _destinations(settings, policy_file, destinations)
    infos = asyncio.run(list_topics(settings, wanted, declarations))
    if as_json:
        click.echo(json.dumps([
            {"name": i.name, "logical": i.logical, "exists": i.exists,
             "partitions": i.partitions, "replication_factor": i.replication_factor,
             "cleanup.policy": i.configs.get("cleanup.policy"),
             "retention.ms": i.configs.get("retention.ms")}
            for i in infos
        ]))
        return
    from rich.console import Console
    from rich.table import Column, Table

    table = Table("partitions", "replicas", "cleanup.policy", "retention.ms")
    longest = max((len(i.name) for i in infos), default=5)
    table.columns.insert(0, Column("topic", no_wrap=True, min_width=longest))  # names whole
    for i in infos:
        if not i.exists:
            table.add_row(cell(i.name), cell("missing", "red"), "-", "-", "-")
        else:  # cells, not markup: the configs are the broker's
            table.add_row(*map(cell, (i.name, i.partitions, i.replication_factor,
                                      i.configs.get("cleanup.policy", "?"),
                                      i.configs.get("retention.ms", "?"))))
    console = Console()
    if not console.is_terminal:  # piped: no terminal width to respect, keep rows whole
        console = Console(width=longest + 70)
    console.print(table)
