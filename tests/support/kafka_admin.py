"""An admin client for tests that check the broker independently of the product's adapters:
confluent-kafka's AdminClient, its futures awaited (every call bounded by its timeout)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec, ResourceType

TIMEOUT_S = 30.0


async def _all(futures: dict[Any, concurrent.futures.Future[Any]]) -> dict[Any, Any]:
    keys = list(futures)
    done = await asyncio.gather(*(asyncio.wrap_future(futures[k]) for k in keys))
    return dict(zip(keys, done, strict=True))


class Admin:
    def __init__(self, bootstrap: str) -> None:
        self._client = AdminClient({"bootstrap.servers": bootstrap})

    async def list_topics(self) -> set[str]:
        meta = await asyncio.to_thread(self._client.list_topics, None, TIMEOUT_S)
        return set(meta.topics)

    async def create_topics(self, topics: list[NewTopic]) -> None:
        await _all(self._client.create_topics(topics, request_timeout=TIMEOUT_S))

    async def delete_topics(self, names: list[str], *, wait_s: float = 15.0) -> None:
        """Delete and wait until the metadata no longer lists them."""
        await _all(self._client.delete_topics(names, request_timeout=TIMEOUT_S))
        deadline = time.monotonic() + wait_s
        while set(names) & await self.list_topics():
            assert time.monotonic() < deadline, f"{names} still listed"
            await asyncio.sleep(0.1)

    async def describe(self, name: str) -> dict[str, Any]:
        """Partition count, replica count and every config value of topic ``name``."""
        meta = await asyncio.to_thread(self._client.list_topics, name, TIMEOUT_S)
        partitions = meta.topics[name].partitions
        [entries] = (await _all(self._client.describe_configs(
            [ConfigResource(ResourceType.TOPIC, name)], request_timeout=TIMEOUT_S))).values()
        return {"partitions": len(partitions), "replicas": len(partitions[0].replicas),
                **{k: e.value for k, e in entries.items()}}

    async def alter_configs(self, topic: str, configs: dict[str, str]) -> None:
        """Set the topic's configs to ``configs`` (what is not named returns to its default)."""
        await _all(self._client.alter_configs(
            [ConfigResource(ResourceType.TOPIC, topic, set_config=configs)],
            request_timeout=TIMEOUT_S))

    async def committed_to_end(self, group: str, topic: str) -> bool:
        """The group's committed offset is the end offset of every partition of ``topic``."""
        meta = await asyncio.to_thread(self._client.list_topics, topic, TIMEOUT_S)
        tps = [TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions)]
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        ends = await _all(self._client.list_offsets({tp: latest for tp in tps},
                                                    request_timeout=TIMEOUT_S))
        committed = [await self.committed(group, topic, tp.partition) or 0 for tp in tps]
        return committed == [ends[tp].offset for tp in tps]

    async def brokers(self) -> int:
        cluster = await asyncio.wrap_future(
            self._client.describe_cluster(request_timeout=TIMEOUT_S))
        return len(cluster.nodes)

    async def delete_records(self, topic: str, partition: int, before: int) -> None:
        """What retention does to old records: the partition then starts at ``before``."""
        await _all(self._client.delete_records([TopicPartition(topic, partition, before)],
                                               request_timeout=TIMEOUT_S))

    async def committed(self, group: str, topic: str, partition: int) -> int | None:
        """The group's committed offset of one partition, None when it has none."""
        [answer] = (await _all(self._client.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, partition)])],
            request_timeout=TIMEOUT_S))).values()
        [tp] = answer.topic_partitions
        return tp.offset if tp.offset >= 0 else None
