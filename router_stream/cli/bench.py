"""``router-stream bench``: parse options, delegate to the harness in ``bench/`` (a directory of
the source checkout, not part of the installed package)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from router_stream.cli import cli


def _bench_root() -> Path:
    """The checkout that holds ``bench/``: the working directory, else the package's source."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "bench" / "harness.py").exists():
            return root
    raise click.UsageError("bench/ not found: run `router-stream bench` from a source checkout")


@cli.command("bench")
@click.option("--quick", is_flag=True, help="Short windows, < 2 min (CI); figures are rough.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("bench/results"), show_default=True,
              help="Where the JSON, plots and contender logs go.")
@click.option("--docs", "docs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Regenerate this page from the run (default: docs/benchmarks.md on a full "
                   "run of every contender, nothing on --quick or --only).")
@click.option("--only", multiple=True,
              type=click.Choice(["core", "floor", "raw", "raw_ck", "faust", "router_pg",
                                 "router_nopg", "router_eos", "projection"]),
              help="Run only these contenders (repeatable).")
@click.option("--report", "report", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Do not run: rebuild table, plots and --docs from a saved JSON.")
@click.option("--state-memory", "state_memory", is_flag=True,
              help="Instead of the throughput run: the RSS of a worker holding 100k sources and "
                   "10k destinations in state vs an empty one (bench/state_memory.py, ~1 min; "
                   "+1.5 min of in-process profile when over the 300 MB goal), then the engine "
                   "with 1M unique tenants and 1M unique signal ids (~2 min).")
def bench_command(quick: bool, out_dir: Path, docs: Path | None, only: tuple[str, ...],
                  report: Path | None, state_memory: bool) -> None:
    """Measure router-stream against raw aiokafka, a naive faust agent and its own core.

    Uses the broker and database of ROUTER_KAFKA_BOOTSTRAP / ROUTER_DATABASE_URL; creates and
    deletes its own topics (bench-<run>.*) and database. A contender that fails is marked
    FAILED in the table and the run exits 2. See docs/benchmarks.md.

    \b
    Examples:
      router-stream bench --quick --out /tmp/bench
      router-stream bench --only router_pg --only raw
      router-stream bench --report bench/results/RUN.json --docs docs/benchmarks.md
    """
    if state_memory and (quick or docs or only or report):
        raise click.UsageError("--state-memory takes no --quick, --docs, --only or --report")
    sys.path.insert(0, str(_bench_root()))
    from bench.cli import main

    sys.exit(main(quick=quick, out_dir=out_dir, docs=docs, only=only, report_file=report,
                  state_memory=state_memory))
