"""``router-stream override set|list|clear``: operator overrides with a TTL.

An override takes effect through ``router.control`` (every worker reads it in full and applies
it within about a second) and is recorded in ``routing_overrides`` for ``override list`` and the
audit trail. The command is sent first: an override is live once workers read it; then it is
recorded. Workers drop an override at ``expires_at`` on their own; the table says the same
(``list`` shows only unexpired, uncleared rows unless ``--all``).

Actions (:class:`router_stream.core.overrides.OverrideKind`): ``force_destination`` routes
(kind, tenant) to one destination, ``drain`` sends no new traffic to a destination,
``exclude_source`` leaves a source out of consensus.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from router_stream.cli import cli
from router_stream.cli.terminal import cell
from router_stream.config import Settings
from router_stream.core.models import OverrideClear, OverrideSet
from router_stream.core.overrides import OverrideKind
from router_stream.dlq.timespec import MAX_DURATION, parse_duration
from router_stream.errors import ConfigError, UserError

T = TypeVar("T")
DEFAULT_TTL = "1h"
# what a stored expiry beyond datetime's range (year 9999) is shown as; such rows predate the
# TTL bound or were written by hand, and must still list
FAR_FUTURE = datetime.max.replace(tzinfo=UTC)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(f"invalid ROUTER_* settings: {exc}") from exc


async def _in_db(settings: Settings, work: Any) -> Any:
    from router_stream.adapters import postgres as pg

    conn = await pg.connect(settings)
    try:
        with pg.unavailable_as_router_error("routing_overrides"):
            return await work(conn)
    finally:
        await conn.close()


# --- the work (tests call these) -------------------------------------------------------------


@dataclass(frozen=True)
class OverrideRow:
    id: str
    override_kind: str
    selector: dict[str, Any]
    target: str | None
    reason: str
    created_by: str
    expires_at: datetime | None
    created_at: datetime
    cleared_at: datetime | None
    cleared_by: str | None

    def state(self, now: datetime) -> str:
        if self.cleared_at is not None:
            return "cleared"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def as_json(self, now: datetime) -> dict[str, Any]:
        out = {k: (v.isoformat() if isinstance(v, datetime) else v)
               for k, v in vars(self).items()}
        out["state"] = self.state(now)
        return out


async def set_force_override(
    settings: Settings, destination: str, *, kind: str | None, tenant: str | None,
    ttl_s: float, reason: str = "", override_id: str | None = None, issued_by: str = "",
) -> OverrideSet:
    """Force (kind, tenant) to ``destination`` for ``ttl_s``: send, then record. Returns the
    command as sent (with its ``command_id``)."""
    return await set_override(settings, OverrideKind.FORCE_DESTINATION, destination, kind=kind,
                              tenant=tenant, ttl_s=ttl_s, reason=reason,
                              override_id=override_id, issued_by=issued_by)


async def set_override(
    settings: Settings, action: OverrideKind, target: str, *, kind: str | None = None,
    tenant: str | None = None, ttl_s: float, reason: str = "", override_id: str | None = None,
    issued_by: str = "",
) -> OverrideSet:
    """Set an override of any action for ``ttl_s``: send it through router.control, then record
    it in routing_overrides. Returns the command as sent (with its ``command_id``)."""
    from router_stream.adapters.control import send_control
    from router_stream.adapters.preflight import check_override_target

    if not 0 < ttl_s <= MAX_DURATION.total_seconds():
        raise UserError(f"ttl must be more than 0s and at most {MAX_DURATION.days}d")
    await check_override_target(settings, action, target)
    now = time.time()
    forced = action is OverrideKind.FORCE_DESTINATION
    command = OverrideSet(
        override_id=override_id or f"ovr-{uuid.uuid4().hex[:12]}", action=action.value,
        tenant=tenant if forced else None, kind=kind if forced else None,
        destinations=[target] if forced else [], target=None if forced else target,
        expires_at=now + ttl_s, reason=reason,
        command_id=uuid.uuid4().hex, issued_at=now, issued_by=issued_by,
    )
    await send_control(settings, command)

    async def record(conn: Any) -> None:
        await conn.execute(
            "INSERT INTO routing_overrides (id, override_kind, selector, target, reason,"
            " created_by, expires_at) VALUES ($1, $2, $3::text::jsonb, $4, $5, $6,"
            " to_timestamp($7)) ON CONFLICT (id) DO UPDATE SET override_kind = EXCLUDED."
            "override_kind, selector = EXCLUDED.selector, target = EXCLUDED.target, reason ="
            " EXCLUDED.reason, expires_at = EXCLUDED.expires_at, cleared_at = NULL,"
            " cleared_by = NULL",
            command.override_id, action.value,
            json.dumps({"kind": command.kind, "tenant": command.tenant}), target, reason,
            issued_by, command.expires_at)

    await _in_db(settings, record)
    return command


async def list_overrides(settings: Settings, *, include_all: bool = False) -> list[OverrideRow]:
    """Overrides in force (not cleared, not expired), newest first; ``include_all``: every row."""
    where = "" if include_all else (
        " WHERE cleared_at IS NULL AND (expires_at IS NULL OR expires_at > now())")

    async def fetch(conn: Any) -> list[OverrideRow]:
        # expires_at as epoch seconds: asyncpg cannot decode a year past 9999 into a datetime
        rows = await conn.fetch(
            "SELECT id, override_kind, selector, target, reason, created_by,"
            " extract(epoch FROM expires_at)::float8 AS expires_epoch,"
            f" created_at, cleared_at, cleared_by FROM routing_overrides{where}"
            " ORDER BY created_at DESC, id")
        return [_row(dict(r)) for r in rows]

    result: list[OverrideRow] = await _in_db(settings, fetch)
    return result


def _row(record: dict[str, Any]) -> OverrideRow:
    epoch = record.pop("expires_epoch")
    return OverrideRow(**record, expires_at=None if epoch is None else _expiry(epoch))


def _expiry(epoch: float) -> datetime:
    try:
        return datetime.fromtimestamp(epoch, UTC)
    except (OverflowError, ValueError, OSError):  # beyond year 9999 (or 'infinity')
        return FAR_FUTURE if epoch > 0 else datetime.min.replace(tzinfo=UTC)


async def clear_override(settings: Settings, override_id: str, *, issued_by: str = ""
                         ) -> bool:
    """Clear an override on every worker and in the table. False: it was already cleared.

    An id the table does not know is a user error (a typo would otherwise "succeed").
    """
    from router_stream.adapters.control import send_control

    async def lookup(conn: Any) -> Any:
        return await conn.fetchrow(
            "SELECT cleared_at FROM routing_overrides WHERE id = $1", override_id)

    row = await _in_db(settings, lookup)
    if row is None:
        raise UserError(f"no override with id {override_id!r} (see `router-stream override list"
                        " --all`)")
    if row["cleared_at"] is not None:
        return False
    await send_control(settings, OverrideClear(override_id=override_id, issued_by=issued_by))

    async def mark(conn: Any) -> None:
        await conn.execute(
            "UPDATE routing_overrides SET cleared_at = now(), cleared_by = $2"
            " WHERE id = $1 AND cleared_at IS NULL", override_id, issued_by)

    await _in_db(settings, mark)
    return True


# --- the commands ----------------------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@cli.group()
def override() -> None:
    """Operator overrides with a TTL, applied by every worker through router.control.

    \b
    Examples:
      router-stream override set --kind alert --destination slack --ttl 30m --reason "pager down"
      router-stream override list
      router-stream override clear ovr-3f2a9c1b7d4e

    Exit codes: 0 ok, 1 user error (bad option, unknown id), 2 broker/database failure.
    """


@override.command("set")
@click.option("--destination", help="Force matching signals to this destination.")
@click.option("--kind", help="Only signals of this kind [any kind].")
@click.option("--tenant", help="Only signals of this tenant [any tenant].")
@click.option("--drain", metavar="DEST", help="Send no new traffic to DEST.")
@click.option("--exclude-source", metavar="SRC", help="Leave source SRC out of consensus.")
@click.option("--ttl", default=DEFAULT_TTL, show_default=True,
              help="How long it lasts: 30s, 10m, 1h, 2d (at most 365d).")
@click.option("--reason", default="", help="Why (recorded, shown by `override list`).")
@click.option("--id", "override_id", help="Override id [generated]; reusing one replaces it.")
@click.option("--json", "as_json", is_flag=True, help="Print the command sent as JSON.")
def set_(destination: str | None, kind: str | None, tenant: str | None, drain: str | None,
         exclude_source: str | None, ttl: str, reason: str, override_id: str | None,
         as_json: bool) -> None:
    """Set an override that expires after --ttl.

    \b
    Examples:
      router-stream override set --kind alert --destination slack --ttl 30m
      router-stream override set --tenant acme --kind metric --destination backup --ttl 2h \\
          --reason "primary metrics store migrating"
      router-stream override set --drain pagerduty --ttl 15m --reason "vendor maintenance"
      router-stream override set --exclude-source probe-7 --ttl 1h
    """
    chosen = [name for name, value in (("--destination", destination), ("--drain", drain),
                                       ("--exclude-source", exclude_source)) if value]
    if len(chosen) != 1:
        raise UserError("give exactly one of --destination, --drain, --exclude-source")
    if destination is None and (kind is not None or tenant is not None):
        raise UserError("--kind / --tenant narrow --destination only")
    if destination is not None and (kind is None and tenant is None) and not reason:
        raise UserError("forcing every signal to one destination needs --reason (or narrow it"
                        " with --kind / --tenant)")
    ttl_s = parse_duration(ttl).total_seconds()
    action, target = (
        (OverrideKind.FORCE_DESTINATION, destination) if destination is not None
        else (OverrideKind.DRAIN, drain) if drain is not None
        else (OverrideKind.EXCLUDE_SOURCE, exclude_source))
    assert target is not None
    command = _run(set_override(
        _settings(), action, target, kind=kind, tenant=tenant, ttl_s=ttl_s, reason=reason,
        override_id=override_id, issued_by=getpass.getuser()))
    if as_json:
        click.echo(command.model_dump_json())
        return
    expires = datetime.fromtimestamp(command.expires_at, UTC).isoformat(timespec="seconds")
    if action is OverrideKind.FORCE_DESTINATION:
        what = f"kind={kind or '*'} tenant={tenant or '*'} -> {target}"
    else:
        what = f"{action.value} {target}"
    click.echo(f"override {command.override_id}: {what} until {expires}")


@override.command("list")
@click.option("--all", "include_all", is_flag=True, help="Also expired and cleared overrides.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(include_all: bool, as_json: bool) -> None:
    """List overrides in force (newest first); --all includes expired and cleared ones.

    \b
    Example:
      router-stream override list --all --json
    """
    rows = _run(list_overrides(_settings(), include_all=include_all))
    now = datetime.now(UTC)
    if as_json:
        click.echo(json.dumps([r.as_json(now) for r in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "kind", "selector", "target", "expires", "state", "reason")
    for r in rows:
        selector = " ".join(f"{k}={v}" for k, v in r.selector.items() if v is not None) or "*"
        expires = ("" if r.expires_at is None else "after 9999-12-31"
                   if r.expires_at == FAR_FUTURE
                   else r.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"))
        # cells, not markup: ids, targets and reasons come from router.control records
        table.add_row(*map(cell, (r.id, r.override_kind, selector, r.target or "", expires,
                                  r.state(now), r.reason)))
    table.caption = f"{len(rows)} overrides"
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)


@override.command("clear")
@click.argument("override_id", metavar="ID")
def clear(override_id: str) -> None:
    """Remove override ID on every worker now (before its TTL).

    \b
    Example:
      router-stream override clear ovr-3f2a9c1b7d4e
    """
    if _run(clear_override(_settings(), override_id, issued_by=getpass.getuser())):
        click.echo(f"override {override_id} cleared")
    else:
        click.echo(f"override {override_id} was already cleared")
