"""examples/*.jsonl are accepted by `router-stream produce` and, produced as the README says,
each line is routed or dead-lettered by a worker running examples/policy.yaml."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from router_stream.adapters import postgres as pg
from router_stream.adapters.topics import apply_topics, policy_destinations
from router_stream.cli import _register, cli
from tests.support.worker import fetch, wait_for, worker

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "examples"
FILES = [("signals", "signals.jsonl", "sender_id"), ("source-health", "health.jsonl", "source_id"),
         ("outcomes", "outcomes.jsonl", "destination")]


def _invoke(settings, *args: str):
    _register()
    env = {"ROUTER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "ROUTER_TOPIC_PREFIX": settings.topic_prefix}
    return CliRunner().invoke(cli, list(args), env=env)


async def test_produce_accepts_every_example_file_and_the_worker_routes_the_signals(settings):
    policy = EXAMPLES / "policy.yaml"
    s = settings.model_copy(update={"policy_file": str(policy)})
    await apply_topics(s, policy_destinations(policy))
    await pg.migrate_database(s)
    for topic, name, key in FILES:
        result = await asyncio.to_thread(
            _invoke, s, "produce", "--logical", topic, str(EXAMPLES / name), "--key-field", key,
            "--json")
        assert result.exit_code == 0, result.output
        lines = (EXAMPLES / name).read_text().splitlines()
        report = json.loads(result.stdout)
        assert report["produced"] == len(lines) and report["without_key"] == 0

    w = worker(s, http=False)
    await w.start()
    runner = asyncio.create_task(w.run())
    signals = len((EXAMPLES / "signals.jsonl").read_text().splitlines())
    try:
        await wait_for(lambda: w.signals.processed >= signals, 30, "example signals decided")
    finally:
        w.request_stop()
        await runner
    decided = await fetch(s, "SELECT signal_id FROM routing_decisions")
    dead = await fetch(s, "SELECT reason FROM dlq_entries")
    assert len(decided) + len(dead) == signals
    assert {"ex-alert-1", "ex-alert-2", "ex-note-1", "ex-kind-given"} <= {
        r["signal_id"] for r in decided}
