"""A faust app that delivers ``routed.slack`` and reports every delivery's outcome.

    pip install 'router-stream[faust]'
    ROUTER_KAFKA_BOOTSTRAP=127.0.0.1:19092 python examples/faust_consumer.py worker --without-web

The agent reads each routed record, does the work (``post_to_slack``: here it fails for payloads
that ask it to, so the outcomes are worth reading), and sends the outcome — ok, latency around
the work — to ``outcomes``, where the router's breakers and bandits learn from it. faust commits
the offset of a record after the agent has processed it, so a crash redelivers.

Environment: ROUTER_KAFKA_BOOTSTRAP, ROUTER_TOPIC_PREFIX (as the router's), FAUST_APP_ID (the
consumer group; default ``slack-sender``).
"""

from __future__ import annotations

import asyncio
import os
import time

import faust

from router_stream.faust import RoutedRecord, outcomes_topic, report_outcome, routed_topic

PREFIX = os.environ.get("ROUTER_TOPIC_PREFIX", "")

app = faust.App(
    os.environ.get("FAUST_APP_ID", "slack-sender"),
    broker=f"kafka://{os.environ.get('ROUTER_KAFKA_BOOTSTRAP', '127.0.0.1:19092')}",
    web_enabled=False,
    topic_partitions=1,  # faust's own internal topics only
    topic_replication_factor=1,
    producer_acks=-1,
)
slack = routed_topic(app, "slack", topic_prefix=PREFIX)
outcomes = outcomes_topic(app, topic_prefix=PREFIX)


async def post_to_slack(record: RoutedRecord) -> None:
    """The service's real work would go here."""
    await asyncio.sleep(0)
    if (record.payload or {}).get("fail"):
        raise RuntimeError("slack answered 500")


@app.agent(slack)
async def deliver(stream):  # type: ignore[no-untyped-def]
    async for record in stream:
        started = time.perf_counter()
        try:
            await post_to_slack(record)
            ok = True
        except Exception:
            ok = False
        latency_ms = (time.perf_counter() - started) * 1000.0
        await report_outcome(outcomes, record, ok=ok, latency_ms=latency_ms)


if __name__ == "__main__":
    app.main()
