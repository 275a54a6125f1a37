"""The worker's Prometheus metrics (SPEC §7 names), on a registry per worker.

A registry per :class:`WorkerMetrics` (not the process-global one) lets tests run several workers
in one process and read each one's numbers. Latency buckets span 0.5 ms … 1 s: a batch of 500
signals is decided, produced, persisted and committed in tens of milliseconds.

``trust_score{source}`` and ``breaker_state{destination}`` are per id, and the state can hold
100k+ ids: a worker shows only the ``per_id_limit`` lowest trust scores and the ``per_id_limit``
worst non-closed breakers (``ROUTER_METRICS_PER_ID``; 0 shows every id), plus
``router_breakers{state}`` and ``router_trust_sources``, which count all of them. They are read
from the engine when /metrics is scraped (:class:`_StateCollector`): no per-id objects, no
periodic refresh, and an id that left the state leaves the exposition. The snapshot is taken on
the event loop; the text is rendered off it, after the registry's own metrics.

The registry also carries prometheus_client's process, platform and GC collectors
(``process_*``, ``python_*``).

Extensions beyond SPEC §7 (documented in docs/worker.md): ``router_breakers{state}``,
``router_trust_sources``, ``router_batch_size``,
``router_transient_retries_total{step}``, ``router_ready``, ``router_policy_info{version}``,
``router_breaker_transitions_total{destination,to_state}``, ``router_poison_skips_total{topic}``,
``router_state_records_skipped_total{topic,reason}``.
"""

from __future__ import annotations

import asyncio
import heapq
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import cast

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString as _untyped_go_float

LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0)
CONFIDENCE_BUCKETS = (.1, .2, .3, .4, .5, .6, .7, .8, .9, .95, 1.0)
BREAKER_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}

StateSource = Callable[[], tuple[Mapping[str, float], Mapping[str, str]]]
"""Returns (trust score by source, breaker state by destination) as they are now."""


_go_float = cast("Callable[[float], str]", _untyped_go_float)
"""A float as Prometheus' text format writes it (``+Inf``, ``1.0``)."""


class _StateCollector:
    """The per-id gauges, from the last state taken by :meth:`WorkerMetrics.take_state`.

    Rendered by :meth:`render` straight into bytes, not through prometheus_client's metric
    families: at 220k series its generic path took 2-4 s of CPU (holding the GIL against the hot
    path) and ~47 MB while building the text; this loop is one formatted line per id."""

    def __init__(self, per_id_limit: int | None) -> None:
        self.source: StateSource | None = None
        self.taken: tuple[Mapping[str, float], Mapping[str, str]] = ({}, {})
        self.per_id_limit = per_id_limit

    def render(self) -> bytes:
        trust, breakers = self.taken
        out = bytearray(b"# HELP router_breakers Breakers in the shared state, by state\n"
                        b"# TYPE router_breakers gauge\n")
        counts = dict.fromkeys(BREAKER_STATE_VALUE, 0)
        for state in breakers.values():
            counts[state] = counts.get(state, 0) + 1
        for state, n in counts.items():
            out += f'router_breakers{{state="{state}"}} {n}.0\n'.encode()
        out += (b"# HELP router_trust_sources Sources with a trust score in the shared state\n"
                b"# TYPE router_trust_sources gauge\n"
                + f"router_trust_sources {len(trust)}.0\n".encode())
        out += (b"# HELP trust_score Current trust score\n"
                b"# TYPE trust_score gauge\n")
        for source, score in self._shown_trust(trust):
            out += f'trust_score{{source="{_label(source)}"}} {_go_float(score)}\n'.encode()
        out += (b"# HELP breaker_state 0 closed, 1 half_open, 2 open\n"
                b"# TYPE breaker_state gauge\n")
        for dest, state in self._shown_breakers(breakers):
            value = _go_float(BREAKER_STATE_VALUE.get(state, 0))
            out += f'breaker_state{{destination="{_label(dest)}"}} {value}\n'.encode()
        return bytes(out)

    def _shown_trust(self, trust: Mapping[str, float]) -> Iterable[tuple[str, float]]:
        """Every source, or the ``per_id_limit`` least trusted."""
        if self.per_id_limit is None:
            return trust.items()
        return heapq.nsmallest(self.per_id_limit, trust.items(), key=lambda kv: kv[1])

    def _shown_breakers(self, breakers: Mapping[str, str]) -> Iterable[tuple[str, str]]:
        """Every breaker, or the ``per_id_limit`` worst that are not closed (open first)."""
        if self.per_id_limit is None:
            return breakers.items()
        tripped = ((d, s) for d, s in breakers.items() if s != "closed")
        return heapq.nsmallest(self.per_id_limit, tripped,
                               key=lambda kv: -BREAKER_STATE_VALUE.get(kv[1], 0))


class _Buckets:
    """One label set's counts: per bucket (not cumulative; the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        """``count`` observations of ``value`` (``le`` buckets: a value equal to a bound
        counts in that bound's bucket; NaN in +Inf's, as no bound is ≥ it)."""
        self.counts[bisect_left(self.bounds, value) if value == value else -1] += count
        self.total += value * count

    def observe_each(self, values: Iterable[float]) -> None:
        bounds, counts = self.bounds, self.counts
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value) if value == value else -1] += 1
            total += value
        self.total += total


class BatchHistogram:
    """A Prometheus histogram fed a batch at a time, on the event loop only.

    prometheus_client's ``Histogram.observe`` takes one observation per call behind a lock
    (~1.4 µs here); the worker observes two per signal (its latency and its decision's
    confidence), 4 % of its CPU while draining a backlog. Here one call adds a batch's
    observations of a kind, and the counts are plain integers read by :meth:`collect` at a
    scrape (under the GIL: each list read is whole, as prometheus_client's per-bucket values
    are)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = (),
                 *, buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = labelnames
        self._bounds = tuple(sorted(buckets))
        self._children: dict[tuple[str, ...], _Buckets] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Buckets:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _Buckets(self._bounds)
        return child

    def observe(self, value: float, count: int = 1) -> None:
        self.labels().observe(value, count)

    def observe_each(self, values: Iterable[float]) -> None:
        self.labels().observe_each(values)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation,
                                       labels=list(self._labelnames))
        bounds = [*(_go_float(b) for b in self._bounds), "+Inf"]
        for values, child in list(self._children.items()):
            counts, running = list(child.counts), 0
            cumulative = []
            for bound, n in zip(bounds, counts, strict=True):
                running += n
                cumulative.append((bound, float(running)))
            family.add_metric(list(values), cumulative, child.total)
        yield family


def _label(value: str) -> str:
    """A label value escaped as the exposition format wants (backslash, quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')
    return value


class WorkerMetrics:
    """``per_id_limit``: how many per-id trust and breaker series to show (None: all)."""

    def __init__(self, per_id_limit: int | None = None) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.signals_received = Counter(
            "signals_received", "Signals consumed, by kind ('unknown' when not decided)",
            ["kind"], registry=r)
        self.latency = BatchHistogram(
            "router_latency_seconds", "Fetch to offset commit, per signal", ("kind",),
            buckets=LATENCY_BUCKETS, registry=r)
        self.routing_errors = Counter(
            "routing_errors", "Failed produce attempts to routed.<destination>",
            ["destination"], registry=r)
        self.dlq = Counter("dlq", "Records sent to the DLQ", ["reason"], registry=r)
        self.retry_attempts = Counter(
            "retry_attempts", "Signals parked on router.retry for another attempt", registry=r)
        self._state = _StateCollector(per_id_limit)  # trust_score, breaker_state
        self.confidence = BatchHistogram(
            "decision_confidence", "Confidence of routing decisions",
            buckets=CONFIDENCE_BUCKETS, registry=r)
        self.consumer_lag = Gauge(
            "router_consumer_lag", "High watermark minus next offset to process",
            ["topic", "partition"], registry=r)
        # --- extensions
        self.batch_size = Histogram(
            "router_batch_size", "Records per processed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 5000), registry=r)
        self.transient_retries = Counter(
            "router_transient_retries", "Retries of a commit step after a transient failure",
            ["step"], registry=r)
        self.ready = Gauge("router_ready", "1 when /readyz answers 200", registry=r)
        # the Kafka consumer as the group sees it
        self.assigned_partitions = Gauge(
            "router_assigned_partitions", "Input partitions assigned to this worker", ["topic"],
            registry=r)
        self.rebalances = Counter(
            "router_rebalances", "Partition assignments this worker received", registry=r)
        self.commit_seconds = Histogram(
            "router_commit_seconds", "Offset commit round trips", buckets=LATENCY_BUCKETS,
            registry=r)
        self.state_skipped = Counter(
            "router_state_records_skipped",
            "source-health, outcomes and router.control records skipped as unusable",
            ["topic", "reason"], registry=r)
        self.poison_skips = Counter(
            "router_poison_skips", "Records dead-lettered unseen by the crash-loop guard",
            ["topic"], registry=r)
        self.policy_info = Gauge(
            "router_policy_info", "1 for the active policy version", ["version"], registry=r)
        self.breaker_transitions = Counter(
            "router_breaker_transitions", "Breaker transitions seen", ["destination", "to_state"],
            registry=r)
        self.rollout_shadow = Counter(
            "router_rollout_shadow", "Shadow evaluations of a rollout candidate",
            ["candidate", "agree"], registry=r)
        self.control_commands = Counter(
            "router_control_commands", "Operator commands from router.control applied live",
            ["command", "result"], registry=r)
        self.rollout_rollbacks = Counter(
            "router_rollout_rollbacks", "Rollout candidates rolled back automatically",
            ["candidate"], registry=r)

    def watch_state(self, source: StateSource) -> None:
        """Read trust scores and breaker states from ``source`` at every scrape."""
        self._state.source = source

    def set_state(self, trust: Mapping[str, float], breakers: Mapping[str, str]) -> None:
        """Show fixed values (tests, benchmarks): the same as watching a source that never
        changes."""
        fixed = (dict(trust), dict(breakers))
        self.watch_state(lambda: fixed)

    def take_state(self) -> None:
        """Copy the state the next exposition shows (on the thread that owns the engine)."""
        if self._state.source is not None:
            self._state.taken = self._state.source()

    def set_policy(self, version: str) -> None:
        self.policy_info.clear()
        self.policy_info.labels(version).set(1)

    def exposition(self) -> bytes:
        self.take_state()
        return self._render()

    def _render(self) -> bytes:
        return bytes(generate_latest(self.registry)) + self._state.render()

    async def exposition_off_loop(self) -> bytes:
        """/metrics: the state is taken on the event loop (the engine is not thread-safe), the
        text — ~10 MB and seconds of CPU with 110k ids — is rendered in a thread, so a scrape
        does not stall the hot path. prometheus_client's own metrics are thread-safe."""
        self.take_state()
        return await asyncio.to_thread(self._render)
