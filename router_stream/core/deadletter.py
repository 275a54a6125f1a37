"""The DLQ record of an input that cannot be routed: its entry (SPEC §5) and the headers it
travels with (:mod:`router_stream.core.wire`)."""

from __future__ import annotations

import traceback

from router_stream.core.models import DlqEntry, DlqReason, InboundRecord, Signal
from router_stream.core.outputs import DlqRecord
from router_stream.core.wire import (
    DlqContext,
    Origin,
    dlq_context,
    dlq_headers,
    one_line,
    origin_of,
    without_router_headers,
)


def dlq_record(record: InboundRecord, origin: Origin, reason: DlqReason, error: str, now: float,
               *, signal_id: str | None = None, signal: Signal | None = None,
               kind: str | None = None, context: DlqContext | None = None) -> DlqRecord:
    """``record`` dead-lettered: tenant and kind from ``signal`` when it parsed as one."""
    error = one_line(error)
    # A replayed record failing again is one more attempt; a retried one already counted it.
    attempts = origin.attempts + 1 if origin.dlq_id is not None else max(1, origin.attempts)
    first = origin.first_failed_at if origin.first_failed_at is not None else now
    original_headers = without_router_headers(record.headers)
    entry = DlqEntry(
        reason=reason, error=error, signal_id=signal_id,
        tenant=signal.tenant if signal is not None else None,
        kind=kind if kind is not None else (signal.kind if signal is not None else None),
        original_topic=origin.topic,
        original_partition=origin.partition, original_offset=origin.offset,
        original_key=record.key, original_value=record.value,
        original_headers=original_headers, attempts=attempts, first_failed_at=first,
    )
    headers = dlq_headers(original_headers, reason=reason, error=error, topic=origin.topic,
                          partition=origin.partition, offset=origin.offset, attempts=attempts,
                          first_failed_at=first, signal_id=signal_id, tenant=entry.tenant,
                          kind=entry.kind, context=context)
    return DlqRecord(entry, headers)


def dead_letter(record: InboundRecord, reason: DlqReason, error: str, now: float,
                signal_id: str | None = None, kind: str | None = None,
                consumer_group: str | None = None) -> DlqRecord:
    """The DLQ record of ``record`` as the engine would write it (origin and attempts from its
    headers when it was retried or replayed): for the worker, when an output of an already
    decided record cannot be written (:mod:`router_stream.core.refusals`)."""
    context = dlq_context(record, consumer_group)
    try:
        return dlq_record(record, origin_of(record), reason, error, now, signal_id=signal_id,
                          kind=kind, context=context)
    except ValueError:  # headers claiming an impossible origin: its own position then
        return dlq_record(record, Origin.own(record), reason, error, now, signal_id=signal_id,
                          kind=kind, context=context)


def processing_error(record: InboundRecord, exc: Exception, now: float,
                     consumer_group: str | None) -> DlqRecord:
    """``record`` dead-lettered because deciding it raised ``exc``: the exception's class and
    message in the error, its class and traceback in the context headers."""
    kind = type(exc)
    context = dlq_context(record, consumer_group, f"{kind.__module__}.{kind.__qualname__}",
                          "".join(traceback.format_exception(exc)))
    try:
        origin = origin_of(record)
    except Exception:  # noqa: BLE001 - headers claiming an impossible origin: use our own
        origin = Origin.own(record)
    return dlq_record(record, origin, DlqReason.PROCESSING_ERROR, f"{kind.__name__}: {exc}", now,
                      context=context)
