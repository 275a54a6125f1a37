"""topics/schemas/ is the contract: every record a real worker run reads or writes validates
against its JSON Schema, checked with ``jsonschema`` (independent of the router's own models).

The run: signals of every route kind plus records that must be dead-lettered, health events,
operator commands published the way the CLI publishes them, a worker with ROUTER_PERSIST=false
(so heartbeats go to ``router.workers``), and router_stream.client consumers reporting outcomes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
import pytest

from router_stream.adapters.control import send_control
from router_stream.adapters.topics import apply_topics
from router_stream.client import DestinationConsumer, RoutedSignal
from router_stream.config import (
    CONTROL,
    DECISIONS,
    DLQ,
    EVENTS,
    OUTCOMES,
    SIGNALS,
    SOURCE_HEALTH,
    WORKERS,
)
from router_stream.core.models import (
    BreakerForce,
    BreakerReset,
    OverrideClear,
    OverrideSet,
    PolicyReload,
)
from router_stream.worker import RouterWorker
from tests.support.schemas import SCHEMAS, schema_errors
from tests.support.worker import produce, read_all

pytestmark = pytest.mark.integration

DESTINATIONS = ["pager", "slack", "email", "a", "b", "metrics"]
POLICY = """
name: contract
destinations: [pager, slack, email, a, b, metrics]
classify:
  - {name: observations, when: {field: metric, exists: true}, kind: observation}
  - {name: alerts, when: {field: payload.severity, in: [critical]}, kind: alert, priority: 9}
routes:
  alert: {strategy: first_healthy, tiers: [[pager], [slack]]}
  note: {strategy: thompson, destinations: [a, b]}
  digest: {strategy: fanout, destinations: [email, slack]}
  observation: {strategy: consensus, destinations: [metrics]}
defaults: {unclassified: dlq, unrouted: dlq}
"""


def signals(now_ms: int) -> list[bytes]:
    out = [orjson.dumps({"signal_id": f"al-{i}", "sender_id": "mon", "ts": now_ms,
                         "payload": {"severity": "critical"}}) for i in range(3)]
    out += [orjson.dumps({"sender_id": f"app-{i}", "kind": "note", "tenant": "acme",
                          "ts": "2026-01-01T00:00:00Z", "payload": {"n": i}, "extra": [i]})
            for i in range(4)]  # no signal_id: the router derives it
    out += [orjson.dumps({"signal_id": f"dg-{i}", "sender_id": "news", "kind": "digest",
                          "priority": 2}) for i in range(2)]
    # null for absent, lower-case RFC 3339: routed as is, so its routed copy keeps them
    out += [orjson.dumps({"signal_id": "dg-null", "sender_id": "news", "kind": "digest",
                          "tenant": None, "ts": "2026-01-01t00:00:00.5z", "priority": None,
                          "ttl_ms": None, "payload": None, "metric": None, "source_id": None,
                          "value": None})]
    out += [orjson.dumps({"signal_id": f"ob-{src}", "sender_id": src, "metric": "p99",
                          "source_id": src, "value": v, "ts": now_ms})
            for src, v in (("probe-1", 41.0), ("probe-2", 41.5), ("probe-3", 40.9))]
    out += [b"{not json", orjson.dumps({"signal_id": "u-1", "sender_id": "x", "payload": {}}),
            orjson.dumps({"signal_id": "nr-1", "sender_id": "x", "kind": "unknown-kind"}),
            orjson.dumps({"sender_id": ""})]
    return out


def commands() -> list[Any]:
    return [
        PolicyReload(),
        OverrideSet(override_id="o-1", kind="digest", destinations=["email"],
                    expires_at=time.time() + 600, reason="contract test"),
        OverrideClear(override_id="o-1"),
        BreakerForce(target="b", state="closed", reason="contract test"),
        BreakerReset(target="b"),
    ]


async def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def deliver(routed: RoutedSignal) -> None:
    if routed.destination == "b":
        raise RuntimeError("b is failing")


async def test_every_record_of_a_worker_run_validates_against_its_schema(settings, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    s = settings.model_copy(update={"policy_file": str(policy), "persist": False,
                                    "heartbeat_interval_s": 0.2, "checkpoint_interval_s": 0})
    await apply_topics(s, DESTINATIONS)
    now_ms = int(time.time() * 1000)
    inputs = signals(now_ms)
    await produce(s, SIGNALS, [(b"k", v) for v in inputs])
    await produce(s, SOURCE_HEALTH, [
        (b"pager", orjson.dumps({"source_id": "pager", "ts": now_ms, "ok": True,
                                 "latency_ms": 12.5, "error_rate": 0.01,
                                 "last_data_ts": "2026-01-01T00:00:00+00:00",
                                 "completeness": 1.0})),
        (b"probe-1", orjson.dumps({"source_id": "probe-1", "ts": now_ms, "ok": True}))])
    for cmd in commands():
        await send_control(s, cmd)

    worker = RouterWorker(s, http=False)
    await worker.start()
    runner = asyncio.create_task(worker.run())
    consumers = [DestinationConsumer(d, bootstrap_servers=s.kafka_bootstrap,
                                     topic_prefix=s.topic_prefix, group_id=f"{s.group_id}-{d}")
                 for d in DESTINATIONS]
    try:
        await wait_for(lambda: worker.signals.processed >= len(inputs), 30, "the signals")
        routed = {d: await read_all(s, s.routed_topic(d)) for d in DESTINATIONS}
        for c in consumers:
            await c.start()
        tasks = [asyncio.create_task(c.run(deliver)) for c in consumers]
        await wait_for(lambda: all(c.stats.handled + c.stats.duplicates == len(routed[c.destination])
                                   for c in consumers), 30, "the deliveries")
        for c in consumers:
            c.request_stop()
        await asyncio.gather(*tasks)
    finally:
        for c in consumers:
            await c.stop()
        worker.request_stop()
        await runner

    checked: Counter[str] = Counter()

    def check(schema: str, instance: Any) -> None:
        assert schema_errors(schema, instance) == [], (schema, instance)
        checked[schema] += 1

    for r in await read_all(s, s.topic(SIGNALS)):
        if r.value in (b"{not json",):
            continue
        value = orjson.loads(r.value)
        if value.get("sender_id"):  # the others are the records that must be dead-lettered
            check("signal.schema.json", value)
    for records in routed.values():
        for r in records:
            check("routed.schema.json", orjson.loads(r.value))
    for r in await read_all(s, s.topic(DECISIONS)):
        check("decision.schema.json", orjson.loads(r.value))
    dlq = await read_all(s, s.topic(DLQ))
    for r in dlq:
        check("dlq-headers.schema.json", {k: v.decode() for k, v in r.headers})
    for r in await read_all(s, s.topic(OUTCOMES)):
        check("outcome.schema.json", orjson.loads(r.value))
    for r in await read_all(s, s.topic(SOURCE_HEALTH)):
        check("health-event.schema.json", orjson.loads(r.value))
    for r in await read_all(s, s.topic(CONTROL)):
        check("control-command.schema.json", orjson.loads(r.value))
    for r in await read_all(s, s.topic(WORKERS)):
        check("worker-heartbeat.schema.json", orjson.loads(r.value))
    for r in await read_all(s, s.topic(EVENTS)):  # breaker transitions, trust snapshots, ...
        check("router-event.schema.json", orjson.loads(r.value))

    assert len(dlq) == 4  # every record that must be rejected was
    assert set(checked) == {p.name for p in SCHEMAS.glob("*.schema.json")}, checked
    assert checked["routed.schema.json"] >= 3 + 4 + 3 * 2 + 1
    assert checked["outcome.schema.json"] == checked["routed.schema.json"]

