"""Operator time input: instants (``2025-01-02T03:04Z`` or ``1h`` ago) and durations (``10m``).

Pure; ``now`` is passed in. Naive ISO times are taken as UTC (operators paste log timestamps,
which are UTC here).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from router_stream.errors import UserError

__all__ = ["parse_duration", "parse_instant"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    """``90s``, ``10m``, ``1.5h``, ``2d``, ``1w`` -> timedelta; anything else is a UserError."""
    match = _DURATION.match(text)
    if not match:
        raise UserError(f"not a duration: {text!r} (use e.g. 30s, 10m, 1h, 2d, 1w)")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if seconds <= 0:
        raise UserError(f"duration must be positive: {text!r}")
    return timedelta(seconds=seconds)


def parse_instant(text: str, now: datetime) -> datetime:
    """An ISO-8601 time, or a duration meaning that long before ``now`` (``1h`` = an hour ago)."""
    if _DURATION.match(text):
        return now - parse_duration(text)
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"not a time: {text!r} (use ISO-8601 like 2025-01-02T03:04:05Z, or 1h / 30m ago)"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
