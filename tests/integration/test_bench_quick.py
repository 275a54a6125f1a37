"""`router-stream bench --quick` runs on every test run (issue 6: "runs in CI").

Its figures are printed to the terminal, never asserted — a timing assertion on a shared 2-core
machine would only measure the neighbours. What is asserted is behaviour: the harness runs every
contender on the real broker, each of them (the router-stream worker with and without Postgres
included) gets the workload through to its output topics, and the results land as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.bench]

CONTENDERS = {"core", "floor", "raw", "raw_ck", "faust", "router_pg", "router_nopg"}
# router_eos runs in the full bench, or in a quick one named with --only (bench.harness.FULL_ONLY)


def test_bench_quick_runs_every_contender_and_prints_its_figures(servers, tmp_path, capsys):
    env = {**os.environ, "ROUTER_KAFKA_BOOTSTRAP": servers.kafka_bootstrap,
           "ROUTER_DATABASE_URL": servers.database_url, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "router_stream.cli", "bench", "--quick", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    with capsys.disabled():
        print("\n--- router-stream bench --quick (figures printed, not asserted) ---")
        print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stderr[-3000:]

    runs = list(tmp_path.glob("*-quick-*.json"))
    assert len(runs) == 1, sorted(p.name for p in tmp_path.iterdir())
    result = json.loads(runs[0].read_text())
    by_key = {c["key"]: c for c in result["contenders"]}
    assert set(by_key) == CONTENDERS
    for key, contender in by_key.items():
        assert contender["status"] in ("ok", "partial"), (key, contender.get("reason"))
    assert by_key["floor"]["latency"]["1k"]["count"] > 0, by_key["floor"]
    cores = by_key["floor"]["latency"]["1k"]["cores"]  # the machine's busy CPU in the window
    assert 0 < cores["machine"] <= cores["of"] + 0.5, cores
    # Every I/O contender got the workload through: its output flowed (records of the generator
    # arrived on its output topics). How far each got within the quick budget depends on the
    # machine's load, so later phases (latency windows, the rate search) are printed, not required.
    for key in ("raw", "faust", "router_pg", "router_nopg"):
        assert by_key[key].get("warmup_s") is not None, (key, by_key[key].get("reason"))
    assert by_key["core"]["status"] == "ok"
