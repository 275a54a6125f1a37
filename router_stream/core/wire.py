"""The router's wire formats: header names, the headers of DLQ and retry records, where a record
was first read, decision ids and the bytes of a routed record (SPEC §2).

Every module that writes or reads a router header goes through this one; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import orjson

from router_stream.core.models import MAX_EPOCH_MS

if TYPE_CHECKING:
    from router_stream.core.models import DlqReason, InboundRecord

Headers = list[tuple[str, bytes | None]]

# Header names (SPEC §2). Values are UTF-8 text.
H_REASON = "x-dlq-reason"
H_ERROR = "x-dlq-error"
H_TOPIC = "x-dlq-original-topic"
H_PARTITION = "x-dlq-original-partition"
H_OFFSET = "x-dlq-original-offset"
H_ATTEMPTS = "x-dlq-attempts"
H_FIRST_FAILED = "x-dlq-first-failed-at"
H_SIGNAL_ID = "x-signal-id"
H_DLQ_ID = "x-dlq-id"
H_TENANT = "x-dlq-tenant"  # when the record parsed as a signal (for the projection's row)
H_KIND = "x-dlq-kind"  # when it was classified
H_RETRY_NOT_BEFORE = "x-retry-not-before"
# A DLQ record too large for router.dlq travels as a reference: no value, these two headers.
H_REFERENCE = "x-dlq-reference"
H_ORIGINAL_SIZE = "x-dlq-original-size"
# On the DLQ record of an input whose outputs the broker refused after its decision record may
# already have been written: this entry, not that decision, is the input's outcome.
H_SUPERSEDES = "x-dlq-supersedes-decision"
# The context Kafka Connect and Spring Kafka put on their dead letters.
H_ORIGINAL_TS = "x-dlq-original-timestamp"  # epoch ms of the record first read (first trip's)
H_ORIGINAL_TS_TYPE = "x-dlq-original-timestamp-type"  # CreateTime | LogAppendTime
H_GROUP = "x-dlq-consumer-group"
H_EXCEPTION = "x-dlq-exception"  # processing_error: the exception's class
H_STACKTRACE = "x-dlq-stacktrace"  # processing_error: the end of its traceback, bounded
DLQ_HEADERS = frozenset(
    {H_REASON, H_ERROR, H_TOPIC, H_PARTITION, H_OFFSET, H_ATTEMPTS, H_FIRST_FAILED, H_SIGNAL_ID,
     H_DLQ_ID, H_RETRY_NOT_BEFORE, H_REFERENCE, H_ORIGINAL_SIZE, H_TENANT, H_KIND,
     H_SUPERSEDES, H_ORIGINAL_TS, H_ORIGINAL_TS_TYPE, H_GROUP, H_EXCEPTION, H_STACKTRACE}
)
"""Every header the router writes on a DLQ or retry record; removed again on the next trip."""

TRACE_HEADERS = frozenset({"traceparent", "tracestate", "x-trace-id"})
"""The trace context a signal carries (W3C Trace Context, or a plain trace id) and every record
derived from it carries on: routed, decision, retry and DLQ records."""

STACKTRACE_MAX_BYTES = 4096
TIMESTAMP_TYPES = {0: "CreateTime", 1: "LogAppendTime"}
"""Kafka's record timestamp types by number: the values ``x-dlq-original-timestamp-type`` has."""
MAX_ERROR_LEN = 500


def without_router_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> Headers:
    """The record's own headers, in order (null values kept): every router header of an earlier
    trip removed."""
    return [(k, v) for k, v in headers or () if k not in DLQ_HEADERS]


def trace_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> Headers | None:
    """The trace-context headers among ``headers`` (None when there are none)."""
    if not headers:
        return None
    found = [(k, v) for k, v in headers if k in TRACE_HEADERS]
    return found or None


def header_text(text: str) -> bytes:
    """A header value from text that may hold lone surrogates (an exception message quoting
    input): escaped rather than raising."""
    return text.encode("utf-8", "backslashreplace")


def one_line(error: str) -> str:
    """An error as a DLQ header and row carry it: one line, at most ``MAX_ERROR_LEN`` long."""
    return " ".join(error.split())[:MAX_ERROR_LEN]


# --- where a record was first read ------------------------------------------------------------


def position_key(topic: str, partition: int, offset: int) -> str:
    """``topic/partition/offset``: a record's position as DLQ keys and decisions name it."""
    return f"{topic}/{partition}/{offset}"


class Origin(msgspec.Struct, gc=False):
    """Where a record was first read: itself, or (for a retried/replayed record) its headers.

    A ``msgspec.Struct``: one is built per record, and that is cheaper than a dataclass."""

    topic: str
    partition: int
    offset: int
    attempts: int
    first_failed_at: float | None
    dlq_id: str | None = None  # set when an operator replayed the record from the DLQ

    @classmethod
    def own(cls, record: InboundRecord) -> Origin:
        """The record's own position: a fresh record, never failed."""
        return cls(record.topic, record.partition, record.offset, 0, None)

    @property
    def key(self) -> str:
        """The DLQ idempotency key of the original record (``dlq_entries.dlq_key``)."""
        return position_key(self.topic, self.partition, self.offset)

    @property
    def replay_id(self) -> str:
        """The same for every copy of one replay of an entry (its origin and attempt count),
        different for the next replay after it failed again (one more attempt)."""
        return f"replay:{self.key}#{self.attempts}"


def origin_headers(topic: str, partition: int, offset: int, attempts: int,
                   first_failed_at: float) -> Headers:
    """What a DLQ or retry record carries to its next trip: its origin and its history."""
    return [(H_TOPIC, topic.encode()), (H_PARTITION, str(partition).encode()),
            (H_OFFSET, str(offset).encode()), (H_ATTEMPTS, str(attempts).encode()),
            (H_FIRST_FAILED, repr(first_failed_at).encode())]


_ORIGIN_HEADERS = frozenset({H_TOPIC, H_PARTITION, H_OFFSET, H_ATTEMPTS, H_FIRST_FAILED,
                             H_DLQ_ID})

TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}\Z")
"""What Kafka accepts as a topic name."""
INT32_MAX = 2**31 - 1  # a Kafka partition; a DLQ entry's attempts (Postgres int4)
INT64_MAX = 2**63 - 1  # a Kafka offset or timestamp (Postgres int8)
LATEST_EPOCH_S = MAX_EPOCH_MS // 1000 * 1.0  # 9999-12-31T23:59:59Z: the latest a row holds


def valid_position(topic: str, partition: int, offset: int) -> bool:
    """True when ``topic/partition/offset`` can be a Kafka record's position."""
    return (TOPIC_NAME.match(topic) is not None and 0 <= partition <= INT32_MAX
            and 0 <= offset <= INT64_MAX)


def origin_of(record: InboundRecord) -> Origin:
    """Where the record was first read. A record re-fed from ``router.retry`` or replayed from the
    DLQ carries its origin and attempt count in headers; a fresh one is its own origin."""
    headers = record.headers
    if headers:
        found = {k: v for k, v in headers if v is not None and k in _ORIGIN_HEADERS}
        if H_TOPIC in found and H_PARTITION in found and H_OFFSET in found:
            try:
                origin = Origin(
                    found[H_TOPIC].decode(), int(found[H_PARTITION]), int(found[H_OFFSET]),
                    int(found.get(H_ATTEMPTS, b"0")),
                    _epoch_seconds(found[H_FIRST_FAILED]) if H_FIRST_FAILED in found else None,
                    found[H_DLQ_ID].decode() if H_DLQ_ID in found else None,
                )
                if (valid_position(origin.topic, origin.partition, origin.offset)
                        and 0 <= origin.attempts <= INT32_MAX):
                    return origin
            except ValueError:  # UnicodeDecodeError included
                pass  # bad headers: treat the record as fresh rather than fail it
    return Origin(record.topic, record.partition, record.offset, 0, None)  # Origin.own


def _epoch_seconds(value: bytes) -> float:
    """A time header's epoch seconds, from 0 to ``LATEST_EPOCH_S``; ``ValueError`` otherwise."""
    at = float(value) + 0.0  # -0.0 + 0.0 is 0.0: written back, the header has no sign
    if not 0.0 <= at <= LATEST_EPOCH_S:  # NaN included
        raise ValueError(f"epoch seconds out of range: {at!r}")
    return at


def origin_key(record: InboundRecord) -> str:
    """``topic/partition/offset`` where ``record`` was first read: its decision's ``input_*``
    fields and its DLQ entry's ``dlq_key`` say the same."""
    return origin_of(record).key


# --- DLQ and retry headers ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DlqContext:
    """Where and how a dead letter came about, beyond SPEC's headers: the original record's
    timestamp (ms) and its type, the consumer group that read it, and for a
    ``processing_error`` the exception's class and the end of its traceback."""

    original_timestamp: int | None = None
    timestamp_type: str | None = None
    consumer_group: str | None = None
    exception: str | None = None
    stacktrace: str | None = None

    def headers(self) -> Headers:
        out: Headers = []
        for name, value in ((H_ORIGINAL_TS, self.original_timestamp),
                            (H_ORIGINAL_TS_TYPE, self.timestamp_type),
                            (H_GROUP, self.consumer_group), (H_EXCEPTION, self.exception)):
            if value is not None:
                out.append((name, header_text(str(value))))
        if self.stacktrace:
            tail = header_text(self.stacktrace)[-STACKTRACE_MAX_BYTES:]
            # a cut through a multi-byte character is dropped, so the value stays UTF-8
            out.append((H_STACKTRACE, tail.decode("utf-8", "ignore").encode()))
        return out


def dlq_context(record: InboundRecord, consumer_group: str | None,
                exception: str | None = None, stacktrace: str | None = None) -> DlqContext:
    """The dead letter's context; the original timestamp (and its type) is the first trip's
    when ``record`` is itself a retried or replayed record."""
    earlier: dict[str, str] = {}
    for name, value in record.headers or ():
        if name in (H_ORIGINAL_TS, H_ORIGINAL_TS_TYPE) and value is not None:
            earlier[name] = value.decode("ascii", "replace")
    first = earlier.get(H_ORIGINAL_TS, "")
    if first.isascii() and first.isdigit() and len(first) <= 19 and int(first) <= INT64_MAX:
        timestamp: int | None = int(first)
        kind = earlier.get(H_ORIGINAL_TS_TYPE)
        if kind not in TIMESTAMP_TYPES.values():
            kind = None
    elif isinstance(record.timestamp, int) and record.timestamp >= 0:  # -1: none
        timestamp = record.timestamp
        # Kafka clients' records have a timestamp_type (0 CreateTime, 1 LogAppendTime)
        kind = TIMESTAMP_TYPES.get(getattr(record, "timestamp_type", -1))
    else:
        timestamp = kind = None
    return DlqContext(timestamp, kind, consumer_group, exception, stacktrace)


def dlq_headers(headers: Sequence[tuple[str, bytes | None]] | None, *, reason: DlqReason,
                error: str, topic: str, partition: int, offset: int, attempts: int,
                first_failed_at: float, signal_id: str | None, tenant: str | None = None,
                kind: str | None = None, context: DlqContext | None = None) -> Headers:
    """The headers a DLQ record travels with: the record's own, then one set of DLQ headers.

    Router headers already on the record (a replayed or retried record failing again) are
    replaced, never appended, so a record keeps the same number of headers however many times
    it goes round; ``attempts`` and ``first_failed_at`` carry its history instead.
    """
    out = without_router_headers(headers)
    out += [(H_REASON, reason.value.encode()), (H_ERROR, header_text(error)),
            *origin_headers(topic, partition, offset, attempts, first_failed_at)]
    for name, value in ((H_SIGNAL_ID, signal_id), (H_TENANT, tenant), (H_KIND, kind)):
        if value is not None:
            out.append((name, header_text(value)))
    if context is not None:
        out += context.headers()
    return out


def retry_headers(headers: Sequence[tuple[str, bytes | None]] | None, origin: Origin,
                  attempts: int, first_failed_at: float, not_before: float,
                  signal_id: str, context: DlqContext | None = None) -> Headers:
    """The headers of a record parked on ``router.retry``: its own, its origin and attempts,
    when it is due again, its signal id, and the first trip's record timestamp and its type
    (``context``, :func:`dlq_context`): the retry record has a timestamp of its own, and the
    DLQ entry of a signal whose retries run out names the first trip's."""
    out = [*without_router_headers(headers),
           *origin_headers(origin.topic, origin.partition, origin.offset, attempts,
                           first_failed_at),
           (H_RETRY_NOT_BEFORE, repr(not_before).encode()), (H_SIGNAL_ID, header_text(signal_id))]
    if context is not None and context.original_timestamp is not None:
        out.append((H_ORIGINAL_TS, str(context.original_timestamp).encode()))
        if context.timestamp_type is not None:
            out.append((H_ORIGINAL_TS_TYPE, context.timestamp_type.encode()))
    return out


def replay_headers(headers: Sequence[tuple[str, bytes | None]] | None, dlq_id: int,
                   origin: Origin, first_failed_at: float, signal_id: bytes | None) -> Headers:
    """The headers of a DLQ entry replayed to its original topic: its own, the entry's id, its
    origin and failures so far (``origin.attempts``), so the engine decides it as a re-fed
    record (:func:`origin_of`) and a second failure lands on the same entry."""
    out = [*without_router_headers(headers), (H_DLQ_ID, str(dlq_id).encode()),
           *origin_headers(origin.topic, origin.partition, origin.offset, origin.attempts,
                           first_failed_at)]
    if signal_id is not None:
        out.append((H_SIGNAL_ID, signal_id))
    return out


# --- decisions and routed records --------------------------------------------------------------

# Copying an empty hash object is cheaper than constructing one (docs/performance.md); the
# prototype itself is never updated.
_DECISION_HASH = hashlib.blake2b(digest_size=12)


def decision_id_for(signal_id: str) -> str:
    """Deterministic: re-processing a signal after a crash yields the same decision id, so the
    Kafka copy and the Postgres row of a decision agree however often it is written
    (``"dec-"`` + the 12-byte BLAKE2b digest of the id, in hex)."""
    return decision_id_bytes(signal_id).decode()


def decision_id_bytes(signal_id: str) -> bytes:
    """:func:`decision_id_for` as ASCII bytes, as the encoder writes it."""
    h = _DECISION_HASH.copy()
    h.update(signal_id.encode())
    return b"dec-" + h.hexdigest().encode()


# The bytes of a routed record (the producer's value with a ``route`` member spliced in before its
# closing brace, SPEC §2) and of a decision (SPEC §3) are built from parts, without a ``Decision``
# or a dict per signal: serialised exactly as ``orjson.dumps`` of the route dict and of the
# ``Decision`` dataclass would be (tests/unit/test_output_bytes.py holds them to it). Parts that
# recur all batch (the batch's time, a route's constant fields, a tenant, an input partition) are
# serialised once per batch by :class:`OutputEncoder`.

_NULL_CONSENSUS = b'"value":null,"method":null,"sources_used":null,"outliers":null'
_NO_EXTRA = b',"extra":{}}'
_PRIORITY: dict[int | None, bytes] = {
    p: b',"priority":' + orjson.dumps(p) + b',"rule":null,"override_id":null,'
    for p in (None, *range(10))}


def routed_body(value: bytes | None) -> bytes:
    """The signal's JSON without its closing brace, and the separator before ``"route"``."""
    raw = value or b"{}"
    if raw[-1:] != b"}":
        raw = raw.rstrip()
    body = raw[:-1]
    last = body[-1:]
    if last.isspace():
        body = body.rstrip()
        last = body[-1:]
    return body if last == b"{" else body + b","


DECISION_ID_SPAN = slice(16, 44)
"""Where a decision's value (:meth:`OutputEncoder.decision`) holds its decision id:
``{"decision_id":"`` is 16 bytes, ``dec-`` and 24 hex digits 28 more."""


class RouteParts:
    """The constant fields of one route combination, serialised: the decision's from ``kind`` to
    the ``confidence`` key, and each destination's routed ``route`` fields likewise."""

    __slots__ = ("decision", "routed")

    def __init__(self, kind: str, destinations: tuple[str, ...], strategy: str,
                 tier: int | None, version: str) -> None:
        self.decision = (b"," + orjson.dumps({
            "kind": kind, "destinations": destinations, "strategy": strategy, "tier": tier,
            "policy_version": version})[1:-1] + b',"confidence":')
        self.routed = tuple(b"," + orjson.dumps({
            "destination": d, "kind": kind, "strategy": strategy, "tier": tier,
            "policy_version": version})[1:-1] + b',"confidence":' for d in destinations)


RouteKey = tuple[str, tuple[str, ...], str, int | None, str]


class OutputEncoder:
    """Decision and routed bytes for the records of one batch decided at ``now``."""

    __slots__ = ("_routed_at", "_decided_at", "_routes", "_tenants", "_inputs", "_floats")

    def __init__(self, now: float) -> None:
        at = orjson.dumps(now)
        self._routed_at = b',"routed_at":' + at
        self._decided_at = b',"decided_at":' + at + b',"signal_ts":'
        self._routes: dict[RouteKey, RouteParts] = {}
        self._tenants: dict[str, bytes] = {}
        self._inputs: dict[tuple[str, int], bytes] = {}
        self._floats: dict[float, bytes] = {}  # confidences and signal times recur too

    def route(self, kind: str, destinations: tuple[str, ...], strategy: str, tier: int | None,
              version: str) -> RouteParts:
        key = (kind, destinations, strategy, tier, version)
        parts = self._routes.get(key)
        if parts is None:
            parts = self._routes[key] = RouteParts(*key)
        return parts

    def number(self, value: float) -> bytes:
        """``orjson.dumps(value)``, kept per batch for floats (ints and zeros, which compare
        equal to floats of another spelling, are not kept)."""
        if type(value) is not float or value == 0.0:
            return orjson.dumps(value)
        out = self._floats.get(value)
        if out is None:
            out = self._floats[value] = orjson.dumps(value)
        return out

    def ids(self, signal_id: str) -> bytes:
        """``"decision_id":…,"signal_id":…``: how both a decision and a route begin (the
        decision id is hex: nothing in it to escape). A decision's value therefore holds its
        id at ``DECISION_ID_SPAN``."""
        return b"".join((b'"decision_id":"', decision_id_bytes(signal_id), b'","signal_id":',
                         orjson.dumps(signal_id)))

    def routed(self, body: bytes, ids: bytes, fields: bytes, confidence: bytes,
               consensus: bytes | None) -> bytes:
        """A routed value: ``body`` (:func:`routed_body`), then the route: ``ids``, one
        destination's ``fields`` (:class:`RouteParts`), the confidence, ``routed_at`` and a
        consensus decision's members (``"value":…,"outliers":[…]``)."""
        if consensus is None:
            return b"".join((body, b'"route":{', ids, fields, confidence, self._routed_at,
                             b"}}"))
        return b"".join((body, b'"route":{', ids, fields, confidence, self._routed_at, b",",
                         consensus, b"}}"))

    def decision(self, ids: bytes, tenant: str, route: RouteParts, confidence: bytes,
                 state: bytes, origin: Origin, signal_ts: float, priority: int | None,
                 consensus: bytes | None, extra: dict[str, object] | None) -> bytes:
        """A decision's value, field by field in ``Decision``'s order: ``state`` is its
        ``"trust"`` and ``"breakers"`` members (:func:`route_state`), ``consensus`` as in
        :meth:`routed` but with ``value`` a float, ``extra`` the ``extra`` field."""
        tenant_json = self._tenants.get(tenant)
        if tenant_json is None:
            tenant_json = self._tenants[tenant] = b',"tenant":' + orjson.dumps(tenant)
        where = self._inputs.get((origin.topic, origin.partition))
        if where is None:
            where = self._inputs[(origin.topic, origin.partition)] = (
                b',"input_topic":' + orjson.dumps(origin.topic) + b',"input_partition":'
                + str(origin.partition).encode() + b',"input_offset":')
        prio = _PRIORITY.get(priority)
        if prio is None:
            prio = b',"priority":' + orjson.dumps(priority) + b',"rule":null,"override_id":null,'
        return b"".join((
            b"{", ids, tenant_json, route.decision, confidence, state, where,
            b"%d" % origin.offset, self._decided_at, self.number(signal_ts), prio,
            _NULL_CONSENSUS if consensus is None else consensus,
            _NO_EXTRA if not extra else b',"extra":' + orjson.dumps(extra) + b"}"))


def route_state(trust: dict[str, float], breakers: dict[str, str]) -> bytes:
    """A decision's ``"trust"`` and ``"breakers"`` members, with the commas around."""
    return b',"trust":' + orjson.dumps(trust) + b',"breakers":' + orjson.dumps(breakers)


def consensus_members(value: float, method: str, sources_used: Sequence[str],
                      outliers: Sequence[str]) -> bytes:
    """A consensus decision's members, as its route and its decision carry them."""
    return orjson.dumps({"value": value, "method": method, "sources_used": sources_used,
                         "outliers": outliers})[1:-1]
