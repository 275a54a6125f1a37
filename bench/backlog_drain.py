"""Backlog drain, issue 12's measurement: a backlog of bench-workload signals is produced first,
then each contender is started on it and timed until its consumer group has committed the whole
backlog (signals/s from its first commit to the last, so start-up is left out).

Contenders, one after the other in the same run: raw aiokafka and raw confluent-kafka
passthrough, and router-stream
with Postgres on — the worker with the projection (`router-stream persist`) as its own process,
as deployed. ``--old PATH`` adds the worker of another checkout (PYTHONPATH=PATH), e.g. the
previous main in a temporary worktree, whose worker still wrote Postgres itself.

    python -m bench.backlog_drain [--signals 100000] [--old /tmp/old-checkout]
                                  [--processes 1 2] [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import time
import uuid
from typing import Any

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from bench.contenders import (
    PARTITIONS,
    POLICY_FILE,
    Contender,
    RawPassthrough,
    RouterStream,
    _router_stream_exe,
)
from bench.drivers import produce_all, quiet
from bench.workload import Workload


async def _produce_backlog(bootstrap: str, topic: str, n: int) -> None:
    workload = Workload()
    records = ((topic, *workload.signal(i, int(time.time() * 1e6), b"d"), None) for i in range(n))
    await asyncio.to_thread(produce_all, bootstrap, records)


_COORDINATOR_NOT_READY = frozenset({
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR})


async def _committed(admin: AdminClient, group: str, topic: str) -> int:
    """Offsets the group has committed on ``topic``; 0 while the group's coordinator is not
    ready (still loading its offsets after the broker started, or moving)."""
    [future] = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p) for p in range(PARTITIONS)])]).values()
    try:
        answer = await asyncio.wrap_future(future)
    except KafkaException as e:
        if e.args and e.args[0].code() in _COORDINATOR_NOT_READY:
            return 0
        raise
    return sum(max(tp.offset, 0) for tp in answer.topic_partitions)


class OldWorker(RouterStream):
    """A checkout from before the projection: its worker writes Postgres itself."""

    def command(self) -> list[str]:
        return [_router_stream_exe(), "worker", "--policy", str(POLICY_FILE), "--http-port", "0"]


def _group(c: Contender) -> str:
    return f"bench-{c.run_id}-{c.key}"


async def drain(c: Contender, n: int, database_url: str, env: dict[str, str],
                timeout_s: float = 100) -> dict[str, Any]:
    await c.prepare(database_url)
    try:
        await _produce_backlog(c.bootstrap, c.signals_topic, n)
        # one client for the whole drain: a new one per poll connected and fetched metadata
        # five times a second on the machine being measured
        admin = AdminClient({"bootstrap.servers": c.bootstrap, **quiet()})
        proc = subprocess.Popen(c.command(), env={**c.env(), **env}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            started = time.monotonic()
            first: tuple[float, int] | None = None
            done = 0
            while time.monotonic() - started < timeout_s:
                done = await _committed(admin, _group(c), c.signals_topic)
                if done and first is None:
                    first = (time.monotonic(), done)
                if done >= n:
                    break
                await asyncio.sleep(0.2)
            end = time.monotonic()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        if first is None or done < n:
            return {"label": c.label, "drained": done, "rate": None}
        rate = (n - first[1]) / max(1e-9, end - first[0])
        return {"label": c.label, "drained": done, "rate": rate,
                "with_startup_s": end - started}
    finally:
        await c.cleanup(database_url)


async def run(n: int, old: str | None, processes: list[int],
              postgres: bool = True) -> list[dict[str, Any]]:
    bootstrap = os.environ.get("ROUTER_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    database_url = os.environ.get("ROUTER_DATABASE_URL",
                                  "postgresql://router@127.0.0.1:15432/router")
    run_id = uuid.uuid4().hex[:6]
    plan: list[tuple[Contender, dict[str, str]]] = [
        (RawPassthrough("raw", "raw aiokafka passthrough", run_id, bootstrap), {}),
        (RawPassthrough("raw_ck", "raw confluent-kafka passthrough", run_id, bootstrap,
                        client="confluent"), {}),
    ]
    for count in processes:  # `worker --processes N` through its setting
        key = ("router_pg" if postgres else "router") + (f"{count}" if count > 1 else "")
        label = (f"router-stream{f', {count} procs' if count > 1 else ''}"
                 f"{' + persist process' if postgres else ', no Postgres'}")
        plan.append((RouterStream(key, label, run_id, bootstrap, persist=postgres),
                     {"ROUTER_WORKER_PROCESSES": str(count)}))
    if old:
        plan.append((OldWorker("router_old", f"router-stream at {old} (Postgres in the worker)",
                               run_id, bootstrap, persist=True), {"PYTHONPATH": old}))
    results = []
    for contender, env in plan:
        results.append(await drain(contender, n, database_url, env))
        r = results[-1]
        rate = "did not drain" if r["rate"] is None else f"{r['rate']:,.0f} signals/s"
        print(f"{r['label']}: {rate}", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--signals", type=int, default=100_000)
    ap.add_argument("--old", default=None)
    ap.add_argument("--processes", type=int, nargs="+", default=[1], metavar="N",
                    help="one router-stream contender per count (`worker --processes N`)")
    ap.add_argument("--no-postgres", action="store_true",
                    help="router-stream without Postgres and projection (ROUTER_PERSIST=false)")
    args = ap.parse_args()
    results = asyncio.run(run(args.signals, args.old, args.processes, not args.no_postgres))
    raw = results[0]["rate"]
    for r in results[1:]:
        if r["rate"] and raw:
            print(f"{r['label']}: {r['rate'] / raw:.2f}x raw")


if __name__ == "__main__":
    main()
