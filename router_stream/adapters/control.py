"""Sending operator commands to ``router.control`` (policy publish, overrides, breakers).

Every worker reads ``router.control`` in full, so one record reaches all of them; the producer is
idempotent with ``acks=all`` so a command is either durable or the call fails loudly.
"""

from __future__ import annotations

import time
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import BaseModel

from router_stream.adapters.kafka_failures import ConnectFailures
from router_stream.config import CONTROL, Settings
from router_stream.errors import BrokerUnavailable


async def send_control(settings: Settings, command: BaseModel, timeout_s: float = 30.0) -> str:
    """Publish one command; returns its ``command_id`` (generated when the command has none)."""
    if getattr(command, "command_id", None) is None:
        command = command.model_copy(update={"command_id": uuid.uuid4().hex,
                                             "issued_at": time.time()})
    producer = AIOKafkaProducer(
        **settings.kafka_client_options, enable_idempotence=True, acks="all",
        request_timeout_ms=int(timeout_s * 1000),
    )
    failures = ConnectFailures()
    try:
        with failures:
            await producer.start()
        await producer.send_and_wait(settings.topic(CONTROL), command.model_dump_json().encode())
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"cannot publish to {settings.topic(CONTROL)}: {failures.describe(settings, exc)}"
        ) from exc
    finally:
        await producer.stop()
    return str(command.command_id)  # type: ignore[attr-defined]
