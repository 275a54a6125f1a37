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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from router_stream.config import Settings

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
        "ROUTER_STATE_DIR": s.state_dir,
    }


def cli(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "router_stream.cli", *args], env=env,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, (args, done.stderr.decode()[-2000:])


def signal_lines(n: int) -> bytes:
    """Alerts (decided) and, every fourth, an unclassified signal (dead-lettered)."""
    lines = []
    for i in range(n):
        payload = {"something": "else"} if i % 4 == 3 else {"severity": "critical"}
        lines.append(orjson.dumps({"signal_id": f"s-{i}", "sender_id": f"svc-{i % 11}",
                                   "payload": payload}))
    return b"\n".join(lines) + b"\n"


async def until(what: str, timeout: float, probe: Callable[[], Awaitable[Any]]) -> Any:
    """The first truthy result of ``probe``, polled every 100 ms for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await probe():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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


async def test_two_processes_a_child_sigkilled_is_restarted_nothing_lost_sigterm_drains(
        settings, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    env = environment(settings, policy)
    cli(env, "db", "migrate")
    cli(env, "topics", "apply", "--policy", str(policy))
    inputs = tmp_path / "signals.jsonl"
    inputs.write_bytes(signal_lines(SIGNALS))
    cli(env, "produce", "--logical", "signals", str(inputs), "--key-field", "sender_id")

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
        assert [c["worker_id"].rsplit("-", 1)[1] for c in before["children"]] == ["1", "2"]
        assert len({c["worker_id"] for c in before["children"]}) == 2
        killed = before["children"][0]  # child 1 also runs the projection (--persist)

        async def some_rows() -> bool:
            d, _, q = await rows(settings)
            return d + q >= 300

        await until("routing under way", 120, some_rows)
        os.kill(killed["pid"], signal.SIGKILL)

        async def restarted() -> dict[str, Any] | None:
            body = await ready()
            child = body["children"][0] if body else None
            return body if child and child["pid"] != killed["pid"] else None

        after = await until("child 1 restarted and ready", 120, restarted)
        assert after["children"][0]["restarts"] == 1
        assert after["children"][0]["worker_id"] == killed["worker_id"]
        crash = [line for line in log_lines(log)
                 if line["msg"] == "worker process crashed, restarting"]
        assert len(crash) == 1 and crash[0]["exit"] == "signal SIGKILL", crash
        assert crash[0]["child"] == 1 and crash[0]["restarts"] == 1

        async def all_rows() -> bool:
            d, _, q = await rows(settings)
            return d + q >= SIGNALS

        await until("a row for every signal", 180, all_rows)
        supervisor.send_signal(signal.SIGTERM)
        await until("the supervisor's exit", 60,
                    lambda: asyncio.sleep(0, supervisor.poll() is not None))
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait(10)
    assert supervisor.returncode == 0, log.read_text()[-3000:]
    lines = log_lines(log)
    stopped = [line for line in lines if line["msg"] == "worker stopped"]
    assert len(stopped) == 2, "each child drained and said so"
    assert [line["exit_code"] for line in lines if line["msg"] == "supervisor stopped"] == [0]
    d, unique, q = await rows(settings)
    assert d == unique, "a signal got two decision rows"
    assert (d, q) == (SIGNALS - SIGNALS // 4, SIGNALS // 4)
