"""Typed views of the records a consuming service reads, parsed from Kafka bytes.

The routed record (``routed.<destination>``) is the producer's signal with a ``route`` object
added (SPEC §2, ``topics/schemas/routed.schema.json``). The decision and the DLQ record reuse the
product's own definitions (:class:`router_stream.core.models.Decision`,
:class:`router_stream.core.models.DlqEntry`), so there is one definition of each format.

Parsing is a single ``orjson.loads`` plus a few type checks: it runs once per delivery on the
consumer's hot path, so no pydantic validation here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

import orjson

from router_stream.core.models import MAX_ID_LEN, Decision, DlqEntry, DlqReason
from router_stream.core.wire import (
    DLQ_HEADERS,
    H_ATTEMPTS,
    H_ERROR,
    H_FIRST_FAILED,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_SIGNAL_ID,
    H_TOPIC,
)
from router_stream.errors import RouterError

_ROUTE_FIELDS: Final = ("decision_id", "destination", "kind", "strategy", "tier",
                        "policy_version", "confidence", "routed_at", "signal_id")
_DECISION_FIELDS: Final = frozenset(f.name for f in fields(Decision))


class InvalidRecord(RouterError):
    """A record that is not what its topic carries (not JSON, a required field missing or of the
    wrong type). Consumers skip it; it is never retried."""


@dataclass(slots=True, frozen=True)
class Route:
    """Why and how the router sent a signal here: the ``route`` object of a routed record.

    ``extra`` holds what consensus routes add (``value``, ``method``, ``sources_used``,
    ``outliers``) and any field a later minor version of the format adds.
    """

    decision_id: str
    destination: str
    kind: str
    strategy: str
    tier: int | None
    policy_version: str
    confidence: float
    routed_at: float
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class RoutedSignal:
    """One record of ``routed.<destination>``.

    ``signal`` is the producer's signal as sent (every field, unknown ones included), without the
    ``route`` object; ``key`` is the input record's key.
    """

    signal_id: str
    route: Route
    signal: Mapping[str, Any]
    key: bytes | None = None

    @property
    def decision_id(self) -> str:
        return self.route.decision_id

    @property
    def destination(self) -> str:
        return self.route.destination

    @property
    def tenant(self) -> str:
        tenant = self.signal.get("tenant", "default")
        return tenant if isinstance(tenant, str) else "default"

    @property
    def payload(self) -> Mapping[str, Any]:
        payload = self.signal.get("payload")
        return payload if isinstance(payload, dict) else {}


def _object(value: bytes | None, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"{what} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRecord(f"{what} is not a JSON object")
    return data


def _text(data: Mapping[str, Any], name: str, what: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRecord(f"{what}: {name} must be a non-empty string")
    return value


def _id(data: Mapping[str, Any], name: str, what: str) -> str:
    # The ids go into the outcome, whose model refuses longer ones: refuse them here instead of
    # after the handler ran.
    value = _text(data, name, what)
    if len(value) > MAX_ID_LEN:
        raise InvalidRecord(f"{what}: {name} is longer than {MAX_ID_LEN} characters")
    return value


def _number(data: Mapping[str, Any], name: str, what: str) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRecord(f"{what}: {name} must be a number")
    return float(value)


def _route(data: Any) -> Route:
    if not isinstance(data, dict):
        raise InvalidRecord("routed record has no route object")
    tier = data.get("tier")
    if tier is not None and (isinstance(tier, bool) or not isinstance(tier, int)):
        raise InvalidRecord("route: tier must be an integer or null")
    kind, strategy = data.get("kind"), data.get("strategy")
    version = data.get("policy_version")
    if not isinstance(kind, str) or not isinstance(strategy, str) or not isinstance(version, str):
        raise InvalidRecord("route: kind, strategy and policy_version must be strings")
    return Route(
        decision_id=_id(data, "decision_id", "route"),
        destination=_id(data, "destination", "route"),
        kind=kind, strategy=strategy, tier=tier, policy_version=version,
        confidence=_number(data, "confidence", "route"),
        routed_at=_number(data, "routed_at", "route"),
        extra={k: v for k, v in data.items() if k not in _ROUTE_FIELDS},
    )


def parse_routed(value: bytes | None, key: bytes | None = None) -> RoutedSignal:
    """Parse a ``routed.<destination>`` value; raises :class:`InvalidRecord`."""
    data = _object(value, "routed record")
    raw_route = data.pop("route", None)
    route = _route(raw_route)
    # The route names the signal id even when the producer left it to the router to derive.
    ids = raw_route if raw_route.get("signal_id") else data
    if not ids.get("signal_id"):
        raise InvalidRecord("routed record: no signal_id")
    signal_id = _id(ids, "signal_id", "routed record")
    return RoutedSignal(signal_id=signal_id, route=route, signal=data, key=key)


def parse_decision(value: bytes | None) -> Decision:
    """Parse a ``router.decisions`` value; raises :class:`InvalidRecord`.

    Fields this version does not know are kept in ``extra`` rather than refused, so a consumer
    keeps working when a minor version of the format adds one.
    """
    data = _object(value, "decision")
    known = {k: v for k, v in data.items() if k in _DECISION_FIELDS}
    unknown = {k: v for k, v in data.items() if k not in _DECISION_FIELDS}
    extra = known.get("extra", {})
    if not isinstance(extra, dict):
        raise InvalidRecord("decision: extra must be a JSON object")
    if unknown:
        known["extra"] = {**extra, **unknown}
    try:
        decision = Decision(**known)
    except TypeError as exc:
        raise InvalidRecord(f"decision: {exc}") from exc
    for name in ("decision_id", "signal_id"):
        _text(known, name, "decision")
    if not isinstance(decision.destinations, list):
        raise InvalidRecord("decision: destinations must be a list")
    return decision


def parse_dlq(headers: Sequence[tuple[str, bytes | None]], key: bytes | None,
              value: bytes | None) -> DlqEntry:
    """Parse a ``router.dlq`` record (original bytes, metadata in ``x-dlq-*`` headers) into the
    product's :class:`DlqEntry`; raises :class:`InvalidRecord`."""
    found = {name: v for name, v in headers if name in DLQ_HEADERS and v is not None}
    try:
        signal_id = found.get(H_SIGNAL_ID)
        return DlqEntry(
            reason=DlqReason(found[H_REASON].decode()),
            error=found.get(H_ERROR, b"").decode("utf-8", "replace"),
            signal_id=signal_id.decode("utf-8", "replace") if signal_id else None,
            original_topic=found[H_TOPIC].decode(),
            original_partition=int(found[H_PARTITION]),
            original_offset=int(found[H_OFFSET]),
            original_key=key, original_value=value,
            original_headers=[(k, v) for k, v in headers
                              if k not in DLQ_HEADERS and v is not None],
            attempts=int(found.get(H_ATTEMPTS, b"1")),
            first_failed_at=float(found[H_FIRST_FAILED]),
        )
    except KeyError as exc:
        raise InvalidRecord(f"DLQ record: header {exc.args[0]} missing") from exc
    except ValueError as exc:  # a bad number, an unknown reason, a pydantic ValidationError
        raise InvalidRecord(f"DLQ record: {' '.join(str(exc).split())[:200]}") from exc
