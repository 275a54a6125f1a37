"""`router-stream worker --processes 2` as an operator runs it, on the real broker and Postgres:
a child SIGKILLed mid-stream is restarted by the supervisor, nothing is lost, and SIGTERM to the
supervisor drains both children and exits 0.

Everything goes through the command line (db migrate, topics apply, produce, worker), so the test
holds whichever Kafka client the product uses.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from router_stream.config import Settings
from tests.support.processes import until

pytestmark = pytest.mark.integration

POLICY = """
name: processes-test
destinations:
  pager: {}
  email: {}
classify:
  - name: alerts
    when: {field: payload.severity, in: [critical, high]}
    kind: alert
routes:
  alert:
    strategy: first_healthy
    tiers: [[pager], [email]]
defaults: {unclassified: dlq, unrouted: dlq}
tenants:
  default: {rate: 1000000, burst: 1000000}
"""
SIGNALS = 8000
SUPERVISOR = "router_stream.worker.supervisor"


def environment(s: Settings, policy: Path) -> dict[str, str]:
    return os.environ | {
        "ROUTER_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "ROUTER_DATABASE_URL": s.database_url.get_secret_value(),
        "ROUTER_TOPIC_PREFIX": s.topic_prefix,
        "ROUTER_GROUP_ID": s.group_id,
        "ROUTER_POLICY_FILE": str(policy),
        "ROUTER_HTTP_PORT": "0",
        "ROUTER_BATCH_MAX": "100",  # many small batches: the SIGKILL lands mid-stream
    }


def cli(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "router_stream.cli", *args], env=env,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, (args, done.stderr.decode()[-2000:])


def signal_lines(n: int, first: int = 0) -> bytes:
    """Alerts (decided) and, every fourth, an unclassified signal (dead-lettered)."""
    lines = []
    for i in range(first, first + n):
        payload = {"something": "else"} if i % 4 == 3 else {"severity": "critical"}
        lines.append(orjson.dumps({"signal_id": f"s-{i}", "sender_id": f"svc-{i % 11}",
                                   "payload": payload}))
    return b"\n".join(lines) + b"\n"


def log_lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_bytes().splitlines():
        if line.startswith(b"{"):
            out.append(orjson.loads(line))
    return out


async def supervisor_port(log: Path) -> int | None:
    for line in log_lines(log):
        if line.get("logger") == SUPERVISOR and line["msg"] == "http listening":
            return int(line["port"])
    return None


async def readyz(port: int) -> dict[str, Any]:
    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.get(f"http://127.0.0.1:{port}/readyz") as response):
        body: dict[str, Any] = await response.json()
        assert (response.status == 200) == body["ready"]
        return body


async def at_least(s: Settings, n: int) -> bool:
    d, _, q = await rows(s)
    return d + q >= n


async def rows(s: Settings) -> tuple[int, int, int]:
    """(decision rows, distinct signal ids among them, DLQ rows)."""
    conn = await asyncpg.connect(s.database_url.get_secret_value())
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM routing_decisions) AS d,"
            " (SELECT count(DISTINCT signal_id) FROM routing_decisions) AS u,"
            " (SELECT count(*) FROM dlq_entries) AS q")
    finally:
        await conn.close()
    assert row is not None
    return row["d"], row["u"], row["q"]


async def heartbeat_ids(s: Settings) -> set[str]:
    conn = await asyncpg.connect(s.database_url.get_secret_value())
    try:
        return {r["worker_id"] for r in await conn.fetch("SELECT worker_id FROM worker_heartbeats")}
    finally:
        await conn.close()


async def test_two_processes_a_child_sigkilled_is_restarted_nothing_lost_sigterm_drains(
        settings, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    env = environment(settings, policy) | {"ROUTER_WORKER_ID": "pod"}
    cli(env, "db", "migrate")
    cli(env, "topics", "apply", "--policy", str(policy))
    waves = [tmp_path / "wave-1.jsonl", tmp_path / "wave-2.jsonl"]
    waves[0].write_bytes(signal_lines(SIGNALS))
    waves[1].write_bytes(signal_lines(SIGNALS, first=SIGNALS))
    cli(env, "produce", "--logical", "signals", str(waves[0]), "--key-field", "sender_id")

    log = tmp_path / "supervisor.log"
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "router_stream.cli", "worker", "--processes", "2", "--persist"],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port = await until("the supervisor's port", 60, lambda: supervisor_port(log))

        async def ready() -> dict[str, Any] | None:
            body = await readyz(port)
            return body if body["ready"] else None

        before = await until("both children ready", 120, ready)
        assert [c["worker_id"] for c in before["children"]] == ["pod-1", "pod-2"]
        killed = before["children"][0]  # child 1 also runs the projection (--persist)
        await until("routing under way", 120, lambda: at_least(settings, 300))
        os.kill(killed["pid"], signal.SIGKILL)

        async def restarted() -> dict[str, Any] | None:
            body = await ready()
            child = body["children"][0] if body else None
            return body if child and child["pid"] != killed["pid"] else None

        after = await until("child 1 restarted and ready", 120, restarted)
        assert after["children"][0]["restarts"] == 1
        assert after["children"][0]["worker_id"] == "pod-1"
        crash = [line for line in log_lines(log)
                 if line["msg"] == "worker process crashed, restarting"]
        assert len(crash) == 1 and crash[0]["exit"] == "signal SIGKILL", crash
        assert crash[0]["child"] == 1 and crash[0]["restarts"] == 1

        # SIGTERM while the second wave is being routed: both children drain, exit 0
        cli(env, "produce", "--logical", "signals", str(waves[1]), "--key-field", "sender_id")
        await until("the second wave under way", 120, lambda: at_least(settings, SIGNALS + 300))
        supervisor.send_signal(signal.SIGTERM)
        await until("the supervisor's exit", 60,
                    lambda: asyncio.sleep(0, supervisor.poll() is not None))
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait(10)
    assert supervisor.returncode == 0, log.read_text()[-3000:]
    lines = log_lines(log)
    assert len([line for line in lines if line["msg"] == "worker stopped"]) == 2
    assert [line["exit_code"] for line in lines if line["msg"] == "supervisor stopped"] == [0]
    assert await heartbeat_ids(settings) == {"pod-1", "pod-2"}

    # what the drain left uncommitted is routed by one more (burst) worker; a signal committed
    # without its row would stay missing, so this cannot hide a loss
    cli(env, "worker", "--exit-when-idle", "2", "--persist")
    d, unique, q = await rows(settings)
    assert d == unique, "a signal got two decision rows"
    assert (d, q) == (2 * SIGNALS - 2 * SIGNALS // 4, 2 * SIGNALS // 4)
