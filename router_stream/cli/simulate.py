"""``router-stream simulate``: parse options, delegate to :mod:`router_stream.sim`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from router_stream.cli import cli

DOCS_PAGE = Path("docs") / "decision-quality.md"


def _docs_root() -> Path:
    """The checkout whose docs/ the page goes to: the working directory, else the package's."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "docs").is_dir():
            return root
    raise click.UsageError("docs/ not found: run `simulate --write-docs` from a source checkout")


@cli.command("simulate")
@click.argument("scenarios", nargs=-1)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the world and the engine; the same seed gives the same figures.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Write PNG plots here (needs matplotlib: the 'bench' extra).")
@click.option("--sweep", is_flag=True,
              help="Also sweep the main policy knobs one at a time and print the trade-offs "
                   "(~1 min).")
@click.option("--e2e", is_flag=True,
              help="Also run the named routing SCENARIOS through a real worker on Kafka "
                   "(ROUTER_KAFKA_BOOTSTRAP), in real time, and compare the figures.")
@click.option("--write-docs", is_flag=True,
              help=f"Regenerate {DOCS_PAGE} from this run (every scenario and the sweep).")
def simulate_command(scenarios: tuple[str, ...], seed: int, as_json: bool,
                     plots_dir: Path | None, sweep: bool, e2e: bool, write_docs: bool) -> None:
    """Measure decision quality on a seeded world with ground truth (docs/decision-quality.md).

    Runs SCENARIOS (default: all) through the real routing core in process, beside naive
    baselines and an oracle, and checks the figures against the goals. Exit 0 whether or not a
    goal is met: the table says which are.

    \b
    Examples:
      router-stream simulate                         # every scenario, seed 0 (~30 s)
      router-stream simulate bandit-flip --seed 7    # one scenario, another world
      router-stream simulate consensus --json        # the figures as JSON
      router-stream simulate --sweep                 # + the tuning trade-offs (~1 min more)
      router-stream simulate --plots out/ --write-docs

    Exit codes: 0 ran (goals met or not), 1 user error (unknown scenario, bad option).
    """
    from rich.console import Console

    from router_stream.sim import SCENARIOS, report, run
    from router_stream.sim import plots as sim_plots
    from router_stream.sim import sweep as sim_sweep
    from router_stream.sim.scenarios import RoutingScenario

    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise click.UsageError(f"unknown scenario {unknown[0]!r} (known: {', '.join(SCENARIOS)})")
    if write_docs and scenarios:
        raise click.UsageError("--write-docs runs every scenario: give no SCENARIO")
    if e2e and not scenarios:
        raise click.UsageError("--e2e runs in real time: name the routing SCENARIOs to run")
    not_routing = [s for s in scenarios if e2e and not isinstance(SCENARIOS[s], RoutingScenario)]
    if not_routing:
        raise click.UsageError(f"--e2e covers routing scenarios; {not_routing[0]!r} runs in "
                               "process only")
    results = {name: run(name, seed) for name in (scenarios or tuple(SCENARIOS))}
    sweeps = sim_sweep.sweep(seed) if sweep or write_docs else None
    worker_runs = _e2e(results, seed) if e2e else None
    written: dict[str, str] = {}
    if plots_dir is not None:
        if sim_plots.available():
            written = sim_plots.write_plots(results, plots_dir)
            click.echo(f"plots: {len(written)} PNG files in {plots_dir}", err=True)
        else:
            click.echo("plots skipped: matplotlib is not installed "
                       "(pip install 'router-stream[bench]')", err=True)
    if as_json:
        sys.stdout.write(report.to_json(results, seed, sweeps, worker_runs).decode() + "\n")
    else:
        console = Console()
        report.print_tables(results, seed, console)
        if sweeps is not None:
            report.print_sweeps(sweeps, console)
        if worker_runs is not None:
            report.print_e2e(worker_runs, console)
    if write_docs:
        page = _docs_root() / DOCS_PAGE
        links = {k: os.path.relpath(plots_dir / v, page.parent) for k, v in written.items()
                 } if plots_dir is not None else {}
        page.write_text(report.markdown(report.without_series(results), seed, links, sweeps))
        click.echo(f"wrote {page}", err=True)


def _e2e(results: dict[str, dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
    """Each strategy of each (routing) scenario through a worker, beside its in-process run."""
    import asyncio

    from router_stream.config import Settings
    from router_stream.sim import SCENARIOS
    from router_stream.sim.e2e import compare, run_routing_e2e
    from router_stream.sim.scenarios import RoutingScenario

    settings = Settings()
    out: dict[str, dict[str, Any]] = {}
    for name, fig in results.items():
        scenario = SCENARIOS[name]
        assert isinstance(scenario, RoutingScenario)
        click.echo(f"e2e: {name} through a worker, ~{scenario.duration_s:.0f} s per strategy",
                   err=True)
        out[name] = {strategy: compare(fig["strategies"][strategy], asyncio.run(
            run_routing_e2e(scenario, strategy, seed, settings)))
            for strategy in scenario.strategies}
    return out
