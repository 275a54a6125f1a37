"""OpenTelemetry: a signal's trace, started by its producer, gets the worker's ``router.route``
span, the projection's ``router.persist`` span and, once replayed, ``router.replay`` — all
children of the producer's span, through the traceparent that every derived record carries."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from router_stream import tracing
from router_stream.config import SIGNALS
from router_stream.dlq.filters import DlqFilter
from router_stream.dlq.replay import replay_dlq
from tests.support.worker import prepare, produce, signal, worker

pytestmark = pytest.mark.integration

TRACE_A, TRACE_B = "4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Spans of this test, kept in memory (no global provider is installed)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    return exporter


def _traceparent(trace_id: str) -> list[tuple[str, bytes]]:
    return [("traceparent", f"00-{trace_id}-{PARENT}-01".encode())]


async def test_one_trace_per_signal_across_worker_projection_and_replay(
        settings, tmp_path, project_to_idle, spans):
    s = await prepare(settings, tmp_path)
    await produce(s, SIGNALS, [(b"k", signal(1, payload={"severity": "critical"}))],
                  headers=_traceparent(TRACE_A))
    await produce(s, SIGNALS, [(b"k", b'{"truncated": ')], headers=_traceparent(TRACE_B))
    await produce(s, SIGNALS, [(b"k", signal(3, payload={"severity": "critical"}))])  # untraced
    await worker(s).run_until_idle(0.5)
    await project_to_idle(s)
    report = await replay_dlq(s, DlqFilter(reasons=("invalid_json",)))
    assert len(report.sent) == 1

    by_trace: dict[str, list[str]] = {}
    for span in spans.get_finished_spans():
        assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT
        by_trace.setdefault(format(span.context.trace_id, "032x"), []).append(span.name)
    assert set(by_trace) == {TRACE_A, TRACE_B}  # the untraced signal gets no span
    assert "router.route" in by_trace[TRACE_A] and "router.persist" in by_trace[TRACE_A]
    assert {"router.route", "router.persist", "router.replay"} <= set(by_trace[TRACE_B])
    route = next(sp for sp in spans.get_finished_spans()
                 if sp.name == "router.route" and format(sp.context.trace_id, "032x") == TRACE_A)
    assert route.attributes["router.destinations"] == ("pager",)
    assert route.end_time >= route.start_time


def test_no_spans_without_opentelemetry_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    tracing.reset()
    try:
        assert tracing.tracer() is None  # the SDK is installed, but nobody asked for spans
        assert tracing.record_spans("x", [(_traceparent(TRACE_A), {})], 0.0) == 0
    finally:
        tracing.reset()
