"""Measure ``dlq replay`` on the real stack (issue 20's acceptance; figures in docs/operations.md).

Two runs, each in a fresh database and under a fresh topic prefix, removed afterwards:

``scale``       N entries (default 100,000) written straight into ``dlq_entries`` with COPY,
                in shuffled row order, then ``router-stream dlq replay`` run as a subprocess:
                wall time, the command's peak RSS (``wait4``), entries/s, per-key inversions on
                the topic, and a second replay that must send nothing.
``acceptance``  N signals (default 20,000) over K keys (default 7) dead-lettered by a real worker
                while their destination is down, then replayed (``--kill`` SIGKILLs the first
                replay half-way and runs it again), then routed by a real worker: per-key
                inversions and duplicates on the routed topic, decisions, entries left pending,
                and a second replay that must send nothing.

    python -m bench.dlq_replay scale --entries 100000
    python -m bench.dlq_replay acceptance --signals 20000 --keys 7 --kill

Needs ROUTER_KAFKA_BOOTSTRAP and ROUTER_DATABASE_URL (the running stack).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from pydantic import SecretStr

from router_stream.adapters import postgres as pg
from router_stream.adapters.control import send_control
from router_stream.adapters.kafka_io import ConsumedRecord, OutRecord, RecordWriter, read_records
from router_stream.adapters.topics import apply_topics
from router_stream.config import SIGNALS, Settings
from router_stream.core.models import BreakerForce, BreakerReset

POLICY = """
name: dlq-replay-acceptance
destinations:
  pager: {}
classify:
  - name: alerts
    when: {field: payload.severity, equals: critical}
    kind: alert
routes:
  alert:
    strategy: first_healthy
    tiers: [[pager]]
    retry: {max_attempts: 0}
defaults: {unclassified: dlq, unrouted: dlq}
tenants:
  default: {rate: 1000000, burst: 1000000}
"""


@dataclass
class Run:
    """One command run as a subprocess."""

    seconds: float
    cpu_seconds: float  # user + system
    peak_rss_mb: float
    exit_code: int
    stdout: str
    stderr: str


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


async def _admin_sql(url: str, sql: str) -> None:
    conn = await asyncpg.connect(_with_database(url, "postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class Sandbox:
    """A database and a topic prefix of its own, dropped and deleted on exit."""

    def __init__(self) -> None:
        base = Settings()
        tag = uuid.uuid4().hex[:8]
        self.database = f"dlqbench_{tag}"
        self.root_url = base.database_url.get_secret_value()
        self.settings = base.model_copy(update={
            "topic_prefix": f"dlqbench{tag}.",
            "database_url": SecretStr(_with_database(self.root_url, self.database))})
        self.workdir = Path(tempfile.mkdtemp(prefix="dlqbench-"))

    async def __aenter__(self) -> Sandbox:
        await _admin_sql(self.root_url, f'CREATE DATABASE "{self.database}"')
        await pg.migrate_database(self.settings)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await _admin_sql(self.root_url, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        admin = AdminClient({"bootstrap.servers": self.settings.kafka_bootstrap})
        listed = await asyncio.to_thread(admin.list_topics, None, 30.0)
        names = [t for t in listed.topics if t.startswith(self.settings.topic_prefix)]
        if names:
            futures = admin.delete_topics(names, operation_timeout=30.0)
            await asyncio.gather(*(asyncio.wrap_future(f) for f in futures.values()))

    def env(self, **extra: str) -> dict[str, str]:
        s = self.settings
        return {**os.environ, "ROUTER_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
                "ROUTER_DATABASE_URL": s.database_url.get_secret_value(),
                "ROUTER_TOPIC_PREFIX": s.topic_prefix, **extra}

    async def fetchval(self, sql: str) -> Any:
        conn = await asyncpg.connect(self.settings.database_url.get_secret_value())
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "router_stream.cli", *args]


async def run_command(argv: list[str], env: dict[str, str], *, timeout_s: float = 600.0,
                      kill_when: Any = None) -> Run:
    """Run ``argv`` to the end and measure it; ``kill_when`` (an async predicate, polled) SIGKILLs
    it when true. The peak RSS is read by GNU time around the command: the ``ru_maxrss`` of a
    child forked from this (large) process would count the parent's pages it started with."""
    with tempfile.NamedTemporaryFile("w+") as rss, tempfile.TemporaryFile("w+") as out, \
            tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S", "-o", rss.name, *argv], env=env,
                                stdout=out, stderr=err, text=True)
        killed = False
        while proc.poll() is None:
            if not killed and (time.monotonic() - started > timeout_s
                               or (kill_when is not None and await kill_when())):
                for child in _children(proc.pid):
                    os.kill(child, signal.SIGKILL)  # the command, not GNU time
                killed = True
            await asyncio.sleep(0.05)
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        rss.seek(0)
        measured = rss.read().split()[-3:]  # "Command terminated by signal 9" may come first
        kib, cpu = (int(measured[0]), float(measured[1]) + float(measured[2])) if (
            len(measured) == 3 and measured[0].isdigit()) else (0, 0.0)
        code = -signal.SIGKILL if killed else proc.returncode
        return Run(seconds, cpu, kib / 1024, code, out.read(), err.read())


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


async def create_topic(settings: Settings, logical: str, partitions: int) -> str:
    name = settings.topic(logical)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions,
                                            replication_factor=1)], request_timeout=30.0)
    await asyncio.gather(*(asyncio.wrap_future(f) for f in futures.values()))
    return name


async def read_topic(settings: Settings, topic: str) -> list[ConsumedRecord]:
    return [r async for r in read_records(settings, topic, from_beginning=True, until_end=True)]


def inversions(records: list[ConsumedRecord], position: Any) -> int:
    """Records of a key read after a record of the same key that came later originally."""
    last: dict[bytes | None, Any] = {}
    count = 0
    for r in records:
        at = position(r)
        if r.key in last and at < last[r.key]:
            count += 1
        last[r.key] = max(at, last.get(r.key, at))
    return count


# --- scale ---------------------------------------------------------------------------------


def _signal(n: int, key: str) -> bytes:
    return orjson.dumps({
        "signal_id": f"sig-{n:07d}", "sender_id": key, "tenant": "acme", "kind": "alert",
        "ts": 1_796_000_000_000 + n,
        "payload": {"severity": "critical", "check": "http_5xx", "host": f"web-{n % 40:02d}",
                    "region": "eu-west-1", "message": "upstream returned 503 for /checkout",
                    "n": n}})


async def fill_dlq(sb: Sandbox, topic: str, entries: int, keys: int, partitions: int) -> None:
    """``entries`` rows as the worker writes them, COPYed in shuffled order (ids are not the
    original order)."""
    now = datetime.now(UTC)
    offsets = [0] * partitions
    rows = []
    for n in range(entries):
        key = f"cust{n % keys}"
        partition = zlib.crc32(key.encode()) % partitions
        offset = offsets[partition]
        offsets[partition] += 1
        rows.append((
            f"{topic}/{partition}/{offset}", "no_healthy_destination",
            "every destination of kind 'alert' is unavailable", f"sig-{n:07d}", "acme", "alert",
            1, topic, partition, offset, key.encode(),
            '[["traceparent", "MDAtYWJjLTAx"]]', _signal(n, key), None, now, now,
        ))
    random.Random(20).shuffle(rows)
    columns = ["dlq_key", "reason", "error", "signal_id", "tenant", "kind", "attempts",
               "original_topic", "original_partition", "original_offset", "original_key",
               "original_headers", "original_value", "original_timestamp", "first_failed_at",
               "last_failed_at"]
    conn = await asyncpg.connect(sb.settings.database_url.get_secret_value())
    try:
        await conn.copy_records_to_table("dlq_entries", records=rows, columns=columns)
        await conn.execute("ANALYZE dlq_entries")
    finally:
        await conn.close()


async def scale(entries: int, keys: int) -> dict[str, Any]:
    async with Sandbox() as sb:
        partitions = 6
        topic = await create_topic(sb.settings, SIGNALS, partitions)
        await fill_dlq(sb, topic, entries, keys, partitions)
        run = await run_command(_cli("dlq", "replay", "--reason", "no_healthy_destination",
                                     "--json", "--progress"), sb.env())
        sent = len(json.loads(run.stdout)["sent"]) if run.exit_code == 0 else 0
        again = await run_command(_cli("dlq", "replay", "--all", "--json"), sb.env())
        records = await read_topic(sb.settings, topic)
        pending = await sb.fetchval("SELECT count(*) FROM dlq_entries WHERE status = 'pending'")
        return {
            "entries": entries, "keys": keys, "exit_code": run.exit_code, "sent": sent,
            "seconds": round(run.seconds, 2),
            "entries_per_s": round(sent / run.seconds) if run.seconds else None,
            "cpu_seconds": round(run.cpu_seconds, 2),
            "entries_per_cpu_s": round(sent / run.cpu_seconds) if run.cpu_seconds else None,
            "peak_rss_mb": round(run.peak_rss_mb, 1),
            "records_on_topic": len(records),
            "per_key_inversions": inversions(
                records, lambda r: int(dict(r.headers)["x-dlq-original-offset"])),
            "second_replay_sent": len(json.loads(again.stdout)["sent"]),
            "pending_after": pending, "stderr_tail": run.stderr[-300:],
        }


# --- acceptance through a real worker --------------------------------------------------------


async def produce(settings: Settings, values: list[tuple[bytes, bytes]]) -> None:
    async with RecordWriter(settings) as writer:
        await asyncio.gather(*await writer.send_many(
            [OutRecord(settings.topic(SIGNALS), v, key=k) for k, v in values]))


async def acceptance(signals: int, keys: int, kill: bool, kill_delay: float
                     ) -> dict[str, Any]:
    async with Sandbox() as sb:
        policy = sb.workdir / "policy.yaml"
        policy.write_text(POLICY)
        s = sb.settings.model_copy(update={"policy_file": str(policy)})
        await apply_topics(s, ["pager"])
        env = sb.env(ROUTER_POLICY_FILE=str(policy))
        worker = _cli("worker", "--exit-when-idle", "3")

        await send_control(s, BreakerForce(target="pager", state="open", reason="outage"))
        await produce(s, [(f"cust{i % keys}".encode(),
                           orjson.dumps({"signal_id": f"s-{i:06d}", "sender_id": f"cust{i % keys}",
                                         "payload": {"severity": "critical", "i": i}}))
                          for i in range(signals)])
        first = await run_command(worker, env)
        dead = await sb.fetchval("SELECT count(*) FROM dlq_entries WHERE status = 'pending'")
        id_inversions = await sb.fetchval(
            "SELECT count(*) FROM (SELECT original_offset < lag(original_offset) OVER"
            " (PARTITION BY original_topic, original_partition ORDER BY id) AS inv"
            " FROM dlq_entries) t WHERE inv")

        await send_control(s, BreakerReset(target="pager"))
        replay = _cli("dlq", "replay", "--reason", "no_healthy_destination", "--json")

        reached: list[float] = []

        async def half_marked() -> bool:
            """Half marked, then ``kill_delay`` more: the next window is in flight by then."""
            if not reached:
                done = await sb.fetchval(
                    "SELECT count(*) FROM dlq_entries WHERE status = 'replayed'")
                if done >= dead // 2:
                    reached.append(time.monotonic())
            return bool(reached) and time.monotonic() - reached[0] >= kill_delay

        runs = [await run_command(replay, env, kill_when=half_marked if kill else None)]
        killed_at = await sb.fetchval("SELECT count(*) FROM dlq_entries WHERE status = 'replayed'")
        if kill:
            runs.append(await run_command(replay, env))
        second = await run_command(worker, env)
        again = await run_command(replay, env)

        routed = await read_topic(s, s.routed_topic("pager"))
        ids = Counter(orjson.loads(r.value)["signal_id"] for r in routed)
        replayed = Counter(dict(r.headers).get("x-dlq-id")
                           for r in await read_topic(s, s.topic(SIGNALS)))
        replayed.pop(None, None)  # the producer's originals
        return {
            "signals": signals, "keys": keys, "killed": kill,
            "dead_lettered": dead, "worker_exit_codes": [first.exit_code, second.exit_code],
            "dlq_rows_out_of_offset_order_by_id": id_inversions,
            "replay_exit_codes": [r.exit_code for r in runs],
            "replay_seconds": [round(r.seconds, 2) for r in runs],
            "marked_when_killed": killed_at if kill else None,
            "replay_records_sent": sum(replayed.values()),
            "entries_sent_twice": sum(1 for n in replayed.values() if n > 1),
            "routed_records": len(routed), "distinct_signals_routed": len(ids),
            "duplicates_on_routed": sum(n - 1 for n in ids.values()),
            "per_key_inversions": inversions(
                routed, lambda r: orjson.loads(r.value)["payload"]["i"]),
            "decisions": await sb.fetchval("SELECT count(*) FROM routing_decisions"),
            "pending_after": await sb.fetchval(
                "SELECT count(*) FROM dlq_entries WHERE status = 'pending'"),
            "second_replay_sent": len(json.loads(again.stdout)["sent"]),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    sc = sub.add_parser("scale")
    sc.add_argument("--entries", type=int, default=100_000)
    sc.add_argument("--keys", type=int, default=1000)
    ac = sub.add_parser("acceptance")
    ac.add_argument("--signals", type=int, default=20_000)
    ac.add_argument("--keys", type=int, default=7)
    ac.add_argument("--kill", action="store_true", help="SIGKILL the first replay half-way")
    ac.add_argument("--kill-delay", type=float, default=0.0,
                    help="seconds after half the entries are marked before the kill")
    args = parser.parse_args()
    if args.mode == "scale":
        result = asyncio.run(scale(args.entries, args.keys))
    else:
        result = asyncio.run(acceptance(args.signals, args.keys, args.kill, args.kill_delay))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
