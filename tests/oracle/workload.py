"""A mixed workload run through :class:`RouterEngine` with a fixed seed and clock.

Every step feeds the engine what a worker would (signal batches, health, outcomes, control
commands, ticks) and records what came out: each output record (topic, key, value, headers and
the fields the worker reads beside them), breaker transitions, shadow outcomes, rollout events,
control results and a state snapshot. :func:`run` returns one JSON line per step; the golden
file ``tests/data/engine_oracle.jsonl`` holds them as today's code produced them
(``python -m tests.oracle.record`` writes it again after an intended change).

Inputs go through the public parsers and the policy compiler, as in the worker, so the workload
does not depend on how the engine or the models are built inside.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import yaml

from router_stream.core.compiled import load_compiled
from router_stream.core.deadletter import dead_letter
from router_stream.core.engine import RouterEngine
from router_stream.core.models import DlqReason
from router_stream.core.outputs import BatchResult
from router_stream.core.parsing import Rejection, parse_control, parse_health, parse_outcome
from router_stream.core.wire import origin_key

STACKTRACE = "x-dlq-stacktrace"
SEED = 20_261_206
GROUP = "oracle-group"
T0 = 1_800_000_000.0

POLICY: dict[str, Any] = {
    "name": "oracle",
    "trust": {"weights": {"freshness": 0.2, "error_rate": 0.3, "latency": 0.1,
                          "deviation": 0.2, "availability": 0.2},
              "stale_after_s": 60, "latency_target_ms": 250},
    "breaker": {"failure_threshold": 3, "error_rate_threshold": 0.5, "window_s": 60,
                "min_volume": 5, "cooldown_s": 10, "max_cooldown_s": 120,
                "backoff_multiplier": 2.0, "half_open_probes": 2},
    "destinations": {"pager": {"capacity": 50}, "backup": {"capacity": 50}, "chat": {},
                     "mail": {"capacity": 100}, "hook": {"capacity": 10}, "sms": {},
                     "bulk-a": {"capacity": 5}, "bulk-b": {"capacity": 20}, "store": {},
                     "audit": {}, "archive": {}},
    "classify": [
        {"name": "metrics", "when": {"field": "metric", "exists": True}, "kind": "observation"},
        {"name": "alerts", "when": {"field": "payload.severity", "in": ["critical", "high"]},
         "kind": "alert", "priority": 8},
        {"name": "notes", "when": {"field": "payload.channel", "exists": True},
         "kind": "notification", "priority": 3},
        {"name": "bulk", "when": {"field": "payload.bulk", "equals": True}, "kind": "bulk"},
        {"name": "weighted", "when": {"field": "payload.spread", "exists": True},
         "kind": "spread"},
        {"name": "ucb", "when": {"field": "payload.explore", "equals": "ucb"}, "kind": "explore"},
        {"name": "greedy", "when": {"field": "payload.explore", "equals": "greedy"},
         "kind": "exploit"},
        {"name": "fanout", "when": {"field": "payload.audit", "equals": True}, "kind": "audit"},
    ],
    "routes": {
        "alert": {"strategy": "first_healthy", "tiers": [["pager"], ["backup"], ["chat"]],
                  "retry": {"max_attempts": 2, "delay_ms": 1500}, "dedupe": True,
                  "on_duplicate": "drop"},
        "notification": {"strategy": "thompson", "destinations": ["mail", "chat", "hook"],
                         "bandit": {"seed": 3, "prior_alpha": 1, "prior_beta": 1,
                                    "discount": 0.98},
                         "dedupe": True, "on_duplicate": "dlq"},
        "bulk": {"strategy": "least_loaded", "destinations": ["bulk-a", "bulk-b"]},
        "spread": {"strategy": "weighted", "destinations": ["mail", "hook", "sms"]},
        "explore": {"strategy": "ucb", "destinations": ["mail", "chat", "sms"]},
        "exploit": {"strategy": "greedy", "destinations": ["hook", "sms"],
                    "bandit": {"epsilon": 0.3}},
        "audit": {"strategy": "fanout", "tiers": [["audit", "archive"], ["mail"]]},
        "observation": {"strategy": "consensus", "destinations": ["store"],
                        "consensus": {"mad_k": 2.5, "max_dispersion": 0.05,
                                      "max_staleness_s": 30, "synthetic_max_age_s": 300,
                                      "min_sources": 2},
                        "dedupe": False},
    },
    "defaults": {"unclassified": "dlq", "unrouted": "dlq", "priority": 5},
    "tenants": {"default": {"rate": 1000, "burst": 2000}, "tiny": {"rate": 0.001, "burst": 2}},
}


def _policy_text(rollout: dict[str, Any] | None = None) -> str:
    policy = copy.deepcopy(POLICY)
    if rollout is not None:
        policy["rollout"] = rollout
    return yaml.safe_dump(policy, sort_keys=True)


def _candidate() -> dict[str, Any]:
    """The rollout candidate: alerts skip the pager, notifications go by weight, and signals
    the baseline classifies as ``spread`` are unclassified (so dead-lettered)."""
    candidate = copy.deepcopy(POLICY)
    candidate["routes"]["alert"] = {"strategy": "first_healthy", "tiers": [["backup"], ["chat"]]}
    candidate["routes"]["notification"] = {"strategy": "weighted",
                                           "destinations": ["mail", "chat"]}
    del candidate["routes"]["spread"]
    candidate["classify"] = [r for r in candidate["classify"] if r["kind"] != "spread"]
    return candidate


@dataclass
class Record:
    """An inbound Kafka record, as the worker's consumer hands it over."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp_type: int = 0


class _Feed:
    """Numbers input records per topic-partition, as a broker would."""

    def __init__(self) -> None:
        self._next: dict[tuple[str, int], int] = {}

    def record(self, value: bytes | None, *, at: float, key: bytes | None = b"k",
               topic: str = "signals", partition: int = 0,
               headers: list[tuple[str, bytes | None]] | None = None,
               timestamp_type: int = 0) -> Record:
        offset = self._next.get((topic, partition), 0)
        self._next[(topic, partition)] = offset + 1
        return Record(topic, partition, offset, key, value, int(at * 1000), headers or [],
                      timestamp_type)


def _signal(sid: str, at: float, **fields: Any) -> bytes:
    body: dict[str, Any] = {"signal_id": sid, "sender_id": "svc-1", "ts": int(at * 1000)}
    body.update(fields)
    return orjson.dumps(body)


# --- serialising outputs ---------------------------------------------------------------------


def _bytes(value: bytes | None) -> Any:
    """Bytes as text when they are UTF-8 (readable diffs), else as base64; ``None`` stays."""
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode()}


def _headers(headers: list[tuple[str, bytes | None]] | None) -> Any:
    """Headers in order; of a traceback only its last line (file paths and line numbers in
    the rest change with any edit of the code)."""
    if headers is None:
        return None
    return [[k, _bytes(v.strip().splitlines()[-1] if k == STACKTRACE and v else v)]
            for k, v in headers]


def _plain(value: Any) -> Any:
    """A JSON-able view of transitions, events and snapshots (their own fields, in order)."""
    if hasattr(type(value), "model_fields"):  # a pydantic model
        return {name: _plain(getattr(value, name)) for name in type(value).model_fields}
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if hasattr(value, "value") and type(value).__module__.startswith("router_stream"):
        return value.value  # an enum
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return _bytes(value)
    return value


def outputs(result: BatchResult) -> dict[str, Any]:
    """Every record a batch asks the worker to produce, plus what it reports beside them.

    A record's timestamp is the producer's (the engine sets none): ``timestamp`` is recorded as
    ``None`` so a change that starts setting one shows here.
    """
    records: list[dict[str, Any]] = []
    for r in result.routed:
        records.append({"topic": f"routed.{r.destination}", "key": _bytes(r.key),
                        "value": _bytes(r.value), "headers": _headers(r.headers),
                        "timestamp": None, "signal_id": r.signal_id})
    for d in result.decisions:
        records.append({"topic": "router.decisions", "key": _bytes(d.signal_id.encode()),
                        "value": _bytes(d.to_json()), "headers": None, "timestamp": None})
    for q in result.dlq:
        records.append({"topic": "router.dlq", "key": _bytes(q.entry.original_key),
                        "value": _bytes(q.entry.original_value), "headers": _headers(q.headers),
                        "timestamp": None, "dlq_key": q.dlq_key,
                        "entry": _plain(q.entry)})
    for t in result.retries:
        records.append({"topic": "router.retry", "key": _bytes(t.key), "value": _bytes(t.value),
                        "headers": _headers(t.headers), "timestamp": None,
                        "not_before": t.not_before, "attempts": t.attempts,
                        "signal_id": t.signal_id})
    return {"records": records, "dropped_duplicates": result.dropped_duplicates,
            "breaker_transitions": _plain(result.breaker_transitions),
            "shadow": _plain(result.shadow), "rollout_events": _plain(result.rollout_events)}


# --- the workload ----------------------------------------------------------------------------


class _Run:
    """The engine, the input numbering and the recorded steps."""

    def __init__(self) -> None:
        self.engine = RouterEngine(load_compiled(_policy_text(), "oracle.yaml"), seed=SEED,
                                   dedupe_window_s=600.0, dedupe_max_entries=10_000,
                                   consumer_group=GROUP)
        self.feed = _Feed()
        self.steps: list[dict[str, Any]] = []

    def _log(self, step: str, now: float, **what: Any) -> None:
        snap = self.engine.snapshot(now)
        self.steps.append({"step": step, "now": now, **what, "state": _plain(snap)})

    def batch(self, step: str, now: float, records: list[Record]) -> BatchResult:
        result = self.engine.decide_batch(records, now)
        self._log(step, now, **outputs(result))
        return result

    def health(self, step: str, now: float, events: list[dict[str, Any]]) -> None:
        self._fold(step, now, events, parse_health, self.engine.apply_health)

    def outcomes(self, step: str, now: float, events: list[dict[str, Any]]) -> None:
        self._fold(step, now, events, parse_outcome, self.engine.apply_outcome)

    def _fold(self, step: str, now: float, events: list[dict[str, Any]], parse: Any,
              apply: Any) -> None:
        """State-topic events, parsed from their JSON as the worker reads them, then folded."""
        moves = []
        for body in events:
            event = parse(orjson.dumps(body), record_ts_ms=int(now * 1000))
            assert not isinstance(event, Rejection), event
            moves += apply(event, now)
        self._log(step, now, breaker_transitions=_plain(moves))

    def control(self, step: str, now: float, body: dict[str, Any], publish: str | None = None
                ) -> None:
        cmd = parse_control(orjson.dumps(body))
        assert not isinstance(cmd, Rejection), cmd
        compiled = load_compiled(publish, "published.yaml") if publish is not None else None
        res = self.engine.apply_control(cmd, now, compiled)
        self._log(step, now, control={"accepted": res.accepted, "message": res.message,
                                      "policy_changed": res.policy_changed,
                                      "transitions": _plain(res.transitions)})

    def publish(self, step: str, now: float, mode: dict[str, Any], margin: float,
                min_signals: int) -> None:
        """Publish the policy with :func:`_candidate` rolled out as ``mode`` says."""
        rollout = {"candidate": _candidate(), **mode,
                   "rollback": {"max_dlq_rate_delta": margin, "max_no_healthy_delta": margin,
                                "window_s": 60, "min_signals": min_signals}}
        self.control(step, now, {"type": "policy_publish", "version": f"{mode['mode']}-1",
                                 "policy_yaml": "x"}, publish=_policy_text(rollout))

    def tick(self, step: str, now: float) -> None:
        self._log(step, now, breaker_transitions=_plain(self.engine.tick(now)))


def _first_batch(run: _Run, now: float) -> list[Record]:
    """One record of each kind of input, every strategy and every rejection."""
    f = run.feed
    at = now - 1.0
    trace = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
             ("tracestate", b"vendor=1"), ("x-app", None), ("x-empty", b"")]
    return [
        f.record(_signal("a1", at, payload={"severity": "critical", "msg": "db down"}),
                 at=at, key=b"svc-1", headers=trace),
        f.record(_signal("a1", at, payload={"severity": "critical"}), at=at, key=b"svc-1"),
        f.record(_signal("n1", at, tenant="acme", payload={"channel": "mail", "note": "\u00e9"}),
                 at=at, key=None),
        f.record(_signal("n1", at, tenant="acme", payload={"channel": "mail"}), at=at),
        f.record(_signal("b1", at, payload={"bulk": True}), at=at, key=b"bulk"),
        f.record(_signal("w1", at, payload={"spread": 1}), at=at),
        f.record(_signal("u1", at, payload={"explore": "ucb"}), at=at),
        f.record(_signal("g1", at, payload={"explore": "greedy"}), at=at),
        f.record(_signal("f1", at, payload={"audit": True}), at=at, headers=[("x-trace-id", b"t1")]),
        f.record(_signal("x1", at, payload={"nothing": "matches"}), at=at),
        f.record(b'{"signal_id": "bad", "sender_id": ', at=at, key=b"broken"),
        f.record(b"\xff\xfe not utf-8", at=at, key=b"\x00\x01"),
        f.record(b"[1, 2, 3]", at=at),
        f.record(None, at=at, key=b"tombstone"),
        f.record(orjson.dumps({"signal_id": "m1", "payload": {"severity": "high"}}), at=at),
        f.record(orjson.dumps({"sender_id": "svc-9", "payload": {"severity": "high",
                                                                  "derived": True}}), at=at),
        f.record(_signal("nul\u0000id", at, payload={"severity": "high", "text": "a\u0000b"}),
                 at=at, headers=[("x-nul", b"\x00"), ("x-null", None)]),
        f.record(b'{"signal_id": "esc\\u0000", "sender_id": "s", "payload": {"severity": '
                 b'"high", "t": "\\u0000\\ud83d\\ude00"}}', at=at),
        f.record(_signal("e1", now - 100.0, ttl_ms=1000, payload={"severity": "high"}), at=at),
        f.record(_signal("t1", at, tenant="tiny", payload={"severity": "high"}), at=at),
        f.record(_signal("t2", at, tenant="tiny", payload={"severity": "high"}), at=at),
        f.record(_signal("t3", at, tenant="tiny", payload={"severity": "high"}), at=at),
        f.record(_signal("p1", at, priority=11, payload={"severity": "high"}), at=at),
        f.record(_signal("k1", at, kind="alert", priority=2, payload={}), at=at,
                 timestamp_type=1),
        f.record(_signal("k2", at, kind="unknown-kind"), at=at),
        # a header value that is not bytes: deciding the record fails, the batch goes on
        f.record(_signal("h1", at, payload={"severity": "high"}), at=at,
                 headers=[("x-dlq-original-topic", "signals"),  # type: ignore[list-item]
                          ("x-dlq-original-partition", b"0"), ("x-dlq-original-offset", b"9")]),
    ]


def _observations(run: _Run, now: float, tag: str, values: dict[str, float]) -> list[Record]:
    at = now - 0.5
    return [run.feed.record(_signal(f"obs-{tag}-{src}", at, metric="cpu", source_id=src,
                                    value=value), at=at, key=src.encode())
            for src, value in values.items()]


def _retried(run: _Run, now: float, sid: str, attempts: int, origin_offset: int,
             extra: list[tuple[str, bytes | None]] | None = None) -> Record:
    """A record re-fed from ``router.retry``: its origin and attempts in headers."""
    headers: list[tuple[str, bytes | None]] = [
        ("x-app", b"kept"),
        ("x-dlq-original-topic", b"signals"), ("x-dlq-original-partition", b"3"),
        ("x-dlq-original-offset", str(origin_offset).encode()),
        ("x-dlq-attempts", str(attempts).encode()),
        ("x-dlq-first-failed-at", repr(now - 30.0).encode()),
        ("x-retry-not-before", repr(now - 1.0).encode()),
        ("x-signal-id", sid.encode()),
        *(extra or []),
    ]
    return run.feed.record(_signal(sid, now - 40.0, payload={"severity": "critical"}),
                           at=now - 2.0, topic="router.retry", headers=headers, key=b"retry")


def _replayed(run: _Run, now: float, sid: str, value: bytes | None) -> Record:
    """A record an operator replayed from the DLQ: the earlier trip's headers, an ``x-dlq-id``."""
    headers: list[tuple[str, bytes | None]] = [
        ("x-dlq-reason", b"no_healthy_destination"), ("x-dlq-error", b"earlier"),
        ("x-dlq-original-topic", b"signals"), ("x-dlq-original-partition", b"1"),
        ("x-dlq-original-offset", b"77"), ("x-dlq-attempts", b"1"),
        ("x-dlq-first-failed-at", repr(now - 500.0).encode()),
        ("x-dlq-original-timestamp", str(int((now - 600.0) * 1000)).encode()),
        ("x-dlq-original-timestamp-type", b"LogAppendTime"),
        ("x-dlq-consumer-group", b"old-group"), ("x-dlq-id", b"dlq-42"),
        ("traceparent", b"00-11111111111111111111111111111111-2222222222222222-01"),
        ("x-app", None),
    ]
    return run.feed.record(value, at=now - 1.0, headers=headers, key=b"replayed")


def _steps(run: _Run) -> Iterator[None]:
    """The workload, one step at a time (each yields after recording)."""
    t = T0
    run.health("health: sources and destinations report", t, [
        {"source_id": "src-a", "ok": True, "latency_ms": 40, "error_rate": 0.01,
         "last_data_ts": int((t - 1) * 1000), "completeness": 1.0},
        {"source_id": "src-b", "ok": True, "latency_ms": 90},
        {"source_id": "src-c", "error_rate": 0.02},
        {"source_id": "src-d", "latency_ms": 900, "completeness": 0.5},
        {"source_id": "hook", "error_rate": 0.9},
    ])
    yield
    run.outcomes("outcomes: bandit rewards", t + 0.5, [
        {"signal_id": f"warm-{i}", "destination": dest, "ok": ok, "latency_ms": 10 + i,
         **({"reward": 0.25} if i % 5 == 0 else {})}
        for i, (dest, ok) in enumerate([("mail", True), ("chat", True), ("hook", False),
                                        ("mail", True), ("sms", True), ("chat", False),
                                        ("mail", True), ("hook", False), ("sms", False),
                                        ("bulk-a", True)])
    ])
    yield
    t += 1.0
    run.batch("batch: every strategy and every rejection", t, _first_batch(run, t))
    yield
    run.batch("batch: consensus with an outlier", t + 0.2, _observations(
        run, t + 0.2, "1", {"src-a": 10.0, "src-b": 10.1, "src-c": 9.95, "src-d": 55.0}))
    yield
    t += 2.0
    run.outcomes("outcomes: the pager fails and its breaker opens", t, [
        {"signal_id": f"pf-{i}", "destination": "pager", "ok": False, "ts": t + i * 0.01}
        for i in range(4)
    ])
    yield
    alerts = [run.feed.record(_signal(f"fo{i}", t, payload={"severity": "high"}), at=t,
                              key=f"k{i}".encode()) for i in range(3)]
    run.batch("batch: alerts fail over while the pager is open", t + 0.5, alerts)
    yield
    run.control("control: force the backup open", t + 0.6,
                {"type": "breaker_force", "target": "backup", "state": "open",
                 "reason": "maintenance"})
    yield
    run.control("control: drain chat", t + 0.7,
                {"type": "override_set", "override_id": "drain-chat", "action": "drain",
                 "target": "chat", "expires_at": t + 100.0, "issued_at": t + 0.7})
    yield
    records = [run.feed.record(_signal(f"nh{i}", t, payload={"severity": "high"}), at=t,
                               headers=[("x-trace-id", b"nh")]) for i in range(2)]
    records.append(_retried(run, t + 1.0, "again", 1, 500))
    records.append(_retried(run, t + 1.0, "last", 2, 501, [("x-dlq-reason", b"stale")]))
    records.append(_retried(run, t + 1.0, "bad-origin", 1, -4))
    run.batch("batch: no healthy destination, retries and exhaustion", t + 1.0, records)
    yield
    run.control("control: clear the drain", t + 1.1,
                {"type": "override_clear", "override_id": "drain-chat"})
    yield
    run.control("control: reset the backup", t + 1.2, {"type": "breaker_reset",
                                                          "target": "backup"})
    yield
    run.control("control: force alerts of acme to sms", t + 1.3,
                {"type": "override_set", "override_id": "acme-sms", "tenant": "acme",
                 "kind": "alert", "destinations": ["sms"], "reason": "incident 7",
                 "expires_at": t + 60.0})
    yield
    run.control("control: an override naming an unknown destination is refused", t + 1.35,
                {"type": "override_set", "override_id": "nowhere", "destinations": ["mars"],
                 "expires_at": t + 60.0})
    yield
    run.control("control: exclude src-b from consensus", t + 1.4,
                {"type": "override_set", "override_id": "no-b", "action": "exclude_source",
                 "target": "src-b", "expires_at": t + 8.0})
    yield
    t += 2.0
    records = [run.feed.record(_signal("ov1", t, tenant="acme", payload={"severity": "high"}),
                               at=t),
               run.feed.record(_signal("ov2", t, tenant="other", payload={"severity": "high"}),
                               at=t),
               *_observations(run, t, "2", {"src-a": 10.2, "src-b": 99.0, "src-c": 10.1})]
    records.append(_replayed(run, t, "rp1", _signal("rp1", t - 600.0,
                                                      payload={"severity": "high"})))
    records.append(_replayed(run, t, "rp1", _signal("rp1", t - 600.0,
                                                      payload={"severity": "high"})))
    records.append(_replayed(run, t, "bad", b"not json at all"))
    run.batch("batch: overrides, excluded source, replays", t, records)
    yield
    run.tick("tick: before the cooldown", t + 1.0)
    yield
    t += 15.0
    run.tick("tick: the pager's cooldown elapsed (half-open)", t)
    yield
    probes = [run.feed.record(_signal(f"pr{i}", t, payload={"severity": "critical"}), at=t,
                              key=b"probe") for i in range(4)]
    run.batch("batch: half-open probes", t + 0.1, probes)
    yield
    run.outcomes("outcomes: the probes succeed and the pager closes", t + 0.3, [
        {"signal_id": f"pr{i}", "destination": "pager", "ok": True, "latency_ms": 20}
        for i in range(2)
    ])
    yield
    run.health("health: error rates decide breakers", t + 0.4, [
        {"source_id": "sms", "error_rate": 0.8}, {"source_id": "sms", "error_rate": 0.9},
        {"source_id": "sms", "ok": False}, {"source_id": "mail", "error_rate": 0.1},
    ])
    yield
    bulk = [run.feed.record(_signal(f"bulk{i}", t, payload={"bulk": True}), at=t,
                            key=None) for i in range(8)]
    bulk += [run.feed.record(_signal(f"mix{i}", t, payload={"channel": "x", "spread": i,
                                                             "explore": "ucb"}), at=t)
             for i in range(6)]
    run.batch("batch: load and learning", t + 0.5, bulk)
    yield
    run.control("control: acme override cleared", t + 0.6,
                {"type": "override_clear", "override_id": "acme-sms"})
    yield
    t += 5.0
    run.publish("control: publish a canary rollout", t,
                {"mode": "canary", "share": 0.5}, margin=0.05, min_signals=6)
    yield
    rollout = [run.feed.record(_signal(f"c{i}", t, tenant="acme",
                                       payload={"severity": "high"} if i % 3 else
                                       {"spread": i}), at=t, key=f"key-{i}".encode())
               for i in range(14)]
    run.batch("batch: canary traffic", t + 0.5, rollout)
    yield
    rollout = [run.feed.record(_signal(f"cc{i}", t, payload={"spread": i}), at=t,
                               key=f"key-{i}".encode()) for i in range(14)]
    run.batch("batch: the canary is worse and rolls back", t + 1.0, rollout)
    yield
    t += 5.0
    run.publish("control: publish a shadow rollout", t,
                {"mode": "shadow", "sample": 0.6}, margin=0.5, min_signals=1000)
    yield
    records = [run.feed.record(_signal(f"s{i}", t, payload=[{"severity": "high"},
                                                             {"channel": "c"}, {"spread": 1},
                                                             {"audit": True}][i % 4]),
                               at=t, key=f"s{i}".encode()) for i in range(12)]
    records += _observations(run, t, "3", {"src-a": 10.0, "src-c": 10.05, "src-d": 10.1})
    run.batch("batch: shadow traffic", t + 0.5, records)
    yield
    run.control("control: rolling back a rollout that is not running", t + 0.6,
                {"type": "rollout_rollback", "candidate_version": "nope"})
    yield
    candidate = run.engine.rollout.candidate.version if run.engine.rollout else "none"
    run.control("control: roll the shadow back", t + 0.7,
                {"type": "rollout_rollback", "candidate_version": candidate})
    yield
    run.control("control: a policy that failed validation is refused", t + 0.8,
                {"type": "policy_publish", "version": "broken", "policy_yaml": "x"})
    yield
    t += 1.0
    late = run.feed.record(_signal("late", t, payload={"severity": "high"}), at=t,
                           headers=[("x-dlq-original-timestamp", b"123"),
                                    ("x-dlq-original-timestamp-type", b"CreateTime")])
    refused = dead_letter(late, DlqReason.PROCESSING_ERROR, "broker refused:\n too  large", t,
                          signal_id="late", kind="alert", consumer_group=GROUP)
    bogus = run.feed.record(b"{}", at=t, headers=[("x-dlq-original-topic", b"signals"),
                                                   ("x-dlq-original-partition", b"x"),
                                                   ("x-dlq-original-offset", b"1")])
    replay = _replayed(run, t, "rp", b"{}")
    run.steps.append({"step": "dead_letter and origin_key", "now": t,
                      "records": [{"dlq_key": refused.dlq_key, "headers": _headers(
                          refused.headers), "entry": _plain(refused.entry)}],
                      "origin_keys": [origin_key(late), origin_key(bogus), origin_key(replay)]})
    yield


def run() -> list[bytes]:
    """The workload's steps, each one JSON line (sorted keys), in order."""
    state = _Run()
    for _ in _steps(state):
        pass
    return [orjson.dumps(step, option=orjson.OPT_SORT_KEYS) for step in state.steps]
