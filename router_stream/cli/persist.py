"""``router-stream persist``: parse options, delegate to
:func:`router_stream.projection.run_projection`."""

from __future__ import annotations

import click

from router_stream.cli import cli


@cli.command("persist")
@click.option("--exit-when-idle", type=click.FloatRange(0, 86_400), default=None, metavar="SECONDS",
              help="Exit once nothing was left to write for SECONDS (tests, bench).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=None,
              help="Port of /livez /readyz /metrics (default ROUTER_PROJECTION_HTTP_PORT).")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), default=None,
              help="Policy whose redact section masks rows until a policy is recorded active in "
                   "Postgres (default ROUTER_POLICY_FILE).")
def persist_command(exit_when_idle: float | None, http_port: int | None,
                    policy_file: str | None) -> None:
    """Write Postgres from the decision log: router.decisions, router.dlq and router.events
    become rows (own consumer group; offsets committed after each transaction).

    Needs a migrated database (`db migrate`). Routing never waits for it: run it beside the
    workers, or inside one with `worker --persist`.

    \b
    Examples:
      router-stream persist --policy examples/policy.yaml      # masks rows per the policy
      router-stream persist --http-port 0 --exit-when-idle 5   # catch up, then exit
    """
    import asyncio

    from router_stream.config import Settings
    from router_stream.projection import run_projection
    from router_stream.worker.logs import configure_json_logging

    overrides: dict[str, object] = {}
    if http_port is not None:
        overrides["projection_http_port"] = http_port
    if policy_file is not None:
        overrides["policy_file"] = policy_file
    settings = Settings(**overrides)  # type: ignore[arg-type]
    configure_json_logging(settings.log_level)
    asyncio.run(run_projection(settings, exit_when_idle=exit_when_idle))
