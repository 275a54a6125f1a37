"""Run a :class:`ConsensusScenario`: the engine's consensus against the truth and the baselines.

Every observation a source sends is one ``signals`` record; its decision carries the consensus
value at that instant, compared with the true value then. The baselines see the same
observations (each source's newest one within ``max_staleness_s``) at the same instants:

* ``naive_mean`` — the mean of every source's newest value;
* ``primary`` — the first source's newest value, whatever its age;
* ``median`` — the plain median, no outlier test and no trust;
* ``oracle`` — the single source with the lowest error over the whole run (hindsight);
* ``honest_mean`` — the mean of the sources not faulty at that instant: it knows the fault
  schedule, so it is the floor that noise and reporting lag leave to any estimator.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from router_stream.core.outputs import BatchResult
from router_stream.sim.loop import EPOCH, CoreLoop, wire_ts
from router_stream.sim.scenarios import ConsensusScenario
from router_stream.sim.stats import mean, quantile, ratio, rounded
from router_stream.sim.world import Source

METRIC = "sim.metric"


@dataclass(slots=True)
class _Series:
    """Errors of one estimator at every decision instant (``nan``: it had no value then)."""

    errors: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        present = [e for e in self.errors if not math.isnan(e)]
        return {"mae": mean(present), "p99": quantile(present, 0.99)}


def run_consensus(scenario: ConsensusScenario, seed: int) -> dict[str, Any]:
    """Figures of one run (JSON-ready) plus the series the plots draw (under ``"series"``)."""
    rng = random.Random(seed)
    truth = scenario.truth.path(scenario.duration_s, random.Random(rng.random()))
    sources = [Source(s.source_id, s.noise, s.interval_s, s.faults) for s in scenario.sources]
    reading_rng = random.Random(rng.random())
    decided: list[tuple[float, BatchResult]] = []
    loop = CoreLoop(scenario.policy, seed, lambda t, result: decided.append((t, result)))
    staleness = float(scenario.consensus.get("max_staleness_s", 30.0))

    latest: dict[str, tuple[float, float]] = {}  # source -> (value, t) of its newest observation
    names = [s.source_id for s in sources]
    series = {n: _Series() for n in ("consensus", "naive_mean", "primary", "median",
                                     "honest_mean", *names)}
    times: list[float] = []
    methods: list[str] = []
    dlq = 0
    trust: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    next_trust = 0.0

    for t, kind, index in _events(scenario, sources, rng):
        source = sources[index]
        if kind == "health":
            loop.health(t, source_id=source.source_id, ok=source.up(t), latency_ms=20.0,
                        last_data_ts=wire_ts(source.last_data_t or 0.0))
            continue
        reading = source.read(t, truth.at(t), reading_rng)
        if reading.value is None:
            continue
        latest[source.source_id] = (reading.value, t)
        loop.signal(t, {"signal_id": f"obs-{len(times)}", "sender_id": source.source_id,
                        "metric": METRIC, "source_id": source.source_id, "value": reading.value})
        _, result = decided.pop()
        true = truth.at(t)
        times.append(t)
        if result.decisions:
            d = result.decisions[0]
            series["consensus"].errors.append(abs((d.value or 0.0) - true))
            methods.append(d.method or "")
        else:
            dlq += 1
            series["consensus"].errors.append(math.nan)
            methods.append("dlq")
        fresh = [v for v, at in latest.values() if at >= t - staleness]
        series["naive_mean"].errors.append(abs(mean(fresh) - true) if fresh else math.nan)
        series["median"].errors.append(abs(_median(fresh) - true) if fresh else math.nan)
        honest = [v for s, (v, at) in zip(sources, [latest.get(n, (math.nan, -math.inf))
                                                    for n in names], strict=True)
                  if at >= t - staleness and s.fault_at(at) is None and s.fault_at(t) is None]
        series["honest_mean"].errors.append(abs(mean(honest) - true) if honest else math.nan)
        first = latest.get(names[0])
        series["primary"].errors.append(abs(first[0] - true) if first else math.nan)
        for n in names:
            seen = latest.get(n)
            series[n].errors.append(abs(seen[0] - true) if seen else math.nan)
        if t >= next_trust:
            scores = loop.engine.snapshot(EPOCH + t).trust
            for n in names:
                trust[n].append((t, scores.get(n, math.nan)))
            next_trust += scenario.trust_sample_s
    return _figures(scenario, series, names, methods, times, dlq, trust)


def _events(scenario: ConsensusScenario, sources: list[Source], rng: random.Random
            ) -> list[tuple[float, str, int]]:
    """Observation and health instants of every source, in time order; each source starts at
    a random phase so that no two report in lockstep."""
    events: list[tuple[float, str, int]] = []
    for i, s in enumerate(sources):
        t = rng.uniform(0.0, s.interval_s)
        while t < scenario.duration_s:
            events.append((t, "obs", i))
            t += s.interval_s * rng.uniform(0.8, 1.2)
        h = rng.uniform(0.0, scenario.health_interval_s)
        while h < scenario.duration_s:
            events.append((h, "health", i))
            h += scenario.health_interval_s
    return sorted(events)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2.0


def _figures(scenario: ConsensusScenario, series: dict[str, _Series], names: list[str],
             methods: list[str], times: list[float], dlq: int,
             trust: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    per_source = {n: series[n].summary() for n in names}
    oracle_name = min(names, key=lambda n: per_source[n]["mae"])
    estimators = {k: series[k].summary()
                  for k in ("consensus", "naive_mean", "primary", "median", "honest_mean")}
    estimators["oracle"] = per_source[oracle_name]
    cons = estimators["consensus"]
    synthetic = [e for e, m in zip(series["consensus"].errors, methods, strict=True)
                 if m == "synthetic"]
    decisions = len(methods)
    faults = [{"source": s.source_id, "kind": f.kind, "start": f.start, "end": f.end}
              for s in scenario.sources for f in s.faults]
    return {
        "scenario": scenario.name, "title": scenario.title, "kind": "consensus",
        "decisions": decisions,
        "estimators": {k: {m: rounded(v) for m, v in fig.items()} for k, fig in estimators.items()},
        "oracle_source": oracle_name,
        "mae_ratio_to_oracle": rounded(ratio(cons["mae"], estimators["oracle"]["mae"])),
        "mae_ratio_to_naive_mean": rounded(ratio(cons["mae"], estimators["naive_mean"]["mae"])),
        "p99_ratio_to_oracle": rounded(ratio(cons["p99"], estimators["oracle"]["p99"])),
        "methods": {m: methods.count(m) for m in sorted(set(methods))},
        "synthetic_rate": rounded(len(synthetic) / decisions if decisions else math.nan),
        "synthetic_mae": rounded(mean(synthetic)),
        "dlq_rate": rounded(dlq / decisions if decisions else math.nan),
        "trust_final": {n: rounded(trust[n][-1][1]) if trust[n] else None for n in names},
        "trust_trajectory": {n: [[t, rounded(v)] for t, v in trust[n]
                                 if int(t) // 60 != int(t - scenario.trust_sample_s) // 60]
                             for n in names},
        "faults": faults,
        "series": {"t": times, "consensus_error": series["consensus"].errors,
                   "naive_error": series["naive_mean"].errors,
                   "honest_error": series["honest_mean"].errors, "trust": trust},
    }
