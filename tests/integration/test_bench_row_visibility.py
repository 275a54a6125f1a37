"""bench/row_visibility.py on a real Postgres: a committed decision row is seen once, with the
latency from its signal's scheduled time, and only the window's rows count."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bench.row_visibility import RowVisibility, install
from router_stream.adapters import postgres as pg

pytestmark = pytest.mark.integration


def _row(i: int, sched_ms: int) -> tuple[object, ...]:
    at = datetime.fromtimestamp(sched_ms / 1000, tz=UTC)
    return (f"d-{i}", f"s-{i}", "default", "alert", ["pager"], "first_healthy", 0, "v1", 0.9,
            {}, None, "t.signals", 0, i, at, at)


async def test_rows_of_the_window_are_timed_from_their_schedule_when_committed(settings):
    await pg.migrate_database(settings)
    url = settings.database_url.get_secret_value()
    await install(url)
    rows = RowVisibility(url)
    await rows.start()
    try:
        now_ms = int(datetime.now(tz=UTC).timestamp() * 1000)
        start, end = now_ms - 2_000, now_ms - 1_000  # scheduled 1-2 s ago
        conn = await pg.connect(settings)
        try:
            async with conn.transaction():  # one projection batch: a COPY ...
                await pg.copy_decisions(conn, [_row(1, start), _row(2, start + 500)])
            async with conn.transaction():  # ... and the staging path, one outside the window
                await pg.insert_decisions(conn, [_row(3, end - 1), _row(4, end + 10)])
        finally:
            await conn.close()
        seen = await rows.latencies(start * 1000, end * 1000, settle_s=10)
    finally:
        await rows.stop()
    assert seen["count"] == 3 and seen["complete"]
    assert 1_000 <= seen["p50_ms"] <= seen["max_ms"] < 60_000
    assert seen["max_ms"] >= 2_000  # the row scheduled at the window's start
