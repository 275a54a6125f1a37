"""Which replayed entry may go now, so that no signal overtakes an earlier one of its key (pure).

``dlq replay`` walks the selected entries in their original order — by original topic,
partition and offset, which is the entry's first failure: a record dead-lettered again keeps its
first coordinates (``dlq_key``) — and asks a :class:`KeyGate` about each one. Order is a promise
*within a key* (an entry's original topic and key); across keys nothing is promised, and entries
without a key are never held back (nothing orders them).

A key is *blocked* from a position on when an entry of that key at that position will not be
sent now: it is pending but not selected (another reason, a filter, over ``--max-attempts``), its
masked original cannot be read back from ``router.dlq``, or the broker refused it. Every later
selected entry of the key is then held back (stays ``pending``) unless ``allow_reorder``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Blocked", "KeyGate", "KeyId", "Position"]

KeyId = tuple[str, bytes]  # (original topic, original key)
Position = tuple[int, int]  # (original partition, original offset) within the original topic


class Blocked(StrEnum):
    """Why a key is blocked, as the command prints it."""

    NOT_SELECTED = "an earlier entry of the key is pending but not selected"
    REFUSED = "an earlier entry of the key is refused by --max-attempts"
    UNAVAILABLE = "an earlier entry of the key is masked and its router.dlq record is gone"
    SEND_FAILED = "an earlier entry of the key failed to send"


@dataclass
class KeyGate:
    """Admits entries in original order and holds back the ones behind a blocked entry."""

    allow_reorder: bool = False
    _blocked: dict[KeyId, tuple[Position, Blocked]] = field(default_factory=dict)
    held: Counter[Blocked] = field(default_factory=Counter)  # entries held back, by why
    held_keys: set[KeyId] = field(default_factory=set)

    def block(self, key: KeyId | None, at: Position, why: Blocked) -> None:
        """The entry of ``key`` at ``at`` is not sent now: later entries of the key wait."""
        if key is None:
            return
        current = self._blocked.get(key)
        if current is None or at < current[0]:
            self._blocked[key] = (at, why)

    def admit(self, key: KeyId | None, at: Position) -> bool:
        """True when the entry of ``key`` at ``at`` may be sent; False counts it as held."""
        if key is None or self.allow_reorder:
            return True
        blocked = self._blocked.get(key)
        if blocked is None or at <= blocked[0]:
            return True
        self.held[blocked[1]] += 1
        self.held_keys.add(key)
        return False

    @property
    def held_entries(self) -> int:
        return sum(self.held.values())
