"""``router-stream demo``: the main job end to end on the local stack, ending by itself.

1. start (or reuse) the local Kafka + PostgreSQL stack;
2. apply the database migrations and the topic declarations (with the demo policy's
   ``routed.<destination>`` topics) under a fresh topic prefix, so every run starts clean; the
   topics of earlier runs are deleted, except the last run's (kept for inspection until the
   next run), so repeated demos do not fill the broker;
3. start one worker and, once the traffic is out, the Postgres projection (`router-stream
   persist`), both in burst mode (each exits once its input has been idle for a few seconds);
4. produce sample traffic in three phases — healthy, pagerduty failing, pagerduty recovered — plus
   metric observations with an outlier and a handful of bad signals;
5. show decisions per destination and phase, the breaker opening and closing, and each DLQ
   entry (id, reason, error), read back from Kafka and PostgreSQL; check every signal ended as
   exactly one decision or one DLQ entry, and that the worker logged no error;
6. remove its temporary directory (kept, and named, when something went wrong); the stack is
   left running for the next run, and the demo says how to stop it.

The demo policy is ``examples/policy.yaml`` with the breaker's cooldown shortened to 3 s so the
recovery is visible within the demo (the only change, printed at the start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson
import yaml

from router_stream.adapters import data_path
from router_stream.adapters.kafka_io import OutRecord, RecordWriter, read_records
from router_stream.config import DECISIONS, SIGNALS, SOURCE_HEALTH, Settings

Say = Callable[[str], None]

EXAMPLE_POLICY = data_path("examples") / "policy.yaml"
COOLDOWN_S = 3
# in the stack's state directory: the topic prefix of the last demo run, whose topics are kept
LAST_RUN_FILE = "last-demo-prefix"
_RUN_PREFIX = re.compile(r"demo-\d{6}-[0-9a-f]{4}\.")


def earlier_run_topics(topics: Iterable[str], keep: str | None) -> list[str]:
    """The topics of demo runs (prefix ``demo-HHMMSS-xxxx.``) other than the run ``keep``."""
    return sorted(t for t in topics if (m := _RUN_PREFIX.match(t)) and m.group(0) != keep)


async def _delete_earlier_runs(settings: Settings, keep: str | None) -> int:
    """Delete the topics of demo runs other than ``keep``; returns how many runs they were."""
    from router_stream.adapters.topic_admin import connected_admin, delete_topics

    async with connected_admin(settings, timeout=30.0) as admin:
        doomed = earlier_run_topics((await admin.metadata()).topics, keep)
        deleted = await delete_topics(admin, doomed)
    return len({t.split(".", 1)[0] for t in deleted})  # a run's prefix has no dot inside


def demo_policy_text(source: Path = EXAMPLE_POLICY) -> str:
    data = yaml.safe_load(source.read_text())
    data["breaker"]["cooldown_s"] = COOLDOWN_S
    data["breaker"]["failure_threshold"] = 3
    return yaml.safe_dump(data, sort_keys=False)


def _alert(i: int, phase: str) -> dict[str, object]:
    return {"signal_id": f"alert-{phase}-{i}", "sender_id": "monitor", "tenant": "acme",
            "payload": {"severity": "critical", "service": "checkout", "phase": phase}}


def _notification(i: int, phase: str) -> dict[str, object]:
    return {"signal_id": f"note-{phase}-{i}", "sender_id": "app-billing", "tenant": "acme",
            "payload": {"text": f"invoice {i} ready", "phase": phase}}


def _observations(round_no: int) -> list[dict[str, object]]:
    values = {"probe-a": 41.8, "probe-b": 42.1, "probe-c": 42.0, "probe-d": 41.9,
              "probe-liar": 420.0}
    return [{"signal_id": f"obs-{round_no}-{src}", "sender_id": src, "metric": "checkout.p99_ms",
             "source_id": src, "value": v + round_no * 0.01} for src, v in values.items()]


# The engine's error for an observation without enough sources and no earlier consensus.
WARM_UP = "no usable source and no recent consensus"

BAD_SIGNALS: list[bytes] = [
    b"{this is not json",
    orjson.dumps({"signal_id": "no-sender", "payload": {"severity": "critical"}}),
    orjson.dumps({"signal_id": "mystery", "sender_id": "x", "kind": "telepathy"}),
    orjson.dumps({"signal_id": "stale", "sender_id": "monitor", "ts": 1_000, "ttl_ms": 1000,
                  "payload": {"severity": "critical"}}),
    orjson.dumps({"signal_id": "unknown", "sender_id": "somebody", "payload": {"x": 1}}),
]


async def _produce(settings: Settings, topic: str, values: list[bytes],
                   keys: list[bytes | None] | None = None) -> None:
    async with RecordWriter(settings) as writer:
        futures = await writer.send_many([
            OutRecord(settings.topic(topic), v, key=(keys[i] if keys else None))
            for i, v in enumerate(values)])
        await asyncio.gather(*futures)


def _health(source: str, ok: bool) -> bytes:
    return orjson.dumps({"source_id": source, "ts": int(time.time() * 1000), "ok": ok,
                         "latency_ms": 40.0 if ok else 5000.0})


async def _traffic(settings: Settings, say: Say, run_id: str) -> int:
    """Produce the three phases; returns how many signals were sent. Signal ids carry the run id:
    the demo database is shared by runs, and a signal id is routed once per database."""
    sent = 0

    async def signals(batch: list[dict[str, object]]) -> None:
        nonlocal sent
        # SPEC §2: signals are keyed by sender, observations by metric, so every observation
        # of one metric reaches the same worker's consensus.
        keys = [str(s.get("metric") or s["sender_id"]).encode() for s in batch]
        batch = [s | {"signal_id": f"{s['signal_id']}@{run_id}"} for s in batch]
        await _produce(settings, SIGNALS, [orjson.dumps(s) for s in batch], keys)
        sent += len(batch)

    say("phase 1: all destinations healthy — 50 alerts, 50 notifications, 4 observation rounds")
    await signals([_alert(i, "healthy") for i in range(50)]
                  + [_notification(i, "healthy") for i in range(50)])
    for r in range(4):
        await signals(_observations(r))
    await asyncio.sleep(2)

    say("phase 2: pagerduty reports failures (3 health events) — alerts must fail over")
    await _produce(settings, SOURCE_HEALTH, [_health("pagerduty", False) for _ in range(3)],
                   [b"pagerduty"] * 3)
    await asyncio.sleep(1.5)
    await signals([_alert(i, "pagerduty-down") for i in range(50)])
    await _produce(settings, SIGNALS, BAD_SIGNALS)
    sent += len(BAD_SIGNALS)
    await asyncio.sleep(COOLDOWN_S + 1)

    say(f"phase 3: after the {COOLDOWN_S} s cooldown pagerduty reports healthy — the breaker "
        "half-opens, the probe succeeds, alerts return to the primary")
    await _produce(settings, SOURCE_HEALTH, [_health("pagerduty", True)], [b"pagerduty"])
    await asyncio.sleep(1.5)
    await signals([_alert(i, "recovered") for i in range(50)])
    return sent


async def _read_decisions(settings: Settings, expected: int, timeout: float) -> list[dict]:
    out: list[dict] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            async for record in read_records(settings, settings.topic(DECISIONS),
                                             max_records=expected):
                out.append(orjson.loads(record.value or b"null"))
    return out


DlqLine = tuple[int, str, str, str | None]  # id, reason, error, signal_id


async def _database_view(settings: Settings, since: float
                         ) -> tuple[int, list[DlqLine], list[tuple[str, str, str, str]]]:
    """This run's rows: the demo database is shared by runs, topics are not."""
    from router_stream.adapters import postgres

    topic = settings.topic(SIGNALS)
    conn = await postgres.connect(settings)
    try:
        decisions = await conn.fetchval(
            "SELECT count(*) FROM routing_decisions WHERE input_topic = $1", topic)
        dlq = [(r["id"], r["reason"], r["error"], r["signal_id"]) for r in await conn.fetch(
            "SELECT id, reason, error, signal_id FROM dlq_entries WHERE original_topic = $1"
            " ORDER BY id", topic)]
        moves = [(r["target"], r["from_state"], r["to_state"], r["reason"]) for r in
                 await conn.fetch(
                     "SELECT target, from_state, to_state, reason FROM breaker_transitions"
                     " WHERE at >= to_timestamp($1) ORDER BY at, id", since)]
    finally:
        await conn.close()
    return int(decisions), dlq, moves


def run_demo(say: Say = print, policy_file: Path = EXAMPLE_POLICY) -> int:
    """Run the demo; returns the process exit code (0 when every signal is accounted for)."""
    from router_stream.adapters.postgres import migrate_database
    from router_stream.adapters.topics import apply_topics
    from router_stream.core.compiled import load_compiled
    from router_stream.demo_consumers import close_the_loop
    from router_stream.stack import manager

    # A fresh topic's leader is elected a moment after creation; the producer retries, and
    # librdkafka's warnings about it would only be noise here.
    logging.getLogger("router_stream.librdkafka").setLevel(logging.ERROR)
    started = time.time()
    cfg = manager.make_config()
    if all(row.running for row in manager.status(cfg)):
        say(f"reusing the local stack running in {cfg.kafka.state_dir} (Kafka + PostgreSQL)")
    else:
        say(f"starting the local stack in {cfg.kafka.state_dir} (Kafka + PostgreSQL) …")
    report = manager.up(cfg)
    say(f"stack {'reused' if report.reused else 'started'} in {report.seconds:.1f}s: kafka "
        f"{cfg.kafka.bootstrap}, {cfg.postgres.url}")

    run_id = time.strftime("%H%M%S") + "-" + uuid.uuid4().hex[:4]
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"router-stream-demo-{run_id}"
    workdir.mkdir(parents=True)
    policy_path = workdir / "policy.yaml"
    policy_path.write_text(demo_policy_text(policy_file))
    compiled = load_compiled(policy_path.read_text(), str(policy_path))
    settings = Settings(kafka_bootstrap=cfg.kafka.bootstrap,
                        database_url=cfg.postgres.url,  # type: ignore[arg-type]
                        topic_prefix=f"demo-{run_id}.", group_id=f"demo-{run_id}",
                        policy_file=str(policy_path), http_port=0)
    say(f"policy {compiled.version}: {policy_file} with breaker cooldown {COOLDOWN_S}s, "
        "failure_threshold 3")
    last_run = cfg.kafka.state_dir / LAST_RUN_FILE
    previous = last_run.read_text().strip() if last_run.exists() else None
    if runs := asyncio.run(_delete_earlier_runs(settings, keep=previous)):
        kept = f"; the last run's ({previous}*) stay until the next run" if previous else ""
        say(f"deleted the topics of {runs} earlier demo run(s){kept}")
    last_run.write_text(settings.topic_prefix)
    applied = asyncio.run(migrate_database(settings))
    say(f"database migrated ({len(applied)} new migration(s))")
    asyncio.run(apply_topics(settings, compiled.destinations))
    say(f"topics applied under prefix {settings.topic_prefix!r}")

    env = os.environ | {
        "ROUTER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "ROUTER_DATABASE_URL": cfg.postgres.url,
        "ROUTER_TOPIC_PREFIX": settings.topic_prefix,
        "ROUTER_GROUP_ID": settings.group_id,
        "ROUTER_POLICY_FILE": str(policy_path),
        "ROUTER_HTTP_PORT": "0",
        "ROUTER_PROJECTION_HTTP_PORT": "0",
    }
    log = open(workdir / "worker.log", "wb")  # noqa: SIM115 - closed after the worker exits
    worker = subprocess.Popen(
        [sys.executable, "-m", "router_stream.cli", "worker", "--exit-when-idle", "6"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    say(f"worker started (pid {worker.pid}, logs in {workdir / 'worker.log'})")
    persist: subprocess.Popen[bytes] | None = None
    try:
        sent = asyncio.run(close_the_loop(settings, compiled.destinations, run_id,
                                          _traffic(settings, say, run_id), say))
        # The Postgres projection, next to the worker as in production; started once the
        # traffic is out so its start-up does not delay the worker's on a small machine.
        persist = subprocess.Popen(
            [sys.executable, "-m", "router_stream.cli", "persist", "--exit-when-idle", "8"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        say(f"projection started (pid {persist.pid}, `router-stream persist`)")
        say(f"sent {sent} signals; waiting for the worker to drain and exit …")
        try:
            worker.wait(timeout=120)
        except subprocess.TimeoutExpired:
            say("worker did not finish within 120 s; stopping it")
            worker.terminate()
            worker.wait(timeout=30)
        try:
            persist.wait(timeout=60)
        except subprocess.TimeoutExpired:
            say("projection did not catch up within 60 s; stopping it")
            persist.terminate()
            persist.wait(timeout=30)
    finally:
        for proc in (worker, persist):
            if proc is not None and proc.poll() is None:
                proc.kill()
        log.close()
    code = _report(settings, sent, started, say)
    code = max(code, _check_worker_log(workdir / "worker.log", say))
    if code == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"kept {workdir} (policy, worker.log) to look into")
    say("the stack keeps running for the next run: `router-stream stack down` stops it "
        "(`--wipe` also deletes its data)")
    return code


def _check_worker_log(path: Path, say: Say) -> int:
    """A healthy run logs nothing at error level; print any line that did (2 when one did)."""
    errors = []
    for line in path.read_bytes().splitlines():
        try:
            level = orjson.loads(line).get("level")
        except orjson.JSONDecodeError:  # not our JSON: a library printing to stderr
            level = "error"
        if level in ("error", "critical"):
            errors.append(line.decode("utf-8", "replace"))
    if not errors:
        say("worker log: no error-level lines")
        return 0
    say(f"worker log: {len(errors)} error-level line(s):")
    for line in errors[:10]:
        say(f"  {line[:300]}")
    return 2


def _report(settings: Settings, sent: int, started: float, say: Say) -> int:
    decisions_db, dlq, moves = asyncio.run(_database_view(settings, started))
    decisions = asyncio.run(_read_decisions(settings, decisions_db, timeout=15))
    say("")
    say("decisions by phase and destination (from router.decisions):")
    table: Counter[tuple[str, str]] = Counter()
    for d in decisions:
        phase = d["signal_id"].split("@")[0].split("-", 1)[1].rsplit("-", 1)[0]
        group = d["kind"] if d["kind"] == "observation" else f"{d['kind']} ({phase})"
        table[(group, ",".join(d["destinations"]))] += 1
    for (group, dest), n in sorted(table.items()):
        say(f"  {group:<28} -> {dest:<16} {n:>4}")
    consensus = [d for d in decisions if d["kind"] == "observation"]
    if consensus:
        last = consensus[-1]
        say(f"  last consensus: value {last['value']:.2f} by {last['method']}, outliers "
            f"{last['outliers']}")
    say("breaker transitions (from breaker_transitions):")
    for target, frm, to, reason in moves:
        say(f"  {target}: {frm} -> {to} ({reason})")
    say("DLQ entries (from dlq_entries; `router-stream dlq show ID` for one in full):")
    for entry_id, reason, error, signal_id in dlq:
        say(f"  {entry_id:>6}  {reason:<24} {(signal_id or '-').split('@')[0]:<12} {error}")
        if WARM_UP in error:
            say(f"{'':>10}(expected: the first reading of a metric arrives before the policy's "
                "min_sources sources have reported, and there is no earlier consensus to fall "
                "back on — the rounds after it are decided; `dlq replay` would decide it now)")
    dropped = sent - decisions_db - len(dlq)
    ok = dropped == 0
    say(f"signals sent {sent}, decisions {decisions_db}, DLQ {len(dlq)}: "
        + ("every signal accounted for" if ok else f"{dropped} UNACCOUNTED"))
    return 0 if ok else 2
