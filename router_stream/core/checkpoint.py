"""The shared routing state as one JSON-able document, and back: the body of a state checkpoint.

Why: every worker builds trust, breakers, bandit statistics and overrides by replaying
``source-health``, ``outcomes`` and ``router.control``. Those topics have bounded retention
(3 days for the first two), but bandit statistics never decay and overrides can outlive it, so
a worker started after records were deleted would decide from different state than one that had
been running all along. A checkpoint — this document plus the state topics' offsets it reflects
— is the changelog that closes the gap: a worker restores it and replays only the records after
those offsets (``router_stream.adapters.checkpoint_store`` stores it on a compacted topic).

What is in it is exactly what the state topics build: trust (all five components), breakers,
bandit arms and overrides. What one worker builds from *its own* signals is not: in-flight load,
rate-limit buckets, the dedupe window, consensus observations and a rollout's monitor.

Entities are encoded positionally (a list per entity, in the dataclass's field order) because a
checkpoint holds one entry per source and destination, and the field names are written once,
in ``fields``. A document whose field names differ from
this code's (an upgrade changed a dataclass) is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from router_stream.core.breaker import Breaker, BreakerState
from router_stream.core.overrides import Override
from router_stream.core.strategies.bandits import BanditArm
from router_stream.core.trust import TrustState

if TYPE_CHECKING:
    from router_stream.core.engine import RouterEngine

FORMAT = 1

_TRUST = TrustState.__struct_fields__
_BREAKER = tuple(f.name for f in fields(Breaker) if f.name != "target_id")
_ARM = tuple(f.name for f in fields(BanditArm))
FIELDS: dict[str, list[str]] = {"trust": list(_TRUST), "breakers": list(_BREAKER),
                                "arms": list(_ARM)}


class CheckpointRefused(ValueError):
    """The document cannot be restored (other format, other fields, bad values); the caller
    replays the state topics from the beginning instead."""


@dataclass(frozen=True, slots=True)
class Captured:
    """Shallow copies of the engine's state tables. The entities in them are frozen
    dataclasses, so the copies stay consistent while the engine moves on: the worker captures
    on its event loop and builds the document in a thread."""

    trust: dict[str, TrustState]
    breakers: dict[str, Breaker]
    arms: dict[str, BanditArm]
    overrides: list[Override]


def capture(engine: RouterEngine) -> Captured:
    return Captured(dict(engine.state.trust), dict(engine.state.breakers), dict(engine.state.arms),
                    list(engine.state.overrides.values()))


def to_document(state: Captured) -> dict[str, Any]:
    """The captured state as plain JSON types (see the module docstring)."""
    return {
        "format": FORMAT,
        "fields": {k: list(v) for k, v in FIELDS.items()},  # a copy: callers may edit it
        "trust": {k: _row(v, _TRUST) for k, v in state.trust.items()},
        "breakers": {k: _row(v, _BREAKER) for k, v in state.breakers.items()},
        "arms": {k: _row(v, _ARM) for k, v in state.arms.items()},
        "overrides": [o.to_dict() for o in state.overrides],
    }


def export_state(engine: RouterEngine) -> dict[str, Any]:
    """The shared state of ``engine`` as plain JSON types."""
    return to_document(capture(engine))


def restore_state(engine: RouterEngine, doc: dict[str, Any]) -> None:
    """Replace ``engine``'s shared state with ``doc``'s. All or nothing: a bad document raises
    :class:`CheckpointRefused` and leaves the engine as it was."""
    if doc.get("format") != FORMAT:
        raise CheckpointRefused(f"checkpoint format {doc.get('format')!r}, this code reads "
                                f"{FORMAT}")
    if doc.get("fields") != FIELDS:
        raise CheckpointRefused("checkpoint written by a version with other state fields")
    try:
        trust = {str(k): _trust(v) for k, v in _items(doc, "trust")}
        breakers = {str(k): _breaker(str(k), v) for k, v in _items(doc, "breakers")}
        arms = {str(k): _arm(v) for k, v in _items(doc, "arms")}
        overrides = [Override.from_dict(o) for o in doc.get("overrides", [])]
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointRefused(f"checkpoint has a bad entry: {exc}") from exc
    engine.state.trust = trust
    engine.state.breakers.clear()
    for target, breaker in breakers.items():
        engine.state.breakers[target] = breaker  # BreakerTable keeps its not-closed index
    engine.state.arms = arms
    engine.state.overrides = {o.override_id: o for o in overrides}


def _row(obj: object, names: tuple[str, ...]) -> list[Any]:
    return [getattr(obj, n) for n in names]


def _items(doc: dict[str, Any], section: str) -> Iterable[tuple[Any, Any]]:
    value = doc.get(section, {})
    if not isinstance(value, dict):
        raise TypeError(f"{section}: expected an object")
    return value.items()


def _finite(value: Any) -> float:
    out = float(value)
    if out - out != 0.0:  # inf or nan; cheaper than math.isfinite's call at 110k rows
        raise ValueError(f"not a finite number: {value!r}")
    return out


def _opt(value: Any) -> float | None:
    return None if value is None else _finite(value)


def _trust(row: list[Any]) -> TrustState:
    freshness, error_rate, latency, deviation, availability, last_ts, observations = row
    return TrustState(
        freshness=_finite(freshness), error_rate=_finite(error_rate), latency=_finite(latency),
        deviation=_finite(deviation), availability=_finite(availability), last_ts=_opt(last_ts),
        observations=int(observations),
    )


def _breaker(target: str, row: list[Any]) -> Breaker:
    (state, consecutive_failures, buckets, opened_at, cooldown_s, open_count, probes_in_flight,
     probes_succeeded, last_probe_at) = row
    return Breaker(
        target_id=target, state=BreakerState(state),
        consecutive_failures=int(consecutive_failures),
        buckets=tuple(int(n) for n in buckets) if buckets else (),
        opened_at=_opt(opened_at), cooldown_s=_opt(cooldown_s), open_count=int(open_count),
        probes_in_flight=int(probes_in_flight), probes_succeeded=int(probes_succeeded),
        last_probe_at=_opt(last_probe_at),
    )


def _arm(row: list[Any]) -> BanditArm:
    alpha, beta, pulls, reward_sum = row
    return BanditArm(alpha=_finite(alpha), beta=_finite(beta), pulls=int(pulls),
                     reward_sum=_finite(reward_sum))
