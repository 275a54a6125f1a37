"""bench/report.py says which sustainable rates held for the 30 s confirmation window."""

from __future__ import annotations

import pytest

from bench import report


def _contender(key: str, confirmations: list[bool]) -> dict:
    steps = [{"rate": 1000.0, "bounded": True}]
    steps += [{"rate": 1000.0 * (1 - 0.1 * i), "bounded": b, "confirmation": True}
              for i, b in enumerate(confirmations)]
    return {"key": key, "label": key, "status": "ok", "sustainable_rate": 1000.0,
            "steps": steps, "latency": {}}


def test_a_rate_whose_confirmations_all_grew_a_backlog_is_marked_unconfirmed() -> None:
    held, failed, none = (_contender("raw", [False, True]), _contender("router_pg", [False, False]),
                          _contender("faust", []))
    assert [report.confirmation(c) for c in (held, failed, none)] == ["held", "failed", None]
    result = {"mode": "full", "contenders": [held, failed, none]}
    rates = {row[0]: row[1] for row in report.rows(result)}
    assert rates == {"raw": "1,000", "router_pg": "1,000 (unconfirmed)", "faust": "1,000"}
    banner = report._banner(result)
    assert "Held for the 30 s confirmation window: raw." in banner
    assert "upper bound): router_pg; faust." in banner  # labels may hold commas
    notes = "\n".join(report._status_lines(result))
    assert "router_pg**: the 30 s confirmation grew a backlog at 1,000/s, 900/s" in notes


def test_a_contender_that_failed_says_so_in_its_row_instead_of_a_bare_dash() -> None:
    crashed = {**_contender("faust", []), "status": "failed", "sustainable_rate": None,
               "reason": "RuntimeError: faust exited with code 1"}
    partial = {**_contender("raw", [True]), "status": "partial"}
    never = {"key": "router_pg", "label": "router_pg", "status": "failed", "reason": "x"}
    rates = {row[0]: row[1] for row in report.rows(
        {"mode": "quick", "contenders": [crashed, partial, never]})}
    assert rates == {"faust": "FAILED", "raw": "1,000 (PARTIAL)", "router_pg": "FAILED"}


def test_the_projection_goals_are_reported_with_their_figures() -> None:
    drain = {"status": "ok", "records": 100_000, "rows": 100_000.0, "rows_per_s": 21_000.0,
             "projection_cpu_s": 3.5, "postgres_cpu_s": 1.8, "rows_per_cpu_bound_s": 28_571.0}
    visible = {"count": 900, "p50_ms": 310.0, "p99_ms": 840.0, "complete": True}
    pg = {"key": "router_pg", "label": "pg", "status": "ok",
          "latency": {"50%": {"rate": 1_500.0, "row_visible": visible}}}
    lines = report.projection_lines({"contenders": [pg], "projection": drain})
    assert "21,000 rows/s (goal >= 20,000/s)" in lines[0] and "28,571" in lines[0]
    assert "1,500/s (50%): p50 310 ms, p99 840 ms, 900 rows (goal p99 <= 1,000 ms)" in lines[1]
    failed = {"status": "failed", "records": 20_000, "reason": "TimeoutError: "}
    assert report.projection_lines({"contenders": [], "projection": failed}) == [
        "Projection drain: failed — TimeoutError: "]


def test_the_storage_line_names_the_broker_index_size_and_read_ahead_when_recorded() -> None:
    machine = {"broker_settings": {"log.index.size.max.bytes": "1048576"},
               "read_ahead_kb": {"vda": 8192}}
    assert report._storage_lines(machine) == [
        "- Storage: broker `log.index.size.max.bytes` 1048576; read-ahead of vda 8192 KiB "
        "(docs/performance.md)"]
    assert report._storage_lines({"kafka": "4.1.1"}) == []  # a run from before they were kept
    held = {"broker_at_start": {"topics": 514, "partitions": 5724, "bench_topics": 440}}
    assert report._storage_lines(held) == [
        "- Broker at start: 514 topics, 440 of them left by other bench runs, 5,724 partitions "
        "(idle partitions cost it CPU under load)"]
    clean = {"broker_at_start": {"topics": 3, "partitions": 52, "bench_topics": 0}}
    assert report._storage_lines(clean) == [
        "- Broker at start: 3 topics, 52 partitions (idle partitions cost it CPU under load)"]


def test_the_cores_busy_in_a_latency_window_are_reported_per_contender() -> None:
    busy = {"of": 2, "machine": 1.97, "broker": 1.046, "contender": 0.6}
    floor = {"key": "floor", "label": "harness floor", "status": "ok",
             "latency": {"1k": {"cores": {"of": 2, "machine": 0.61, "broker": 0.37, "contender": None}}}}
    remote = {"key": "raw", "label": "raw", "status": "ok",
              "latency": {"1k": {"cores": {**busy, "broker": None}}}}
    old_run = {"key": "faust", "label": "faust", "status": "ok", "latency": {"1k": {}}}
    router = {"key": "router_nopg", "label": "router", "status": "ok", "latency": {"1k": {
        "cores": busy}}}
    result = {"contenders": [router, old_run, remote, floor]}
    assert report.cores_lines(result) == [
        "harness floor: 0.61 of 2 cores busy (broker 0.37)",
        "raw: 1.97 of 2 cores busy (contender 0.60)",
        "router: 1.97 of 2 cores busy (broker 1.05, contender 0.60)"]
    assert report.cores_text(None) == "" and report.cores_text({"machine": None}) == ""


def test_a_contender_no_search_step_held_for_shows_the_lowest_rate_tried_as_a_bound() -> None:
    failing = {"key": "raw_ck", "label": "raw_ck", "status": "ok", "sustainable_rate": None,
               "latency": {}, "steps": [{"rate": r, "bounded": False} for r in (9000.0, 5271.6)]}
    result = {"mode": "full", "contenders": [failing, _contender("raw", [True])]}
    rates = {row[0]: row[1] for row in report.rows(result)}
    assert rates == {"raw_ck": "< 5,272", "raw": "1,000"}
    banner = report._banner(result)
    assert "Not confirmed" not in banner
    assert 'No search step held (the sustainable rate is below the lowest rate tried, shown as ' \
           '"< rate"): raw_ck.' in banner


CDF = {"cdf": [[1.0, 0.0], [2.0, 1.0]]}


def _latency_figure(monkeypatch, tmp_path, contenders):
    """The latency figure ``report.plot`` draws for ``contenders`` (nothing is saved)."""
    pyplot = pytest.importorskip("matplotlib.pyplot")
    figures = []
    monkeypatch.setattr(pyplot.Figure, "savefig", lambda fig, *_a, **_k: figures.append(fig))
    report.plot({"mode": "full", "run_id": "r", "contenders": contenders}, tmp_path / "run")
    return next(f for f in figures if len(f.axes) == 3)


def test_a_contender_has_one_colour_in_every_latency_panel(monkeypatch, tmp_path) -> None:
    floor = {**_contender("floor", []), "latency": {"1k": CDF}}  # no 50 % / 90 % curves
    router = {**_contender("router_pg", []), "latency": {"1k": CDF, "50%": CDF, "90%": CDF}}
    latency = _latency_figure(monkeypatch, tmp_path, [floor, router])
    colours = {(ax.get_title(), line.get_label()): line.get_color()
               for ax in latency.axes for line in ax.get_lines()}
    router_colours = {c for (_, label), c in colours.items() if label == "router_pg"}
    assert len(router_colours) == 1
    assert router_colours != {colours[("at 1k signals/s", "floor")]}


def test_the_latency_legend_names_a_contender_without_a_1k_curve(monkeypatch, tmp_path) -> None:
    floor = {**_contender("floor", []), "latency": {"1k": CDF}}
    late = {**_contender("router_pg", []), "latency": {"50%": CDF}}  # its 1k window failed
    latency = _latency_figure(monkeypatch, tmp_path, [floor, late])
    legend = latency.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["floor", "router_pg"]
    drawn = {line.get_label(): line.get_color() for ax in latency.axes for line in ax.get_lines()}
    assert [h.get_color() for h in legend.get_lines()] == [drawn["floor"], drawn["router_pg"]]
