"""``ROUTER_STATIC_MEMBERSHIP=true`` on the real broker: a worker restarted under its worker_id
gets its partitions back without moving anyone else's, and a second live worker under the same
id fences the first, which stops with one line (exit code 2) instead of idling in the group.

Workers run as an operator runs them (``python -m router_stream.cli worker``), Kafka only (no
``--persist``): what is checked is the group's membership, from the workers' own log lines, and
that every signal produced after the restart is decided.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer

from router_stream.config import DECISIONS, Settings
from tests.support.processes import until

pytestmark = pytest.mark.integration

POLICY = """
name: static-membership-test
destinations:
  pager: {}
classify:
  - name: alerts
    when: {field: payload.severity, in: [critical]}
    kind: alert
routes:
  alert:
    strategy: first_healthy
    tiers: [[pager]]
defaults: {unclassified: dlq, unrouted: dlq}
"""


def environment(s: Settings, policy: Path) -> dict[str, str]:
    return os.environ | {
        "ROUTER_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "ROUTER_TOPIC_PREFIX": s.topic_prefix,
        "ROUTER_GROUP_ID": s.group_id,
        "ROUTER_POLICY_FILE": str(policy),
        "ROUTER_HTTP_PORT": "0",
        "ROUTER_WORKER_PERSIST": "false",
        "ROUTER_STATIC_MEMBERSHIP": "true",
    }


def cli(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "router_stream.cli", *args], env=env,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, (args, done.stderr.decode()[-2000:])


def prepared(s: Settings, tmp_path: Path) -> dict[str, str]:
    """The workers' environment, with the policy written and the topics created."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    env = environment(s, policy)
    cli(env, "topics", "apply", "--policy", str(policy))
    return env


class Worker:
    """One ``router-stream worker`` process and its JSON log."""

    def __init__(self, env: dict[str, str], worker_id: str, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router_stream.cli", "worker"],
            env=env | {"ROUTER_WORKER_ID": worker_id}, stdout=log.open("ab"),
            stderr=subprocess.STDOUT, start_new_session=True)

    def lines(self, msg: str | None = None) -> list[dict[str, Any]]:
        out = [orjson.loads(line) for line in self.log.read_bytes().splitlines()
               if line.startswith(b"{")]
        return out if msg is None else [line for line in out if line.get("msg") == msg]

    def owned(self) -> set[str]:
        """The partitions its log says it owns now (eager protocol: every assignment is whole)."""
        owned: set[str] = set()
        for line in self.lines():
            if line.get("msg") == "partitions assigned":
                owned |= set(line["partitions"])
            elif line.get("msg") == "partitions revoked":
                owned -= set(line["partitions"])
        return owned

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@contextmanager
def running(workers: list[Worker]) -> Iterator[list[Worker]]:
    try:
        yield workers
    finally:
        for w in workers:
            w.kill()


def signals_partitions(w: Worker, s: Settings) -> set[str]:
    return {p for p in w.owned() if p.startswith(s.topic("signals["))}


def decided_ids(s: Settings, expected: int, timeout: float) -> set[str]:
    """The signal ids on router.decisions, read until ``expected`` arrived or ``timeout``."""
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([s.topic(DECISIONS)])
    ids: set[str] = set()
    try:
        deadline = time.monotonic() + timeout
        while len(ids) < expected and time.monotonic() < deadline:
            for m in consumer.consume(500, 0.5):
                if m.error() is None and m.value():
                    ids.add(orjson.loads(m.value())["signal_id"])
    finally:
        consumer.close()
    return ids


def produce(env: dict[str, str], path: Path, ids: range) -> None:
    path.write_bytes(b"".join(orjson.dumps({
        "signal_id": f"s-{i}", "sender_id": f"svc-{i % 7}",
        "payload": {"severity": "critical"}}) + b"\n" for i in ids))
    cli(env, "produce", "--logical", "signals", str(path), "--key-field", "sender_id")


async def test_a_static_member_restarted_gets_its_partitions_back_without_a_rebalance(
        settings, tmp_path):
    env = prepared(settings, tmp_path)
    a = Worker(env, "sts-0", tmp_path / "a.log")
    b = Worker(env, "sts-1", tmp_path / "b.log")
    with running([a, b]):
        await until("both members assigned", 90,
                    lambda: signals_partitions(a, settings) and signals_partitions(b, settings))
        owned_a = signals_partitions(a, settings)
        moves_b = len(b.lines("partitions assigned")) + len(b.lines("partitions revoked"))

        # Restarted at once, within the 6 s session timeout: the group hands the static
        # member's assignment back when it joins. (A dynamic member would leave on SIGTERM and
        # join again: two rebalances, each moving the other member's partitions too.)
        assert a.stop() == 0, a.log.read_text()[-2000:]
        a = Worker(env, "sts-0", tmp_path / "a-again.log")
        await until("the restarted member assigned", 60, lambda: signals_partitions(a, settings))

        assert signals_partitions(a, settings) == owned_a  # the same partitions, and ...
        # ... the other member was not asked to give up or take anything
        assert len(b.lines("partitions assigned")) + len(b.lines("partitions revoked")) == moves_b

        produce(env, tmp_path / "signals.jsonl", range(300))
        assert decided_ids(settings, 300, 60) == {f"s-{i}" for i in range(300)}
        assert a.stop() == 0 and b.stop() == 0


async def test_a_second_live_worker_under_the_same_id_fences_the_first_which_stops_with_one_line(
        settings, tmp_path):
    env = prepared(settings, tmp_path)
    first = Worker(env, "twin", tmp_path / "first.log")
    with running([first]):
        await until("the first member assigned", 90, lambda: signals_partitions(first, settings))
        second = Worker(env, "twin", tmp_path / "second.log")
        with running([second]):
            await until("the first worker's exit", 90, lambda: first.proc.poll() is not None)
            assert first.proc.returncode == 2, first.log.read_text()[-2000:]
            last = first.log.read_text().splitlines()[-1]  # the CLI's one line, on stderr
            assert last == ("error: the signals consumer failed for good (group.instance.id "
                            f"'{settings.group_id}.twin'): Broker: Static consumer fenced by "
                            "other consumer with same group.instance.id; stopping"), last
            await until("the second member assigned", 60,
                        lambda: signals_partitions(second, settings))
            produce(env, tmp_path / "signals.jsonl", range(100))
            assert decided_ids(settings, 100, 60) == {f"s-{i}" for i in range(100)}
            assert second.stop() == 0, second.log.read_text()[-2000:]
