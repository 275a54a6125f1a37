"""Throughput of the pure core's hot-path pieces: parse_signal and Classifier.classify.

Run: ``python bench/core_parse_bench.py [policy.yaml]``. Single-threaded, one core; prints ops/s.
Not a test: numbers depend on the machine. Targets: parse >= 150k/s, classify >= 500k/s.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from router_stream.core.parsing import parse_signal

SIGNAL_WITH_ID = orjson.dumps({
    "signal_id": "s-000123",
    "tenant": "acme",
    "sender_id": "monitor-eu-1",
    "ts": 1714564800123,
    "priority": 5,
    "payload": {"severity": "critical", "service": "db", "region": "eu-west-1",
                "message": "disk almost full on db-7", "used_pct": 93.5},
})
SIGNAL_DERIVED_ID = orjson.dumps({
    "sender_id": "monitor-eu-1",
    "ts": "2024-05-01T12:00:00.123Z",
    "payload": {"severity": "critical", "service": "db", "region": "eu-west-1",
                "message": "disk almost full on db-7", "used_pct": 93.5},
})


def rate(fn: Callable[[], object], seconds: float = 1.5) -> float:
    """Calls per CPU-second of ``fn`` over about ``seconds`` of this process's CPU time.

    CPU time, not wall time: the targets are per core, and on a shared machine wall time
    mostly measures the neighbours.
    """
    for _ in range(1000):
        fn()
    n, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for _ in range(1000):
            fn()
        n += 1000
    return n / elapsed


def main() -> None:
    now = 1714564800.0
    print(f"signal sizes: {len(SIGNAL_WITH_ID)} B (with id), {len(SIGNAL_DERIVED_ID)} B (derived)")
    with_id = rate(lambda: parse_signal(SIGNAL_WITH_ID, record_ts_ms=0, now=now))
    derived = rate(lambda: parse_signal(SIGNAL_DERIVED_ID, record_ts_ms=0, now=now))
    print(f"parse_signal, id given     : {with_id:>10,.0f}/s")
    print(f"parse_signal, id derived   : {derived:>10,.0f}/s")
    print(f"orjson.loads alone         : {rate(lambda: orjson.loads(SIGNAL_WITH_ID)):>10,.0f}/s")
    policy_path = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/policy.yaml")
    if not policy_path.exists():
        return
    from router_stream.core.classify import compile_rules
    from router_stream.core.models import Signal
    from router_stream.core.policy import load_policy

    classifier = compile_rules(load_policy(policy_path.read_text(), str(policy_path)))
    signal = parse_signal(SIGNAL_WITH_ID, record_ts_ms=0, now=now)
    miss = parse_signal(orjson.dumps({"sender_id": "x", "ts": 1, "payload": {"a": 1}}),
                        record_ts_ms=0, now=now)
    assert isinstance(signal, Signal) and isinstance(miss, Signal)
    print(f"rules: {len(classifier.rules)}; first match -> {classifier.classify(signal)}")
    print(f"classify (matching signal) : {rate(lambda: classifier.classify(signal)):>10,.0f}/s")
    print(f"classify (no rule matches) : {rate(lambda: classifier.classify(miss)):>10,.0f}/s")


if __name__ == "__main__":
    main()
