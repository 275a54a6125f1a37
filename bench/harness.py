"""One benchmark run: every contender on the same broker, the same workload, fresh topics with the
same partition counts, measured one after the other (never two at once: 2 cores are not enough to
share) by the same generator and measuring consumer (bench/drivers.py).

Per I/O contender (bench/contenders.py)::

    prepare     fresh topics (and, for router_pg, a fresh Postgres database, migrated)
    start       the contender's subprocess; the generator and the measurer (spawned processes)
    warm-up     200 signals/s until its output flows (startup, group join, state replay)
    drain probe a burst sent as fast as possible: how fast the backlog drains (search start;
                it also warms the contender up before any latency is measured)
    latency@1k  open loop at 1,000 signals/s for one latency window
    search      open-loop steps (stats.RateSearch); a step passes when the lag stays bounded
                (stats.lag_bounded) and the generator really offered the rate
    confirm     (full run) the found rate held for ``confirm_window_s`` (30 s, the issue's
                window); on failure 10 % lower, up to three times (down to 70 %)
    latency     at 50 % and 90 % of the sustainable rate; for router_pg also when each
                window's decision rows became visible in Postgres (bench/row_visibility.py)
    stop        SIGTERM (drain), peak RSS; topics (and database) deleted

After the contenders, the projection drain (bench/projection_drain.py): a backlog of decision
and DLQ records written to Postgres by one ``router-stream persist``.

Between phases the generator pauses and the harness waits until the output caught up, so a phase
never inherits the previous one's backlog. Everything is bounded: each phase checks the run's
deadline, and the CLI wraps the run in a global timeout plus a watchdog that kills every child.
The core alone is bench/core_bench.py in a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from bench import machine, stats
from bench.contenders import BENCH_DIR, PARTITIONS, Contender, RouterStream, io_contenders
from bench.drivers import Shared, run_generator, run_measurer, spawn_context
from bench.report import cores_text
from bench.row_visibility import RowVisibility
from bench.workload import WorkloadSpec


@dataclass(frozen=True)
class Profile:
    name: str
    budget_s: float            # the whole run, cleanup included
    warmup_timeout_s: float
    latency_window_s: float
    step_window_s: float
    confirm_window_s: float    # 0: no confirmation step
    search_steps: int
    burst: int                 # signals in the drain probe
    core_signals: int
    core_repeat: int           # core_bench runs per strategy (the best counts)
    drain_timeout_s: float
    stop_timeout_s: float
    projection_records: int    # backlog of the projection drain (bench/projection_drain.py)
    projection_budget_s: float  # kept from the contenders' share for that drain


FULL_ONLY = frozenset({"router_eos"})
"""Contenders a quick run leaves out unless named with ``--only``: its 110 s are shared by the
contenders, and another worker's share is taken from the rows the ratios need."""
QUICK = Profile("quick", budget_s=110, warmup_timeout_s=25, latency_window_s=1.5,
                step_window_s=2.0, confirm_window_s=0, search_steps=2, burst=6_000,
                core_signals=20_000, core_repeat=1, drain_timeout_s=3, stop_timeout_s=8,
                projection_records=20_000, projection_budget_s=25)
FULL = Profile("full", budget_s=1020, warmup_timeout_s=60, latency_window_s=8.0,
               step_window_s=6.0, confirm_window_s=30.0, search_steps=5, burst=60_000,
               core_signals=100_000, core_repeat=3, drain_timeout_s=12, stop_timeout_s=25,
               projection_records=100_000, projection_budget_s=60)

CONFIRM_SHARES = (1.0, 0.9, 0.8, 0.7)
"""The confirmation tries the found rate, then 10 % lower each time it grew a backlog: a rate
that held only for the search's short steps is not reported as sustainable unless nothing
lower held either (then it is marked unconfirmed, an upper bound)."""
LATENCY_RATE = 1_000.0
SAMPLE_EVERY_S = 0.25
SEED = WorkloadSpec().seed

# Every child process of the run, so the watchdog can kill what a hung run left behind.
CHILDREN: list[Any] = []


class PhaseTimeout(Exception):
    """The contender's share of the run's time is used up."""


# --- resource monitoring ----------------------------------------------------------------------


class ProcessMonitor:
    """CPU seconds and RSS of a contender process and its children (psutil)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.max_rss = 0

    def _procs(self) -> list[psutil.Process]:
        procs = [self.proc]
        with contextlib.suppress(psutil.Error):
            procs += self.proc.children(recursive=True)
        return procs

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def sample(self) -> None:
        rss = 0
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                rss += p.memory_info().rss
        self.max_rss = max(self.max_rss, rss)

    def peak_rss(self) -> int:
        """The kernel's high-water mark (VmHWM) when readable, else the sampled maximum."""
        hwm = 0
        for p in self._procs():
            with contextlib.suppress(OSError, psutil.Error), \
                    open(f"/proc/{p.pid}/status", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm += int(line.split()[1]) * 1024
        return max(hwm, self.max_rss)


class MachineMonitor:
    """The whole machine's busy CPU and a local broker's (``machine.local_broker_pid``; None
    for a remote one), to read a latency window against: on a machine whose cores are busy,
    waiting for a core is latency."""

    def __init__(self, bootstrap: str) -> None:
        pid = machine.local_broker_pid(bootstrap)
        self.broker = ProcessMonitor(pid) if pid else None
        self.cores = psutil.cpu_count() or 1

    def cpu_seconds(self) -> tuple[float, float | None]:
        """(machine busy, broker) CPU seconds so far."""
        broker = None
        if self.broker is not None:
            with contextlib.suppress(psutil.Error):
                broker = self.broker.cpu_seconds()
        return machine.busy_cpu_seconds(), broker


# --- one contender's session --------------------------------------------------------------------


class Session:
    """Drives one running contender through the phases; every wait is bounded by ``deadline``."""

    def __init__(self, name: str, shared: Shared, conn: Any,
                 proc: subprocess.Popen[bytes] | None, monitor: ProcessMonitor | None,
                 profile: Profile, deadline: float,
                 console: Console, status: Any, machine: MachineMonitor | None = None) -> None:
        self.name, self.shared, self.conn, self.proc = name, shared, conn, proc
        self.monitor, self.profile, self.deadline = monitor, profile, deadline
        self.console, self.status = console, status
        self.machine = machine
        self.rows: RowVisibility | None = None  # decision rows' visibility in Postgres

    def lag(self) -> int:
        return self.shared.sent.value - self.shared.received.value

    def cpu_seconds(self) -> float:
        return self.monitor.cpu_seconds() if self.monitor else 0.0

    def has_time_for(self, seconds: float) -> bool:
        """Whether ``seconds`` of windows (plus the waits between them) fit before the
        deadline."""
        return time.monotonic() + 1.5 * seconds < self.deadline

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}")
        if time.monotonic() > self.deadline:
            raise PhaseTimeout(f"{self.name}: time budget used up")

    async def tick(self, what: str) -> None:
        await asyncio.sleep(SAMPLE_EVERY_S)
        if self.monitor:
            self.monitor.sample()
        self.status.update(f"[bold]{self.name}[/]: {what} — sent {self.shared.sent.value:,}, "
                           f"received {self.shared.received.value:,}, lag {self.lag():,}")
        self.check()

    async def warm_up(self) -> float:
        started = time.monotonic()
        self.shared.set_rate(200.0)
        limit = started + self.profile.warmup_timeout_s
        while self.shared.received.value < 50:
            await self.tick("warming up (start-up, group join)")
            if time.monotonic() > limit:
                raise RuntimeError(f"no output after {self.profile.warmup_timeout_s:.0f}s")
        self.shared.set_rate(0.0)
        await self.drain()
        return time.monotonic() - started

    async def drain(self) -> bool:
        """Pause the generator and wait until every signal sent came out (bounded)."""
        self.shared.set_rate(0.0)
        limit = time.monotonic() + self.profile.drain_timeout_s
        while self.lag() > 0 and time.monotonic() < limit:
            await self.tick("draining")
        return self.lag() <= 0

    async def latency(self, label: str, rate: float) -> dict[str, Any]:
        window = self.profile.latency_window_s
        settle = min(1.0, 0.25 * window)
        cpu0, recv0 = self.cpu_seconds(), self.shared.received.value
        start = time.time() + settle
        self.shared.set_window(start * 1e6, (start + window) * 1e6)
        self.shared.set_rate(rate)
        settled = time.monotonic() + settle
        until = settled + window
        while time.monotonic() < settled:
            await self.tick(f"latency at {label} ({rate:,.0f}/s)")
        before = self._cores_sample()
        while time.monotonic() < until:
            await self.tick(f"latency at {label} ({rate:,.0f}/s)")
        cores = self._cores(before, self._cores_sample())
        drained = await self.drain()
        latencies = await self.take()
        self.shared.set_window(0.0, 0.0)
        expected = self.shared.window_sent.value
        missing = max(0, expected - len(latencies))
        summary = stats.summarize_latencies([*latencies, *[math.inf] * missing])
        cpu = self.cpu_seconds() - cpu0
        out = self.shared.received.value - recv0
        visible = None
        if self.rows is not None:
            self.status.update(f"[bold]{self.name}[/]: waiting for the window's decision rows")
            visible = await self.rows.latencies(start * 1e6, (start + window) * 1e6)
        return {"label": label, "rate": rate, **summary, "missing": missing, "drained": drained,
                "cpu_s_per_10k": cpu / out * 1e4 if out and self.monitor else None,
                "cores": cores, "cdf": stats.cdf_points(latencies), "row_visible": visible}

    def _cores_sample(self) -> tuple[float, float, float | None, float | None]:
        """(monotonic time, contender CPU-s, machine busy CPU-s, broker CPU-s)."""
        busy, broker = self.machine.cpu_seconds() if self.machine else (None, None)
        return time.monotonic(), self.cpu_seconds(), busy, broker

    def _cores(self, a: tuple[float, float, float | None, float | None],
               b: tuple[float, float, float | None, float | None]) -> dict[str, Any] | None:
        """Cores in use during a latency window: the whole machine, the broker, the
        contender (its process tree)."""
        elapsed = b[0] - a[0]
        if self.machine is None or elapsed <= 0:
            return None

        def rate(i: int) -> float | None:
            x, y = a[i], b[i]
            return None if x is None or y is None else round((y - x) / elapsed, 3)
        return {"of": self.machine.cores, "machine": rate(2), "broker": rate(3),
                "contender": rate(1) if self.monitor else None}

    async def take(self) -> list[float]:
        self.conn.send("take")
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, self.conn.poll, 15.0)
        if not ready:
            raise RuntimeError("the measuring consumer did not answer")
        return list(self.conn.recv())

    async def burst(self) -> float:
        """Send ``profile.burst`` signals at once; the rate at which they came out."""
        n = self.profile.burst
        recv0 = self.shared.received.value
        started = time.monotonic()
        self.shared.set_rate(math.inf, burst=n)
        limit = started + max(10.0, self.profile.step_window_s * 4)
        while self.shared.received.value - recv0 < n and time.monotonic() < limit:
            await self.tick(f"drain probe ({n:,} signals at once)")
        done = self.shared.received.value - recv0
        rate = done / (time.monotonic() - started)
        await self.drain()
        return rate

    async def step(self, rate: float, window: float) -> dict[str, Any]:
        cpu0, recv0, sent0 = (self.cpu_seconds(), self.shared.received.value,
                              self.shared.sent.value)
        started = time.monotonic()
        self.shared.set_rate(rate)
        samples: list[tuple[float, float]] = []
        while (elapsed := time.monotonic() - started) < window:
            await self.tick(f"offering {rate:,.0f}/s")
            samples.append((time.monotonic() - started, float(self.lag())))
        elapsed = time.monotonic() - started
        achieved = (self.shared.sent.value - sent0) / elapsed
        behind = self.shared.behind_s.value
        cpu, out = self.cpu_seconds() - cpu0, self.shared.received.value - recv0
        verdict = stats.lag_bounded(samples, rate)
        kept_up = achieved >= 0.95 * rate and behind <= 0.25
        await self.drain()
        return {"rate": rate, "achieved": achieved, "generator_behind_s": behind,
                "generator_kept_up": kept_up, "bounded": verdict.bounded,
                "growth": verdict.growth, "final_lag": verdict.final_lag,
                "reason": verdict.reason if kept_up else
                f"generator offered {achieved:,.0f}/s (behind {behind:.2f}s)",
                "window_s": window,
                "cpu_s_per_10k": cpu / out * 1e4 if out and self.monitor else None}


# --- running one contender ------------------------------------------------------------------------


async def run_io_contender(c: Contender, profile: Profile, database_url: str, deadline: float,
                           console: Console, status: Any, log_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"key": c.key, "label": c.label, "status": "ok",
                              "partitions": PARTITIONS}
    ctx = spawn_context()
    shared = Shared.create(ctx)
    parent, child = ctx.Pipe()
    procs: list[Any] = []
    proc: subprocess.Popen[bytes] | None = None
    monitor: ProcessMonitor | None = None
    rows: RowVisibility | None = None
    log_path = log_dir / f"{c.key}.log"
    try:
        status.update(f"[bold]{c.key}[/]: creating topics")
        await c.prepare(database_url)
        result["topics"] = {"input": c.signals_topic, "outputs": len(c.output_topics)}
        command = c.command()
        procs = [ctx.Process(target=run_measurer, daemon=True,
                             args=(shared, child, c.bootstrap, c.output_topics)),
                 ctx.Process(target=run_generator, daemon=True,
                             args=(shared, c.bootstrap, c.signals_topic, c.health_topic,
                                   f"b{c.run_id}{c.key[0]}", SEED))]
        for p in procs:
            p.start()
            CHILDREN.append(p)
        if command:
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(command, env=c.env(), stdout=log,
                                        stderr=subprocess.STDOUT, cwd=str(BENCH_DIR.parent),
                                        start_new_session=True)
            CHILDREN.append(proc)
        session = Session(c.key, shared, parent, proc, ProcessMonitor(proc.pid) if proc else None,
                          profile, deadline, console, status, MachineMonitor(c.bootstrap))
        if isinstance(c, RouterStream) and c.database_url:
            session.rows = rows = RowVisibility(c.database_url)
            await rows.start()
        await _wait_event(shared.gen_ready, 30, "load generator")
        await _wait_event(shared.meas_ready, 30, "measuring consumer")
        if proc is None:  # the harness floor: generator -> broker -> measurer, nothing between
            result["latency"] = {"1k": await session.latency("1k/s", LATENCY_RATE)}
            console.print(f"  [cyan]floor[/] latency at 1k/s: "
                          f"{_lat_line(result['latency']['1k'])}")
        else:
            monitor = session.monitor
            await _phases(session, result, profile, console)
    except PhaseTimeout as exc:
        result["status"] = "partial"
        result["reason"] = str(exc)
    except Exception as exc:  # one contender failing must not end the run
        result["status"] = "failed"
        result["reason"] = f"{type(exc).__name__}: {exc}"
        result["log_tail"] = _tail(log_path)
    finally:
        shared.stop.value = 1
        if rows is not None:
            with contextlib.suppress(Exception):
                await rows.stop()
        if monitor is not None:
            with contextlib.suppress(psutil.Error):
                result["peak_rss_mb"] = monitor.peak_rss() / 2**20
        if proc is not None:
            result["exit_code"] = await stop_process(proc, profile.stop_timeout_s)
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
        status.update(f"[bold]{c.key}[/]: deleting topics")
        await c.cleanup(database_url)
    return result


async def _phases(s: Session, result: dict[str, Any], profile: Profile, console: Console) -> None:
    """Fills ``result`` as it goes, so a contender that runs out of time keeps what it measured.
    The drain probe comes before the 1k/s latency window: it warms the contender up (first
    batches, connection pools, caches) so that window measures the steady state."""
    say = lambda msg: console.print(f"  [cyan]{s.name}[/] {msg}")  # noqa: E731
    result["warmup_s"] = await s.warm_up()
    say(f"output flowing after {result['warmup_s']:.1f}s")
    result["drain_rate"] = await s.burst()
    say(f"drain probe: {result['drain_rate']:,.0f}/s")
    lat = result.setdefault("latency", {})
    lat["1k"] = await s.latency("1k/s", LATENCY_RATE)
    say(f"latency at 1k/s: {_lat_line(lat['1k'])}{_row_line(lat['1k'])}")
    search = stats.RateSearch(start=max(500.0, 0.7 * result["drain_rate"]), growth=1.3,
                              max_steps=profile.search_steps)
    result["steps"] = steps = []
    while (rate := search.next_rate()) is not None:
        step = await s.step(rate, profile.step_window_s)
        steps.append(step)
        search.record(rate, step["bounded"], generator_kept_up=step["generator_kept_up"])
        _settle_rate(result, search.sustainable, search.limited_by_generator)
        say(f"{rate:>9,.0f}/s offered: {'bounded' if step['bounded'] else 'NOT bounded'} "
            f"({step['reason']}, growth {step['growth']:+.1%}, lag {step['final_lag']:,.0f})")
    sustainable = search.sustainable
    if sustainable and profile.confirm_window_s:
        held = False
        for n, attempt in enumerate(sustainable * share for share in CONFIRM_SHARES):
            if n and not s.has_time_for(profile.confirm_window_s + 2 * profile.latency_window_s):
                break  # the 50 % / 90 % latency windows come first
            step = await s.step(attempt, profile.confirm_window_s)
            step["confirmation"] = True
            steps.append(step)
            say(f"confirm {attempt:,.0f}/s for {profile.confirm_window_s:.0f}s: "
                f"{'bounded' if step['bounded'] else 'NOT bounded'}")
            if step["bounded"]:
                _settle_rate(result, attempt, search.limited_by_generator)
                held = True
                break
        if not held:
            result["unconfirmed"] = True
    sustainable = result.get("sustainable_rate")
    if sustainable:
        for label, share in (("50%", 0.5), ("90%", 0.9)):
            lat[label] = await s.latency(label, share * sustainable)
            say(f"latency at {label} ({share * sustainable:,.0f}/s): {_lat_line(lat[label])}"
                f"{_row_line(lat[label])}")


def _settle_rate(result: dict[str, Any], rate: float | None, by_generator: bool) -> None:
    """The sustainable rate so far, and the CPU cost measured at it."""
    result["sustainable_rate"] = rate
    result["limited_by_generator"] = by_generator
    at = [x for x in result.get("steps", []) if x["bounded"] and x["rate"] == rate]
    result["cpu_s_per_10k"] = at[-1]["cpu_s_per_10k"] if at else None


def _lat_line(x: dict[str, Any]) -> str:
    missing = f", {x['missing']} missing" if x["missing"] else ""
    cores = cores_text(x.get("cores"))
    return (f"p50 {_ms(x['p50_ms'])}, p99 {_ms(x['p99_ms'])}, p99.9 {_ms(x['p999_ms'])} "
            f"({x['count']:,} samples{missing}){f'; {cores}' if cores else ''}")


def _row_line(x: dict[str, Any]) -> str:
    v = x.get("row_visible")
    if not v:
        return ""
    return (f"; decision row visible p50 {_ms(v['p50_ms'])} / p99 {_ms(v['p99_ms'])} "
            f"({v['count']:,} rows{'' if v['complete'] else ', incomplete'})")


def _ms(v: float | None) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "∞" if v == math.inf else "-"
    return f"{v:.1f} ms"


async def _wait_event(event: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, event.wait, timeout):
        raise RuntimeError(f"the {what} did not start within {timeout:.0f}s")


async def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM the contender's process group (it drains), SIGKILL after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        limit = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < limit:
            await asyncio.sleep(0.1)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    return proc.returncode


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# --- the core alone -------------------------------------------------------------------------


async def run_core(profile: Profile, status: Any) -> dict[str, Any]:
    """bench/core_bench.py in a subprocess: decisions/s per strategy, mixed by the workload's
    shares; CPU seconds per 10k = 10k / mixed rate (one busy thread); peak RSS sampled."""
    status.update("[bold]core[/]: bench/core_bench.py")
    cmd = [sys.executable, str(BENCH_DIR / "core_bench.py"), "--json",
           "--signals", str(profile.core_signals), "--repeat", str(profile.core_repeat)]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE,
                                                start_new_session=True)
    CHILDREN.append(proc)
    monitor = ProcessMonitor(proc.pid)
    comm = asyncio.ensure_future(proc.communicate())
    try:
        while not comm.done():
            with contextlib.suppress(psutil.Error):
                monitor.sample()
            await asyncio.wait({comm}, timeout=0.05)
        out, err = comm.result()
    finally:
        if proc.returncode is None:
            proc.kill()
    if proc.returncode != 0:
        return {"key": "core", "label": "core alone (no I/O)", "status": "failed",
                "reason": err.decode(errors="replace")[-500:]}
    per_kind = {r["kind"]: r for r in json.loads(out)}
    mixed = mixed_rate({k: r["decisions_per_s"] for k, r in per_kind.items()}, WorkloadSpec())
    return {"key": "core", "label": "core alone (no I/O)", "status": "ok",
            "sustainable_rate": mixed, "per_strategy": per_kind,
            "cpu_s_per_10k": 1e4 / mixed if mixed else None,
            "peak_rss_mb": monitor.max_rss / 2**20, "latency": {}}


async def run_projection_drain(profile: Profile, bootstrap: str, database_url: str,
                               deadline: float, status: Any) -> dict[str, Any]:
    """bench/projection_drain.py in a subprocess, as ``router-stream persist`` runs (a process
    of its own, not the harness's heap and threads): a backlog of decision and DLQ records
    written by one projection, with its CPU and the Postgres backends'."""
    records = profile.projection_records
    status.update(f"[bold]projection[/]: draining {records:,} records into Postgres")
    cmd = [sys.executable, "-m", "bench.projection_drain", "--json", "--records", str(records)]
    env = {**os.environ, "ROUTER_KAFKA_BOOTSTRAP": bootstrap, "ROUTER_DATABASE_URL": database_url}
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env,
                                                cwd=str(BENCH_DIR.parent), start_new_session=True)
    CHILDREN.append(proc)
    try:
        out, err = await asyncio.wait_for(proc.communicate(),
                                          max(1.0, deadline - time.monotonic()))
    except TimeoutError:
        return {"status": "failed", "records": records, "reason": "time budget used up"}
    finally:
        if proc.returncode is None:
            proc.kill()
    if proc.returncode != 0:
        return {"status": "failed", "records": records,
                "reason": err.decode(errors="replace").strip()[-500:]}
    return {"status": "ok", **json.loads(out.decode().strip().splitlines()[-1])}


def _drain_line(x: dict[str, Any]) -> str:
    if x["status"] != "ok":
        return f"{x['status']}: {x.get('reason', '')}"
    return (f"{x['rows']:,.0f} rows in {x['drain_s']:.1f}s = {x['rows_per_s']:,.0f} rows/s; CPU "
            f"projection {x['projection_cpu_s']:.1f}s, Postgres {x['postgres_cpu_s']:.1f}s -> "
            f"{x['rows_per_cpu_bound_s']:,.0f} rows/s with a core each")


def mixed_rate(per_kind: dict[str, float], spec: WorkloadSpec) -> float:
    """Decisions/s of the workload's mix: time per signal is the share-weighted mean."""
    shares = {"alert": spec.alert, "notification": spec.notification,
              "observation": spec.observation}
    total = sum(shares[k] for k in per_kind if k in shares)
    seconds = sum(shares[k] / total / per_kind[k] for k in per_kind if k in shares)
    return 1.0 / seconds if seconds else 0.0


# --- the run --------------------------------------------------------------------------------


async def run_bench(profile: Profile, bootstrap: str, database_url: str, out_dir: Path,
                    console: Console, only: tuple[str, ...] = ()) -> dict[str, Any]:
    run_id = secrets.token_hex(3)
    started = time.monotonic()
    deadline = started + profile.budget_s - 10  # leave time to clean up and write the report
    result: dict[str, Any] = {
        "run_id": run_id, "mode": profile.name,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "profile": asdict(profile), "machine": machine.describe(bootstrap),
        "workload": {**asdict(WorkloadSpec()), "policy": "bench/bench_policy.yaml",
                     "partitions": PARTITIONS, "latency_rate": LATENCY_RATE},
        "contenders": []}
    log_dir = out_dir / "logs" / run_id
    log_dir.mkdir(parents=True, exist_ok=True)
    contenders = [c for c in io_contenders(run_id, bootstrap)
                  if c.key in only or not only and not (profile is QUICK and c.key in FULL_ONLY)]
    projection = not only or "projection" in only
    io_deadline = deadline - (profile.projection_budget_s if projection else 0.0)
    with console.status("starting") as status:
        try:
            if not only or "core" in only:
                result["contenders"].append(await run_core(profile, status))
            runnable = []
            for c in contenders:
                reason = c.blocked()
                if reason:
                    console.print(f"  [yellow]{c.key}[/] blocked: {reason}")
                    result["contenders"].append({"key": c.key, "label": c.label,
                                                 "status": "blocked", "reason": reason})
                else:
                    runnable.append(c)
            # the floor only needs one latency window; the worker needs ~10 s to start
            weights = [{"floor": 0.4, "router_pg": 1.4, "router_nopg": 1.4,
                        "router_eos": 1.4}.get(c.key, 1.0)
                       for c in runnable]
            for i, c in enumerate(runnable):
                share = (io_deadline - time.monotonic()) * weights[i] / sum(weights[i:])
                console.print(f"[bold]{c.label}[/] ({c.key}), up to {share:.0f}s")
                # stopping the contender and deleting its topics come after its deadline
                reserve = min(profile.stop_timeout_s, 0.2 * share)
                result["contenders"].append(await run_io_contender(
                    c, profile, database_url, time.monotonic() + share - reserve, console,
                    status, log_dir))
            if projection:
                result["projection"] = await run_projection_drain(
                    profile, bootstrap, database_url, deadline, status)
                console.print(f"[bold]projection drain[/]: {_drain_line(result['projection'])}")
        finally:
            from bench.contenders import delete_topics_with_prefix

            with contextlib.suppress(Exception):
                left = await asyncio.wait_for(
                    delete_topics_with_prefix(bootstrap, f"bench-{run_id}."), 30)
                if left:
                    console.print(f"  deleted {len(left)} leftover topics")
    result["duration_s"] = time.monotonic() - started
    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def kill_children() -> None:
    """Watchdog / signal path: kill whatever the run started, by process id."""
    for child in CHILDREN:
        with contextlib.suppress(Exception):
            if isinstance(child, subprocess.Popen) and child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            elif hasattr(child, "is_alive") and child.is_alive():
                child.kill()
            elif getattr(child, "returncode", 0) is None:
                os.killpg(child.pid, signal.SIGKILL)
