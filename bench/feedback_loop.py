"""Issue 17's acceptance: a Thompson route learns from outcomes that only the client reports.

One in-process router worker routes kind ``job`` with ``strategy: thompson`` over three
destinations; each destination has a :class:`router_stream.client.DestinationConsumer` whose
handler succeeds with its own probability (default 0.9 / 0.6 / 0.3). Nothing else writes to
``outcomes``, and the policy's breaker thresholds are out of reach, so only the bandit moves
traffic. Signals are produced in waves; the next wave goes out once the consumers have handled
the previous one, as a service would see a steady trickle rather than one burst decided before
any outcome exists. The result is each destination's share of the last ``tail`` signals.

    python3 -m bench.feedback_loop --signals 5000 --wave 100 --tail 1000

uses ROUTER_KAFKA_BOOTSTRAP, creates its topics under ``bench-<run>.loop.`` and deletes them
afterwards; ``tests/integration/test_client_loop.py`` runs a smaller loop in ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka.admin import AdminClient

from router_stream.adapters.kafka_io import OutRecord, RecordWriter
from router_stream.adapters.topics import apply_topics
from router_stream.client import DestinationConsumer, RoutedSignal
from router_stream.config import SIGNALS, Settings
from router_stream.worker import RouterWorker

DESTINATIONS = ("best", "middle", "worst")
SUCCESS = (0.9, 0.6, 0.3)

POLICY = """
name: feedback-loop
# Out of reach: the breaker must not be what moves traffic in this scenario.
breaker: {failure_threshold: 1000000, min_volume: 1000000}
destinations: {best: {}, middle: {}, worst: {}}
routes:
  job:
    strategy: thompson
    destinations: [best, middle, worst]
    bandit: {seed: 17}
defaults: {unclassified: dlq, unrouted: dlq}
"""


class DeliveryFailed(Exception):
    """The simulated service failed this delivery."""


@dataclass(frozen=True)
class LoopResult:
    signals: int
    routed_to: dict[str, str]  # signal_id -> destination
    outcomes_sent: int
    tail_share: dict[str, float]
    seconds: float


def _signal(i: int) -> bytes:
    return orjson.dumps({"signal_id": f"loop-{i:06d}", "sender_id": f"svc-{i % 13}",
                         "kind": "job", "payload": {"n": i}})


def _handler(rng: random.Random, p: float, seen: dict[str, str]):  # type: ignore[no-untyped-def]
    async def deliver(routed: RoutedSignal) -> None:
        seen[routed.signal_id] = routed.destination
        if rng.random() >= p:
            raise DeliveryFailed(routed.signal_id)
    return deliver


async def _wait(predicate, timeout_s: float, what: str, task: asyncio.Task[None]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if task.done():
            task.result()  # the worker died: raise its error
            raise RuntimeError("the worker stopped")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def run_loop(settings: Settings, *, signals: int, wave: int, tail: int,
                   success: Sequence[float] = SUCCESS, seed: int = 17) -> LoopResult:
    """Run the loop on ``settings``' broker and topic prefix (the topics are created here)."""
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY)
        s = settings.model_copy(update={"policy_file": str(policy), "persist": False,
                                        "state_dir": tmp, "checkpoint_interval_s": 0})
        await apply_topics(s, DESTINATIONS)
        return await _run(s, signals, wave, tail, success, seed)


async def _run(s: Settings, signals: int, wave: int, tail: int, success: Sequence[float],
               seed: int) -> LoopResult:
    seen: dict[str, str] = {}
    consumers = [
        DestinationConsumer(d, bootstrap_servers=s.kafka_bootstrap, topic_prefix=s.topic_prefix,
                            group_id=f"{s.group_id}-{d}")
        for d in DESTINATIONS
    ]
    worker = RouterWorker(s, http=False)
    await worker.start()
    runner = asyncio.create_task(worker.run())
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        producer = await stack.enter_async_context(RecordWriter(s))
        tasks = []
        for i, (c, p) in enumerate(zip(consumers, success, strict=True)):
            await stack.enter_async_context(c)
            tasks.append(asyncio.create_task(c.run(_handler(random.Random(seed + i), p, seen))))
        try:
            for first in range(0, signals, wave):
                n = min(wave, signals - first)
                await asyncio.gather(*await producer.send_many(
                    [OutRecord(s.topic(SIGNALS), _signal(i), key=b"k%d" % (i % 12))
                     for i in range(first, first + n)]))
                await _wait(lambda total=first + n: len(seen) >= total, 60,
                            f"deliveries of signals < {first + n}", runner)
        finally:
            for c in consumers:
                c.request_stop()
            await asyncio.gather(*tasks)
            worker.request_stop()
            await runner
        sent = sum(c.reporter.stats.sent for c in consumers)
    elapsed = time.monotonic() - started
    last = Counter(seen[f"loop-{i:06d}"] for i in range(signals - tail, signals))
    return LoopResult(signals, seen, sent, {d: last[d] / tail for d in DESTINATIONS}, elapsed)


async def _delete_prefix(bootstrap: str, prefix: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    listed = await asyncio.to_thread(admin.list_topics, None, 30.0)
    doomed = [t for t in listed.topics if t.startswith(prefix)]
    if doomed:
        futures = admin.delete_topics(doomed, operation_timeout=30.0)
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures.values()))


async def _main(args: argparse.Namespace) -> int:
    logging.getLogger("router_stream.client").setLevel(logging.ERROR)  # the simulated failures
    run = uuid.uuid4().hex[:8]
    s = Settings(topic_prefix=f"bench-{run}.loop.", group_id=f"bench-{run}-loop")
    try:
        r = await run_loop(s, signals=args.signals, wave=args.wave, tail=args.tail)
    finally:
        await _delete_prefix(s.kafka_bootstrap, s.topic_prefix)
    shares = ", ".join(f"{d} {r.tail_share[d]:.1%}" for d in DESTINATIONS)
    print(f"{r.signals} signals in {r.seconds:.1f}s, {r.outcomes_sent} outcomes reported by the "
          f"client; last {args.tail}: {shares}")
    return 0 if r.tail_share["best"] >= args.goal else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--signals", type=int, default=5000)
    ap.add_argument("--wave", type=int, default=100)
    ap.add_argument("--tail", type=int, default=1000)
    ap.add_argument("--goal", type=float, default=0.8, help="exit 1 below this share of 'best'")
    sys.exit(asyncio.run(_main(ap.parse_args())))


if __name__ == "__main__":
    main()
