"""`router-stream produce` and `tail` against the real broker: a round trip keeps bytes and keys."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import router_stream.cli.io  # noqa: F401  (registers `produce` and `tail`)
from router_stream.adapters.kafka_io import read_records
from router_stream.cli import cli
from router_stream.config import Settings

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

    tail_task = asyncio.create_task(run_cli(settings, "tail", topic, "--max", "1",
                                            "--timeout", "20"))
    # tail seeks to the end when it starts: keep producing until it has seen one (bounded)
    for _ in range(40):
        await run_cli(settings, "produce", topic, stdin=b'{"signal_id": "new"}\n')
        done, _ = await asyncio.wait([tail_task], timeout=0.5)
        if done:
            break
    tailed = await asyncio.wait_for(tail_task, 30)
    assert [json.loads(line)["value"]["signal_id"] for line in tailed.stdout.splitlines()] == [
        "new"]


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
