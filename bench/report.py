"""A run's JSON -> the terminal table, the PNG plots and docs/benchmarks.md.

Everything here reads the result dict only (``router-stream bench --report FILE.json`` rebuilds
the plots and the page from a saved run), so the page always shows exactly what a run measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# The open issues' goals; p99 at 50 % of the sustainable rate is issue 13's 50 ms (an earlier
# issue asked for 100).
GOALS = {"vs_raw": 0.5, "vs_faust": 5.0, "p50_1k_ms": 5.0, "p99_1k_ms": 25.0, "p99_50_ms": 50.0,
         "projection_rows_s": 20_000, "row_visible_p99_ms": 1_000.0}
LOST = "lost"  # a latency sample that never arrived (inf in memory, "lost" in JSON)
ORDER = ("floor", "raw", "raw_ck", "faust", "router_pg", "router_nopg", "router_eos", "core")


def _num(v: Any) -> float | None:
    if v == LOST:
        return math.inf
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def fmt_rate(v: Any) -> str:
    v = _num(v)
    return "-" if v is None else f"{v:,.0f}"


def fmt_ms(v: Any) -> str:
    v = _num(v)
    if v is None:
        return "-"
    if math.isinf(v):
        return "lost"
    return f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def ordered(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's contenders in the table's order (:data:`ORDER`; unknown keys last)."""
    return sorted(result["contenders"], key=lambda c: ORDER.index(c["key"])
                  if c["key"] in ORDER else len(ORDER))


def cores_text(cores: dict[str, Any] | None) -> str:
    """"1.97 of 2 cores busy (broker 1.05, contender 0.60)" for a latency window; "" when the
    run did not measure it."""
    if not cores or cores.get("machine") is None:
        return ""
    parts = [f"{name} {cores[name]:.2f}" for name in ("broker", "contender")
             if cores.get(name) is not None]
    inside = f" ({', '.join(parts)})" if parts else ""
    return f"{cores['machine']:.2f} of {cores['of']} cores busy{inside}"


def cores_lines(result: dict[str, Any]) -> list[str]:
    """Per contender, the cores in use during its 1k/s latency window."""
    out = []
    for c in ordered(result):
        text = cores_text(c.get("latency", {}).get("1k", {}).get("cores"))
        if text:
            out.append(f"{c['label']}: {text}")
    return out


def by_key(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["key"]: c for c in result["contenders"]}


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    """router-stream's sustainable throughput over the baselines', from the same run."""
    c = by_key(result)

    def rate(key: str) -> float | None:
        return _num(c.get(key, {}).get("sustainable_rate"))

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    return {"router_pg_vs_raw": div(rate("router_pg"), rate("raw")),
            "router_pg_vs_faust": div(rate("router_pg"), rate("faust")),
            "router_nopg_vs_raw": div(rate("router_nopg"), rate("raw")),
            "router_pg_vs_core": div(rate("router_pg"), rate("core"))}


def rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per contender: the figures the issue asks for."""
    out = []
    contenders = ordered(result)
    for c in contenders:
        if c["status"] == "blocked" or (c["status"] == "failed" and "steps" not in c):
            out.append([c["label"], c["status"].upper(), *["-"] * 8])
            continue
        lat = c.get("latency", {})
        one, half, most = lat.get("1k", {}), lat.get("50%", {}), lat.get("90%", {})
        rate = fmt_rate(c.get("sustainable_rate"))
        if none_held(c):
            rate = f"< {fmt_rate(min(st['rate'] for st in c['steps']))}"
        elif c.get("limited_by_generator"):
            rate = f">= {rate} (gen)"
        elif confirmation(c) == "failed":
            rate = f"{rate} (unconfirmed)"
        if c["status"] != "ok":  # figures from before it failed: never a bare "-"
            rate = c["status"].upper() if rate == "-" else f"{rate} ({c['status'].upper()})"
        cpu = _num(c.get("cpu_s_per_10k"))
        rss = _num(c.get("peak_rss_mb"))
        out.append([c["label"], rate, fmt_ms(one.get("p50_ms")), fmt_ms(one.get("p99_ms")),
                    fmt_ms(one.get("p999_ms")), fmt_ms(half.get("p99_ms")),
                    fmt_ms(most.get("p99_ms")), fmt_ms(most.get("p999_ms")),
                    "-" if cpu is None else f"{cpu:.2f}", "-" if rss is None else f"{rss:.0f}"])
    return out


HEADERS = ["contender", "sustainable /s", "p50 @1k", "p99 @1k", "p99.9 @1k", "p99 @50%",
           "p99 @90%", "p99.9 @90%", "CPU s/10k", "peak RSS MB"]


def print_table(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"router-stream bench ({result['mode']}, run {result['run_id']}, "
                        f"{result['duration_s']:.0f}s) — latencies in ms, end to end")
    for h in HEADERS:
        table.add_column(h, justify="left" if h == "contender" else "right")
    for r in rows(result):
        table.add_row(*r)
    console.print(table)
    for name, v in ratios(result).items():
        console.print(f"  {name.replace('_', ' ')}: {'-' if v is None else f'{v:.2f}x'}")
    for c in result["contenders"]:
        if c["status"] != "ok":
            console.print(f"  [yellow]{c['key']}: {c['status']}[/] — {c.get('reason', '')}")
    for line in projection_lines(result):
        console.print(f"  {line}")


# --- plots --------------------------------------------------------------------------------------


def plot(result: dict[str, Any], stem: Path) -> list[Path]:
    """Throughput bars and latency CDFs as PNGs next to the JSON; [] without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        return []
    made = []
    ok = [c for c in result["contenders"] if _num(c.get("sustainable_rate"))]
    if ok:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.barh([c["label"] for c in ok], [c["sustainable_rate"] for c in ok], color="#4c72b0")
        ax.set_xscale("log")
        ax.set_xlabel("sustainable throughput, signals/s (log scale)")
        ax.set_title(f"Sustainable throughput ({result['mode']} run {result['run_id']})")
        fig.tight_layout()
        path = stem.with_name(stem.name + "-throughput.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    curves = [(c, lab) for c in result["contenders"] for lab in ("1k", "50%", "90%")
              if c.get("latency", {}).get(lab, {}).get("cdf")]
    if curves:
        # One colour per contender in every panel: the legend is drawn once, and the floor has
        # no curve at 50 % or 90 %, so the default colour cycle would shift between panels.
        palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        keys = list(dict.fromkeys(c["key"] for c, _ in curves))
        colour = {k: palette[i % len(palette)] for i, k in enumerate(keys)}
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
        for ax, lab in zip(axes, ("1k", "50%", "90%"), strict=True):
            for c, lab2 in curves:
                if lab2 == lab:
                    pts = c["latency"][lab]["cdf"]
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], label=c["label"],
                            color=colour[c["key"]])
            ax.set_xscale("log")
            ax.set_xlabel("end-to-end latency, ms (log)")
            ax.set_title({"1k": "at 1k signals/s", "50%": "at 50% of sustainable",
                          "90%": "at 90% of sustainable"}[lab])
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("fraction of signals")
        # Every contender with a curve in any panel, also one whose 1k window has none.
        labels = {c["key"]: c["label"] for c, _ in curves}
        axes[0].legend([Line2D([], [], color=colour[k]) for k in keys],
                       [labels[k] for k in keys], fontsize=7, loc="lower right")
        fig.tight_layout()
        path = stem.with_name(stem.name + "-latency.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def save(result: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = result["started_at"].replace(":", "").replace("-", "")[:15]
    path = out_dir / f"{stamp}-{result['mode']}-{result['run_id']}.json"
    path.write_text(json.dumps(json_safe(result), indent=1, default=_json_default,
                               allow_nan=False))
    return path


def _json_default(o: Any) -> Any:
    raise TypeError(f"not JSON: {type(o).__name__}")


def json_safe(value: Any) -> Any:
    """inf (a lost signal's latency) becomes "lost", nan (an empty sample) null."""
    if isinstance(value, float) and math.isinf(value):
        return LOST
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# --- docs/benchmarks.md -------------------------------------------------------------------------


def render_markdown(result: dict[str, Any], json_path: str, plots: list[str]) -> str:
    m, w = result["machine"], result["workload"]
    r = ratios(result)
    c = by_key(result)
    table = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    table += ["| " + " | ".join(row) + " |" for row in rows(result)]
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `router-stream bench` (bench/report.py) from "
        f"{json_path}; edit the generator, not this page. -->",
        "",
        _banner(result),
        "",
        "## Results",
        "",
        f"Run `{result['run_id']}` ({result['mode']}), {result['started_at']}, "
        f"{result['duration_s']:.0f} s. Latencies are end to end in ms (scheduled send time → "
        "receipt by the consumer of the routed topic); *lost* = not received within the drain "
        "timeout, counted as infinitely late.",
        "",
        *table,
        "",
        "### Ratios (same run)",
        "",
        "| ratio | value | goal |",
        "|---|---|---|",
        f"| router-stream (Postgres on) / raw passthrough | {_x(r['router_pg_vs_raw'])} | "
        f">= {GOALS['vs_raw']}x |",
        f"| router-stream (Postgres on) / naive faust | {_x(r['router_pg_vs_faust'])} | "
        f">= {GOALS['vs_faust']:.0f}x |",
        f"| router-stream (Postgres off) / raw passthrough | {_x(r['router_nopg_vs_raw'])} | - |",
        f"| router-stream (Postgres on) / core alone | {_x(r['router_pg_vs_core'])} | - |",
        "",
        *_ratio_caveat(result),
        *_goal_lines(c),
        "",
        *[f"- {line}" for line in projection_lines(result)],
        "",
        *_cores_section(result),
        "Where the time goes and what limits these figures (profiles and a latency breakdown, "
        "measured separately): [performance.md](performance.md).",
        "",
        *[f"![{Path(p).stem}]({p})" for p in plots],
        "",
        *_status_lines(result),
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['logical_cores']} logical cores "
        f"({m.get('physical_cores') or '?'} physical), RAM {m['ram_gb']} GB, {m['os']}",
        f"- Load average at start / end: {m['load_avg_at_start']} / "
        f"{m.get('load_avg_at_end', '-')} (other processes share the machine)",
        f"- Kafka {m['kafka']} (one broker, KRaft), Python {m['python']}, confluent-kafka "
        f"{m.get('confluent_kafka', '?')} (router-stream's client), aiokafka {m['aiokafka']} "
        f"(the raw aiokafka contender), faust-streaming {m['faust_streaming']}, router-stream "
        f"{m['router_stream']}",
        *_storage_lines(m),
        "",
        "## Workload",
        "",
        f"- Signals: ~200-byte JSON, seed {w['seed']}; {w['alert']:.0%} alerts "
        "(first_healthy over 3 tiers), "
        f"{w['notification']:.0%} notifications (thompson bandit over 10 destinations), "
        f"{w['observation']:.0%} observations (consensus, {w['sources_per_metric']} sources per "
        f"metric), {w['invalid']:.0%} invalid (half not JSON, half without sender_id -> DLQ).",
        f"- {w['sources']:,} sources; health events to `source-health` at 1/{w['health_every']} "
        "of the signal rate.",
        f"- Policy `{w['policy']}`: examples/policy.yaml's classifier, 100 destinations. "
        f"Every input and output topic has {w['partitions']} partitions, fresh per contender.",
        "",
        METHOD,
    ]
    return "\n".join(lines) + "\n"


def _cores_section(result: dict[str, Any]) -> list[str]:
    lines = cores_lines(result)
    if not lines:
        return []
    return ["CPU in use during each 1k/s latency window (the whole machine's busy time; the "
            "broker's when it runs on this machine; the contender's process tree). The rest is "
            "the generator, the measurer, Postgres and anything else running: on a machine "
            "whose cores are busy, waiting for one shows as latency.", "",
            *[f"- {line}" for line in lines], ""]


def projection_lines(result: dict[str, Any]) -> list[str]:
    """The projection's goals: drain rows/s, and decision rows visible in Postgres (signal's
    scheduled send time -> its row committed) at 1k/s and at 50 % of router_pg's sustainable
    rate."""
    out = []
    drain = result.get("projection")
    if drain is not None and drain["status"] != "ok":
        out.append(f"Projection drain: {drain['status']} — {drain.get('reason', '')}")
    elif drain is not None:
        out.append(
            f"Projection drain ({drain['records']:,} records): {fmt_rate(drain['rows_per_s'])} "
            f"rows/s (goal >= {GOALS['projection_rows_s']:,}/s); CPU per "
            f"{drain['rows']:,.0f} rows: projection {drain['projection_cpu_s']:.2f} s, Postgres "
            f"backends {drain['postgres_cpu_s']:.2f} s -> "
            f"{fmt_rate(drain['rows_per_cpu_bound_s'])} rows/s with a core each.")
    lat = by_key(result).get("router_pg", {}).get("latency", {})
    for label in ("1k", "50%"):
        v = (lat.get(label) or {}).get("row_visible")
        if v:
            goal = (f" (goal p99 <= {GOALS['row_visible_p99_ms']:,.0f} ms)"
                    if label == "50%" else "")
            out.append(f"Decision row visible in Postgres at {lat[label]['rate']:,.0f}/s "
                       f"({label}): p50 {fmt_ms(v['p50_ms'])} ms, p99 {fmt_ms(v['p99_ms'])} ms, "
                       f"{v['count']:,} rows{'' if v['complete'] else ' (window incomplete)'}"
                       f"{goal}.")
    return out


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _ratio_caveat(result: dict[str, Any]) -> list[str]:
    failed = [c["label"] for c in result["contenders"] if confirmation(c) == "failed"]
    if not failed:
        return []
    return [f"These ratios use the table's figures, unconfirmed ones included "
            f"({', '.join(failed)}): either side of a ratio may be an upper bound.", ""]


def confirmation(c: dict[str, Any]) -> str | None:
    """``held``: a 30 s confirmation step stayed bounded; ``failed``: every one it ran grew a
    backlog (the rate is then the last short search step that held, an upper bound); None:
    no confirmation ran (``--quick``, or the time budget ran out first)."""
    tried = [st for st in c.get("steps", []) if st.get("confirmation")]
    if not tried:
        return None
    return "held" if any(st.get("bounded") for st in tried) else "failed"


def none_held(c: dict[str, Any]) -> bool:
    """Every search step grew a backlog: the sustainable rate lies below the lowest one tried."""
    return bool(c.get("steps")) and not c.get("sustainable_rate") and not any(
        st.get("bounded") for st in c["steps"])


def _banner(result: dict[str, Any]) -> str:
    if result["mode"] == "quick":
        return ("> **These are `--quick` figures** (2 s search steps, 1.5 s latency windows, "
                "no 30 s confirmation), taken on a 2-core machine shared with other builds and "
                "test runs. They show that the harness works and the order of magnitude, not "
                "the product's performance. The full run (`router-stream bench`, < 18 min, 30 s "
                "confirmation window) is still to be done on a quiet machine; this page is "
                "regenerated from its JSON.")
    held = [c["label"] for c in result["contenders"] if confirmation(c) == "held"]
    below = [c["label"] for c in result["contenders"] if none_held(c)]
    other = [c["label"] for c in result["contenders"]
             if c.get("steps") and confirmation(c) != "held" and not none_held(c)]
    text = "> Full run. "
    if held:
        text += f"Held for the 30 s confirmation window: {'; '.join(held)}. "
    if other:
        text += ("Not confirmed for 30 s (the figure is the last short search step that held, "
                 f"so an upper bound): {'; '.join(other)}. ")
    if below:
        text += ("No search step held (the sustainable rate is below the lowest rate tried, "
                 f"shown as \"< rate\"): {'; '.join(below)}. ")
    return text + ("Figures from one machine; compare ratios, not absolute numbers, across "
                   "machines.")


def _goal_lines(c: dict[str, dict[str, Any]]) -> list[str]:
    def check(v: Any, goal: float) -> str:
        v = _num(v)
        return "-" if v is None else ("met" if v <= goal else "**not met**")

    lines = []
    for key, setting in (("router_pg", "Postgres on"), ("router_nopg", "Postgres off")):
        if key not in c:
            continue
        lat = c[key].get("latency", {})
        one, half = lat.get("1k", {}), lat.get("50%", {})
        lines.append(
            f"Latency goals for router-stream ({setting}): "
            f"p50 at 1k/s {fmt_ms(one.get('p50_ms'))} ms (goal <= {GOALS['p50_1k_ms']:.0f}: "
            f"{check(one.get('p50_ms'), GOALS['p50_1k_ms'])}), "
            f"p99 at 1k/s {fmt_ms(one.get('p99_ms'))} ms (goal <= {GOALS['p99_1k_ms']:.0f}: "
            f"{check(one.get('p99_ms'), GOALS['p99_1k_ms'])}), "
            f"p99 at 50% {fmt_ms(half.get('p99_ms'))} ms (goal <= {GOALS['p99_50_ms']:.0f}: "
            f"{check(half.get('p99_ms'), GOALS['p99_50_ms'])}).")
        lines.append("")  # one paragraph each
    return lines[:-1]


def _storage_lines(m: dict[str, Any]) -> list[str]:
    """The broker's index size and the disks' read-ahead, when the run recorded them (runs
    before 2026-12-07 did not): together they set what a new partition costs the broker; and
    the topics and partitions it already held."""
    settings, read_ahead = m.get("broker_settings") or {}, m.get("read_ahead_kb") or {}
    parts = [f"broker `{k}` {v}" for k, v in settings.items()]
    parts += [f"read-ahead of {dev} {kb} KiB" for dev, kb in read_ahead.items()]
    lines = [f"- Storage: {'; '.join(parts)} (docs/performance.md)"] if parts else []
    load = m.get("broker_at_start")
    if load:  # runs before 2026-12-07 10:10 did not record it
        leftover = (f", {load['bench_topics']} of them left by other bench runs"
                    if load["bench_topics"] else "")
        lines.append(f"- Broker at start: {load['topics']:,} topics{leftover}, "
                     f"{load['partitions']:,} partitions (idle partitions cost it CPU under load)")
    return lines


def _status_lines(result: dict[str, Any]) -> list[str]:
    notes = [f"- **{c['label']}**: {c['status']} — {c.get('reason', '')}"
             for c in result["contenders"] if c["status"] != "ok"]
    for c in result["contenders"]:
        if confirmation(c) == "failed":
            tried = ", ".join(f"{st['rate']:,.0f}/s" for st in c["steps"]
                              if st.get("confirmation"))
            notes.append(f"- **{c['label']}**: the 30 s confirmation grew a backlog at "
                         f"{tried}; the sustainable rate is below the figure shown.")
    gen = [c["label"] for c in result["contenders"] if c.get("limited_by_generator")]
    if gen:
        notes.append(f"- Limited by the load generator (the figure is a lower bound): "
                     f"{', '.join(gen)}.")
    return (["### Notes on this run", "", *notes, ""] if notes else [])


METHOD = """## Method

`router-stream bench [--quick] [--out bench/results]` (code in `bench/`, entry `bench/harness.py`)
runs every contender one after the other on the same broker, with fresh topics of the same
partition count, the same generator and the same measurer (one consumer per output topic, as
each downstream service reads its own; a 500 ms fetch wait when idle):

- **harness floor**: no contender; the measurer reads `signals` itself. The latency the
  generator, the broker and the measurer add on their own.
- **raw aiokafka passthrough** (`bench/raw_passthrough.py`): consumer -> producer copy, offsets
  committed after the batch's sends are acknowledged; the worker's producer settings
  (idempotent, acks=all) and batch size (500), but a 5 ms linger (the worker's is 0).
- **naive faust agent** (`bench/naive_faust_app.py worker`): `async for v in stream: await
  out.send(value=v)`, faust's defaults, at-least-once.
- **router-stream, Postgres on / off** (`router-stream worker --policy bench/bench_policy.yaml`):
  worker defaults, INFO logs, a Postgres database of its own (migrated, dropped afterwards);
  "off" needs `ROUTER_PERSIST=false`.
- **core alone** (`bench/core_bench.py`, no I/O): decisions/s per strategy (a full run takes the
  best of three runs: this VM's speed varies by up to ~1.6x from one run to the next), mixed by
  the workload's shares.
- **projection** (`bench/projection_drain.py`, after the contenders): a backlog of decision
  records (one DLQ record in 20) written to a fresh database by one `router-stream persist`;
  rows/s from its first fetch to the last commit, and the CPU of the projection and of its
  Postgres backends. For router_pg, every latency window also times its signals' decision rows
  (`bench/row_visibility.py`): scheduled send time -> the row's transaction committed (a
  bench-only trigger NOTIFYs at commit). Signals dead-lettered have no decision row.

- **Open loop, no coordinated omission.** The generator (its own process) sends on a schedule;
  every signal carries its *scheduled* send time (`{"bench_t":...` at the start of the JSON,
  kept by every contender), and latency is receipt time minus scheduled time, so a stalled
  generator or broker shows up as latency, never as fewer samples. Signals not received within
  the drain timeout count as infinitely late.
- **Sustainable throughput**: a drain probe (a burst sent at once) estimates capacity; open-loop
  steps start at 70 % of it, grow by 1.3x while they pass and bisect after the first failure. A
  step passes when the lag (signals sent - output records received; every signal yields exactly
  one routed or DLQ record) has a least-squares slope <= 5 % of the offered rate after the
  first quarter of the window and ends below 2 s of input, and the generator really offered the
  rate (>= 95 %, <= 0.25 s behind schedule; otherwise the figure is marked as a lower bound).
  The full run holds the found rate for 30 s (10 % lower each time that fails, down to 70 %).
- **Latency** at 1,000 signals/s and at 50 % / 90 % of the sustainable rate: p50, p99, p99.9
  (nearest rank) over one window, after a short settle.
- **CPU seconds per 10k signals**: user+system CPU of the contender's process (psutil) over the
  highest passing step, per output record. **Peak RSS**: the kernel's high-water mark (VmHWM).
- **Cores busy** in each latency window: the machine's busy CPU time (user, nice, system, irq,
  softirq; `psutil.cpu_times`) per second of the window, the broker's (the process listening on
  the bootstrap port, when it is on this machine) and the contender's process tree.
- **Bounded**: `--quick` < 2 min, full < 18 min; every wait has a deadline, a watchdog kills the
  children of a run that overstays, and every topic (`bench-<run>.*`) and database is deleted.
- On a 2-core machine the broker, the contender, the generator and the measuring consumer share
  the cores: raw passthrough in particular may be limited by the generator (marked "gen").
"""


def write_docs(result: dict[str, Any], json_path: Path, plots: list[Path], docs: Path) -> None:
    rel = lambda p: Path(_relpath(p, docs.parent)).as_posix()  # noqa: E731
    docs.write_text(render_markdown(result, rel(json_path), [rel(p) for p in plots]))


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())
