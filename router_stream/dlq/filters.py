"""Which DLQ entries a command applies to: a filter and the SQL ``WHERE`` it becomes.

Pure (no database import): :meth:`DlqFilter.where` returns SQL text with ``$n`` placeholders and
the argument list, so the same filter drives ``list``, ``--summary``, ``discard`` and ``replay``.
Every field is optional; fields combine with AND, values within one field with OR.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from router_stream.core.models import DlqReason
from router_stream.errors import UserError

__all__ = ["STATUSES", "DlqFilter"]

STATUSES = ("pending", "replayed", "discarded")
REASONS = tuple(r.value for r in DlqReason)


@dataclass(frozen=True)
class DlqFilter:
    """What selects DLQ entries. ``since``/``until`` bound ``last_failed_at`` (the latest
    failure: an entry that failed again after a replay counts as recent)."""

    ids: tuple[int, ...] = ()
    reasons: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    signal_ids: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        bad = [r for r in self.reasons if r not in REASONS]
        if bad:
            raise UserError(f"unknown reason {bad[0]!r}; reasons are: {', '.join(REASONS)}")
        bad = [s for s in self.statuses if s not in STATUSES]
        if bad:
            raise UserError(f"unknown status {bad[0]!r}; statuses are: {', '.join(STATUSES)}")
        if self.since and self.until and self.since > self.until:
            raise UserError("--since is after --until: nothing can match")

    @property
    def is_empty(self) -> bool:
        """True when nothing narrows the selection (every entry matches)."""
        return self == DlqFilter()

    def with_statuses(self, *statuses: str) -> DlqFilter:
        return replace(self, statuses=statuses)

    def where(self, first_placeholder: int = 1) -> tuple[str, list[Any]]:
        """``(sql, args)``: ``sql`` is ``TRUE`` or ANDed conditions on ``dlq_entries``."""
        clauses: list[str] = []
        args: list[Any] = []

        def add(template: str, value: Any) -> None:
            args.append(value)
            clauses.append(template.format(f"${first_placeholder + len(args) - 1}"))

        lists: tuple[tuple[str, tuple[Any, ...], str], ...] = (
            ("id", self.ids, "bigint"), ("reason", self.reasons, "text"),
            ("status", self.statuses, "text"), ("tenant", self.tenants, "text"),
            ("kind", self.kinds, "text"), ("original_topic", self.topics, "text"),
            ("signal_id", self.signal_ids, "text"),
        )
        for column, values, sql_type in lists:
            if values:
                add(f"{column} = ANY({{}}::{sql_type}[])", list(values))
        if self.since is not None:
            add("last_failed_at >= {}", self.since)
        if self.until is not None:
            add("last_failed_at < {}", self.until)
        return (" AND ".join(clauses) or "TRUE"), args
