"""Running the worker against the real broker and Postgres in tests: the test policy, topics and
database prepared, records produced and read back, rows fetched, bounded waits, and the worker
in-process (``worker``) or as a process (``start_worker``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from router_stream.adapters import postgres as pg
from router_stream.adapters.kafka_io import ConsumedRecord, consumed_record
from router_stream.adapters.topics import apply_topics
from router_stream.config import Settings
from router_stream.worker import Backoff, RouterWorker
from tests.support.policies import edited

POLICY = """
name: worker-test
breaker: {failure_threshold: 3, cooldown_s: 600, max_cooldown_s: 600}
destinations:
  pager: {}
  slack: {}
  email: {}
  webhook: {}
  desk-a: {}
  desk-b: {}
classify:
  - name: alerts
    when: {field: payload.severity, in: [critical, high]}
    kind: alert
  - name: notifications
    when: {field: payload.channel_hint, exists: true}
    kind: notification
  - name: tickets
    when: {field: payload.type, equals: ticket}
    kind: ticket
routes:
  alert:
    strategy: first_healthy
    tiers: [[pager], [slack], [email]]
  notification:
    strategy: fanout
    destinations: [email, webhook]
  ticket:
    strategy: weighted
    destinations: [desk-a, desk-b]
defaults: {unclassified: dlq, unrouted: dlq}
tenants:
  default: {rate: 100000, burst: 100000}
  tiny: {rate: 1, burst: 5}
"""
DESTINATIONS = ["pager", "slack", "email", "webhook", "desk-a", "desk-b"]
FAST = Backoff(base_s=0.05, cap_s=0.5, attempt_timeout_s=10)
# the alert route's tiers become [[email]]: a published v2 is visible in every alert's destination
POLICY_V2 = edited(POLICY, {"routes.alert.tiers": [["email"]]})


async def prepare(settings: Settings, tmp_path: Path, policy: str = POLICY) -> Settings:
    """Policy file, topics (as topics.yaml declares them) and a migrated database."""
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    s = settings.model_copy(update={"policy_file": str(path)})
    await apply_topics(s, DESTINATIONS)
    await pg.migrate_database(s)
    return s


async def produce(settings: Settings, logical: str, values: list[tuple[bytes | None, bytes]],
                  headers: list[tuple[str, bytes]] | None = None) -> list[tuple[int, int]]:
    """Produce (key, value) pairs; returns each record's (partition, offset)."""
    return await asyncio.to_thread(_produce, settings.kafka_bootstrap, settings.topic(logical),
                                   values, headers or [])


def _produce(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes]],
             headers: list[tuple[str, bytes]]) -> list[tuple[int, int]]:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "batch.size": 256 * 1024, "message.max.bytes": 16 * 1024 * 1024,
                         "partitioner": "murmur2_random"})  # Java's partitions for a key
    acked: list[tuple[int, int] | BaseException | None] = [None] * len(values)

    def report(i: int) -> Any:
        def delivered(err: Any, msg: Any) -> None:
            acked[i] = KafkaException(err) if err is not None else (msg.partition(),
                                                                     msg.offset())
        return delivered

    for i, (k, v) in enumerate(values):
        producer.produce(topic, v, k, headers=headers, on_delivery=report(i))
        producer.poll(0)
    assert producer.flush(30.0) == 0, f"producing to {topic} timed out"
    for a in acked:
        if isinstance(a, BaseException):
            raise a
    return [a for a in acked if isinstance(a, tuple)]


async def read_all(settings: Settings, topic: str, isolation: str = "read_committed"
                   ) -> list[ConsumedRecord]:
    """Every record currently in a topic (all partitions, up to the end offsets): those of
    committed transactions only, or with ``isolation="read_uncommitted"`` aborted ones too."""
    return await asyncio.to_thread(_read_all, settings.kafka_bootstrap, topic, isolation)


def _read_all(bootstrap: str, topic: str, isolation: str) -> list[ConsumedRecord]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "read-all",
                         "enable.auto.commit": False, "isolation.level": isolation})
    try:
        listed = consumer.list_topics(topic, 10.0).topics[topic]
        marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10.0)
                 for p in listed.partitions}
        ends = {p: end for p, (_, end) in marks.items()}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        out: list[ConsumedRecord] = []
        left = {p for p, (start, end) in marks.items() if end > start}
        deadline = time.monotonic() + 30
        while left:
            assert time.monotonic() < deadline, f"reading {topic} timed out"
            for m in consumer.consume(500, 0.2):
                if m.error() is None and m.partition() in left and m.offset() < ends[
                        m.partition()]:
                    out.append(consumed_record(m))
            # the position, not the last record: compaction and markers leave gaps at the end
            for tp in consumer.position([TopicPartition(topic, p) for p in left]):
                if tp.offset >= ends[tp.partition]:
                    left.discard(tp.partition)
        return out
    finally:
        consumer.close()


async def fetch(settings: Settings, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def worker(settings: Settings, **kwargs: Any) -> RouterWorker:
    kwargs.setdefault("backoff", FAST)
    return RouterWorker(settings, **kwargs)


def signal(i: int, **fields: Any) -> bytes:
    body = {"signal_id": f"s-{i}", "sender_id": f"svc-{i % 7}", **fields}
    return orjson.dumps(body)


def mixed_signals(n: int) -> list[tuple[bytes, bytes, str]]:
    """(key, value, expected) — expected is a kind or a DLQ reason (or "tiny": either)."""
    now_ms = int(time.time() * 1000)
    out: list[tuple[bytes, bytes, str]] = []
    for i in range(n):
        key = f"svc-{i % 7}".encode()
        match i % 10:
            case 0 | 1 | 2:
                out.append((key, signal(i, payload={"severity": "critical"}), "alert"))
            case 3 | 4:
                out.append((key, signal(i, payload={"channel_hint": "x", "tags": ["user"]}),
                            "notification"))
            case 5:
                out.append((key, signal(i, payload={"type": "ticket"}), "ticket"))
            case 6:
                out.append((key, b'{"signal_id": "s-%d", "sender_id": ' % i, "invalid_json"))
            case 7:
                out.append((key, orjson.dumps({"signal_id": f"s-{i}", "payload": {}}),
                            "invalid_signal"))
            case 8:
                out.append((key, signal(i, payload={"something": "else"}), "unclassified"))
            case _ if (i // 10) % 2 == 0:
                out.append((key, signal(i, payload={"severity": "high"}, ts=now_ms - 3_600_000,
                                        ttl_ms=1000), "expired"))
            case _:
                out.append((key, signal(i, tenant="tiny", payload={"severity": "high"}), "tiny"))
    return out


class SimulatedCrash(RuntimeError):
    """Raised from a commit-step hook: the worker dies there, as on a kill."""


def crash_after(step: str):
    async def hook(current: str, result: Any) -> None:
        if current == step:
            raise SimulatedCrash(f"crash after {step}")
    return hook


async def counts(s: Settings) -> tuple[int, int, int]:
    rows = await fetch(s, "SELECT (SELECT count(*) FROM routing_decisions) AS d,"
                          " (SELECT count(DISTINCT signal_id) FROM routing_decisions) AS u,"
                          " (SELECT count(*) FROM dlq_entries) AS q")
    return rows[0]["d"], rows[0]["u"], rows[0]["q"]


async def wait_for(predicate: Any, timeout: float, what: str) -> float:
    """Poll ``predicate`` (sync or async) every 20 ms; returns the seconds it took."""
    started = time.monotonic()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def start_worker(s: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``router-stream worker ARGS`` as a process in its own session, its output appended to
    ``log``."""
    env = os.environ | {
        "ROUTER_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "ROUTER_DATABASE_URL": s.database_url.get_secret_value(),
        "ROUTER_TOPIC_PREFIX": s.topic_prefix,
        "ROUTER_GROUP_ID": s.group_id,
        "ROUTER_POLICY_FILE": str(s.policy_file),
        "ROUTER_HTTP_PORT": "0",
        "ROUTER_BATCH_MAX": "200",
        "ROUTER_WORKER_PERSIST": str(s.worker_persist).lower(),  # rows to watch
    }
    return subprocess.Popen(
        [sys.executable, "-c", "from router_stream.cli import main; main()", "worker", *args],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


async def wait_exit(
    proc: subprocess.Popen[bytes], timeout: float, log: Path | None = None
) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            tail = log.read_text()[-6000:] if log is not None else ""
            raise AssertionError(f"worker {proc.pid} did not exit within {timeout}s\n{tail}")
        await asyncio.sleep(0.05)
    return proc.returncode


_KILLED_AT = """
import asyncio, os, signal, sys
from router_stream.config import Settings
from router_stream.worker import RouterWorker
step, nth = sys.argv[1], int(sys.argv[2])
seen = 0
async def hook(current, result):
    global seen
    if current == step:
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)
asyncio.run(RouterWorker(Settings(), on_step=hook, http=False).run_until_idle(30))
"""


def start_worker_killed_at(s: Settings, log: Path, step: str, nth: int) -> subprocess.Popen[bytes]:
    """A worker process with ``s`` (from the environment) that SIGKILLs itself right after
    commit step ``step`` ("decided", "produced", "committed") of its ``nth`` batch."""
    env = os.environ | {f"ROUTER_{name.upper()}": str(value) for name, value in {
        "kafka_bootstrap": s.kafka_bootstrap, "topic_prefix": s.topic_prefix,
        "group_id": s.group_id, "policy_file": s.policy_file,
        "processing_guarantee": s.processing_guarantee, "batch_max": s.batch_max,
        "persist": str(s.persist).lower(), "worker_persist": str(s.worker_persist).lower(),
        "worker_id": s.worker_id or "", "checkpoint_interval_s": s.checkpoint_interval_s,
    }.items()} | {"ROUTER_DATABASE_URL": s.database_url.get_secret_value()}
    return subprocess.Popen([sys.executable, "-c", _KILLED_AT, step, str(nth)], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
