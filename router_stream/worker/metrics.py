"""The worker's Prometheus metrics (SPEC §7 names), on a registry per worker.

A registry per :class:`WorkerMetrics` (not the process-global one) lets tests run several workers
in one process and read each one's numbers. Latency buckets span 0.5 ms … 1 s: a batch of 500
signals is decided, produced, persisted and committed in tens of milliseconds.

Extensions beyond SPEC §7 (documented in docs/worker.md): ``router_batch_size``,
``router_transient_retries_total{step}``, ``router_ready``, ``router_policy_info{version}``,
``router_breaker_transitions_total{destination,to_state}``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0)
CONFIDENCE_BUCKETS = (.1, .2, .3, .4, .5, .6, .7, .8, .9, .95, 1.0)
BREAKER_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.signals_received = Counter(
            "signals_received", "Signals consumed, by kind ('unknown' when not decided)",
            ["kind"], registry=r)
        self.latency = Histogram(
            "router_latency_seconds", "Fetch to offset commit, per signal", ["kind"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.routing_errors = Counter(
            "routing_errors", "Failed produce attempts to routed.<destination>",
            ["destination"], registry=r)
        self.dlq = Counter("dlq", "Records sent to the DLQ", ["reason"], registry=r)
        self.retry_attempts = Counter(
            "retry_attempts", "Signals parked on router.retry for another attempt", registry=r)
        self.dlq_backlog = Gauge("dlq_backlog", "Pending dlq_entries rows", registry=r)
        self.trust_score = Gauge("trust_score", "Current trust score", ["source"], registry=r)
        self.breaker_state = Gauge(
            "breaker_state", "0 closed, 1 half_open, 2 open", ["destination"], registry=r)
        self.confidence = Histogram(
            "decision_confidence", "Confidence of routing decisions",
            buckets=CONFIDENCE_BUCKETS, registry=r)
        self.consumer_lag = Gauge(
            "router_consumer_lag", "High watermark minus next offset to process",
            ["topic", "partition"], registry=r)
        # --- extensions
        self.batch_size = Histogram(
            "router_batch_size", "Records per processed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 5000), registry=r)
        self.transient_retries = Counter(
            "router_transient_retries", "Retries of a commit step after a transient failure",
            ["step"], registry=r)
        self.ready = Gauge("router_ready", "1 when /readyz answers 200", registry=r)
        self.policy_info = Gauge(
            "router_policy_info", "1 for the active policy version", ["version"], registry=r)
        self.breaker_transitions = Counter(
            "router_breaker_transitions", "Breaker transitions seen", ["destination", "to_state"],
            registry=r)
        self.rollout_shadow = Counter(
            "router_rollout_shadow", "Shadow evaluations of a rollout candidate",
            ["candidate", "agree"], registry=r)
        self.rollout_rollbacks = Counter(
            "router_rollout_rollbacks", "Rollout candidates rolled back automatically",
            ["candidate"], registry=r)

    def set_state(self, trust: dict[str, float], breakers: dict[str, str]) -> None:
        for source, score in trust.items():
            self.trust_score.labels(source).set(score)
        for dest, state in breakers.items():
            self.breaker_state.labels(dest).set(BREAKER_STATE_VALUE.get(state, 0))

    def set_policy(self, version: str) -> None:
        self.policy_info.clear()
        self.policy_info.labels(version).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
