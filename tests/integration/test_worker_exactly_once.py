"""``ROUTER_PROCESSING_GUARANTEE=exactly_once`` on the real broker: a worker SIGKILLed between a
batch's produce and its commit, and a zombie fenced by a newer holder of its transactional.id,
leave every signal exactly once on routed, decision and DLQ topics for a read_committed
consumer. Each test also reads read_uncommitted and finds the aborted copies there, so the
exactly-once result is not an accident of nothing having been written twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from router_stream.config import DECISIONS, DLQ, SIGNALS, Settings
from router_stream.errors import ProducerFenced
from router_stream.worker.transactional import transactional_id
from tests.support.worker import (
    DESTINATIONS,
    mixed_signals,
    prepare,
    produce,
    read_all,
    start_worker_killed_at,
    wait_exit,
    worker,
)

pytestmark = pytest.mark.integration


async def eos_settings(settings: Settings, tmp_path: Path, worker_id: str) -> Settings:
    s = await prepare(settings, tmp_path)
    return s.model_copy(update={"processing_guarantee": "exactly_once", "batch_max": 100,
                                "worker_id": worker_id, "worker_persist": False,
                                "persist": False, "checkpoint_interval_s": 0})


async def outputs(s: Settings, isolation: str = "read_committed") -> tuple[Counter[tuple[int, int]],
                                                                         Counter[str]]:
    """How often each input (partition, offset) has a decision or a DLQ record, and how often
    each signal id was routed, as a consumer with ``isolation`` sees the topics."""
    per_input: Counter[tuple[int, int]] = Counter()
    for rec in await read_all(s, s.topic(DECISIONS), isolation):
        body = orjson.loads(rec.value)
        per_input[(body["input_partition"], body["input_offset"])] += 1
    for rec in await read_all(s, s.topic(DLQ), isolation):
        h = dict(rec.headers)
        per_input[(int(h["x-dlq-original-partition"]), int(h["x-dlq-original-offset"]))] += 1
    routed: Counter[str] = Counter()
    for dest in DESTINATIONS:
        for rec in await read_all(s, s.routed_topic(dest), isolation):
            routed[f"{dest}/{orjson.loads(rec.value)['signal_id']}"] += 1
    return per_input, routed


def assert_exactly_once(per_input: Counter[tuple[int, int]], routed: Counter[str],
                        coords: list[tuple[int, int]]) -> None:
    assert set(per_input) == set(coords), "an input without a decision or DLQ record"
    assert max(per_input.values()) == 1, per_input.most_common(3)
    assert routed and max(routed.values()) == 1, routed.most_common(3)


def inputs(n: int) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v, _ in mixed_signals(n)]


async def test_sigkill_between_produce_and_commit_leaves_every_signal_exactly_once(
        settings, tmp_path):
    s = await eos_settings(settings, tmp_path, "eos-a")
    coords = await produce(s, SIGNALS, inputs(1000))
    log = tmp_path / "worker.log"

    killed = start_worker_killed_at(s, log, "produced", 4)  # 3 batches committed, the 4th open
    assert await wait_exit(killed, 120, log) == -9, log.read_text()[-3000:]
    # the same instance restarts: init_transactions aborts the transaction the kill left open
    await worker(s, http=False).run_until_idle(1.0)

    per_input, routed = await outputs(s)
    assert_exactly_once(per_input, routed, coords)
    seen_all, _ = await outputs(s, "read_uncommitted")
    assert sum(seen_all.values()) > sum(per_input.values()), "the killed batch left no copies"


async def test_a_zombie_fenced_by_a_newer_instance_never_becomes_visible(settings, tmp_path):
    s = await eos_settings(settings, tmp_path, "eos-zombie")
    coords = await produce(s, SIGNALS, inputs(500))

    async def newer_instance_takes_over(step: str, result: object) -> None:
        if step == "produced":  # the batch is written, its transaction still open
            newer = Producer({"bootstrap.servers": s.kafka_bootstrap,
                              "transactional.id": transactional_id(s)})
            await asyncio.to_thread(newer.init_transactions, 30)

    zombie = worker(s, http=False, on_step=newer_instance_takes_over)
    with pytest.raises(ProducerFenced, match="transactional.id"):
        await zombie.run_until_idle(1.0)
    per_input, routed = await outputs(s)
    assert not per_input and not routed  # nothing of the zombie's is visible
    seen_all, _ = await outputs(s, "read_uncommitted")
    assert seen_all  # ... though its batch was written

    await worker(s.model_copy(update={"worker_id": "eos-b"}), http=False).run_until_idle(1.0)
    per_input, routed = await outputs(s)
    assert_exactly_once(per_input, routed, coords)


async def test_only_transaction_markers_past_a_committed_offset_count_as_caught_up(
        settings, topic_factory, test_id):
    from router_stream.adapters.rdkafka import only_markers_between

    topic = await topic_factory("txn-out")

    def write_one_transaction() -> None:
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap,
                             "transactional.id": f"tx-{test_id}"})
        producer.init_transactions(30)
        producer.begin_transaction()
        for i in range(5):
            producer.produce(topic, f"r{i}".encode())
        producer.commit_transaction(30)  # records at offsets 0-4, the commit marker at 5

    await asyncio.to_thread(write_one_transaction)
    assert await asyncio.to_thread(only_markers_between, settings, {(topic, 0): (5, 6)})
    assert not await asyncio.to_thread(only_markers_between, settings, {(topic, 0): (4, 6)})
