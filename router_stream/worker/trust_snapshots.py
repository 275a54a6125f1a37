"""Which trust scores a periodic snapshot writes to ``trust_snapshots``.

Every :data:`~router_stream.worker.service.TRUST_SNAPSHOT_EVERY_S` a snapshot writes a score
when it moved by at least :data:`MIN_CHANGE` since the row last written for it, when it is new,
and at least every :data:`REFRESH_EVERY_S` anyway — so every id in state has a row no older than
that, and a reader never has to tell "unchanged" from "gone" (the rows this saves:
docs/performance.md). Every worker folds the same events, so
workers still pick the same ids and UNIQUE(source_id, at) still keeps one row per id and period.
"""

from __future__ import annotations

from collections.abc import Mapping

MIN_CHANGE = 0.001
"""Smallest move of a score in [0, 1] worth a row (scores are shown with 3 decimals)."""
REFRESH_EVERY_S = 600.0
"""Every id gets a row at least this often, changed or not."""


class SnapshotSelector:
    """Remembers what was last written per id (only after a write succeeded: :meth:`written`)."""

    def __init__(self, min_change: float = MIN_CHANGE,
                 refresh_every_s: float = REFRESH_EVERY_S) -> None:
        self._min_change = min_change
        self._refresh_every_s = refresh_every_s
        self._last: dict[str, tuple[float, float]] = {}  # id -> (score, when written)

    def due(self, trust: Mapping[str, float], now: float) -> dict[str, float]:
        """The scores of ``trust`` that a snapshot at ``now`` should write."""
        out: dict[str, float] = {}
        last = self._last
        for source, score in trust.items():
            prev = last.get(source)
            if (prev is None or abs(score - prev[0]) >= self._min_change
                    or now - prev[1] >= self._refresh_every_s):
                out[source] = score
        return out

    def written(self, scores: Mapping[str, float], now: float, alive: Mapping[str, float]) -> None:
        """Record a successful write; forget ids no longer in state (``alive``)."""
        for source, score in scores.items():
            self._last[source] = (score, now)
        if len(self._last) > len(alive):
            for gone in [s for s in self._last if s not in alive]:
                del self._last[gone]

    def __len__(self) -> int:
        return len(self._last)
