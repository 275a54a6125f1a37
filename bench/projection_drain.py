"""Projection drain: how many rows a second ``router-stream persist`` writes from a backlog.

A backlog of decision records (the bench policy's shape: first_healthy over three tiers, trust
and breaker state of three destinations) plus one DLQ record in 20 is produced to fresh topics,
then one projection (in this process, as ``router-stream persist`` runs it) drains it into a
fresh database. Reported: rows/s from the fetch of the first batch until every row is committed
(start-up excluded), the same including start-up, the CPU seconds of the projection and of its
Postgres backends, and where the wall time of the projection's event-loop thread and of the
backends went: on a CPU, waiting for one (the machine's other load: Linux schedstat), or
neither (waiting on each other, the broker or the disk).

    python -m bench.projection_drain [--records 200000] [--json]
                                     (ROUTER_KAFKA_BOOTSTRAP/DATABASE_URL)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator

from bench.contenders import _admin_sql, _with_database, create_topics, delete_topics_with_prefix
from bench.drivers import produce_all
from router_stream.adapters.postgres import migrate_database
from router_stream.config import DECISIONS, DLQ, EVENTS, Settings
from router_stream.core.models import Decision, DlqEntry, DlqReason
from router_stream.projection import Projection


def _decision(i: int) -> Decision:
    return Decision(
        decision_id=f"dec-{i:08d}", signal_id=f"sig-{i:08d}", tenant=f"tenant-{i % 7}",
        kind="alert", destinations=["pager"], strategy="first_healthy", tier=0,
        policy_version="bench-v1", confidence=0.93,
        trust={"pager": 0.91, "slack": 0.88, "email": 0.97},
        breakers={"pager": "closed", "slack": "closed", "email": "closed"},
        input_topic="bench.signals", input_partition=i % 12, input_offset=i // 12,
        decided_at=1.8e9 + i / 1000, signal_ts=1.8e9 + i / 1000 - 0.01, rule="alerts")


def _dead_letter(i: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    entry = DlqEntry(reason=DlqReason.UNCLASSIFIED, error="no rule matched",
                     signal_id=f"sig-{i:08d}", tenant="default", original_topic="bench.signals",
                     original_partition=i % 12, original_offset=i // 12,
                     original_key=b"sender", original_value=b'{"sender_id":"s","payload":{}}',
                     first_failed_at=1.8e9)
    return b"sender", entry.original_value or b"", entry.kafka_headers()


async def _produce(s: Settings, n: int) -> None:
    await asyncio.to_thread(produce_all, s.kafka_bootstrap, _records(s, n))


def _records(s: Settings, n: int) -> Iterator[tuple[str, bytes, bytes,
                                                 list[tuple[str, bytes]] | None]]:
    for i in range(n):
        if i % 20 == 19:
            key, value, headers = _dead_letter(i)
            yield s.topic(DLQ), key, value, headers
        else:
            d = _decision(i)
            yield s.topic(DECISIONS), d.signal_id.encode(), d.to_json(), None


async def run(records: int, bootstrap: str, admin_url: str) -> dict[str, float]:
    run_id = uuid.uuid4().hex[:8]
    database = f"bench_projection_{run_id}"
    s = Settings(kafka_bootstrap=bootstrap, topic_prefix=f"bench-{run_id}.projection.",
                 group_id=f"bench-{run_id}", projection_http_port=0,
                 database_url=_with_database(admin_url, database))  # type: ignore[arg-type]
    await _admin_sql(admin_url, f'CREATE DATABASE "{database}"')
    try:
        await migrate_database(s)
        await create_topics(bootstrap, [s.topic(DECISIONS), s.topic(DLQ), s.topic(EVENTS)])
        produced = time.monotonic()
        await _produce(s, records)
        print(f"produced {records:,} records in {time.monotonic() - produced:.1f}s")
        projection = Projection(s, http=False)
        started = time.monotonic()
        first: float | None = None
        await projection.start()
        gc.freeze()  # as run_projection does after start-up
        backends = await _backend_pids(admin_url, database)
        loop_thread = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        cpu_before, pg_before = time.process_time(), _cpu_seconds(backends)
        # The group join happens inside the first fetches, so the clock starts once the first
        # batch is written, and only the rows after it count.
        rows_before = 0.0
        async with asyncio.timeout(60):
            while first is None:
                if await projection.step():
                    first = time.monotonic()
                    rows_before = sum(_rows(projection).values())
                    cpu_before, pg_before = time.process_time(), _cpu_seconds(backends)
                    sched_before = _schedstat([loop_thread]), _schedstat(_tasks(backends))
        while True:
            n = await projection.step()
            if not n and projection.projected >= records and await projection.caught_up():
                break
        done = time.monotonic()
        cpu, pg_cpu = time.process_time() - cpu_before, _cpu_seconds(backends) - pg_before
        loop_run, loop_wait = _since(sched_before[0], _schedstat([loop_thread]))
        pg_run, pg_wait = _since(sched_before[1], _schedstat(_tasks(backends)))
        await projection.stop()
        gc.unfreeze()
        rows = sum(_rows(projection).values()) - rows_before
        return {"records": records, "rows": rows, "drain_s": done - first,
                "rows_per_s": rows / (done - first), "with_startup_s": done - started,
                "projection_cpu_s": cpu, "postgres_cpu_s": pg_cpu,
                # each side has a core of its own on an idle 2-core machine: the busier one
                # bounds the drain (NaN when the server's processes cannot be read here)
                "rows_per_cpu_bound_s": rows / max(cpu, pg_cpu),
                "loop_on_cpu_s": loop_run, "loop_runqueue_s": loop_wait,
                "postgres_on_cpu_s": pg_run, "postgres_runqueue_s": pg_wait}
    finally:
        await delete_topics_with_prefix(bootstrap, s.topic_prefix)
        await _admin_sql(admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


async def _backend_pids(admin_url: str, database: str) -> list[int]:
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    finally:
        await conn.close()
    return [r["pid"] for r in rows]


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the server processes ``pids`` (a local server); NaN if unreadable."""
    ticks = 0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return float("nan")
    return ticks / os.sysconf("SC_CLK_TCK")


def _tasks(pids: list[int]) -> list[str]:
    return [f"/proc/{pid}/schedstat" for pid in pids]


def _schedstat(paths: list[str]) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) summed over ``paths``
    (``/proc/.../schedstat``); NaN if unreadable."""
    run = wait = 0
    try:
        for path in paths:
            with open(path) as f:
                on_cpu, queued, _ = f.read().split()
            run, wait = run + int(on_cpu), wait + int(queued)
    except (OSError, ValueError):
        return float("nan"), float("nan")
    return run / 1e9, wait / 1e9


def _since(before: tuple[float, float], after: tuple[float, float]) -> tuple[float, float]:
    return after[0] - before[0], after[1] - before[1]


def _rows(projection: Projection) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in projection.metrics.rows.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["table"]] = sample.value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    bootstrap = os.environ.get("ROUTER_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    admin_url = os.environ.get("ROUTER_DATABASE_URL", "postgresql://router@127.0.0.1:15432/router")
    args = ap.parse_args()
    result = asyncio.run(asyncio.wait_for(run(args.records, bootstrap, admin_url), 110))
    if args.json:
        print(json.dumps(result))
        return
    print(f"projection drain: {result['rows']:,.0f} rows in {result['drain_s']:.2f}s = "
          f"{result['rows_per_s']:,.0f} rows/s ({result['with_startup_s']:.2f}s with start-up)")
    print(f"CPU: projection {result['projection_cpu_s']:.2f}s, Postgres backends "
          f"{result['postgres_cpu_s']:.2f}s -> {result['rows_per_cpu_bound_s']:,.0f} rows/s "
          f"when each has a core; load average {os.getloadavg()[0]:.1f}")
    drain = result["drain_s"]
    for who, on_cpu, queued in (("projection's event loop", result["loop_on_cpu_s"],
                                 result["loop_runqueue_s"]),
                                ("Postgres backends", result["postgres_on_cpu_s"],
                                 result["postgres_runqueue_s"])):
        print(f"{who}: on a CPU {on_cpu:.2f}s, waiting for one {queued:.2f}s, neither "
              f"{drain - on_cpu - queued:.2f}s of the {drain:.2f}s drain")


if __name__ == "__main__":
    main()
