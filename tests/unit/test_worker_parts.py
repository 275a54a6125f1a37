"""Worker pieces that need no broker: backoff, row shapes, retry parking, logs, metric names."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_stream.adapters.postgres.connections import unavailable_as_router_error
from router_stream.config import Settings
from router_stream.core.wire import H_RETRY_NOT_BEFORE
from router_stream.errors import DatabaseUnavailable, RouterError
from router_stream.worker.backoff import Backoff, retry_transient
from router_stream.worker.hotpath import SignalLoop
from router_stream.worker.logs import JsonFormatter, WarningWithoutTraceback, trace_id_of
from router_stream.worker.metrics import WorkerMetrics
from router_stream.worker.rdkafka import IDLE_WAIT_S, Partition

NO_WAIT = Backoff(base_s=0.0, cap_s=0.0, attempt_timeout_s=1.0)


async def test_transient_errors_are_retried_until_success() -> None:
    calls: list[int] = []

    async def op() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise DatabaseUnavailable("down")
        return "ok"

    retried: list[str] = []
    assert await retry_transient("persist", op, backoff=NO_WAIT, give_up=lambda: False,
                                 on_retry=retried.append) == "ok"
    assert retried == ["persist", "persist"]


async def test_retries_are_logged_on_the_callers_logger(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    calls: list[int] = []

    async def op() -> None:
        calls.append(1)
        if len(calls) < 2:
            raise DatabaseUnavailable("down")

    with caplog.at_level(logging.WARNING):
        await retry_transient("persist", op, backoff=NO_WAIT, give_up=lambda: False,
                              logger=logging.getLogger("router_stream.projection"))
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("router_stream.projection", "transient failure, retrying")]


async def test_non_transient_errors_propagate_at_once() -> None:
    async def op() -> None:
        raise RouterError("bug")

    with pytest.raises(RouterError, match="bug"):
        await retry_transient("persist", op, backoff=NO_WAIT, give_up=lambda: False)


async def test_giving_up_raises_the_last_transient_error() -> None:
    async def op() -> None:
        raise DatabaseUnavailable("still down")

    with pytest.raises(DatabaseUnavailable, match="still down"):
        await retry_transient("persist", op, backoff=NO_WAIT, give_up=lambda: True)


async def test_a_hanging_step_times_out_as_a_transient_error() -> None:
    async def op() -> None:
        await asyncio.sleep(10)

    from router_stream.errors import OperationTimeout

    with pytest.raises(OperationTimeout):
        await retry_transient("produce", op, backoff=Backoff(attempt_timeout_s=0.01),
                              give_up=lambda: True)


def test_backoff_is_capped_and_jittered() -> None:
    b = Backoff(base_s=0.1, cap_s=5.0)
    rng = random.Random(1)
    delays = [b.delay(n, rng) for n in range(20)]
    assert all(0 <= d <= 5.0 for d in delays)
    assert len(set(delays)) == len(delays)


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: int = -1


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[Partition, int]] = []
        self.paused: set[Partition] = set()

    def seek(self, tp: Partition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def pause(self, tps: Iterable[Partition]) -> None:
        self.paused.update(tps)

    def resume(self, tps: Iterable[Partition]) -> None:
        self.paused.difference_update(tps)


def test_retry_records_wait_for_not_before_and_park_their_partition() -> None:
    s = Settings(topic_prefix="x.")
    loop = SignalLoop(s, engine=None, metrics=WorkerMetrics(),  # type: ignore[arg-type]
                      backoff=NO_WAIT, give_up=lambda: False)
    consumer = FakeConsumer()
    loop.consumer = consumer  # type: ignore[assignment]
    rty = Partition("x.router.retry", 0)
    due = [(H_RETRY_NOT_BEFORE, b"99.0")]
    later = [(H_RETRY_NOT_BEFORE, b"200.0")]
    fetched = [Rec("x.signals", 0, 1), Rec("x.router.retry", 0, 5, due),
               Rec("x.router.retry", 0, 6, later), Rec("x.signals", 0, 2),
               Rec("x.router.retry", 0, 7, due)]
    records = loop._due_records(fetched, now=100.0)
    assert [(r.topic, r.offset) for r in records] == [
        ("x.signals", 1), ("x.router.retry", 5), ("x.signals", 2)]
    assert consumer.seeks == [(rty, 6)] and consumer.paused == {rty}
    assert loop.retry_paused == {rty: 200.0}
    assert 0 < loop._wait_s() <= IDLE_WAIT_S


def test_json_log_lines_carry_context() -> None:
    record = logging.LogRecord("router_stream.worker", logging.INFO, __file__, 1, "signal to DLQ",
                               (), None)
    record.signal_id = "s-1"
    record.trace_id = "abc"
    line = orjson.loads(JsonFormatter().format(record))
    assert line["msg"] == "signal to DLQ" and line["signal_id"] == "s-1"
    assert line["trace_id"] == "abc" and line["level"] == "info"


def _logged(level: int) -> logging.LogRecord:
    try:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    except OSError:
        return logging.LogRecord("asyncpg.pool", level, __file__, 1,
                                 "Failed to restore the pool connection floor; retrying", (),
                                 sys.exc_info())


def test_a_library_s_retried_failure_is_one_line_without_traceback() -> None:
    record = _logged(logging.WARNING)
    assert WarningWithoutTraceback().filter(record)
    line = orjson.loads(JsonFormatter().format(record))
    assert "exc" not in line
    assert line["error"] == "[Errno 111] Connect call failed ('127.0.0.1', 5432)"
    error = _logged(logging.ERROR)
    assert WarningWithoutTraceback().filter(error)
    assert "Traceback" in orjson.loads(JsonFormatter().format(error))["exc"]


def test_trace_id_from_traceparent_or_x_trace_id() -> None:
    tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert trace_id_of([("traceparent", tp)]) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_of([("x-trace-id", b"t-1")]) == "t-1"
    assert trace_id_of([]) is None


def test_per_id_series_are_bounded_and_counted_in_full() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    trust = {f"src-{i}": i / 1000 for i in range(1000)}
    breakers = {f"dst-{i}": "closed" for i in range(500)}
    breakers.update({"dst-7": "open", "dst-8": "half_open", "dst-9": "open"})
    m = WorkerMetrics(per_id_limit=2)
    m.set_state(trust, breakers)
    families = {f.name: {tuple(s.labels.values()): s.value for s in f.samples}
                for f in text_string_to_metric_families(m.exposition().decode())}
    assert families["trust_score"] == {("src-0",): 0.0, ("src-1",): 0.001}
    assert families["breaker_state"] == {("dst-7",): 2.0, ("dst-9",): 2.0}
    assert families["router_breakers"] == {("closed",): 497, ("half_open",): 1, ("open",): 2}
    assert families["router_trust_sources"] == {(): 1000}
    assert "process_resident_memory_bytes" in families and "python_info" in families

    everything = WorkerMetrics()
    everything.set_state(trust, breakers)
    text = everything.exposition().decode()
    assert text.count("\ntrust_score{") == 1000 and text.count("\nbreaker_state{") == 500


def test_metrics_use_the_spec_names() -> None:
    m = WorkerMetrics()
    m.signals_received.labels("alert").inc()
    m.latency.labels("alert").observe(0.002)
    m.routing_errors.labels("pager").inc()
    m.dlq.labels("expired").inc()
    m.retry_attempts.inc()
    m.set_state({"src": 0.7}, {"pager": "open", "slack": "half_open"})
    m.confidence.observe(0.5)
    m.consumer_lag.labels("signals", "0").set(4)
    body = m.exposition().decode()
    for name in ('signals_received_total{kind="alert"} 1.0',
                 'router_latency_seconds_bucket{kind="alert",le="0.0025"} 1.0',
                 'routing_errors_total{destination="pager"} 1.0', 'dlq_total{reason="expired"}',
                 "retry_attempts_total 1.0", 'trust_score{source="src"} 0.7',
                 'breaker_state{destination="pager"} 2.0',
                 'breaker_state{destination="slack"} 1.0', "decision_confidence_count 1.0",
                 'router_consumer_lag{partition="0",topic="signals"} 4.0'):
        assert name in body, name


def test_batch_histograms_count_like_one_observation_at_a_time() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from router_stream.worker.metrics import BatchHistogram

    bounds = (0.001, 0.01, 0.1)
    values = [0.0005, 0.001, 0.001, 0.002, 0.01, 0.05, 0.1, 0.2, 3.0]
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Histogram("h", "h", ["kind"], buckets=bounds, registry=theirs_registry)
    ours = BatchHistogram("h", "h", ("kind",), buckets=bounds, registry=ours_registry)
    for v in values:
        theirs.labels("a").observe(v)
    ours.labels("a").observe_each(values[:4])
    ours.labels("a").observe(values[4])
    for v in values[5:]:
        ours.labels("a").observe(v, 1)
    theirs.labels("b").observe(0.05)
    theirs.labels("b").observe(0.05)
    ours.labels("b").observe(0.05, 2)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
        return {(s.name, s.labels.get("kind", ""), s.labels.get("le", "")): s.value
                for family in registry.collect() for s in family.samples
                if not s.name.endswith("_created")}

    assert samples(ours_registry) == pytest.approx(samples(theirs_registry))
    nan = BatchHistogram("n", "n", buckets=bounds, registry=CollectorRegistry())
    nan.observe_each([float("nan")])
    assert nan.labels().counts == [0, 0, 0, 1]  # no bound is >= NaN: only +Inf counts it
    with pytest.raises(ValueError, match="takes labels"):
        ours.labels()


# --- stop(): background tasks end even when a cancellation is lost -------------------------------


async def test_cancel_all_cancels_again_a_task_that_swallowed_its_cancellation():
    from router_stream.worker.service import _cancel_all

    swallowed = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)  # what Python 3.11's wait_for can do once

    async def obedient() -> None:
        await asyncio.sleep(60)

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(obedient())]
    await asyncio.sleep(0)
    await asyncio.wait_for(_cancel_all(tasks, timeout_s=3), 5)
    assert swallowed == [True] and all(t.done() for t in tasks)


async def test_cancel_all_gives_up_on_a_task_that_never_ends_and_says_which(caplog):
    from router_stream.worker.service import _cancel_all

    release = asyncio.Event()

    async def immortal() -> None:  # ignores every cancellation until the test releases it
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)

    task = asyncio.create_task(immortal(), name="router-worker-immortal")
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    with caplog.at_level(logging.ERROR, logger="router_stream.worker"):
        await _cancel_all([task], timeout_s=0.6)
    assert asyncio.get_running_loop().time() - started < 2
    [record] = [r for r in caplog.records if r.name == "router_stream.worker"]
    assert record.__dict__["tasks"] == ["router-worker-immortal"]
    release.set()
    await task


# --- /metrics: the per-id gauges rendered by hand match prometheus_client ------------------------


@settings(max_examples=60, deadline=None)
@given(trust=st.dictionaries(st.text(min_size=1, max_size=12), st.floats(0, 1), max_size=8),
       breakers=st.dictionaries(st.text(min_size=1, max_size=12),
                                st.sampled_from(["closed", "half_open", "open"]), max_size=8))
def test_state_gauges_render_exactly_as_prometheus_client_would(trust, breakers):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.parser import text_string_to_metric_families

    from router_stream.worker.metrics import BREAKER_STATE_VALUE, WorkerMetrics

    m = WorkerMetrics()
    m.set_state(trust, breakers)
    ours = m.exposition().decode()
    ours = ours[ours.index("# HELP trust_score"):]

    class Reference:
        def collect(self):
            t = GaugeMetricFamily("trust_score", "Current trust score", labels=["source"])
            for k, v in trust.items():
                t.add_metric([k], v)
            yield t
            b = GaugeMetricFamily("breaker_state", "0 closed, 1 half_open, 2 open",
                                  labels=["destination"])
            for k, v in breakers.items():
                b.add_metric([k], BREAKER_STATE_VALUE[v])
            yield b

    reg = CollectorRegistry()
    reg.register(Reference())
    assert ours == generate_latest(reg).decode()
    parsed = {f.name: {s.labels.popitem()[1]: s.value for s in f.samples}
              for f in text_string_to_metric_families(ours)}
    assert parsed.get("trust_score", {}) == trust
    assert parsed.get("breaker_state", {}) == {k: BREAKER_STATE_VALUE[v]
                                               for k, v in breakers.items()}


def test_a_connection_broken_mid_write_says_so() -> None:
    with (pytest.raises(DatabaseUnavailable) as raised,
          unavailable_as_router_error("writing a projection batch to Postgres")):
        raise asyncpg.exceptions.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress")
    assert str(raised.value) == (
        "writing a projection batch to Postgres: the connection broke mid-operation (cannot"
        " switch to state 15; another operation (2) is in progress)")
