"""Connections to Postgres, and asyncpg's and the OS's connection errors translated into
:class:`~router_stream.errors.DatabaseUnavailable` at this boundary (``raise ... from exc``), so
callers only ever see the project's error tree."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import orjson

from router_stream.config import Settings
from router_stream.dsn import scrub
from router_stream.errors import DatabaseUnavailable

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
def unavailable_as_router_error(what: str) -> Iterator[None]:
    """Translate a lost/unreachable database into DatabaseUnavailable (retriable)."""
    try:
        yield
    except _UNAVAILABLE as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, asyncpg.exceptions.InternalClientError):
            reason = f"the connection broke mid-operation ({reason})"
        raise DatabaseUnavailable(f"{what}: {reason}") from exc


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


def _jsonb(value: Any) -> bytes:
    """A jsonb parameter in binary format (version byte 1 + JSON text): ``bytes`` and ``str``
    are JSON text already, anything else is serialised."""
    if isinstance(value, bytes):
        return b"\x01" + value
    return b"\x01" + (value.encode() if isinstance(value, str) else orjson.dumps(value))


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python values
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_jsonb,
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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pool's reset that leaves the session as it is (an open transaction is still rolled
    back by the pool itself)."""


async def create_pool(
    settings: Settings, *, min_size: int = 1, max_size: int = 4, timeout: float = 10.0,
    reset_sessions: bool = True,
) -> asyncpg.Pool:
    """A connection pool for the worker, same TLS and codecs as :func:`connect`.

    ``reset_sessions=False`` skips the reset query a connection gets when it is released (a
    round trip each time): for a user that never LISTENs, takes advisory locks or changes
    session settings."""
    dsn = settings.database_url.get_secret_value()
    options = _connect_options(settings, timeout)
    if not reset_sessions:
        options["reset"] = _keep_session
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init_connection, **options)
    except (*_UNAVAILABLE, asyncpg.exceptions.PostgresError) as exc:
        raise _unreachable(settings, exc) from exc
    if pool is None:  # only when create_pool is not awaited; keeps the type checker honest
        raise DatabaseUnavailable("asyncpg returned no pool")
    return pool
