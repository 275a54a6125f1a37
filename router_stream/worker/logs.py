"""JSON logs, one object per line, carrying ``trace_id`` and ``signal_id`` where they exist.

Call sites pass the context through ``extra={"trace_id": ..., "signal_id": ...}``; every other
``extra`` key is kept too, so a line is self-describing for a log pipeline (Loki, ELK).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra, "exc"?}`` as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(line, default=str).decode()
        except TypeError:  # an int beyond 64 bits, a dict key that is no string, deep nesting
            return orjson.dumps({k: v if isinstance(v, str) else repr(v)[:1000]
                                 for k, v in line.items()}).decode()


class WarningWithoutTraceback(logging.Filter):
    """A library's warning about a failure it retries, as one line: the exception's text in
    ``error``, no traceback. asyncpg's pool logs "Failed to restore the pool connection floor;
    retrying" with a full traceback every few seconds while Postgres is down; the projection's
    own retry lines already say what failed. Errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.levelno < logging.ERROR:
            exc = record.exc_info[1]
            if exc is not None:
                record.error = str(exc) or type(exc).__name__
            record.exc_info = None
            record.exc_text = None
        return True


def configure_json_logging(level: str = "INFO") -> None:
    """Route the root logger to stderr as JSON lines; quiet the chattiest libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # router_stream.librdkafka: librdkafka's own lines, each distinct one once
    # (adapters/kafka_failures.py); its warnings and errors stay, its chatter goes.
    for noisy in ("router_stream.librdkafka", "faust", "mode", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    pool = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, WarningWithoutTraceback) for f in pool.filters):
        pool.addFilter(WarningWithoutTraceback())


def trace_id_of(headers: Iterable[tuple[str, bytes | None]] | None) -> str | None:
    """The trace id a producer sent: W3C ``traceparent`` (its trace-id field) or ``x-trace-id``."""
    for name, value in headers or ():
        if value is None:
            continue
        if name == "traceparent":
            parts = value.decode("ascii", "replace").split("-")
            if len(parts) >= 2:
                return parts[1]
        elif name == "x-trace-id":
            return value.decode("utf-8", "replace")
    return None
