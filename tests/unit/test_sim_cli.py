"""``router-stream simulate``: table, JSON, plots when matplotlib is there, one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from router_stream.cli import _register, cli
from router_stream.sim import plots, report, run


def _invoke(*args: str) -> tuple[int, str, str]:
    _register()
    result = CliRunner().invoke(cli, ["simulate", *args])
    return result.exit_code, result.stdout, result.stderr


def test_json_has_the_figures_and_goals_of_the_scenarios_asked_for() -> None:
    code, out, _ = _invoke("bandit-breaker", "--seed", "3", "--json")
    assert code == 0
    body = json.loads(out)
    assert body["seed"] == 3 and list(body["scenarios"]) == ["bandit-breaker"]
    assert "series" not in body["scenarios"]["bandit-breaker"]
    assert [g["scenario"] for g in body["goals"]] == ["bandit-breaker"]


def test_the_table_names_the_goals() -> None:
    code, out, _ = _invoke("bandit-breaker")
    assert code == 0 and "Goals (seed 0)" in out and "dead-lettered share" in out


def test_an_unknown_scenario_is_refused_with_the_known_ones() -> None:
    _register()
    result = CliRunner().invoke(cli, ["simulate", "nope"], standalone_mode=True)
    assert result.exit_code != 0 and "unknown scenario 'nope'" in result.output
    assert "consensus" in result.output


def test_write_docs_runs_every_scenario() -> None:
    _register()
    result = CliRunner().invoke(cli, ["simulate", "breaker", "--write-docs"])
    assert result.exit_code != 0 and "every scenario" in result.output


def test_plots_are_skipped_with_a_reason_without_matplotlib(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(plots, "available", lambda: False)
    code, _, err = _invoke("bandit-breaker", "--plots", str(tmp_path))
    assert code == 0 and "plots skipped: matplotlib is not installed" in err
    assert not list(tmp_path.iterdir())


def test_plots_are_written_with_matplotlib(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    code, _, err = _invoke("bandit-breaker", "--plots", str(tmp_path))
    assert code == 0 and (tmp_path / "sim-bandit-breaker.png").stat().st_size > 1000


def test_the_page_has_every_goal_and_scenario_table() -> None:
    results = {"bandit-breaker": run("bandit-breaker", 0)}
    page = report.markdown(report.without_series(results), 0, {"bandit-breaker": "img/x.png"})
    assert page.startswith("# Decision quality")
    assert "| bandit-breaker | dead-lettered share" in page
    assert "![bandit-breaker](img/x.png)" in page


def test_sweep_rows_reach_the_json(monkeypatch) -> None:
    from router_stream.sim import sweep

    def one_setting(seed: int) -> list[dict]:
        scenario = sweep._consensus(consensus={**sweep.EXAMPLE_CONSENSUS, "mad_k": 3.0})
        return [{"mad_k": 3.0, **sweep._consensus_row(scenario, seed)}]

    monkeypatch.setattr(sweep, "SWEEPS", {"mad_k": ("mad_k", one_setting)})
    code, out, _ = _invoke("bandit-breaker", "--sweep", "--json")
    assert code == 0
    [row] = json.loads(out)["sweep"]["mad_k"]["rows"]
    assert row["mad_k"] == 3.0 and row["MAE / floor"] > 0.9  # nothing beats the floor by much


@pytest.mark.parametrize(("args", "why"), [
    (["--e2e"], "name the routing SCENARIOs"),
    (["consensus", "--e2e"], "runs in process only"),
])
def test_e2e_is_refused_where_it_cannot_run(args: list[str], why: str) -> None:
    _register()
    result = CliRunner().invoke(cli, ["simulate", *args])
    assert result.exit_code != 0 and why in result.output
