"""Circuit breaker per destination/source: an explicit state machine (SPEC §3).

States and the only moves allowed between them (``_ALLOWED``)::

    closed ──(consecutive failures ≥ failure_threshold, or error rate over the
       ▲      window ≥ error_rate_threshold with ≥ min_volume events)──► open
       │                                                                 │
       │                                      cooldown elapsed (poll)    │
       │                                                                 ▼
       └───────(half_open_probes probes succeeded)──────────────── half_open
                                                   ──(a probe failed)──► open (cooldown × backoff)

Every move goes through :func:`_transition`, which checks the table and raises
:class:`InvalidTransition` on anything else; every move is returned as a
:class:`BreakerTransition` event so the caller can record it. ``open → closed`` is never a single
move: an operator reset from open goes through half_open and emits both transitions.

The functions are pure: they take a :class:`Breaker` value and return a new one. The error-rate
window is a fixed number of time buckets (``window_buckets``), so memory per breaker is bounded no
matter the traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from pydantic.dataclasses import dataclass as pydantic_dataclass

from router_stream.core.policy.fields import CONFIG_SECTION, Count
from router_stream.core.policy.sections import BreakerPolicy


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_ALLOWED: dict[BreakerState, frozenset[BreakerState]] = {
    BreakerState.CLOSED: frozenset({BreakerState.OPEN}),
    BreakerState.OPEN: frozenset({BreakerState.HALF_OPEN}),
    BreakerState.HALF_OPEN: frozenset({BreakerState.CLOSED, BreakerState.OPEN}),
}

# Operator moves (:func:`force`): the path of table moves taken from a state to the requested one.
# Forcing closed → half_open is refused: there is nothing to probe on a closed breaker.
_FORCE_PATHS: dict[tuple[BreakerState, BreakerState], tuple[BreakerState, ...]] = {
    (BreakerState.CLOSED, BreakerState.OPEN): (BreakerState.OPEN,),
    (BreakerState.HALF_OPEN, BreakerState.OPEN): (BreakerState.OPEN,),
    (BreakerState.OPEN, BreakerState.HALF_OPEN): (BreakerState.HALF_OPEN,),
    (BreakerState.OPEN, BreakerState.CLOSED): (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    (BreakerState.HALF_OPEN, BreakerState.CLOSED): (BreakerState.CLOSED,),
}


class InvalidTransition(Exception):
    """A move that ``_ALLOWED`` (or the force paths) does not contain."""

    def __init__(self, target_id: str, from_state: BreakerState, to_state: BreakerState) -> None:
        super().__init__(
            f"breaker {target_id!r}: invalid transition {from_state.value} -> {to_state.value}"
        )
        self.target_id = target_id
        self.from_state = from_state
        self.to_state = to_state


@pydantic_dataclass(frozen=True, slots=True, config=CONFIG_SECTION)
class BreakerConfig(BreakerPolicy):
    """The policy's breaker settings, and how finely the error-rate window is kept:
    ``window_buckets`` time buckets over ``window_s``."""

    window_buckets: Count = 12


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """One recorded move of one breaker."""

    target_id: str
    from_state: BreakerState
    to_state: BreakerState
    at: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_id": self.target_id,
            "from_state": self.from_state.value,
            "to_state": self.to_state.value,
            "at": self.at,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BreakerTransition:
        return cls(
            target_id=str(data["target_id"]),
            from_state=BreakerState(data["from_state"]),
            to_state=BreakerState(data["to_state"]),
            at=float(data["at"]),
            reason=str(data["reason"]),
        )


@dataclass(frozen=True, slots=True)
class Breaker:
    """The state of one breaker. ``buckets`` holds the error-rate window's counts, oldest first,
    **flat**: ``(index, ok, failed, index, ok, failed, ...)`` — :meth:`window` gives them as
    triples. Flat because a worker holds one breaker per source and destination (memory:
    docs/performance.md).
    ``cooldown_s`` is the current cooldown (grows on re-open); ``None`` means the configured
    base."""

    target_id: str
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    buckets: tuple[int, ...] = field(default=())
    opened_at: float | None = None
    cooldown_s: float | None = None
    open_count: int = 0
    probes_in_flight: int = 0
    probes_succeeded: int = 0
    last_probe_at: float | None = None

    def window(self) -> list[tuple[int, int, int]]:
        """The window's buckets as ``(bucket_index, ok, failed)``, oldest first."""
        b = self.buckets
        return [(b[i], b[i + 1], b[i + 2]) for i in range(0, len(b), 3)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_id": self.target_id,
            "state": self.state.value,
            "consecutive_failures": self.consecutive_failures,
            "buckets": [list(b) for b in self.window()],
            "opened_at": self.opened_at,
            "cooldown_s": self.cooldown_s,
            "open_count": self.open_count,
            "probes_in_flight": self.probes_in_flight,
            "probes_succeeded": self.probes_succeeded,
            "last_probe_at": self.last_probe_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Breaker:
        def opt(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(
            target_id=str(data["target_id"]),
            state=BreakerState(data.get("state", "closed")),
            consecutive_failures=int(data.get("consecutive_failures", 0)),
            buckets=tuple(int(n) for i, o, f in data.get("buckets", ()) for n in (i, o, f)),
            opened_at=opt("opened_at"),
            cooldown_s=opt("cooldown_s"),
            open_count=int(data.get("open_count", 0)),
            probes_in_flight=int(data.get("probes_in_flight", 0)),
            probes_succeeded=int(data.get("probes_succeeded", 0)),
            last_probe_at=opt("last_probe_at"),
        )


Transitions = list[BreakerTransition]


def _transition(
    breaker: Breaker, to_state: BreakerState, now: float, reason: str
) -> tuple[Breaker, BreakerTransition]:
    """The single place where ``state`` changes; checks the move against ``_ALLOWED``."""
    if to_state not in _ALLOWED[breaker.state]:
        raise InvalidTransition(breaker.target_id, breaker.state, to_state)
    event = BreakerTransition(breaker.target_id, breaker.state, to_state, now, reason)
    return replace(breaker, state=to_state), event


def _open(
    breaker: Breaker, now: float, reason: str, cooldown_s: float
) -> tuple[Breaker, Transitions]:
    opened, event = _transition(breaker, BreakerState.OPEN, now, reason)
    opened = replace(
        opened,
        opened_at=now,
        cooldown_s=cooldown_s,
        open_count=breaker.open_count + 1,
        consecutive_failures=0,
        buckets=(),
        probes_in_flight=0,
        probes_succeeded=0,
        last_probe_at=None,
    )
    return opened, [event]


def _reopen(
    breaker: Breaker, now: float, reason: str, cfg: BreakerConfig
) -> tuple[Breaker, Transitions]:
    """half_open → open with the cooldown multiplied (capped): a destination that fails its probe
    is given longer to recover each time."""
    current = breaker.cooldown_s if breaker.cooldown_s is not None else cfg.cooldown_s
    longer = min(current * cfg.backoff_multiplier, cfg.max_cooldown_s)
    return _open(breaker, now, reason, longer)


def _close(breaker: Breaker, now: float, reason: str) -> tuple[Breaker, Transitions]:
    closed, event = _transition(breaker, BreakerState.CLOSED, now, reason)
    closed = replace(
        closed,
        consecutive_failures=0,
        buckets=(),
        opened_at=None,
        cooldown_s=None,  # back to the base cooldown after a successful close
        probes_in_flight=0,
        probes_succeeded=0,
        last_probe_at=None,
    )
    return closed, [event]


def _half_open(breaker: Breaker, now: float, reason: str) -> tuple[Breaker, Transitions]:
    half, event = _transition(breaker, BreakerState.HALF_OPEN, now, reason)
    half = replace(half, probes_in_flight=0, probes_succeeded=0, last_probe_at=None)
    return half, [event]


def _add_to_window(
    buckets: tuple[int, ...], ok: bool, now: float, cfg: BreakerConfig
) -> tuple[int, ...]:
    """Count one event in its time bucket and drop buckets older than the window. Events older
    than the window (late arrivals) are not counted. ``buckets`` is flat (see :class:`Breaker`)."""
    if not math.isfinite(now):
        return buckets
    index = math.floor(now / (cfg.window_s / cfg.window_buckets))
    newest = max(index, buckets[-3]) if buckets else index
    horizon = newest - cfg.window_buckets  # buckets with index <= horizon are out of the window
    kept: list[tuple[int, int, int]] = []
    placed = index <= horizon
    for i in range(0, len(buckets), 3):
        b_index, b_ok, b_failed = buckets[i], buckets[i + 1], buckets[i + 2]
        if b_index <= horizon:
            continue
        if b_index == index:
            kept.append((b_index, b_ok + ok, b_failed + (not ok)))
            placed = True
        else:
            kept.append((b_index, b_ok, b_failed))
    if not placed:
        kept.append((index, int(ok), int(not ok)))
        kept.sort()
    return tuple(n for bucket in kept for n in bucket)


def window_counts(breaker: Breaker) -> tuple[int, int]:
    """``(events, failures)`` currently in the error-rate window."""
    b = breaker.buckets
    failures = sum(b[2::3])
    return sum(b[1::3]) + failures, failures


def record(
    breaker: Breaker, ok: bool, now: float, cfg: BreakerConfig
) -> tuple[Breaker, Transitions]:
    """Fold one outcome (delivery result or health check) into the breaker.

    In ``open`` outcomes are ignored: they belong to requests sent before the breaker opened. In
    ``half_open`` every outcome is taken as a probe result (outcomes carry no probe marker, so a
    straggler from before the open may be counted; the probe count keeps that bounded).
    """
    if breaker.state is BreakerState.CLOSED:
        return _record_closed(breaker, ok, now, cfg)
    if breaker.state is BreakerState.HALF_OPEN:
        if not ok:
            return _reopen(breaker, now, "probe_failed", cfg)
        succeeded = breaker.probes_succeeded + 1
        if succeeded >= cfg.half_open_probes:
            return _close(breaker, now, "probes_succeeded")
        in_flight = max(0, breaker.probes_in_flight - 1)
        return replace(breaker, probes_succeeded=succeeded, probes_in_flight=in_flight), []
    return breaker, []


def _record_closed(
    breaker: Breaker, ok: bool, now: float, cfg: BreakerConfig
) -> tuple[Breaker, Transitions]:
    consecutive = 0 if ok else breaker.consecutive_failures + 1
    updated = replace(
        breaker,
        consecutive_failures=consecutive,
        buckets=_add_to_window(breaker.buckets, ok, now, cfg),
    )
    if ok:
        return updated, []
    if consecutive >= cfg.failure_threshold:
        return _open(updated, now, "consecutive_failures", cfg.cooldown_s)
    events, failures = window_counts(updated)
    if events >= cfg.min_volume and failures >= cfg.error_rate_threshold * events:
        return _open(updated, now, "error_rate", cfg.cooldown_s)
    return updated, []


def poll(breaker: Breaker, now: float, cfg: BreakerConfig) -> tuple[Breaker, Transitions]:
    """Time-driven moves: open → half_open once the cooldown has elapsed; half_open → open when a
    probe has been outstanding for ``probe_timeout_s``.

    A move is stamped with the instant it became due, not with when it was noticed: every worker
    polls at its own moments, and equal stamps let Postgres record one transition, not one per
    worker (``breaker_transitions`` is unique on target, time and states).
    """
    if breaker.state is BreakerState.OPEN:
        cooldown = breaker.cooldown_s if breaker.cooldown_s is not None else cfg.cooldown_s
        if breaker.opened_at is None:
            return _half_open(breaker, now, "cooldown_elapsed")
        due = breaker.opened_at + cooldown
        if now >= due:
            return _half_open(breaker, due, "cooldown_elapsed")
    elif (
        breaker.state is BreakerState.HALF_OPEN
        and breaker.probes_in_flight > 0
        and breaker.last_probe_at is not None
        and now >= breaker.last_probe_at + cfg.probe_timeout_s
    ):
        return _reopen(breaker, breaker.last_probe_at + cfg.probe_timeout_s, "probe_timeout", cfg)
    return breaker, []


def allow_request(
    breaker: Breaker, now: float, cfg: BreakerConfig
) -> tuple[bool, Breaker, Transitions]:
    """May a request go to this target now? Polls first; half_open admits at most
    ``half_open_probes`` probes that have not yet reported (each admission takes a slot)."""
    polled, transitions = poll(breaker, now, cfg)
    if polled.state is BreakerState.CLOSED:
        return True, polled, transitions
    if polled.state is BreakerState.OPEN:
        return False, polled, transitions
    if polled.probes_in_flight + polled.probes_succeeded >= cfg.half_open_probes:
        return False, polled, transitions
    probing = replace(polled, probes_in_flight=polled.probes_in_flight + 1, last_probe_at=now)
    return True, probing, transitions


def is_open(breaker: Breaker) -> bool:
    return breaker.state is BreakerState.OPEN


def force(
    breaker: Breaker, to_state: BreakerState, now: float, reason: str, cfg: BreakerConfig
) -> tuple[Breaker, Transitions]:
    """Operator force/reset. Allowed: closed → open, half_open → open (force open; it recovers by
    the normal cooldown — use a drain override to keep a destination out for longer), open →
    half_open (probe now), half_open → closed and open → half_open → closed (reset; both moves
    are emitted). Forcing the current state is a no-op; closed → half_open raises
    :class:`InvalidTransition`."""
    if to_state is breaker.state:
        return breaker, []
    path = _FORCE_PATHS.get((breaker.state, to_state))
    if path is None:
        raise InvalidTransition(breaker.target_id, breaker.state, to_state)
    transitions: Transitions = []
    for step in path:
        if step is BreakerState.OPEN:
            current = breaker.cooldown_s if breaker.cooldown_s is not None else cfg.cooldown_s
            breaker, events = _open(breaker, now, reason, current)
        elif step is BreakerState.HALF_OPEN:
            breaker, events = _half_open(breaker, now, reason)
        else:
            breaker, events = _close(breaker, now, reason)
        transitions.extend(events)
    return breaker, transitions
