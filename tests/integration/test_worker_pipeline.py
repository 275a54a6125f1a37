"""The worker's throughput switches: persistence off, and the pipelined commit order.

* ``ROUTER_PERSIST=false``: no Postgres at all (the URL points at a closed port), yet every signal
  is routed or dead-lettered on Kafka and ``/readyz`` turns 200 without a ``postgres`` check.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import orjson
import pytest

from router_stream.adapters.topics import apply_topics
from router_stream.config import DLQ, SIGNALS, Settings
from tests.integration.test_worker import (
    DESTINATIONS,
    POLICY,
    mixed_signals,
    produce,
    read_all,
    wait_for,
    worker,
)

pytestmark = pytest.mark.integration


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def without_postgres(settings: Settings, tmp_path: Path) -> Settings:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    s = settings.model_copy(update={
        "policy_file": str(path), "persist": False,
        "database_url": f"postgresql://router@127.0.0.1:{closed_port()}/nowhere"})
    await apply_topics(s, DESTINATIONS)
    return s


async def test_persist_off_routes_and_becomes_ready_without_postgres(settings, tmp_path):
    import aiohttp

    s = await without_postgres(settings, tmp_path)
    inputs = [i for i in mixed_signals(300) if i[2] != "tiny"]
    await produce(s, SIGNALS, [(k, v) for k, v, _ in inputs])
    w = worker(s)
    await w.start()
    assert w.pool is None
    runner = asyncio.create_task(w.run())
    try:
        await wait_for(lambda: w.signals.processed >= len(inputs), 30, "every signal")
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{w.http.port}/readyz"

            async def ready() -> bool:
                async with http.get(url) as r:
                    return r.status == 200

            await wait_for(ready, 10, "/readyz 200")
            async with http.get(url) as r:
                assert "postgres" not in (await r.json())["checks"]
    finally:
        w.request_stop()
        await runner

    alerts = {orjson.loads(v)["signal_id"] for _, v, e in inputs if e == "alert"}
    routed = await read_all(s, s.routed_topic("pager"))
    assert {orjson.loads(r.value)["signal_id"] for r in routed} == alerts
    decisions = await read_all(s, s.topic("router.decisions"))
    dlq = await read_all(s, s.topic(DLQ))
    want_dlq = sum(1 for *_, e in inputs if e not in ("alert", "notification", "ticket"))
    assert len(dlq) == want_dlq
    assert len(decisions) + len(dlq) == len(inputs)
