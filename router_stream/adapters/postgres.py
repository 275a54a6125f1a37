"""The Postgres seam: connections, schema migrations and the worker's idempotent batch writes.

Everything that talks to Postgres goes through here. asyncpg's and the OS's connection errors are
translated into :class:`~router_stream.errors.DatabaseUnavailable` at this boundary
(``raise ... from exc``), so callers only ever see the project's error tree.

Migrations
    ``migrations/NNN_name.sql`` files are applied in numeric order, each exactly once, each in its
    own transaction, under a session advisory lock (two migrators racing apply every file once).
    ``schema_migrations`` records the filename and the sha256 of its bytes; a file whose bytes
    changed after it was applied is refused before anything runs.

Batch writes
    ``insert_*`` take a sequence of rows, each either a tuple in the documented column order
    (``DECISION_COLUMNS`` etc.) or a mapping with those keys (missing optional keys are NULL /
    the column default), and return how many rows were new. Rows are inserted with
    ``INSERT ... SELECT FROM unnest($1::type[], ...) ON CONFLICT DO NOTHING``: one statement and
    one round trip per batch, which measured fastest for 500-row batches (see
    ``bench/bench_pg_insert.py``), and idempotent on each table's natural key.

    Values: timestamps are ``datetime`` (naive ones are taken as UTC), ISO-8601 strings, or epoch
    numbers (> 1e11 is read as milliseconds, otherwise seconds); JSON columns take any
    JSON-serialisable value or an already-serialised ``str``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import orjson

from router_stream.adapters import data_path
from router_stream.config import Settings
from router_stream.dsn import scrub
from router_stream.errors import DatabaseUnavailable, RouterError, UserError

__all__ = [
    "BREAKER_TRANSITION_COLUMNS",
    "DECISION_COLUMNS",
    "DLQ_COLUMNS",
    "TRUST_SNAPSHOT_COLUMNS",
    "MigrationChecksumMismatch",
    "MigrationError",
    "MigrationState",
    "connect",
    "copy_decisions",
    "create_pool",
    "database_status",
    "decode_headers",
    "default_migrations_dir",
    "dlq_key",
    "encode_headers",
    "insert_breaker_transitions",
    "insert_decisions",
    "insert_dlq_entries",
    "insert_trust_snapshots",
    "migrate",
    "migrate_database",
    "migration_status",
    "record_policy_version",
]

# Connection failures that mean "the database is not there (yet)": worth retrying.
_UNAVAILABLE = (
    OSError,  # refused, unreachable, DNS, TLS handshake (ssl.SSLError is an OSError)
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.CannotConnectNowError,  # starting up / shutting down
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionDoesNotExistError,  # dropped mid-query
    asyncpg.exceptions.InterfaceError,  # e.g. "connection is closed"
    # A connection the server closed mid-transaction can fail its pool reset with "cannot
    # switch to state …; another operation is in progress"; the pool drops it, a retry gets a
    # new one (seen when Postgres stopped under load: tests/chaos scenario 4).
    asyncpg.exceptions.InternalClientError,
)


@contextlib.contextmanager
def _unavailable_as_router_error(what: str) -> Iterator[None]:
    """Translate a lost/unreachable database into DatabaseUnavailable (retriable)."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise DatabaseUnavailable(f"{what}: {exc or type(exc).__name__}") from exc


class MigrationError(RouterError):
    """A migration could not be applied (bad SQL, lock not obtained, numbering clash)."""


class MigrationChecksumMismatch(MigrationError, UserError):
    """An already-applied migration file was edited. Exit code 1: fix the file, add a new one."""


# --- connections ----------------------------------------------------------------------------


def _ssl_argument(settings: Settings) -> str | ssl.SSLContext | None:
    """What to pass as asyncpg's ``ssl=``: None lets a ``sslmode`` in the URL itself win."""
    dsn = settings.database_url.get_secret_value()
    if "sslmode" in parse_qs(urlsplit(dsn).query):
        return None
    mode = settings.database_sslmode
    if mode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(cafile=settings.database_sslrootcert)
        ctx.check_hostname = mode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx
    return mode


def _describe_target(settings: Settings) -> str:
    """host[:port][,…]/db of the URL, without user or password, for error messages."""
    parts = urlsplit(settings.database_url.get_secret_value())
    hosts = parts.netloc.rpartition("@")[2]  # not .hostname/.port: a host list has commas
    return f"{hosts or 'localhost'}{parts.path or ''}"


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python values (binary format: version byte 1 + JSON text).
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda v: b"\x01" + (v.encode() if isinstance(v, str) else orjson.dumps(v)),
        decoder=lambda b: orjson.loads(b[1:]),
        format="binary",
    )


def _connect_options(settings: Settings, timeout: float) -> dict[str, Any]:
    options: dict[str, Any] = {"timeout": timeout}
    ssl_arg = _ssl_argument(settings)
    if ssl_arg is not None:
        options["ssl"] = ssl_arg
    return options


def _unreachable(settings: Settings, exc: BaseException) -> DatabaseUnavailable:
    target = _describe_target(settings)
    # the driver's message may quote the DSN: never let the password through
    reason = scrub(str(exc) or type(exc).__name__, settings.database_url.get_secret_value())
    return DatabaseUnavailable(f"cannot connect to Postgres at {target}: {reason}")


async def connect(settings: Settings, *, timeout: float = 10.0) -> asyncpg.Connection:
    """One connection with TLS per ``database_sslmode`` / ``database_sslrootcert``.

    Raises DatabaseUnavailable when the server cannot be reached or refuses us (a refused login
    or a missing database included: the worker retries those while an operator fixes them).
    """
    dsn = settings.database_url.get_secret_value()
    try:
        conn: asyncpg.Connection = await asyncpg.connect(dsn, **_connect_options(settings, timeout))
    except (*_UNAVAILABLE, asyncpg.exceptions.PostgresError) as exc:
        raise _unreachable(settings, exc) from exc
    await _init_connection(conn)
    return conn


async def create_pool(
    settings: Settings, *, min_size: int = 1, max_size: int = 4, timeout: float = 10.0
) -> asyncpg.Pool:
    """A connection pool for the worker, same TLS and codecs as :func:`connect`."""
    dsn = settings.database_url.get_secret_value()
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init_connection,
            **_connect_options(settings, timeout),
        )
    except (*_UNAVAILABLE, asyncpg.exceptions.PostgresError) as exc:
        raise _unreachable(settings, exc) from exc
    if pool is None:  # only when create_pool is not awaited; keeps the type checker honest
        raise DatabaseUnavailable("asyncpg returned no pool")
    return pool


# --- migrations -----------------------------------------------------------------------------

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
    with _unavailable_as_router_error("migrating the database"):
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
    with _unavailable_as_router_error("reading migration status"):
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


# --- value conversion -----------------------------------------------------------------------


def _ts(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000.0 if abs(value) > 1e11 else float(value)
        return datetime.fromtimestamp(seconds, tz=UTC)
    if isinstance(value, str):
        return _ts(datetime.fromisoformat(value.replace("Z", "+00:00")))
    raise TypeError(f"not a timestamp: {value!r}")


def _json(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"not bytes: {value!r}")


def dlq_key(topic: str, partition: int, offset: int) -> str:
    """The DLQ idempotency key of an input record ('/' cannot occur in a topic name)."""
    return f"{topic}/{partition}/{offset}"


def encode_headers(headers: Iterable[tuple[str, bytes | None]] | None) -> list[list[Any]]:
    """Kafka headers -> JSON: ``[[name, base64(value) | null], ...]``, order and repeats kept."""
    return [
        [name, None if value is None else base64.b64encode(value).decode("ascii")]
        for name, value in headers or ()
    ]


def decode_headers(stored: Sequence[Sequence[Any]]) -> list[tuple[str, bytes | None]]:
    """The inverse of :func:`encode_headers`, for replay (byte-exact)."""
    return [(name, None if value is None else base64.b64decode(value)) for name, value in stored]


# --- batch writes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    name: str
    staging_type: str  # column type in the session's staging table
    convert: Callable[[Any], Any] | None = None  # Python value -> what COPY encodes
    required: bool = True
    select: str = ""  # expression moving the staged value into the table (default: as is)


@dataclass(frozen=True)
class _Table:
    """How one table is written: staged with COPY, then moved with INSERT ... ON CONFLICT."""

    name: str
    columns: tuple[_Column, ...]
    conflict: str  # the natural key, e.g. "signal_id"
    on_conflict: str = "DO NOTHING"

    @property
    def staging(self) -> str:
        return f"_rs_staging_{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def staging_ddl(self) -> str:
        cols = ", ".join(f"{c.name} {c.staging_type}" for c in self.columns)
        return f"CREATE TEMP TABLE IF NOT EXISTS {self.staging} ({cols}) ON COMMIT DELETE ROWS"

    def insert_sql(self) -> str:
        names = ", ".join(self.column_names)
        selected = ", ".join(c.select or c.name for c in self.columns)
        # ORDER BY the key: concurrent writers (a rebalance overlap) lock keys in the same order
        # and so cannot deadlock each other.
        return (
            f"INSERT INTO {self.name} ({names}) SELECT {selected} FROM {self.staging}"
            f" ORDER BY {self.conflict} ON CONFLICT ({self.conflict}) {self.on_conflict}"
        )


def _records(table: _Table, rows: Sequence[Any]) -> list[list[Any]]:
    """Rows (tuples in column order, or mappings) -> converted value lists for COPY."""
    columns = table.columns
    converters = [(i, c.convert) for i, c in enumerate(columns) if c.convert is not None]
    records: list[list[Any]] = []
    for n, row in enumerate(rows):
        if isinstance(row, Mapping):
            missing = [c.name for c in columns if c.required and row.get(c.name) is None]
            if missing:
                raise ValueError(f"{table.name} row {n}: missing {', '.join(missing)}")
            values = [row.get(c.name) for c in columns]
        else:
            values = list(row)
            if len(values) != len(columns):
                raise ValueError(
                    f"{table.name} row {n}: {len(values)} values for {len(columns)} columns"
                )
        for i, convert in converters:
            if values[i] is not None:
                values[i] = convert(values[i])
        records.append(values)
    return records


async def _write(conn: asyncpg.Connection, table: _Table, rows: Sequence[Any]) -> int:
    """COPY the batch into a session temp table, then INSERT ... SELECT ... ON CONFLICT DO NOTHING.

    Measured on 500-row decision batches (local Postgres 15, shared 2-core host; medians of 120
    interleaved batches, six runs): COPY+staging 16.5-22 ms, one ``INSERT ... SELECT FROM
    unnest($1::text[], ...)`` 17-22.5 ms, ``executemany`` 21-31.5 ms; a batch of only
    duplicates 7-13 / 8.5-14 / 14-20.5 ms. COPY and unnest are within noise of each other;
    COPY was ahead in five runs of six and carries ``text[]`` columns natively (unnest cannot
    take a ragged ``text[][]``, so destinations would need a JSON detour). Python-side row
    conversion adds ~1 ms per 500 rows. The staging table is per session: fine with asyncpg
    pools, not with a transaction-mode pgbouncer (which does not keep temp tables).
    """
    if not rows:
        return 0
    records = _records(table, rows)
    with _unavailable_as_router_error(f"writing {table.name}"):
        outer = conn.is_in_transaction()
        async with conn.transaction():
            await conn.execute(table.staging_ddl())
            await conn.copy_records_to_table(
                table.staging, records=records, columns=table.column_names
            )
            status = await conn.execute(table.insert_sql())
            if outer:  # ON COMMIT DELETE ROWS only empties it when the outer transaction ends
                await conn.execute(f"TRUNCATE {table.staging}")
    return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <n>"


def _jsonb(name: str, default: str | None = None) -> _Column:
    """A jsonb column, staged as JSON text."""
    select = f"{name}::jsonb" if default is None else f"COALESCE({name}::jsonb, '{default}')"
    return _Column(name, "text", _json, required=False, select=select)


_DECISIONS = _Table("routing_decisions", (
    _Column("decision_id", "text"),
    _Column("signal_id", "text"),
    _Column("tenant", "text"),
    _Column("kind", "text"),
    _Column("destinations", "text[]", list),
    _Column("strategy", "text"),
    _Column("tier", "int4", int, required=False),
    _Column("policy_version", "text"),
    _Column("confidence", "float8", float),
    _jsonb("state", "{}"),
    _jsonb("consensus"),
    _Column("input_topic", "text"),
    _Column("input_partition", "int4"),
    _Column("input_offset", "int8"),
    _Column("signal_ts", "timestamptz", _ts, required=False),
    _Column("decided_at", "timestamptz", _ts),
), conflict="signal_id")
DECISION_COLUMNS: tuple[str, ...] = _DECISIONS.column_names
"""Column order for tuple rows of :func:`insert_decisions`.

``state`` is the trust/breaker state that mattered (JSON object), ``consensus`` the consensus
result (``value``, ``method``, ``sources_used``, ``outliers``) or None.
"""


async def insert_decisions(conn: asyncpg.Connection, rows: Sequence[Any]) -> int:
    """Write decision rows; a signal_id already present is skipped. Returns rows inserted."""
    return await _write(conn, _DECISIONS, rows)


async def copy_decisions(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    """Write decision rows given as tuples of the columns' own types (``DECISION_COLUMNS``
    order, timestamps as ``datetime``): COPY straight into ``routing_decisions``, and only when
    a row is already there (a re-processed batch) through :func:`insert_decisions`. Same result,
    without the staging table on the common path. Returns rows inserted."""
    if not rows:
        return 0
    # In signal_id order, as insert_decisions: concurrent writers take the keys' locks in the
    # same order, so one waits for the other instead of deadlocking.
    ordered = sorted(rows, key=itemgetter(1))
    with _unavailable_as_router_error("writing routing_decisions"):
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    _DECISIONS.name, records=ordered, columns=_DECISIONS.column_names)
            return len(ordered)
        except asyncpg.exceptions.UniqueViolationError:
            return await insert_decisions(conn, ordered)


def _headers_json(headers: Any) -> str | None:
    return _json(headers if isinstance(headers, str) else encode_headers(headers))


_DLQ = _Table("dlq_entries", (
    _Column("dlq_key", "text"),
    _Column("reason", "text"),
    _Column("error", "text", str),
    _Column("signal_id", "text", required=False),
    _Column("tenant", "text", required=False),
    _Column("kind", "text", required=False),
    _Column("attempts", "int4"),
    _Column("original_topic", "text"),
    _Column("original_partition", "int4"),
    _Column("original_offset", "int8"),
    _Column("original_key", "bytea", _bytes, required=False),
    _Column("original_headers", "text", _headers_json, required=False,
            select="COALESCE(original_headers::jsonb, '[]')"),
    _Column("original_value", "bytea", _bytes, required=False),
    _Column("original_timestamp", "timestamptz", _ts, required=False),
    _Column("first_failed_at", "timestamptz", _ts),
    _Column("last_failed_at", "timestamptz", _ts),
    _Column("masked", "bool", bool, required=False, select="COALESCE(masked, false)"),
    _Column("dlq_topic", "text", required=False),
    _Column("dlq_partition", "int4", required=False),
    _Column("dlq_offset", "int8", required=False),
), conflict="dlq_key",
   # A replayed entry that fails again comes back: more attempts than stored means a new failure
   # (re-writing the same failure after a crash carries the same count and changes nothing).
   # The new failure was masked under the policy in force now and has its own router.dlq record.
   on_conflict="DO UPDATE SET reason = EXCLUDED.reason, error = EXCLUDED.error,"
               " attempts = EXCLUDED.attempts, status = 'pending',"
               " last_failed_at = GREATEST(dlq_entries.last_failed_at, EXCLUDED.last_failed_at),"
               " signal_id = COALESCE(EXCLUDED.signal_id, dlq_entries.signal_id),"
               " tenant = COALESCE(EXCLUDED.tenant, dlq_entries.tenant),"
               " kind = COALESCE(EXCLUDED.kind, dlq_entries.kind),"
               " original_key = EXCLUDED.original_key,"
               " original_headers = EXCLUDED.original_headers,"
               " original_value = EXCLUDED.original_value, masked = EXCLUDED.masked,"
               " dlq_topic = EXCLUDED.dlq_topic, dlq_partition = EXCLUDED.dlq_partition,"
               " dlq_offset = EXCLUDED.dlq_offset"
               " WHERE dlq_entries.attempts < EXCLUDED.attempts")
DLQ_COLUMNS: tuple[str, ...] = _DLQ.column_names
"""Column order for tuple rows of :func:`insert_dlq_entries`.

``original_headers`` is the Kafka header list ``[(name, bytes | None), ...]`` (stored with
:func:`encode_headers`). ``dlq_key`` is :func:`dlq_key` of the original coordinates; in a mapping
row it may be omitted and is then derived from them. Status starts as ``pending``.
``masked`` (default false) says the ``original_*`` values are masked copies, and then
``dlq_topic``/``dlq_partition``/``dlq_offset`` must say where the original record is
(migrations/004_dlq_masking.sql).
"""


def _with_dlq_key(row: Any) -> Any:
    if isinstance(row, Mapping) and row.get("dlq_key") is None:
        key = dlq_key(row["original_topic"], row["original_partition"], row["original_offset"])
        return {**row, "dlq_key": key}
    return row


async def pending_dlq_keys(conn: asyncpg.Connection, keys: Sequence[str]) -> set[str]:
    """Which of ``keys`` (original topic/partition/offset) have a pending DLQ entry."""
    if not keys:
        return set()
    # A join with the unnested keys, not `dlq_key = ANY($1)`: a sequential scan filtered by
    # ANY compares every row with every key (5,000 keys x 3,000 rows: 0.28 s a batch).
    rows = await conn.fetch(
        "SELECT d.dlq_key FROM unnest($1::text[]) AS k(key)"
        " JOIN dlq_entries d ON d.dlq_key = k.key WHERE d.status = 'pending'",
        list(keys),
    )
    return {r["dlq_key"] for r in rows}


async def decided_inputs(conn: asyncpg.Connection, keys: Sequence[str]) -> set[str]:
    """Which of ``keys`` (input topic/partition/offset) already have a decision row."""
    if not keys:
        return set()
    rows = await conn.fetch(
        f"SELECT k.key AS k FROM unnest($1::text[]) AS k(key)"
        f" JOIN routing_decisions ON {_INPUT_KEY} = k.key",
        list(keys),
    )
    return {r["k"] for r in rows}


async def delete_decisions_of_inputs(conn: asyncpg.Connection, keys: Sequence[str]) -> int:
    """Delete the decision rows of ``keys`` (input topic/partition/offset), except those of an
    operator's replay: a DLQ entry that supersedes them is the inputs' outcome. Returns how
    many were deleted."""
    if not keys:
        return 0
    status = await conn.execute(
        f"DELETE FROM routing_decisions WHERE {_INPUT_KEY} = ANY($1::text[])"
        " AND state->'extra'->>'replay_of' IS NULL",  # an operator's replay decides anew
        list(keys))
    return int(status.rsplit(" ", 1)[-1])


# Must match the expression index routing_decisions_input_key (migrations/002).
_INPUT_KEY = "(input_topic || '/' || input_partition::text || '/' || input_offset::text)"


async def insert_dlq_entries(conn: asyncpg.Connection, rows: Sequence[Any]) -> int:
    """Write DLQ entries; a dlq_key already present is skipped unless the new entry has more
    attempts (a replay that failed again). Returns rows inserted or updated."""
    return await _write(conn, _DLQ, [_with_dlq_key(r) for r in rows])


_BREAKER_TRANSITIONS = _Table("breaker_transitions", (
    _Column("target", "text"),
    _Column("from_state", "text"),
    _Column("to_state", "text"),
    _Column("reason", "text", str, required=False, select="COALESCE(reason, '')"),
    _jsonb("details", "{}"),
    _Column("at", "timestamptz", _ts),
), conflict="target, at, from_state, to_state")
BREAKER_TRANSITION_COLUMNS: tuple[str, ...] = _BREAKER_TRANSITIONS.column_names
"""Column order for :func:`insert_breaker_transitions`; states are closed | open | half_open."""


async def insert_breaker_transitions(conn: asyncpg.Connection, rows: Sequence[Any]) -> int:
    """Record breaker transitions; the same (target, at, from, to) twice is one row."""
    return await _write(conn, _BREAKER_TRANSITIONS, rows)


_TRUST_SNAPSHOTS = _Table("trust_snapshots", (
    _Column("source_id", "text"),
    _Column("score", "float8", float),
    _jsonb("components", "{}"),
    _Column("at", "timestamptz", _ts),
), conflict="source_id, at")
TRUST_SNAPSHOT_COLUMNS: tuple[str, ...] = _TRUST_SNAPSHOTS.column_names
"""Column order for :func:`insert_trust_snapshots`; components maps name -> [0, 1]."""


_SHADOW = _Table("shadow_decisions", (
    _Column("signal_id", "text"),
    _Column("candidate_version", "text"),
    _jsonb("baseline"),
    _jsonb("candidate"),
    _Column("agree", "bool"),
    _Column("decided_at", "timestamptz", _ts),
), conflict="signal_id, candidate_version")
SHADOW_COLUMNS: tuple[str, ...] = _SHADOW.column_names
"""Column order for :func:`insert_shadow_decisions`; baseline/candidate are a list of
destinations or a DLQ reason."""


async def insert_shadow_decisions(conn: asyncpg.Connection, rows: Sequence[Any]) -> int:
    """Record shadow evaluations of a rollout candidate; idempotent per (signal, candidate)."""
    return await _write(conn, _SHADOW, rows)


async def insert_trust_snapshots(conn: asyncpg.Connection, rows: Sequence[Any]) -> int:
    """Record trust scores; the same (source_id, at) twice is one row."""
    return await _write(conn, _TRUST_SNAPSHOTS, rows)


_POLICY_STATUSES = ("candidate", "active", "superseded", "rejected", "rolled_back")


async def record_policy_version(
    conn: asyncpg.Connection,
    version: str,
    policy: str,
    *,
    status: str = "active",
    published_by: str = "",
    published_at: Any = None,
    policy_json: Any = None,
    status_reason: str | None = None,
) -> None:
    """Record a policy version (idempotent on ``version``) and set its status.

    Making a version ``active`` marks the previously active one ``superseded`` in the same
    transaction, so there is never more than one active policy.
    """
    if status not in _POLICY_STATUSES:
        raise ValueError(f"status must be one of {', '.join(_POLICY_STATUSES)}")
    with _unavailable_as_router_error("recording a policy version"):
        await _record_policy_version(conn, version, policy, status, published_by,
                                     _ts(published_at), _json(policy_json), status_reason)


async def _record_policy_version(
    conn: asyncpg.Connection, version: str, policy: str, status: str, published_by: str,
    published_at: datetime | None, policy_json: str | None, status_reason: str | None,
) -> None:
    async with conn.transaction():
        if status == "active":
            await conn.execute(
                "UPDATE policy_versions SET status = 'superseded', status_changed_at = now()"
                " WHERE status = 'active' AND version <> $1",
                version,
            )
        await conn.execute(
            """
            INSERT INTO policy_versions
                (version, policy, policy_json, status, status_reason, published_at, published_by)
            VALUES ($1, $2, $3::text::jsonb, $4, $5, COALESCE($6, now()), $7)
            ON CONFLICT (version) DO UPDATE SET
                status = EXCLUDED.status,
                status_reason = EXCLUDED.status_reason,
                status_changed_at = CASE WHEN policy_versions.status = EXCLUDED.status
                                         THEN policy_versions.status_changed_at ELSE now() END
            """,
            version, policy, policy_json, status, status_reason, published_at, published_by,
        )


async def mark_policy_status(
    conn: asyncpg.Connection, version: str, status: str, reason: str | None = None
) -> None:
    """Set the status of a recorded version (e.g. a rollout candidate ``rolled_back``); a
    candidate that was never recorded on its own gets a row that points at its parent."""
    if status not in _POLICY_STATUSES or status == "active":
        raise ValueError(f"status must be one of {', '.join(_POLICY_STATUSES)} except active")
    with _unavailable_as_router_error("updating a policy version"):
        await conn.execute(
            """
            INSERT INTO policy_versions (version, policy, status, status_reason, published_at)
            VALUES ($1, '# rollout candidate: see the rollout section of the active policy',
                    $2, $3, now())
            ON CONFLICT (version) DO UPDATE SET
                status = EXCLUDED.status, status_reason = EXCLUDED.status_reason,
                status_changed_at = now()
            WHERE policy_versions.status <> 'active'
            """,
            version, status, reason,
        )


# --- what `router-stream db ...` runs ---------------------------------------------------------


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
