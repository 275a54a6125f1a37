"""OpenTelemetry spans on the path of one signal: ``router.route`` when a worker committed its
decision (or dead-lettered it), ``router.persist`` when the projection wrote its row,
``router.replay`` when an operator replayed it. Each span joins the trace the producer started,
through the W3C ``traceparent`` the signal carried and that its routed, decision and DLQ records
carry on (docs/contract.md, "Trace context"); a record without one gets no span.

A no-op unless opentelemetry-sdk is installed (``pip install 'router-stream[otel]'``) and
spans are wanted: either the process already has an SDK tracer provider (an application
embedding the worker, the tests), or ``OTEL_TRACES_EXPORTER`` names an exporter — ``console``,
or ``otlp`` with opentelemetry-exporter-otlp installed and the standard
``OTEL_EXPORTER_OTLP_*`` variables. Spans are built after the fact from timestamps, off the
decision itself, so tracing never changes what is decided.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger("router_stream.tracing")

Headers = Sequence[tuple[str, bytes | None]] | None
Attributes = Mapping[str, str | int | float | bool | Sequence[str]]

_UNSET: Any = object()
_tracer: Any = _UNSET


def tracer() -> Any:
    """The process's router-stream tracer, or None when spans are not wanted (decided once)."""
    global _tracer
    if _tracer is _UNSET:
        _tracer = _make_tracer()
    return _tracer


def reset() -> None:
    """Decide again at the next :func:`tracer` call (tests that install a provider)."""
    global _tracer
    _tracer = _UNSET


def _make_tracer() -> Any:
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        configured = _provider_from_environment()
        if configured is None:
            return None
        trace.set_tracer_provider(configured)
        provider = configured
    return provider.get_tracer("router_stream")


def _provider_from_environment() -> Any:
    """An SDK tracer provider with the exporter ``OTEL_TRACES_EXPORTER`` names, or None."""
    name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if name in ("", "none"):
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    exporter: Any
    if name == "console":
        exporter = ConsoleSpanExporter()
    elif name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp: no spans")
            return None
        exporter = OTLPSpanExporter()
    else:
        log.warning("unknown OTEL_TRACES_EXPORTER: no spans", extra={"exporter": name})
        return None
    provider = TracerProvider()  # resource from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def record_spans(name: str, items: Iterable[tuple[Headers, Attributes]], start: float,
                 end: float | None = None) -> int:
    """One span ``name`` from ``start`` to ``end`` (epoch seconds; default now) for each item
    whose headers carry a ``traceparent``, as a child of that context. Returns how many."""
    t = tracer()
    if t is None:
        return 0
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    start_ns = int(start * 1e9)
    end_ns = int((time.time() if end is None else end) * 1e9)
    n = 0
    for headers, attributes in items:
        carrier = _carrier(headers)
        if "traceparent" not in carrier:
            continue
        span = t.start_span(name, context=propagator.extract(carrier), start_time=start_ns,
                            attributes=dict(attributes))
        span.end(end_time=end_ns)
        n += 1
    return n


def _carrier(headers: Headers) -> dict[str, str]:
    return {k: v.decode("ascii", "replace") for k, v in headers or ()
            if k in ("traceparent", "tracestate") and v is not None}
