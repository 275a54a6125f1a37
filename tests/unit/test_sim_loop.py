"""The simulator's stand-in for the worker feeds the engine as the worker does: state events by
event time, ticks, and retries re-fed once due (router_stream/sim/loop.py)."""

from __future__ import annotations

import yaml

from router_stream.core.outputs import BatchResult
from router_stream.sim.loop import EPOCH, CoreLoop

POLICY = yaml.safe_dump({
    "breaker": {"failure_threshold": 1, "cooldown_s": 100, "max_cooldown_s": 100},
    "destinations": {"a": {}},
    "classify": [{"name": "all", "when": {"field": "sender_id", "exists": True}, "kind": "work"}],
    "routes": {"work": {"strategy": "first_healthy", "destinations": ["a"],
                        "retry": {"max_attempts": 2, "delay_ms": 1000}}},
})


def test_retries_are_re_fed_when_due_and_end_in_the_dlq() -> None:
    seen: list[tuple[float, BatchResult]] = []
    loop = CoreLoop(POLICY, 0, lambda t, r: seen.append((t, r)))
    loop.outcome(0.5, signal_id="x", destination="a", ok=False)  # opens the breaker
    loop.signal(1.0, {"signal_id": "s1", "sender_id": "sim"})
    loop.advance(10.0)
    assert [(t, len(r.retries), [d.entry.reason.value for d in r.dlq]) for t, r in seen] == [
        (1.0, 1, []), (2.0, 1, []), (4.0, 0, ["retries_exhausted"])]
    [opened] = loop.transitions
    assert (opened.to_state.value, opened.at) == ("open", EPOCH + 0.5)


def test_state_events_apply_in_event_time_before_a_later_signal_only() -> None:
    seen: list[tuple[float, BatchResult]] = []
    loop = CoreLoop(POLICY, 0, lambda t, r: seen.append((t, r)))
    loop.outcome(2.0, signal_id="x", destination="a", ok=False)
    loop.signal(1.0, {"signal_id": "s1", "sender_id": "sim"})  # before the failure: routed
    loop.signal(3.0, {"signal_id": "s2", "sender_id": "sim"})  # after it: breaker open
    assert [len(r.decisions) for _, r in seen] == [1, 0]
    assert len(seen[1][1].retries) == 1
