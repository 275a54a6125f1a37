"""Operator time input: instants (``2025-01-02T03:04Z`` or ``1h`` ago) and durations (``10m``).

Pure; ``now`` is passed in. Naive ISO times are taken as UTC (operators paste log timestamps,
which are UTC here). Every duration has a maximum (the caller's, else :data:`MAX_DURATION`), so
``99999999d`` is one line of error instead of a date no one can print.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from router_stream.errors import UserError

__all__ = ["MAX_DURATION", "MAX_LOOKBACK", "parse_duration", "parse_instant"]

MAX_DURATION = timedelta(days=365)  # the longest TTL an operator may give (override --ttl)
MAX_LOOKBACK = timedelta(days=3650)  # the furthest back ``--since 10d`` may reach

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$", re.IGNORECASE)


def parse_duration(text: str, maximum: timedelta = MAX_DURATION) -> timedelta:
    """``90s``, ``10m``, ``1.5h``, ``2d``, ``1w`` up to ``maximum`` -> timedelta; anything else
    is a UserError."""
    match = _DURATION.match(text)
    if not match:
        raise UserError(f"not a duration: {text!r} (use e.g. 30s, 10m, 1h, 2d, 1w)")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if seconds <= 0:
        raise UserError(f"duration must be positive: {text!r}")
    if seconds > maximum.total_seconds():  # also catches inf: never builds the timedelta
        raise UserError(f"duration too long: {text!r} (at most {_describe(maximum)})")
    return timedelta(seconds=seconds)


def parse_instant(text: str, now: datetime) -> datetime:
    """An ISO-8601 time, or a duration meaning that long before ``now`` (``1h`` = an hour ago),
    at most :data:`MAX_LOOKBACK`."""
    if _DURATION.match(text):
        return now - parse_duration(text, MAX_LOOKBACK)
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"not a time: {text!r} (use ISO-8601 like 2025-01-02T03:04:05Z, or 1h / 30m ago)"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _describe(span: timedelta) -> str:
    return f"{span.days}d" if span.seconds == 0 and span.microseconds == 0 else str(span)
