"""The simulated world does what its faults and schedules say (router_stream/sim/world.py)."""

from __future__ import annotations

import random

import pytest

from router_stream.sim.world import Destination, Fault, Schedule, Source, Truth


def _read(source: Source, t: float, truth: float = 100.0) -> float | None:
    return source.read(t, truth, random.Random(int(t * 1000))).value


def test_an_honest_source_reads_the_truth_with_noise() -> None:
    source = Source("s", noise=0.5)
    values = [_read(source, t / 10) for t in range(2000)]
    assert all(v is not None for v in values)
    mean = sum(v for v in values if v is not None) / len(values)
    assert mean == pytest.approx(100.0, abs=0.1)


def test_each_fault_kind_shapes_the_readings_only_inside_its_window() -> None:
    assert _read(Source("s", noise=0.0, faults=(Fault("bias", 10, 20, 5.0),)), 15) == 105.0
    assert _read(Source("s", noise=0.0, faults=(Fault("bias", 10, 20, 5.0),)), 25) == 100.0
    assert _read(Source("s", faults=(Fault("stale", 10, 20),)), 15) is None
    drift = Source("s", noise=0.0, faults=(Fault("drift", 10, 20, 0.5),))
    assert _read(drift, 14) == pytest.approx(102.0)
    stuck = Source("s", noise=0.0, faults=(Fault("stuck", 10, 20, 1.0),))
    assert _read(stuck, 11, truth=50.0) == 51.0
    assert _read(stuck, 19, truth=80.0) == 51.0  # frozen at the value of the fault's start
    flapping = Source("s", faults=(Fault("flapping", 10, 40, 5.0),))
    assert _read(flapping, 12) is None and not flapping.up(12)
    assert _read(flapping, 17) is not None and flapping.up(17)


def test_spikes_and_heavy_noise_widen_the_error() -> None:
    def spread(kind: str) -> float:
        source = Source("s", noise=0.5, faults=(Fault(kind, 0, 1000, 10.0),))
        return max(abs((_read(source, t) or 100.0) - 100.0) for t in range(200))
    assert spread("spikes") > 20 and spread("noise") > 5


def test_schedules() -> None:
    dies = Schedule("dies", p=0.9, start=10, end=20)
    assert (dies.success(5), dies.success(15), dies.success(25)) == (0.9, 0.0, 0.9)
    degrades = Schedule("degrades", p=1.0, p_end=0.5, start=0, end=100)
    assert degrades.success(50) == pytest.approx(0.75) and degrades.success(200) == 0.5
    flaps = Schedule("flaps", p=0.9, start=0, end=40, period_s=10)
    assert [flaps.success(t) for t in (5, 15, 25, 35, 45)] == [0.0, 0.9, 0.0, 0.9, 0.9]
    switch = Schedule("switch", p=0.9, p_end=0.5, start=10)
    assert (switch.success(9), switch.success(10)) == (0.9, 0.5)


def test_a_dead_destination_never_delivers() -> None:
    dest = Destination("d", Schedule("dies", p=1.0, start=0, end=10))
    rng = random.Random(1)
    assert not any(dest.deliver(5, rng)[0] for _ in range(100)) and dest.dead(5)
    assert all(dest.deliver(15, rng)[0] for _ in range(100))


def test_the_truth_path_is_a_function_of_its_seed() -> None:
    a = Truth().path(60, random.Random(5))
    assert a == Truth().path(60, random.Random(5))
    assert a != Truth().path(60, random.Random(6))
    assert a.at(0) == 100.0 and a.at(1e9) == a.values[-1]
