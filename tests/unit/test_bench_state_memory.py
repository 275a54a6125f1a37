"""bench/state_memory.py's own logic, without a broker: the events it publishes are what the
worker accepts and put one entry per id into the engine's state, its policy is valid, and the
accounting that makes the run fail when the worker's state is incomplete counts right."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.state_memory import (  # noqa: E402
    BREAKER_BUCKETS,
    Spec,
    _parse,
    check_loaded,
    count_signals,
    count_state,
    health_events,
    outcome_events,
    policy_yaml,
    profile_in_process,
    spec_from_args,
    warm_signals,
)
from router_stream.config import Settings  # noqa: E402
from router_stream.core.breaker import BreakerConfig  # noqa: E402
from router_stream.core.parsing import Rejection, parse_health, parse_outcome  # noqa: E402
from router_stream.worker.policy_source import build_engine, compile_policy_text  # noqa: E402

SMALL = Spec(sources=40, destinations=6, warm_signals=300)


@dataclass
class Rec:
    value: bytes
    key: bytes | None
    offset: int
    topic: str = "signals"
    partition: int = 0
    timestamp: int = field(default_factory=lambda: int(time.time() * 1000))
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def folded(spec: Spec):
    engine = build_engine(Settings(), compile_policy_text(policy_yaml(spec)))
    now_ms = int(time.time() * 1000)
    for _k, value, ts in health_events(spec, now_ms):
        event = parse_health(value, record_ts_ms=ts)
        assert not isinstance(event, Rejection), event
        engine.apply_health(event, ts / 1000)
    for _k, value, ts in outcome_events(spec, now_ms):
        outcome = parse_outcome(value, record_ts_ms=ts)
        assert not isinstance(outcome, Rejection), outcome
        engine.apply_outcome(outcome, ts / 1000)
    return engine


def test_the_policy_is_valid_and_declares_only_the_two_routed_destinations():
    compiled = compile_policy_text(policy_yaml(SMALL))
    assert set(compiled.destinations) == set(SMALL.routed)
    assert BreakerConfig().window_buckets == BREAKER_BUCKETS


def test_every_event_is_accepted_and_each_id_becomes_one_entry_of_the_state():
    engine = folded(SMALL)
    snap = engine.snapshot()
    assert sum(k.startswith("src-") for k in snap.trust) == SMALL.sources
    assert sum(k.startswith("dst-") for k in snap.trust) == SMALL.destinations
    assert len(snap.breakers) == SMALL.entries
    assert len(engine.state.arms) == len(engine.state.load) == SMALL.destinations


def test_events_per_entry_fill_one_breaker_bucket_each():
    spec = Spec(sources=10, destinations=2, events_per_entry=BREAKER_BUCKETS)
    engine = folded(spec)
    assert {len(b.window()) for b in engine.state.breakers.values()} == {BREAKER_BUCKETS}


def test_warm_signals_reach_every_strategy_of_the_policy():
    engine = folded(SMALL)
    records = [Rec(value, key, i) for i, (key, value) in enumerate(warm_signals(SMALL, "t"))]
    result = engine.decide_batch(records, time.time())
    strategies = {d.strategy for d in result.decisions}
    assert strategies == {"first_healthy", "thompson", "consensus"}
    # only the first observation of each of the 20 metrics has too few sources for consensus
    assert (len(result.decisions), len(result.dlq)) == (SMALL.warm_signals - 20, 20)


def test_the_metrics_accounting_and_the_state_check():
    text = (b'# HELP trust_score Current trust score\n'
            b'trust_score{source="src-000000"} 0.5\ntrust_score{source="src-000001"} 0.5\n'
            b'trust_score{source="dst-00000"} 0.7\nbreaker_state{destination="src-000000"} 0.0\n'
            b'breaker_state{destination="dst-00000"} 2.0\n'
            b'signals_received_total{kind="alert"} 12.0\ndlq_total{reason="expired"} 3.0\n')
    counts = count_state(text)
    assert counts == {"trust_score.src": 2, "trust_score.dst": 1, "breaker_state.src": 1,
                      "breaker_state.dst": 1}
    assert count_signals(text) == {"received": {"alert": 12}, "dlq": {"expired": 3}}
    spec = Spec(sources=10, destinations=2)
    assert check_loaded(spec, {"trust_score.src": 10, "trust_score.dst": 2,
                               "breaker_state.src": 10, "breaker_state.dst": 2},
                        {"src": 10, "dst": 2}, 12) == []
    problems = check_loaded(spec, counts, {"src": 10, "dst": 1}, 11)
    assert len(problems) == 6  # 4 series short, 1 snapshot kind short, the replay short


def test_arguments():
    spec = spec_from_args(_parse(["--sources", "500", "--destinations", "20",
                                  "--events-per-entry", "3", "--settle", "4"]))
    assert (spec.sources, spec.destinations, spec.events_per_entry, spec.settle_s) == (
        500, 20, 3, 4.0)
    assert spec_from_args(_parse([])) == Spec(sources=100_000, destinations=10_000)
    with pytest.raises(ValueError):
        Spec(events_per_entry=BREAKER_BUCKETS + 1)


def test_the_profile_counts_the_entries_it_folded():
    profile = profile_in_process(Spec(sources=30, destinations=5), top=3)
    assert profile["entries"] == {"trust": 35, "breakers": 35, "bandit_arms": 5, "load": 5}
    assert profile["engine_state"]["bytes"] > 0 and profile["prometheus_gauges"]["bytes"] > 0


def test_state_memory_takes_no_throughput_options():
    result = subprocess.run([sys.executable, "-m", "router_stream.cli", "bench", "--state-memory",
                             "--quick"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "--state-memory takes no" in result.stderr


def test_key_flood_keeps_buckets_capped_and_counts_every_id() -> None:
    from bench.key_flood import BATCH, run_case

    tenants = run_case("tenants", 3_000, max_buckets=1_000)
    assert tenants["decided"] == 3_000 and tenants["buckets"] == 1_000
    assert tenants["dedupe_entries"] == 0
    ids = run_case("ids", 3_000, max_buckets=1_000)
    assert ids["decided"] == 3_000 and ids["buckets"] == 1
    assert ids["dedupe_entries"] == 3_000 + BATCH  # the warm-up batch's ids too
