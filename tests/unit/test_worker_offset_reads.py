"""The worker's offset reads through its admin client (lag gauge, burst mode's idle checks)."""

from __future__ import annotations

import concurrent.futures
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from router_stream.config import Settings
from router_stream.errors import BrokerUnavailable
from router_stream.worker import rdkafka
from router_stream.worker.rdkafka import Partition, SignalConsumer


class _StaleAfterRestart:
    """The first client made keeps failing as librdkafka's did after a broker restart; a new
    one answers."""

    made: list[_StaleAfterRestart] = []

    def __init__(self, conf: dict[str, Any]) -> None:
        self.stale = not self.made
        self.made.append(self)

    def list_offsets(self, request: dict[Any, Any], request_timeout: float) -> dict[Any, Any]:
        if self.stale:
            raise KafkaException(KafkaError(KafkaError.FENCED_LEADER_EPOCH))
        answers = {}
        for tp in request:
            answer: concurrent.futures.Future[Any] = concurrent.futures.Future()
            answer.set_result(SimpleNamespace(offset=7))
            answers[tp] = answer
        return answers


async def test_a_failed_offset_read_gets_a_new_admin_client_for_the_next_one(
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(rdkafka, "AdminClient", _StaleAfterRestart)
    _StaleAfterRestart.made.clear()
    consumer = SignalConsumer(Settings(kafka_bootstrap="127.0.0.1:9"), {"group.id": "g"})
    tp = Partition("t.signals", 0)
    try:
        with pytest.raises(BrokerUnavailable, match="FENCED_LEADER_EPOCH"):
            await consumer.watermarks([tp])
        assert await consumer.watermarks([tp]) == {tp: (7, 7)}
        assert await consumer.watermarks([tp]) == {tp: (7, 7)}
    finally:
        await consumer.close()
    assert len(_StaleAfterRestart.made) == 2  # one new client, kept while it answers
