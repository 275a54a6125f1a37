"""Hostile input found by fuzzing: each is refused or passed through as data, never a crash.

Header values of thousands of digits or out of Kafka's ranges, JSON nested past what the masker
recurses into, a YAML alias bomb or a policy nested thousands deep, an entry id beyond bigint and
an int beyond 64 bits in a log line's ``extra``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
from click.testing import CliRunner

from router_stream.adapters import checkpoint_store
from router_stream.adapters.checkpoint_store import MANIFEST_KEY
from router_stream.adapters.postgres.rows import decode_decision, dlq_row_from_record
from router_stream.cli import _register, cli
from router_stream.core.checkpoint import CheckpointRefused, export_state, restore_state
from router_stream.core.compiled import load_compiled
from router_stream.core.engine import RouterEngine
from router_stream.core.heartbeat import WorkerHeartbeat
from router_stream.core.masking import MAX_DEPTH, TOO_DEEP, deeper_than, mask_value
from router_stream.core.models import Decision
from router_stream.core.policy import RedactPolicy
from router_stream.core.policy.fields import MAX_RETRY_DELAY_S
from router_stream.core.policy.loading import load_policy
from router_stream.core.redaction import DEFAULT_REDACTOR
from router_stream.core.wire import (
    H_ATTEMPTS,
    H_FIRST_FAILED,
    H_OFFSET,
    H_ORIGINAL_TS,
    H_PARTITION,
    H_REASON,
    H_RETRY_NOT_BEFORE,
    H_TOPIC,
    Origin,
    dlq_context,
    origin_of,
)
from router_stream.dlq.view import describe_bytes
from router_stream.errors import PolicyError
from router_stream.worker.hotpath import _not_before
from router_stream.worker.logs import JsonFormatter

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.yaml"
NOW = 1_800_000_000.0
NOW_MS = int(NOW * 1000)
INT32_MAX, INT64_MAX = 2**31 - 1, 2**63 - 1  # Kafka's partition and offset ranges
ROUTES = "destinations: {slack: {}}\nroutes: {alert: {strategy: first_healthy, tiers: [[slack]]}}\n"


@dataclass
class Rec:
    """A consumed record: what the core and the projection read of one."""

    value: bytes | None = b"not json"
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    topic: str = "signals"
    partition: int = 1
    offset: int = 5
    key: bytes | None = b"k"
    timestamp: int = NOW_MS


def origin_headers(topic: bytes = b"orders", partition: bytes = b"2", offset: bytes = b"9",
                   attempts: bytes = b"1", first: bytes = b"100.0") -> list[tuple[str, bytes | None]]:
    return [(H_TOPIC, topic), (H_PARTITION, partition), (H_OFFSET, offset),
            (H_ATTEMPTS, attempts), (H_FIRST_FAILED, first)]


BAD_ORIGINS = {
    "nul-in-topic": {"topic": b"ord\x00ers"},
    "empty-topic": {"topic": b""},
    "topic-of-250": {"topic": b"t" * 250},
    "partition-past-int32": {"partition": str(INT32_MAX + 1).encode()},
    "offset-past-int64": {"offset": str(INT64_MAX + 1).encode()},
    "attempts-past-int32": {"attempts": str(INT32_MAX + 1).encode()},
    "first-failed-inf": {"first": b"inf"},
    "first-failed-nan": {"first": b"nan"},
}


def nested(depth: int, leaf: Any = 1) -> Any:
    """``leaf`` inside ``depth`` lists."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


# --- wire.py: origin and DLQ context headers --------------------------------------------------


@pytest.mark.parametrize("digits", [b"9" * 5000, b"9" * 20, str(INT64_MAX + 1).encode()],
                         ids=["5000-digits", "20-digits", "int64-max+1"])
def test_an_original_timestamp_out_of_int64_is_the_record_s_own(digits: bytes) -> None:
    context = dlq_context(Rec(headers=[(H_ORIGINAL_TS, digits)]), "g")
    assert context.original_timestamp == NOW_MS


def test_an_original_timestamp_of_int64_max_is_kept() -> None:
    context = dlq_context(Rec(headers=[(H_ORIGINAL_TS, str(INT64_MAX).encode())]), "g")
    assert context.original_timestamp == INT64_MAX


def test_legal_origin_headers_are_the_origin() -> None:
    """The control for the next test: the same headers with every value in range."""
    limits = origin_headers(b"t" * 249, str(INT32_MAX).encode(), str(INT64_MAX).encode(),
                            str(INT32_MAX).encode())
    assert origin_of(Rec(headers=limits)) == Origin("t" * 249, INT32_MAX, INT64_MAX,
                                                    INT32_MAX, 100.0)


@pytest.mark.parametrize("bad", [pytest.param(v, id=k) for k, v in BAD_ORIGINS.items()])
def test_origin_headers_out_of_kafka_s_ranges_are_ignored(bad: dict[str, bytes]) -> None:
    record = Rec(headers=origin_headers(**bad))
    assert origin_of(record) == Origin.own(record)


def test_a_record_with_a_5000_digit_original_timestamp_is_dead_lettered_once() -> None:
    engine = RouterEngine(load_compiled(EXAMPLE.read_text()))
    result = engine.decide_batch([Rec(headers=[(H_ORIGINAL_TS, b"9" * 5000)])], NOW)
    [dead] = result.dlq
    assert dict(dead.headers)[H_ORIGINAL_TS] == str(NOW_MS).encode()


# --- adapters/postgres/rows.py ----------------------------------------------------------------


def dlq_record(**bad: bytes) -> Rec:
    return Rec(topic="router.dlq", headers=[(H_REASON, b"no_route"), *origin_headers(**bad)])


def test_a_dlq_record_with_a_legal_origin_is_a_row() -> None:
    row = dlq_row_from_record(dlq_record())
    assert row is not None and row["dlq_key"] == "orders/2/9"


@pytest.mark.parametrize("bad", [pytest.param(v, id=k) for k, v in BAD_ORIGINS.items()
                                 if not k.startswith("first-failed")])
def test_a_dlq_record_whose_origin_no_column_can_hold_is_no_row(bad: dict[str, bytes]) -> None:
    assert dlq_row_from_record(dlq_record(**bad)) is None


def decision_json(**kw: Any) -> bytes:
    base: dict[str, Any] = dict(
        decision_id="dec-1", signal_id="s-1", tenant="t", kind="alert", destinations=["pager"],
        strategy="first_healthy", tier=0, policy_version="v", confidence=0.9,
        trust={"pager": 0.8}, breakers={"pager": "closed"}, input_topic="signals",
        input_partition=1, input_offset=7, decided_at=2e9, signal_ts=2e9 - 1)
    return Decision(**(base | kw)).to_json()


@pytest.mark.parametrize("bad", [
    pytest.param({"input_topic": "sig\x00nals"}, id="nul-in-topic"),  # msgspec searches
    pytest.param({"input_topic": ""}, id="empty-topic"),
    pytest.param({"input_topic": "t" * 250}, id="topic-of-250"),
    pytest.param({"input_partition": INT32_MAX + 1}, id="partition-past-int32"),
    pytest.param({"input_partition": -1}, id="negative-partition"),
    pytest.param({"input_offset": INT64_MAX + 1}, id="offset-past-int64"),
])
def test_a_decision_whose_input_position_kafka_cannot_have_is_a_value_error(
    bad: dict[str, Any],
) -> None:
    decode_decision(decision_json())  # the control: the same decision in range
    with pytest.raises(ValueError):
        decode_decision(decision_json(**bad))


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z",
                                "9999-12-31T23:59:59.999Z", "9999-12-31T10:00:00-13:59"])
def test_a_signal_timed_at_either_end_of_the_range_is_a_decision_the_projection_reads(
    ts: str,
) -> None:
    engine = RouterEngine(load_compiled(ROUTES))
    value = orjson.dumps({"sender_id": "s", "kind": "alert", "ts": ts})
    [decision] = engine.decide_batch([Rec(value=value)], NOW).decisions
    row = decode_decision(decision.to_json())
    expected = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert row.signal_ts is not None
    assert abs((row.signal_ts - expected).total_seconds()) < 0.001  # epoch seconds: a float


@pytest.mark.parametrize("ts", ["9999-12-31T23:59:59-00:01", "0001-01-01T00:00:00+00:01"])
def test_a_signal_timed_past_the_range_is_dead_lettered_not_decided(ts: str) -> None:
    engine = RouterEngine(load_compiled(ROUTES))
    value = orjson.dumps({"sender_id": "s", "kind": "alert", "ts": ts})
    result = engine.decide_batch([Rec(value=value)], NOW)
    assert not result.decisions
    [dead] = result.dlq
    assert dict(dead.headers)[H_REASON] == b"invalid_signal"


# --- masking: JSON nested deeper than the masker recurses --------------------------------------


def deep_signal(depth: int, leaf: bytes = b"") -> bytes:
    return b'{"sender_id":"app-x","payload":' + b"[" * depth + leaf + b"]" * depth + b"}"


def test_a_value_nested_600_deep_is_masked_whole() -> None:
    m = DEFAULT_REDACTOR.dlq_parts(error="e", signal_id=None, tenant=None, kind=None, key=None,
                                   value=deep_signal(600), headers=[])
    assert m.masked is True
    assert m.value == orjson.dumps(TOO_DEEP)


def test_a_value_nested_150_deep_is_masked_member_by_member() -> None:
    m = DEFAULT_REDACTOR.dlq_parts(error="e", signal_id=None, tenant=None, kind=None, key=None,
                                   value=deep_signal(150, b'"bob@example.com"'), headers=[])
    assert m.masked is True and m.value is not None
    assert orjson.loads(m.value) == {"sender_id": "app-x",
                                     "payload": nested(150, "***@example.com")}


@pytest.mark.parametrize(("depth", "masked_whole"), [(MAX_DEPTH, False), (MAX_DEPTH + 1, True)])
def test_mask_value_masks_whole_only_past_max_depth(depth: int, masked_whole: bool) -> None:
    value = nested(depth, "ssn 123-45-6789")
    expected = TOO_DEEP if masked_whole else nested(depth, "ssn [SSN]")
    assert mask_value(value, RedactPolicy()) == expected


def test_deeper_than_does_not_recurse() -> None:
    assert deeper_than(nested(100_000), MAX_DEPTH)
    assert not deeper_than(nested(MAX_DEPTH), MAX_DEPTH)
    assert deeper_than({"a": [1, {"b": nested(MAX_DEPTH - 1)}]}, MAX_DEPTH)


def test_describe_bytes_shows_json_too_deep_to_print_as_text() -> None:
    data = deep_signal(600)
    assert describe_bytes(data) == {"encoding": "text", "size": len(data), "text": data.decode()}


# --- policy loading ---------------------------------------------------------------------------


def policy_issues(text: str) -> list[dict[str, Any]]:
    with pytest.raises(PolicyError) as caught:
        load_policy(text)
    return caught.value.fields()


def test_a_yaml_alias_bomb_is_refused_before_it_is_walked() -> None:
    """Eight levels of ten aliases each: 10**8 scalars from a few hundred bytes."""
    anchors = ["&a0 [" + ", ".join(["x"] * 10) + "]"]
    anchors += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    bomb = f"name: bomb\ndescription: [{', '.join(anchors)}]\n{ROUTES}"
    [issue] = policy_issues(bomb)
    assert "expands to more than" in issue["message"]


def test_a_condition_nested_3000_deep_is_a_policy_error() -> None:
    when = "{field: a, exists: true}"
    for _ in range(3000):
        when = "{not: " + when + "}"
    text = f"name: deep\n{ROUTES}classify: [{{name: r, kind: alert, when: {when}}}]\n"
    assert policy_issues(text) == [{"path": "", "line": None,
                                    "message": "the document is nested too deep"}]


def test_a_duplicate_key_in_an_aliased_mapping_is_reported_where_each_alias_is_used() -> None:
    text = ("name: dup\n"
            "destinations:\n"
            "  slack: &d {capacity: 5, capacity: 6}\n"
            "  email: *d\n"
            "routes: {alert: {strategy: first_healthy, strategy: all, tiers: [[slack]]}}\n")
    assert [(i["path"], i["line"], i["message"]) for i in policy_issues(text)] == [
        ("destinations.slack.capacity", 3, "duplicate key"),
        ("destinations.email.capacity", 3, "duplicate key"),
        ("routes.alert.strategy", 5, "duplicate key"),
    ]


# --- CLI and logs -----------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["show", "99999999999999999999999"],
                                  ["show", str(2**63)],
                                  ["list", "--id", "99999999999999999999999"],
                                  ["discard", "99999999999999999999999", "--reason", "r"],
                                  ["replay", "99999999999999999999999"]],
                         ids=["show", "show-int64-max+1", "list", "discard", "replay"])
def test_an_entry_id_beyond_bigint_is_a_usage_error(args: list[str]) -> None:
    _register()
    # a database that is not there: the id is refused before one is reached
    result = CliRunner().invoke(cli, ["dlq", *args],
                                env={"ROUTER_DATABASE_URL": "postgresql://no@127.0.0.1:1/none"})
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == click.UsageError.exit_code, result.output
    assert "is not in the range" in result.output and "Traceback" not in result.output


def test_a_log_extra_int_beyond_64_bits_is_one_json_line() -> None:
    record = logging.LogRecord("router", logging.INFO, __file__, 1, "big", (), None)
    record.offset = 10**30
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = orjson.loads(text)
    assert line["offset"] == str(10**30) and line["msg"] == "big"


# --- records on the router's own topics ----------------------------------------------------------


@pytest.mark.parametrize("value", [[], None, "x", 5])
def test_a_heartbeat_that_is_no_json_object_is_a_value_error(value: Any) -> None:
    with pytest.raises(ValueError):
        WorkerHeartbeat.from_json(value)


@pytest.mark.parametrize("header", [b"inf", b"1e300", b"9" * 400, b"nan", b"253402300800"])
def test_a_retry_not_before_no_clock_reaches_is_due_at_once(header: bytes) -> None:
    assert _not_before([(H_RETRY_NOT_BEFORE, header)]) is None


def test_a_retry_not_before_in_the_future_is_kept() -> None:
    assert _not_before([(H_RETRY_NOT_BEFORE, repr(NOW + 60).encode())]) == NOW + 60
    written = int(NOW * 1000)
    assert _not_before([(H_RETRY_NOT_BEFORE, repr(NOW + 60).encode())], written) == NOW + 60


def test_a_retry_record_waits_at_most_the_longest_retry_delay_after_it_was_written() -> None:
    """Whoever wrote it: its partition waits behind it (a record of year 9000 parked it for
    millennia)."""
    written = int(NOW * 1000)
    far = [(H_RETRY_NOT_BEFORE, repr(NOW + 10 * MAX_RETRY_DELAY_S).encode())]
    assert _not_before(far, written) == NOW + MAX_RETRY_DELAY_S
    assert _not_before(far) == NOW + 10 * MAX_RETRY_DELAY_S  # no timestamp: the header's


def test_a_checkpoint_override_with_a_list_for_a_selector_is_refused() -> None:
    engine = RouterEngine(load_compiled(EXAMPLE.read_text()))
    doc = export_state(engine)
    doc["overrides"] = [{"override_id": "o1", "kind": "force_destination", "target": "slack",
                         "expires_at": NOW + 600, "kind_selector": ["notification"]}]
    with pytest.raises(CheckpointRefused):
        restore_state(engine, doc)
    assert engine.state.overrides == {}


async def test_a_manifest_naming_more_chunks_than_the_topic_holds_is_unusable(monkeypatch) -> None:
    records = [Rec(b"x", topic="state", offset=0, key=b"chunk/c1/0"),
               Rec(orjson.dumps({"checkpoint_id": "c1", "chunks": 10**12}), topic="state",
                   offset=1, key=MANIFEST_KEY)]

    async def read(settings: Any, topic: str, **_: Any) -> Any:
        for record in records:
            yield record

    class Where:
        def topic(self, name: str) -> str:
            return name

    monkeypatch.setattr(checkpoint_store, "read_records", read)
    loaded = await checkpoint_store.load_checkpoints(Where())  # type: ignore[arg-type]
    assert loaded.latest is None and "chunks named" in (loaded.problem or "")


@pytest.mark.parametrize("value", ["!!timestamp 99999-99-99", "!!timestamp 2020-13-45"])
def test_a_tagged_value_yaml_cannot_build_is_a_policy_error(value: str) -> None:
    with pytest.raises(PolicyError) as refused:
        load_policy(f"name: t\ndescription: {value}\n" + ROUTES)
    assert "a value its tag cannot hold" in str(refused.value)
