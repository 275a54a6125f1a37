"""Records a consuming service cannot trust: each is refused, skipped or dropped with a reason,
never an exception out of ``run()`` that stalls the partition for good."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pydantic
import pytest
from confluent_kafka import KafkaError, KafkaException

from router_stream.client import (
    Delivery,
    DestinationConsumer,
    InvalidRecord,
    Outcome,
    OutcomeReporter,
    RoutedSignal,
    _consumer,
    _reporter,
    outcome_for,
    parse_decision,
    parse_routed,
)
from router_stream.core.models import MAX_ID_LEN

LONG = "x" * (MAX_ID_LEN + 1)


def routed_value(signal: dict[str, Any] | None = None, **route: Any) -> bytes:
    fields = {"decision_id": "dec-1", "signal_id": "sig-1", "destination": "slack",
              "kind": "alert", "strategy": "first_healthy", "tier": 0, "policy_version": "p",
              "confidence": 1.0, "routed_at": 1.0} | route
    return orjson.dumps({"sender_id": "svc", "payload": {}, **(signal or {}),
                         "route": {k: v for k, v in fields.items() if v is not None}})


class Outcomes:
    """A reporter that validates like the real one and keeps what it was given."""

    def __init__(self) -> None:
        self.reported: list[Outcome] = []

    def report(self, routed: RoutedSignal, **fields: Any) -> bool:
        self.reported.append(outcome_for(routed, **fields))
        return True


@pytest.fixture
def consumer():
    reporter = Outcomes()
    consumer = DestinationConsumer("slack", bootstrap_servers="127.0.0.1:9", group_id="g",
                                   reporter=reporter)  # type: ignore[arg-type]
    yield consumer, reporter
    consumer._consumer.close()
    consumer._thread.close()


# --- ids too long for the outcome --------------------------------------------------------------

@pytest.mark.parametrize("value", [
    routed_value(signal_id=LONG),
    routed_value({"signal_id": LONG}, signal_id=None),
    routed_value(destination=LONG),
    routed_value(decision_id=LONG),
    routed_value(decision_id="d" * 2_000_000),
], ids=["route.signal_id", "signal_id", "destination", "decision_id", "2MB decision_id"])
def test_ids_longer_than_an_outcome_allows_make_the_record_invalid(value):
    with pytest.raises(InvalidRecord, match=f"longer than {MAX_ID_LEN}"):
        parse_routed(value)


async def test_a_record_with_a_long_id_is_skipped_and_counted_before_its_handler_runs(consumer):
    destination, reporter = consumer
    calls = []

    async def handler(routed):
        calls.append(routed)

    await destination._handle(handler, routed_value(signal_id=LONG), b"k")
    assert (calls, reporter.reported, destination.stats.invalid) == ([], [], 1)


async def test_the_outcome_is_retried_without_reward_and_cost_only_when_they_were_wrong(
        consumer, monkeypatch, caplog):
    destination, reporter = consumer

    async def handler(routed):
        return Delivery(ok=True, reward=1.5, cost=-1.0)

    await destination._handle(handler, routed_value(decision_id="dec-a"), b"k")
    assert [(o.decision_id, o.reward, o.cost) for o in reporter.reported] == [("dec-a", None, None)]

    # A record whose outcome cannot be built whatever the handler returns (parse_routed is the
    # guard; here it lets one through): logged, not retried, not raised out of run().
    unbuildable = RoutedSignal(signal_id=LONG, route=parse_routed(routed_value()).route,
                               signal={})
    monkeypatch.setattr(_consumer, "parse_routed", lambda value, key: unbuildable)
    with caplog.at_level(logging.WARNING, logger=_consumer.__name__):
        await destination._handle(handler, b"{}", b"k")
    assert len(reporter.reported) == 1
    assert "no outcome reported" in caplog.text


# --- an outcome too large to write -------------------------------------------------------------

def test_an_outcome_refuses_a_decision_id_longer_than_the_other_ids():
    edge = "x" * MAX_ID_LEN  # what parse_routed lets through, an outcome takes
    routed = parse_routed(routed_value(signal_id=edge, destination=edge, decision_id=edge))
    assert outcome_for(routed, ok=True).decision_id == edge
    with pytest.raises(pydantic.ValidationError, match="decision_id"):
        Outcome(signal_id="s", destination="d", ok=True, decision_id=LONG)


def _too_large() -> KafkaException:
    return KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))


class Producer:
    """An AckingProducer whose ``refuse`` outcomes (by signal id) are too large: at ``produce``
    (above the producer's ``message.max.bytes``) or at the acknowledgement (the broker's)."""

    refuse_at = "produce"

    def __init__(self, config: dict[str, Any], thread: Any) -> None:
        self.written: list[bytes] = []

    async def produce(self, topic: str, value: bytes, *, key: bytes | None = None
                      ) -> asyncio.Future[None]:
        acked = asyncio.get_running_loop().create_future()
        if b'"big-' not in value:
            self.written.append(value)
            acked.set_result(None)
        elif self.refuse_at == "produce":
            raise _too_large()
        else:
            acked.set_exception(_too_large())
        return acked

    async def stop(self, timeout_s: float) -> int:
        return 0


@pytest.mark.parametrize("refuse_at", ["produce", "acknowledgement"])
async def test_an_outcome_too_large_for_kafka_is_dropped_alone(monkeypatch, caplog, refuse_at):
    monkeypatch.setattr(Producer, "refuse_at", refuse_at)
    monkeypatch.setattr(_reporter, "AckingProducer", Producer)
    reporter = OutcomeReporter("127.0.0.1:9", batch_size=10)
    outcome = Outcome(signal_id="s", destination="slack", ok=True, decision_id="dec-1")
    for signal_id in ("ok-1", "big-1", "ok-2", "ok-3"):
        reporter.report_outcome(outcome.model_copy(update={"signal_id": signal_id}))
    reporter._sender = asyncio.create_task(reporter._send_loop())
    try:
        with caplog.at_level(logging.WARNING, logger=_reporter.__name__):
            await reporter.flush(5)  # the consumer commits after this
    finally:
        await reporter.close(5)
    written = [orjson.loads(v)["signal_id"] for v in reporter._acking.written]
    assert written == ["ok-1", "ok-2", "ok-3"]
    assert (reporter.stats.sent, reporter.stats.too_large, reporter.stats.failed) == (3, 1, 0)
    assert "1 outcome(s) too large" in caplog.text


# --- decisions -----------------------------------------------------------------------------------

DECISION = dict(decision_id="d", signal_id="s", tenant="t", kind="alert", destinations=["a"],
                strategy="x", tier=1, policy_version="p", confidence=1.0, trust={}, breakers={},
                input_topic="signals", input_partition=0, input_offset=1, decided_at=2e9,
                signal_ts=2e9)


@pytest.mark.parametrize("extra", [5, [1], "x", None])
@pytest.mark.parametrize("unknown", [{"new_field": 1}, {}], ids=["unknown field", "known only"])
def test_a_decision_whose_extra_is_not_an_object_is_invalid(extra, unknown):
    with pytest.raises(InvalidRecord, match="extra must be a JSON object"):
        parse_decision(orjson.dumps(DECISION | {"extra": extra} | unknown))
