"""Fixtures for the projection: the records a worker would produce for a batch, as a consumer of
router.decisions / router.dlq / router.events reads them (loaded with ``pytest_plugins``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from router_stream.core.outputs import BatchResult
from router_stream.worker.sink import batch_events


@dataclass
class Produced:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)


class Log:
    """Appends records to in-memory topics, with offsets and timestamps as a broker would."""

    def __init__(self, prefix: str = "t.") -> None:
        self.prefix = prefix
        self.offsets: dict[str, int] = {}

    def append(self, logical: str, key: bytes | None, value: bytes | None, ts_ms: int,
               headers: list[tuple[str, bytes | None]] | None = None) -> Produced:
        topic = self.prefix + logical
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        return Produced(topic, 0, offset, key, value, ts_ms, list(headers or []))

    def of(self, result: BatchResult, ts_ms: int) -> list[Produced]:
        """A batch's decisions, DLQ records and events, as produced by ``send_outputs``."""
        out = [self.append("router.decisions", d.signal_id.encode(), d.to_json(), ts_ms)
               for d in result.decisions]
        out += [self.append("router.dlq", q.entry.original_key, q.entry.original_value, ts_ms,
                            q.headers) for q in result.dlq]
        out += [self.append("router.events", k, v, ts_ms) for k, v in batch_events(result)]
        return out


@pytest.fixture
def kafka_log() -> Callable[..., Any]:
    """``kafka_log(prefix)`` → a :class:`Log`."""
    return Log


@pytest.fixture
def project_to_idle() -> Callable[..., Any]:
    """``await project_to_idle(settings)``: run ``router-stream persist`` until it has written
    everything on its topics (for a test whose worker crashed before its own projection did)."""
    from router_stream.projection import Projection

    async def run(settings: Any, idle_s: float = 0.3) -> Projection:
        projection = Projection(settings, http=False)
        async with asyncio.timeout(60):
            await projection.run_until_idle(idle_s)
        return projection

    return run
