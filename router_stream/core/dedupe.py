"""Signal-id dedupe within a time window, with bounded memory.

Kafka delivers at least once, so the same signal can reach the router twice (producer retries,
a rebalance replaying uncommitted offsets). :class:`DedupeWindow` remembers each id for
``window_s`` seconds of its clock and answers "seen before?" in O(1).

Ids are kept in an insertion-ordered map ``id -> first-seen time``. The window's clock is the
largest ``now`` seen, so entries are appended in non-decreasing time order and expiry only ever
pops from the front. A repeat does not refresh the entry: an id is forgotten ``window_s`` after it
was *first* seen, which makes :meth:`seen_or_add` idempotent (calling it twice leaves the same
state as calling it once). ``max_entries`` caps memory under a flood; past it the oldest ids are
forgotten early (dedupe degrades to best effort instead of growing without bound).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any


class DedupeWindow:
    """Remembers signal ids for ``window_s`` seconds; at most ``max_entries`` ids."""

    __slots__ = ("window_s", "max_entries", "_seen", "_clock", "_expired_at")

    def __init__(self, window_s: float, max_entries: int = 1_000_000) -> None:
        if not (math.isfinite(window_s) and window_s > 0.0):
            raise ValueError(f"window_s must be a finite number > 0, got {window_s}")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._clock = -math.inf
        # The clock at which expiry last ran with the front entry untouched since (NaN: never).
        # Entries are added at the clock, so at an unchanged clock (a batch shares one ``now``)
        # there is nothing new to expire.
        self._expired_at = math.nan

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, signal_id: object) -> bool:
        return signal_id in self._seen

    def seen_or_add(self, signal_id: str, now: float) -> bool:
        """True if ``signal_id`` was seen within the window (a duplicate); otherwise remember it
        and return False."""
        if now > self._clock and now != math.inf:  # NaN, inf, backwards steps: clock stays
            self._clock = now
        if self._clock != self._expired_at:
            self._expire()
            if self._clock != -math.inf:  # at -inf, entries' age is NaN: expire them every time
                self._expired_at = self._clock
        seen = self._seen
        if signal_id in seen:
            return True
        seen[signal_id] = self._clock
        if len(seen) > self.max_entries:
            seen.popitem(last=False)
            self._expired_at = math.nan  # a new front entry: let expiry look at it
        return False

    def _expire(self) -> None:
        clock, window_s, seen = self._clock, self.window_s, self._seen
        while seen:
            first = next(iter(seen))
            if clock - seen[first] < window_s:  # age, not a horizon: no rounding at the edge
                break
            del seen[first]

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "max_entries": self.max_entries,
            "clock": self._clock if math.isfinite(self._clock) else None,
            "seen": [[signal_id, ts] for signal_id, ts in self._seen.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DedupeWindow:
        window = cls(float(data["window_s"]), int(data.get("max_entries", 1_000_000)))
        for signal_id, ts in data.get("seen", ()):
            window._seen[str(signal_id)] = float(ts)
        clock = data.get("clock")
        window._clock = float(clock) if clock is not None else -math.inf
        return window
