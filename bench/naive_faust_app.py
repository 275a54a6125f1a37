"""Contender (b), the naive faust agent the issue describes: ``async for v in stream: await
out.send(value=v)``, at-least-once (faust's default guarantee and commit cadence), raw bytes in
and out. Deliberately untuned: this is the baseline router-stream must beat by 5x.

    BENCH_FAUST_APP_ID=... BENCH_BOOTSTRAP=host:port BENCH_INPUT=... BENCH_OUTPUT=... \\
    BENCH_PARTITIONS=12 BENCH_DATADIR=/tmp/x \\
        python bench/naive_faust_app.py worker --without-web -l warning
"""

from __future__ import annotations

import os

import faust

app = faust.App(
    os.environ["BENCH_FAUST_APP_ID"],
    broker=f"kafka://{os.environ['BENCH_BOOTSTRAP']}",
    value_serializer="raw",
    key_serializer="raw",
    topic_partitions=int(os.environ.get("BENCH_PARTITIONS", "12")),
    processing_guarantee="at_least_once",
    datadir=os.environ.get("BENCH_DATADIR", "/tmp/router-stream-bench-faust"),
    web_enabled=False,  # `worker` turns it on again (--with-web is its default): --without-web
)
source = app.topic(os.environ["BENCH_INPUT"], value_type=bytes, value_serializer="raw")
out = app.topic(os.environ["BENCH_OUTPUT"], value_type=bytes, value_serializer="raw")


@app.agent(source)
async def passthrough(stream):  # type: ignore[no-untyped-def]
    async for v in stream:
        await out.send(value=v)


if __name__ == "__main__":
    app.main()
