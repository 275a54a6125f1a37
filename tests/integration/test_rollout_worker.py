"""Policy rollout through the worker: a broken canary is rolled back automatically and every
worker hears of it; shadow mode records the candidate's choices and routes nothing for it."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
import yaml

from router_stream.config import CONTROL, SIGNALS, SOURCE_HEALTH
from tests.support.worker import POLICY, fetch, prepare, produce, read_all, signal, wait_for, worker

pytestmark = pytest.mark.integration


def _with_rollout(mode: str, fraction: float) -> str:
    base = yaml.safe_load(POLICY)
    candidate = yaml.safe_load(POLICY)
    candidate["routes"]["alert"]["tiers"] = [["webhook"]]
    share = {"share": fraction} if mode == "canary" else {"sample": fraction}
    base["rollout"] = {"candidate": candidate, "mode": mode, **share,
                       "rollback": {"max_dlq_rate_delta": 0.1, "max_no_healthy_delta": 0.1,
                                    "window_s": 60, "min_signals": 20}}
    return yaml.safe_dump(base)


def _alerts(start: int, n: int) -> list[tuple[bytes, bytes]]:
    return [(f"sender-{i}".encode(), signal(i, payload={"severity": "critical"}))
            for i in range(start, start + n)]


async def test_broken_canary_is_rolled_back_on_every_worker(settings, tmp_path):
    s = await prepare(settings, tmp_path, _with_rollout("canary", 0.5))
    workers = [worker(s, http=False), worker(s, http=False)]
    for w in workers:
        await w.start()
    runners = [asyncio.create_task(w.run()) for w in workers]
    try:
        now_ms = int(time.time() * 1000)
        await produce(s, SOURCE_HEALTH, [(b"webhook", orjson.dumps(
            {"source_id": "webhook", "ok": False, "ts": now_ms + i})) for i in range(3)])
        await wait_for(lambda: all(w.engine.snapshot().breakers.get("webhook") == "open"
                                   for w in workers), 5, "webhook open on both")
        await produce(s, SIGNALS, _alerts(0, 300))
        await wait_for(lambda: all(w.engine.rollout is None for w in workers), 30,
                       "the candidate rolled back on both workers")
        await produce(s, SIGNALS, _alerts(1000, 100))
        await wait_for(lambda: sum(w.signals.processed for w in workers) >= 400, 30, "all")
    finally:
        for w in workers:
            w.request_stop()
        await asyncio.gather(*runners)

    commands = [orjson.loads(r.value) for r in await read_all(s, s.topic(CONTROL))]
    assert any(c["type"] == "rollout_rollback" for c in commands)
    statuses = {r["status"] for r in await fetch(
        s, "SELECT status FROM policy_versions WHERE status = 'rolled_back'")}
    assert statuses == {"rolled_back"}
    late = await fetch(s, "SELECT destinations FROM routing_decisions WHERE signal_id = ANY($1)",
                       [f"s-{i}" for i in range(1000, 1100)])
    assert len(late) == 100 and {tuple(r["destinations"]) for r in late} == {("pager",)}


async def test_shadow_records_the_candidate_and_routes_nothing_for_it(settings, tmp_path):
    s = await prepare(settings, tmp_path, _with_rollout("shadow", 1.0))
    w = worker(s, http=False)
    await w.start()
    runner = asyncio.create_task(w.run())
    try:
        await produce(s, SIGNALS, _alerts(0, 50))
        await wait_for(lambda: w.signals.processed >= 50, 20, "50 alerts")
    finally:
        w.request_stop()
        await runner

    assert await read_all(s, s.routed_topic("webhook")) == []
    assert len(await read_all(s, s.routed_topic("pager"))) == 50
    rows = await fetch(s, "SELECT baseline, candidate, agree FROM shadow_decisions")
    assert len(rows) == 50
    assert {(r["baseline"], r["candidate"], r["agree"]) for r in rows} == {
        ('["pager"]', '["webhook"]', False)}
