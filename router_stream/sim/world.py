"""The simulated world: ground truth, the sources that observe it, the destinations that deliver.

Everything is a pure function of event time and a ``random.Random`` the caller seeds, so a
scenario replays identically from its seed. Times are seconds since the start of the run.

* :class:`Truth` — a metric's true value: a Gaussian random walk with occasional jumps, sampled
  on a fixed grid so that every consumer sees the same path.
* :class:`Source` — observes the truth with Gaussian noise, except inside its :class:`Fault`
  windows, where it goes stale, freezes, adds a bias, gets noisy, flaps, spikes or drifts.
* :class:`Destination` — delivers with a success probability and latency that follow a
  :class:`Schedule` of event time (steady, dies and recovers, degrades slowly, flaps).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

FaultKind = Literal["stale", "stuck", "bias", "noise", "flapping", "spikes", "drift"]
FAULT_KINDS: tuple[FaultKind, ...] = ("stale", "stuck", "bias", "noise", "flapping", "spikes",
                                      "drift")


@dataclass(frozen=True, slots=True)
class Truth:
    """A random walk ``dx = sigma·dW`` plus jumps (``jump_rate`` per second, size
    ``N(0, jump_sigma)``), on a grid of ``step_s``."""

    start: float = 100.0
    sigma: float = 0.3
    jump_rate: float = 1 / 120
    jump_sigma: float = 8.0
    step_s: float = 0.1

    def path(self, duration_s: float, rng: random.Random) -> TruthPath:
        n = int(math.ceil(duration_s / self.step_s)) + 2
        values = [self.start]
        scale = self.sigma * math.sqrt(self.step_s)
        jump_p = self.jump_rate * self.step_s
        for _ in range(n - 1):
            x = values[-1] + rng.gauss(0.0, scale)
            if rng.random() < jump_p:
                x += rng.gauss(0.0, self.jump_sigma)
            values.append(x)
        return TruthPath(self.step_s, values)


@dataclass(frozen=True, slots=True)
class TruthPath:
    step_s: float
    values: list[float]

    def at(self, t: float) -> float:
        i = min(len(self.values) - 1, max(0, int(t / self.step_s)))
        return self.values[i]


@dataclass(frozen=True, slots=True)
class Fault:
    """``kind`` between ``start`` and ``end`` (seconds). ``size``: the bias (stuck/bias), the
    noise multiplier (noise), the spike height in noise sigmas × 10 (spikes), the drift per
    second (drift), the half-period in seconds (flapping)."""

    kind: FaultKind
    start: float
    end: float
    size: float = 1.0

    def active(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True, slots=True)
class Reading:
    """What a source does at one instant: a value (or ``None``: nothing sent), and whether its
    health check says it is up."""

    value: float | None
    up: bool


@dataclass(slots=True)
class Source:
    """One observer of a metric. ``interval_s`` between observations, ``noise`` its honest
    error's standard deviation."""

    source_id: str
    noise: float = 0.5
    interval_s: float = 1.0
    faults: tuple[Fault, ...] = ()
    _frozen: float | None = field(default=None, repr=False)
    last_data_t: float | None = field(default=None, repr=False)

    def fault_at(self, t: float) -> Fault | None:
        for f in self.faults:
            if f.active(t):
                return f
        return None

    def up(self, t: float) -> bool:
        """What its health check says: down only in the off half of a flapping fault."""
        fault = self.fault_at(t)
        return fault is None or fault.kind != "flapping" or not self._flapped_off(fault, t)

    @staticmethod
    def _flapped_off(fault: Fault, t: float) -> bool:
        return int((t - fault.start) / fault.size) % 2 == 0

    def read(self, t: float, truth: float, rng: random.Random) -> Reading:
        # One draw per reading whatever the fault, so a fault never shifts the rest of the run.
        noise = rng.gauss(0.0, self.noise)
        coin = rng.random()
        fault = self.fault_at(t)
        if fault is None or fault.kind != "stuck":
            self._frozen = None
        if fault is None:
            return self._sent(t, truth + noise)
        kind = fault.kind
        if kind == "stale":
            return Reading(None, True)  # the process is up; the feed behind it stopped
        if kind == "flapping":
            if self._flapped_off(fault, t):
                return Reading(None, False)
            return self._sent(t, truth + noise)
        if kind == "stuck":
            if self._frozen is None:
                self._frozen = truth + noise + fault.size
            return self._sent(t, self._frozen)
        if kind == "bias":
            return self._sent(t, truth + noise + fault.size)
        if kind == "noise":
            return self._sent(t, truth + noise * fault.size)
        if kind == "spikes":
            spike = fault.size * 10 * self.noise if coin < 0.2 else 0.0
            return self._sent(t, truth + noise + (spike if coin < 0.1 else -spike))
        return self._sent(t, truth + noise + fault.size * (t - fault.start))  # drift

    def _sent(self, t: float, value: float) -> Reading:
        self.last_data_t = t
        return Reading(value, True)


@dataclass(frozen=True, slots=True)
class Schedule:
    """Success probability of a destination over event time.

    ``steady``: ``p`` always. ``dies``: 0 in ``[start, end)``. ``degrades``: ``p`` falling
    linearly to ``p_end`` between ``start`` and ``end``, then staying there. ``flaps``: 0 in
    every other ``period_s`` window between ``start`` and ``end``. ``switch``: ``p`` before
    ``start``, ``p_end`` from then on.
    """

    shape: Literal["steady", "dies", "degrades", "flaps", "switch"] = "steady"
    p: float = 0.99
    p_end: float = 0.0
    start: float = math.inf
    end: float = math.inf
    period_s: float = 10.0

    def success(self, t: float) -> float:
        if self.shape == "steady" or t < self.start:
            return self.p
        if self.shape == "switch":
            return self.p_end
        if self.shape == "dies":
            return 0.0 if t < self.end else self.p
        if self.shape == "degrades":
            if t >= self.end:
                return self.p_end
            return self.p + (self.p_end - self.p) * (t - self.start) / (self.end - self.start)
        if t >= self.end:  # flaps
            return self.p
        return 0.0 if int((t - self.start) / self.period_s) % 2 == 0 else self.p


@dataclass(frozen=True, slots=True)
class Destination:
    name: str
    schedule: Schedule = Schedule()
    latency_ms: float = 50.0

    def success(self, t: float) -> float:
        return self.schedule.success(t)

    def deliver(self, t: float, rng: random.Random) -> tuple[bool, float]:
        """One delivery at ``t``: whether it succeeded and its latency (ms; a failure to a dead
        destination is a timeout, 5× the usual latency)."""
        p = self.success(t)
        ok = rng.random() < p
        jitter = rng.expovariate(1.0)
        latency = self.latency_ms * (0.5 + jitter) * (1.0 if ok or p > 0.0 else 5.0)
        return ok, latency

    def dead(self, t: float) -> bool:
        return self.success(t) == 0.0
