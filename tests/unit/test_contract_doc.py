"""docs/contract.md cannot drift: every example message validates against its JSON Schema (with
``jsonschema``, independent of our pydantic models) and parses with the router's own parsers, the
examples/*.jsonl files do too, and the topics, DLQ headers, DLQ reasons, tables and metrics it
lists equal the code's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from router_stream.adapters.topics import load_declarations
from router_stream.config import ROUTED_PREFIX
from router_stream.core.models import CONTROL_ADAPTER, DlqReason
from router_stream.core.parsing import Rejection, parse_health, parse_outcome, parse_signal
from router_stream.core.wire import DLQ_HEADERS
from router_stream.worker.metrics import WorkerMetrics
from tests.support.schemas import SCHEMAS, schema_errors

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = (ROOT / "docs" / "contract.md").read_text()
NOW_MS = 1_765_000_000_000


EXAMPLES = re.findall(r"<!-- schema: ([\w.-]+) -->\n```json\n(.*?)\n```", CONTRACT, re.S)


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", CONTRACT, re.S | re.M)
    assert match, f"no section {title!r} in docs/contract.md"
    return match.group(1)


def _first_column(title: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", _section(title), re.M))


def test_there_is_an_example_of_every_message_and_control_command() -> None:
    assert {schema for schema, _ in EXAMPLES} == {p.name for p in SCHEMAS.glob("*.schema.json")}
    commands = {json.loads(body)["type"] for schema, body in EXAMPLES
                if schema == "control-command.schema.json"}
    control = json.loads((SCHEMAS / "control-command.schema.json").read_text())
    assert commands == set(control["properties"]["type"]["enum"])


@pytest.mark.parametrize(("schema", "body"), EXAMPLES, ids=[s for s, _ in EXAMPLES])
def test_each_example_is_valid_against_its_schema(schema: str, body: str) -> None:
    assert schema_errors(schema, json.loads(body)) == []


# decision, routed and heartbeat messages are written by the router: the schema is their check
PARSED = [(s, b) for s, b in EXAMPLES if s in ("signal.schema.json", "health-event.schema.json",
                                               "outcome.schema.json", "control-command.schema.json")]


@pytest.mark.parametrize(("schema", "body"), PARSED, ids=[s for s, _ in PARSED])
def test_each_input_example_is_accepted_by_the_router(schema: str, body: str) -> None:
    raw = body.encode()
    parsed: Any
    if schema == "signal.schema.json":
        parsed = parse_signal(raw, record_ts_ms=NOW_MS, now=NOW_MS / 1000)
    elif schema == "health-event.schema.json":
        parsed = parse_health(raw, record_ts_ms=NOW_MS)
    elif schema == "outcome.schema.json":
        parsed = parse_outcome(raw, record_ts_ms=NOW_MS)
    else:
        parsed = CONTROL_ADAPTER.validate_json(raw)
    assert not isinstance(parsed, Rejection), parsed


def test_a_wrong_message_fails_the_schema() -> None:
    """The validation above can fail: a signal without sender_id does."""
    assert schema_errors("signal.schema.json", {"signal_id": "x"}) != []


EXAMPLE_FILES = {"signals.jsonl": ("signal.schema.json", parse_signal),
                 "health.jsonl": ("health-event.schema.json", parse_health),
                 "outcomes.jsonl": ("outcome.schema.json", parse_outcome)}


@pytest.mark.parametrize("name", sorted(EXAMPLE_FILES))
def test_example_files_hold_valid_messages(name: str) -> None:
    schema, parse = EXAMPLE_FILES[name]
    lines = (ROOT / "examples" / name).read_text().splitlines()
    assert len(lines) >= 3
    for line in lines:
        assert schema_errors(schema, json.loads(line)) == [], line
        kwargs: dict[str, Any] = {"now": NOW_MS / 1000} if parse is parse_signal else {}
        assert not isinstance(parse(line.encode(), record_ts_ms=NOW_MS, **kwargs), Rejection)


def test_the_topics_listed_are_the_declared_ones() -> None:
    declared = {t.logical for t in load_declarations().topics} | {f"{ROUTED_PREFIX}<destination>"}
    assert _first_column("Topics") == declared


def test_the_dlq_headers_listed_are_the_codes() -> None:
    assert _first_column("DLQ headers") == set(DLQ_HEADERS)


def test_the_dlq_reasons_listed_are_the_closed_set() -> None:
    assert _first_column("DLQ reasons") == {r.value for r in DlqReason}


def test_the_tables_listed_are_the_migrations() -> None:
    created = set()
    for path in (ROOT / "migrations").glob("*.sql"):
        created |= set(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", path.read_text()))
    assert _first_column("Tables") == created


def test_the_metrics_listed_are_the_ones_exposed() -> None:
    from prometheus_client import generate_latest

    from router_stream.projection.metrics import ProjectionMetrics

    metrics = WorkerMetrics()
    metrics.set_state({"probe-a": 0.9}, {"slack": "closed"})
    text = metrics.exposition().decode() + generate_latest(ProjectionMetrics().registry).decode()
    exposed = set(re.findall(r"^# TYPE (\w+) ", text, re.M))
    standard = ("process_", "python_")  # prometheus_client's own collectors
    assert _first_column("Metrics") == {m for m in exposed if not m.endswith("_created")
                                        and not m.startswith(standard)}
