"""Entry of ``router-stream bench`` (router_stream/cli/bench.py only parses options).

Exit codes: 0 the run completed (blocked contenders are reported, not failures), 2 a contender
failed, the broker/database was unreachable, or the global timeout fired.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import report
from bench.harness import FULL, QUICK, kill_children, run_bench

WATCHDOG_GRACE_S = 45.0


def main(*, quick: bool, out_dir: Path, docs: Path | None, only: tuple[str, ...],
         report_file: Path | None = None, state_memory: bool = False) -> int:
    if state_memory:
        return _state_memory(out_dir)
    # CI logs are not terminals; rich would wrap the table at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=150)
    if report_file is not None:
        import json

        return _publish(json.loads(report_file.read_text()), report_file, out_dir, docs, console,
                        fresh=False)
    from router_stream.config import Settings

    settings = Settings()
    profile = QUICK if quick else FULL
    if docs is None and not quick and not only:  # the page shows every contender of one run
        docs = Path("docs/benchmarks.md")
    console.print(f"router-stream bench ({profile.name}, budget {profile.budget_s:.0f}s) against "
                  f"Kafka {settings.kafka_bootstrap}")
    watchdog = threading.Timer(profile.budget_s + WATCHDOG_GRACE_S, _hard_exit, args=(console,))
    watchdog.daemon = True
    watchdog.start()
    try:
        result = asyncio.run(_bounded(run_bench(
            profile, settings.kafka_bootstrap, settings.database_url.get_secret_value(), out_dir,
            console, only), profile.budget_s + 20))
    except TimeoutError:
        console.print("[red]error: the benchmark overran its time budget; children killed[/]")
        kill_children()
        return 2
    finally:
        watchdog.cancel()
    return _publish(result, None, out_dir, docs, console, fresh=True)


async def _bounded(coro: Any, timeout: float) -> Any:
    """The run under a global timeout; SIGTERM cancels it like Ctrl-C (cleanup still runs)."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    return await asyncio.wait_for(task, timeout)


def _publish(result: dict[str, Any], json_path: Path | None, out_dir: Path, docs: Path | None,
             console: Console, *, fresh: bool) -> int:
    if json_path is None:
        json_path = report.save(result, out_dir)
    plots = report.plot(result, json_path.with_suffix(""))
    report.print_table(result, console)
    console.print(f"results: {json_path}" + "".join(f"\n         {p}" for p in plots))
    if not plots:
        console.print("  (no plots: `pip install -e '.\\[bench]'` for matplotlib)")
    if docs is not None:
        report.write_docs(result, json_path, plots, docs)
        console.print(f"docs:    {docs}")
    failed = [c["key"] for c in result["contenders"] if c["status"] == "failed"]
    return 2 if failed and fresh else 0


def _state_memory(out_dir: Path) -> int:
    """``--state-memory``: the worker's RSS with 100k sources and 10k destinations in state
    (bench/state_memory.py), under the same watchdog as the throughput run."""
    from bench import state_memory

    watchdog = threading.Timer(state_memory.BUDGET_S + WATCHDOG_GRACE_S, _hard_exit,
                               args=(Console(),))
    watchdog.daemon = True
    watchdog.start()
    try:
        return state_memory.main(out_dir=out_dir)
    finally:
        watchdog.cancel()


def _hard_exit(console: Console) -> None:
    """Last resort when the event loop itself is stuck: kill every child and leave."""
    console.print("[red]error: watchdog fired; killing the benchmark's children[/]")
    kill_children()
    os._exit(2)
