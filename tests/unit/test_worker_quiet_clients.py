"""The worker's helper clients that are never polled (the offset reader behind the lag gauge, the
admin client reading watermarks) print nothing while the broker is unreachable: librdkafka's
default logger would write every reconnect attempt to stderr, outside the JSON log."""

from __future__ import annotations

import asyncio
import socket

import pytest

from router_stream.config import Settings
from router_stream.worker.rdkafka import SignalConsumer


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_offset_reader_and_admin_client_print_nothing_while_the_broker_is_down(
        capfd: pytest.CaptureFixture[str]) -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{_closed_port()}")
    consumer = SignalConsumer(settings, {"group.id": "quiet"})
    try:
        consumer._offset_reader()
        consumer._admin_client()
        await asyncio.sleep(1.5)  # librdkafka retries the connection every 100 ms or so
    finally:
        await consumer.close()
    err = capfd.readouterr().err
    assert "Connect to" not in err and "FAIL" not in err, err[:500]
