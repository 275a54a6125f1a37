"""``router-stream dlq list|show|discard|replay|reindex`` (work: router_stream/dlq/)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from router_stream.cli import EXIT_RUNTIME_FAILURE, EXIT_USER_ERROR, cli
from router_stream.cli.dlq_output import (
    json_out,
    print_detail,
    print_entries,
    print_summary,
)
from router_stream.cli.terminal import printable
from router_stream.config import Settings
from router_stream.dlq import store
from router_stream.dlq.filters import REASONS, STATUSES, DlqFilter
from router_stream.dlq.replay import DEFAULT_MAX_ATTEMPTS, replay_dlq, replay_record
from router_stream.dlq.timespec import parse_instant
from router_stream.errors import ConfigError, UserError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

ENTRY_ID = click.IntRange(1, 2**63 - 1)  # dlq_entries.id is a bigserial


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(f"invalid ROUTER_* settings: {exc}") from exc


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _with_conn(settings: Settings, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    from router_stream.adapters import postgres as pg

    conn = await pg.connect(settings)
    try:
        return await work(conn)
    finally:
        await conn.close()


def _filter_options(reason_alias: bool = True) -> Callable[[F], F]:
    """The selection options every dlq command shares. The DLQ reason filter is
    ``--dlq-reason`` everywhere, because ``--reason`` is the text recorded with an operator
    action (discard, override set, policy rollback); list and replay also accept ``--reason``
    as a hidden alias, as they once documented it."""

    def decorate(fn: F) -> F:
        options = [
            click.option("--id", "ids", type=ENTRY_ID, multiple=True,
                         help="Entry id (repeatable)."),
            # Not click.Choice: a bad value is a user error (exit 1), not a usage error (2).
            click.option("--dlq-reason", "reasons", metavar="REASON", multiple=True,
                         help=f"Why it was DLQ'd (repeatable): {', '.join(REASONS)}."),
            *([click.option("--reason", "reasons_alias", metavar="REASON", multiple=True,
                            hidden=True)] if reason_alias else []),
            click.option("--status", "statuses", metavar="STATUS", multiple=True,
                         help=f"{' | '.join(STATUSES)} (repeatable)."),
            click.option("--since", help="Failed at or after: ISO-8601, or 1h / 30m / 2d ago."),
            click.option("--until", help="Failed before: ISO-8601, or 1h / 30m / 2d ago."),
            click.option("--tenant", "tenants", multiple=True, help="Tenant (repeatable)."),
            click.option("--kind", "kinds", multiple=True, help="Signal kind (repeatable)."),
            click.option("--topic", "topics", multiple=True,
                         help="Original (physical) topic it was read from (repeatable)."),
            click.option("--signal-id", "signal_ids", multiple=True, help="Signal id."),
        ]
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _build_filter(ids: tuple[int, ...] = (), *, since: str | None = None,
                  until: str | None = None, reasons_alias: tuple[str, ...] = (),
                  **fields: Any) -> DlqFilter:
    now = datetime.now(UTC)
    fields["reasons"] = tuple(fields.get("reasons", ())) + tuple(reasons_alias)
    return DlqFilter(
        ids=tuple(ids),
        since=parse_instant(since, now) if since else None,
        until=parse_instant(until, now) if until else None,
        **{k: tuple(v) for k, v in fields.items()},
    )


def _require_selection(where: DlqFilter, all_: bool, verb: str) -> None:
    if where.is_empty and not all_:
        raise UserError(f"refusing to {verb} every DLQ entry: give ids or filters, or --all")


def _say_if_projection_lags(settings: Settings) -> None:
    """One line on stderr when dlq_entries does not show all of router.dlq yet."""
    from router_stream.config import DLQ
    from router_stream.projection.lag import projection_lag

    lag = _run(projection_lag(settings, settings.topic(DLQ)))
    if lag is not None:
        click.secho(f"note: {lag.describe(settings.topic(DLQ))}", fg="yellow", err=True)


@cli.group()
def dlq() -> None:
    """Inspect, discard, replay and rebuild the dead-letter queue (Postgres dlq_entries).

    \b
    Examples:
      router-stream dlq list --status pending --since 1h
      router-stream dlq list --summary
      router-stream dlq show 42
      router-stream dlq replay --dlq-reason no_healthy_destination --dry-run
      router-stream dlq replay --dlq-reason no_healthy_destination --rate 200
      router-stream dlq discard 42 43 --reason "test traffic"
      router-stream dlq reindex            # rebuild the table from the router.dlq topic

    Exit codes: 0 ok, 1 user error (bad filter, unknown id, refused), 2 broker/database failure.
    """


# --- list ----------------------------------------------------------------------------------


@dlq.command("list")
@_filter_options()
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--summary", is_flag=True, help="Counts by reason and status instead of entries.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(limit: int, summary: bool, as_json: bool, **filters: Any) -> None:
    """List DLQ entries matching the filters, oldest first.

    \b
    Examples:
      router-stream dlq list --dlq-reason no_healthy_destination --status pending --limit 20
      router-stream dlq list --since 2025-01-02T00:00:00Z --until 6h --json
      router-stream dlq list --summary --since 1d
    """
    where = _build_filter(**filters)
    settings = _settings()
    _say_if_projection_lags(settings)
    if summary:
        rows = _run(_with_conn(settings, lambda c: store.summary(c, where)))
        print_summary(rows, as_json)
        return
    entries = _run(_with_conn(settings, lambda c: store.list_entries(c, where, limit=limit)))
    print_entries(entries, as_json)


# --- show ----------------------------------------------------------------------------------


@dlq.command()
@click.argument("entry_id", metavar="ID", type=ENTRY_ID)
@click.option("--policy", "policy_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Mask PII per this policy's redact section [ROUTER_POLICY_FILE].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(entry_id: int, policy_file: Path | None, as_json: bool) -> None:
    """Show one entry: status, error, headers, key and the stored bytes.

    Bytes are printed as text when they are UTF-8 (pretty JSON when they are JSON), else as
    base64 with a hex preview. PII is masked per the policy's redact section when a policy is
    given (--policy or ROUTER_POLICY_FILE). An entry the worker stored masked ("masked at rest")
    shows only its masked copy; its original bytes are on router.dlq, where replay reads them.

    \b
    Example:
      router-stream dlq show 42 --policy examples/policy.yaml
    """
    from router_stream.dlq.view import entry_detail

    settings = _settings()
    _say_if_projection_lags(settings)
    redact = _redact_policy(policy_file or (Path(settings.policy_file)
                                            if settings.policy_file else None))
    row = _run(_with_conn(settings, lambda c: store.get_entry(c, entry_id)))
    detail = entry_detail(row, redact)
    if as_json:
        json_out(detail)
        return
    print_detail(detail)


def _redact_policy(path: Path | None) -> Any:
    if path is None:
        return None
    from router_stream.cli.policy import read_policy

    _, policy = read_policy(path)
    return policy.redact


def _redactor(path: Path | None) -> Any:
    """The policy file's compiled redactor (its rollout candidate's section included)."""
    if path is None:
        return None
    from router_stream.cli.policy import read_policy
    from router_stream.worker.policy_source import compile_policy_text

    text, _ = read_policy(path)  # a bad file: the same lines as `policy validate`
    return compile_policy_text(text, str(path), directory=path.parent).redactor


# --- discard -------------------------------------------------------------------------------


@dlq.command()
@click.argument("id_args", metavar="[ID]...", type=ENTRY_ID, nargs=-1)
@_filter_options(reason_alias=False)
@click.option("--reason", "discard_reason", required=True,
              help="Why they are discarded (recorded with each entry).")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option("--all", "all_", is_flag=True, help="Allow discarding without ids or filters.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def discard(id_args: tuple[int, ...], discard_reason: str, limit: int | None, all_: bool,
            as_json: bool, ids: tuple[int, ...], **filters: Any) -> None:
    """Mark pending entries discarded (never replayed), recording why and when.

    Select by ID arguments and/or filters (the DLQ reason filter is --dlq-reason; --reason is
    the text recorded). Entries that are not pending are left alone; an ID that does not exist
    is an error (exit 1) and nothing is discarded.

    \b
    Examples:
      router-stream dlq discard 42 43 --reason "load test traffic"
      router-stream dlq discard --dlq-reason invalid_json --until 7d --reason "bad producer v1.2"
    """
    where = _build_filter(ids + id_args, **filters)
    _require_selection(where, all_, "discard")
    if not discard_reason.strip():
        raise UserError("--reason must say why the entries are discarded")
    async def work(conn: Any) -> list[int]:
        for entry_id in ids + id_args:  # an unknown id is a typo, as for show and replay
            await store.get_entry(conn, entry_id)
        return await store.discard(conn, where, discard_reason, limit=limit)

    discarded = _run(_with_conn(_settings(), work))
    if as_json:
        json_out({"discarded": discarded})
    else:
        click.echo(f"discarded {len(discarded)} entries"
                   + (f": {', '.join(map(str, discarded[:20]))}" if discarded else ""))


# --- replay --------------------------------------------------------------------------------


@dlq.command()
@click.argument("id_args", metavar="[ID]...", type=ENTRY_ID, nargs=-1)
@_filter_options()
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="At most the first N matching entries, in original order.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="At most N records per second [unlimited].")
@click.option("--max-attempts", type=click.IntRange(min=1), default=DEFAULT_MAX_ATTEMPTS,
              show_default=True, help="Refuse entries that already failed this many times.")
@click.option("--allow-reorder", is_flag=True,
              help="Send entries even when an earlier entry of their key stays pending.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [on a terminal].")
@click.option("--dry-run", is_flag=True, help="Print what would be sent; send nothing.")
@click.option("--all", "all_", is_flag=True, help="Allow replaying without ids or filters.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def replay(id_args: tuple[int, ...], limit: int | None, rate: float | None, max_attempts: int,
           allow_reorder: bool, progress: bool | None, dry_run: bool, all_: bool,
           as_json: bool, ids: tuple[int, ...], **filters: Any) -> None:
    """Send pending entries back to their original topic, byte-exact, and mark them replayed.

    Replay sends only to the topic the router reads signals from, which every entry the router
    writes names; an entry naming another topic (or a topic that does not exist) is not sent,
    stays pending, and one line says so; the others are replayed.

    Each record carries its original key, value and headers plus x-dlq-id, x-dlq-attempts and
    x-dlq-original-topic/partition/offset, so the worker keeps the signal's origin and counts
    the attempt. An entry is marked replayed only after the broker acknowledged it; only
    pending entries are sent, so running the same replay twice sends nothing the second time.
    Entries that already failed --max-attempts times are refused (discard them instead).
    An entry stored masked (its PII masked in Postgres) is sent from its record on router.dlq,
    read back byte-exact; if that record is gone (retention) the entry is not sent, stays
    pending, and one line says so.

    Within a key, entries are sent in their original order (topic, partition, offset). An entry
    whose key has an earlier entry that stays pending (not selected, refused, unavailable or
    refused by the broker) is held back, stays pending, and is counted on stderr, unless
    --allow-reorder. Across keys no order is promised.

    \b
    Examples:
      router-stream dlq replay --dlq-reason no_healthy_destination --dry-run
      router-stream dlq replay --dlq-reason no_healthy_destination --since 2h --rate 500
      router-stream dlq replay 42

    Exit code 1 when entries matched but every one was refused by --max-attempts, when an
    entry could not be replayed (its router.dlq record is gone, or its topic is not the signals
    topic or does not exist), or when entries were held back; 2 when the broker refused an
    entry or the replay stopped or was interrupted (what was acknowledged is marked: run it
    again).
    """
    where = _build_filter(ids + id_args, **filters)
    _require_selection(where, all_, "replay")
    settings = _settings()
    _say_if_projection_lags(settings)
    preview = _Preview(as_json) if dry_run else None
    try:
        report = _run(_replay_with_progress(
            settings, where, limit=limit, rate=rate, max_attempts=max_attempts,
            dry_run=dry_run, allow_reorder=allow_reorder,
            progress=progress, quiet=as_json or dry_run,
            on_preview=preview))
    except KeyboardInterrupt:
        click.secho("interrupted: the entries acknowledged so far are marked replayed; run the"
                    " same command again to send the rest", fg="yellow", err=True)
        sys.exit(EXIT_RUNTIME_FAILURE)
    _print_replay(report, as_json, preview)
    if report.failed:
        sys.exit(EXIT_RUNTIME_FAILURE)
    if (report.refused and not report.selected) or report.unavailable or report.held_entries:
        sys.exit(EXIT_USER_ERROR)


async def _replay_with_progress(settings: Settings, where: DlqFilter, *, progress: bool | None,
                                quiet: bool, **options: Any) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    show = console.is_terminal and not quiet if progress is None else progress
    bar = Progress("replaying", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, transient=console.is_terminal,
                   disable=not show)
    task = bar.add_task("replay", total=None)
    with bar:
        return await replay_dlq(
            settings, where,
            on_selected=lambda n: bar.update(task, total=n),
            on_sent=lambda n: bar.advance(task, n), **options)


class _Preview:
    """A dry run's records as they come: a line each, or collected for one JSON document."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.records: list[dict[str, Any]] = []

    def __call__(self, row: store.DlqRow) -> None:
        from router_stream.dlq.view import describe_bytes

        if self.as_json:
            self.records.append(_dry_run_record(row, describe_bytes))
            return
        rec = replay_record(row, preview=True)
        what = (f"{row.attempts} attempts so far; masked at rest, the original is read back"
                f" from {row.dlq_topic} partition {row.dlq_partition} offset {row.dlq_offset}"
                if row.masked else f"{row.value_size or 0} bytes, {row.attempts} attempts so far")
        click.echo(f"would send entry {row.id} -> {rec.topic} key={rec.key!r} ({what})")


def _print_replay(report: Any, as_json: bool, preview: _Preview | None) -> None:
    if as_json:
        out: dict[str, Any] = {"dry_run": report.dry_run, "selected": report.selected,
                               "sent": report.sent, "refused": report.refused,
                               "not_pending": report.not_pending,
                               "max_attempts": report.max_attempts,
                               "unavailable": [{"id": i, "error": why}
                                               for i, why in report.unavailable],
                               "failed": [{"id": i, "error": why} for i, why in report.failed],
                               "held_back": {"entries": report.held_entries,
                                             "keys": report.held_keys, "why": report.held}}
        if preview is not None:
            out["records"] = preview.records
        json_out(out)
    elif report.dry_run:
        click.echo(f"dry run: {report.would_send} entries would be replayed")
    else:
        click.echo(f"replayed {len(report.sent)} entries")
    if report.not_pending:
        click.echo(f"not pending (already replayed or discarded), skipped: "
                   f"{', '.join(map(str, report.not_pending))}", err=True)
    for _, why in (*report.unavailable, *report.failed):
        click.echo(f"error: {printable(why)}", err=True)
    if report.held_entries:
        why = "; ".join(f"{n} because {reason}" for reason, n in sorted(report.held.items()))
        click.secho(f"held back {report.held_entries} entries of {report.held_keys} keys to keep"
                    f" each key's order ({why}); they stay pending: replay or discard the"
                    " earlier entries first, or pass --allow-reorder", fg="yellow", err=True)
    if report.refused:
        click.secho(f"refused {report.refused} entries with attempts >= --max-attempts "
                    f"{report.max_attempts}: discard them (dlq discard) or raise --max-attempts",
                    fg="yellow", err=True)


def _dry_run_record(row: store.DlqRow, describe: Callable[..., Any]) -> dict[str, Any]:
    """What would be sent, as stored: a masked entry shows its masked copy (the bytes sent are
    read back from router.dlq and are never printed)."""
    rec = replay_record(row, preview=True)
    return {"id": row.id, "topic": rec.topic, "masked_at_rest": row.masked,
            "key": describe(rec.key),
            "value": describe(rec.value),
            "headers": [[k, v.decode("utf-8", "replace") if v is not None else None]
                        for k, v in rec.headers],
            "timestamp_ms": rec.timestamp_ms}


# --- reindex -------------------------------------------------------------------------------


@dlq.command()
@click.option("--topic", default=None, help="Physical topic to read [the router.dlq topic].")
@click.option("--policy", "policy_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Mask PII per this policy's redact section [ROUTER_POLICY_FILE; without "
                   "either: every detector, no named field].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def reindex(topic: str | None, policy_file: Path | None, as_json: bool) -> None:
    """Rebuild dlq_entries from the router.dlq topic (read from the beginning).

    Existing entries keep their status and history; missing ones are added as pending; an
    entry whose record failed again after a replay (more attempts) becomes pending again. An
    entry whose input was decided again after it (a worker re-processed the record) is left
    out, as the projection leaves it out. What is stored is masked per the policy's redact
    section, as the worker does; rows written before masking existed (migration 004) are
    masked in place.

    \b
    Example:
      router-stream dlq reindex --policy policy.yaml --json
    """
    from router_stream.core.redaction import DEFAULT_REDACTOR
    from router_stream.dlq.reindex import reindex_dlq

    settings = _settings()
    redactor = _redactor(policy_file or (Path(settings.policy_file)
                                         if settings.policy_file else None))
    if redactor is None:
        click.echo("no policy given (--policy or ROUTER_POLICY_FILE): masking with every "
                   "detector and no named field", err=True)
        redactor = DEFAULT_REDACTOR
    report = _run(reindex_dlq(settings, topic=topic, redactor=redactor))
    if as_json:
        json_out(vars(report))
    else:
        decided = (f", {report.decided} left out (their inputs' outcome is a decision)"
                   if report.decided else "")
        click.echo(f"read {report.read} records: {report.inserted} entries added, "
                   f"{report.updated} updated, {report.skipped} skipped (not DLQ records)"
                   f"{decided}; PII masked in {report.masked} of them")
