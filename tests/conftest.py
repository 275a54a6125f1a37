"""Shared fixtures: one real Kafka broker and one real PostgreSQL server per test session.

Where they come from, in order:
1. ``ROUTER_KAFKA_BOOTSTRAP`` and ``ROUTER_DATABASE_URL`` from the environment (CI, a dev stack);
2. testcontainers, if a Docker engine answers;
3. ``router-stream stack up`` (local processes from Maven Central's Kafka and Debian's PostgreSQL),
   stopped again at the end of the session if this session started it.

Isolation: every test gets its own topic prefix, consumer group and database, so tests never see
each other's data even though they share the servers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest

from router_stream.config import Settings

pytest_plugins = ["tests.support.projection", "tests.support.database"]


@dataclass(frozen=True)
class Servers:
    kafka_bootstrap: str
    database_url: str  # a URL of an existing database; tests create their own next to it
    origin: str


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _from_testcontainers(stack: list[object]) -> Servers:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    kafka_c = KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft()
    pg_c = PostgresContainer("postgres:15", driver=None)
    kafka_c.start()
    stack.append(kafka_c)
    pg_c.start()
    stack.append(pg_c)
    return Servers(kafka_c.get_bootstrap_server(), pg_c.get_connection_url(), "testcontainers")


class _Discard:
    """A stream that drops what it is given: the formatter runs, nothing is printed."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@pytest.fixture(scope="session", autouse=True)
def _format_every_log_line() -> Iterator[None]:
    """Create and format every router_stream log record at DEBUG during the tests.

    A log call with a reserved ``extra`` key (``message``) raises only when its level is
    enabled; tests running at the default WARNING hid such a crash in the worker once.
    """
    import logging

    from router_stream.worker.logs import JsonFormatter

    logger = logging.getLogger("router_stream")
    handler = logging.StreamHandler(_Discard())  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield
    logger.removeHandler(handler)
    logger.setLevel(previous)


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    env_kafka = os.environ.get("ROUTER_KAFKA_BOOTSTRAP")
    env_db = os.environ.get("ROUTER_DATABASE_URL")
    if env_kafka and env_db:
        yield Servers(env_kafka, env_db, "environment")
        return
    if _docker_engine_answers():
        containers: list[object] = []
        try:
            yield _from_testcontainers(containers)
        finally:
            for c in reversed(containers):
                c.stop()  # type: ignore[attr-defined]
        return
    from router_stream.stack import kafka as stack_kafka
    from router_stream.stack import manager, postgres

    cfg = manager.make_config()
    already = (
        stack_kafka.is_running(cfg.kafka) is not None
        and postgres.is_running(cfg.postgres) is not None
    )
    manager.up(cfg)
    try:
        yield Servers(cfg.kafka.bootstrap, cfg.postgres.url, "stack")
    finally:
        if not already:
            manager.down(cfg)


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def _admin_sql(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_with_database(url, "postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def test_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def database_url(servers: Servers, test_id: str) -> Iterator[str]:
    """A fresh, empty database for this test, dropped afterwards."""
    name = f"t_{test_id}"
    asyncio.run(_admin_sql(servers.database_url, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(servers.database_url, name)
    finally:
        asyncio.run(_admin_sql(servers.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def delete_topics_with_prefix(bootstrap: str, prefix: str) -> None:
    """Delete every topic whose name starts with ``prefix``.

    Tests must not leave their topics behind: a development broker that ran the suite a few
    dozen times held ~20k partitions, ran its 512 MiB heap out of memory and then could not
    start again (one file descriptor per partition directory, over the 20k limit)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    listed = await asyncio.to_thread(admin.list_topics, None, 30.0)
    doomed = [t for t in listed.topics if t.startswith(prefix)]
    if doomed:
        futures = admin.delete_topics(doomed, operation_timeout=30.0, request_timeout=30.0)
        for outcome in await asyncio.gather(*(asyncio.wrap_future(f) for f in futures.values()),
                                            return_exceptions=True):
            if isinstance(outcome, BaseException) and not _already_gone(outcome):
                raise outcome


def _already_gone(exc: BaseException) -> bool:
    """A topic listed a moment ago that the broker no longer knows: deleted already."""
    from confluent_kafka import KafkaError, KafkaException

    return (isinstance(exc, KafkaException) and bool(exc.args)
            and isinstance(exc.args[0], KafkaError)
            and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART)


@pytest.fixture
def settings(servers: Servers, database_url: str, test_id: str) -> Iterator[Settings]:
    """Settings for this test: own topic prefix, consumer group and database; the topics under
    the prefix are deleted afterwards. Workers run the projection in-process."""
    prefix = f"t{test_id}."
    yield Settings(
        kafka_bootstrap=servers.kafka_bootstrap,
        database_url=database_url,  # type: ignore[arg-type]
        topic_prefix=prefix,
        group_id=f"g-{test_id}",
        http_port=0,
        projection_http_port=0,
        # Every worker a test runs also runs the Postgres projection (`worker --persist`), and
        # its burst mode exits only once the projection caught up: rows are there to check.
        worker_persist=True,
    )
    asyncio.run(delete_topics_with_prefix(servers.kafka_bootstrap, prefix))


async def create_topics(bootstrap: str, names: list[str], partitions: int = 1) -> None:
    """Create topics explicitly (the broker's auto-create is off, as in production)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
        request_timeout=30.0)
    await asyncio.gather(*(asyncio.wrap_future(f) for f in futures.values()))


@pytest.fixture
async def topic_factory(servers: Servers, test_id: str) -> AsyncIterator[object]:
    """``await topic_factory("name", partitions=3)`` → a created, test-unique topic name."""

    async def make(name: str, partitions: int = 1) -> str:
        full = f"t{test_id}.{name}"
        await create_topics(servers.kafka_bootstrap, [full], partitions)
        return full

    yield make
    await delete_topics_with_prefix(servers.kafka_bootstrap, f"t{test_id}.")
