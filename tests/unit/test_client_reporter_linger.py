"""A DestinationConsumer's own reporter lingers 1 ms, not the reporter's 5: each batch waits for
its outcomes before the next fetch, so the linger is added to the next batch (docs/consumers.md).
``kafka_options`` may still set one, and a reporter passed in keeps its own settings."""

from __future__ import annotations

from typing import Any

import pytest

from router_stream.client import _consumer
from router_stream.client._consumer import REPORTER_LINGER_MS, DestinationConsumer


class _Reporter:
    def __init__(self, bootstrap: str, **kwargs: Any) -> None:
        self.kafka_options = kwargs["kafka_options"]


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch):
    def make(**kwargs: Any) -> DestinationConsumer:
        consumer = DestinationConsumer("slack", bootstrap_servers="127.0.0.1:9", group_id="g",
                                       **kwargs)
        built.append(consumer)
        return consumer
    built: list[DestinationConsumer] = []
    monkeypatch.setattr(_consumer, "OutcomeReporter", _Reporter)
    yield make
    for consumer in built:
        consumer._consumer.close()
        consumer._thread.close()


def test_the_consumers_own_reporter_lingers_less_than_a_standalone_one(made) -> None:
    reporter = made(kafka_options={"client.id": "x"}).reporter
    assert REPORTER_LINGER_MS == 1
    assert reporter.kafka_options == {"linger.ms": 1, "client.id": "x"}


def test_kafka_options_may_set_a_linger(made) -> None:
    assert made(kafka_options={"linger.ms": 20}).reporter.kafka_options["linger.ms"] == 20
