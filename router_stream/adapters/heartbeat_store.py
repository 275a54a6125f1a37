"""Where worker heartbeats are kept: ``worker_heartbeats`` in Postgres, or ``router.workers`` on
Kafka when the deployment runs without Postgres (``ROUTER_PERSIST=false``).

Both stores take a :class:`~router_stream.core.heartbeat.WorkerHeartbeat` and give back the
latest one per worker, with ``last_seen`` on the store's clock (the database's ``now()``, or the
broker's append time), so staleness never depends on the clocks of the workers' hosts.

* **Postgres** — one row per worker, upserted on ``worker_id``; a beat older than the stored one
  of the same process is ignored (``beats`` numbers them). Rows last seen more than
  :data:`PRUNE_AFTER` ago are deleted when a worker starts.
* **Kafka** — ``router.workers`` is compacted and keyed by ``worker_id``, so it keeps the latest
  beat per worker (Kafka Connect keeps its status topic the same way); ``delete`` retention of 7
  days removes workers that are long gone. The worker sends with the producer it already has.

Errors are translated here: a lost database is ``DatabaseUnavailable``, a lost broker
``BrokerUnavailable`` (both retriable), a database without the table a ``UserError`` naming
``db migrate``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Protocol

import asyncpg
import orjson
from confluent_kafka import KafkaException

from router_stream.adapters import postgres as pg
from router_stream.adapters.kafka_io import read_records
from router_stream.adapters.rdkafka import RecordSender
from router_stream.config import WORKERS, Settings
from router_stream.core.heartbeat import WorkerHeartbeat, with_clock
from router_stream.errors import BrokerUnavailable, UserError

__all__ = ["HeartbeatStore", "KafkaHeartbeats", "PostgresHeartbeats", "not_migrated_as_user_error",
           "read_kafka_heartbeats", "read_postgres_heartbeats"]

log = logging.getLogger("router_stream.heartbeats")

PRUNE_AFTER = "7 days"
"""Same as router.workers' retention (topics/topics.yaml)."""


class HeartbeatStore(Protocol):
    async def write(self, hb: WorkerHeartbeat) -> None: ...


# --- Postgres ----------------------------------------------------------------------------------

_UPSERT = """
INSERT INTO worker_heartbeats (
    worker_id, group_id, host, pid, partitions, policy_version, candidate_version, rollout_mode,
    rollout_share, status, signals_processed, beats, interval_s, software_version, started_at,
    last_seen, topic_prefix)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, to_timestamp($15), now(),
        $16)
ON CONFLICT (worker_id) DO UPDATE SET
    group_id = EXCLUDED.group_id, host = EXCLUDED.host, pid = EXCLUDED.pid,
    partitions = EXCLUDED.partitions, policy_version = EXCLUDED.policy_version,
    candidate_version = EXCLUDED.candidate_version, rollout_mode = EXCLUDED.rollout_mode,
    rollout_share = EXCLUDED.rollout_share, status = EXCLUDED.status,
    signals_processed = EXCLUDED.signals_processed, beats = EXCLUDED.beats,
    interval_s = EXCLUDED.interval_s, software_version = EXCLUDED.software_version,
    started_at = EXCLUDED.started_at, last_seen = EXCLUDED.last_seen,
    topic_prefix = EXCLUDED.topic_prefix
WHERE worker_heartbeats.started_at <> EXCLUDED.started_at
   OR worker_heartbeats.beats < EXCLUDED.beats
"""

_SELECT = """
SELECT worker_id, group_id, host, pid, partitions, policy_version, candidate_version,
       rollout_mode, rollout_share, status, signals_processed, beats, interval_s,
       software_version, topic_prefix, extract(epoch FROM started_at)::float8 AS started_at,
       extract(epoch FROM last_seen)::float8 AS last_seen
FROM worker_heartbeats
"""


class PostgresHeartbeats:
    """Upserts into ``worker_heartbeats`` through the worker's pool."""

    def __init__(self, pool: asyncpg.Pool, *, acquire_timeout_s: float = 5.0) -> None:
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s
        self._pruned = False

    async def write(self, hb: WorkerHeartbeat) -> None:
        with pg.unavailable_as_router_error("recording the heartbeat"), \
                not_migrated_as_user_error():
            async with self._pool.acquire(timeout=self._acquire_timeout_s) as conn:
                await conn.execute(
                    _UPSERT, hb.worker_id, hb.group_id, hb.host, hb.pid,
                    [[t, p] for t, p in hb.partitions], hb.policy_version,
                    hb.candidate_version, hb.rollout_mode, hb.rollout_share, hb.status,
                    hb.signals_processed, hb.beats, hb.interval_s, hb.software_version,
                    hb.started_at, hb.topic_prefix)
                if not self._pruned:
                    await conn.execute("DELETE FROM worker_heartbeats"
                                       f" WHERE last_seen < now() - interval '{PRUNE_AFTER}'")
                    self._pruned = True


async def read_postgres_heartbeats(conn: asyncpg.Connection, topic_prefix: str | None = None
                                   ) -> tuple[list[WorkerHeartbeat], float]:
    """Every row (only those of workers routing under ``topic_prefix`` when given: deployments
    sharing a database are told apart), and the database's clock to judge them by."""
    with pg.unavailable_as_router_error("reading worker_heartbeats"), \
            not_migrated_as_user_error():
        if topic_prefix is None:
            rows = await conn.fetch(_SELECT)
        else:
            rows = await conn.fetch(_SELECT + " WHERE topic_prefix = $1", topic_prefix)
        now = await conn.fetchval("SELECT extract(epoch FROM now())::float8")
    return [_from_row(r) for r in rows], float(now)


def _from_row(row: asyncpg.Record) -> WorkerHeartbeat:
    return WorkerHeartbeat.from_json(dict(row))


@contextlib.contextmanager
def not_migrated_as_user_error() -> Iterator[None]:
    """A table that does not exist means the migrations were not applied: exit code 1 with the
    command that fixes it, not a traceback."""
    try:
        yield
    except asyncpg.exceptions.UndefinedTableError as exc:
        raise UserError(f"the database is not migrated ({exc}): run "
                        "`router-stream db migrate`") from exc


# --- Kafka -------------------------------------------------------------------------------------


class KafkaHeartbeats:
    """Sends beats to ``router.workers`` (key: worker id) with the worker's own producer, which
    may be renewed while the worker runs, hence a callable."""

    def __init__(self, settings: Settings, producer: Callable[[], RecordSender | None]) -> None:
        self._topic = settings.topic(WORKERS)
        self._producer = producer

    async def write(self, hb: WorkerHeartbeat) -> None:
        producer = self._producer()
        if producer is None:
            raise BrokerUnavailable("recording the heartbeat: the worker has no producer")
        try:
            await producer.send(self._topic, orjson.dumps(hb.as_json()), hb.worker_id.encode())
        except KafkaException as exc:
            raise BrokerUnavailable(f"recording the heartbeat on {self._topic}: {exc!r}") from exc


async def read_kafka_heartbeats(settings: Settings) -> list[WorkerHeartbeat]:
    """The latest beat per worker in ``router.workers`` (read up to its current end), with
    ``last_seen`` from the record timestamp (the broker's LogAppendTime)."""
    latest: dict[bytes, WorkerHeartbeat | None] = {}
    async for record in read_records(settings, settings.topic(WORKERS), until_end=True):
        if record.key is None:
            continue
        if record.value is None:  # a tombstone: the worker was removed
            latest[record.key] = None
            continue
        try:
            hb = WorkerHeartbeat.from_json(orjson.loads(record.value))
        except (ValueError, orjson.JSONDecodeError) as exc:
            log.warning("not a heartbeat, ignored", extra={
                "topic": record.topic, "offset": record.offset, "error": str(exc)})
            continue
        latest[record.key] = with_clock(hb, record.timestamp / 1000.0)
    return [hb for hb in latest.values() if hb is not None]
