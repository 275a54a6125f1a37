"""A router.events record the router did not write must cost the projection one skipped row,
never a batch retried for good."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from router_stream.adapters.postgres.rows import decode_decision
from router_stream.adapters.postgres.tables import _ts
from router_stream.core.events import decode_event
from router_stream.core.redaction import DEFAULT_REDACTOR
from router_stream.projection.writer import ProjectionBatch, write_batch


class FakeConn:
    """Accepts every statement; only the row conversions can fail."""

    def transaction(self) -> contextlib.AbstractAsyncContextManager[None]:
        @contextlib.asynccontextmanager
        async def tx() -> AsyncIterator[None]:
            yield
        return tx()

    def is_in_transaction(self) -> bool:
        return True

    async def fetch(self, *args: Any) -> list[Any]:
        return []

    async def execute(self, *args: Any) -> str:
        return "INSERT 0 0"

    async def executemany(self, *args: Any) -> None:
        return None

    async def copy_records_to_table(self, *args: Any, **kwargs: Any) -> str:
        return "COPY 0"


@pytest.mark.parametrize("at", ["1e20", "-1e20", "1e300"])
def test_an_event_time_no_timestamp_can_hold_is_a_skipped_row(at: str) -> None:
    """datetime raised OSError (EOVERFLOW) for it, which reads as the database being down:
    the same batch was retried for good."""
    event = decode_event(b'{"type": "breaker_transition", "target": "slack", "from_state":'
                         b' "closed", "to_state": "open", "at": ' + at.encode() + b"}")
    batch = ProjectionBatch()
    batch.events.append((event, "router.events/0/7"))
    report = asyncio.run(write_batch(FakeConn(), batch, DEFAULT_REDACTOR))  # type: ignore[arg-type]
    assert [s.position for s in report.skipped] == ["router.events/0/7"]


def test_a_timestamp_out_of_range_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="out of range"):
        _ts(1e20)


DECISION = {"decision_id": "dec-1", "signal_id": "s-1", "tenant": "acme", "kind": "alert",
            "destinations": ["pager"], "strategy": "first_healthy", "tier": 0,
            "policy_version": "p-1", "confidence": 0.5, "trust": {}, "breakers": {},
            "input_topic": "signals", "input_partition": 0, "input_offset": 1,
            "decided_at": 1_800_000_000.0, "signal_ts": None}


@pytest.mark.parametrize("change", [{"tier": -1}, {"confidence": 5.0}, {"signal_id": "s" * 3000},
                                    {"tenant": "t" * 257}])
def test_a_decision_postgres_would_refuse_is_a_bad_record_before_the_write(
        change: dict[str, Any]) -> None:
    """Refused at write time, each one cost the writer a bisection of its batch (thousands of
    them, round trips past the attempt's timeout, and the batch again)."""
    assert decode_decision(orjson.dumps(DECISION)).tier == 0
    with pytest.raises(ValueError):
        decode_decision(orjson.dumps({**DECISION, **change}))
