"""faust on the chosen Kafka version: a Table recovers its state exactly from its changelog."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.support.processes import stop_process

pytestmark = pytest.mark.integration

APP = Path(__file__).parent / "apps" / "counter_app.py"


def _log(workdir: Path, proc_output: str) -> str:
    """What the worker printed and the tail of its log file, for an assertion message."""
    log = workdir / "faust.log"
    tail = log.read_text(errors="replace")[-6000:] if log.exists() else "(no log file)"
    return f"{proc_output}\n--- faust.log ---\n{tail}"


def _start_worker(env: dict[str, str], workdir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        # info-level log in a file: a failure shows faust's rebalances and commits
        [sys.executable, str(APP), "worker", "--without-web", "-l", "info",
         "--logfile", str(workdir / "faust.log")],
        env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def _read_counts(
    bootstrap: str, topic: str, want: int, worker: subprocess.Popen[bytes], timeout: float = 90.0
) -> list[tuple[str, int]]:
    """Read (key, count) records until ``want`` arrived, the worker died, or the time is up."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[tuple[str, int]] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < want and asyncio.get_running_loop().time() < deadline:
            if worker.poll() is not None:
                break
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                out.extend((r.key.decode(), int(r.value)) for r in records)
    finally:
        await consumer.stop()
    return out


async def _produce(bootstrap: str, topic: str, keys: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for k in keys:
            await producer.send(topic, key=k.encode(), value=b'"x"')
    finally:
        await producer.stop()


async def _wait_ready(
    workdir: Path, worker: subprocess.Popen[bytes], timeout: float = 90.0
) -> None:
    """Wait until the app says its table recovery finished (see counter_app.announce_ready)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (workdir / "ready").exists():
        if worker.poll() is not None or asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"faust worker not ready: {_log(workdir, stop_process(worker))}")
        await asyncio.sleep(0.1)


async def test_table_recovers_from_changelog_after_restart(
    servers, topic_factory, test_id, tmp_path
):
    src = await topic_factory("counter-in")
    out = await topic_factory("counter-out")
    env = os.environ | {
        "COUNTER_APP_ID": f"t{test_id}.counter",  # under the prefix topic_factory deletes
        "COUNTER_BOOTSTRAP": servers.kafka_bootstrap,
        "COUNTER_IN": src,
        "COUNTER_OUT": out,
    }
    keys = ["a"] * 10 + ["b"] * 7 + ["c"] * 3
    (tmp_path / "run1").mkdir()
    worker = _start_worker(env, tmp_path / "run1")
    try:
        await _wait_ready(tmp_path / "run1", worker)
        await _produce(servers.kafka_bootstrap, src, keys)
        first = await _read_counts(servers.kafka_bootstrap, out, len(keys), worker)
    finally:
        log1 = _log(tmp_path / "run1", stop_process(worker))
    assert len(first) == len(keys), log1
    assert {k: max(v for kk, v in first if kk == k) for k in "abc"} == {"a": 10, "b": 7, "c": 3}

    # A fresh process and an empty working directory: the table can only come from the changelog.
    (tmp_path / "run2").mkdir()
    worker = _start_worker(env, tmp_path / "run2")
    try:
        await _wait_ready(tmp_path / "run2", worker)
        await _produce(servers.kafka_bootstrap, src, ["a", "b", "c", "d"])
        both = await _read_counts(servers.kafka_bootstrap, out, len(keys) + 4, worker)
    finally:
        log2 = _log(tmp_path / "run2", stop_process(worker))
    assert len(both) == len(keys) + 4, log2
    assert dict(both[len(keys):]) == {"a": 11, "b": 8, "c": 4, "d": 1}
