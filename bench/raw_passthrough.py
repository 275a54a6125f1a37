"""Contender (a), raw passthrough: the practical limit of Python + aiokafka on this machine.

A consumer in a consumer group copies every record (key and value) to an output topic and commits
the batch's offsets once every send of the batch is acknowledged — the same at-least-once commit
order as the router worker, with the worker's producer settings (idempotent, acks=all,
linger 5 ms, 512 KiB batches) and batch size (``--max-records`` = ROUTER_BATCH_MAX default 500),
so the difference to router-stream is the routing work, not the client configuration.

    python bench/raw_passthrough.py --bootstrap HOST:PORT --input T --output T --group G
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


async def passthrough(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(args.input, bootstrap_servers=args.bootstrap, group_id=args.group,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=args.fetch_max_wait_ms, client_id="bench-raw")
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, enable_idempotence=True,
                                acks="all", linger_ms=5, max_batch_size=512 * 1024,
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--max-records", type=int, default=500)
    ap.add_argument("--timeout-ms", type=int, default=20)
    ap.add_argument("--fetch-max-wait-ms", type=int, default=500)  # aiokafka's default
    asyncio.run(passthrough(ap.parse_args()))


if __name__ == "__main__":
    main()
