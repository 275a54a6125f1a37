"""The contenders: how each one gets its fresh topics (same partition counts for all), how it is
started as a subprocess, which topics carry its output, and how it is cleaned up.

    floor        nothing: the measurer reads signals (the harness's own latency)
    raw          bench/raw_passthrough.py          signals -> out (aiokafka)
    raw_ck       bench/raw_passthrough.py --client confluent   the same on librdkafka
    faust        bench/naive_faust_app.py worker   signals -> out
    router_pg    router-stream worker              signals -> routed.<d> / router.dlq, Postgres on
    router_nopg  router-stream worker              the same with Postgres persistence off
    router_eos   router-stream worker              (full runs, or --only) Postgres off,
                                                   ROUTER_PROCESSING_GUARANTEE=
                                                   exactly_once (measured by a read_committed
                                                   consumer: a batch counts once committed)

Every contender gets its own topic prefix ``bench-<run>.<key>.`` and consumer group; the input
topics have PARTITIONS partitions (the count topics/topics.yaml declares for ``signals``, which
the worker refuses to run below), and so have the output topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
POLICY_FILE = BENCH_DIR / "bench_policy.yaml"
PARTITIONS = 12
PERSIST_SETTING = "persist"  # the Settings field (ROUTER_PERSIST) router_nopg needs


# --- Kafka admin --------------------------------------------------------------------------------


async def create_topics(bootstrap: str, names: list[str], partitions: int = PARTITIONS) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        await _wait_for_leaders(admin, names, partitions)
    finally:
        await admin.close()


async def _wait_for_leaders(admin: Any, names: list[str], partitions: int,
                            timeout: float = 30.0) -> None:
    """Created is not ready: produce requests fail with NotLeaderForPartition until every
    partition has a leader."""
    loop = asyncio.get_running_loop()
    limit = loop.time() + timeout
    while True:
        described = await admin.describe_topics(names)
        ready = sum(1 for t in described if t["error_code"] == 0
                    and len(t["partitions"]) == partitions
                    and all(p["leader"] >= 0 for p in t["partitions"]))
        if ready == len(names) or loop.time() > limit:
            return
        await asyncio.sleep(0.2)


async def delete_topics_with_prefix(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (ours, faust's internal ones too)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        for i in range(0, len(names), 50):
            await admin.delete_topics(names[i:i + 50])
        return names
    finally:
        await admin.close()


# --- Postgres (router_pg gets a database of its own, dropped at the end) ------------------------


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


async def _admin_sql(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# --- contenders -------------------------------------------------------------------------------


@dataclass
class Contender:
    key: str
    label: str
    run_id: str
    bootstrap: str
    output_topics: list[str] = field(default_factory=list)
    workdir: str = ""

    @property
    def prefix(self) -> str:
        return f"bench-{self.run_id}.{self.key}."

    @property
    def signals_topic(self) -> str:
        return f"{self.prefix}signals"

    @property
    def health_topic(self) -> str:
        return f"{self.prefix}source-health"

    def blocked(self) -> str | None:
        """Why this contender cannot run with this checkout, or None."""
        return None

    async def prepare(self, database_url: str) -> None:
        self.workdir = tempfile.mkdtemp(prefix=f"bench-{self.run_id}-{self.key}-")
        self.output_topics = [f"{self.prefix}out"]
        await create_topics(self.bootstrap,
                            [self.signals_topic, self.health_topic, *self.output_topics])

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    async def cleanup(self, database_url: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(delete_topics_with_prefix(self.bootstrap, self.prefix), 60)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class HarnessFloor(Contender):
    """No contender at all: the measurer reads the signals topic. The latency the generator,
    the broker and the measuring consumer add by themselves, to read the others against."""

    async def prepare(self, database_url: str) -> None:
        self.workdir = tempfile.mkdtemp(prefix=f"bench-{self.run_id}-{self.key}-")
        await create_topics(self.bootstrap, [self.signals_topic, self.health_topic])
        self.output_topics = [self.signals_topic]

    def command(self) -> list[str]:
        return []


class RawPassthrough(Contender):
    def __init__(self, *args: Any, client: str = "aiokafka", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client = client

    def command(self) -> list[str]:
        return [sys.executable, str(BENCH_DIR / "raw_passthrough.py"), "--client", self.client,
                "--bootstrap", self.bootstrap, "--input", self.signals_topic, "--output",
                self.output_topics[0], "--group", f"bench-{self.run_id}-{self.key}"]


class NaiveFaust(Contender):
    def command(self) -> list[str]:
        return [sys.executable, str(BENCH_DIR / "naive_faust_app.py"), "worker", "--without-web",
                "-l", "warn"]

    def env(self) -> dict[str, str]:
        return {**super().env(), "BENCH_FAUST_APP_ID": f"{self.prefix}app",
                "BENCH_BOOTSTRAP": self.bootstrap, "BENCH_INPUT": self.signals_topic,
                "BENCH_OUTPUT": self.output_topics[0], "BENCH_PARTITIONS": str(PARTITIONS),
                "BENCH_DATADIR": self.workdir}


class RouterStream(Contender):
    """``router-stream worker`` with bench/bench_policy.yaml; with Postgres on, the projection
    (``router-stream persist``) runs as its own process beside it, as deployed."""

    def __init__(self, *args: Any, persist: bool, exactly_once: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.persist = persist
        self.exactly_once = exactly_once
        self.database = f"bench_{self.run_id}_{self.key}"
        self.database_url = ""

    def blocked(self) -> str | None:
        exe = _router_stream_exe()
        help_text = subprocess.run([exe, "worker", "--help"], capture_output=True, text=True,
                                   timeout=60, check=False)
        if help_text.returncode != 0:
            return "`router-stream worker` does not exist yet"
        if not self.persist:
            from router_stream.config import Settings

            if PERSIST_SETTING not in Settings.model_fields:
                return (f"the worker has no persistence-off switch yet: needs Settings."
                        f"{PERSIST_SETTING} (ROUTER_{PERSIST_SETTING.upper()}=false: no Postgres "
                        "pool, commit step 2 skipped, decisions/DLQ to Kafka only)")
        return None

    async def prepare(self, database_url: str) -> None:
        from router_stream.adapters.topics import apply_topics, policy_destinations
        from router_stream.config import Settings
        from router_stream.core.policy import load_policy

        self.workdir = tempfile.mkdtemp(prefix=f"bench-{self.run_id}-{self.key}-")
        settings = Settings(kafka_bootstrap=self.bootstrap, topic_prefix=self.prefix)
        await apply_topics(settings, policy_destinations(POLICY_FILE), timeout=60)
        policy = load_policy(POLICY_FILE.read_text(), str(POLICY_FILE))
        routed = sorted({d for r in policy.routes.values() for d in r.all_destinations()})
        self.output_topics = [settings.routed_topic(d) for d in routed]
        self.output_topics.append(settings.topic("router.dlq"))
        if self.persist:
            from router_stream.adapters.postgres import migrate_database

            await _admin_sql(database_url, f'CREATE DATABASE "{self.database}"')
            self.database_url = _with_database(database_url, self.database)
            await migrate_database(Settings(database_url=self.database_url))  # type: ignore[arg-type]
            from bench.row_visibility import install

            await install(self.database_url)

    def command(self) -> list[str]:
        worker = [_router_stream_exe(), "worker", "--policy", str(POLICY_FILE), "--http-port", "0"]
        if not self.persist:
            return worker
        # Same process group: the harness's SIGTERM stops both. The measured pid is the worker.
        persist = [_router_stream_exe(), "persist", "--policy", str(POLICY_FILE), "--http-port",
                   "0"]
        return ["/bin/sh", "-c", f"{shlex.join(persist)} & exec {shlex.join(worker)}"]

    def env(self) -> dict[str, str]:
        env = {**super().env(), "ROUTER_KAFKA_BOOTSTRAP": self.bootstrap,
               "ROUTER_TOPIC_PREFIX": self.prefix, "ROUTER_GROUP_ID": f"bench-{self.run_id}-"
               f"{self.key}", "ROUTER_LOG_LEVEL": "INFO"}
        if self.database_url:
            env["ROUTER_DATABASE_URL"] = self.database_url
        if not self.persist:
            env[f"ROUTER_{PERSIST_SETTING.upper()}"] = "false"
        if self.exactly_once:
            env["ROUTER_PROCESSING_GUARANTEE"] = "exactly_once"
        return env

    async def cleanup(self, database_url: str) -> None:
        await super().cleanup(database_url)
        if self.database_url:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_admin_sql(
                    database_url, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'), 30)


def _router_stream_exe() -> str:
    beside = Path(sys.executable).with_name("router-stream")
    return str(beside) if beside.exists() else (shutil.which("router-stream") or "router-stream")


def io_contenders(run_id: str, bootstrap: str) -> list[Contender]:
    return [
        HarnessFloor("floor", "harness floor (no contender)", run_id, bootstrap),
        RawPassthrough("raw", "raw aiokafka passthrough", run_id, bootstrap),
        RawPassthrough("raw_ck", "raw confluent-kafka (librdkafka) passthrough", run_id,
                       bootstrap, client="confluent"),
        NaiveFaust("faust", "naive faust agent", run_id, bootstrap),
        RouterStream("router_pg", "router-stream, Postgres on (projection as its own process)",
                     run_id, bootstrap, persist=True),
        RouterStream("router_nopg", "router-stream, Postgres off", run_id, bootstrap,
                     persist=False),
        RouterStream("router_eos", "router-stream, Postgres off, exactly_once", run_id,
                     bootstrap, persist=False, exactly_once=True),
    ]
