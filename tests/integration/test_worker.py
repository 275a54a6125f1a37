"""The worker end to end on the real broker and Postgres (in-process, burst mode).

Every test gets its own topic prefix, consumer group and database (tests/conftest.py); the worker
runs "to completion" with ``run_until_idle`` so the assertions see a finished run.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
import pytest

from router_stream.adapters import postgres as pg
from router_stream.adapters.topics import apply_topics
from router_stream.config import CONTROL, DLQ, SIGNALS, SOURCE_HEALTH
from router_stream.worker import RouterWorker
from router_stream.worker.hotpath import PIPELINE_DEPTH
from tests.support.policies import edited
from tests.support.worker import (
    DESTINATIONS,
    POLICY,
    POLICY_V2,
    SimulatedCrash,
    counts,
    crash_after,
    fetch,
    mixed_signals,
    prepare,
    produce,
    read_all,
    signal,
    wait_for,
    worker,
)

pytestmark = pytest.mark.integration


async def test_ten_thousand_mixed_signals_each_decided_or_dead_lettered_once(settings, tmp_path):
    s = await prepare(settings, tmp_path)
    inputs = mixed_signals(10_000)
    coords = await produce(s, SIGNALS, [(k, v) for k, v, _ in inputs])
    expected = {c: (k, v, e) for c, (k, v, e) in zip(coords, inputs, strict=True)}

    w = worker(s)
    started = time.monotonic()
    await w.run_until_idle(1.0)
    elapsed = time.monotonic() - started

    decisions = await fetch(s, "SELECT signal_id, kind, destinations, input_partition,"
                               " input_offset FROM routing_decisions")
    dlq_rows = await fetch(s, "SELECT reason, original_partition, original_offset, original_key,"
                              " original_value, signal_id FROM dlq_entries")
    decided = {(r["input_partition"], r["input_offset"]): r for r in decisions}
    dead = {(r["original_partition"], r["original_offset"]): r for r in dlq_rows}
    # exactly one row per input record, in exactly one of the two tables
    assert len(decided) == len(decisions) and len(dead) == len(dlq_rows)
    assert not decided.keys() & dead.keys()
    assert decided.keys() | dead.keys() == expected.keys()

    tiny_limited = 0
    for coord, (key, value, want) in expected.items():
        if want in ("alert", "notification", "ticket"):
            assert decided[coord]["kind"] == want, coord
        elif want == "tiny":
            if coord in dead:
                assert dead[coord]["reason"] == "rate_limited"
                tiny_limited += 1
            else:
                assert decided[coord]["kind"] == "alert"
        else:
            assert dead[coord]["reason"] == want, (coord, value)
        if coord in dead:
            assert bytes(dead[coord]["original_value"]) == value
            assert bytes(dead[coord]["original_key"]) == key
    assert tiny_limited >= 400  # burst 5, 1/s refill: nearly all 500 are over the rate

    # routed topics hold the valid ones under the right destination
    routed = {d: await read_all(s, s.routed_topic(d)) for d in DESTINATIONS}
    by_kind = Counter(r["kind"] for r in decisions)
    assert len(routed["pager"]) == by_kind["alert"]
    assert len(routed["slack"]) == 0
    assert len(routed["webhook"]) == by_kind["notification"]
    assert len(routed["email"]) == by_kind["notification"]
    assert len(routed["desk-a"]) + len(routed["desk-b"]) == by_kind["ticket"]
    for rec in routed["pager"][:50]:
        body = orjson.loads(rec.value)
        assert body["route"]["destination"] == "pager" and body["route"]["kind"] == "alert"

    # the DLQ topic holds the rest byte-exact, with the SPEC headers
    dlq_records = await read_all(s, s.topic(DLQ))
    assert len(dlq_records) == len(dlq_rows)
    for rec in dlq_records:
        h = dict(rec.headers)
        coord = (int(h["x-dlq-original-partition"]), int(h["x-dlq-original-offset"]))
        key, value, want = expected[coord]
        assert rec.value == value and rec.key == key
        assert h["x-dlq-original-topic"] == s.topic(SIGNALS).encode()
        assert h["x-dlq-reason"].decode() == dead[coord]["reason"]
        assert h["x-dlq-attempts"] == b"1" and float(h["x-dlq-first-failed-at"]) > 0
        assert "x-dlq-error" in h
        if want != "invalid_json":
            assert h["x-signal-id"] == f"s-{coord_index(inputs, value)}".encode()

    # decision records keyed by signal_id
    decision_records = await read_all(s, s.topic("router.decisions"))
    assert len(decision_records) == len(decisions)
    assert {r.key.decode() for r in decision_records} == {r["signal_id"] for r in decisions}

    body = w.metrics.exposition().decode()
    assert 'signals_received_total{kind="alert"}' in body
    assert 'dlq_total{reason="invalid_json"} 1000.0' in body
    print(f"\n10k mixed signals: {elapsed:.1f}s incl. start-up and 1 s idle wait")


def coord_index(inputs: list[tuple[bytes, bytes, str]], value: bytes) -> int:
    return int(orjson.loads(value)["signal_id"].split("-")[1])


@pytest.mark.parametrize("step", ["decided", "produced"])
async def test_crash_between_commit_steps_reprocesses_without_loss_or_duplicate_rows(
    settings, tmp_path, step, project_to_idle
):
    s = await prepare(settings, tmp_path)
    s = s.model_copy(update={"batch_max": 50})
    inputs = mixed_signals(400)
    inputs = [i for i in inputs if i[2] != "tiny"]  # rate limits are re-evaluated on re-run
    await produce(s, SIGNALS, [(k, v) for k, v, _ in inputs])

    with pytest.raises(SimulatedCrash):
        await worker(s, on_step=crash_after(step)).run_until_idle(0.5)
    await project_to_idle(s)  # whatever reached Kafka before the crash
    d, _, q = await counts(s)
    if step == "produced":
        # the first batch was acknowledged (later ones may have been too), none committed
        assert 50 <= d + q <= 50 * PIPELINE_DEPTH
    else:
        assert d + q == 0  # nothing was produced, so nothing can be projected

    await worker(s).run_until_idle(0.5)  # the restarted worker re-processes from the commit
    d, unique, q = await counts(s)
    assert d == unique and d + q == len(inputs)
    routed = await read_all(s, s.routed_topic("pager"))
    alerts = sum(1 for *_, e in inputs if e == "alert")
    # at-least-once on Kafka: the crashed batch may have been produced twice, never lost
    assert {orjson.loads(r.value)["signal_id"] for r in routed} >= {
        orjson.loads(v)["signal_id"] for _, v, e in inputs if e == "alert"}
    # ... and only the batches that were in flight (decided, not committed) are produced again
    assert alerts <= len(routed) <= alerts + 50 * PIPELINE_DEPTH


async def test_a_postgres_outage_pauses_the_projection_never_routing(
    settings, tmp_path, monkeypatch
):
    from router_stream.errors import DatabaseUnavailable
    from router_stream.projection import service

    s = await prepare(settings, tmp_path)
    inputs = [i for i in mixed_signals(200) if i[2] != "tiny"]
    await produce(s, SIGNALS, [(k, v) for k, v, _ in inputs])
    real, failures = service.write_batch, []
    outage = asyncio.Event()

    async def down_until_routed(*args: Any, **kwargs: Any) -> Any:
        if not outage.is_set():
            failures.append(1)
            raise DatabaseUnavailable("simulated outage")
        return await real(*args, **kwargs)

    monkeypatch.setattr(service, "write_batch", down_until_routed)
    w = worker(s)
    run = asyncio.create_task(w.run_until_idle(0.5))
    # every signal is routed and committed while no row can be written
    await wait_for(lambda: w.signals is not None and w.signals.processed == len(inputs), 60,
                   "routing during the outage")
    await wait_for(lambda: failures, 60, "the projection trying to write")
    assert await counts(s) == (0, 0, 0)
    outage.set()
    await asyncio.wait_for(run, 60)
    d, unique, q = await counts(s)
    assert d == unique and d + q == len(inputs)
    assert w.projection is not None
    retries = w.projection.metrics.registry.get_sample_value(
        "router_projection_transient_retries_total")
    assert retries == len(failures)


async def test_breaker_opens_on_failing_health_and_traffic_moves_to_next_tier(settings, tmp_path):
    s = await prepare(settings, tmp_path)
    w = worker(s)
    await w.start()
    runner = asyncio.create_task(w.run())
    try:
        first = [(b"k", signal(i, payload={"severity": "critical"})) for i in range(100)]
        await produce(s, SIGNALS, first)
        await wait_for(lambda: w.signals.processed >= 100, 20, "first alerts")

        now_ms = int(time.time() * 1000)
        health = [(b"pager", orjson.dumps({"source_id": "pager", "ok": False, "ts": now_ms + i}))
                  for i in range(3)]
        await produce(s, SOURCE_HEALTH, health)
        took = await wait_for(lambda: w.engine.snapshot().breakers.get("pager") == "open", 5,
                              "breaker open")
        assert took < 1.0

        second = [(b"k", signal(i, payload={"severity": "critical"})) for i in range(100, 200)]
        await produce(s, SIGNALS, second)
        await wait_for(lambda: w.signals.processed >= 200, 20, "second alerts")
        await wait_for(lambda: 'breaker_state{destination="pager"} 2.0'
                       in w.metrics.exposition().decode(), 3, "breaker_state gauge")
    finally:
        w.request_stop()
        await runner

    rows = await fetch(s, "SELECT signal_id, destinations, tier FROM routing_decisions")
    by_id = {r["signal_id"]: r for r in rows}
    assert all(by_id[f"s-{i}"]["destinations"] == ["pager"] for i in range(100))
    assert all(by_id[f"s-{i}"]["destinations"] == ["slack"] for i in range(100, 200))
    assert {str(by_id[f"s-{i}"]["tier"]) for i in range(100, 200)} == {"1"}
    transitions = await fetch(s, "SELECT target, from_state, to_state FROM breaker_transitions")
    assert [tuple(t) for t in transitions] == [("pager", "closed", "open")]


async def test_policy_publish_switches_both_workers_and_a_bad_policy_is_rejected(
    settings, tmp_path
):
    from router_stream.worker.policy_source import compile_policy_text

    s = await prepare(settings, tmp_path)
    workers = [worker(s, http=False), worker(s, http=False)]
    for w in workers:
        await w.start()
    runners = [asyncio.create_task(w.run()) for w in workers]
    try:
        old = workers[0].engine.policy_version
        new = compile_policy_text(POLICY_V2).version
        publish = {"type": "policy_publish", "version": "v2", "policy_yaml": POLICY_V2,
                   "issued_by": "test"}
        await produce(s, CONTROL, [(None, orjson.dumps(publish))])
        await wait_for(lambda: all(w.engine.policy_version == new for w in workers), 5,
                       "both workers on the new policy")

        bad = {"type": "policy_publish", "version": "v3", "issued_by": "test",
               "policy_yaml": edited(POLICY_V2, {"routes.notification.strategy": "nonsense"})}
        await produce(s, CONTROL, [(None, orjson.dumps(bad))])
        await asyncio.sleep(0.5)
        assert all(w.engine.policy_version == new for w in workers)

        alerts = [(f"k{i}".encode(), signal(i, payload={"severity": "critical"}))
                  for i in range(200)]
        await produce(s, SIGNALS, alerts)
        await wait_for(lambda: sum(w.signals.processed for w in workers) >= 200, 20, "alerts")
        await wait_for(lambda: fetch(s, "SELECT 1 FROM policy_versions WHERE status='rejected'"),
                       5, "rejected policy recorded")
    finally:
        for w in workers:
            w.request_stop()
        await asyncio.gather(*runners)

    assert old != new
    rows = await fetch(s, "SELECT policy_version, destinations FROM routing_decisions")
    assert len(rows) == 200
    assert {r["policy_version"] for r in rows} == {new}
    assert {tuple(r["destinations"]) for r in rows} == {("email",)}
    versions = {r["version"]: r["status"] for r in await fetch(
        s, "SELECT version, status FROM policy_versions")}
    assert versions[new] == "active"


async def test_refuses_to_start_with_one_clear_line_when_topics_are_missing(settings, tmp_path):
    import subprocess
    import sys

    from router_stream.worker import StartupRefused

    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    s = settings.model_copy(update={"policy_file": str(path)})
    with pytest.raises(StartupRefused, match="refusing to start: .*signals: missing"):
        await RouterWorker(s).start()

    env = {"ROUTER_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "ROUTER_TOPIC_PREFIX": s.topic_prefix,
           "ROUTER_POLICY_FILE": str(path), "ROUTER_DATABASE_URL": s.database_url.get_secret_value(),
           "ROUTER_HTTP_PORT": "0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", "from router_stream.cli import main; main()",
                           "worker"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 2
    errors = [line for line in done.stderr.decode().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refusing to start" in errors[0]


async def test_a_topics_file_of_its_own_sizes_a_destination_and_the_worker_verifies_it(
        settings, tmp_path):
    """ROUTER_TOPICS_FILE: `routed.pager` declared with 1 partition and a shorter retention is
    created so, and the worker starts against it and routes there; a worker reading the shipped
    declarations instead refuses, naming the differences and the file they come from."""
    import yaml

    from router_stream.adapters.topics import default_topics_file
    from router_stream.worker import StartupRefused

    doc = yaml.safe_load(default_topics_file().read_text())
    doc["routed"]["destinations"] = {
        "pager": {"partitions": 1, "configs": {"retention.ms": "3600000"}}}
    mine = tmp_path / "topics.yaml"
    mine.write_text(yaml.safe_dump(doc))
    s = await prepare(settings.model_copy(update={"topics_file": mine}), tmp_path)

    alerts = [(f"k{i}".encode(), signal(i, payload={"severity": "critical"})) for i in range(50)]
    await produce(s, SIGNALS, alerts)
    await worker(s).run_until_idle(1.0)
    routed = await read_all(s, s.routed_topic("pager"))
    assert len(routed) == 50 and {r.partition for r in routed} == {0}

    shipped = s.model_copy(update={"topics_file": None})
    with pytest.raises(StartupRefused) as refused:
        await RouterWorker(shipped).start()
    pager = s.routed_topic("pager")
    assert f"{pager}: partitions is 1, declared 12" in str(refused.value)
    assert f"{pager}: retention.ms is 3600000, declared 604800000" in str(refused.value)
    assert f"make the others match {default_topics_file()}" in str(refused.value)
    assert "ROUTER_TOPICS_FILE" in str(refused.value)


async def test_waits_not_ready_for_missing_topics_then_starts(settings, tmp_path):
    """With ROUTER_STARTUP_WAIT_S a worker started before the topics exist answers /livez, is
    not ready (``topics`` false) and starts once they are created, instead of exiting."""
    import aiohttp

    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    s = settings.model_copy(update={"policy_file": str(path), "startup_wait_s": 120.0})
    await pg.migrate_database(s)
    w = worker(s)
    starting = asyncio.create_task(w.start())
    try:
        await wait_for(lambda: w.http is not None and w.http.port, 20, "http listening")
        base = f"http://127.0.0.1:{w.http.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/livez") as r:
                assert r.status == 200
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503 and (await r.json())["checks"]["topics"] is False
            assert not starting.done()
            await apply_topics(s, DESTINATIONS)
            await asyncio.wait_for(starting, 60)
            async with http.get(f"{base}/readyz") as r:
                assert (await r.json())["checks"]["topics"] is True
    finally:
        if not starting.done():
            starting.cancel()
        await w.stop()


async def test_the_trace_context_reaches_the_routed_decision_and_dlq_records(settings, tmp_path):
    s = await prepare(settings, tmp_path)
    trace = [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
             ("tracestate", b"vendor=1")]
    await produce(s, SIGNALS, [(b"k", signal(1, payload={"severity": "critical"})),
                               (b"k", b'{"not": "a signal"')], headers=[*trace, ("x-other", b"1")])
    await worker(s).run_until_idle(0.5)

    (routed,) = await read_all(s, s.topic("routed.pager"))
    (decision,) = await read_all(s, s.topic("router.decisions"))
    (dead,) = await read_all(s, s.topic(DLQ))
    assert list(routed.headers) == trace and list(decision.headers) == trace
    assert list(dead.headers)[:3] == [*trace, ("x-other", b"1")]  # the original headers, as sent


async def test_health_endpoints_and_metrics(settings, tmp_path):
    import aiohttp

    s = await prepare(settings, tmp_path)
    await produce(s, SIGNALS, [(b"k", signal(1, payload={"severity": "critical"}))])
    w = worker(s)
    await w.start()
    runner = asyncio.create_task(w.run())
    try:
        base = f"http://127.0.0.1:{w.http.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/livez") as r:
                assert r.status == 200
            await wait_for(lambda: w.signals.processed >= 1, 20, "one signal")

            async def ready() -> bool:
                async with http.get(f"{base}/readyz") as r:
                    return r.status == 200

            async def commit_answered() -> bool:  # the commit is answered after the batch
                async with http.get(f"{base}/metrics") as r:
                    return "router_commit_seconds_count 0.0" not in await r.text()

            await wait_for(ready, 10, "/readyz 200")
            await wait_for(commit_answered, 10, "the offset commit's answer (commit_seconds)")
            async with http.get(f"{base}/metrics") as r:
                body = await r.text()
            assert r.status == 200
            assert 'signals_received_total{kind="alert"} 1.0' in body
            assert "router_latency_seconds_bucket" in body and "decision_confidence" in body
            # the Kafka consumer as the group sees it
            assert f'router_assigned_partitions{{topic="{s.topic(SIGNALS)}"}}' in body
            assert "router_rebalances_total 0.0" not in body and "router_rebalances_total" in body
            w.request_stop()
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503 and (await r.json())["checks"]["not_draining"] is False
    finally:
        w.request_stop()
        await runner
