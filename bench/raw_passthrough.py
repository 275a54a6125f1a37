"""Contender (a), raw passthrough: the practical limit of Python + a Kafka client on this machine.

A consumer in a consumer group copies every record (key and value) to an output topic and commits
the batch's offsets once every send of the batch is acknowledged — the same at-least-once commit
order as the router worker, with its producer settings (idempotent, acks=all, 512 KiB batches)
and batch size (``--max-records`` = ROUTER_BATCH_MAX default 500), so the difference to
router-stream is the routing work, not the client configuration. One exception: this loop
lingers 5 ms where the worker does not linger: the baseline's throughput is the one its
figures were first taken with (a linger only helps a passthrough's requests), and its latency
at 1k/s carries those 5 ms.

``--client aiokafka`` is the loop on aiokafka; ``--client confluent`` the same loop on
confluent-kafka (librdkafka), bridged to asyncio as the worker does it: ``poll`` blocks for the
first record in a thread of its own and ``consume(n, 0)`` takes what is buffered after it; a
second thread serves the producer's delivery reports and resolves one asyncio future per record.

    python bench/raw_passthrough.py --bootstrap HOST:PORT --input T --output T --group G
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

LINGER_MS = 5
BATCH_BYTES = 512 * 1024


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def passthrough_aiokafka(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    stop = _stop_event()
    consumer = AIOKafkaConsumer(args.input, bootstrap_servers=args.bootstrap, group_id=args.group,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=args.fetch_max_wait_ms, client_id="bench-raw")
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, enable_idempotence=True,
                                acks="all", linger_ms=LINGER_MS, max_batch_size=BATCH_BYTES,
                                client_id="bench-raw")
    await consumer.start()
    await producer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=args.timeout_ms,
                                             max_records=args.max_records)
            if not batches:
                continue
            futures = []
            offsets: dict[TopicPartition, int] = {}
            for tp, records in batches.items():
                for r in records:
                    futures.append(await producer.send(args.output, r.value, key=r.key))
                offsets[tp] = records[-1].offset + 1
            await asyncio.gather(*futures)
            await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()


async def passthrough_confluent(args: argparse.Namespace) -> None:
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    stop = _stop_event()
    loop = asyncio.get_running_loop()
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": args.fetch_max_wait_ms, "client.id": "bench-raw"})
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True,
                         "acks": "all", "linger.ms": LINGER_MS, "batch.size": BATCH_BYTES,
                         "client.id": "bench-raw"})
    consumer.subscribe([args.input])
    polling = threading.Event()
    polling.set()

    def serve_deliveries() -> None:
        while polling.is_set():
            producer.poll(0.1)

    def delivered(fut: asyncio.Future[Any]) -> Any:
        def report(err: Any, msg: Any) -> None:
            if err is None:
                loop.call_soon_threadsafe(_resolve, fut, None)
            else:
                loop.call_soon_threadsafe(_resolve, fut, KafkaException(err))
        return report

    poller = threading.Thread(target=serve_deliveries, name="bench-deliveries", daemon=True)
    poller.start()
    fetcher = ThreadPoolExecutor(1, thread_name_prefix="bench-consume")
    timeout_s = max(args.timeout_ms, 100) / 1000
    try:
        while not stop.is_set():
            msgs = await loop.run_in_executor(fetcher, _take, consumer, args.max_records,
                                              timeout_s)
            if not msgs:
                continue
            futures: list[asyncio.Future[Any]] = []
            offsets: dict[tuple[str, int], int] = {}
            for m in msgs:
                if m.error() is not None:
                    continue
                fut = loop.create_future()
                producer.produce(args.output, m.value(), m.key(), on_delivery=delivered(fut))
                futures.append(fut)
                offsets[(m.topic(), m.partition())] = m.offset() + 1
            await asyncio.gather(*futures)
            commit = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            await loop.run_in_executor(fetcher, lambda c=commit: consumer.commit(
                offsets=c, asynchronous=False))
    finally:
        await loop.run_in_executor(fetcher, consumer.close)
        fetcher.shutdown()
        producer.flush(5)
        polling.clear()
        poller.join(1)


def _take(consumer: Any, max_records: int, timeout_s: float) -> list[Any]:
    """Up to ``max_records`` messages, waiting at most ``timeout_s`` for the first one only:
    librdkafka's ``consume(n, timeout)`` waits the whole timeout unless ``n`` arrive."""
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    return [first, *consumer.consume(max_records - 1, 0)]


def _resolve(fut: asyncio.Future[Any], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client", choices=("aiokafka", "confluent"), default="aiokafka")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--max-records", type=int, default=500)
    ap.add_argument("--timeout-ms", type=int, default=20)
    ap.add_argument("--fetch-max-wait-ms", type=int, default=500)  # both clients' default
    args = ap.parse_args()
    run = passthrough_confluent if args.client == "confluent" else passthrough_aiokafka
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
