"""Override TTLs are bounded at input, and a stored out-of-range expiry still lists (issue 21).

``override set --ttl 99999999d`` used to be accepted; the row's year-275817 expiry then made
``override list`` crash until cleared (asyncpg cannot decode it into a datetime), and
``list --all`` for good.
"""

from __future__ import annotations

import json

import pytest

import router_stream.cli.override  # noqa: F401  (registers `override`)
from router_stream.adapters.kafka_io import read_records
from router_stream.config import CONTROL, Settings
from tests.support.cli import run_cli

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("ttl", ["99999999d", "366d", "53w", "1e9s", "99999999999999999999w"])
async def test_a_ttl_beyond_365d_is_refused_in_one_line_and_nothing_is_sent(
    settings: Settings, topic_factory, db, ttl: str
):
    await topic_factory(CONTROL)
    result = await run_cli(settings, "override", "set", "--kind", "alert", "--destination",
                           "slack", "--ttl", ttl)
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1, result.output
    assert "at most 365d" in result.output or "not a duration" in result.output
    assert [r async for r in read_records(settings, settings.topic(CONTROL), until_end=True)] == []
    assert await db.fetchval("SELECT count(*) FROM routing_overrides") == 0


async def test_365d_is_accepted(settings: Settings, topic_factory, db):
    await topic_factory(CONTROL)
    result = await run_cli(settings, "override", "set", "--drain", "pagerduty", "--ttl", "365d")
    assert result.exit_code == 0, result.output


async def test_stored_out_of_range_expiries_are_listed_not_crashed_on(
    settings: Settings, topic_factory, db
):
    await topic_factory(CONTROL)
    # what the unbounded --ttl wrote, and what a hand-made row can hold
    await db.execute(
        "INSERT INTO routing_overrides (id, override_kind, target, expires_at) VALUES"
        " ('far', 'drain', 'email', now() + interval '99999999 days'),"
        " ('forever', 'drain', 'sms', 'infinity'),"
        " ('old', 'drain', 'slack', now() - interval '1 minute')")
    for args in (["override", "list"], ["override", "list", "--all"]):
        table = await run_cli(settings, *args)
        assert table.exit_code == 0, table.output
        assert table.output.count("after 9999-12-31") == 2, table.output
        as_json = await run_cli(settings, *args, "--json")
        assert as_json.exit_code == 0, as_json.output
        states = {o["id"]: (o["state"], o["expires_at"][:10]) for o in json.loads(as_json.stdout)}
        assert states["far"] == states["forever"] == ("active", "9999-12-31")
        assert ("old" in states) is ("--all" in args)
    cleared = await run_cli(settings, "override", "clear", "far")
    assert cleared.exit_code == 0, cleared.output
