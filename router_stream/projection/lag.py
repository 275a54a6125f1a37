"""How far ``router-stream persist`` is behind a topic: what operators reading Postgres
(``dlq list|show|replay``) are told when the table does not show everything yet."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

from router_stream.adapters.kafka_failures import RdkafkaLog
from router_stream.adapters.kafka_io import read_at
from router_stream.adapters.rdkafka import ClientThread, client_config, connect
from router_stream.config import Settings
from router_stream.errors import RouterError


@dataclass(frozen=True)
class ProjectionLag:
    records: int  # on the topic, not yet written (committed) by the projection group
    seconds: float | None  # age of the oldest of them, when it could be read

    def describe(self, topic: str) -> str:
        age = "" if self.seconds is None else f", the oldest {self.seconds:.0f}s old"
        return (f"the Postgres projection is {self.records} record(s) behind {topic}{age}: "
                "newer entries are not in the table yet (is `router-stream persist` running?)")


async def projection_lag(settings: Settings, topic: str,
                         timeout_s: float = 5.0) -> ProjectionLag | None:
    """The projection group's lag on ``topic``; None when it is caught up or cannot be asked
    (the broker unreachable, no such topic) — a hint, never an error."""
    with contextlib.suppress(KafkaException, RouterError, OSError, TimeoutError):
        async with asyncio.timeout(timeout_s):
            behind = await _behind(settings, topic)
            if not behind:
                return None
            seconds = None
            first = [(p, committed) for p, (committed, _) in behind.items()]
            found = await read_at(settings, topic, first, timeout_s=timeout_s)
            if found:
                oldest = min(r.timestamp for r in found.values()) / 1000.0
                seconds = max(0.0, time.time() - oldest)
            return ProjectionLag(sum(end - off for off, end in behind.values()), seconds)
    return None


async def _behind(settings: Settings, topic: str) -> dict[int, tuple[int, int]]:
    """partition -> (the group's committed offset, the end offset), where it lags. The
    consumer carries the projection's group id only to ask for its offsets: it never joins."""
    log = RdkafkaLog()
    consumer = Consumer(client_config(settings, log, **{
        "group.id": settings.projection_group_id, "enable.auto.commit": False}))
    thread = ClientThread("projection-lag")
    try:
        metadata = await connect(thread, consumer, log, settings)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            return {}  # a hint: not worth waiting for a topic to appear (cluster_with waits 5 s)
        tps = [TopicPartition(topic, p) for p in sorted(metadata.topics[topic].partitions)]
        committed = {tp.partition: tp.offset
                     for tp in await thread.run(consumer.committed, tps, 10.0)}
        behind: dict[int, tuple[int, int]] = {}
        for tp in tps:
            start, end = await thread.run(consumer.get_watermark_offsets, tp, 10.0)
            at = max(committed.get(tp.partition, 0), start)  # none committed: a negative offset
            if at < end:
                behind[tp.partition] = (at, end)
        return behind
    finally:
        await asyncio.shield(thread.run(consumer.close))
        thread.close()
