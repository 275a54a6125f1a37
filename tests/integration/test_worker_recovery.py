"""Recovery paths of the worker on the real broker and Postgres: a breaker that returns after its
cooldown, and signals parked on ``router.retry`` that are routed once a destination recovers or
go to the DLQ as ``retries_exhausted`` when their budget is spent."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from router_stream.config import SIGNALS, SOURCE_HEALTH
from tests.support.policies import edited
from tests.support.worker import (
    POLICY,
    POLICY_V2,
    fetch,
    prepare,
    produce,
    signal,
    wait_for,
    worker,
)

pytestmark = pytest.mark.integration


def _policy(cooldown_s: float, retry: dict[str, int]) -> str:
    return edited(POLICY, {"breaker.cooldown_s": cooldown_s}, add={"routes.alert.retry": retry})


def _health(dest: str, ok: bool, i: int = 0) -> tuple[bytes, bytes]:
    return dest.encode(), orjson.dumps({"source_id": dest, "ok": ok,
                                        "ts": int(time.time() * 1000) + i})


async def _fail(s, dests: list[str]) -> None:
    await produce(s, SOURCE_HEALTH, [_health(d, False, i) for d in dests for i in range(3)])


async def test_breaker_returns_to_the_primary_after_cooldown_and_a_healthy_probe(settings, tmp_path):
    s = await prepare(settings, tmp_path, _policy(1, {"max_attempts": 0}))
    w = worker(s)
    await w.start()
    runner = asyncio.create_task(w.run())
    try:
        await _fail(s, ["pager"])
        await wait_for(lambda: w.engine.snapshot().breakers.get("pager") == "open", 5, "open")
        opened = time.monotonic()
        await produce(s, SIGNALS, [(b"k", signal(i, payload={"severity": "high"}))
                                   for i in range(20)])
        await wait_for(lambda: w.signals.processed >= 20, 20, "alerts while pager is open")
        # The cooldown is a duration by definition: wait it out, then report pager healthy.
        await asyncio.sleep(max(0.0, 1.1 - (time.monotonic() - opened)))
        await produce(s, SOURCE_HEALTH, [_health("pager", True)])
        await wait_for(lambda: w.engine.snapshot().breakers.get("pager") == "closed", 5, "closed")
        await produce(s, SIGNALS, [(b"k", signal(i, payload={"severity": "high"}))
                                   for i in range(20, 40)])
        await wait_for(lambda: w.signals.processed >= 40, 20, "alerts after recovery")
    finally:
        w.request_stop()
        await runner

    rows = {r["signal_id"]: r["destinations"] for r in
            await fetch(s, "SELECT signal_id, destinations FROM routing_decisions")}
    assert {tuple(rows[f"s-{i}"]) for i in range(20)} == {("slack",)}
    assert {tuple(rows[f"s-{i}"]) for i in range(20, 40)} == {("pager",)}
    moves = [tuple(r) for r in await fetch(
        s, "SELECT from_state, to_state FROM breaker_transitions WHERE target = 'pager' ORDER BY at")]
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_parked_signals_are_dlqd_as_retries_exhausted_with_their_origin(settings, tmp_path):
    s = await prepare(settings, tmp_path, _policy(600, {"max_attempts": 2, "delay_ms": 200}))
    w = worker(s)
    await w.start()
    runner = asyncio.create_task(w.run())
    try:
        await _fail(s, ["pager", "slack", "email"])
        await wait_for(lambda: all(w.engine.snapshot().breakers.get(d) == "open"
                                   for d in ("pager", "slack", "email")), 5, "all open")
        origins = await produce(s, SIGNALS, [(b"k", signal(i, payload={"severity": "high"}))
                                             for i in range(10)])

        async def exhausted() -> bool:
            rows = await fetch(s, "SELECT count(*) AS n FROM dlq_entries")
            return rows[0]["n"] >= 10

        await wait_for(exhausted, 30, "10 retries_exhausted entries")
    finally:
        w.request_stop()
        await runner

    rows = await fetch(s, "SELECT signal_id, reason, attempts, original_topic, original_partition,"
                          " original_offset FROM dlq_entries ORDER BY signal_id")
    assert {r["reason"] for r in rows} == {"retries_exhausted"}
    assert {r["attempts"] for r in rows} == {2}
    assert {(r["original_partition"], r["original_offset"]) for r in rows} == set(origins)
    assert {r["original_topic"] for r in rows} == {s.topic(SIGNALS)}
    assert await fetch(s, "SELECT * FROM routing_decisions") == []


async def test_parked_signals_are_routed_once_a_destination_recovers(settings, tmp_path):
    s = await prepare(settings, tmp_path, _policy(1, {"max_attempts": 5, "delay_ms": 1500}))
    w = worker(s)
    await w.start()
    runner = asyncio.create_task(w.run())
    try:
        await _fail(s, ["pager", "slack", "email"])
        await wait_for(lambda: all(w.engine.snapshot().breakers.get(d) == "open"
                                   for d in ("pager", "slack", "email")), 5, "all open")
        opened = time.monotonic()
        origins = await produce(s, SIGNALS, [(b"k", signal(i, payload={"severity": "high"}))
                                             for i in range(10)])
        await asyncio.sleep(max(0.0, 1.1 - (time.monotonic() - opened)))
        await produce(s, SOURCE_HEALTH, [_health("pager", True)])

        async def routed() -> bool:
            rows = await fetch(s, "SELECT count(*) AS n FROM routing_decisions")
            return rows[0]["n"] >= 10

        await wait_for(routed, 30, "10 decisions after recovery")
    finally:
        w.request_stop()
        await runner

    rows = await fetch(s, "SELECT destinations, input_topic, input_partition, input_offset"
                          " FROM routing_decisions")
    assert {tuple(r["destinations"]) for r in rows} == {("pager",)}
    assert {(r["input_partition"], r["input_offset"]) for r in rows} == set(origins)
    assert {r["input_topic"] for r in rows} == {s.topic(SIGNALS)}
    assert await fetch(s, "SELECT * FROM dlq_entries") == []


async def test_policy_publish_in_history_is_replayed_with_info_logging(settings, tmp_path):
    """Logging at INFO must not break the control path (a reserved LogRecord key once did)."""
    import logging

    from router_stream.config import CONTROL
    from router_stream.worker.logs import configure_json_logging
    from router_stream.worker.policy_source import compile_policy_text

    s = await prepare(settings, tmp_path)
    publish = {"type": "policy_publish", "version": "v2", "policy_yaml": POLICY_V2,
               "issued_by": "test"}
    await produce(s, CONTROL, [(None, orjson.dumps(publish))])
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    configure_json_logging("INFO")
    try:
        w = worker(s, http=False)
        await asyncio.wait_for(w.start(), 30)
        try:
            assert w.engine.policy_version == compile_policy_text(POLICY_V2).version
        finally:
            await w.stop()
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_a_crashing_state_replay_fails_start_up_instead_of_hanging(settings, tmp_path,
                                                                         monkeypatch):
    from router_stream.config import CONTROL
    from router_stream.worker.state import StateFollower

    s = await prepare(settings, tmp_path)
    await produce(s, CONTROL, [(None, orjson.dumps({"type": "breaker_reset", "target": "pager"}))])
    w = worker(s, http=False)

    def explode(*args, **kwargs):
        raise RuntimeError("injected fault in the state replay")

    # a fault of the follower itself (not of one record): start-up fails, it does not hang
    monkeypatch.setattr(StateFollower, "_fold", explode)
    with pytest.raises(RuntimeError, match="injected fault"):
        await asyncio.wait_for(w.start(), 30)


async def test_a_state_record_the_engine_fails_on_is_skipped_and_counted(settings, tmp_path,
                                                                         monkeypatch):
    from router_stream.config import CONTROL

    s = await prepare(settings, tmp_path)
    await produce(s, CONTROL, [(None, orjson.dumps({"type": "breaker_reset", "target": "pager"}))])
    w = worker(s, http=False)

    def explode(*args, **kwargs):
        raise RuntimeError("injected fault in one state record")

    from router_stream.worker.policy_source import build_engine, read_policy_file

    w.engine = build_engine(s, read_policy_file(s)[1])
    monkeypatch.setattr(w.engine, "apply_control", explode)
    await asyncio.wait_for(w.start(), 30)
    try:
        assert w.readiness()["state_replayed"]
        assert ('router_state_records_skipped_total{reason="processing_error",topic="'
                + s.topic(CONTROL) + '"} 1.0') in w.metrics.exposition().decode()
    finally:
        await w.stop()
