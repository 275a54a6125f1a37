"""A minimal faust worker with a changelog-backed Table, for the recovery smoke test.

Each record on COUNTER_IN increments ``counts[key]`` and publishes the new count to COUNTER_OUT,
so the test can see what the table held after a restart.
"""

import os
from pathlib import Path

import faust

app = faust.App(
    os.environ["COUNTER_APP_ID"],
    broker=f"kafka://{os.environ['COUNTER_BOOTSTRAP']}",
    store="memory://",  # nothing on local disk: a restart can only recover from the changelog
    topic_partitions=1,
    topic_replication_factor=1,
    web_enabled=False,  # `worker` turns it on again unless run with --without-web
    producer_acks=-1,
    broker_commit_every=1,
    # faust's default session is 60 s; a member the broker stops hearing from holds a commit
    # (and with it faust's fetch loop) until the session expires, which the test cannot wait for
    broker_session_timeout=10.0,
    broker_heartbeat_interval=1.0,
)
source = app.topic(os.environ["COUNTER_IN"], key_type=str, value_type=str)
sink = app.topic(os.environ["COUNTER_OUT"], key_serializer="raw", value_serializer="raw")
counts = app.Table("counts", default=int, partitions=1)


@app.agent(source)
async def count(stream):
    async for key, _value in stream.items():
        counts[key] += 1
        await sink.send(key=key.encode(), value=str(counts[key]).encode())


@app.task
async def announce_ready() -> None:
    """Tell the test that table recovery has finished (faust starts app tasks only after it).

    The test produces its input only after this file appears: records fetched while faust is
    still recovering can be dropped from its in-memory queue (faust-streaming #596, open), which
    would fail this smoke test for a reason that is not the one it checks.
    """
    Path("ready").write_text("ready\n")


if __name__ == "__main__":
    app.main()
