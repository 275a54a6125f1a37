"""Engine memory under unbounded keys: 1M unique tenants, 1M unique signal ids (issue 21).

A producer controls ``tenant`` and ``signal_id``, so every new value could cost the router a
rate-limit bucket or a dedupe entry. This runs the routing engine in-process (no broker: the
state lives in the engine, and a million signals through Kafka would not fit the bench's two
minutes) on signals generated a batch at a time, and reads the process's RSS before and after.
Each case runs in a fresh interpreter so one case's garbage does not inflate the next::

    tenants   1M signals, 1M tenants, dedupe off        rate-limit buckets (default options)
    ids       1M signals, one tenant, dedupe on         the dedupe window (1M unique ids)
    control   1M signals, one tenant, dedupe off        what deciding alone costs (--case only:
                                                        it stays flat, and costs ~50 s)

The tenants' limit refills slowly (``rate`` 0.01/s), so their buckets never become full and
dropping idle buckets cannot help: what bounds them is ``max_buckets``. ``python -m
bench.key_flood --help`` for sizes; ``router-stream bench --state-memory`` runs it after the
worker run. Figures are reported, not asserted (docs/performance.md keeps them).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CASES = ("tenants", "ids", "control")
DEFAULT_CASES = CASES[:2]
BATCH = 500
NOW = 1_800_000_000.0
ROOT = Path(__file__).resolve().parents[1]


def policy_yaml(dedupe: bool, max_buckets: int) -> str:
    return f"""
destinations: [sink]
routes:
  work: {{strategy: first_healthy, destinations: [sink], dedupe: {str(dedupe).lower()}}}
tenants:
  one: {{rate: 1000000000}}
  default: {{rate: 0.01, burst: 5, max_buckets: {max_buckets}}}
"""


def _rss_kb() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


class _Rec:
    __slots__ = ("value", "offset", "key", "topic", "partition", "timestamp", "headers")

    def __init__(self, value: bytes, offset: int) -> None:
        self.value, self.offset, self.key = value, offset, None
        self.topic, self.partition, self.timestamp = "signals", 0, int(NOW * 1000)
        self.headers: list[tuple[str, bytes]] = []


def run_case(case: str, signals: int, max_buckets: int) -> dict[str, Any]:
    """One case in this process: RSS after a warm-up batch, then after ``signals``."""
    from router_stream.core.compiled import load_compiled
    from router_stream.core.engine import RouterEngine

    engine = RouterEngine(load_compiled(policy_yaml(case == "ids", max_buckets), "flood.yaml"))

    def batch(start: int) -> list[_Rec]:
        out = []
        for i in range(start, start + BATCH):
            tenant = f"tenant-{i:07d}" if case == "tenants" else "one"
            body = (f'{{"signal_id":"sig-{i:07d}","sender_id":"s","kind":"work",'
                    f'"tenant":"{tenant}","payload":{{}}}}')
            out.append(_Rec(body.encode(), i))
        return out

    engine.decide_batch(batch(signals), NOW)  # warm-up: ids past the measured ones
    gc.collect()
    before = _rss_kb()
    started = time.perf_counter()
    decided = limited = 0
    for n, start in enumerate(range(0, signals, BATCH)):
        result = engine.decide_batch(batch(start), NOW + n * 0.01)
        decided += len(result.decisions)
        limited += sum(1 for d in result.dlq if d.entry.reason.value == "rate_limited")
    elapsed = time.perf_counter() - started
    gc.collect()
    after = _rss_kb()
    return {
        "case": case, "signals": signals, "decided": decided, "rate_limited": limited,
        "seconds": round(elapsed, 2),
        "rss_before_mb": before["VmRSS"] / 1024, "rss_after_mb": after["VmRSS"] / 1024,
        "peak_mb": after["VmHWM"] / 1024,
        "grew_mb": (after["VmRSS"] - before["VmRSS"]) / 1024,
        "buckets": len(engine.state.buckets), "dedupe_entries": len(engine.state.dedupe),
        "max_buckets": max_buckets,
    }


def measure(signals: int = 1_000_000, max_buckets: int = 100_000,
            cases: tuple[str, ...] = DEFAULT_CASES,
            timeout_s: float = 300.0) -> list[dict[str, Any]]:
    """Every case in its own interpreter; the results in case order."""
    results = []
    for case in cases:
        done = subprocess.run(
            [sys.executable, "-m", "bench.key_flood", "--case", case, "--signals", str(signals),
             "--max-buckets", str(max_buckets)],
            cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def print_report(results: list[dict[str, Any]], say: Any = print) -> None:
    say("engine state under unbounded keys (in-process, one interpreter per case):")
    for r in results:
        say(f"  {r['case']:8} {r['signals']:>9,} signals in {r['seconds']:6.1f}s: RSS "
            f"{r['rss_before_mb']:6.1f} -> {r['rss_after_mb']:6.1f} MB (+{r['grew_mb']:.1f}), "
            f"peak {r['peak_mb']:.1f} MB; buckets {r['buckets']:,}, "
            f"dedupe entries {r['dedupe_entries']:,}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.key_flood",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--case", choices=CASES, help="run one case here and print it as JSON")
    p.add_argument("--signals", type=int, default=1_000_000)
    p.add_argument("--max-buckets", type=int, default=100_000)
    return p.parse_args(argv)


if __name__ == "__main__":
    ns = _parse(None)
    if ns.case:
        print(json.dumps(run_case(ns.case, ns.signals, ns.max_buckets)))
    else:
        print_report(measure(ns.signals, ns.max_buckets))
