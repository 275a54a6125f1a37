"""Sending operator commands to ``router.control`` (policy publish, overrides, breakers).

Every worker reads ``router.control`` in full, so one record reaches all of them; the producer is
idempotent with ``acks=all`` so a command is either durable or the call fails loudly.
"""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel

from router_stream.adapters.kafka_io import OutRecord, RecordWriter
from router_stream.config import CONTROL, Settings
from router_stream.errors import BrokerUnavailable


async def send_control(settings: Settings, command: BaseModel, timeout_s: float = 30.0) -> str:
    """Publish one command; returns its ``command_id`` (generated when the command has none)."""
    if getattr(command, "command_id", None) is None:
        command = command.model_copy(update={"command_id": uuid.uuid4().hex,
                                             "issued_at": time.time()})
    topic = settings.topic(CONTROL)
    try:
        async with RecordWriter(settings, timeout_s=timeout_s, linger_ms=0) as writer:
            await writer.send_and_wait(OutRecord(topic, command.model_dump_json().encode()))
    except BrokerUnavailable as exc:
        raise BrokerUnavailable(f"cannot publish to {topic}: {exc}") from exc
    return str(command.command_id)  # type: ignore[attr-defined]
