"""The state follower's consumer holds its fetches at the broker (docs/worker.md): a stream of
outcomes costs a fetch per ``FETCH_WAIT_MS``, not one per few records."""

from __future__ import annotations

from typing import Any

import pytest

from router_stream.adapters import rdkafka
from router_stream.adapters.kafka_failures import RdkafkaLog
from router_stream.config import Settings
from router_stream.core.engine import RouterEngine
from router_stream.worker import state
from router_stream.worker.policy_source import compile_policy_text
from router_stream.worker.state import FETCH_MIN_BYTES, FETCH_WAIT_MS, StateFollower

POLICY = """
name: fetch
destinations: {pager: {}}
classify: [{name: all, when: {field: sender_id, exists: true}, kind: alert}]
routes: {alert: {strategy: first_healthy, tiers: [[pager]]}}
"""


class _Built(Exception):
    """Raised by the fake consumer: the test needs its configuration, nothing more."""


def test_a_reader_passes_the_fetch_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(rdkafka, "Consumer", lambda conf: seen.append(conf))
    rdkafka.reader(Settings(), RdkafkaLog())
    rdkafka.reader(Settings(), RdkafkaLog(), fetch_wait_ms=100, fetch_min_bytes=65536)
    plain, held = seen
    assert "fetch.min.bytes" not in plain and "fetch.wait.max.ms" not in plain
    assert held["fetch.min.bytes"] == 65536 and held["fetch.wait.max.ms"] == 100


async def test_the_state_follower_reads_with_held_fetches(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    asked: dict[str, Any] = {}

    def fake_reader(settings: Settings, log: RdkafkaLog, **kwargs: Any) -> None:
        asked.update(kwargs)
        raise _Built

    monkeypatch.setattr(state, "reader", fake_reader)
    engine = RouterEngine(compile_policy_text(POLICY))
    follower = StateFollower(Settings(topic_prefix="t."), engine, on_transitions=lambda t: None,
                             on_policy=lambda e: None, reload_policy=lambda: ("", engine.policy))
    with pytest.raises(_Built):
        await follower.start()
    assert asked["fetch_min_bytes"] == FETCH_MIN_BYTES >= 16 * 1024
    assert asked["fetch_wait_ms"] == FETCH_WAIT_MS <= 250
