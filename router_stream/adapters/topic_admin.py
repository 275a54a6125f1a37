"""The admin seam of :mod:`router_stream.adapters.topics`: an AdminClient (confluent-kafka,
librdkafka) that reached a broker, what it tells of topics, and creating them.

Its errors leave as the project's: :class:`~router_stream.errors.BrokerUnavailable` /
``OperationTimeout`` (``raise ... from exc``), :class:`TopicCreationFailed` for a topic the
broker refuses to create.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

# confluent_kafka.admin re-exports these without an __all__, which mypy --strict does not follow
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.admin._metadata import ClusterMetadata
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from router_stream.adapters.kafka_failures import RdkafkaLog, rdkafka_error
from router_stream.adapters.rdkafka import ClientThread, client_config, connect
from router_stream.config import Settings
from router_stream.errors import OperationTimeout, RouterError

if TYPE_CHECKING:
    from router_stream.adapters.topics import TopicSpec

__all__ = ["ObservedTopic", "TopicAdmin", "TopicCreationFailed", "alter_configs", "connected_admin",
           "create_topics", "delete_topics", "describe", "wait_until_ready", "wait_until_serving"]

_END: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
# the broker's answers that mean "not this topic" (a TopicCreationFailed), not "not now"
_REFUSALS = {"INVALID_CONFIG", "POLICY_VIOLATION", "INVALID_PARTITIONS",
             "INVALID_REPLICATION_FACTOR", "INVALID_REPLICA_ASSIGNMENT", "INVALID_TOPIC_EXCEPTION",
             "INVALID_REQUEST", "TOPIC_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED"}


class TopicCreationFailed(RouterError):
    """The broker refused to create a topic (invalid config, policy violation, ...)."""


@dataclass
class TopicAdmin:
    """An AdminClient that reached a broker, the thread of its blocking calls, and the bound
    of every request."""

    client: AdminClient
    thread: ClientThread
    settings: Settings
    timeout: float

    async def metadata(self) -> ClusterMetadata:
        """Every topic and broker (a full metadata request: it creates nothing)."""
        try:
            return await self.thread.run(self.client.list_topics, None, self.timeout)
        except KafkaException as exc:
            raise rdkafka_error(self.settings, "cannot read cluster metadata", exc) from exc

    async def result(self, what: str, future: concurrent.futures.Future[Any]) -> Any:
        """The result of an admin request's future, its error translated."""
        try:
            return await self._answer(what, future)
        except KafkaException as exc:
            raise rdkafka_error(self.settings, what, exc) from exc

    async def refusal(self, what: str, future: concurrent.futures.Future[Any]
                      ) -> KafkaException | None:
        """None once an admin request's future succeeded, else the broker's answer for the
        caller to judge (per topic: some refusals are not errors)."""
        try:
            await self._answer(what, future)
        except KafkaException as exc:
            return exc
        return None

    async def _answer(self, what: str, future: concurrent.futures.Future[Any]) -> Any:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError as exc:
            raise OperationTimeout(f"{what}: Kafka at {self.settings.kafka_bootstrap} did not"
                                   f" answer within {self.timeout:.0f}s") from exc


@contextlib.asynccontextmanager
async def connected_admin(settings: Settings, timeout: float) -> AsyncIterator[TopicAdmin]:
    """An admin client that reached a broker; its errors leave as the project's errors."""
    log = RdkafkaLog()
    client = AdminClient(client_config(settings, log,
                                       **{"socket.timeout.ms": int(timeout * 1000)}))
    thread = ClientThread("topics-admin")
    try:
        await connect(thread, client, log, settings, timeout_s=timeout)
        yield TopicAdmin(client, thread, settings, timeout)
    finally:
        thread.close()


@dataclass(frozen=True)
class ObservedTopic:
    """A topic as the cluster has it: what its declaration is compared with."""

    partitions: int
    replication_factor: int
    leaders_ready: bool
    configs: Mapping[str, str]


async def describe(admin: TopicAdmin, names: Sequence[str]) -> dict[str, ObservedTopic]:
    """What the cluster has for ``names``; absent names are missing topics.

    Shapes come from a metadata request for every topic: one naming a missing topic makes a
    broker with ``auto.create.topics.enable=true`` (Kafka's default) create it with default
    settings, which would turn "missing" into a wrong topic.
    """
    topics = (await admin.metadata()).topics
    shapes = {n: topics[n].partitions for n in names
              if n in topics and topics[n].error is None and topics[n].partitions}
    if not shapes:
        return {}
    resources = {n: ConfigResource(ResourceType.TOPIC, n) for n in shapes}
    futures = admin.client.describe_configs(list(resources.values()),
                                            request_timeout=admin.timeout)
    configs: dict[str, dict[str, str]] = {}
    for name, resource in resources.items():
        entries = await admin.result(f"cannot describe topic {name}", futures[resource])
        configs[name] = {k: e.value for k, e in entries.items() if e.value is not None}
    return {
        name: ObservedTopic(
            partitions=len(parts),
            replication_factor=min(len(p.replicas) for p in parts.values()),
            leaders_ready=all(p.leader >= 0 for p in parts.values()),
            configs=configs.get(name, {}),
        )
        for name, parts in shapes.items()
    }


async def alter_configs(admin: TopicAdmin, changes: Mapping[str, Mapping[str, str]]
                        ) -> dict[str, ObservedTopic]:
    """Set each topic's ``changes`` (config name -> value) and nothing else: an incremental
    alter, one SET per name, so configs not named keep their values. A refusal (an invalid
    value, no ALTER_CONFIGS permission) leaves as the project's error, naming the topic.

    The alter is acknowledged before the broker describes the new values (KRaft applies them
    from its metadata log): returns the topics as described once every change shows."""
    resources = [ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
        for key, value in configs.items()]) for name, configs in changes.items()]
    futures = admin.client.incremental_alter_configs(resources, request_timeout=admin.timeout)
    for resource, future in futures.items():
        await admin.result(f"cannot change the configs of topic {resource.name}", future)

    def in_effect(name: str, seen: ObservedTopic | None) -> bool:  # deleted: nothing to wait for
        return seen is None or all(seen.configs.get(k) == v for k, v in changes[name].items())

    return await _describe_until(admin, list(changes), in_effect, "changed configs not in effect")


async def wait_until_ready(admin: TopicAdmin, names: Sequence[str]) -> None:
    """Creation is acknowledged before every broker has the metadata: wait for leaders."""
    await _describe_until(admin, names, lambda _, seen: seen is not None and seen.leaders_ready,
                          "created topics have no partition leaders")


async def _describe_until(admin: TopicAdmin, names: Sequence[str],
                          settled: Callable[[str, ObservedTopic | None], bool], what: str
                          ) -> dict[str, ObservedTopic]:
    """Describe the topics not ``settled`` yet (None: the topic is missing) every 0.1 s until
    none is left, for at most the admin's timeout (then :class:`OperationTimeout`, ``what``
    and the topics left); returns each topic as last described (missing ones left out)."""
    deadline = asyncio.get_running_loop().time() + admin.timeout
    found: dict[str, ObservedTopic] = {}
    pending = list(names)
    while True:
        seen = await describe(admin, pending)
        for name in pending:
            if name in seen:
                found[name] = seen[name]
            else:
                found.pop(name, None)
        pending = [n for n in pending if not settled(n, seen.get(n))]
        if not pending:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise OperationTimeout(f"{what} after {admin.timeout:.0f}s: " + ", ".join(pending))
        await asyncio.sleep(0.1)


async def wait_until_serving(admin: TopicAdmin, partitions: Mapping[str, int]) -> None:
    """A leader in the metadata is not yet a leader that answers: for a moment after creation
    a broker refuses offset requests with NotLeaderForPartition, which a worker started right
    away (the demo, `topics apply && worker`) logs at ERROR before its client retries. Asking
    for the end offsets here, again until every partition answers, returns created topics
    serving."""
    deadline = asyncio.get_running_loop().time() + admin.timeout
    pending = [TopicPartition(name, p) for name, n in partitions.items() for p in range(n)]
    while pending:
        futures = admin.client.list_offsets({tp: _END for tp in pending},
                                            request_timeout=admin.timeout)
        answered = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures.values()),
                                        return_exceptions=True)
        pending = [tp for tp, a in zip(futures, answered, strict=True)
                   if isinstance(a, BaseException)]
        if not pending:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise OperationTimeout(f"created topics do not answer offset requests after"
                                   f" {admin.timeout:.0f}s: {answered[0]!r}")
        await asyncio.sleep(0.1)


async def create_topics(admin: TopicAdmin, specs: Mapping[str, TopicSpec]
                  ) -> tuple[list[str], list[str]]:
    """Create ``specs`` (physical name -> effective spec); returns (created, created_by_others)."""
    new = [
        NewTopic(name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                 config=dict(s.configs))
        for name, s in specs.items()
    ]
    futures = admin.client.create_topics(new, operation_timeout=admin.timeout,
                                         request_timeout=admin.timeout)
    created, raced, failed = [], [], []
    for name, future in futures.items():
        exc = await admin.refusal(f"creating {name}", future)
        if exc is None:
            created.append(name)
            continue
        err = exc.args[0]
        if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:  # another `apply` created it
            raced.append(name)
        elif err.name() in _REFUSALS:
            failed.append(f"{name}: {err.str()}")
        else:
            raise rdkafka_error(admin.settings, f"cannot create {name}", exc) from exc
    if failed:
        raise TopicCreationFailed("the broker refused to create topics:\n  " + "\n  ".join(failed))
    return sorted(created), sorted(raced)


async def delete_topics(admin: TopicAdmin, names: Sequence[str]) -> list[str]:
    """Delete ``names``; returns those deleted here (a topic already gone is not an error)."""
    if not names:
        return []
    futures = admin.client.delete_topics(list(names), operation_timeout=admin.timeout,
                                         request_timeout=admin.timeout)
    deleted = []
    for name, future in futures.items():
        exc = await admin.refusal(f"deleting {name}", future)
        if exc is None:
            deleted.append(name)
        elif exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise rdkafka_error(admin.settings, f"cannot delete {name}", exc) from exc
    return sorted(deleted)
