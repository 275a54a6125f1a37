"""Schema migrations.

``migrations/NNN_name.sql`` files are applied in numeric order, each exactly once, each in its
own transaction, under a session advisory lock (two migrators racing apply every file once).
``schema_migrations`` records the filename and the sha256 of its bytes; a file whose bytes
changed after it was applied is refused before anything runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from router_stream.adapters import data_path
from router_stream.adapters.postgres.connections import connect, unavailable_as_router_error
from router_stream.config import Settings
from router_stream.errors import RouterError, UserError


class MigrationError(RouterError):
    """A migration could not be applied (bad SQL, lock not obtained, numbering clash)."""


class MigrationChecksumMismatch(MigrationError, UserError):
    """An already-applied migration file was edited. Exit code 1: fix the file, add a new one."""


_MIGRATION_FILE = re.compile(r"^(\d{3})_[A-Za-z0-9_\-]+\.sql$")


# pg_advisory_lock key: the first 8 bytes of sha256("router_stream.migrations") as a signed int64.
_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"router_stream.migrations").digest()[:8], "big", signed=True
)


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    filename     text        PRIMARY KEY,
    version      integer     NOT NULL UNIQUE,
    checksum     text        NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    duration_ms  integer     NOT NULL
)
"""


@dataclass(frozen=True)
class MigrationFile:
    version: int
    filename: str
    checksum: str
    sql: str


@dataclass(frozen=True)
class MigrationState:
    """One row of ``db status``: state is applied | pending | changed | missing."""

    filename: str
    state: str
    checksum: str
    applied_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "filename": self.filename,
            "state": self.state,
            "checksum": self.checksum,
            "applied_at": self.applied_at.isoformat() if self.applied_at else None,
        }


def default_migrations_dir() -> Path:
    """The migrations shipped with the package (the repository's ``migrations/``)."""
    return data_path("migrations")


def load_migrations(migrations_dir: Path) -> list[MigrationFile]:
    """The NNN_*.sql files in order; a stray .sql name or a reused number is an error."""
    if not migrations_dir.is_dir():
        raise UserError(f"migrations directory not found: {migrations_dir}")
    files: list[MigrationFile] = []
    for path in sorted(migrations_dir.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files must be named NNN_name.sql")
        data = path.read_bytes()
        files.append(
            MigrationFile(
                version=int(match.group(1)),
                filename=path.name,
                checksum=hashlib.sha256(data).hexdigest(),
                sql=data.decode("utf-8"),
            )
        )
    files.sort(key=lambda f: f.version)
    for prev, cur in zip(files, files[1:], strict=False):
        if prev.version == cur.version:
            raise MigrationError(
                f"{prev.filename} and {cur.filename} share number {cur.version:03d}"
            )
    return files


async def _applied(conn: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return {}
    rows = await conn.fetch("SELECT filename, checksum, applied_at FROM schema_migrations")
    return {row["filename"]: row for row in rows}


def _check_unchanged(files: Sequence[MigrationFile], applied: Mapping[str, asyncpg.Record]) -> None:
    changed = [f.filename for f in files if f.filename in applied
               and applied[f.filename]["checksum"] != f.checksum]
    if changed:
        raise MigrationChecksumMismatch(
            "already-applied migration(s) changed on disk: " + ", ".join(changed)
            + " — restore the applied version and put the change in a new NNN_*.sql file"
        )


async def migrate(
    conn: asyncpg.Connection, migrations_dir: Path | None = None, *, lock_timeout: float = 60.0
) -> list[str]:
    """Apply every pending migration; returns the filenames applied now (empty: up to date)."""
    files = load_migrations(migrations_dir or default_migrations_dir())
    with unavailable_as_router_error("migrating the database"):
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY, timeout=lock_timeout)
        except TimeoutError as exc:
            raise MigrationError(
                f"another `db migrate` held the migration lock for more than {lock_timeout:.0f}s"
            ) from exc
        try:
            await conn.execute(_BOOKKEEPING)
            applied = await _applied(conn)
            _check_unchanged(files, applied)
            done: list[str] = []
            for migration in files:
                if migration.filename not in applied:
                    await _apply_one(conn, migration)
                    done.append(migration.filename)
            return done
        finally:
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def _apply_one(conn: asyncpg.Connection, migration: MigrationFile) -> None:
    started = asyncio.get_running_loop().time()
    try:
        async with conn.transaction():
            await conn.execute(migration.sql)
            elapsed_ms = int((asyncio.get_running_loop().time() - started) * 1000)
            await conn.execute(
                "INSERT INTO schema_migrations (filename, version, checksum, duration_ms)"
                " VALUES ($1, $2, $3, $4)",
                migration.filename, migration.version, migration.checksum, elapsed_ms,
            )
    except asyncpg.exceptions.PostgresError as exc:
        raise MigrationError(f"{migration.filename} failed and was rolled back: {exc}") from exc


async def migration_status(
    conn: asyncpg.Connection, migrations_dir: Path | None = None
) -> list[MigrationState]:
    """Every migration on disk or in the database with its state; read-only."""
    files = load_migrations(migrations_dir or default_migrations_dir())
    with unavailable_as_router_error("reading migration status"):
        applied = await _applied(conn)
    states: list[MigrationState] = []
    for f in files:
        row = applied.get(f.filename)
        if row is None:
            states.append(MigrationState(f.filename, "pending", f.checksum, None))
        else:
            state = "applied" if row["checksum"] == f.checksum else "changed"
            states.append(MigrationState(f.filename, state, f.checksum, row["applied_at"]))
    on_disk = {f.filename for f in files}
    for name in sorted(set(applied) - on_disk):
        row = applied[name]
        states.append(MigrationState(name, "missing", row["checksum"], row["applied_at"]))
    return states


async def migrate_database(settings: Settings, migrations_dir: Path | None = None) -> list[str]:
    """Connect, apply pending migrations, disconnect; returns the filenames applied."""
    conn = await connect(settings)
    try:
        return await migrate(conn, migrations_dir)
    finally:
        await conn.close()


async def database_status(
    settings: Settings, migrations_dir: Path | None = None
) -> list[MigrationState]:
    """Connect, read the migration state, disconnect."""
    conn = await connect(settings)
    try:
        return await migration_status(conn, migrations_dir)
    finally:
        await conn.close()
