"""``python -m tests.chaos.run [--quick] [--only 1,4,6]`` (``make chaos``): run the fault
scenarios against real servers and print the table.

Scenarios 1, 3, 5, 6, 7, 8 use the shared servers (``ROUTER_KAFKA_BOOTSTRAP`` /
``ROUTER_DATABASE_URL``, each run in its own topics, group and database) unless ``--servers
own``; 2 and 4 kill the broker / stop Postgres, so they always run on a second local stack
(:class:`~tests.chaos.harness.OwnStack`), started here if needed and stopped again afterwards if
this run started it. Exit status 0 when every row passed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos import scenarios as sc
from tests.chaos.harness import OwnStack, shared_servers

ALL = "1,2,3,4,5,6,7,8"
EOS_SCENARIOS = "1,3"  # SIGKILL and the SIGSTOP zombie, in exactly_once mode


def table(rows: list[sc.Row]) -> str:
    head = ["scenario", "signals sent", "decisions", "DLQ", "lost", "duplicate rows",
            "state equal?", "recovery time", "result"]
    body = [[r.scenario, str(r.sent), str(r.decisions), str(r.dlq), str(r.lost),
             str(r.duplicate_rows), r.state_equal,
             "—" if r.recovery_s is None else f"{r.recovery_s:.1f} s",
             "pass" if r.passed else "FAIL"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(b) for b in body)])


def details(rows: list[sc.Row]) -> str:
    out = []
    for r in rows:
        out.append(f"- {r.scenario} ({r.seconds:.0f} s): " + ("pass" if r.passed else "FAIL"))
        out.extend(f"    FAIL {f}" for f in r.failures)
        out.extend(f"    {n}" for n in r.notes if n)
    return "\n".join(out)


async def run(selected: list[str], quick: bool, workdir: Path,
              soak_s: float | None = None, servers: str = "shared") -> list[sc.Row]:
    own = OwnStack()
    shared = own.servers if servers == "own" else shared_servers()
    started_own = False
    rows: list[sc.Row] = []
    try:
        if {"2", "4"} & set(selected) or servers == "own":
            from router_stream.stack import kafka, postgres

            started_own = not (kafka.is_running(own.cfg.kafka)
                               and postgres.is_running(own.cfg.postgres))
            await asyncio.to_thread(own.up)
        for key in selected:
            t = time.monotonic()
            print(f"--- scenario {key} ...", flush=True)
            match key:
                case "1":
                    row = await sc.sigkill_workers(shared, workdir, quick)
                case "2":
                    row = await sc.sigkill_broker(own, workdir, quick)
                case "3":
                    row = await sc.sigstop_zombie(shared, workdir, quick)
                case "4":
                    row = await sc.postgres_outage(own, workdir, quick)
                case "5":
                    row = await sc.dlq_unwritable(shared, workdir, quick)
                case "6":
                    row = await sc.poison(shared, workdir, quick)
                case "7":
                    row = await sc.sigterm_under_load(shared, workdir, quick)
                case "8":
                    row = await sc.soak(shared, workdir, quick, duration=soak_s)
                case _:
                    raise SystemExit(f"unknown scenario {key!r} (choose from {ALL})")
            rows.append(row)
            print(f"    {row.scenario}: {'pass' if row.passed else 'FAIL'} in "
                  f"{time.monotonic() - t:.0f}s", flush=True)
            for f in row.failures:
                print(f"    FAIL {f}", flush=True)
    finally:
        if started_own:
            await asyncio.to_thread(own.down)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="shorter streams, a 10 s Postgres outage, a 60 s soak")
    ap.add_argument("--only", default=ALL, help=f"comma-separated scenarios (default {ALL})")
    ap.add_argument("--soak-seconds", type=float, default=None)
    ap.add_argument("--servers", choices=("shared", "own"), default="shared",
                    help="where scenarios 1, 3, 5-8 run: the shared servers (ROUTER_KAFKA_"
                         "BOOTSTRAP / ROUTER_DATABASE_URL) or the suite's own stack (isolated "
                         "from other test sessions' load on the shared broker)")
    ap.add_argument("--guarantee", choices=("at_least_once", "exactly_once"),
                    default="at_least_once",
                    help="the workers' ROUTER_PROCESSING_GUARANTEE; exactly_once runs scenarios "
                         f"{EOS_SCENARIOS} and also fails a row on any copy beyond the first on "
                         "the output topics for a read_committed consumer")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where worker logs go (default: a new temporary directory)")
    args = ap.parse_args(argv)
    if args.guarantee == "exactly_once":
        if args.only == ALL:
            args.only = EOS_SCENARIOS
        if set(args.only.split(",")) - set(EOS_SCENARIOS.split(",")):
            ap.error(f"--guarantee exactly_once runs scenarios {EOS_SCENARIOS} only")
        os.environ["ROUTER_PROCESSING_GUARANTEE"] = "exactly_once"  # the workers inherit it
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="router-chaos-"))
    started = time.monotonic()
    rows = asyncio.run(run([k.strip() for k in args.only.split(",") if k.strip()], args.quick,
                           workdir, args.soak_seconds, args.servers))
    print()
    print(table(rows))
    print()
    print(details(rows))
    print(f"\n{len(rows)} scenario(s) in {time.monotonic() - started:.0f} s; worker logs in "
          f"{workdir}")
    return 0 if rows and all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
