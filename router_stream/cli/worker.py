"""``router-stream worker``: parse options, delegate to :func:`router_stream.worker.run_worker`."""

from __future__ import annotations

import sys

import click

from router_stream.cli import cli


@cli.command("worker")
@click.option("--exit-when-idle", type=click.FloatRange(0, 86_400), default=None, metavar="SECONDS",
              help="Burst mode: exit once the input lag has been 0 for SECONDS (tests, demo).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=None,
              help="Port of /livez /readyz /metrics (default ROUTER_HTTP_PORT).")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), default=None,
              help="Policy file at start-up (default ROUTER_POLICY_FILE).")
@click.option("--persist", is_flag=True, default=None,
              help="Also run the Postgres projection (`router-stream persist`) in this process: "
                   "the one-process set-up (default ROUTER_WORKER_PERSIST); with --processes N, "
                   "in child 1 only.")
@click.option("--processes", type=click.IntRange(1, 64), default=None, metavar="N",
              help="Run N workers (group members) under one supervisor process (default "
                   "ROUTER_WORKER_PROCESSES, 1: no supervisor). Child i (1..N) is worker "
                   "<ROUTER_WORKER_ID or host name>-<i> with its own /metrics on port+i; the "
                   "supervisor answers /livez /readyz for all of them on the port "
                   "(docs/worker.md).")
def worker_command(exit_when_idle: float | None, http_port: int | None,
                   policy_file: str | None, persist: bool | None, processes: int | None) -> None:
    """Route signals: consume `signals`, decide, produce, commit (SIGTERM drains).

    Needs the topics (`topics apply --policy FILE`). Postgres is written by `router-stream
    persist`, or in this process with --persist (then also `db migrate`). A port already in
    use is one line, exit 2.

    \b
    Examples:
      router-stream worker --policy examples/policy.yaml
      router-stream worker --policy examples/policy.yaml --persist   # one process, with Postgres
      ROUTER_PERSIST=false router-stream worker --policy examples/policy.yaml --http-port 0
      router-stream worker --policy examples/policy.yaml --exit-when-idle 5
      router-stream worker --policy examples/policy.yaml --processes 2   # two cores
    """
    from router_stream.config import Settings
    from router_stream.worker.app import run_hosted
    from router_stream.worker.logs import configure_json_logging

    overrides: dict[str, object] = {}
    if http_port is not None:
        overrides["http_port"] = http_port
    if policy_file is not None:
        overrides["policy_file"] = policy_file
    if persist:
        overrides["worker_persist"] = True
    if processes is not None:
        overrides["worker_processes"] = processes
    settings = Settings(**overrides)  # type: ignore[arg-type]
    configure_json_logging(settings.log_level)
    if settings.worker_processes > 1:
        from router_stream.worker.supervisor import run_supervised

        sys.exit(run_supervised(settings, settings.worker_processes,
                                exit_when_idle=exit_when_idle))
    run_hosted(settings, exit_when_idle=exit_when_idle)
