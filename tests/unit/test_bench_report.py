"""bench/report.py says which sustainable rates held for the 30 s confirmation window."""

from __future__ import annotations

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
    assert "upper bound): router_pg, faust." in banner
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
