"""The benchmark workload: deterministic, ~200 bytes, the documented mix, and routed by the
bench policy exactly as the harness's lag accounting assumes (one output record per signal)."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.workload import CYCLE, Workload, WorkloadSpec, sched_us_of  # noqa: E402

NOW_US = 1_800_000_000_000_000


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a, b, c = Workload(), Workload(), Workload(WorkloadSpec(seed=7))
    first = [a.signal(i, NOW_US) for i in range(500)]
    assert first == [b.signal(i, NOW_US) for i in range(500)]
    assert first != [c.signal(i, NOW_US) for i in range(500)]
    assert [a.health(j, 1) for j in range(50)] == [b.health(j, 1) for j in range(50)]


def test_signals_are_about_200_bytes() -> None:
    wl = Workload()
    sizes = [len(wl.signal(i, NOW_US, b"b1a2b3r")[1]) for i in range(CYCLE)]
    assert 190 <= sum(sizes) / len(sizes) <= 215
    valid = [n for i, n in enumerate(sizes) if wl.body(i).kind != "invalid"]
    assert min(valid) >= 150 and max(valid) <= 260


def test_mix_and_invalid_share() -> None:
    kinds = Counter(b.kind for b in Workload().bodies)
    assert kinds["invalid"] / CYCLE == pytest.approx(0.01, abs=0.004)
    assert kinds["alert"] / CYCLE == pytest.approx(0.20, abs=0.02)
    assert kinds["notification"] / CYCLE == pytest.approx(0.50, abs=0.02)
    assert kinds["observation"] / CYCLE == pytest.approx(0.29, abs=0.02)


def test_stamp_round_trips_and_survives_route_splicing() -> None:
    key, value = Workload().signal(3, NOW_US + 123)
    assert sched_us_of(value) == NOW_US + 123
    spliced = value[:-1] + b',"route":{"destination":"dest-000"}}'
    assert sched_us_of(spliced) == NOW_US + 123
    assert sched_us_of(b'{"signal_id":"x"}') is None
    assert sched_us_of(None) is None


def test_health_events_cover_all_sources_at_one_percent() -> None:
    wl = Workload()
    assert {orjson.loads(wl.health(j, 1)[1])["source_id"] for j in range(1000)} == {
        f"src-{n:03d}" for n in range(1000)}
    assert sum(wl.is_health_turn(i) for i in range(10_000)) == 100


@dataclass
class _Rec:
    value: bytes
    offset: int
    key: bytes | None = None
    topic: str = "signals"
    partition: int = 0
    timestamp: int = NOW_US // 1000
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def test_bench_policy_routes_each_signal_once_as_its_kind() -> None:
    from router_stream.core.compiled import load_compiled
    from router_stream.core.engine import RouterEngine

    policy_file = Path(__file__).resolve().parents[2] / "bench" / "bench_policy.yaml"
    policy = load_compiled(policy_file.read_text())
    assert len(policy.destinations) == 100
    wl = Workload()
    n = 4_000
    records = [_Rec(wl.signal(i, NOW_US)[1], i, wl.signal(i, NOW_US)[0]) for i in range(n)]
    result = RouterEngine(policy, seed=1).decide_batch(records, NOW_US / 1e6)
    # the harness counts exactly one routed or DLQ record per signal (lag = sent - received)
    assert len(result.routed) + len(result.dlq) == n
    expected = Counter(wl.body(i).kind for i in range(n))
    decided = Counter(d.kind for d in result.decisions)
    assert decided["alert"] == expected["alert"]
    assert decided["notification"] == expected["notification"]
    reasons = Counter(q.entry.reason.value for q in result.dlq)
    assert reasons["invalid_json"] + reasons["invalid_signal"] == expected["invalid"]
    assert {d.strategy for d in result.decisions} == {"first_healthy", "thompson", "consensus"}
