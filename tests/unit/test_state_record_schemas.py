"""What the router accepts on ``outcomes`` and ``source-health`` is valid by their schemas
(topics/schemas/): a producer that validates against the contract is never refused more than
the router refuses, and a null optional field means what an absent one does, as for signals."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_stream.core.models import HealthEvent, Outcome
from router_stream.core.parsing import Rejection, parse_health, parse_outcome
from tests.support.schemas import schema_errors

values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.integers(0, 2**60),
    st.floats(-2.0, 2.0), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "d", "x" * 256, "x" * 257, "2024-01-01T00:00:00Z",
                     "2024-01-01T00:00:00+00:99", "2024-01-01 00:00:00Z"]),
)
outcomes = st.fixed_dictionaries(
    {"signal_id": values, "destination": values, "ok": values},
    optional={k: values for k in ("ts", "decision_id", "latency_ms", "reward", "cost")})
health_events = st.fixed_dictionaries(
    {"source_id": values},
    optional={k: values for k in ("ts", "ok", "latency_ms", "error_rate", "last_data_ts",
                                   "completeness")})


@given(outcomes)
def test_what_the_router_reads_as_an_outcome_is_valid_by_its_schema(data: dict[str, Any]) -> None:
    if isinstance(parse_outcome(orjson.dumps(data), record_ts_ms=0), Outcome):
        assert schema_errors("outcome.schema.json", data) == []


@given(health_events)
def test_what_the_router_reads_as_a_health_event_is_valid_by_its_schema(
        data: dict[str, Any]) -> None:
    if isinstance(parse_health(orjson.dumps(data), record_ts_ms=0), HealthEvent):
        assert schema_errors("health-event.schema.json", data) == []


@pytest.mark.parametrize(("schema", "parse", "record"), [
    ("outcome.schema.json", parse_outcome,
     {"signal_id": "s", "destination": "d", "ok": True, "ts": None, "decision_id": None,
      "latency_ms": None, "reward": None, "cost": None}),
    ("health-event.schema.json", parse_health,
     {"source_id": "a", "ts": None, "ok": None, "latency_ms": None, "error_rate": None,
      "last_data_ts": None, "completeness": None}),
    ("health-event.schema.json", parse_health, {"source_id": "a"}),  # ts: the record's
])
def test_null_or_absent_optional_fields_are_read_and_valid(schema, parse, record) -> None:
    parsed = parse(orjson.dumps(record), record_ts_ms=1_704_067_200_000)
    assert not isinstance(parsed, Rejection), parsed
    assert parsed.ts in (None, 1_704_067_200.0)
    assert schema_errors(schema, record) == []
