"""PNG plots of a run, with matplotlib when it is installed (the optional ``bench`` extra).

Consensus: error over time with the fault windows shaded, and trust trajectories. Routing: the
breaker state of each destination over time, and cumulative regret per chooser.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

Figures = dict[str, Any]
_STATE_LEVEL = {"closed": 0, "half_open": 1, "open": 2}


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plots(results: dict[str, Figures], out: Path) -> dict[str, str]:
    """One PNG per scenario in ``out``; returns scenario → file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for name, fig in results.items():
        figure = _consensus(plt, fig) if fig["kind"] == "consensus" else _routing(plt, fig)
        path = out / f"sim-{name}.png"
        figure.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(figure)
        written[name] = path.name
    return written


def _consensus(plt: Any, fig: Figures) -> Any:
    series = fig["series"]
    figure, (err, trust) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    colours: dict[str, str] = {}
    for f in fig["faults"]:
        colour = colours.setdefault(f["source"], f"C{len(colours) + 2}")
        err.axvspan(f["start"], f["end"], color=colour, alpha=0.08)
        err.text(f["start"] + 1, 0.02 + 0.45 * (len(colours) - 1), f"{f['source']}: {f['kind']}",
                 fontsize=7, rotation=90, va="bottom", color=colour,
                 transform=err.get_xaxis_transform())
    for key, label in (("naive_error", "naive mean"), ("consensus_error", "consensus"),
                       ("honest_error", "fault-aware floor")):
        err.plot(series["t"], _smooth(series[key]), label=label, linewidth=1)
    err.set_yscale("symlog", linthresh=0.5)
    err.set_ylabel("|error| (moving mean of 25)")
    err.legend(loc="upper right")
    err.set_title(fig["title"])
    for source, points in series["trust"].items():
        trust.plot([p[0] for p in points], [p[1] for p in points], label=source)
    trust.set_ylabel("trust")
    trust.set_xlabel("event time (s)")
    trust.legend(loc="lower left", ncol=5)
    return figure


def _routing(plt: Any, fig: Figures) -> Any:
    figure, (states, regret) = plt.subplots(2, 1, figsize=(11, 7))
    first = next(iter(fig["series"].values()))
    by_target: dict[str, list[tuple[float, int]]] = {}
    for tr in first["transitions"]:
        by_target.setdefault(tr["target_id"], [(0.0, 0)]).append(
            (tr["at"] - 1_800_000_000.0, _STATE_LEVEL[tr["to_state"]]))
    end = first["t"][-1] if first["t"] else 0.0
    for i, (target, points) in enumerate(sorted(by_target.items())):
        points.append((end, points[-1][1]))
        states.step([p[0] for p in points], [p[1] + 3 * i for p in points], where="post",
                    label=target)
    states.set_yticks([])
    states.set_ylabel("breaker (closed / half-open / open)")
    states.set_xlabel("event time (s)")
    states.set_title(f"{fig['title']} — breakers of {next(iter(fig['series']))}")
    if by_target:
        states.legend(loc="upper right")
    for name, s in fig["series"].items():
        best = s.get("best", [])
        total, curve = 0.0, []
        for b, got in zip(best, s["success"], strict=True):
            total += b - got
            curve.append(total)
        regret.plot(curve, label=name)
    regret.set_ylabel("cumulative regret")
    regret.set_xlabel("decision")
    regret.legend(loc="upper left")
    return figure


def _smooth(values: list[float], n: int = 25) -> list[float]:
    out, window = [], []
    for v in values:
        if not math.isnan(v):
            window.append(v)
        if len(window) > n:
            window.pop(0)
        out.append(sum(window) / len(window) if window else math.nan)
    return out
