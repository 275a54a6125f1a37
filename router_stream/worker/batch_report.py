"""What a committed batch leaves behind besides its records: metrics, log lines (signal content
masked like the projection's rows) and ``router.route`` spans."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from router_stream import tracing
from router_stream.core.outputs import BatchResult
from router_stream.core.redaction import Redactor
from router_stream.worker.logs import trace_id_of
from router_stream.worker.metrics import WorkerMetrics
from router_stream.worker.pipeline import Batch
from router_stream.worker.sink import decision_traces

log = logging.getLogger("router_stream.worker")


def observe(metrics: WorkerMetrics, batch: Batch, elapsed: float) -> None:
    """Metrics and log lines of a committed batch; ``elapsed``: from its fetch to its commit."""
    records, result = batch.records, batch.result
    m = metrics
    m.batch_size.observe(len(records))
    kinds = Counter(d.kind for d in result.decisions)
    for kind, n in kinds.items():
        m.signals_received.labels(kind).inc(n)
        m.latency.labels(kind).observe(elapsed, n)
    undecided = len(records) - len(result.decisions)
    if undecided:
        m.signals_received.labels("unknown").inc(undecided)
    m.confidence.observe_each([d.confidence for d in result.decisions])
    for q in result.dlq:
        m.dlq.labels(q.entry.reason.value).inc()
    if result.retries:
        m.retry_attempts.inc(len(result.retries))
    for o in result.shadow:
        m.rollout_shadow.labels(o.candidate_version, "yes" if o.agree else "no").inc()
    for event in result.rollout_events:
        m.rollout_rollbacks.labels(event.candidate_version).inc()
        log.warning("rollout candidate rolled back", extra={
            "candidate": event.candidate_version, "baseline": event.baseline_version,
            "reason": event.reason, "baseline_rates": event.baseline_rates,
            "candidate_rates": event.candidate_rates})
    _log_batch(records, result, elapsed, batch.redactor)

def _log_batch(records: list[Any], result: BatchResult, elapsed: float,
               redactor: Redactor) -> None:
    """Signal content in these lines (ids, trace ids, error texts quoting values) is masked
    like the projection's Postgres rows, so a signal_id here matches its rows there."""
    for q in result.dlq:
        e = q.entry
        log.info("signal to DLQ", extra={
            "signal_id": _masked_id(redactor, e.signal_id),
            "trace_id": _masked_text(redactor, trace_id_of(e.original_headers)),
            "reason": e.reason.value, "error": redactor.text(e.error), "attempts": e.attempts,
            "original": f"{e.original_topic}/{e.original_partition}/{e.original_offset}"})
    for t in result.retries:
        log.info("signal parked for retry", extra={
            "signal_id": _masked_id(redactor, t.signal_id),
            "trace_id": _masked_text(redactor, trace_id_of(t.headers)),
            "attempts": t.attempts, "not_before": t.not_before})
    if log.isEnabledFor(logging.DEBUG):
        for d in result.decisions:
            log.debug("signal routed", extra={
                "signal_id": redactor.identifier(d.signal_id, "signal_id"),
                "decision_id": d.decision_id, "kind": d.kind,
                "destinations": d.destinations, "strategy": d.strategy,
                "policy_version": d.policy_version})
        log.debug("batch committed", extra={
            "records": len(records), "decisions": len(result.decisions),
            "dlq": len(result.dlq), "retries": len(result.retries),
            "elapsed_ms": round(elapsed * 1000, 2)})

# --- idleness (burst mode) --------------------------------------------------------------


def trace(batch: Batch) -> None:
    """A ``router.route`` span per decided or dead-lettered signal that carried a trace
    context, from its decision to its commit (ids masked as in the logs)."""
    result, redactor = batch.result, batch.redactor
    traces = decision_traces(result)
    decided = ((traces.get(d.signal_id), {
        "router.signal_id": redactor.identifier(d.signal_id, "signal_id"),
        "router.decision_id": d.decision_id, "router.kind": d.kind,
        "router.destinations": list(d.destinations), "router.strategy": d.strategy,
        "router.policy_version": d.policy_version}) for d in result.decisions)
    dead = ((q.entry.original_headers, {"router.dlq_reason": q.entry.reason.value})
            for q in result.dlq)
    tracing.record_spans("router.route", [*decided, *dead], batch.now)


def _masked_id(redactor: Redactor, signal_id: str | None) -> str | None:
    return None if signal_id is None else redactor.identifier(signal_id, "signal_id")


def _masked_text(redactor: Redactor, text: str | None) -> str | None:
    return None if text is None else redactor.text(text)
