"""Checkpoints on the real broker: state outlives the retention of the state topics.

A worker folds health events, outcomes and operator commands and writes a checkpoint to
``router.state``; the state topics are then trimmed as retention would trim them
(``DeleteRecords`` up to their end). A new worker restores the checkpoint, replays only what came
after it, and holds exactly the state of the first worker plus that tail — where a replay of
the trimmed topics alone would start from nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from router_stream.adapters.checkpoint_store import StatePartition, load_checkpoints
from router_stream.config import CONTROL, OUTCOMES, SIGNALS, SOURCE_HEALTH
from router_stream.core.checkpoint import export_state, restore_state
from router_stream.core.models import Outcome
from router_stream.worker.policy_source import compile_policy_text
from tests.support.worker import POLICY_V2, fetch, prepare, produce, signal, wait_for, worker

pytestmark = pytest.mark.integration


def _now_ms(i: int = 0) -> int:
    return int(time.time() * 1000) + i


async def _ends(s, logical: list[str]) -> dict[StatePartition, int]:
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap,
                         "group.id": f"ends-{uuid.uuid4().hex}"})  # never joined

    def ends() -> dict[StatePartition, int]:
        listed = consumer.list_topics(None, 10.0).topics
        return {StatePartition(s.topic(n), p): consumer.get_watermark_offsets(
                    TopicPartition(s.topic(n), p), 10.0)[1]
                for n in logical for p in sorted(listed[s.topic(n)].partitions)}

    try:
        return await asyncio.to_thread(ends)
    finally:
        await asyncio.to_thread(consumer.close)


async def _trim(s, ends: dict[StatePartition, int]) -> None:
    """What retention does to old records: the log starts at ``ends`` from now on."""
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    futures = admin.delete_records([TopicPartition(*tp, off) for tp, off in ends.items() if off],
                                   request_timeout=10.0)
    await asyncio.gather(*(asyncio.wrap_future(f) for f in futures.values()))


def _shared(engine) -> bytes:
    return orjson.dumps(export_state(engine), option=orjson.OPT_SORT_KEYS)


async def test_state_outlives_the_state_topics_retention_through_a_checkpoint(settings, tmp_path):
    s = (await prepare(settings, tmp_path)).model_copy(update={"checkpoint_interval_s": 0.3})
    state_topics = [SOURCE_HEALTH, OUTCOMES, CONTROL]
    first = worker(s, http=False)
    await first.start()
    runner = asyncio.create_task(first.run())
    try:
        await produce(s, SOURCE_HEALTH, [(b"pager", orjson.dumps(
            {"source_id": "pager", "ok": False, "ts": _now_ms(i)})) for i in range(3)])
        await produce(s, OUTCOMES, [(d.encode(), orjson.dumps(
            {"signal_id": f"o-{i}", "destination": d, "ok": i % 3 != 0, "ts": _now_ms(i)}))
            for i, d in enumerate(["desk-a", "desk-b"] * 10)])
        await produce(s, CONTROL, [(None, orjson.dumps(c)) for c in [
            {"type": "override_set", "override_id": "drain-webhook", "action": "drain",
             "target": "webhook", "expires_at": time.time() + 3600},
            {"type": "policy_publish", "version": "v2", "policy_yaml": POLICY_V2,
             "issued_by": "test"},
        ]])
        ends = await _ends(s, state_topics)
        v2 = compile_policy_text(POLICY_V2).version
        await wait_for(lambda: first.engine.policy_version == v2
                       and first.follower.positions == ends, 10, "everything folded")
        await wait_for(lambda: first._checkpoints.last_offsets == ends, 10,
                       "a checkpoint of all of it")
    finally:
        first.request_stop()
        await runner
    before = _shared(first.engine)
    assert first.engine.snapshot().breakers["pager"] == "open"

    loaded = await load_checkpoints(s)
    assert loaded.latest is not None and loaded.latest.offsets == ends
    assert loaded.latest.policy.origin == "control"
    assert loaded.stale_keys == []  # superseded chunks were tombstoned

    await _trim(s, ends)
    tail = {"signal_id": "o-tail", "destination": "desk-a", "ok": False, "ts": _now_ms()}
    await produce(s, OUTCOMES, [(b"desk-a", orjson.dumps(tail))])

    second = worker(s, http=False)  # built from the policy file: v1
    await second.start()
    runner = asyncio.create_task(second.run())
    try:
        await wait_for(lambda: second.follower.applied >= 1, 10, "the tail folded")
        await produce(s, SIGNALS, [(b"k", signal(i, payload={"severity": "high"}))
                                   for i in range(10)])
        await wait_for(lambda: second.signals.processed >= 10, 20, "alerts")
    finally:
        second.request_stop()
        await runner

    assert second.follower.restored is not None
    assert second.follower.applied == 1  # only the record after the checkpoint was replayed
    expected = type(first.engine)(compile_policy_text(POLICY_V2))
    restore_state(expected, orjson.loads(before))
    t = Outcome.model_validate(tail)
    expected.apply_outcome(t, t.ts)
    assert _shared(second.engine) == _shared(expected)
    assert second.engine.policy_version == v2
    assert second.engine.snapshot().breakers["pager"] == "open"
    assert second.engine.state.arms["desk-a"].pulls == 11
    rows = await fetch(s, "SELECT policy_version, destinations FROM routing_decisions")
    assert {(r["policy_version"], tuple(r["destinations"])) for r in rows} == {(v2, ("email",))}


async def test_a_file_policy_in_the_checkpoint_means_the_file_as_it_is_now(settings, tmp_path):
    """A replay starts from the policy file as it is now; so does a restore when no
    policy_publish came after the file, even though the checkpoint holds the old text."""
    s = (await prepare(settings, tmp_path)).model_copy(update={"checkpoint_interval_s": 0.3})
    first = worker(s, http=False)
    await first.start()
    runner = asyncio.create_task(first.run())
    try:
        await produce(s, SOURCE_HEALTH, [(b"slack", orjson.dumps(
            {"source_id": "slack", "ok": False, "ts": _now_ms(i)})) for i in range(3)])
        ends = await _ends(s, [SOURCE_HEALTH, OUTCOMES, CONTROL])
        await wait_for(lambda: first.follower.positions == ends, 10, "folded")
        await wait_for(lambda: first._checkpoints.last_offsets == ends, 10, "a checkpoint")
    finally:
        first.request_stop()
        await runner
    loaded = await load_checkpoints(s)
    assert loaded.latest is not None and loaded.latest.policy.origin == "file"

    (tmp_path / "policy.yaml").write_text(POLICY_V2)  # the operator edits the file, restarts
    second = worker(s, http=False)
    await second.start()
    try:
        assert second.follower.restored is not None
        assert second.engine.policy_version == compile_policy_text(POLICY_V2).version
        assert second.engine.snapshot().breakers["slack"] == "open"
    finally:
        await second.stop()
