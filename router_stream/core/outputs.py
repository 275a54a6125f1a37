"""What deciding a batch produces: the records the worker must make durable before it commits
the batch's input offsets (the commit order: :mod:`router_stream.worker.pipeline`).

The engine (:mod:`router_stream.core.engine`) turns a batch of inbound records into a
:class:`BatchResult`; their headers and bytes are built by :mod:`router_stream.core.wire`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from router_stream.core.breaker import BreakerTransition
from router_stream.core.models import Decision, DlqEntry
from router_stream.core.rollout import RolloutEvent, ShadowOutcome
from router_stream.core.wire import DECISION_ID_SPAN, position_key


class RoutedRecord(msgspec.Struct, frozen=True, gc=False):
    """The signal plus its ``route`` object, for ``routed.<destination>`` (key = input key),
    with the signal's trace-context headers (:func:`~router_stream.core.wire.trace_headers`).

    A ``msgspec.Struct``, like :class:`DecisionRecord`: built once per routed record, and
    cheaper to build than a frozen dataclass (docs/performance.md)."""

    destination: str
    key: bytes | None
    value: bytes
    signal_id: str
    headers: list[tuple[str, bytes | None]] | None = None


class DecisionRecord(msgspec.Struct, frozen=True, gc=False):
    """A decision as the engine emits it: its ``router.decisions`` value, already serialised
    (``json``, :meth:`to_json`), and the fields read once per decision (the worker's metrics
    and logs, the rollout monitor).

    Any other :class:`~router_stream.core.models.Decision` field (``trust``, ``tier``,
    ``input_offset`` …) is read from the value, decoded on each access: :meth:`decision` gives
    the whole ``Decision`` at once."""

    json: bytes
    signal_id: str
    kind: str
    destinations: list[str]
    strategy: str
    policy_version: str
    confidence: float

    def to_json(self) -> bytes:
        """The value, as ``Decision.to_json`` writes it."""
        return self.json

    @property
    def decision_id(self) -> str:
        return self.json[DECISION_ID_SPAN].decode()

    @property
    def input_key(self) -> str:
        """``topic/partition/offset`` of the input decided (:func:`position_key`)."""
        d = self.decision()
        return position_key(d.input_topic, d.input_partition, d.input_offset)

    def decision(self) -> Decision:
        return Decision(**orjson.loads(self.json))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # protocol look-ups (copy, pickle) are not Decision fields
            raise AttributeError(name)
        return getattr(self.decision(), name)


@dataclass(slots=True, frozen=True)
class DlqRecord:
    """A DLQ entry and the headers it travels with; the value is ``entry.original_value``
    unchanged and the key ``entry.original_key``."""

    entry: DlqEntry
    headers: list[tuple[str, bytes | None]]

    @property
    def dlq_key(self) -> str:
        """Idempotency key for Postgres: where the record was first read from."""
        e = self.entry
        return position_key(e.original_topic, e.original_partition, e.original_offset)


@dataclass(slots=True, frozen=True)
class RetryRecord:
    """A signal whose destinations are all unavailable, parked on ``router.retry`` until
    ``not_before`` (epoch seconds); original bytes and key, attempts counted in headers."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    not_before: float
    attempts: int
    signal_id: str | None


Mark = tuple[int, int, int, int, int, int]
"""How much of a :class:`BatchResult` existed at one moment (:meth:`BatchResult.mark`)."""


@dataclass(slots=True)
class BatchResult:
    """Everything one batch produced. Every input record is accounted for exactly once in
    ``decisions``, ``dlq`` or ``retries`` (duplicates that policy drops are counted in
    ``dropped_duplicates``)."""

    routed: list[RoutedRecord] = field(default_factory=list)
    decisions: list[DecisionRecord] = field(default_factory=list)
    dlq: list[DlqRecord] = field(default_factory=list)
    retries: list[RetryRecord] = field(default_factory=list)
    breaker_transitions: list[BreakerTransition] = field(default_factory=list)
    dropped_duplicates: int = 0
    shadow: list[ShadowOutcome] = field(default_factory=list)
    rollout_events: list[RolloutEvent] = field(default_factory=list)

    def mark(self) -> Mark:
        """How much of the result exists now (a plain tuple: taken once per signal), so a
        record that fails half-way can leave nothing of itself behind (:meth:`take_back`)."""
        return (len(self.routed), len(self.decisions), len(self.dlq), len(self.retries),
                self.dropped_duplicates, len(self.shadow))

    def take_back(self, mark: Mark) -> list[RoutedRecord]:
        """Remove everything added since ``mark``; returns the routed records removed."""
        routed, decisions, dlq, retries, duplicates, shadow = mark
        taken = self.routed[routed:]
        del self.routed[routed:]
        del self.decisions[decisions:]
        del self.dlq[dlq:]
        del self.retries[retries:]
        del self.shadow[shadow:]
        self.dropped_duplicates = duplicates
        return taken
