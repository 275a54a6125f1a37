"""The ``outcomes`` value a consuming service writes (SPEC §2 Outcome,
``topics/schemas/outcome.schema.json``): validated by the product's own
:class:`router_stream.core.models.Outcome`, written with ``ts`` in epoch milliseconds."""

from __future__ import annotations

import time

import orjson

from router_stream.client._records import RoutedSignal
from router_stream.core.models import Outcome


def outcome_for(routed: RoutedSignal, *, ok: bool, latency_ms: float | None = None,
                reward: float | None = None, cost: float | None = None,
                ts: float | None = None) -> Outcome:
    """The outcome of delivering ``routed``; ``ts`` is epoch seconds (default: now).

    Raises ``pydantic.ValidationError`` for a reward outside [0, 1] or a negative cost/latency.
    """
    at = time.time() if ts is None else ts
    return Outcome(
        signal_id=routed.signal_id, destination=routed.destination, ok=ok,
        ts=at * 1000.0, decision_id=routed.decision_id, latency_ms=latency_ms,
        reward=reward, cost=cost,
    )


def encode_outcome(outcome: Outcome) -> tuple[bytes, bytes]:
    """(key, value) of an ``outcomes`` record: keyed by destination, fields left out when unset."""
    body: dict[str, object] = {
        "signal_id": outcome.signal_id, "destination": outcome.destination, "ok": outcome.ok,
    }
    if outcome.ts is not None:
        body["ts"] = round(outcome.ts * 1000.0)
    for name in ("decision_id", "latency_ms", "reward", "cost"):
        value = getattr(outcome, name)
        if value is not None:
            body[name] = value
    return outcome.destination.encode(), orjson.dumps(body)
