"""Topic creation and verification against the real Kafka broker (a fresh prefix per test)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from confluent_kafka.admin import NewTopic

import router_stream.cli.topics  # noqa: F401  (registers `topics` on the root group)
from router_stream.adapters import topics as tp
from router_stream.adapters.kafka_io import OutRecord, RecordWriter, read_records
from router_stream.cli import cli
from router_stream.config import Settings
from router_stream.errors import BrokerUnavailable, OperationTimeout
from tests.support.kafka_admin import Admin

pytestmark = pytest.mark.integration

FIXED = ["signals", "source-health", "outcomes", "router.control", "router.retry",
         "router.decisions", "router.dlq", "router.events", "router.workers", "router.state"]


def declared() -> dict[str, Any]:
    """topics.yaml read independently of the adapter, as the expectation."""
    return yaml.safe_load(tp.default_topics_file().read_text())


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[Admin]:
    """A raw admin client; deletes this test's topics afterwards."""
    client = Admin(settings.kafka_bootstrap)
    yield client
    mine = [t for t in await client.list_topics() if t.startswith(settings.topic_prefix)]
    if mine:
        await client.delete_topics(mine)


async def prefixed_topics(admin: Admin, settings: Settings) -> set[str]:
    return {t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)}


async def test_apply_creates_every_topic_as_declared(settings: Settings, admin):
    report = await tp.apply_topics(settings, ["pagerduty", "slack"])

    decl = declared()
    expected = {settings.topic(n): decl["topics"][n] for n in FIXED}
    expected |= {settings.routed_topic(d): decl["routed"] for d in ("pagerduty", "slack")}
    assert sorted(report.created) == sorted(expected)
    assert report.problems == [] and report.verified == []
    assert await prefixed_topics(admin, settings) == set(expected)
    brokers = await admin.brokers()
    for name, spec in expected.items():
        seen = await admin.describe(name)
        assert seen["partitions"] == spec["partitions"], name
        assert seen["replicas"] == min(3, brokers), name
        for key, value in spec["configs"].items():
            assert seen[key] == value, (name, key)
        assert seen["min.insync.replicas"] == str(min(2, brokers)), name
    if brokers < 3:
        assert any("clamped" in w for w in report.warnings)


async def test_router_control_is_one_partition_kept_forever(settings: Settings, admin):
    await tp.apply_topics(settings)
    seen = await admin.describe(settings.topic("router.control"))
    assert (seen["partitions"], seen["cleanup.policy"], seen["retention.ms"]) == (1, "delete", "-1")


async def test_state_topics_stamp_records_with_the_broker_s_clock(settings: Settings, admin):
    """The worker's state clock is the newest record timestamp it folded (docs/worker.md): a
    producer whose clock runs 50 minutes ahead must not date its records then."""
    await tp.apply_topics(settings)
    ahead_ms = int((time.time() + 3000) * 1000)
    state_topics = [settings.topic(n) for n in ("source-health", "outcomes", "router.control")]
    before_ms = int(time.time() * 1000)
    async with RecordWriter(settings) as writer:
        for topic in state_topics:
            await writer.send_and_wait(OutRecord(topic, b"{}", key=b"k", timestamp_ms=ahead_ms))
    after_ms = int(time.time() * 1000)
    for topic in state_topics:
        [record] = [r async for r in read_records(settings, topic, until_end=True)]
        assert record.timestamp_type == 1, topic  # LogAppendTime
        assert before_ms - 5_000 <= record.timestamp <= after_ms + 5_000, topic


async def test_second_apply_is_a_no_op(settings: Settings, admin):
    await tp.apply_topics(settings, ["pagerduty"])
    before = await prefixed_topics(admin, settings)
    again = await tp.apply_topics(settings, ["pagerduty"])

    assert again.created == []
    assert sorted(again.verified) == sorted(before)
    assert await prefixed_topics(admin, settings) == before


async def test_mismatched_topics_are_reported_and_missing_ones_still_created(
    settings: Settings, admin
):
    signals, dlq = settings.topic("signals"), settings.topic("router.dlq")
    await admin.create_topics([
        NewTopic(signals, 2, 1, config={"cleanup.policy": "compact"}),
        NewTopic(dlq, 6, 1, config={"retention.ms": "1000"}),
    ])

    with pytest.raises(tp.TopicMismatch) as info:
        await tp.apply_topics(settings)

    problems = {(p.topic, p.what, p.declared, p.actual) for p in info.value.problems}
    assert problems == {
        (signals, "partitions", "12", "2"),
        (signals, "cleanup.policy", "delete", "compact"),
        (dlq, "retention.ms", "2592000000", "1000"),
    }
    message = str(info.value)
    assert f"{signals}: partitions is 2, declared 12" in message
    assert f"{dlq}: retention.ms is 1000, declared 2592000000" in message
    # the rest was created; the mismatched topics were left alone
    assert sorted(info.value.report.created) == sorted(
        settings.topic(n) for n in FIXED if n not in ("signals", "router.dlq")
    )
    assert (await admin.describe(signals))["partitions"] == 2


async def test_alter_configs_sets_only_the_configs_that_differ(settings: Settings, admin):
    signals, outcomes = settings.topic("signals"), settings.topic("outcomes")
    await admin.create_topics([
        NewTopic(signals, 2, 1, config={"cleanup.policy": "compact"}),
        NewTopic(outcomes, 12, 1, config={"retention.ms": "1000", "max.message.bytes": "2000000"}),
    ])

    with pytest.raises(tp.TopicMismatch) as info:  # a partition count is never changed
        await tp.apply_topics(settings, alter_configs=True)

    assert [(p.topic, p.what) for p in info.value.problems] == [(signals, "partitions")]
    assert sorted(info.value.report.altered) == sorted([
        f"{outcomes}: message.timestamp.type CreateTime -> LogAppendTime",
        f"{outcomes}: retention.ms 1000 -> 259200000",
        f"{signals}: cleanup.policy compact -> delete",
    ])
    seen = await admin.describe(outcomes)
    assert (seen["retention.ms"], seen["message.timestamp.type"]) == ("259200000", "LogAppendTime")
    assert seen["max.message.bytes"] == "2000000"  # undeclared: left as it was
    seen = await admin.describe(signals)
    assert (seen["partitions"], seen["cleanup.policy"]) == (2, "delete")


async def test_more_partitions_than_declared_is_only_a_warning(settings: Settings, admin):
    dlq = settings.topic("router.dlq")
    await admin.create_topics([
        NewTopic(dlq, 8, 1, config={"retention.ms": "2592000000"})
    ])
    report = await tp.apply_topics(settings)
    assert dlq in report.verified
    assert any(w.startswith(f"{dlq}: 8 partitions") for w in report.warnings)


async def test_verify_reports_missing_topics_without_creating_them(settings: Settings, admin):
    with pytest.raises(tp.TopicMismatch) as info:
        await tp.verify_topics(settings, ["pagerduty"])

    assert {(p.topic, p.what) for p in info.value.problems} == {
        (name, "missing")
        for name in (*(settings.topic(n) for n in FIXED), settings.routed_topic("pagerduty"))
    }
    assert "topics apply" in str(info.value)
    # A broker with auto.create.topics.enable (Kafka's default) creates, about a second later,
    # any topic a metadata request names; verifying must not name missing topics. Absence can
    # only be observed over time: watch for 3 s.
    deadline = asyncio.get_running_loop().time() + 3
    while asyncio.get_running_loop().time() < deadline:
        assert await prefixed_topics(admin, settings) == set()
        await asyncio.sleep(0.25)


async def test_verify_passes_after_apply_and_catches_a_new_destination(settings: Settings, admin):
    await tp.apply_topics(settings, ["a"])
    assert (await tp.verify_topics(settings, ["a"])).ok
    with pytest.raises(tp.TopicMismatch, match=r"routed\.b: missing"):
        await tp.verify_topics(settings, ["a", "b"])


async def test_list_topics_shows_existing_and_missing(settings: Settings, admin):
    await tp.apply_topics(settings, ["a"])
    infos = {i.logical: i for i in await tp.list_topics(settings, ["a", "b"])}

    assert set(infos) == {*FIXED, "routed.a", "routed.b"}
    assert infos["routed.b"].exists is False
    assert (infos["signals"].partitions, infos["signals"].configs["cleanup.policy"]) == (
        12, "delete"
    )


async def test_unreachable_broker_is_broker_unavailable():
    dead = Settings(kafka_bootstrap="127.0.0.1:1")
    with pytest.raises((BrokerUnavailable, OperationTimeout)) as info:
        await tp.apply_topics(dead, timeout=5)
    assert info.value.retriable


# --- the CLI ----------------------------------------------------------------------------------


def _invoke(settings: Settings, *args: str, topics_file: Path | None = None):
    env = {"ROUTER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "ROUTER_TOPIC_PREFIX": settings.topic_prefix, "ROUTER_POLICY_FILE": "",
           "ROUTER_TOPICS_FILE": str(topics_file) if topics_file else None}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


async def test_cli_topics_apply_with_policy_exits_0(settings: Settings, admin, tmp_path: Path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "destinations: [pagerduty, slack, email, metrics-store]\n"
        "routes:\n"
        "  alert: {strategy: first_healthy, tiers: [[pagerduty], [slack, email]]}\n"
        "  observation: {strategy: consensus, destinations: [metrics-store]}\n"
    )
    # the command runs its own event loop (asyncio.run): call it off this test's loop
    result = await asyncio.to_thread(
        _invoke, settings, "topics", "apply", "--policy", str(policy), "--json"
    )
    assert result.exit_code == 0, result.output
    routed = {settings.routed_topic(d) for d in ("pagerduty", "slack", "email", "metrics-store")}
    assert routed <= set(json.loads(result.output)["created"])
    assert routed <= await prefixed_topics(admin, settings)

    again = await asyncio.to_thread(_invoke, settings, "topics", "apply", "--policy", str(policy))
    assert again.exit_code == 0
    assert "created" not in again.output and f"ok       {settings.topic('signals')}" in again.output

    listed = await asyncio.to_thread(_invoke, settings, "topics", "list", "--json")
    assert listed.exit_code == 0
    assert {t["name"] for t in json.loads(listed.output)} == (
        {settings.topic(n) for n in FIXED} | routed
    )


async def test_cli_topics_apply_mismatch_exits_2(settings: Settings, admin):
    await admin.create_topics([NewTopic(settings.topic("outcomes"), 1, 1)])
    result = await asyncio.to_thread(_invoke, settings, "topics", "apply")
    assert result.exit_code == 2
    assert f"{settings.topic('outcomes')}: partitions is 1, declared 12" in result.output


async def test_cli_topics_apply_alter_configs_brings_an_older_topic_in_line(
    settings: Settings, admin
):
    outcomes = settings.topic("outcomes")  # as created before it took the broker's clock
    await admin.create_topics([NewTopic(outcomes, 12, 1, config={
        "cleanup.policy": "delete", "retention.ms": "259200000"})])
    refused = await asyncio.to_thread(_invoke, settings, "topics", "apply")
    assert refused.exit_code == 2
    assert f"{outcomes}: message.timestamp.type is CreateTime, declared LogAppendTime" in (
        refused.output)
    assert "topics apply --alter-configs" in refused.output

    fixed = await asyncio.to_thread(_invoke, settings, "topics", "apply", "--alter-configs")
    assert fixed.exit_code == 0, fixed.output
    assert f"altered  {outcomes}: message.timestamp.type CreateTime -> LogAppendTime" in (
        fixed.output)
    again = await asyncio.to_thread(_invoke, settings, "topics", "apply")
    assert again.exit_code == 0 and f"ok       {outcomes}" in again.output


async def test_cli_topics_follow_router_topics_file(settings: Settings, admin, tmp_path: Path):
    doc = declared()
    doc["routed"]["destinations"] = {"sms": {"partitions": 2}}
    mine = tmp_path / "topics.yaml"
    mine.write_text(yaml.safe_dump(doc))

    result = await asyncio.to_thread(_invoke, settings, "topics", "apply", "-d", "sms", "-d",
                                     "email", topics_file=mine)
    assert result.exit_code == 0, result.output
    assert (await admin.describe(settings.routed_topic("sms")))["partitions"] == 2
    assert (await admin.describe(settings.routed_topic("email")))["partitions"] == 12

    # --file names other declarations than the configured ones: the shipped file's 12
    shipped = await asyncio.to_thread(_invoke, settings, "topics", "apply", "-d", "sms",
                                      "--file", str(tp.default_topics_file()), topics_file=mine)
    assert shipped.exit_code == 2
    assert f"{settings.routed_topic('sms')}: partitions is 2, declared 12" in shipped.output


async def test_delete_topics_deletes_named_topics_and_skips_gone_ones(settings: Settings, admin):
    from router_stream.adapters.topic_admin import connected_admin, delete_topics

    names = [settings.topic("old.a"), settings.topic("old.b")]
    await admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1)
                               for n in names])
    gone = settings.topic("never.created")
    async with connected_admin(settings, timeout=30.0) as client:
        deleted = await delete_topics(client, [*names, gone])
        assert deleted == sorted(names)
        assert await delete_topics(client, []) == []
    for _ in range(100):  # deletion is acknowledged before every metadata cache forgets it
        if not await prefixed_topics(admin, settings) & set(names):
            break
        await asyncio.sleep(0.1)
    assert not await prefixed_topics(admin, settings) & set(names)
