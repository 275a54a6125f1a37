"""What producers wrote, on an operator's terminal: shown as text, never obeyed.

Signal ids, errors, header names, override reasons, heartbeat fields and broker configs reach
the CLI from Kafka and Postgres. In a rich table ``[...]`` must not be markup (``[/]`` raised
MarkupError, ``[b]`` vanished, ``[link=...]`` planted a hyperlink) and no control character may
reach the terminal (shown as ``\\xNN``; JSON output stays the same JSON)."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from router_stream.adapters.kafka_io import ConsumedRecord
from router_stream.cli import _register, cli
from router_stream.cli.dlq_output import print_detail, print_entries, print_summary
from router_stream.config import Settings
from router_stream.dlq.replay import ReplayReport
from router_stream.dlq.store import DlqRow, SummaryRow
from router_stream.dlq.view import entry_detail

NOW = datetime(2025, 1, 2, 12, 0, tzinfo=UTC)

MARKUP = ("[/]", "order-[b]42[/b]", "[link=https://evil.example]click[/link]",
          "Field required [type=missing, input_value={}, input_type=dict]")
# a screen clear, an OSC 8 hyperlink, a C1 CSI, a bell and DEL
CONTROL = "a\x1b[2Jb\x1b]8;;https://evil.example\x07c\x1b]8;;\x07d\x9b31me\x7f"
CONTROL_SHOWN = "a\\x1b[2Jb\\x1b]8;;https://evil.example\\x07c\\x1b]8;;\\x07d\\x9b31me\\x7f"


def controls_in(text: str) -> list[str]:
    """The control characters in ``text`` other than the line breaks printing adds."""
    return [c for c in text if unicodedata.category(c) == "Cc" and c != "\n"]


def row(**changes: object) -> DlqRow:
    values: dict[str, object] = dict(
        id=17, dlq_key="signals/2/40", reason="invalid_signal", error="bad", signal_id="sig-1",
        tenant="acme", kind="alert", attempts=1, status="pending", original_topic="signals",
        original_partition=2, original_offset=40, original_key=b"k", original_headers=[],
        first_failed_at=NOW, last_failed_at=NOW, created_at=NOW, replayed_at=None,
        replay_count=0, discarded_at=None, discard_reason=None, original_timestamp=None,
        value_size=2, original_value=b"{}",
    )
    values.update(changes)
    return DlqRow(**values)  # type: ignore[arg-type]


def invoke(*args: str) -> Result:
    _register()
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


# --- dlq list / show / replay ----------------------------------------------------------------


def test_dlq_list_shows_markup_as_text_and_escapes_control_characters(capsys) -> None:
    entries = [row(id=n, signal_id=text, error=text) for n, text in enumerate(MARKUP, 1)]
    entries.append(row(id=9, signal_id=CONTROL[:9], tenant=CONTROL, error=CONTROL))

    print_entries(entries, as_json=False)  # "[/]" raised MarkupError

    out = capsys.readouterr().out
    for text in MARKUP:
        assert text[:40] in out
    assert CONTROL_SHOWN[:40] in out and controls_in(out) == []


def test_dlq_list_summary_cells_are_text(capsys) -> None:
    print_summary([SummaryRow("[/]", "pending[b]", 3, NOW, NOW)], as_json=False)
    out = capsys.readouterr().out
    assert "[/]" in out and "pending[b]" in out


def test_dlq_show_escapes_control_characters_in_every_field(capsys) -> None:
    value = json.dumps({"note": CONTROL, CONTROL: 1}, ensure_ascii=False).encode()
    detail = entry_detail(row(error=CONTROL, signal_id=CONTROL, tenant="[/]",
                              original_key=CONTROL.encode(),
                              original_headers=[(f"x-{CONTROL}", CONTROL.encode())],
                              original_value=value, value_size=len(value)))

    print_detail(detail)

    out = capsys.readouterr().out
    assert controls_in(out) == []
    assert f"error           {CONTROL_SHOWN}\n" in out
    assert f"signal_id       {CONTROL_SHOWN}\n" in out
    assert f"key             {CONTROL_SHOWN}\n" in out
    assert f"  x-{CONTROL_SHOWN}: {CONTROL_SHOWN}\n" in out
    shown_json = out[out.index("{"):]
    assert json.loads(shown_json) == {"note": CONTROL, CONTROL: 1}  # the same JSON, inert


def test_dlq_show_escapes_a_text_value_line_breaks_included(capsys) -> None:
    text = f"line one\nstatus          replayed\n{CONTROL}"
    print_detail(entry_detail(row(original_value=text.encode(), value_size=len(text))))
    out = capsys.readouterr().out
    assert controls_in(out) == []
    assert f"line one\\x0astatus          replayed\\x0a{CONTROL_SHOWN}\n" in out


def test_dlq_replay_error_lines_escape_control_characters(capsys) -> None:
    from router_stream.cli.dlq import _print_replay

    report = ReplayReport(dry_run=False, unavailable=[(1, f"entry 1 not replayed: {CONTROL}")])
    _print_replay(report, False, None)
    err = capsys.readouterr().err
    assert f"error: entry 1 not replayed: {CONTROL_SHOWN}\n" in err and controls_in(err) == []


# --- override list, policy show / active, db status, topics list, tail ---------------------------


def test_override_list_cells_are_text(monkeypatch) -> None:
    from router_stream.cli import override

    rows = [override.OverrideRow(
        id=f"ovr-{n}", override_kind="drain", selector={"tenant": text}, target=text,
        reason=text, created_by="ops", expires_at=None, created_at=NOW, cleared_at=None,
        cleared_by=None) for n, text in enumerate((*MARKUP, CONTROL))]

    async def list_overrides(settings: Settings, *, include_all: bool = False) -> list[Any]:
        return rows

    monkeypatch.setattr(override, "list_overrides", list_overrides)
    out = invoke("override", "list").output
    assert "[/]" in out and "order-[b]42[/b]" in out and "[link=https://evil" in out
    assert CONTROL_SHOWN[:20] in out and controls_in(out) == []


def test_policy_show_escapes_control_characters_of_heartbeats(capsys) -> None:
    from router_stream.cli.policy import _print_fleet
    from router_stream.core.heartbeat import WorkerHeartbeat, fleet_view

    hb = WorkerHeartbeat(worker_id=f"w{CONTROL}", group_id="[/]", host="h", pid=1,
                         policy_version=f"p-{CONTROL}", started_at=0.0, last_seen=99.0,
                         status="running", interval_s=5.0)
    _print_fleet(fleet_view([hb], f"p-{CONTROL}", 100.0, notes=[CONTROL]), Settings(), False)
    out = capsys.readouterr().out
    assert controls_in(out) == [] and "[/]" in out and f"w{CONTROL_SHOWN[:20]}" in out


def test_policy_active_escapes_what_a_control_record_said(monkeypatch) -> None:
    from router_stream.cli import policy

    async def policy_history(settings: Settings, limit: int = 20) -> list[dict[str, object]]:
        return [{"version": "p-1", "status": "rejected", "status_reason": CONTROL,
                 "published_at": NOW, "published_by": CONTROL}]

    monkeypatch.setattr(policy, "policy_history", policy_history)
    out = invoke("policy", "active").output
    assert controls_in(out) == [] and f"  {CONTROL_SHOWN}  ({CONTROL_SHOWN})" in out


def test_db_status_cells_are_text(monkeypatch) -> None:
    from router_stream.adapters import postgres
    from router_stream.adapters.postgres.migrations import MigrationState

    async def database_status(settings: Settings, migrations_dir: Any = None) -> list[Any]:
        return [MigrationState("[/]999_x.sql", "missing", "[b]abc", None)]

    monkeypatch.setattr(postgres, "database_status", database_status)
    out = invoke("db", "status").output
    assert "[/]999_x.sql" in out and "[b]abc" in out


def test_topics_list_cells_are_text(monkeypatch) -> None:
    from router_stream.adapters import topics
    from router_stream.adapters.topics import TopicInfo

    async def list_topics(settings: Settings, *args: Any) -> list[TopicInfo]:
        return [TopicInfo("signals", "signals", True, 3, 1,
                          {"cleanup.policy": "[/]", "retention.ms": CONTROL})]

    monkeypatch.setattr(topics, "list_topics", list_topics)
    out = invoke("topics", "list").output
    assert "[/]" in out and controls_in(out) == []


@pytest.mark.parametrize("pretty", [False, True])
def test_tail_json_escapes_del_and_c1_and_stays_the_same_json(monkeypatch, pretty: bool) -> None:
    from router_stream.cli import io

    value = {"note": CONTROL, "é": "\u00a0"}
    record = ConsumedRecord("signals", 0, 1, CONTROL.encode(), orjson.dumps(value), 0,
                            [(CONTROL, CONTROL.encode())])

    async def tail_topic(settings: Settings, topic: str, emit: Any, **_: Any) -> int:
        emit(record)
        return 1

    monkeypatch.setattr(io, "tail_topic", tail_topic)
    out = invoke("tail", "signals", *(["--pretty"] if pretty else [])).stdout_bytes
    assert controls_in(out.decode()) == []
    assert orjson.loads(out) == {**io.record_json(record), "value": value}
