"""`router-stream produce` and `tail` against the real broker: a round trip keeps bytes and keys."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import router_stream.cli.io  # noqa: F401  (registers `produce` and `tail`)
from router_stream.adapters.kafka_io import ConsumedRecord, read_records
from router_stream.cli import cli
from router_stream.cli.io import produce_lines, tail_topic
from router_stream.config import Settings
from tests.support import cli as support_cli

pytestmark = pytest.mark.integration

LINES = [
    b'{"sender_id": "alpha", "payload": {"n": 1}}',
    b'{"sender_id":"beta","payload":{"n":2,"text":"caf\xc3\xa9"}}',
    b"   ",
    b'{"payload": {"n": 3}}',
    b'{"sender_id": 42, "payload": {"n": 4}}',
]
SENT = [line for line in LINES if line.strip()]


def _invoke(settings: Settings, *args: str, stdin: bytes | None = None) -> Result:
    env = {"ROUTER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "ROUTER_TOPIC_PREFIX": settings.topic_prefix}
    return CliRunner().invoke(cli, list(args), env=env, input=stdin, catch_exceptions=False)


async def run_cli(settings: Settings, *args: str, stdin: bytes | None = None) -> Result:
    # the command runs its own event loop (asyncio.run): call it off this test's loop
    return await asyncio.to_thread(_invoke, settings, *args, stdin=stdin)


async def test_produce_then_tail_round_trip(settings: Settings, topic_factory, tmp_path: Path):
    topic = await topic_factory("signals", partitions=2)
    source = tmp_path / "signals.jsonl"
    source.write_bytes(b"\n".join(LINES) + b"\n")

    result = await run_cli(settings, "produce", "--logical", "signals", str(source),
                           "--key-field", "sender_id", "--json", "--header", "origin=test")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["topic"] == topic and report["produced"] == 4 and report["without_key"] == 1

    records = [r async for r in read_records(settings, topic, until_end=True)]
    by_value = {r.value: r for r in records}
    assert set(by_value) == set(SENT)  # bytes unchanged
    assert by_value[LINES[0]].key == b"alpha" and by_value[LINES[1]].key == b"beta"
    assert by_value[LINES[3]].key is None and by_value[LINES[4]].key == b"42"
    assert all(r.headers == [("origin", b"test")] for r in records)

    tailed = await run_cli(settings, "tail", topic, "--from-beginning", "--max", "4")
    assert tailed.exit_code == 0, tailed.output
    out = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert len(out) == 4
    assert {(o["key"], o["value"]["payload"]["n"]) for o in out} == {
        ("alpha", 1), ("beta", 2), (None, 3), ("42", 4)}
    assert {o["partition"] for o in out} <= {0, 1} and all(o["topic"] == topic for o in out)
    assert out[0]["headers"] == [["origin", "test"]]

    raw = await run_cli(settings, "tail", "--logical", "signals", "--from-beginning", "--raw",
                        "--timeout", "2")
    assert raw.exit_code == 0
    assert sorted(raw.stdout_bytes.splitlines()) == sorted(SENT)


async def test_produce_from_stdin_and_tail_from_the_end(settings: Settings, topic_factory):
    topic = await topic_factory("outcomes")
    before = await run_cli(settings, "produce", topic, "-",
                           stdin=b'{"signal_id": "old", "destination": "d", "ok": true}\n')
    assert before.exit_code == 0 and f"produced 1 records to {topic}" in before.output

    seen: list[ConsumedRecord] = []
    tail_task = asyncio.create_task(
        tail_topic(settings, topic, seen.append, max_records=1, idle_timeout_s=20))
    # tail seeks to the end when it starts: keep producing until it has seen one (bounded)
    for _ in range(40):
        await produce_lines(settings, topic, [b'{"signal_id": "new"}'])
        done, _ = await asyncio.wait([tail_task], timeout=0.5)
        if done:
            break
    assert await asyncio.wait_for(tail_task, 30) == 1
    assert [json.loads(r.value)["signal_id"] for r in seen] == ["new"]


async def test_produce_and_tail_errors_are_one_line_with_exit_1(settings: Settings,
                                                                 topic_factory):
    topic = await topic_factory("signals")
    bad = await run_cli(settings, "produce", topic, stdin=b'{"ok": 1}\nnot json\n')
    assert bad.exit_code == 1
    assert bad.output.startswith("error: line 2: not JSON") and bad.output.count("\n") == 1

    raw = await run_cli(settings, "produce", topic, "--raw", stdin=b"not json\n")
    assert raw.exit_code == 0 and "produced 1 records" in raw.output

    missing = await run_cli(settings, "produce", f"{topic}-nope", stdin=b"{}\n")
    assert missing.exit_code == 1 and "does not exist" in missing.output

    tail_missing = await run_cli(settings, "tail", f"{topic}-nope", "--max", "1")
    assert tail_missing.exit_code == 1 and "does not exist" in tail_missing.output

    empty = await run_cli(settings, "tail", topic, "--timeout", "1")
    assert empty.exit_code == 0 and empty.stdout == ""


# --- override set / list / clear (router.control + routing_overrides) -------------------------
# (Here because this file is the CLI's Kafka+Postgres test module; move to test_override.py if
# one is created.)


import router_stream.cli.override  # noqa: E402, F401  (registers `override`)
from router_stream.config import CONTROL  # noqa: E402
from router_stream.core.compiled import load_compiled  # noqa: E402
from router_stream.core.engine import RouterEngine  # noqa: E402
from router_stream.core.models import CONTROL_ADAPTER, OverrideClear, OverrideSet  # noqa: E402

EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"


async def control_commands(settings: Settings) -> list[object]:
    records = [r async for r in read_records(settings, settings.topic(CONTROL), until_end=True)]
    return [CONTROL_ADAPTER.validate_json(r.value) for r in records]


async def test_override_set_list_clear_through_control_and_table(
    settings: Settings, topic_factory, db
):
    await topic_factory(CONTROL)
    await topic_factory("routed.slack")  # a forced destination's topic must exist
    before = asyncio.get_running_loop().time()
    result = await support_cli.run_cli(
        settings, "override", "set", "--kind", "alert", "--tenant", "acme",
        "--destination", "slack", "--ttl", "30m", "--reason", "pager down", "--json")
    assert result.exit_code == 0, result.output
    sent = OverrideSet.model_validate_json(result.stdout)

    [command] = await control_commands(settings)
    assert isinstance(command, OverrideSet) and command == sent
    assert (command.kind, command.tenant, command.destinations) == ("alert", "acme", ["slack"])
    assert command.expires_at - command.issued_at == pytest.approx(1800)
    assert command.reason == "pager down" and command.command_id

    # the worker's engine applies exactly what was sent: alert/acme is forced to slack
    engine = RouterEngine(load_compiled(EXAMPLE_POLICY.read_text()))
    assert engine.apply_control(command, now=command.issued_at).accepted
    [applied] = engine.snapshot(command.issued_at).overrides
    assert (applied["target"], applied["kind_selector"]) == ("slack", "alert")
    engine.tick(command.expires_at + 1)
    assert engine.snapshot(command.expires_at + 1).overrides == []  # expires on its own

    row = await db.fetchrow("SELECT * FROM routing_overrides WHERE id = $1",
                                  sent.override_id)
    assert row["override_kind"] == "force_destination" and row["target"] == "slack"
    assert row["selector"] == {"kind": "alert", "tenant": "acme"}
    assert row["expires_at"].timestamp() == pytest.approx(sent.expires_at, abs=1e-3)
    # an expired one, recorded earlier, is not listed by default
    await db.execute(
        "INSERT INTO routing_overrides (id, override_kind, target, expires_at)"
        " VALUES ('old', 'force_destination', 'email', now() - interval '1 minute')")

    listed = await support_cli.run_cli(settings, "override", "list", "--json")
    assert [o["id"] for o in json.loads(listed.stdout)] == [sent.override_id]
    everything = json.loads((await support_cli.run_cli(
        settings, "override", "list", "--all", "--json")).stdout)
    assert {o["id"]: o["state"] for o in everything} == {sent.override_id: "active",
                                                          "old": "expired"}

    cleared = await support_cli.run_cli(settings, "override", "clear",
                                      sent.override_id)
    assert cleared.exit_code == 0 and "cleared" in cleared.output
    commands = await control_commands(settings)
    assert isinstance(commands[-1], OverrideClear)
    assert commands[-1].override_id == sent.override_id
    assert await db.fetchval("SELECT cleared_at IS NOT NULL FROM routing_overrides"
                                   " WHERE id = $1", sent.override_id)
    listed = await support_cli.run_cli(settings, "override", "list", "--json")
    assert json.loads(listed.stdout) == []
    again = await support_cli.run_cli(settings, "override", "clear", sent.override_id)
    assert again.exit_code == 0 and "already cleared" in again.output
    assert len(await control_commands(settings)) == 2  # nothing sent the second time
    assert asyncio.get_running_loop().time() - before < 60


async def test_override_user_errors_exit_1_and_send_nothing(
    settings: Settings, topic_factory, db
):
    await topic_factory(CONTROL)
    cases = [
        (["--drain", "pagerduty", "--kind", "alert"], "narrow --destination only"),
        (["--kind", "alert"], "give exactly one of"),
        (["--kind", "alert", "--destination", "a", "--drain", "b"], "give exactly one of"),
        (["--kind", "alert", "--destination", "a", "--ttl", "soon"], "not a duration: 'soon'"),
        (["--destination", "a"], "needs --reason"),
    ]
    for args, message in cases:
        result = await support_cli.run_cli(settings, "override", "set", *args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and result.output.count("\n") == 1, result.output
    unknown = await support_cli.run_cli(settings, "override", "clear", "nope")
    assert unknown.exit_code == 1 and "no override with id 'nope'" in unknown.output
    assert await control_commands(settings) == []


async def test_override_drain_and_exclude_source_reach_the_engine(
    settings: Settings, topic_factory, db
):
    await topic_factory(CONTROL)
    drained = await support_cli.run_cli(
        settings, "override", "set", "--drain", "pagerduty", "--ttl", "10m",
        "--reason", "vendor maintenance", "--json")
    assert drained.exit_code == 0, drained.output
    excluded = await support_cli.run_cli(
        settings, "override", "set", "--exclude-source", "probe-7", "--ttl", "1h",
        "--json")
    assert excluded.exit_code == 0, excluded.output

    commands = await control_commands(settings)
    assert [(c.action, c.target) for c in commands] == [
        ("drain", "pagerduty"), ("exclude_source", "probe-7")]
    engine = RouterEngine(load_compiled(EXAMPLE_POLICY.read_text()))
    for c in commands:
        assert engine.apply_control(c, now=c.issued_at).accepted
    kinds = {o["kind"]: o["target"] for o in engine.snapshot(commands[-1].issued_at).overrides}
    assert kinds == {"drain": "pagerduty", "exclude_source": "probe-7"}
    rows = {r["override_kind"]: r["target"] for r in await db.fetch(
        "SELECT override_kind, target FROM routing_overrides")}
    assert rows == {"drain": "pagerduty", "exclude_source": "probe-7"}
