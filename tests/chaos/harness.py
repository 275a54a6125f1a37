"""The machinery of the fault suite: servers, runs, worker processes, the seeded stream, monitors.

* :class:`Servers` — where Kafka and Postgres are: the shared ones (``ROUTER_KAFKA_BOOTSTRAP`` /
  ``ROUTER_DATABASE_URL``), or :class:`OwnStack`, a second local stack (its own state directory
  and ports) for the faults that kill the broker or stop Postgres, so the shared servers are
  never touched.
* :class:`Run` — one scenario's isolation: its own topic prefix, consumer group and database, the
  chaos policy, every topic created as ``topics/topics.yaml`` declares it.
* :class:`WorkerProc` — ``router-stream worker`` as a real process (SIGKILL / SIGSTOP / SIGTERM
  reach the real thing), its JSON log in a file, its RSS.
* :func:`make_stream` / :class:`StreamProducer` — seeded, numbered signals (a mix of kinds plus
  invalid ones, each with the outcome it must get) produced at a steady rate, interleaved with
  ``source-health`` and ``outcomes`` events. Every record carries its number in the
  ``x-chaos-index`` header, so the checks find it whatever happened to it.
* :class:`CommitMonitor` — samples the group's committed offsets: a committed offset that moves
  backwards is a stale commit (the zombie of scenario 3), and scenario 4 reads what was committed
  while Postgres was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

# confluent_kafka.admin re-exports these without an __all__, which mypy does not follow
from confluent_kafka.admin._config import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
)
from confluent_kafka.admin._resource import ResourceType

from router_stream.adapters.kafka_failures import RdkafkaLog
from router_stream.adapters.rdkafka import AckingProducer, ClientThread
from router_stream.config import OUTCOMES, SIGNALS, SOURCE_HEALTH, Settings

INDEX_HEADER = "x-chaos-index"
DESTINATIONS = ["pager", "slack", "email", "webhook", "desk-a", "desk-b"]

# Cooldowns are far longer than any scenario, so every breaker transition is driven by an event
# (and carries the event's time): a fault-free replay of the state topics must then produce
# exactly the transitions the workers recorded. Alerts dedupe into the DLQ (`duplicate`) so a
# re-decided alert would show up as a second row instead of vanishing silently.
CHAOS_POLICY = """
name: chaos
trust:
  weights: {freshness: 0.2, error_rate: 0.3, latency: 0.1, deviation: 0.2, availability: 0.2}
  stale_after_s: 600
  latency_target_ms: 250
  ewma_alpha: 0.2
breaker:
  failure_threshold: 4
  error_rate_threshold: 0.5
  window_s: 60
  min_volume: 20
  cooldown_s: 3600
  max_cooldown_s: 7200
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
    dedupe: true
    on_duplicate: dlq
  notification:
    strategy: fanout
    destinations: [email, webhook]
    dedupe: false
  ticket:
    strategy: weighted
    destinations: [desk-a, desk-b]
    dedupe: false
defaults: {unclassified: dlq, unrouted: dlq}
tenants:
  default: {rate: 1000000, burst: 1000000}
"""

DECIDED_KINDS = ("alert", "notification", "ticket")


# --- servers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    kafka_bootstrap: str
    database_url: str  # an existing database on the server; runs create their own next to it
    name: str


def shared_servers() -> Servers:
    return Servers(
        os.environ.get("ROUTER_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
        os.environ.get("ROUTER_DATABASE_URL", "postgresql://router@127.0.0.1:15432/router"),
        "shared")


class OwnStack:
    """A second local Kafka + Postgres (``router_stream.stack``) that the suite may kill.

    State in ``ROUTER_CHAOS_STACK_DIR`` (default ``/var/tmp/router-stream-chaos``), ports
    ``ROUTER_CHAOS_KAFKA_PORT`` / ``ROUTER_CHAOS_PG_PORT`` (29092 / 25432: below the kernel's
    ephemeral range, so a client reconnecting to a stopped broker cannot self-connect on its port
    and keep it from restarting); Kafka's jars from ``ROUTER_STACK_CACHE`` like the main stack.
    """

    def __init__(self) -> None:
        from router_stream.stack import manager

        state = Path(os.environ.get("ROUTER_CHAOS_STACK_DIR", "/var/tmp/router-stream-chaos"))
        self.cfg = manager.make_config(
            state, manager.default_cache_dir(),
            int(os.environ.get("ROUTER_CHAOS_KAFKA_PORT", "29092")),
            int(os.environ.get("ROUTER_CHAOS_PG_PORT", "25432")), secure=False)

    @property
    def servers(self) -> Servers:
        return Servers(self.cfg.kafka.bootstrap, self.cfg.postgres.url, "own")

    def up(self) -> Servers:
        from router_stream.stack import manager

        manager.up(self.cfg)
        return self.servers

    def down(self) -> None:
        from router_stream.stack import manager

        manager.down(self.cfg)

    def kill_broker(self) -> None:
        from router_stream.stack import kafka

        pid = kafka.is_running(self.cfg.kafka)
        if pid is None:
            raise RuntimeError("the chaos stack's broker is not running")
        os.kill(pid, signal.SIGKILL)
        _wait_dead(pid)

    def start_broker(self) -> None:
        from router_stream.stack import kafka

        kafka.start(self.cfg.kafka, timeout=120)

    def stop_postgres(self) -> None:
        from router_stream.stack import postgres

        postgres.stop(self.cfg.postgres)

    def start_postgres(self) -> None:
        from router_stream.stack import postgres

        postgres.start(self.cfg.postgres)


def _wait_dead(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/stat").exists():
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                return
        time.sleep(0.05)
    raise RuntimeError(f"process {pid} did not die")


_ADMINS: dict[str, AdminClient] = {}


def admin_client(bootstrap: str) -> AdminClient:
    """One AdminClient per broker address for the life of the process, never released.
    confluent-kafka completes admin futures on librdkafka's background thread; a client whose
    last reference goes in a garbage collection that thread happens to run is destroyed from
    its own thread, and librdkafka aborts the process (confluent-kafka-python #2129, #2131)."""
    client = _ADMINS.get(bootstrap)
    if client is None:
        client = _ADMINS[bootstrap] = AdminClient({"bootstrap.servers": bootstrap})
    return client


# --- one scenario's isolated world ----------------------------------------------------------


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


async def _admin_sql(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_with_database(url, "postgres"), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class Run:
    """Prefix, group, database and working directory of one scenario."""

    servers: Servers
    name: str
    workdir: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    settings: Settings = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        db = f"chaos_{self.name}_{self.run_id}"
        self.settings = Settings(
            kafka_bootstrap=self.servers.kafka_bootstrap,
            database_url=_with_database(self.servers.database_url, db),  # type: ignore[arg-type]
            topic_prefix=f"chaos-{self.name}-{self.run_id}.",
            group_id=f"chaos-{self.name}-{self.run_id}",
            policy_file=str(self.workdir / "policy.yaml"),
            http_port=0,
        )
        self._database = db

    @property
    def database_url(self) -> str:
        return self.settings.database_url.get_secret_value()

    def topic(self, logical: str) -> str:
        return self.settings.topic(logical)

    async def prepare(self, policy: str = CHAOS_POLICY,
                      topic_configs: dict[str, dict[str, str]] | None = None) -> None:
        """Policy file, every declared topic (+ per-topic config overrides), migrated database."""
        from router_stream.adapters import postgres as pg
        from router_stream.adapters.topics import apply_topics

        Path(self.settings.policy_file or "").write_text(policy)
        await _admin_sql(self.servers.database_url, f'CREATE DATABASE "{self._database}"')
        await pg.migrate_database(self.settings)
        await apply_topics(self.settings, DESTINATIONS)
        for logical, configs in (topic_configs or {}).items():
            await alter_topic(self.settings, self.topic(logical), configs)

    async def cleanup(self, drop_database: bool = True) -> None:
        """Delete the run's topics (a shared broker does not take thousands of partitions
        well) and drop its database unless asked to keep it for a post-mortem."""
        if drop_database:
            with contextlib.suppress(Exception):
                await _admin_sql(self.servers.database_url,
                                 f'DROP DATABASE IF EXISTS "{self._database}" WITH (FORCE)')
        admin = admin_client(self.servers.kafka_bootstrap)
        with contextlib.suppress(Exception):
            listed = await asyncio.to_thread(admin.list_topics, None, 30.0)
            names = [t for t in listed.topics if t.startswith(self.settings.topic_prefix)]
            if names:
                futures = admin.delete_topics(names, operation_timeout=30.0)
                await asyncio.gather(*(asyncio.wrap_future(f) for f in futures.values()))


async def alter_topic(settings: Settings, topic: str, configs: dict[str, str | None]) -> None:
    """Set (or, with None, remove) topic configs, keeping the topic's other dynamic configs
    (an incremental alter: the worker verifies the declared ones)."""
    entries = [ConfigEntry(k, v or "", incremental_operation=AlterConfigOpType.DELETE
                           if v is None else AlterConfigOpType.SET) for k, v in configs.items()]
    admin = admin_client(settings.kafka_bootstrap)
    futures = admin.incremental_alter_configs(
        [ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)])
    await asyncio.gather(*(asyncio.wrap_future(f) for f in futures.values()))


async def topic_configs(settings: Settings, topic: str, *,
                        dynamic_only: bool = False) -> dict[str, str | None]:
    admin = admin_client(settings.kafka_bootstrap)
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = await asyncio.wrap_future(admin.describe_configs([resource])[resource])
    return {name: entry.value for name, entry in entries.items()
            if not dynamic_only or entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value}


# --- worker processes ---------------------------------------------------------------------------


class WorkerProc:
    """One ``router-stream worker`` process of a run (by default with the Postgres projection
    in-process, so a run's rows can be verified); restartable under the same name.
    ``command="persist"`` runs the projection on its own instead."""

    def __init__(self, run: Run, name: str, *, idle_s: float | None = 5.0,
                 env: dict[str, str] | None = None, command: str = "worker") -> None:
        self.run = run
        self.name = name
        self.command = command
        self.idle_s = idle_s
        self.env = env or {}
        self.log_path = run.workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> WorkerProc:
        s = self.run.settings
        env = os.environ | {
            "ROUTER_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "ROUTER_DATABASE_URL": s.database_url.get_secret_value(),
            "ROUTER_TOPIC_PREFIX": s.topic_prefix,
            "ROUTER_GROUP_ID": s.group_id,
            "ROUTER_POLICY_FILE": str(s.policy_file),
            "ROUTER_HTTP_PORT": "0",
            "ROUTER_BATCH_MAX": "200",
            "ROUTER_WORKER_PERSIST": "true",
            "ROUTER_PROJECTION_HTTP_PORT": "0",
            # stable across restarts, unique in the run: exactly_once's transactional.id
            "ROUTER_WORKER_ID": f"chaos-{self.name}",
        } | self.env
        args = [self.command]
        if self.idle_s is not None:
            args += ["--exit-when-idle", str(self.idle_s)]
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f'{{"chaos":"start #{self.starts} at {time.time():.3f}"}}\n'.encode())
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from router_stream.cli import main; main()", *args],
            env=env, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: signal.Signals) -> float:
        """Signal the process; returns the wall-clock time it was sent."""
        assert self.proc is not None
        at = time.time()
        os.kill(self.proc.pid, sig)
        return at

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.name} (pid {self.pid}) still running "
                                   f"after {timeout:.0f}s")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(10)

    def rss(self) -> int | None:
        from router_stream.stack.process import rss_bytes

        return rss_bytes(self.pid) if self.alive else None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                obj = orjson.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out


async def wait_for(predicate: Any, timeout: float, what: str, every: float = 0.1) -> float:
    """Poll ``predicate`` (sync or async) until true; returns the seconds it took."""
    started = time.monotonic()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(every)


# --- the stream ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One numbered input record and the outcome it must get (a kind or a DLQ reason)."""

    index: int
    key: bytes | None
    value: bytes | None
    expect: str
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_ms: int | None = None
    label: str = ""

    def kafka_headers(self) -> list[tuple[str, bytes | None]]:
        return [*self.headers, (INDEX_HEADER, str(self.index).encode())]


def make_stream(n: int, seed: int, tag: str, start: int = 0) -> list[Item]:
    """``n`` signals: ~65 % routable (alerts, notifications, tickets), the rest each of the DLQ
    reasons whose outcome does not depend on the clock or on in-memory history."""
    rng = random.Random(seed)
    hour_ago_ms = int(time.time() * 1000) - 3_600_000
    out: list[Item] = []
    for i in range(start, start + n):
        sender = f"svc-{rng.randrange(23)}"
        key = sender.encode()
        sid = f"{tag}-{i}"
        roll = rng.random()

        def sig(**fields: Any) -> bytes:
            return orjson.dumps({"signal_id": sid, "sender_id": sender, **fields})  # noqa: B023

        if roll < 0.30:
            sev = rng.choice(["critical", "high"])
            item = Item(i, key, sig(payload={"severity": sev, "n": i}), "alert")
        elif roll < 0.50:
            item = Item(i, key, sig(payload={"channel_hint": "push", "tags": ["user"]}),
                        "notification")
        elif roll < 0.65:
            item = Item(i, key, sig(payload={"type": "ticket", "queue": rng.randrange(5)}),
                        "ticket")
        elif roll < 0.72:
            item = Item(i, key, b'{"signal_id": "%s", "sender_id": ' % sid.encode(),
                        "invalid_json")
        elif roll < 0.79:
            item = Item(i, key, orjson.dumps({"signal_id": sid, "payload": {}}),
                        "invalid_signal")
        elif roll < 0.88:
            item = Item(i, key, sig(payload={"something": "else"}), "unclassified")
        elif roll < 0.94:
            item = Item(i, key, sig(kind="mystery", payload={}), "no_route")
        else:
            item = Item(i, key, sig(payload={"severity": "high"}, ts=hour_ago_ms, ttl_ms=1000),
                        "expired")
        out.append(item)
    return out


@dataclass(frozen=True, slots=True)
class StateEvent:
    logical: str  # SOURCE_HEALTH or OUTCOMES
    key: bytes
    body: dict[str, Any]


def make_state_events(count: int, seed: int) -> list[StateEvent]:
    """Health and outcome events with failure streaks that open some breakers.

    Each target gets events on ONE topic only (pager, slack, desk-a: health; email, webhook,
    desk-b: outcomes). The state is a per-target fold, and records of one target then sit in one
    partition, whose order every replay sees the same way (across two topics the interleaving of
    one target's records could differ between a live fold and a replay from the start).
    """
    rng = random.Random(seed)
    out: list[StateEvent] = []
    per_target = count // len(DESTINATIONS)
    # pager and webhook fail 6 times in a row (threshold 4) somewhere in the middle of their
    # own events: their breakers open, deterministically for a given seed.
    streak_at = {t: rng.randrange(per_target // 3, per_target // 2) for t in ("pager", "webhook")}
    seen = dict.fromkeys(DESTINATIONS, 0)
    for i in range(count):
        target = rng.choice(DESTINATIONS)
        nth = seen[target]
        seen[target] += 1
        failing = target in streak_at and streak_at[target] <= nth < streak_at[target] + 6
        ok = not failing and rng.random() > 0.1
        if target in ("pager", "slack", "desk-a"):
            body: dict[str, Any] = {"source_id": target, "ok": ok,
                                    "latency_ms": round(rng.uniform(5, 400), 1)}
            if target == "desk-a":
                body = {"source_id": target, "error_rate": round(rng.uniform(0, 0.6), 3)}
            out.append(StateEvent(SOURCE_HEALTH, target.encode(), body))
        else:
            body = {"signal_id": f"o-{i}", "destination": target, "ok": ok,
                    "latency_ms": round(rng.uniform(5, 400), 1)}
            out.append(StateEvent(OUTCOMES, target.encode(), body))
    return out


class StreamProducer:
    """Produces items at ``rate`` per second and spreads the state events over the first
    ``state_share`` of the stream. Idempotent producer, ``acks=all``, long timeouts: a broker
    that goes away delays it, never duplicates or drops an input record."""

    def __init__(self, run: Run, items: Sequence[Item], rate: float, *,
                 state_events: Sequence[StateEvent] = (), state_share: float = 0.5,
                 backlog: int = 0) -> None:
        self.ctx = run
        self.items = list(items)
        self.rate = rate
        self.state_events = list(state_events)
        self.state_share = state_share
        self.backlog = backlog  # produced at once before pacing starts
        self.sent = 0
        self.state_sent = 0
        self.state_done_at: float | None = None  # wall clock when every state event was acked
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.failed: list[tuple[int, str]] = []
        self._progress = asyncio.Event()
        self._released = asyncio.Event()
        self._released.set()
        self._held_at = 0.0
        self._held_s = 0.0  # the schedule moves on by the time spent on hold

    async def run(self) -> None:
        thread = ClientThread("chaos-stream")
        producer = AckingProducer({
            **self.ctx.settings.librdkafka_config, "enable.idempotence": True, "acks": "all",
            "linger.ms": 5, "request.timeout.ms": 120_000, "message.timeout.ms": 120_000,
            "batch.size": 256 * 1024, "message.max.bytes": 16 * 1024 * 1024,
            **RdkafkaLog().config()}, thread)
        producer.start()
        futs: list[tuple[int, asyncio.Future[Any]]] = []
        state_futs: list[asyncio.Future[Any]] = []
        try:
            self.started_at = time.time()
            t0 = time.monotonic()
            n = len(self.items)
            state_every = (max(1, int(n * self.state_share) // max(1, len(self.state_events)))
                           if self.state_events else 0)
            for pos, item in enumerate(self.items):
                if not self._released.is_set():
                    await self._released.wait()
                if pos >= self.backlog:
                    due = t0 + self._held_s + (pos - self.backlog) / self.rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                futs.append((item.index, await producer.produce(
                    self.ctx.topic(SIGNALS), item.value, key=item.key,
                    headers=item.kafka_headers(), timestamp_ms=item.timestamp_ms)))
                self.sent = pos + 1
                if state_every and pos % state_every == 0 and self.state_sent < len(
                        self.state_events):
                    state_futs.append(await self._send_state(producer))
                if pos % 50 == 0:
                    self._progress.set()
                    self._progress = asyncio.Event()
            while self.state_sent < len(self.state_events):
                state_futs.append(await self._send_state(producer))
            results = await asyncio.gather(*(f for _, f in futs), return_exceptions=True)
            for (index, _), res in zip(futs, results, strict=True):
                if isinstance(res, BaseException):
                    self.failed.append((index, repr(res)))
            await asyncio.gather(*state_futs)
        finally:
            await producer.stop(120.0)
            thread.close()
            self.finished_at = time.time()
            self._progress.set()

    async def _send_state(self, producer: AckingProducer) -> asyncio.Future[Any]:
        ev = self.state_events[self.state_sent]
        now_ms = int(time.time() * 1000)
        self.state_sent += 1
        fut = await producer.produce(self.ctx.topic(ev.logical),
                                     orjson.dumps({**ev.body, "ts": now_ms}),
                                     key=ev.key, timestamp_ms=now_ms)
        if self.state_sent == len(self.state_events):
            fut.add_done_callback(lambda _: setattr(self, "state_done_at", time.time()))
        return fut

    def hold(self) -> None:
        """Stop handing records to the producer (records already handed over stay buffered
        and in flight) until :meth:`release`; the rest of the stream then keeps its pace."""
        if self._released.is_set():
            self._held_at = time.monotonic()
            self._released.clear()

    def release(self) -> None:
        if not self._released.is_set():
            self._held_s += time.monotonic() - self._held_at
            self._released.set()

    async def wait_sent(self, fraction: float) -> float:
        """Wait until ``fraction`` of the items were handed to the producer; returns the time."""
        target = int(len(self.items) * fraction)
        while self.sent < target and self.finished_at is None:
            await self._progress.wait()
        return time.time()


# --- committed offsets ----------------------------------------------------------------------------


class CommitMonitor:
    """Samples the consumer group's committed offsets every ``every`` seconds."""

    def __init__(self, run: Run, every: float = 0.25) -> None:
        self.run = run
        self.every = every
        self.samples: list[tuple[float, dict[TopicPartition, int]]] = []
        self.regressions: list[str] = []
        self._last: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> CommitMonitor:
        self._task = asyncio.create_task(self._loop())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _loop(self) -> None:
        offsets = GroupOffsets(self.run)
        try:
            while True:
                try:
                    current = await offsets.read(3.0)
                    now = time.time()
                    for tp, off in current.items():
                        prev = self._last.get(tp)
                        if prev is not None and off < prev:
                            self.regressions.append(f"{tp.topic}[{tp.partition}] {prev} -> "
                                                    f"{off} at {now:.3f}")
                    self._last.update(current)
                    self.samples.append((now, current))
                except Exception:  # noqa: BLE001,S110 - the broker may be down on purpose
                    pass
                await asyncio.sleep(self.every)
        finally:
            await offsets.close()

    def at(self, t: float) -> dict[TopicPartition, int]:
        """The last sample taken at or before ``t``."""
        best: dict[TopicPartition, int] = {}
        for ts, offsets in self.samples:
            if ts > t:
                break
            best = offsets
        return best


class GroupOffsets:
    """The run's group's committed offsets on its input topics, read by a consumer that carries
    the group's id but never joins it (an OffsetFetch, nothing else). Not through the admin
    client's ListConsumerGroupOffsets: with the broker SIGKILLed (scenario 2) librdkafka 2.16
    aborted this process in it (``rd_kafka_enq_once_del_source_return: Assertion
    `eonce->refcnt > 0' failed``)."""

    def __init__(self, run: Run) -> None:
        self._topics = [run.topic(SIGNALS), run.topic("router.retry")]
        self._consumer = Consumer({"bootstrap.servers": run.settings.kafka_bootstrap,
                                   "group.id": run.settings.group_id,
                                   "enable.auto.commit": False,
                                   "log_level": 0})  # never polled: no reconnect chatter
        self._tps: list[TopicPartition] | None = None
        self._thread = ClientThread("chaos-offsets")

    async def read(self, timeout_s: float) -> dict[TopicPartition, int]:
        return await self._thread.run(self._read, timeout_s)

    def _read(self, timeout_s: float) -> dict[TopicPartition, int]:
        if self._tps is None:
            listed = self._consumer.list_topics(None, timeout_s).topics
            self._tps = [TopicPartition(t, p) for t in self._topics if t in listed
                         for p in sorted(listed[t].partitions)]
        found = self._consumer.committed(self._tps, timeout_s)
        return {TopicPartition(tp.topic, tp.partition): tp.offset for tp in found
                if tp.offset >= 0}

    async def close(self) -> None:
        await self._thread.run(self._consumer.close)
        self._thread.close()


async def committed_offsets(run: Run) -> dict[TopicPartition, int]:
    offsets = GroupOffsets(run)
    try:
        return await offsets.read(30.0)
    finally:
        await offsets.close()


async def group_lag(run: Run) -> int:
    """Records of the signals and router.retry topics past the group's committed offsets."""
    committed = await committed_offsets(run)
    consumer = Consumer({"bootstrap.servers": run.settings.kafka_bootstrap,
                         "group.id": f"chaos-lag-{uuid.uuid4().hex}",  # never joined
                         "log_level": 0})

    def lag() -> int:
        listed = consumer.list_topics(None, 30.0).topics
        tps = [TopicPartition(t, p) for t in (run.topic(SIGNALS), run.topic("router.retry"))
               if t in listed for p in sorted(listed[t].partitions)]
        total = 0
        for tp in tps:
            start, end = consumer.get_watermark_offsets(tp, 30.0)
            total += max(0, end - committed.get(tp, start))
        return total

    try:
        return await asyncio.to_thread(lag)
    finally:
        await asyncio.to_thread(consumer.close)


class RssSampler:
    """RSS of a set of worker processes every ``every`` seconds."""

    def __init__(self, workers: Sequence[WorkerProc], every: float = 1.0) -> None:
        self.workers = list(workers)
        self.every = every
        self.samples: list[tuple[float, str, int]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> RssSampler:
        self._task = asyncio.create_task(self._loop())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            for w in self.workers:
                rss = w.rss()
                if rss is not None:
                    self.samples.append((time.time(), w.name, rss))
            await asyncio.sleep(self.every)
