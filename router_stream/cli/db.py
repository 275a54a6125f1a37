"""``router-stream db migrate|status``: the Postgres schema (adapters/postgres/migrations.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click
from pydantic import ValidationError

from router_stream.cli import cli
from router_stream.cli.terminal import cell
from router_stream.config import Settings
from router_stream.errors import ConfigError

_dir_opt = click.option(
    "--migrations-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Directory of NNN_name.sql files [the migrations shipped with router-stream].",
)
_json_opt = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(f"invalid ROUTER_* settings: {exc}") from exc


@cli.group()
def db() -> None:
    """The Postgres schema: apply and inspect migrations (ROUTER_DATABASE_URL).

    \b
    Example:
      router-stream db migrate
      router-stream db status --json
    """


@db.command()
@_dir_opt
@_json_opt
def migrate(migrations_dir: Path | None, as_json: bool) -> None:
    """Apply pending migrations in order, each once, in its own transaction.

    Safe to run from several processes at once (an advisory lock serialises them). Refuses,
    with exit code 1, when an already-applied file was edited.

    \b
    Example:
      ROUTER_DATABASE_URL=postgresql://router@127.0.0.1:15432/router router-stream db migrate
    """
    from router_stream.adapters.postgres import migrate_database

    applied = asyncio.run(migrate_database(_settings(), migrations_dir))
    if as_json:
        click.echo(json.dumps({"applied": applied}))
    elif applied:
        for name in applied:
            click.echo(f"applied {name}")
    else:
        click.echo("database is up to date")


@db.command()
@_dir_opt
@_json_opt
def status(migrations_dir: Path | None, as_json: bool) -> None:
    """Show each migration: applied, pending, changed (edited after applying) or missing.

    \b
    Example:
      router-stream db status
      router-stream db status --json | jq '.[] | select(.state != "applied")'
    """
    from router_stream.adapters.postgres import database_status

    states = asyncio.run(database_status(_settings(), migrations_dir))
    if as_json:
        click.echo(json.dumps([s.as_dict() for s in states]))
        return
    from rich.console import Console
    from rich.table import Column, Table

    # Names are what an operator greps for: folded on a narrow terminal, never cut with "…".
    table = Table(Column("migration", overflow="fold"), "state", "applied at", "sha256")
    colours = {"applied": "green", "pending": "yellow", "changed": "red", "missing": "red"}
    for s in states:
        applied_at = s.applied_at.strftime("%Y-%m-%d %H:%M:%S%z") if s.applied_at else "-"
        # cells, not markup: a migration the database lists is named by its row
        table.add_row(cell(s.filename), cell(s.state, colours[s.state]), cell(applied_at),
                      cell(s.checksum[:12]))
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)
