"""The ``router.events`` record: the low-volume state events the Postgres projection records.

The worker never writes Postgres; the state changes the tables record are published here,
and ``router-stream persist`` turns each event into rows (docs/worker.md)::

    type                 table                     published
    breaker_transition   breaker_transitions       with the batch that caused it, or when the
                                                   state topics moved a breaker
    trust_snapshot       trust_snapshots           every TRUST_SNAPSHOT_EVERY_S, scores that moved
    shadow               shadow_decisions          with the batch a rollout candidate shadowed
    policy_version       policy_versions           a policy publish/reload applied or refused
    policy_status        policy_versions.status    a rollout candidate rolled back

The value is one JSON object with a ``type``; the key is the id the event is about (breaker
target, source, signal id, policy version), so one id's events keep their order. This module is
the one definition of the format: :func:`encode_event` and :func:`decode_event`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from router_stream.core.breaker import BreakerState, BreakerTransition
from router_stream.core.rollout import RolloutEvent, ShadowOutcome


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class BreakerTransitionEvent(_Event):
    type: Literal["breaker_transition"] = "breaker_transition"
    target: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str = ""
    at: float

    @classmethod
    def of(cls, t: BreakerTransition) -> BreakerTransitionEvent:
        return cls(target=t.target_id, from_state=t.from_state, to_state=t.to_state,
                   reason=t.reason, at=t.at)

    @property
    def key(self) -> str:
        return self.target


class TrustSnapshotEvent(_Event):
    """Scores of one snapshot period; ``at`` is rounded to the period, so every worker's
    snapshot of the same period lands on the same (source_id, at) rows."""

    type: Literal["trust_snapshot"] = "trust_snapshot"
    scores: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]]
    at: float

    @property
    def key(self) -> str:
        return "trust"


class ShadowEvent(_Event):
    """What a rollout candidate would have done with one signal (a destination list, or the
    DLQ reason it would have given)."""

    type: Literal["shadow"] = "shadow"
    signal_id: str
    candidate_version: str
    baseline: list[str] | str
    candidate: list[str] | str
    agree: bool
    at: float

    @classmethod
    def of(cls, o: ShadowOutcome, at: float) -> ShadowEvent:
        return cls(signal_id=o.signal_id, candidate_version=o.candidate_version,
                   baseline=_choice(o.baseline), candidate=_choice(o.candidate), agree=o.agree,
                   at=at)

    @property
    def key(self) -> str:
        return self.signal_id


class PolicyVersionEvent(_Event):
    """A policy the workers switched to (``active``) or refused (``rejected``)."""

    type: Literal["policy_version"] = "policy_version"
    version: str
    policy_yaml: str
    status: Literal["active", "rejected"]
    published_by: str = ""
    status_reason: str | None = None
    at: float

    @property
    def key(self) -> str:
        return self.version


class PolicyStatusEvent(_Event):
    """A recorded version's status changed without a publish (a candidate rolled back)."""

    type: Literal["policy_status"] = "policy_status"
    version: str
    status: Literal["candidate", "superseded", "rejected", "rolled_back"]
    reason: str | None = None
    at: float

    @classmethod
    def rollback(cls, event: RolloutEvent) -> PolicyStatusEvent:
        return cls(version=event.candidate_version, status="rolled_back", reason=event.reason,
                   at=event.at)

    @property
    def key(self) -> str:
        return self.version


RouterEvent = Annotated[
    BreakerTransitionEvent | TrustSnapshotEvent | ShadowEvent | PolicyVersionEvent
    | PolicyStatusEvent,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[RouterEvent] = TypeAdapter(RouterEvent)


def encode_event(event: RouterEvent) -> tuple[bytes, bytes]:
    """(key, value) of the ``router.events`` record for ``event``."""
    return event.key.encode("utf-8", "surrogatepass"), event.model_dump_json().encode()


def decode_event(value: bytes | None) -> RouterEvent:
    """The event of a ``router.events`` value; raises ``ValueError`` when it is not one."""
    if value is None:
        raise ValueError("a router.events record without a value")
    return _ADAPTER.validate_json(value)


def _choice(choice: tuple[str, ...] | str) -> list[str] | str:
    return list(choice) if isinstance(choice, tuple) else choice
