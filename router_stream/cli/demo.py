"""``router-stream demo``: the main job end to end on a real local stack."""

from __future__ import annotations

import click

from router_stream.cli import cli


@cli.command()
def demo() -> None:
    """Run router-stream end to end on the local Kafka + PostgreSQL and show what happened.

    Starts the stack if needed, applies migrations and topics under a fresh prefix, runs a
    worker in burst mode, produces healthy / failing / recovered traffic, then prints decisions
    per destination, breaker transitions and every DLQ entry (id, reason, error). Exit 0 when
    every signal is accounted for and the worker logged no error; its temporary directory is
    removed then (kept and named otherwise). The stack is left running: `stack down` stops it.

    \b
    Example:
      router-stream demo
    """
    from router_stream.demo import run_demo

    raise SystemExit(run_demo(say=click.echo))
