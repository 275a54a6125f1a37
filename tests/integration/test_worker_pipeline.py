"""The worker's throughput switches: persistence off, and the pipelined commit order.

* ``ROUTER_PERSIST=false``: no Postgres at all (the URL points at a closed port), yet every signal
  is routed or dead-lettered on Kafka and ``/readyz`` turns 200 without a ``postgres`` check.
* Pipelining (``hotpath.PIPELINE_DEPTH``): batches overlap, yet decide / produce / commit happen
  in batch order; a crash with several batches in flight loses nothing and duplicates no row.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from router_stream.adapters.topics import apply_topics
from router_stream.config import DLQ, SIGNALS, Settings
from router_stream.worker import RouterWorker
from router_stream.worker.hotpath import PIPELINE_DEPTH
from tests.support.worker import (
    DESTINATIONS,
    POLICY,
    SimulatedCrash,
    counts,
    mixed_signals,
    prepare,
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
        "policy_file": str(path), "persist": False, "worker_persist": False,
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


# --- the pipelined commit order ----------------------------------------------------------------


async def test_batches_overlap_yet_commit_in_batch_order(settings, tmp_path):
    """Several batches are in flight at once, and still they are committed in batch order."""
    s = (await prepare(settings, tmp_path)).model_copy(update={"batch_max": 20})
    inputs = [i for i in mixed_signals(600) if i[2] != "tiny"]
    await produce(s, SIGNALS, [(k, v) for k, v, _ in inputs])
    order: dict[str, list[int]] = {"decided": [], "produced": [], "committed": []}
    overlap = []
    w: RouterWorker

    async def hook(step: str, result: Any) -> None:
        if step in order:
            order[step].append(id(result))
        overlap.append(w.signals.in_flight if w.signals else 0)

    w = worker(s, on_step=hook)
    await w.run_until_idle(0.5)
    # acknowledgements of overlapping batches may arrive in any order; commits never do
    assert order["decided"] == order["committed"]
    assert sorted(order["produced"]) == sorted(order["decided"])
    assert len(order["committed"]) >= len(inputs) // 20
    assert max(overlap) >= 2, "the pipeline never had two batches in flight"
    d, unique, q = await counts(s)
    assert d == unique and d + q == len(inputs)


async def test_crash_mid_pipeline_reprocesses_without_loss_or_duplicate_rows(
        settings, tmp_path, project_to_idle):
    """Dies as batch 3 is acknowledged while later batches are decided and sent: the restart
    re-processes from the last commit (batch 2's), nothing is lost, Postgres has one row each."""
    s = (await prepare(settings, tmp_path)).model_copy(update={"batch_max": 25})
    inputs = [i for i in mixed_signals(500) if i[2] != "tiny"]
    await produce(s, SIGNALS, [(k, v) for k, v, _ in inputs])
    seen = {"produced": 0, "rows": 0}
    in_flight_at_crash: list[int] = []
    w: RouterWorker

    async def hook(step: str, result: Any) -> None:
        if step == "produced":
            seen["produced"] += 1
            seen["rows"] += len(result.decisions) + len(result.dlq)
            if seen["produced"] == 3:  # the front runs ahead into the pipeline meanwhile
                await wait_for(lambda: w.signals.in_flight >= 2, 10, "a batch behind this one")
                in_flight_at_crash.append(w.signals.in_flight)
                raise SimulatedCrash("crash mid-pipeline")

    w = worker(s, on_step=hook)
    with pytest.raises(SimulatedCrash):
        await w.run_until_idle(0.5)
    assert in_flight_at_crash and in_flight_at_crash[0] >= 2
    await project_to_idle(s)
    d, unique, q = await counts(s)
    # batches 1-3 are on Kafka and so in Postgres; later ones only if they were acknowledged
    assert d == unique and seen["rows"] <= d + q <= seen["rows"] + 25 * PIPELINE_DEPTH

    await worker(s).run_until_idle(0.5)
    d, unique, q = await counts(s)
    assert d == unique and d + q == len(inputs)
    routed = await read_all(s, s.routed_topic("pager"))
    alerts = {orjson.loads(v)["signal_id"] for _, v, e in inputs if e == "alert"}
    assert {orjson.loads(r.value)["signal_id"] for r in routed} >= alerts
