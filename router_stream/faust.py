"""faust integration for services that consume routed topics (``pip install
'router-stream[faust]'``; the router itself does not use faust).

* :class:`RoutedRecord` / :class:`RouteInfo`: a ``routed.<destination>`` record as a faust
  ``Record``. The signal's own fields beyond the declared ones (``ts``, custom fields) stay
  readable as attributes, as faust keeps unknown fields of a decoded record.
* :class:`OutcomeRecord`: an ``outcomes`` record, validated by the product's
  :class:`router_stream.core.models.Outcome` when built with :meth:`OutcomeRecord.for_delivery`.
* :func:`routed_topic` / :func:`outcomes_topic`: the faust topics, with the right key and value
  types; :func:`report_outcome` sends one outcome keyed by destination.

``examples/faust_consumer.py`` is a complete app; docs/consumers.md explains it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

try:
    import faust
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("router_stream.faust needs faust: pip install 'router-stream[faust]'"
                      ) from exc

from router_stream.client._outcomes import encode_outcome
from router_stream.config import OUTCOMES, ROUTED_PREFIX
from router_stream.core.models import Outcome

__all__ = [
    "OutcomeRecord",
    "RouteInfo",
    "RoutedRecord",
    "outcomes_topic",
    "report_outcome",
    "routed_topic",
]


class RouteInfo(faust.Record, serializer="json", include_metadata=False):
    """The ``route`` object: why and how the router sent the signal here."""

    decision_id: str
    destination: str
    kind: str
    strategy: str
    policy_version: str
    confidence: float
    routed_at: float
    tier: int | None = None
    signal_id: str | None = None


class RoutedRecord(faust.Record, serializer="json", include_metadata=False):
    """A record of ``routed.<destination>``: the producer's signal plus ``route``."""

    sender_id: str
    route: RouteInfo
    signal_id: str | None = None
    tenant: str = "default"
    kind: str | None = None
    priority: int | None = None
    payload: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        """The signal id, also when the router derived it (the route always names it)."""
        return self.route.signal_id or self.signal_id or ""


class OutcomeRecord(faust.Record, serializer="json", include_metadata=False):
    """An ``outcomes`` record (SPEC §2 Outcome); ``ts`` is epoch milliseconds on the wire."""

    signal_id: str
    destination: str
    ok: bool
    ts: int | None = None
    decision_id: str | None = None
    latency_ms: float | None = None
    reward: float | None = None
    cost: float | None = None

    @classmethod
    def for_delivery(cls, routed: RoutedRecord, *, ok: bool, latency_ms: float | None = None,
                     reward: float | None = None, cost: float | None = None,
                     ts: float | None = None) -> OutcomeRecord:
        """The outcome of delivering ``routed`` (``ts`` in epoch seconds, default now).

        Raises ``ValueError`` for a reward outside [0, 1] or a negative cost or latency.
        """
        at = time.time() if ts is None else ts
        outcome = Outcome(signal_id=routed.id, destination=routed.route.destination, ok=ok,
                          ts=at * 1000.0, decision_id=routed.route.decision_id,
                          latency_ms=latency_ms, reward=reward, cost=cost)
        _, value = encode_outcome(outcome)
        return cls.loads(value)

    def to_representation(self) -> Mapping[str, Any]:
        # Unset fields are left out, not written as null (outcome.schema.json).
        return {k: v for k, v in self.asdict().items() if v is not None}


def routed_topic(app: faust.App, destination: str, *, topic_prefix: str = "") -> Any:
    """The faust topic ``<topic_prefix>routed.<destination>``: raw bytes keys (the input key),
    :class:`RoutedRecord` values."""
    return app.topic(f"{topic_prefix}{ROUTED_PREFIX}{destination}", key_type=bytes,
                     value_type=RoutedRecord)


def outcomes_topic(app: faust.App, *, topic_prefix: str = "") -> Any:
    """The faust topic ``<topic_prefix>outcomes``: destination keys, :class:`OutcomeRecord`
    values."""
    return app.topic(f"{topic_prefix}{OUTCOMES}", key_type=bytes, value_type=OutcomeRecord)


async def report_outcome(topic: Any, routed: RoutedRecord, *, ok: bool,
                         latency_ms: float | None = None, reward: float | None = None,
                         cost: float | None = None) -> None:
    """Send the outcome of delivering ``routed`` to ``topic`` (from :func:`outcomes_topic`)."""
    record = OutcomeRecord.for_delivery(routed, ok=ok, latency_ms=latency_ms, reward=reward,
                                        cost=cost)
    await topic.send(key=routed.route.destination.encode(), value=record)
