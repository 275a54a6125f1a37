"""Worker heartbeats and `policy show` (which worker runs which policy version), on the real
broker and Postgres.

* Two workers run as real processes (`router-stream worker`) with a 1 s heartbeat; a policy is
  published with `router-stream policy publish`; `policy show --json` is read back until it says
  what it must, within a bound. Then one worker exits cleanly (stopped) and one is SIGKILLed
  (stale after three intervals).
* Without Postgres the heartbeats go to the compacted router.workers topic, and the active
  version comes from router.control.
* A heartbeat that cannot be written (its table locked) never holds up routing, and is written
  again once it can be.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner, Result

from router_stream.cli import _register, cli
from router_stream.config import SIGNALS, Settings
from router_stream.worker import RouterWorker
from tests.support.policies import edited
from tests.support.worker import (
    POLICY,
    counts,
    mixed_signals,
    prepare,
    produce,
    start_worker,
    wait_exit,
    wait_for,
    worker,
)

pytestmark = pytest.mark.integration

INTERVAL_S = 1.0
POLICY_V2 = edited(POLICY, {"name": "worker-test-v2", "breaker.failure_threshold": 4})


def cli_env(s: Settings, **extra: str) -> dict[str, str]:
    return {"ROUTER_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "ROUTER_DATABASE_URL": s.database_url.get_secret_value(),
            "ROUTER_TOPIC_PREFIX": s.topic_prefix, "ROUTER_GROUP_ID": s.group_id, **extra}


async def invoke(s: Settings, *args: str, **env: str) -> Result:
    _register()
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=cli_env(s, **env))


async def show(s: Settings, *args: str, **env: str) -> dict[str, Any]:
    result = await invoke(s, "policy", "show", "--json", *args, **env)
    assert result.exit_code == 0, result.output
    view: dict[str, Any] = json.loads(result.output)
    return view


async def until_shown(s: Settings, check: Any, timeout: float, what: str, *args: str,
                      **env: str) -> tuple[dict[str, Any], float]:
    """Poll `policy show --json` until ``check(view)``; returns the view and how long it took."""
    started = time.monotonic()
    view: dict[str, Any] = {}
    while time.monotonic() - started < timeout:
        view = await show(s, *args, **env)
        if check(view):
            return view, time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not shown within {timeout}s; last view: "
                         f"{json.dumps(view, indent=1)[:3000]}")


def by_id(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["worker_id"]: w for w in view["workers"]}


async def test_two_workers_show_the_published_version_then_stopped_and_stale(
    settings, tmp_path, monkeypatch
):
    s = await prepare(settings, tmp_path)
    v2_file = tmp_path / "v2.yaml"
    v2_file.write_text(POLICY_V2)
    v1_result = await invoke(s, "policy", "validate", "--json", str(s.policy_file))
    v1 = json.loads(v1_result.output)["version"]
    v2 = json.loads((await invoke(s, "policy", "validate", "--json", str(v2_file))).output)[
        "version"]
    assert v1 != v2

    monkeypatch.setenv("ROUTER_HEARTBEAT_INTERVAL_S", str(INTERVAL_S))  # read by start_worker
    log = tmp_path / "workers.log"
    procs = [start_worker(s, log) for _ in range(2)]
    ids = [f"{socket.gethostname()}:{p.pid}" for p in procs]
    try:
        def both_running_on_all_partitions(view: dict[str, Any]) -> bool:
            workers = by_id(view)
            if not all(workers.get(i, {}).get("state") == "running" for i in ids):
                return False
            owned = [(t, p) for i in ids for t, ps in workers[i]["partitions"].items() for p in ps]
            return len(owned) == len(set(owned)) == 24  # 12 signals + 12 router.retry

        view, _ = await until_shown(s, both_running_on_all_partitions, 60,
                                    "both workers sharing every input partition")
        assert view["active_version"] is None  # nothing published yet: they run the file
        assert {by_id(view)[i]["policy_version"] for i in ids} == {v1}
        assert {by_id(view)[i]["group_id"] for i in ids} == {s.group_id}

        sent = time.monotonic()
        published = await invoke(s, "policy", "publish", str(v2_file))
        assert published.exit_code == 0, published.output

        def both_on_v2(view: dict[str, Any]) -> bool:
            workers = by_id(view)
            return view["active_version"] == v2 and all(
                workers[i]["policy_version"] == v2 and workers[i]["on_active_version"] is True
                for i in ids)

        view, _ = await until_shown(s, both_on_v2, 10, "both workers on the published version")
        took = time.monotonic() - sent
        assert view["versions_in_use"] == {v2: 2}

        text = await invoke(s, "policy", "show")
        assert text.exit_code == 0, text.output
        assert f"active policy  {v2}" in text.output
        for i in ids:
            assert i in text.output
        assert text.output.count(f"{v2} (active)") == 2
        assert "2 worker(s): 2 running" in text.output

        # A clean exit says so at once; a SIGKILLed worker goes stale after 3 intervals.
        os.killpg(procs[0].pid, signal.SIGTERM)
        assert await wait_exit(procs[0], 30) == 0, log.read_text()[-3000:]
        view = await show(s)
        assert by_id(view)[ids[0]]["state"] == "stopped"
        assert by_id(view)[ids[0]]["partitions"] == {}

        os.killpg(procs[1].pid, signal.SIGKILL)
        procs[1].wait(10)
        killed = time.monotonic()
        view, _ = await until_shown(s, lambda v: by_id(v)[ids[1]]["state"] == "stale",
                                    3 * INTERVAL_S + 5, "the killed worker as stale")
        assert time.monotonic() - killed >= 2 * INTERVAL_S  # not before it missed its beats
        assert view["versions_in_use"] == {}
        print(f"policy publish started -> both workers shown on it: {took:.2f}s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


async def test_without_postgres_heartbeats_go_to_router_workers(settings, tmp_path):
    s = await prepare(settings, tmp_path)
    s = s.model_copy(update={"persist": False, "worker_id": "kafka-only-1",
                             "heartbeat_interval_s": INTERVAL_S})
    v2_file = tmp_path / "v2.yaml"
    v2_file.write_text(POLICY_V2)
    worker = RouterWorker(s, http=False)
    await worker.start()
    run = asyncio.create_task(worker.run())
    try:
        view, _ = await until_shown(
            s, lambda v: by_id(v).get("kafka-only-1", {}).get("state") == "running", 30,
            "the worker on router.workers", ROUTER_PERSIST="false")
        assert view["active_version"] is None
        assert "no policy has been published" in view["notes"][0]
        assert await asyncio.to_thread(_no_rows_in_postgres, s)

        published = await invoke(s, "policy", "publish", str(v2_file))
        assert published.exit_code == 0, published.output
        view, _ = await until_shown(
            s, lambda v: v["active_version"] is not None
            and by_id(v)["kafka-only-1"]["on_active_version"] is True, 10,
            "the published version from router.control", "--source", "kafka")
        v2 = view["active_version"]
        worker_version = by_id(view)["kafka-only-1"]["policy_version"]
        assert v2 == worker_version == worker.engine.policy_version
    finally:
        worker.request_stop()
        await asyncio.wait_for(run, 30)
    view = await show(s, "--source", "kafka")
    assert by_id(view)["kafka-only-1"]["state"] == "stopped"


def _no_rows_in_postgres(s: Settings) -> bool:
    async def count() -> int:
        conn = await asyncpg.connect(s.database_url.get_secret_value())
        try:
            return int(await conn.fetchval("SELECT count(*) FROM worker_heartbeats"))
        finally:
            await conn.close()

    return asyncio.run(count()) == 0


async def test_a_heartbeat_stuck_on_a_locked_table_does_not_hold_up_routing(settings, tmp_path):
    s = await prepare(settings, tmp_path)
    s = s.model_copy(update={"heartbeat_interval_s": 0.5, "worker_id": "locked-out"})
    inputs = [i for i in mixed_signals(3000) if i[2] != "tiny"]
    await produce(s, SIGNALS, [(k, v) for k, v, _ in inputs])
    blocker = await asyncpg.connect(s.database_url.get_secret_value())
    held = blocker.transaction()
    await held.start()
    await blocker.execute("LOCK TABLE worker_heartbeats IN ACCESS EXCLUSIVE MODE")
    w = worker(s, http=False)
    await w.start()
    run = asyncio.create_task(w.run())
    try:
        took = await wait_for(lambda: _all_done(s, len(inputs)), 120, "every signal routed")
        assert w.heartbeat is not None and w.heartbeat.recorded == 0  # every beat was stuck
        await held.rollback()  # the table is writable again: the next beat gets through
        await until_shown(s, lambda v: by_id(v).get("locked-out", {}).get("signals_processed")
                          == len(inputs) and by_id(v)["locked-out"]["state"] == "running",
                          15, "a heartbeat written after the lock")
        print(f"{len(inputs)} signals routed in {took:.1f}s with every heartbeat blocked")
    finally:
        await blocker.close()
        w.request_stop()
        await asyncio.wait_for(run, 30)
    assert by_id(await show(s))["locked-out"]["state"] == "stopped"


async def _all_done(s: Settings, n: int) -> bool:
    d, _, q = await counts(s)
    return d + q >= n


async def test_exit_codes_of_policy_show(settings, tmp_path):
    # 1: the database was never migrated (no worker_heartbeats) — the fix is a command away
    unmigrated = await invoke(settings, "policy", "show")
    assert unmigrated.exit_code == 1, unmigrated.output
    assert "db migrate" in unmigrated.output
    # 1: the topic is missing (Kafka-only deployments need `topics apply`)
    no_topic = await invoke(settings, "policy", "show", "--source", "kafka")
    assert no_topic.exit_code == 1 and "topics apply" in no_topic.output, no_topic.output
    # 1: options that describe running workers do not go with a FILE
    with_file = await invoke(settings, "policy", "show", "--all", str(tmp_path / "p.yaml"))
    assert with_file.exit_code == 1 and "not with a FILE" in with_file.output
    # 2: Postgres unreachable
    _register()
    down = await asyncio.to_thread(CliRunner().invoke, cli, ["policy", "show"], env={
        **cli_env(settings), "ROUTER_DATABASE_URL": "postgresql://router@127.0.0.1:1/router"})
    assert down.exit_code == 2, down.output
    assert down.output.startswith("error: cannot connect to Postgres")
    # 0 with nothing to show yet, and saying so
    await prepare(settings, tmp_path)
    empty = await invoke(settings, "policy", "show")
    assert empty.exit_code == 0, empty.output
    assert "no worker has recorded a heartbeat" in empty.output


async def test_policy_show_lists_only_the_workers_of_its_own_topic_prefix(settings, tmp_path):
    """Two deployments (topic prefixes) sharing one database: each sees its own workers only."""
    from router_stream.adapters import postgres as pg
    from router_stream.adapters.heartbeat_store import PostgresHeartbeats
    from router_stream.core.heartbeat import WorkerHeartbeat

    await pg.migrate_database(settings)
    other = settings.model_copy(update={"topic_prefix": f"other-{settings.topic_prefix}"})
    now = time.time()
    pool = await pg.create_pool(settings, min_size=1, max_size=1)
    try:
        store = PostgresHeartbeats(pool)
        for worker_id, s in (("ours:1", settings), ("theirs:1", other)):
            await store.write(WorkerHeartbeat(
                worker_id=worker_id, group_id=s.group_id, host="h", pid=1,
                policy_version="p-1", started_at=now - 5, last_seen=now, status="stopped",
                interval_s=INTERVAL_S, topic_prefix=s.topic_prefix))
    finally:
        await pool.close()
    assert [w["worker_id"] for w in (await show(settings))["workers"]] == ["ours:1"]
    assert [w["worker_id"] for w in (await show(other))["workers"]] == ["theirs:1"]
