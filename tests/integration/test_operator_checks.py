"""Operator input checked against the running system, on the real broker and Postgres: a policy
or override naming a destination the policy lacks, or a topic that does not exist, is refused by
the CLI (exit 1, one line) and again by the worker when the command arrives."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from router_stream.adapters import postgres as pg
from router_stream.adapters.topics import apply_topics
from router_stream.config import CONTROL, SIGNALS
from tests.support.cli import invoke
from tests.support.kafka_admin import Admin
from tests.support.policies import edited
from tests.support.worker import (
    DESTINATIONS,
    POLICY,
    fetch,
    prepare,
    produce,
    signal,
    wait_for,
    worker,
)

pytestmark = pytest.mark.integration


async def _cli(settings, *args: str):
    return await asyncio.to_thread(invoke, settings, *args)


def _one_line_error(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1, result.output
    return lines[0]


async def _delete_topic(settings, name: str) -> None:
    await Admin(settings.kafka_bootstrap).delete_topics([name])


async def test_publish_before_topics_apply_names_what_is_missing_at_once(settings, tmp_path):
    await pg.migrate_database(settings)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)

    started = time.monotonic()
    line = _one_line_error(await _cli(settings, "policy", "publish", str(policy)))
    assert time.monotonic() - started < 15  # not the producer's 30 s metadata wait
    assert settings.topic(CONTROL) in line and settings.routed_topic("pager") in line
    assert "topics apply --policy" in line and "--create-topics" in line

    created = await _cli(settings, "policy", "publish", str(policy), "--create-topics")
    assert created.exit_code == 0, created.output
    assert [r["status"] for r in await fetch(settings, "SELECT status FROM policy_versions")] \
        == ["active"]


async def test_override_of_an_unknown_destination_or_missing_topic_is_refused(settings, tmp_path):
    await pg.migrate_database(settings)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    assert (await _cli(settings, "policy", "publish", str(policy), "--create-topics")
            ).exit_code == 0

    unknown = _one_line_error(await _cli(
        settings, "override", "set", "--kind", "alert", "--destination", "nosuchdest",
        "--ttl", "5m"))
    assert "'nosuchdest' is not in the active policy" in unknown and "pager" in unknown
    drain = _one_line_error(await _cli(settings, "override", "set", "--drain", "nosuchdest"))
    assert "'nosuchdest' is not in the active policy" in drain

    await _delete_topic(settings, settings.routed_topic("slack"))
    gone = _one_line_error(await _cli(
        settings, "override", "set", "--kind", "alert", "--destination", "slack"))
    assert settings.routed_topic("slack") in gone and "topics apply" in gone

    accepted = await _cli(settings, "override", "set", "--kind", "alert",
                          "--destination", "email", "--ttl", "5m")
    assert accepted.exit_code == 0, accepted.output
    rows = await fetch(settings, "SELECT target FROM routing_overrides")
    assert [r["target"] for r in rows] == ["email"]


async def test_worker_refuses_control_naming_unknown_destination_or_missing_topic_and_flows_on(
    settings, tmp_path
):
    s = await prepare(settings, tmp_path)
    w = worker(s, http=False)
    await w.start()
    runner = asyncio.create_task(w.run())
    try:
        expires = time.time() + 300
        unknown = {"type": "override_set", "override_id": "o-unknown", "action":
                   "force_destination", "kind": "alert", "destinations": ["nosuchdest"],
                   "expires_at": expires}
        await _delete_topic(s, s.routed_topic("webhook"))
        no_topic = {"type": "override_set", "override_id": "o-no-topic", "action":
                    "force_destination", "kind": "alert", "destinations": ["webhook"],
                    "expires_at": expires}
        new_dest = edited(POLICY, {"routes.ticket.destinations": ["desk-a", "desk-b", "desk-c"]},
                          add={"destinations.desk-c": {}})
        publish = {"type": "policy_publish", "version": "v2", "policy_yaml": new_dest,
                   "issued_by": "test"}
        await produce(s, CONTROL, [(None, orjson.dumps(c)) for c in (unknown, no_topic, publish)])

        def refused() -> float:
            return sum(m.value for m in w.metrics.control_commands.collect()[0].samples
                       if m.labels.get("result") == "refused" and m.name.endswith("_total"))

        await wait_for(lambda: refused() >= 3, 10, "three control commands refused")
        assert w.engine.snapshot().overrides == []
        policy_before = w.engine.policy_version

        alerts = [(b"k", signal(i, payload={"severity": "critical"})) for i in range(50)]
        await produce(s, SIGNALS, alerts)
        await wait_for(lambda: w.signals.processed >= 50, 20, "alerts routed")
        assert w.engine.policy_version == policy_before
        await wait_for(lambda: fetch(s, "SELECT 1 FROM policy_versions WHERE status='rejected'"),
                       5, "rejected policy recorded")
    finally:
        w.request_stop()
        await runner
    rows = await fetch(s, "SELECT destinations FROM routing_decisions")
    assert len(rows) == 50 and {tuple(r["destinations"]) for r in rows} == {("pager",)}


async def test_publish_accepts_a_policy_whose_topics_exist(settings, tmp_path):
    await pg.migrate_database(settings)
    await apply_topics(settings, DESTINATIONS)
    policy = Path(tmp_path / "policy.yaml")
    policy.write_text(POLICY)
    published = await _cli(settings, "policy", "publish", str(policy))
    assert published.exit_code == 0, published.output
