"""The benchmark workload: fixed, seeded, documented (docs/benchmarks.md "Workload").

* Signals of ~200 bytes of JSON, three kinds that ``bench/bench_policy.yaml``'s classifier (the
  one of examples/policy.yaml) recognises, in a fixed mix::

      alert         20 %  payload.severity high/critical   -> first_healthy, 3 tiers
      notification  50 %  payload.channel_hint + tags      -> thompson bandit, 10 destinations
      observation   29 %  metric/source_id/value           -> consensus, 5 sources per metric
      invalid        1 %  half not JSON (truncated), half JSON without sender_id -> DLQ

* 1,000 sources (``src-000`` .. ``src-999``) send the signals; observations come from 200
  metrics x 5 sources. Health events for those sources go to ``source-health`` at 1 % of the
  signal rate (one after every 100th signal), cycling through the sources.
* Every signal starts with ``{"bench_t":<16 digits>,`` — its *scheduled* send time in epoch
  microseconds — so latency is measured from the open-loop schedule (no coordinated omission)
  for every contender: the raw and faust passthroughs copy the bytes, router-stream keeps the
  producer's bytes and splices its ``route`` object in before the closing brace.

Bodies are generated once from the seed (a cycle of ``CYCLE`` distinct bodies); the i-th signal
is body ``i % CYCLE`` with a unique ``signal_id`` and the send-time stamp. Pure: no I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import orjson

STAMP_PREFIX = b'{"bench_t":'
STAMP_DIGITS = 16
CYCLE = 10_000
KINDS = ("alert", "notification", "observation", "invalid")


@dataclass(frozen=True)
class WorkloadSpec:
    seed: int = 20_251_123
    sources: int = 1_000
    sources_per_metric: int = 5
    alert: float = 0.20
    notification: float = 0.50
    observation: float = 0.29
    invalid: float = 0.01
    health_every: int = 100  # one health event per this many signals: 1 % of the signal rate

    def kind_weights(self) -> tuple[float, ...]:
        return (self.alert, self.notification, self.observation, self.invalid)


@dataclass(frozen=True, slots=True)
class Body:
    """One signal without its stamp and id: ``key`` and the bytes that follow the id."""

    kind: str
    key: bytes
    tail: bytes


_SERVICES = ("checkout", "payments", "search", "inventory", "auth", "shipping", "ledger")
_ALERT_TEXT = ("p99 latency above 2s for 5m", "error budget burn rate 14x",
               "queue depth above threshold", "disk usage at 91 percent")
_NOTE_TEXT = ("Your weekly usage digest is ready", "Invoice 2291 was paid, thank you",
              "New sign-in from a new device", "Your export finished successfully")
_TAGS = (["user", "digest"], ["billing"], ["user", "security"], ["user"])
_CHANNELS = ("email", "slack", "webhook", "sms")


def source_id(n: int) -> str:
    return f"src-{n:03d}"


class Workload:
    """Deterministic signals and health events for one seed."""

    def __init__(self, spec: WorkloadSpec | None = None) -> None:
        self.spec = spec or WorkloadSpec()
        rng = random.Random(self.spec.seed)
        self.bodies: list[Body] = [self._body(rng) for _ in range(CYCLE)]
        self._health_order = list(range(self.spec.sources))
        rng.shuffle(self._health_order)
        self._health_rng = random.Random(self.spec.seed + 1)
        self._health_ok = [self._health_rng.random() >= 0.01 for _ in range(CYCLE)]
        self._health_latency = [round(self._health_rng.uniform(5, 80), 1) for _ in range(CYCLE)]

    # --- signals ------------------------------------------------------------------------------

    def _body(self, rng: random.Random) -> Body:
        s = self.spec
        kind = rng.choices(KINDS, weights=s.kind_weights())[0]
        sender = source_id(rng.randrange(s.sources))
        if kind == "alert":
            fields: dict[str, object] = {"sender_id": sender, "payload": {
                "severity": rng.choice(("high", "critical")), "service": rng.choice(_SERVICES),
                "message": rng.choice(_ALERT_TEXT)}}
            return Body(kind, sender.encode(), _tail(fields))
        if kind == "notification":
            fields = {"sender_id": sender, "payload": {
                "channel_hint": rng.choice(_CHANNELS), "tags": rng.choice(_TAGS),
                "text": rng.choice(_NOTE_TEXT), "ref": rng.randrange(10**6)}}
            return Body(kind, sender.encode(), _tail(fields))
        if kind == "observation":
            metric_n = rng.randrange(s.sources // s.sources_per_metric)
            source = source_id(metric_n * s.sources_per_metric
                               + rng.randrange(s.sources_per_metric))
            metric = f"svc.latency.p99.m{metric_n:03d}"
            fields = {"sender_id": source, "metric": metric, "source_id": source,
                      "value": round(120.0 + rng.gauss(0.0, 0.5), 3),
                      "payload": {"unit": "ms", "window": "60s", "host": f"h{rng.randrange(64)}"}}
            return Body(kind, metric.encode(), _tail(fields))
        # invalid: half bytes that are not JSON, half JSON that is not a signal (no sender_id)
        if rng.random() < 0.5:
            fields = {"sender_id": sender, "payload": {"text": "truncated"}}
            return Body(kind, sender.encode(), _tail(fields)[:-9])
        fields = {"payload": {"severity": "high", "message": "no sender"}}
        return Body(kind, sender.encode(), _tail(fields))

    def body(self, i: int) -> Body:
        return self.bodies[i % CYCLE]

    def signal(self, i: int, sched_us: int, id_prefix: bytes = b"s") -> tuple[bytes, bytes]:
        """(key, value) of the i-th signal, stamped with its scheduled send time."""
        b = self.bodies[i % CYCLE]
        return b.key, stamp(b.tail, sched_us, id_prefix, i)

    # --- health events ------------------------------------------------------------------------

    def is_health_turn(self, i: int) -> bool:
        """A health event goes out after every ``health_every``-th signal."""
        return i % self.spec.health_every == 0

    def health(self, j: int, now_ms: int) -> tuple[bytes, bytes]:
        """(key, value) of the j-th health event (sources in a seeded cyclic order)."""
        src = source_id(self._health_order[j % self.spec.sources])
        k = j % CYCLE
        event = {"source_id": src, "ts": now_ms, "ok": self._health_ok[k],
                 "latency_ms": self._health_latency[k], "error_rate": 0.0,
                 "last_data_ts": now_ms, "completeness": 1.0}
        return src.encode(), orjson.dumps(event)


def _tail(fields: dict[str, object]) -> bytes:
    """The JSON after the stamp, ts and signal_id: ``,"tenant":...}``."""
    return b"," + orjson.dumps(fields)[1:]


def stamp(tail: bytes, sched_us: int, id_prefix: bytes, i: int) -> bytes:
    """``{"bench_t":<sched_us>,"ts":<ms>,"signal_id":"<prefix>-<i>"`` + tail."""
    return b'{"bench_t":%016d,"ts":%d,"signal_id":"%b-%d"%b' % (
        sched_us, sched_us // 1000, id_prefix, i, tail)


def sched_us_of(value: bytes | None) -> int | None:
    """The scheduled send time stamped into a record (signal, routed copy or DLQ copy)."""
    if not value or not value.startswith(STAMP_PREFIX):
        return None
    try:
        return int(value[11:11 + STAMP_DIGITS])
    except ValueError:
        return None
