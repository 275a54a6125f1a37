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

Measurer (``run_measurer``): reads every output topic of the contender from the beginning, one
consumer per topic (topics are fresh per contender), counts records (``received``; each signal
yields exactly one output record for every contender, so ``sent - received`` is the lag) and, for
records whose scheduled time falls inside the latency window, keeps ``receipt - scheduled`` in ms.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

CHUNK = 2_000  # most signals sent between two looks at the shared counters


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

# Both are librdkafka (confluent-kafka) clients driven by a plain loop: no event loop of their own
# to share the process with, and a per-record cost well below the contenders'.


def quiet() -> dict[str, object]:
    """librdkafka settings that keep its connection chatter out of the run's output (the
    harness reports what matters)."""
    return {"log_level": 2}


def produce_all(bootstrap: str,
                records: Iterable[tuple[str, bytes, bytes, list[tuple[str, bytes]] | None]]
                ) -> int:
    """Produce ``(topic, key, value, headers)`` records with acks=all, as fast as librdkafka
    takes them, and wait until every one is acknowledged; raises if any was not. Returns how
    many were produced. Keys are partitioned with Kafka's murmur2, like the Java client."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20,
                         "batch.size": 1024 * 1024, "partitioner": "murmur2_random",
                         "client.id": "bench-feed", **quiet()})
    failed: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    n = 0
    for topic, key, value, headers in records:
        while True:
            try:
                producer.produce(topic, value, key=key, headers=headers or [],
                                 on_delivery=delivered)
                break
            except BufferError:  # librdkafka's queue is full: let deliveries drain it
                producer.poll(0.05)
        n += 1
    left = producer.flush(120.0)
    if left or failed:
        raise KafkaException(failed[0] if failed else f"{left} records not acknowledged")
    return n


def run_generator(shared: Shared, bootstrap: str, signals_topic: str, health_topic: str,
                  id_prefix: str, seed: int) -> None:
    from confluent_kafka import Producer

    from bench.workload import Workload, WorkloadSpec

    wl = Workload(WorkloadSpec(seed=seed))
    prefix = id_prefix.encode()
    producer = Producer({"bootstrap.servers": bootstrap, "acks": 1, "linger.ms": 1,
                         "batch.size": 256 * 1024, "client.id": "bench-loadgen", **quiet()})

    def send(topic: str, value: bytes, key: bytes) -> None:
        while True:
            try:
                producer.produce(topic, value, key=key)
                return
            except BufferError:  # librdkafka's queue is full: let deliveries drain it
                producer.poll(0.005)

    shared.gen_ready.set()
    i = health = 0
    epoch = -1
    anchor_t, anchor_i, rate = 0.0, 0, 0.0
    win = shared.window
    try:
        while not shared.stop.value:
            producer.poll(0)  # serve delivery reports
            if shared.epoch.value != epoch:
                epoch, rate = shared.epoch.value, shared.rate.value
                anchor_t, anchor_i = time.time(), i
            if rate <= 0 or (math.isinf(rate) and shared.burst.value <= 0):
                time.sleep(0.005)
                continue
            now = time.time()
            if math.isinf(rate):
                due = min(CHUNK, shared.burst.value)
                shared.burst.value -= due
            else:
                due = min(CHUNK, anchor_i + int((now - anchor_t) * rate) + 1 - i)
                if due <= 0:
                    time.sleep(0.0005)
                    continue
            w0, w1 = win[0], win[1]
            in_window = 0
            for _ in range(due):
                sched = now if math.isinf(rate) else anchor_t + (i - anchor_i) / rate
                sched_us = int(sched * 1e6)
                key, value = wl.signal(i, sched_us, prefix)
                send(signals_topic, value, key)
                if w0 <= sched_us < w1:
                    in_window += 1
                if wl.is_health_turn(i):
                    hkey, hvalue = wl.health(health, sched_us // 1000)
                    send(health_topic, hvalue, hkey)
                    health += 1
                i += 1
            shared.window_sent.value += in_window
            shared.sent.value = i
            shared.behind_s.value = 0.0 if math.isinf(rate) else max(0.0, time.time() - sched)
    finally:
        producer.flush(10)


# --- measurer ---------------------------------------------------------------------------------


MEASURER_FETCH_WAIT_MS = 500
"""How long the broker holds a measuring consumer's fetch when nothing arrives. Not a latency
floor (a fetch is answered as soon as a record is in: ``fetch.min.bytes`` 1); it bounds what an
idle reader costs the broker (every fetch request is CPU it does not give the contender)."""


def run_measurer(shared: Shared, conn: Connection, bootstrap: str, topics: list[str]) -> None:
    """One consumer per output topic, each on a thread of its own, as the downstream services
    of a routed topic each read their own: one consumer over every output partition made the
    broker re-read all of them for each record that arrived on any (measured: 0.13-0.15 of a core
    at 1k signals/s, and twice the worker's p50; docs/performance.md)."""
    tally = _Tally(shared, len(topics))
    readers = [threading.Thread(target=_read_topic, args=(tally, bootstrap, topic),
                                name=f"measure-{topic}", daemon=True) for topic in topics]
    for reader in readers:
        reader.start()
    if not tally.ready.wait(60) or tally.failed:
        raise RuntimeError(f"measuring consumer: {tally.failed or 'no assignment in 60 s'}")
    shared.meas_ready.set()
    try:
        while not shared.stop.value:
            time.sleep(0.02)
            shared.received.value = tally.received
            while conn.poll():
                if conn.recv() == "take":
                    conn.send(tally.take())
    finally:
        for reader in readers:
            reader.join(5)


class _Tally:
    """What the per-topic readers saw, merged: records received, latencies in the window."""

    def __init__(self, shared: Shared, readers: int) -> None:
        self.shared = shared
        self.received = 0
        self.failed: str | None = None
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._unassigned = readers

    def assigned(self) -> None:
        """One more reader has its partitions; ``ready`` once every reader has."""
        with self._lock:
            self._unassigned -= 1
            if self._unassigned == 0:
                self.ready.set()

    def add(self, received: int, latencies: list[float]) -> None:
        with self._lock:
            self.received += received
            self._latencies.extend(latencies)

    def take(self) -> list[float]:
        with self._lock:
            taken, self._latencies = self._latencies, []
        return taken


def _read_topic(tally: _Tally, bootstrap: str, topic: str) -> None:
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from bench.workload import sched_us_of

    # Assigned every partition from the beginning, never joining its (unique) group: the
    # contender created the topics before the measurer starts.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                         "enable.auto.commit": False,
                         "fetch.wait.max.ms": MEASURER_FETCH_WAIT_MS,
                         "isolation.level": "read_committed",  # router_eos: committed batches
                         "client.id": "bench-measurer", **quiet()})
    shared = tally.shared
    try:
        listed = consumer.list_topics(topic, 30.0).topics
        if topic in listed and listed[topic].error is None:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                             for p in sorted(listed[topic].partitions)])
        tally.assigned()
        win = shared.window
        while not shared.stop.value:
            # returns at the first record; consume(n, t) would wait all of t unless n arrive
            first = consumer.poll(0.2)
            if first is None:
                continue
            messages = [first, *consumer.consume(19_999, 0)]
            now_us = time.time() * 1e6
            w0, w1 = win[0], win[1]
            received = 0
            latencies = []
            for msg in messages:
                if msg.error() is not None:
                    continue
                received += 1
                if w1 <= 0:
                    continue
                s = sched_us_of(msg.value())
                if s is not None and w0 <= s < w1:
                    latencies.append((now_us - s) / 1000.0)
            tally.add(received, latencies)
    except Exception as exc:  # noqa: BLE001 - reported by run_measurer
        tally.failed = f"{topic}: {exc!r}"
        tally.ready.set()
    finally:
        consumer.close()


def spawn_context() -> Any:
    # spawn, not fork: the orchestrator runs an event loop and client threads a fork would copy.
    return mp.get_context("spawn")
