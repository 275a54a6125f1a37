"""The engine's outputs on a recorded mixed workload, byte for byte against the golden file.

A refactor must leave every line unchanged. A change meant to alter the outputs regenerates the
file with ``python -m tests.oracle.record`` and commits the reviewed diff with it.
"""

from __future__ import annotations

import orjson

from tests.oracle.record import GOLDEN
from tests.oracle.workload import run


def test_the_engine_produces_exactly_the_recorded_outputs():
    expected = GOLDEN.read_bytes().splitlines()
    actual = run()
    for number, (want, got) in enumerate(zip(expected, actual, strict=False), start=1):
        if want != got:
            step = orjson.loads(want)["step"]
            raise AssertionError(f"step {number} ({step!r}) differs from {GOLDEN.name}:\n"
                                 f"expected {want[:2000]!r}\ngot      {got[:2000]!r}")
    assert len(actual) == len(expected), "the workload's number of steps changed"


def test_the_workload_is_deterministic_and_covers_every_output_kind():
    first = run()
    assert first == run()
    steps = [orjson.loads(line) for line in first]
    topics = {r["topic"].split(".")[0] + ("" if r["topic"].startswith("routed.") else
                                          "." + r["topic"].split(".")[1])
              for s in steps for r in s.get("records", []) if "topic" in r}
    assert topics == {"routed", "router.decisions", "router.dlq", "router.retry"}
    reasons = {r["entry"]["reason"] for s in steps for r in s.get("records", [])
               if "entry" in r}
    assert {"invalid_json", "invalid_signal", "unclassified", "no_route", "duplicate",
            "rate_limited", "expired", "processing_error", "retries_exhausted"} <= reasons
    assert any(s.get("shadow") for s in steps) and any(s.get("rollout_events") for s in steps)
    assert any(s.get("dropped_duplicates") for s in steps)
    assert any(s.get("breaker_transitions") for s in steps)
