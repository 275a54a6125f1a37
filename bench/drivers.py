"""The two harness processes around a contender: the open-loop load generator and the measuring
consumer. Each runs in its own process (multiprocessing, spawn) so neither shares a GIL with the
other or with the orchestrator; they talk to it through shared counters only.

Generator (``run_generator``): offers ``rate`` signals/s on an open-loop schedule. Whenever the
orchestrator changes the rate (and bumps ``epoch``), the schedule is re-anchored: signal k after
the anchor is *due* at ``anchor + k / rate`` and is stamped with that due time whether or not the
process managed to send it on time, so a generator (or broker) that falls behind shows up as
latency instead of silently lowering the offered load (no coordinated omission). ``behind_s``
says how late the last send was; ``rate = inf`` sends ``burst`` signals as fast as possible.
Health events go to ``source-health`` after every 100th signal (1 % of the signal rate).

Measurer (``run_measurer``): reads every output topic of the contender from the beginning
(topics are fresh per contender), counts records (``received``; each signal yields exactly one
output record for every contender, so ``sent - received`` is the lag) and, for records whose
scheduled time falls inside the latency window, keeps ``receipt - scheduled`` in ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

CHUNK = 2_000  # most signals sent between two yields to the event loop


@dataclass
class Shared:
    """Counters shared by the orchestrator, the generator and the measurer."""

    rate: Any          # Value('d'): offered signals/s; 0 = idle; inf = burst
    epoch: Any         # Value('q'): bumped on every rate change (re-anchor the schedule)
    burst: Any         # Value('q'): signals still to send in burst mode
    sent: Any          # Value('q'): signals handed to the producer
    behind_s: Any      # Value('d'): lateness of the last send against its schedule
    received: Any      # Value('q'): output records the measurer saw
    window: Any        # Array('d', 2): [start_us, end_us) of scheduled times whose latency counts
    window_sent: Any   # Value('q'): signals the generator sent inside the window
    stop: Any          # Value('b')
    gen_ready: Any     # Event
    meas_ready: Any    # Event

    @classmethod
    def create(cls, ctx: Any) -> Shared:
        return cls(ctx.Value("d", 0.0, lock=False), ctx.Value("q", 0, lock=False),
                   ctx.Value("q", 0, lock=False), ctx.Value("q", 0, lock=False),
                   ctx.Value("d", 0.0, lock=False), ctx.Value("q", 0, lock=False),
                   ctx.Array("d", [0.0, 0.0], lock=False), ctx.Value("q", 0, lock=False),
                   ctx.Value("b", 0, lock=False), ctx.Event(), ctx.Event())

    def set_rate(self, rate: float, burst: int = 0) -> None:
        self.burst.value = burst
        self.rate.value = rate
        self.epoch.value += 1

    def set_window(self, start_us: float, end_us: float) -> None:
        self.window_sent.value = 0
        self.window[0], self.window[1] = start_us, end_us


# --- generator --------------------------------------------------------------------------------


def _quiet() -> None:
    # aiokafka logs every retriable produce/fetch error; the harness reports what matters.
    import logging

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def run_generator(shared: Shared, bootstrap: str, signals_topic: str, health_topic: str,
                  id_prefix: str, seed: int) -> None:
    _quiet()
    asyncio.run(_generate(shared, bootstrap, signals_topic, health_topic, id_prefix.encode(), seed))


async def _generate(shared: Shared, bootstrap: str, signals_topic: str, health_topic: str,
                    id_prefix: bytes, seed: int) -> None:
    from aiokafka import AIOKafkaProducer

    from bench.workload import Workload, WorkloadSpec

    wl = Workload(WorkloadSpec(seed=seed))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=1,
                                max_batch_size=256 * 1024, client_id="bench-loadgen")
    await producer.start()
    shared.gen_ready.set()
    i = health = 0
    epoch = -1
    anchor_t, anchor_i, rate = 0.0, 0, 0.0
    win = shared.window
    try:
        while not shared.stop.value:
            if shared.epoch.value != epoch:
                epoch, rate = shared.epoch.value, shared.rate.value
                anchor_t, anchor_i = time.time(), i
            if rate <= 0 or (math.isinf(rate) and shared.burst.value <= 0):
                await asyncio.sleep(0.005)
                continue
            now = time.time()
            if math.isinf(rate):
                due = min(CHUNK, shared.burst.value)
                shared.burst.value -= due
            else:
                due = min(CHUNK, anchor_i + int((now - anchor_t) * rate) + 1 - i)
                if due <= 0:
                    await asyncio.sleep(0.0005)
                    continue
            w0, w1 = win[0], win[1]
            in_window = 0
            for _ in range(due):
                sched = now if math.isinf(rate) else anchor_t + (i - anchor_i) / rate
                sched_us = int(sched * 1e6)
                key, value = wl.signal(i, sched_us, id_prefix)
                await producer.send(signals_topic, value, key=key)
                if w0 <= sched_us < w1:
                    in_window += 1
                if wl.is_health_turn(i):
                    hkey, hvalue = wl.health(health, sched_us // 1000)
                    await producer.send(health_topic, hvalue, key=hkey)
                    health += 1
                i += 1
            shared.window_sent.value += in_window
            shared.sent.value = i
            shared.behind_s.value = 0.0 if math.isinf(rate) else max(0.0, time.time() - sched)
            await asyncio.sleep(0)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 10)


# --- measurer ---------------------------------------------------------------------------------


def run_measurer(shared: Shared, conn: Connection, bootstrap: str, topics: list[str]) -> None:
    _quiet()
    asyncio.run(_measure(shared, conn, bootstrap, topics))


async def _measure(shared: Shared, conn: Connection, bootstrap: str, topics: list[str]) -> None:
    from aiokafka import AIOKafkaConsumer

    from bench.workload import sched_us_of

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=20, client_id="bench-measurer")
    await consumer.start()
    consumer.subscribe(topics)
    latencies: list[float] = []
    received = 0
    win = shared.window
    ready = False
    try:
        while not shared.stop.value:
            batches = await consumer.getmany(timeout_ms=20, max_records=20_000)
            if not ready and consumer.assignment():
                shared.meas_ready.set()
                ready = True
            now_us = time.time() * 1e6
            w0, w1 = win[0], win[1]
            for records in batches.values():
                received += len(records)
                if w1 <= 0:
                    continue
                for r in records:
                    s = sched_us_of(r.value)
                    if s is not None and w0 <= s < w1:
                        latencies.append((now_us - s) / 1000.0)
            shared.received.value = received
            while conn.poll():
                if conn.recv() == "take":
                    conn.send(latencies)
                    latencies = []
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), 10)


def spawn_context() -> Any:
    # spawn, not fork: the orchestrator runs an event loop and client threads a fork would copy.
    return mp.get_context("spawn")
