"""What deciding a batch produces: the records the worker must make durable, in commit order.

The engine (:mod:`router_stream.core.engine`) turns a batch of inbound records into a
:class:`BatchResult`; the worker writes every part of it (Kafka first, then Postgres) before it
commits the batch's input offsets. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from router_stream.core.breaker import BreakerTransition
from router_stream.core.models import Decision, DlqEntry, DlqReason
from router_stream.core.rollout import RolloutEvent, ShadowOutcome

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
# On the DLQ record of an input whose outputs the broker refused after its decision record may
# already have been written: this entry, not that decision, is the input's outcome.
H_SUPERSEDES = "x-dlq-supersedes-decision"
# The context Kafka Connect and Spring Kafka put on their dead letters.
H_ORIGINAL_TS = "x-dlq-original-timestamp"  # epoch ms of the record first read (first trip's)
H_ORIGINAL_TS_TYPE = "x-dlq-original-timestamp-type"  # CreateTime | LogAppendTime
H_GROUP = "x-dlq-consumer-group"
H_EXCEPTION = "x-dlq-exception"  # processing_error: the exception's class
H_STACKTRACE = "x-dlq-stacktrace"  # processing_error: the end of its traceback, bounded
H_ORIGINAL_SIZE = "x-dlq-original-size"
DLQ_HEADERS = frozenset(
    {H_REASON, H_ERROR, H_TOPIC, H_PARTITION, H_OFFSET, H_ATTEMPTS, H_FIRST_FAILED, H_SIGNAL_ID,
     H_DLQ_ID, H_RETRY_NOT_BEFORE, H_REFERENCE, H_ORIGINAL_SIZE, H_TENANT, H_KIND,
     H_SUPERSEDES, H_ORIGINAL_TS, H_ORIGINAL_TS_TYPE, H_GROUP, H_EXCEPTION, H_STACKTRACE}
)




def without_router_headers(headers: Sequence[tuple[str, bytes | None]] | None
                           ) -> list[tuple[str, bytes | None]]:
    """The record's own headers, in order (null values kept): every router header of an earlier
    trip removed."""
    return [(k, v) for k, v in headers or () if k not in DLQ_HEADERS]


def header_text(text: str) -> bytes:
    """A header value from text that may hold lone surrogates (an exception message quoting
    input): escaped rather than raising."""
    return text.encode("utf-8", "backslashreplace")


STACKTRACE_MAX_BYTES = 4096
TIMESTAMP_TYPES = {0: "CreateTime", 1: "LogAppendTime"}


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

    def headers(self) -> list[tuple[str, bytes | None]]:
        out: list[tuple[str, bytes | None]] = []
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


def dlq_headers(headers: Sequence[tuple[str, bytes | None]] | None, *, reason: DlqReason,
                error: str, topic: str, partition: int, offset: int, attempts: int,
                first_failed_at: float, signal_id: str | None, tenant: str | None = None,
                kind: str | None = None, context: DlqContext | None = None
                ) -> list[tuple[str, bytes | None]]:
    """The headers a DLQ record travels with: the record's own, then one set of DLQ headers.

    Router headers already on the record (a replayed or retried record failing again) are
    replaced, never appended, so a record keeps the same number of headers however many times
    it goes round; ``attempts`` and ``first_failed_at`` carry its history instead.
    """
    out = without_router_headers(headers)
    out += [
        (H_REASON, reason.value.encode()), (H_ERROR, header_text(error)),
        (H_TOPIC, topic.encode()), (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()), (H_ATTEMPTS, str(attempts).encode()),
        (H_FIRST_FAILED, repr(first_failed_at).encode()),
    ]
    if signal_id is not None:
        out.append((H_SIGNAL_ID, header_text(signal_id)))
    if tenant is not None:  # what the projection's row needs beyond SPEC §2
        out.append((H_TENANT, header_text(tenant)))
    if kind is not None:
        out.append((H_KIND, header_text(kind)))
    if context is not None:
        out += context.headers()
    return out


TRACE_HEADERS = frozenset({"traceparent", "tracestate", "x-trace-id"})
"""The trace context a signal carries (W3C Trace Context, or a plain trace id) and every record
derived from it carries on: routed, decision, retry and DLQ records."""


def trace_headers(headers: Sequence[tuple[str, bytes | None]] | None
                  ) -> list[tuple[str, bytes | None]] | None:
    """The trace-context headers among ``headers`` (None when there are none)."""
    if not headers:
        return None
    found = [(k, v) for k, v in headers if k in TRACE_HEADERS]
    return found or None


@dataclass(slots=True, frozen=True)
class RoutedRecord:
    """The signal plus its ``route`` object, for ``routed.<destination>`` (key = input key),
    with the signal's trace-context headers (:func:`trace_headers`)."""

    destination: str
    key: bytes | None
    value: bytes
    signal_id: str
    headers: list[tuple[str, bytes | None]] | None = None


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
        return f"{e.original_topic}/{e.original_partition}/{e.original_offset}"


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


@dataclass(slots=True)
class BatchResult:
    """Everything one batch produced. Every input record is accounted for exactly once in
    ``decisions``, ``dlq`` or ``retries`` (duplicates that policy drops are counted in
    ``dropped_duplicates``)."""

    routed: list[RoutedRecord] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    dlq: list[DlqRecord] = field(default_factory=list)
    retries: list[RetryRecord] = field(default_factory=list)
    breaker_transitions: list[BreakerTransition] = field(default_factory=list)
    dropped_duplicates: int = 0
    shadow: list[ShadowOutcome] = field(default_factory=list)
    rollout_events: list[RolloutEvent] = field(default_factory=list)
