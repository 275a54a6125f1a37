"""The worker's part, in process: a real :class:`RouterEngine` fed in event time.

The worker folds ``source-health`` and ``outcomes`` records into its engine through
``parse_health``/``parse_outcome`` and ``apply_health``/``apply_outcome`` (worker/state.py),
ticks the engine every ~100 ms, decides ``signals`` with ``decide_batch`` and re-feeds
``router.retry`` records once due. :class:`CoreLoop` does the same with the same calls, on the
simulator's clock instead of Kafka's: the events are serialised to the JSON a producer would send
and parsed back, so the simulator decides with exactly what the worker would have seen.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from router_stream.core.breaker import BreakerTransition
from router_stream.core.compiled import load_compiled
from router_stream.core.engine import RouterEngine
from router_stream.core.outputs import BatchResult
from router_stream.core.parsing import Rejection, parse_health, parse_outcome

# Event time 0 of every run, as epoch seconds (any fixed instant: runs must not read the clock).
EPOCH = 1_800_000_000.0
TICK_S = 0.1  # the state follower's tick interval (worker/state.py)


def wire_ts(t: float) -> float:
    """Second ``t`` of the run as a wire timestamp (epoch milliseconds, SPEC §2)."""
    return (EPOCH + t) * 1000.0


@dataclass(slots=True)
class Record:
    """An inbound record as the core's ``InboundRecord`` protocol describes it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)


ResultHandler = Callable[[float, BatchResult], None]


class CoreLoop:
    """One engine, its pending state events and retries, and the event-time clock."""

    def __init__(self, policy_yaml: str, seed: int, on_result: ResultHandler) -> None:
        self.engine = RouterEngine(load_compiled(policy_yaml, "<simulated policy>"), seed=seed)
        self._on_result = on_result
        # (due, sequence, kind, value, headers): the sequence keeps equal times in arrival order.
        self._pending: list[tuple[float, int, str, bytes, list[tuple[str, bytes]]]] = []
        self._seq = itertools.count()
        self._offsets = itertools.count()
        self._next_tick = 0.0
        self.now = 0.0
        self.transitions: list[BreakerTransition] = []

    def health(self, t: float, **fields: Any) -> None:
        """A ``source-health`` record produced at ``t`` (seconds of the run)."""
        self._push(t, "health", {"ts": wire_ts(t), **fields})

    def outcome(self, t: float, **fields: Any) -> None:
        """An ``outcomes`` record produced at ``t``."""
        self._push(t, "outcome", {"ts": wire_ts(t), **fields})

    def _push(self, t: float, kind: str, body: dict[str, Any]) -> None:
        heapq.heappush(self._pending, (t, next(self._seq), kind, orjson.dumps(body), []))

    def signal(self, t: float, body: dict[str, Any], key: str | None = None) -> None:
        """Decide one ``signals`` record produced at ``t``, after every state event due by then."""
        self.advance(t)
        self._decide(t, Record("signals", 0, next(self._offsets),
                               key.encode() if key is not None else None,
                               orjson.dumps({"ts": wire_ts(t), **body}), int((EPOCH + t) * 1000)))

    def advance(self, t: float) -> None:
        """Fold every state event and re-feed every retry due at or before ``t``; tick on the
        way, so cooldowns elapse when they would on a live worker."""
        while self._pending and self._pending[0][0] <= t:
            at, _, kind, value, headers = heapq.heappop(self._pending)
            self._tick_until(at)
            if kind == "retry":
                self._decide(at, Record("router.retry", 0, next(self._offsets), None, value,
                                        int((EPOCH + at) * 1000), headers))
            else:
                self._fold(at, kind, value)
        self._tick_until(t)
        self.now = max(self.now, t)

    def _tick_until(self, t: float) -> None:
        while self._next_tick <= t:
            self.transitions.extend(self.engine.tick(EPOCH + self._next_tick))
            self._next_tick += TICK_S

    def _fold(self, at: float, kind: str, value: bytes) -> None:
        ts_ms = int((EPOCH + at) * 1000)
        if kind == "health":
            event = parse_health(value, record_ts_ms=ts_ms)
            if isinstance(event, Rejection):
                raise ValueError(f"the simulator built an invalid health event: {event.error}")
            self.transitions.extend(self.engine.apply_health(event, EPOCH + at))
        else:
            outcome = parse_outcome(value, record_ts_ms=ts_ms)
            if isinstance(outcome, Rejection):
                raise ValueError(f"the simulator built an invalid outcome: {outcome.error}")
            self.transitions.extend(self.engine.apply_outcome(outcome, EPOCH + at))

    def _decide(self, t: float, record: Record) -> None:
        result = self.engine.decide_batch([record], EPOCH + t)
        self.transitions.extend(result.breaker_transitions)
        for retry in result.retries:
            at = retry.not_before - EPOCH
            heapq.heappush(self._pending, (at, next(self._seq), "retry", retry.value or b"",
                                           list(retry.headers)))
        self._on_result(t, result)
