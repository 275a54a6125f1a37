"""policy publish / active / rollback against the real broker and Postgres."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import orjson
import pytest

from router_stream.adapters import postgres as pg
from router_stream.adapters.topics import apply_topics, policy_destinations
from router_stream.config import CONTROL
from router_stream.core.models import CONTROL_ADAPTER, PolicyPublish
from tests.support.cli import invoke
from tests.support.policies import edited
from tests.support.worker import read_all

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.yaml"


async def test_publish_then_rollback_returns_every_worker_to_the_previous_version(
    settings, tmp_path
):
    await apply_topics(settings, policy_destinations(EXAMPLE))
    await pg.migrate_database(settings)
    v2 = tmp_path / "v2.yaml"
    v2.write_text(edited(EXAMPLE.read_text(), {"routes.notification.strategy": "ucb"}))

    for path in (EXAMPLE, v2):
        published = await asyncio.to_thread(invoke, settings, "policy", "publish", str(path))
        assert published.exit_code == 0, published.output
    history = json.loads((await asyncio.to_thread(
        invoke, settings, "policy", "active", "--json")).output)
    assert [h["status"] for h in history] == ["active", "superseded"]
    v1_version, v2_version = history[1]["version"], history[0]["version"]

    rolled = await asyncio.to_thread(invoke, settings, "policy", "rollback", "--reason", "test")
    assert rolled.exit_code == 0, rolled.output
    assert f"rolled back {v2_version} -> {v1_version}" in rolled.output

    commands = [CONTROL_ADAPTER.validate_python(orjson.loads(r.value))
                for r in await read_all(settings, settings.topic(CONTROL))]
    assert [c.version for c in commands if isinstance(c, PolicyPublish)] == [
        v1_version, v2_version, v1_version]
    statuses = {h["version"]: (h["status"], h["status_reason"]) for h in json.loads(
        (await asyncio.to_thread(invoke, settings, "policy", "active", "--json")).output)}
    assert statuses == {v1_version: ("active", None), v2_version: ("rolled_back", "test")}

    again = await asyncio.to_thread(invoke, settings, "policy", "rollback", "--to", v1_version)
    assert again.exit_code == 1 and "already active" in again.output
