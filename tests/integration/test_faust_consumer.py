"""examples/faust_consumer.py as a real faust worker next to a router worker: it consumes
``routed.slack`` and reports one outcome per delivery, which the router folds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from router_stream.adapters.topics import apply_topics
from router_stream.config import OUTCOMES, SIGNALS
from router_stream.core.parsing import parse_outcome
from router_stream.worker import RouterWorker
from tests.support.processes import stop_process

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "faust_consumer.py"
POLICY = """
name: faust-example
destinations: [slack]
routes:
  note: {strategy: first_healthy, tiers: [[slack]]}
defaults: {unclassified: dlq, unrouted: dlq}
"""


async def _outcomes(bootstrap: str, topic: str, want: int, proc: subprocess.Popen[bytes],
                    timeout_s: float = 90.0) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < want and time.monotonic() < deadline and proc.poll() is None:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


async def test_faust_example_consumes_routed_slack_and_reports_outcomes(settings, tmp_path,
                                                                         test_id):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    s = settings.model_copy(update={"policy_file": str(policy), "persist": False,
                                    "checkpoint_interval_s": 0})
    await apply_topics(s, ["slack"])
    worker = RouterWorker(s, http=False)
    await worker.start()
    runner = asyncio.create_task(worker.run())
    env = os.environ | {
        "ROUTER_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "ROUTER_TOPIC_PREFIX": s.topic_prefix,
        "FAUST_APP_ID": f"t{test_id}.slack-sender",  # its internal topics go with the prefix
    }
    faust_worker = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "worker", "--without-web", "-l", "warn"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap)
        await producer.start()
        try:
            for i in range(10):
                body = {"signal_id": f"f-{i}", "sender_id": "app", "kind": "note",
                        "payload": {"fail": i % 3 == 0}}
                await producer.send_and_wait(s.topic(SIGNALS), orjson.dumps(body), key=b"app")
        finally:
            await producer.stop()
        records = await _outcomes(s.kafka_bootstrap, s.topic(OUTCOMES), 10, faust_worker)
        log = "" if len(records) == 10 else stop_process(faust_worker)
        assert len(records) == 10, log
        # The router folds them: outcomes are the only thing that gives slack a trust state.
        deadline = time.monotonic() + 20
        while "slack" not in worker.engine.snapshot().trust:
            assert time.monotonic() < deadline, "the router never folded the outcomes"
            await asyncio.sleep(0.05)
    finally:
        log = stop_process(faust_worker)
        worker.request_stop()
        await runner

    outcomes = {o.signal_id: o for o in (parse_outcome(r.value, record_ts_ms=0) for r in records)}
    assert [r.key for r in records] == [b"slack"] * 10
    assert {i for i, o in outcomes.items() if not o.ok} == {"f-0", "f-3", "f-6", "f-9"}, log
    assert all(o.destination == "slack" and o.decision_id and o.latency_ms is not None
               for o in outcomes.values())
    assert all(b"__faust" not in r.value and b"null" not in r.value for r in records)
