"""Issue 7: PII named in the policy is masked in every Postgres column and every log line.

On the real broker and Postgres, a worker runs a policy whose ``redact`` section names fields and
uses the detectors (and a shadow rollout, so ``shadow_decisions`` is written too). Signals carry
an e-mail address, a phone number, a Luhn-valid card number, an SSN and a named field's value —
in payloads, ids, the tenant, the key, headers, the kind, and in what error messages quote — some
routed, some dead-lettered for every reason the parser and the engine have. Then:

* every column of every table of the test database, decoded (bytea as text, JSON parsed, base64
  header values decoded), holds none of those strings, and neither does any log line the worker
  wrote nor the output of ``dlq list/show/replay --dry-run`` without a policy;
* ``router.dlq`` still holds them: the original bytes are kept byte-exact on Kafka (so the test
  would see a leak: the data went through the worker, it was masked on the way to Postgres);
* replaying a masked entry puts the ORIGINAL record back on ``signals``, byte for byte; one whose
  ``router.dlq`` record is gone (records deleted as retention would) is reported with one line,
  not sent, and stays pending.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from router_stream.config import DLQ, SIGNALS, Settings
from router_stream.dlq.filters import DlqFilter
from router_stream.dlq.replay import replay_dlq
from router_stream.worker.logs import JsonFormatter
from tests.support.cli import run_cli
from tests.support.kafka_admin import Admin
from tests.support.worker import fetch, prepare, produce, read_all, worker

pytestmark = pytest.mark.integration

EMAIL = "jane.doe@example.com"
PHONE = "(555) 867-5309"
CARD = "4111 1111 1111 1111"
CARD_DIGITS = "4111111111111111"
SSN = "123-45-6789"
NAME = "Jane Q. Public"  # no detector finds a name: only naming the field masks it
PII = (EMAIL, PHONE, CARD, CARD_DIGITS, SSN, NAME, "867-5309", "jane.doe")

POLICY = """
name: pii-masking
destinations: {pager: {}}
classify:
  - {name: alerts, when: {field: payload.severity, equals: critical}, kind: alert}
routes:
  alert: {strategy: first_healthy, tiers: [[pager]]}
defaults: {unclassified: dlq, unrouted: dlq}
tenants:
  default: {rate: 100000, burst: 100000}
redact:
  fields: [payload.customer.name, sender_id]
  detectors: [email, phone, card, ssn, ipv4, ipv6]
rollout:
  mode: shadow
  sample: 1.0
  rollback: {min_signals: 100000}
  candidate:
    destinations: {pager: {}}
    classify:
      - {name: alerts, when: {field: payload.severity, equals: critical}, kind: alert}
    routes:
      alert: {strategy: first_healthy, tiers: [[pager]]}
    defaults: {unclassified: dlq, unrouted: dlq}
"""


def payload(**extra: Any) -> dict[str, Any]:
    return {"customer": {"name": NAME, "email": EMAIL, "phone": PHONE}, "card": CARD,
            "card_number": int(CARD_DIGITS), "note": f"ssn {SSN}, call {PHONE}", **extra}


def signals() -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, what happens to it)."""
    out: list[tuple[bytes | None, bytes, str]] = []
    for i in range(6):  # routed, and the decisions carry PII-bearing signal ids and tenants
        out.append((EMAIL.encode(), orjson.dumps({
            "signal_id": f"order-{i}-{EMAIL}", "tenant": f"t-{PHONE}", "sender_id": NAME,
            "payload": payload(severity="critical")}), "routed"))
    out += [
        (b"crm-1", orjson.dumps({"signal_id": f"u-{SSN}", "sender_id": "crm-1",
                                 "payload": payload(severity="low")}), "unclassified"),
        (NAME.encode(), orjson.dumps({"signal_id": "k-1", "sender_id": NAME,
                                      "kind": f"billing-{EMAIL}", "payload": payload()}),
         "no_route"),
        (b"crm-2", orjson.dumps({"signal_id": "bad-ts", "sender_id": "crm-2", "ts": EMAIL,
                                 "payload": payload()}), "invalid_signal"),
        (b"crm-3", f"ssn={SSN} card {CARD} mail {EMAIL} call {PHONE}".encode(), "invalid_json"),
        (b"\xff" + PHONE.encode(), b"\x00\xff\xfe" + EMAIL.encode() + b"\x80" + SSN.encode(),
         "invalid_json"),
        # a duplicate key: the parser keeps only the last value, the bytes hold both
        (None, b'{"signal_id": "dup-key", "sender_id": "crm-4", "payload": {"to": "'
         + EMAIL.encode() + b'", "to": "x"}}', "unclassified"),
    ]
    return out


HEADERS = [("x-customer", f"<{EMAIL}> {PHONE}".encode()), ("x-card", CARD.encode()),
           ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]


# --- reading everything back as text -------------------------------------------------------------


def texts(value: Any) -> Iterator[str]:
    """Every way a stored value can be read as text: bytes decoded, JSON parsed, base64
    strings (header values are stored base64) decoded, containers walked."""
    if value is None or isinstance(value, bool | int | float):
        yield str(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        yield data.decode("utf-8", "replace")
        yield data.decode("latin-1")
    elif isinstance(value, str):
        yield value
        parsed, decoded = _json(value), _base64(value)
        if parsed is not None:
            yield from texts(parsed)
        if decoded is not None:
            yield from texts(decoded)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from texts(k)
            yield from texts(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from texts(v)
    else:  # timestamps, numerics, uuids ...
        yield str(value)


def _json(text: str) -> Any:
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict | list) else None


def _base64(text: str) -> bytes | None:
    if len(text) < 8 or len(text) % 4:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


async def every_cell(s: Settings) -> dict[str, list[str]]:
    """table.column -> the decoded text of every value, for every column of every table."""
    columns = await fetch(s, "SELECT table_schema, table_name, column_name"
                             " FROM information_schema.columns"
                             " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                             " ORDER BY 1, 2, ordinal_position")
    cells: dict[str, list[str]] = {}
    for c in columns:
        table = f'"{c["table_schema"]}"."{c["table_name"]}"'
        rows = await fetch(s, f'SELECT "{c["column_name"]}" AS v FROM {table}')
        cells[f"{c['table_name']}.{c['column_name']}"] = [t for r in rows for t in texts(r["v"])]
    return cells


def leaks(named_texts: dict[str, list[str]]) -> list[str]:
    return [f"{where}: {pii!r}" for where, found in named_texts.items() for text in found
            for pii in PII if pii in text]


class Lines(logging.Handler):
    """Every router_stream log record, formatted as the worker's JSON lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def delete_before(s: Settings, topic: str, partition: int, offset: int) -> None:
    """What retention does to old records: the partition now starts at ``offset``."""
    await Admin(s.kafka_bootstrap).delete_records(topic, partition, offset)


# --- the test ------------------------------------------------------------------------------------


async def test_pii_is_masked_in_every_column_and_log_line_and_replay_is_byte_exact(
    settings: Settings, tmp_path: Path
):
    s = await prepare(settings, tmp_path, POLICY)
    inputs = signals()
    coords = await produce(s, SIGNALS, [(k, v) for k, v, _ in inputs], headers=HEADERS)
    lines = Lines()
    logger = logging.getLogger("router_stream")
    logger.addHandler(lines)
    try:
        await worker(s).run_until_idle(1.0)
    finally:
        logger.removeHandler(lines)

    # The run did what the inputs say: 6 decisions, the rest dead-lettered, and a shadow row
    # for every record that parsed as a signal (routed, unclassified, no_route).
    decisions = await fetch(s, "SELECT signal_id, tenant FROM routing_decisions")
    assert len(decisions) == 6 and len({d["signal_id"] for d in decisions}) == 6
    parsed = [i for i in inputs if i[2] in ("routed", "unclassified", "no_route")]
    assert len(await fetch(s, "SELECT 1 FROM shadow_decisions")) == len(parsed) == 9
    dlq = await fetch(s, "SELECT id, reason, masked, dlq_topic, dlq_partition, dlq_offset,"
                         " original_partition, original_offset, original_key, original_value"
                         " FROM dlq_entries ORDER BY id")
    expected = sorted(what for _, _, what in inputs if what != "routed")
    assert sorted(r["reason"] for r in dlq) == expected
    assert all(r["masked"] and r["dlq_offset"] is not None for r in dlq)
    assert any("signal to DLQ" in line for line in lines.lines)

    # The originals went through: router.dlq keeps them byte-exact (so a leak would show).
    dlq_records = await read_all(s, s.topic(DLQ))
    assert sorted(r.value for r in dlq_records) == sorted(
        v for _, v, what in inputs if what != "routed")
    assert any(EMAIL.encode() in (r.value or b"") for r in dlq_records)

    # None of the PII in any column of any table, in any log line, in the CLI's output.
    assert leaks(await every_cell(s)) == []
    assert leaks({"log": lines.lines}) == []
    first = dlq[0]["id"]
    outputs = {
        "dlq list": await run_cli(s, "dlq", "list", "--json", "--limit", "100"),
        "dlq show": await run_cli(s, "dlq", "show", str(first), "--json"),
        "dlq replay --dry-run": await run_cli(s, "dlq", "replay", "--all", "--dry-run", "--json"),
    }
    assert all(r.exit_code == 0 for r in outputs.values()), {k: r.output for k, r in outputs.items()}
    assert leaks({k: [r.output] for k, r in outputs.items()}) == []
    shown = json.loads(outputs["dlq show"].stdout)
    assert shown["masked_at_rest"] is True and shown["dlq_record"]["offset"] is not None

    # Replay a masked entry: the ORIGINAL record goes back to `signals`, byte for byte.
    n = next(i for i, (key, _, _) in enumerate(inputs) if key == b"crm-1")
    key, value, _ = inputs[n]
    unclassified = next(r for r in dlq
                        if (r["original_partition"], r["original_offset"]) == coords[n])
    assert unclassified["reason"] == "unclassified"
    assert unclassified["original_key"] != key  # "crm-1" is the value of a named field
    assert EMAIL.encode() not in bytes(unclassified["original_value"])  # masked at rest
    report = await replay_dlq(s, DlqFilter(ids=(unclassified["id"],)))
    assert report.sent == [unclassified["id"]] and report.unavailable == []
    replayed = [r for r in await read_all(s, s.topic(SIGNALS))
                if dict(r.headers).get("x-dlq-id") == str(unclassified["id"]).encode()]
    assert len(replayed) == 1
    assert (replayed[0].key, replayed[0].value) == (key, value)
    assert [(k, v) for k, v in replayed[0].headers if not k.startswith("x-")] == [
        (k, v) for k, v in HEADERS if not k.startswith("x-")]
    assert [(k, v) for k, v in replayed[0].headers if k in ("x-customer", "x-card")] == [
        (k, v) for k, v in HEADERS if k in ("x-customer", "x-card")]

    # It fails again (still unclassified): the row counts the attempt, stays masked, points at
    # its new router.dlq record — and still nothing leaks.
    await worker(s).run_until_idle(1.0)
    again = await fetch(s, "SELECT attempts, status, masked, dlq_partition, dlq_offset"
                           " FROM dlq_entries"
                           " WHERE id = $1", unclassified["id"])
    assert (again[0]["attempts"], again[0]["status"], again[0]["masked"]) == (2, "pending", True)
    assert again[0]["dlq_offset"] > unclassified["dlq_offset"]  # same key, same partition
    assert leaks(await every_cell(s)) == []

    # A masked entry whose router.dlq record is gone is not sent: one line says why.
    gone = next(r for r in dlq if r["reason"] == "no_route")
    await delete_before(s, gone["dlq_topic"], gone["dlq_partition"], gone["dlq_offset"] + 1)
    # (--allow-reorder: earlier entries of its key are still pending and would hold it back)
    result = await run_cli(s, "dlq", "replay", str(gone["id"]), "--allow-reorder")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"entry {gone['id']} not replayed" in errors[0]
    assert "is gone from" in errors[0]
    status = await fetch(s, "SELECT status FROM dlq_entries WHERE id = $1", gone["id"])
    assert status[0]["status"] == "pending"
    assert not [r for r in await read_all(s, s.topic(SIGNALS))
                if dict(r.headers).get("x-dlq-id") == str(gone["id"]).encode()]
