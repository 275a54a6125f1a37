"""A rule that backtracks catastrophically under Python's ``re`` cannot stall a worker (issue 21).

``^(a+)+$`` on ``"a"*n + "!"`` took 158 s at n = 32 on the event loop under ``re``: ``/livez``
stopped answering and the group rebalanced. Rules now run on RE2 (linear time), so the worker
decides such signals as fast as any other while its health endpoint keeps answering.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from router_stream.config import SIGNALS
from tests.support.policies import edited
from tests.support.worker import (
    POLICY,
    counts,
    prepare,
    produce,
    signal,
    wait_for,
    worker,
)

pytestmark = pytest.mark.integration

EVIL_RULE = {"name": "evil", "when": {"field": "payload.text", "regex": "^(a+)+$"},
             "kind": "alert"}


async def test_a_catastrophic_pattern_is_decided_while_livez_keeps_answering(settings, tmp_path):
    import aiohttp

    s = await prepare(settings, tmp_path, edited(POLICY, add={"classify[0]": EVIL_RULE}))
    lengths = [*range(24, 41, 2), 10_000]
    crafted = [(b"k", signal(i, payload={"text": "a" * n + "!"})) for i, n in enumerate(lengths)]
    matching = [(b"k", signal(100 + i, payload={"text": "a" * n}))
                for i, n in enumerate(lengths)]
    w = worker(s)
    await w.start()
    runner = asyncio.create_task(w.run())
    answers: list[int] = []
    try:
        base = f"http://127.0.0.1:{w.http.port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async def livez() -> None:
                while True:  # a liveness probe: every answer within its 5 s timeout
                    async with http.get(f"{base}/livez") as r:
                        answers.append(r.status)
                    await asyncio.sleep(0.05)

            probe = asyncio.create_task(livez())
            started = time.monotonic()
            await produce(s, SIGNALS, crafted + matching)
            took = await wait_for(lambda: w.signals.processed >= 2 * len(lengths), 60,
                                  "every crafted signal decided")
            assert not probe.done(), probe.exception()  # no probe failed or timed out
            probe.cancel()
            async with http.get(f"{base}/metrics") as r:
                metrics = await r.text()
    finally:
        w.request_stop()
        await runner
    assert answers and set(answers) == {200}
    await wait_for(lambda: _persisted(s, 2 * len(lengths)), 30, "rows written")
    decisions, _, dlq = await counts(s)
    assert (decisions, dlq) == (len(lengths), len(lengths))  # matches routed, "!" unclassified
    latency = _latency(metrics)
    print(f"\n{2 * len(lengths)} signals decided {took:.2f}s after produce"
          f" ({time.monotonic() - started:.2f}s incl. produce); router_latency_seconds mean"
          f" {latency * 1000:.1f} ms; /livez answered {len(answers)} times, all 200")


async def _persisted(s, n: int) -> bool:
    decisions, _, dlq = await counts(s)
    return decisions + dlq >= n


def _latency(exposition: str) -> float:
    total = count = 0.0
    for line in exposition.splitlines():
        if line.startswith("router_latency_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("router_latency_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total / count if count else float("nan")
