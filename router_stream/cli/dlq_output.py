"""How ``router-stream dlq`` prints: JSON for machines, rich tables and a detail view for people."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from router_stream.cli.terminal import cell, printable, printable_json
from router_stream.dlq import store


def json_out(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def console() -> Any:
    """A rich console; piped output gets a wide fixed width so rows are not wrapped for grep."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


def _short(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_summary(rows: list[store.SummaryRow], as_json: bool) -> None:
    if as_json:
        json_out({"total": sum(r.count for r in rows),
                   "groups": [{"reason": r.reason, "status": r.status, "count": r.count,
                               "oldest": r.oldest.isoformat(), "newest": r.newest.isoformat()}
                              for r in rows]})
        return
    from rich.table import Table

    table = Table("reason", "status", "count", "oldest failure", "newest failure")
    for r in rows:
        table.add_row(*map(cell, (r.reason, r.status, r.count, _short(r.oldest),
                                  _short(r.newest))))
    table.caption = f"{sum(r.count for r in rows)} entries"
    console().print(table)


def print_entries(entries: list[store.DlqRow], as_json: bool) -> None:
    from router_stream.dlq.view import entry_summary

    if as_json:
        json_out([entry_summary(e) for e in entries])
        return
    from rich.table import Table

    table = Table("id", "reason", "status", "att", "origin", "signal_id", "last failure",
                  "error")
    for e in entries:
        origin = f"{e.original_topic}/{e.original_partition}/{e.original_offset}"
        # cells, not markup: signal ids and errors are what the signal's producer wrote
        table.add_row(*map(cell, (e.id, e.reason, e.status, e.attempts, origin, e.signal_id or "",
                                  _short(e.last_failed_at), e.error[:60])))
    table.caption = f"{len(entries)} entries"
    console().print(table)


def print_detail(d: dict[str, Any]) -> None:
    """The entry for a person; what its producer wrote is shown, its control characters
    escaped (``\\xNN``; inside JSON ``\\u00NN``), never sent to the terminal."""
    for name in ("id", "status", "reason", "attempts", "error", "signal_id", "tenant", "kind",
                 "dlq_key", "first_failed_at", "last_failed_at", "replayed_at", "replay_count",
                 "discarded_at", "discard_reason"):
        if d.get(name) not in (None, ""):
            click.echo(f"{name:<16}{printable(d[name])}")
    click.echo(f"{'key':<16}{_bytes_line(d['key'])}")
    click.echo(f"{'headers':<16}{'' if d['headers'] else '(none)'}")
    for name, value in d["headers"]:
        click.echo(f"  {printable(name)}: {printable(value) if value is not None else '(null)'}")
    click.echo(f"value ({d['value']['encoding']}, {d['value']['size']} bytes)"
               + _masking_note(d))
    value = d["value"]
    if value["encoding"] == "json":
        click.echo(printable_json(json.dumps(value["json"], indent=2, ensure_ascii=False)))
    elif value["encoding"] == "text":
        click.echo(printable(value["text"]))
    elif value["encoding"] == "base64":
        click.echo(f"  hex: {value['hex_preview']}{' ...' if value['size'] > 32 else ''}")
        click.echo(f"  base64: {value['base64']}")


def _masking_note(d: dict[str, Any]) -> str:
    if d["masked_at_rest"]:
        at = d["dlq_record"]
        return (" — masked at rest; the original is on "
                f"{at['topic']} partition {at['partition']} offset {at['offset']}")
    return "" if d["masked"] else " — not masked: no policy given"


def _bytes_line(described: dict[str, Any]) -> str:
    enc = described["encoding"]
    if enc == "null":
        return "(none)"
    if enc == "json":
        return printable_json(json.dumps(described["json"], ensure_ascii=False))
    return printable(described.get("text") or "base64:" + described["base64"])
