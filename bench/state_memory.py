"""Worker memory with a large state: issue 6's "RSS < 300 MB with 100k sources and 10k
destinations in state", measured on a real ``router-stream worker`` process.

``router-stream bench --state-memory`` (or ``python -m bench.state_memory --help`` for the sizes,
``--profile`` and ``--profile-only``). One run, on the broker and database of
``ROUTER_KAFKA_BOOTSTRAP`` / ``ROUTER_DATABASE_URL``::

    prepare   topics under ``bench-<run>.state.`` (topics.yaml, plus routed.<d> for the two
              destinations the policy declares), a database ``bench_<run>_state``, migrated
    baseline  a worker on empty state topics: start, route ``warm_signals`` signals, settle,
              read its memory (/proc/<pid>/status), scrape /metrics, read it again, SIGTERM
    publish   one health event per source (``src-000000`` ...) to ``source-health`` and one
              outcome per destination (``dst-00000`` ...) to ``outcomes`` (``events_per_entry``
              each: spread over the breaker window, one per bucket, to fill the windows)
    full      a second worker (the same consumer group: it routes only its own warm signals)
              replays them, then the same as baseline
    verify    the worker's own accounting: the records its state replay applied (its log line
              "state topics replayed"), the ``trust_score{source}`` / ``breaker_state{
              destination}`` series of its /metrics by id prefix, and the distinct source ids of
              its ``trust_snapshots`` rows in Postgres; the run fails (exit 2) when any of them
              holds fewer than the sources / destinations published
    cleanup   every topic under the prefix and the database are deleted, also on failure
    keys      then :mod:`bench.key_flood`: 1M unique tenants and 1M unique signal ids through the
              engine in-process, RSS before and after (``--key-flood 0`` skips it)

Why the 10,000 destinations are not declared in the policy: the worker verifies a
``routed.<d>`` topic for every destination its policy declares and refuses to start without
one (service.py ``_verify_topics``), and topics.yaml gives each 12 partitions — 10,000
declared destinations would be 120,000 partitions on the shared development broker (its
file-descriptor limit is 20,000). The engine does not need them declared to hold their state:
``RouterEngine.apply_outcome`` keeps trust, a breaker, a bandit arm and a load counter for any
``destination`` an outcome names, exactly as for a declared one (only the bandit prior differs,
same size), and ``apply_health`` the same for sources (one id space, SPEC §2). So the policy
declares and routes to two of them (``dst-00000``, ``dst-00001``); the state of all 10,000 is
what the worker holds. What a policy naming 10,000 destinations would add on top (the compiled
policy) is measured in-process by ``--profile``.

Figures are printed and saved as JSON (``<out>/<ts>-state-memory-<run>.json``), not asserted:
the RSS goal is reported met or not. What is asserted is that the state really was loaded. The
settled RSS is the median of samples every 0.5 s over ``settle_s``; the peak is VmHWM after one
/metrics scrape. When the goal is not met (or with ``--profile``) the run ends with the
in-process profile, :func:`profile_in_process` (~1.5 min, ~2 GB of tracemalloc bookkeeping in
the benchmark's own process at full size).

Measured 2026-11-30 (bench/results/*-state-memory-cbeef3.json, 2-core shared host): baseline
70 MB; with 100k sources + 10k destinations 326 MB settled (319-359), 371 MB peak before a
scrape, 382 MB after one, ~2.4 KB per entry; with full breaker windows (``--events-per-entry
12``, *-cbb2fa.json) 454 MB settled, 504 MB peak. The largest part is not the engine (64 MB,
609 bytes per entry; 1.9 KB with full windows) but the two Prometheus gauges with one child per
id (``trust_score{source}``, ``breaker_state{destination}``: 144 MB, ~1.4 KB per entry), which
the worker also refreshes every second (~1 s of CPU per refresh at this size).

After those two gauges became a collector read at scrape time (worker/metrics.py), the same
run (*-state-memory-a5ac92.json, 53 s): baseline 70 MB; full state 158 MB settled (155-187),
194 MB peak before a scrape, 245 MB after one (rendering 9.7 MB of text, 4.0 s in a thread),
834 bytes per entry — the goal is met with ~55 MB to spare at the peak. Still 63 % of a core
while idle at this size; py-spy found ``RouterEngine.tick`` scanning all 110k breakers ten times
a second. With the engine's not-closed index (*-state-memory-58f6e6.json): 159 MB settled,
247 MB peak, 22 % of a core idle, warm signals 4.2 s instead of 8.0 s. With the breaker
window stored flat and the per-id families rendered directly (*-7dd299.json): 153 MB settled,
190 MB peak, scrape 0.57 s; full windows (``--events-per-entry 12``, *-bcc673.json): 227 MB
settled, 269 MB peak. With state checkpoints (adapters/checkpoint_store.py), run with
``ROUTER_CHECKPOINT_INTERVAL_S=5`` so the full worker writes one while measured
(*-d16d03.json): 110k entries in 3 chunks, 1.2 MB, 0.57 s; 172 MB settled, 211 MB peak.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import key_flood

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RSS_GOAL_MB = 300.0
BUDGET_S = 600.0
SAMPLE_EVERY_S = 0.5
BREAKER_WINDOW_S = 60.0
BREAKER_BUCKETS = 12  # BreakerConfig.window_buckets (not a policy field; a test checks it)


@dataclass(frozen=True)
class Spec:
    sources: int = 100_000
    destinations: int = 10_000
    events_per_entry: int = 1      # > 1 fills each breaker's error-rate window, one per bucket
    warm_signals: int = 3_000      # routed by each worker before its memory is read
    settle_s: float = 15.0         # sampling window after the warm signals (>= 1 trust snapshot)
    limit_mb: float = RSS_GOAL_MB
    key_flood: int = 1_000_000     # unique tenants / ids for bench/key_flood.py (0: skip it)

    def __post_init__(self) -> None:
        if self.sources < 10 or self.destinations < 2:
            raise ValueError("needs at least 10 sources and 2 destinations")
        if not 1 <= self.events_per_entry <= BREAKER_BUCKETS:
            raise ValueError(f"events_per_entry must be 1..{BREAKER_BUCKETS}")

    @property
    def entries(self) -> int:
        return self.sources + self.destinations

    @property
    def routed(self) -> tuple[str, str]:
        """The two destinations the policy declares (and the only routed topics created)."""
        return destination_id(0), destination_id(1)


def source_id(i: int) -> str:
    return f"src-{i:06d}"


def destination_id(i: int) -> str:
    return f"dst-{i:05d}"


# --- the workload ---------------------------------------------------------------------------


def policy_yaml(spec: Spec) -> str:
    a, b = spec.routed
    return f"""# bench/state_memory.py: 2 destinations declared, {spec.destinations:,} in state.
name: state-memory
description: worker memory with {spec.sources:,} sources and {spec.destinations:,} destinations.
breaker:
  failure_threshold: 5
  error_rate_threshold: 0.5
  window_s: {BREAKER_WINDOW_S:g}
  min_volume: 20
  cooldown_s: 30
  max_cooldown_s: 600
destinations:
  {a}: {{capacity: 1000}}
  {b}: {{capacity: 1000}}
classify:
  - name: observations
    when: {{field: metric, exists: true}}
    kind: observation
  - name: alerts
    when: {{field: payload.severity, in: [critical, high]}}
    kind: alert
  - name: notifications
    when: {{field: sender_id, regex: "^app-"}}
    kind: notification
routes:
  alert:
    strategy: first_healthy
    tiers: [[{a}], [{b}]]
  notification:
    strategy: thompson
    destinations: [{a}, {b}]
    bandit: {{seed: 7}}
  observation:
    strategy: consensus
    destinations: [{a}]
    consensus: {{mad_k: 3.5, max_dispersion: 0.05, max_staleness_s: 60, min_sources: 2}}
defaults: {{unclassified: dlq, unrouted: dlq}}
tenants:
  default: {{rate: 1000000, burst: 1000000}}
"""


def _event_times(spec: Spec, now_ms: int) -> list[int]:
    """One timestamp per round of events, a bucket apart, the last one ``now``."""
    bucket_ms = int(BREAKER_WINDOW_S / BREAKER_BUCKETS * 1000)
    n = spec.events_per_entry
    return [now_ms - (n - 1 - k) * bucket_ms for k in range(n)]


def health_events(spec: Spec, now_ms: int) -> Iterator[tuple[bytes, bytes, int]]:
    """(key, value, timestamp ms) of every health event: each source once per round."""
    for ts in _event_times(spec, now_ms):
        for i in range(spec.sources):
            sid = source_id(i)
            yield sid.encode(), orjson.dumps({
                "source_id": sid, "ts": ts, "ok": i % 50 != 49, "latency_ms": 5 + i % 200,
                "error_rate": (i % 10) / 100, "last_data_ts": ts - 1000 * (i % 30),
                "completeness": 1.0 - (i % 7) / 100}), ts


def outcome_events(spec: Spec, now_ms: int) -> Iterator[tuple[bytes, bytes, int]]:
    """(key, value, timestamp ms) of every outcome: each destination once per round."""
    for k, ts in enumerate(_event_times(spec, now_ms)):
        for i in range(spec.destinations):
            did = destination_id(i)
            yield did.encode(), orjson.dumps({
                "signal_id": f"o-{k}-{i}", "destination": did, "ts": ts, "ok": i % 50 != 49,
                "latency_ms": 20 + i % 300, "reward": (i % 11) / 10}), ts


def warm_signals(spec: Spec, tag: str) -> Iterator[tuple[bytes, bytes]]:
    """Alerts, notifications and consensus observations (5 of the sources per metric), in
    thirds: every strategy of the policy and the trust lookups of the hot path run."""
    for i in range(spec.warm_signals):
        sid = f"{tag}-{i}"
        match i % 3:
            case 0:
                sender = f"svc-{i % 17}"
                body: dict[str, Any] = {"signal_id": sid, "sender_id": sender,
                                        "payload": {"severity": "critical", "message": "disk"}}
            case 1:
                sender = f"app-{i % 13}"
                body = {"signal_id": sid, "sender_id": sender, "payload": {"text": "hello"}}
            case _:
                n = i // 3
                metric = f"metric-{n % 20}"
                sender = source_id((n % 20) * 5 + (n // 20) % 5)
                body = {"signal_id": sid, "sender_id": sender, "metric": metric,
                        "source_id": sender, "value": 100.0 + (i % 5) * 0.1, "payload": {}}
                yield metric.encode(), orjson.dumps(body)
                continue
        yield sender.encode(), orjson.dumps(body)


# --- reading a worker ---------------------------------------------------------------------


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of ``pid`` in bytes (Linux /proc)."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in wanted:
                out[name] = int(rest.split()[0]) * 1024
    return out


_SERIES = re.compile(rb'^(trust_score|breaker_state)\{(?:source|destination)="([^"]*)"\}',
                     re.MULTILINE)


def count_state(exposition: bytes) -> dict[str, int]:
    """Series of the worker's /metrics per state kind and id prefix, e.g.
    ``{"trust_score.src": 100000, "breaker_state.dst": 10000, ...}`` (trust_score{source} is
    every entry of the engine's trust table, breaker_state{destination} of its breakers)."""
    counts: dict[str, int] = {}
    for metric, label in _SERIES.findall(exposition):
        kind = label.split(b"-", 1)[0].decode() if b"-" in label else "other"
        key = f"{metric.decode()}.{kind}"
        counts[key] = counts.get(key, 0) + 1
    return counts


_COUNTER = re.compile(rb'^(signals_received_total|dlq_total)\{(?:kind|reason)="([^"]*)"\} (\S+)$',
                      re.MULTILINE)


def count_signals(exposition: bytes) -> dict[str, dict[str, int]]:
    """How the worker's signals ended, from its /metrics: received per kind, DLQ per reason."""
    out: dict[str, dict[str, int]] = {"received": {}, "dlq": {}}
    for metric, label, value in _COUNTER.findall(exposition):
        part = out["received" if metric.startswith(b"signals") else "dlq"]
        part[label.decode()] = int(float(value))
    return out


def check_loaded(spec: Spec, metrics: dict[str, int], snapshots: dict[str, int],
                 replayed: int | None) -> list[str]:
    """What the worker holds less of than was published (empty: the state is loaded)."""
    want = {"src": spec.sources, "dst": spec.destinations}
    problems = []
    for series in ("trust_score", "breaker_state"):
        for kind, n in want.items():
            got = metrics.get(f"{series}.{kind}", 0)
            if got < n:
                problems.append(f"/metrics {series}: {got:,} {kind} ids, published {n:,}")
    for kind, n in want.items():
        got = snapshots.get(kind, 0)
        if got < n:
            problems.append(f"trust_snapshots: {got:,} distinct {kind} ids, published {n:,}")
    published = spec.entries * spec.events_per_entry
    if replayed is None or replayed < published:
        problems.append(f"state replay applied {replayed} records, published {published:,}")
    return problems


class WorkerProcess:
    """One ``router-stream worker`` subprocess, its JSON log followed from a file."""

    def __init__(self, phase: str, env: dict[str, str], policy: Path, log_path: Path) -> None:
        from bench.contenders import _router_stream_exe

        self.phase = phase
        self.log_path = log_path
        self.started = time.monotonic()
        self.events: dict[str, dict[str, Any]] = {}
        self.at: dict[str, float] = {}
        self._read = 0
        from bench.harness import CHILDREN

        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [_router_stream_exe(), "worker", "--policy", str(policy), "--http-port", "0"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        CHILDREN.append(self.proc)  # killed by the CLI's watchdog if the run hangs

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _follow(self) -> None:
        with open(self.log_path, "rb") as f:
            f.seek(self._read)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self._read += end
        for line in chunk[:end].splitlines():
            with contextlib.suppress(ValueError):
                event = orjson.loads(line)
                if isinstance(event, dict) and isinstance(event.get("msg"), str):
                    msg = event["msg"]
                    if msg not in self.events:
                        self.events[msg] = event
                        self.at[msg] = time.monotonic() - self.started

    async def wait_for(self, msg: str, timeout: float) -> dict[str, Any]:
        limit = time.monotonic() + timeout
        while True:
            self._follow()
            if msg in self.events:
                return self.events[msg]
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.phase} worker exited with {self.proc.returncode} "
                                   f"before {msg!r}:\n{self.tail()}")
            if time.monotonic() > limit:
                raise RuntimeError(f"{self.phase} worker: no {msg!r} within {timeout:.0f}s:\n"
                                   f"{self.tail()}")
            await asyncio.sleep(0.2)

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.phase} worker exited with {self.proc.returncode}:\n"
                               f"{self.tail()}")

    def tail(self, lines: int = 12) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
            return "\n".join(t[:400] for t in text)
        return ""

    async def stop(self, timeout: float = 25.0) -> int | None:
        from bench.harness import stop_process

        return await stop_process(self.proc, timeout)


# --- the run --------------------------------------------------------------------------------


@dataclass
class Run:
    spec: Spec
    bootstrap: str
    admin_database_url: str
    out_dir: Path
    say: Any = print

    def __post_init__(self) -> None:
        self.run_id = secrets.token_hex(3)
        self.prefix = f"bench-{self.run_id}.state."
        self.database = f"bench_{self.run_id}_state"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.run_id}-state-"))
        self.policy = self.workdir / "policy.yaml"
        self.log_dir = self.out_dir / "logs" / self.run_id
        self.database_url = ""
        self.workers: list[WorkerProcess] = []

    def settings(self) -> Any:
        from router_stream.config import Settings

        return Settings(kafka_bootstrap=self.bootstrap, topic_prefix=self.prefix,
                        database_url=self.database_url or self.admin_database_url)

    async def prepare(self) -> None:
        from bench.contenders import _admin_sql, _with_database
        from router_stream.adapters.postgres import migrate_database
        from router_stream.adapters.topics import apply_topics

        self.policy.write_text(policy_yaml(self.spec))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        await apply_topics(self.settings(), list(self.spec.routed), timeout=60)
        await _admin_sql(self.admin_database_url, f'CREATE DATABASE "{self.database}"')
        self.database_url = _with_database(self.admin_database_url, self.database)
        await migrate_database(self.settings())

    async def cleanup(self) -> None:
        from bench.contenders import _admin_sql, delete_topics_with_prefix

        for w in self.workers:
            with contextlib.suppress(Exception):
                await w.stop(10)
        try:
            deleted = await asyncio.wait_for(
                delete_topics_with_prefix(self.bootstrap, self.prefix), 60)
            self.say(f"cleanup: deleted {len(deleted)} topics {self.prefix}*")
        except Exception as exc:  # reported, never hides the run's own error
            self.say(f"cleanup: could not delete topics {self.prefix}*: {exc!r}")
        if self.database_url:
            try:
                await asyncio.wait_for(_admin_sql(
                    self.admin_database_url,
                    f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'), 30)
                self.say(f"cleanup: dropped database {self.database}")
            except Exception as exc:
                self.say(f"cleanup: could not drop database {self.database}: {exc!r}")
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def produce(self, logical: str, records: Iterator[tuple[bytes, bytes, int | None]]
                      ) -> int:
        from router_stream.adapters.kafka_io import OutRecord, RecordWriter

        topic = self.settings().topic(logical)
        n = 0
        async with RecordWriter(self.settings(), linger_ms=20) as producer:
            chunk: list[OutRecord] = []
            for key, value, ts in records:
                chunk.append(OutRecord(topic, value, key=key, timestamp_ms=ts))
                n += 1
                if len(chunk) >= 20_000:
                    await asyncio.gather(*await producer.send_many(chunk))
                    chunk.clear()
            await asyncio.gather(*await producer.send_many(chunk))
        return n

    async def _end_offsets(self, logical: str) -> int:
        from confluent_kafka import Consumer, TopicPartition

        topic = self.settings().topic(logical)
        consumer = Consumer({"bootstrap.servers": self.bootstrap,
                             "group.id": f"state-memory-{uuid.uuid4().hex}"})  # never joined

        def total() -> int:
            parts = consumer.list_topics(topic, 30.0).topics[topic].partitions
            return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), 30.0)[1]
                       for p in parts)

        try:
            return await asyncio.to_thread(total)
        finally:
            await asyncio.to_thread(consumer.close)

    async def _committed(self, group: str) -> int:
        from confluent_kafka import ConsumerGroupTopicPartitions
        from confluent_kafka.admin import AdminClient

        topic = self.settings().topic("signals")
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                    request_timeout=30.0)
        answer = await asyncio.wrap_future(futures[group])
        return sum(tp.offset for tp in answer.topic_partitions or ()
                   if tp.topic == topic and tp.offset > 0)

    async def _trust_snapshot_ids(self, since: float) -> dict[str, int]:
        import asyncpg

        conn = await asyncpg.connect(self.database_url, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT left(source_id, 3) AS kind, count(DISTINCT source_id) AS n "
                "FROM trust_snapshots WHERE at >= to_timestamp($1) GROUP BY 1", since)
            counts = {str(r["kind"]): int(r["n"]) for r in rows}
            return {"src": counts.get("src", 0), "dst": counts.get("dst", 0)}
        finally:
            await conn.close()

    async def measure(self, phase: str, deadline: float) -> dict[str, Any]:
        """Start a worker, let it replay and route the warm signals, then read its memory."""
        # One consumer group for both workers, as for a restarted worker: each routes only
        # the signals produced for it, not the other phase's again.
        group = f"bench-{self.run_id}-state"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "ROUTER_KAFKA_BOOTSTRAP": self.bootstrap,
               "ROUTER_TOPIC_PREFIX": self.prefix, "ROUTER_GROUP_ID": group,
               "ROUTER_DATABASE_URL": self.database_url, "ROUTER_LOG_LEVEL": "INFO",
               "ROUTER_WORKER_ID": f"bench-{self.run_id}-state-{phase}"}
        for name in ("ROUTER_POLICY_FILE", "ROUTER_PERSIST", "ROUTER_HTTP_PORT"):
            env.pop(name, None)
        started_wall = time.time()
        w = WorkerProcess(phase, env, self.policy, self.log_dir / f"state-{phase}.log")
        self.workers.append(w)
        out: dict[str, Any] = {"phase": phase, "pid": w.pid}
        port = (await w.wait_for("http listening", 60))["port"]
        replayed = await w.wait_for("state topics replayed", max(30.0, deadline - time.monotonic()))
        out["replayed_records"] = replayed.get("records")
        out["replay_done_s"] = round(w.at["state topics replayed"], 1)
        await w.wait_for("worker started", 60)
        out["started_s"] = round(w.at["worker started"], 1)
        out["memory_at_start"] = proc_memory(w.pid)
        self.say(f"  {phase}: worker {w.pid} replayed {out['replayed_records']:,} state records, "
                 f"started after {out['started_s']:.1f}s "
                 f"(RSS {out['memory_at_start']['VmRSS'] / 2**20:.0f} MB)")

        sent = await self.produce("signals", ((k, v, None) for k, v in
                                              warm_signals(self.spec, f"{self.run_id}-{phase}")))
        target = await self._end_offsets("signals")
        limit = time.monotonic() + 120
        while (done := await self._committed(group)) < target:
            w.alive()
            if time.monotonic() > limit:
                raise RuntimeError(f"{phase}: the worker committed {done} of {target} signals")
            await asyncio.sleep(0.5)
        out["warm_signals"] = sent
        out["warm_done_s"] = round(time.monotonic() - w.started, 1)

        samples = []
        cpu0, t0 = _cpu_seconds(w.pid), time.monotonic()
        until = t0 + self.spec.settle_s
        while time.monotonic() < until:
            w.alive()
            samples.append(proc_memory(w.pid)["VmRSS"])
            await asyncio.sleep(SAMPLE_EVERY_S)
        out["idle_cpu_share"] = round((_cpu_seconds(w.pid) - cpu0) / (time.monotonic() - t0), 3)
        out["memory"] = proc_memory(w.pid)
        out["rss_settle"] = {"min": min(samples), "median": int(statistics.median(samples)),
                             "max": max(samples), "samples": len(samples)}

        t0 = time.monotonic()
        exposition = await asyncio.get_running_loop().run_in_executor(
            None, _http_get, f"http://127.0.0.1:{port}/metrics")
        out["scrape_s"] = round(time.monotonic() - t0, 2)
        out["scrape_bytes"] = len(exposition)
        out["metrics_series"] = count_state(exposition)
        out["signals"] = count_signals(exposition)
        del exposition
        await asyncio.sleep(2.0)
        out["memory_after_scrape"] = proc_memory(w.pid)

        limit = time.monotonic() + 60
        while True:  # the first snapshot runs ~1 s after start-up; 110k rows take a few s
            out["trust_snapshot_ids"] = await self._trust_snapshot_ids(started_wall - 1)
            if phase == "baseline" or sum(out["trust_snapshot_ids"].values()) >= self.spec.entries \
                    or time.monotonic() > limit:
                break
            await asyncio.sleep(1.0)
        out["exit_code"] = await w.stop()
        self.workers.remove(w)
        out["log"] = str(w.log_path)
        return out

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        started = time.monotonic()
        deadline = started + BUDGET_S - 60
        result: dict[str, Any] = {"run_id": self.run_id, "kind": "state-memory",
                                  "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "spec": asdict(spec), "prefix": self.prefix,
                                  "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}
        try:
            self.say(f"prepare: topics {self.prefix}*, database {self.database}")
            await self.prepare()
            self.say("baseline: a worker with empty state topics")
            result["baseline"] = await self.measure("baseline", deadline)
            now_ms = int(time.time() * 1000)
            t0 = time.monotonic()
            n_health = await self.produce("source-health", health_events(spec, now_ms))
            n_out = await self.produce("outcomes", outcome_events(spec, now_ms))
            result["publish"] = {"health_events": n_health, "outcomes": n_out,
                                 "seconds": round(time.monotonic() - t0, 1),
                                 "on_broker": {"source-health": await self._end_offsets(
                                     "source-health"), "outcomes": await self._end_offsets(
                                     "outcomes")}}
            self.say(f"publish: {n_health:,} health events, {n_out:,} outcomes in "
                     f"{result['publish']['seconds']:.1f}s")
            self.say(f"full: a worker replaying {spec.sources:,} sources and "
                     f"{spec.destinations:,} destinations")
            full = result["full"] = await self.measure("full", deadline)
            problems = check_loaded(spec, full["metrics_series"], full["trust_snapshot_ids"],
                                    full["replayed_records"])
            if full["exit_code"] != 0:
                problems.append(f"the full worker exited with {full['exit_code']} on SIGTERM")
            result["state_check"] = problems or "ok"
        finally:
            result["duration_s"] = round(time.monotonic() - started, 1)
            result["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
            await self.cleanup()
        return result


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (/proc/<pid>/stat, clock ticks)."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        body: bytes = response.read()
        return body


# --- the in-process profile ---------------------------------------------------------------


def profile_in_process(spec: Spec, top: int = 12) -> dict[str, Any]:
    """Where the memory goes: the worker's code paths in this process, under tracemalloc.

    The state follower's fold (``parse_health`` / ``parse_outcome`` -> ``apply_*``, as
    worker/state.py does it), then what the worker's gauge refresh adds every second
    (``engine.snapshot`` -> ``WorkerMetrics.set_state``) and one /metrics exposition; and what a
    compiled policy declaring every destination would cost. Sizes are Python allocations
    (tracemalloc), not RSS: the allocator's overhead and fragmentation come on top.
    """
    from router_stream.config import Settings
    from router_stream.core.parsing import Rejection, parse_health, parse_outcome
    from router_stream.worker.metrics import WorkerMetrics
    from router_stream.worker.policy_source import build_engine, compile_policy_text

    now_ms = int(time.time() * 1000)
    health = list(health_events(spec, now_ms))
    outcomes = list(outcome_events(spec, now_ms))
    compiled = compile_policy_text(policy_yaml(spec))

    def fold(engine: Any) -> None:
        for _key, value, ts in health:
            event = parse_health(value, record_ts_ms=ts)
            assert not isinstance(event, Rejection), event
            engine.apply_health(event, ts / 1000)
        for _key, value, ts in outcomes:
            outcome = parse_outcome(value, record_ts_ms=ts)
            assert not isinstance(outcome, Rejection), outcome
            engine.apply_outcome(outcome, ts / 1000)

    # What the worker pays in time (untraced: tracemalloc slows allocations down severalfold).
    seconds: dict[str, float] = {}
    clock = time.perf_counter
    engine = build_engine(Settings(), compiled)
    t0 = clock()
    fold(engine)
    seconds["fold"] = clock() - t0
    metrics = WorkerMetrics()
    for key in ("first_refresh", "refresh"):  # service.py _refresh_gauges, every second
        t0 = clock()
        snap = engine.snapshot(now_ms / 1000)
        metrics.set_state(snap.trust, snap.breakers)
        seconds[key] = clock() - t0
    t0 = clock()
    metrics.exposition()
    seconds["exposition"] = clock() - t0
    del engine, metrics, snap

    # Where the memory goes (traced).
    engine = build_engine(Settings(), compiled)
    tracing = tracemalloc.is_tracing()  # PYTHONTRACEMALLOC: leave it as it was
    if not tracing:
        tracemalloc.start()
    try:
        base = tracemalloc.take_snapshot()
        fold(engine)
        health.clear()  # the records are not state: out of the picture
        outcomes.clear()
        folded = tracemalloc.take_snapshot()
        metrics = WorkerMetrics()
        snap = engine.snapshot(now_ms / 1000)
        metrics.set_state(snap.trust, snap.breakers)
        del snap
        gauges = tracemalloc.take_snapshot()
        tracemalloc.reset_peak()
        current = tracemalloc.get_traced_memory()[0]
        exposition_len = len(metrics.exposition())
        exposition_peak = tracemalloc.get_traced_memory()[1] - current
        engine_state = _diff(folded, base, top)
        gauge_state = _diff(gauges, folded, top)
        declared = _compiled_policy_size(spec)
    finally:
        if not tracing:
            tracemalloc.stop()
    return {
        "entries": {"trust": len(engine.state.trust), "breakers": len(engine.state.breakers),
                    "bandit_arms": len(engine.state.arms), "load": len(engine.state.load)},
        "engine_state": engine_state, "prometheus_gauges": gauge_state,
        "exposition": {"bytes": exposition_len, "peak_extra_bytes": exposition_peak},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "policy_declaring_all_destinations": declared,
    }


def _diff(after: Any, before: Any, top: int) -> dict[str, Any]:
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    return {"bytes": total, "top": [
        {"where": f"{s.traceback[0].filename.rsplit('site-packages/', 1)[-1]}:"
                  f"{s.traceback[0].lineno}", "bytes": s.size_diff, "blocks": s.count_diff}
        for s in sorted(stats, key=lambda s: -s.size_diff)[:top]]}


def _compiled_policy_size(spec: Spec) -> dict[str, Any]:
    """Bytes of a compiled policy that declares every destination and routes a thompson bandit
    over all of them (what declaring them would add; the routed topics aside)."""
    from router_stream.worker.policy_source import compile_policy_text

    names = [destination_id(i) for i in range(spec.destinations)]
    text = (policy_yaml(spec).split("destinations:\n", 1)[0] + "destinations:\n"
            + "".join(f"  {d}: {{capacity: 1000}}\n" for d in names)
            + "routes:\n  notification:\n    strategy: thompson\n    destinations: ["
            + ", ".join(names) + "]\ndefaults: {unclassified: dlq, unrouted: dlq}\n")
    before = tracemalloc.take_snapshot()
    compiled = compile_policy_text(text)
    after = tracemalloc.take_snapshot()
    size = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return {"destinations": len(compiled.destinations), "bytes": size}


# --- output ---------------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB"


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures: the settled RSS (median of the samples) of the empty and the full
    worker, their difference, bytes per entry, and the peaks (VmHWM, the /metrics scrape
    included)."""
    spec = result["spec"]
    base, full = result.get("baseline"), result.get("full")
    if not base or not full:
        return {}
    entries = spec["sources"] + spec["destinations"]
    rss_b, rss_f = base["rss_settle"]["median"], full["rss_settle"]["median"]
    limit = spec["limit_mb"] * 2**20
    return {
        "baseline_rss": rss_b, "full_rss": rss_f, "difference": rss_f - rss_b,
        "bytes_per_entry": (rss_f - rss_b) / entries,
        "baseline_hwm": base["memory_after_scrape"]["VmHWM"],
        "full_hwm_before_scrape": full["memory"]["VmHWM"],
        "full_hwm": full["memory_after_scrape"]["VmHWM"],
        "settled_goal_met": rss_f < limit,
        "goal_met": max(rss_f, full["memory_after_scrape"]["VmHWM"]) < limit,
    }


def print_report(result: dict[str, Any], say: Any = print) -> None:
    spec = result["spec"]
    s = summarize(result)
    say("")
    say(f"state memory, run {result['run_id']} ({result.get('duration_s', 0):.0f}s): "
        f"{spec['sources']:,} sources + {spec['destinations']:,} destinations, "
        f"{spec['events_per_entry']} event(s) each, {spec['warm_signals']:,} signals routed "
        "per worker")
    if not s:
        return
    b, f = result["baseline"], result["full"]
    settle = spec["settle_s"]

    def both(fmt: Any) -> tuple[str, str]:
        return fmt(b), fmt(f)

    rows = [("", "baseline (empty state)", "full state"),
            ("RSS at 'worker started' (replayed)", *both(
                lambda x: _mb(x["memory_at_start"]["VmRSS"]))),
            (f"RSS over {settle:.0f}s settled: median", *both(
                lambda x: _mb(x["rss_settle"]["median"]))),
            ("  min..max", *both(lambda x: f"{_mb(x['rss_settle']['min'])}.."
                                           f"{_mb(x['rss_settle']['max'])}")),
            ("  RssAnon at the end", *both(lambda x: _mb(x["memory"]["RssAnon"]))),
            ("VmHWM before the /metrics scrape", *both(lambda x: _mb(x["memory"]["VmHWM"]))),
            ("RSS after one /metrics scrape", *both(
                lambda x: _mb(x["memory_after_scrape"]["VmRSS"]))),
            ("VmHWM after it (peak of the run)", *both(
                lambda x: _mb(x["memory_after_scrape"]["VmHWM"]))),
            ("/metrics scrape", *both(lambda x: f"{_mb(x['scrape_bytes'])} in "
                                                f"{x['scrape_s']:.2f}s")),
            ("CPU while settling (of a core)", *both(lambda x: f"{x['idle_cpu_share']:.0%}")),
            ("state records replayed", *both(lambda x: f"{x['replayed_records']:,}")),
            ("started after", *both(lambda x: f"{x['started_s']:.1f}s")),
            ("exit code after SIGTERM", *both(lambda x: str(x["exit_code"]))),
            ("warm signals done after", *both(lambda x: f"{x['warm_done_s']:.1f}s"))]
    for key in ("trust_score.src", "trust_score.dst", "breaker_state.src", "breaker_state.dst"):
        rows.append((f"/metrics {key} series", *both(
            lambda x, k=key: f"{x['metrics_series'].get(k, 0):,}")))
    rows.append(("trust_snapshots distinct src/dst", *both(
        lambda x: "{src:,}/{dst:,}".format(**x["trust_snapshot_ids"]))))
    width = max(len(r[0]) for r in rows)
    for r in rows:
        say(f"  {r[0]:<{width}}  {r[1]:>24}  {r[2]:>24}")
    for x in (b, f):
        sig = x["signals"]
        say(f"  {x['phase']} worker's signals (/metrics): received {_counts(sig['received'])}; "
            f"DLQ {_counts(sig['dlq'])}")
    say(f"  state check: {result.get('state_check')}")
    entries = spec["sources"] + spec["destinations"]
    say(f"  difference (settled medians): {_mb(s['difference'])} for {entries:,} entries = "
        f"{s['bytes_per_entry']:,.0f} bytes per entry")
    say(f"  goal RSS < {spec['limit_mb']:.0f} MB: settled "
        f"{'met' if s['settled_goal_met'] else 'NOT met'} ({_mb(s['full_rss'])}), peak "
        f"{'met' if s['goal_met'] else 'NOT met'} ({_mb(s['full_hwm'])})")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "none"


def print_profile(profile: dict[str, Any], say: Any = print) -> None:
    say("")
    say("in-process profile (tracemalloc, Python allocations; RSS adds allocator overhead):")
    say(f"  entries: {profile['entries']}")
    sec = profile["seconds"]
    n = max(1, profile["entries"]["trust"])
    for label, key in (("engine state (fold of the state topics)", "engine_state"),
                       ("Prometheus gauges trust_score/breaker_state (set_state)",
                        "prometheus_gauges")):
        part = profile[key]
        say(f"  {label}: {_mb(part['bytes'])} ({part['bytes'] / n:,.0f} bytes per entry)")
        for t in part["top"]:
            say(f"    {_mb(t['bytes']):>10}  {t['blocks']:>9,} blocks  {t['where']}")
    e = profile["exposition"]
    say(f"  one /metrics exposition: {_mb(e['bytes'])} text, {_mb(e['peak_extra_bytes'])} "
        f"allocated at its peak, {sec['exposition']:.2f}s (on the worker's event loop)")
    say(f"  untraced: the fold {sec['fold']:.1f}s; the gauge refresh the worker runs every "
        f"second (engine.snapshot + set_state) {sec['refresh']:.2f}s (the first "
        f"{sec['first_refresh']:.2f}s)")
    d = profile["policy_declaring_all_destinations"]
    say(f"  a compiled policy declaring all {d['destinations']:,} destinations: {_mb(d['bytes'])}")


def save(result: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = out_dir / f"{stamp}-state-memory-{result['run_id']}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    return path


def main(*, out_dir: Path, spec: Spec | None = None, profile: bool | None = None,
         profile_only: bool = False, say: Any = print) -> int:
    """0: measured (the goal met or not); 2: the worker's state was incomplete, a worker
    failed, or the broker/database was unreachable."""
    spec = spec or Spec()
    if profile_only:
        prof = profile_in_process(spec)
        print_profile(prof, say)
        return 0
    from router_stream.config import Settings

    settings = Settings()
    say(f"router-stream bench --state-memory against Kafka {settings.kafka_bootstrap}: "
        f"{spec.sources:,} sources, {spec.destinations:,} destinations")
    run = Run(spec, settings.kafka_bootstrap, settings.database_url.get_secret_value(), out_dir,
              say)
    from bench.cli import _bounded

    try:
        result = asyncio.run(_bounded(run.run(), BUDGET_S))
    except TimeoutError:
        say(f"error: the run overran its budget ({BUDGET_S:.0f}s)")
        return 2
    except Exception as exc:
        say(f"error: {type(exc).__name__}: {exc}")
        return 2
    print_report(result, say)
    if result["state_check"] != "ok":
        say(f"error: the worker's state was incomplete: {'; '.join(result['state_check'])}")
        say(f"results: {save(result, out_dir)}")
        return 2
    s = summarize(result)
    if profile or (profile is None and not s.get("goal_met", True)):
        result["profile"] = profile_in_process(spec)
        print_profile(result["profile"], say)
    if spec.key_flood:
        result["key_flood"] = key_flood.measure(spec.key_flood)
        key_flood.print_report(result["key_flood"], say)
    say(f"results: {save(result, out_dir)}")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.state_memory",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    d = Spec()
    p.add_argument("--sources", type=int, default=d.sources)
    p.add_argument("--destinations", type=int, default=d.destinations)
    p.add_argument("--events-per-entry", type=int, default=d.events_per_entry,
                   help=f"health events per source / outcomes per destination, one per breaker "
                        f"bucket (1..{BREAKER_BUCKETS}; {BREAKER_BUCKETS} fills every window)")
    p.add_argument("--warm-signals", type=int, default=d.warm_signals)
    p.add_argument("--settle", type=float, default=d.settle_s, help="seconds of RSS sampling")
    p.add_argument("--limit-mb", type=float, default=d.limit_mb)
    p.add_argument("--key-flood", type=int, default=d.key_flood,
                   help="then 1M unique tenants and 1M unique signal ids through the engine "
                        "(bench/key_flood.py, ~2 min); 0 skips it")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    group = p.add_mutually_exclusive_group()
    group.add_argument("--profile", action="store_true", default=None,
                       help="also profile in-process (default: only when over the limit)")
    group.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--profile-only", action="store_true",
                   help="only the in-process tracemalloc profile (no broker, no worker)")
    return p.parse_args(argv)


def spec_from_args(args: argparse.Namespace) -> Spec:
    return Spec(sources=args.sources, destinations=args.destinations,
                events_per_entry=args.events_per_entry, warm_signals=args.warm_signals,
                settle_s=args.settle, limit_mb=args.limit_mb, key_flood=args.key_flood)


if __name__ == "__main__":
    ns = _parse(None)
    sys.exit(main(out_dir=ns.out, spec=spec_from_args(ns), profile=ns.profile,
                  profile_only=ns.profile_only))
