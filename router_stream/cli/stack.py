"""``router-stream stack up|down|status``: a local Kafka + PostgreSQL without Docker."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from router_stream.cli import cli
from router_stream.stack import manager

_state_opt = click.option(
    "--state-dir", type=click.Path(path_type=Path), default=None,
    help="Where data, logs and pid files live [env ROUTER_STACK_DIR; /var/tmp/router-stream-USER].",
)
_kport_opt = click.option(
    "--kafka-port", type=int, default=None, help="Kafka's port [19092, or what `up` last used]."
)
_pport_opt = click.option(
    "--pg-port", type=int, default=None, help="PostgreSQL's port [15432, or what `up` last used]."
)


@cli.group()
def stack() -> None:
    """A local development stack: Apache Kafka (KRaft) and PostgreSQL, no Docker needed.

    \b
    Example:
      eval "$(router-stream stack up)"   # start, and export ROUTER_* for this shell
      router-stream stack status
      router-stream stack down --wipe

    \b
    With TLS and passwords (Kafka SASL_SSL + SCRAM, PostgreSQL TLS + scram-sha-256):
      export ROUTER_STACK_DIR=/var/tmp/rs-secure
      eval "$(router-stream stack up --secure --kafka-port 39092 --pg-port 35432)"
    """


@stack.command()
@_state_opt
@_kport_opt
@_pport_opt
@click.option(
    "--secure/--no-secure", default=None,
    help="TLS and passwords: Kafka SASL_SSL (SCRAM-SHA-512/256, PLAIN) and PostgreSQL TLS with "
         "scram-sha-256; CA, certificates and random passwords are created once in the state "
         "dir [what `up` last used; else --no-secure]. A state dir cannot switch modes.",
)
def up(
    state_dir: Path | None, kafka_port: int | None, pg_port: int | None, secure: bool | None
) -> None:
    """Start Kafka and PostgreSQL (reusing what already runs) and print the environment.

    The `export` lines go to stdout (so `eval "$(router-stream stack up)"` works); progress goes
    to stderr. With --secure the exports hold the generated passwords: keep them out of shell
    history and logs (they are also in STATE_DIR/secrets/passwords.json, mode 0600).

    \b
    Examples:
      eval "$(router-stream stack up)"
      eval "$(router-stream stack up --kafka-port 29092 --pg-port 25432)"
    """
    cfg = manager.make_config(state_dir, kafka_port=kafka_port, pg_port=pg_port, secure=secure)
    mode = " (secure: TLS + SASL/SCRAM)" if cfg.secure else ""
    click.echo(f"starting stack in {cfg.kafka.state_dir}{mode} …", err=True)
    report = manager.up(cfg)
    verb = "reused" if report.reused else "started"
    click.echo(
        f"stack {verb} in {report.seconds:.1f}s: kafka pid {report.kafka_pid} "
        f"({cfg.kafka.bootstrap}), postgres pid {report.postgres_pid}",
        err=True,
    )
    for key, value in cfg.env.items():
        click.echo(f"export {key}={shlex.quote(value)}")


@stack.command()
@_state_opt
@_kport_opt
@_pport_opt
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(
    state_dir: Path | None, kafka_port: int | None, pg_port: int | None, as_json: bool
) -> None:
    """Tell what runs where (pid, address, security, memory). Exit 1 if something is not running.

    \b
    Examples:
      router-stream stack status
      router-stream stack status --json | jq '.[] | select(.running | not)'
    """
    cfg = manager.make_config(state_dir, kafka_port=kafka_port, pg_port=pg_port)
    rows = manager.status(cfg)
    if as_json:
        click.echo(json.dumps([r.__dict__ | {"running": r.running} for r in rows]))
    else:
        for r in rows:
            rss = f"{r.rss_bytes / 2**20:.0f} MiB" if r.rss_bytes else "-"
            state = f"running (pid {r.pid})" if r.running else "stopped"
            click.echo(f"{r.name:<9} {state:<22} {r.address:<45} {r.security:<38} rss {rss}")
    if not all(r.running for r in rows):
        raise SystemExit(1)


@stack.command()
@_state_opt
@_kport_opt
@_pport_opt
@click.option("--wipe", is_flag=True, help="Also delete all data (topics, databases, logs).")
def down(state_dir: Path | None, kafka_port: int | None, pg_port: int | None, wipe: bool) -> None:
    """Stop exactly the processes `stack up` started (by pid).

    \b
    Examples:
      router-stream stack down
      router-stream stack down --wipe   # and delete topics, databases and logs
    """
    cfg = manager.make_config(state_dir, kafka_port=kafka_port, pg_port=pg_port)
    stopped = manager.down(cfg, wipe=wipe)
    click.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}"
               + (" (state wiped)" if wipe else ""), err=True)
