"""The projection's Prometheus metrics, on a registry of its own (several in one test process).

``router_projection_lag_seconds`` is the age of the oldest record fetched but not yet written
to Postgres (0 when nothing is waiting); it is read at each scrape, so it keeps growing while
the database is down and the projection retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class ProjectionMetrics:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self.oldest_pending_ts: float | None = None  # set by the projection
        self.lag = Gauge("router_projection_lag_seconds",
                         "Age of the oldest record not yet written to Postgres", registry=r)
        self.lag.set_function(self._lag)
        self.rows = Counter("router_projection_rows", "Rows written to Postgres", ["table"],
                            registry=r)
        self.rows_skipped = Counter(
            "router_projection_rows_skipped",
            "Rows Postgres refused for their content (logged with their Kafka position)",
            ["table"], registry=r)
        self.bad_records = Counter(
            "router_projection_bad_records",
            "Records that are not a decision, DLQ record or event (logged and skipped)",
            ["topic"], registry=r)
        self.records = Counter("router_projection_records", "Records projected", ["topic"],
                               registry=r)
        self.transient_retries = Counter(
            "router_projection_transient_retries", "Batches retried after a transient failure",
            registry=r)
        self.dlq_backlog = Gauge("dlq_backlog", "Pending dlq_entries rows", registry=r)
        self.ready = Gauge("router_ready", "1 when /readyz answers 200", registry=r)

    def _lag(self) -> float:
        oldest = self.oldest_pending_ts
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def exposition_off_loop(self) -> bytes:
        return await asyncio.to_thread(self.exposition)
