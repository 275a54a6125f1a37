"""When a decision row becomes visible in Postgres, for the router_pg contender's latency windows.

A statement trigger, installed in the contender's own bench database only (not a migration),
records each transaction's decision rows — their signals' scheduled times (``signal_ts``, the
``ts`` the generator stamps: the scheduled send time in ms) — in ``bench_visible`` and sends a
``NOTIFY`` with the transaction id. Postgres delivers a notification when its transaction
commits, i.e. when the rows become visible to everyone; the listener takes that moment, so
latency = notification received − scheduled send time, for the signals scheduled inside the
window. Signals that end in the DLQ have no decision row and are not counted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from bench import stats

CHANNEL = "bench_decision_rows"

INSTALL = f"""
CREATE TABLE bench_visible (txid bigint PRIMARY KEY, sched_ms bigint[] NOT NULL);
CREATE FUNCTION bench_decision_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_visible
        SELECT txid_current(), array_agg((extract(epoch FROM signal_ts) * 1000)::bigint)
        FROM new_rows WHERE signal_ts IS NOT NULL
        HAVING count(*) > 0
    ON CONFLICT (txid) DO UPDATE SET sched_ms = bench_visible.sched_ms || EXCLUDED.sched_ms;
    PERFORM pg_notify('{CHANNEL}', txid_current()::text);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_decision_rows AFTER INSERT ON routing_decisions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench_decision_rows();
"""


async def install(database_url: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute(INSTALL)
    finally:
        await conn.close()


class RowVisibility:
    """Listens for committed decision rows; :meth:`latencies` of one window of scheduled times."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._conn: Any = None
        self._seen: list[tuple[float, int]] = []  # (received at, epoch s; txid)

    async def start(self) -> None:
        self._conn = await asyncpg.connect(self.database_url, timeout=10)
        await self._conn.add_listener(CHANNEL, self._notified)

    async def stop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.wait_for(conn.close(), 10)

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._seen.append((time.time(), int(payload)))

    async def latencies(self, start_us: float, end_us: float, *, settle_s: float = 5.0
                        ) -> dict[str, Any]:
        """Latency summary (ms) of the decision rows of signals scheduled in [start, end); waits
        up to ``settle_s`` for the projection to commit rows scheduled up to ``end``."""
        lo, hi = start_us / 1000.0, end_us / 1000.0
        out: list[float] = []
        done: set[int] = set()
        limit = time.monotonic() + settle_s
        newest = 0.0
        while True:
            for received, txid in list(self._seen):
                if txid in done:
                    continue
                done.add(txid)
                sched = await self._conn.fetchval(
                    "SELECT sched_ms FROM bench_visible WHERE txid = $1", txid) or []
                newest = max([newest, *sched])
                out.extend(received * 1000.0 - s for s in sched if lo <= s < hi)
            if newest >= hi or time.monotonic() > limit:
                break
            await asyncio.sleep(0.1)
        self._seen = [(r, t) for r, t in self._seen if t not in done]
        return {**stats.summarize_latencies(out), "complete": newest >= hi}
