"""The crash-loop guard: how often workers started on the same offset of a partition without
getting past it, and what the next worker does about it.

The count travels in the metadata string of the partition's committed offset, so it survives
every restart without a store of its own. Before the first batch a worker decides on a partition
after taking it over, it commits the same offset again with the attempt count raised by one and
the last offset of that batch (``until``); a batch that commits normally clears the count.

A worker that finds a count of one or more is *careful* on that partition up to ``until``: it
decides one record per batch and commits each with a count of one for the next (which it decides
at once), so a record that kills the process is the one at the committed offset on the next
start, already counted. When the count reaches ``max_restarts`` that record is dead-lettered as
``processing_error`` without being decided, and the partition moves on: a record that kills
every worker costs one crash in a whole batch plus ``max_restarts`` on the record itself.

Pure: parsing, formatting and the verdict; the worker does the committing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

_FORMAT = re.compile(r"^router-stream attempts=(\d{1,9}) until=(-?\d{1,19})$")


class Verdict(Enum):
    NORMAL = "normal"  # decide batches as usual
    CAREFUL = "careful"  # one record per batch up to ``until``
    POISON = "poison"  # dead-letter the record at the committed offset


@dataclass(frozen=True, slots=True)
class GuardMark:
    """What a committed offset's metadata says about earlier attempts at it."""

    attempts: int = 0
    until: int = -1

    @classmethod
    def parse(cls, metadata: str | None) -> GuardMark:
        """Anything not written by :meth:`to_metadata` (another tool's commit) counts as none."""
        found = _FORMAT.match(metadata or "")
        if found is None:
            return cls()
        return cls(int(found.group(1)), int(found.group(2)))

    def to_metadata(self) -> str:
        return f"router-stream attempts={self.attempts} until={self.until}"

    def verdict(self, offset: int, max_restarts: int) -> Verdict:
        """What to do with the record at ``offset``, the committed offset a worker starts at."""
        if self.attempts >= max_restarts:
            return Verdict.POISON
        if self.attempts > 0 or offset <= self.until:
            return Verdict.CAREFUL
        return Verdict.NORMAL

    def attempt(self, last_offset: int) -> GuardMark:
        """The mark to commit before deciding a batch that ends at ``last_offset``."""
        return GuardMark(self.attempts + 1, max(self.until, last_offset))

