"""Safe policy rollout: a candidate policy beside the active one (SPEC §4 ``rollout``).

* ``canary``: a stable hash share of keys is routed by the candidate for real, so one key (one
  sender, one metric) always sees the same policy while the share stays the same.
* ``shadow``: the candidate also evaluates a sample of signals — classification and destination
  choice only, against the same trust and breaker state, with its own random stream — and what
  it would have done is recorded next to what was done. Nothing is published for it and no
  state changes (no dedupe entry, no rate-limit token, no probe slot, no load).
* **Automatic rollback**: :class:`RolloutMonitor` keeps per-second counts of both arms over
  ``window_s``; once the candidate saw ``min_signals``, a DLQ rate or a no-healthy-destination
  rate above the baseline's by more than the configured margin rolls the candidate back.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from router_stream.core.compiled import CompiledPolicy

Arm = Literal["baseline", "candidate"]
Outcome = Literal["routed", "dlq", "no_healthy"]

_TWO_64 = float(2**64)


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    mode: Literal["shadow", "canary"]
    fraction: float  # canary: share of keys; shadow: sample of signals
    candidate: CompiledPolicy
    max_dlq_rate_delta: float = 0.02
    max_no_healthy_delta: float = 0.02
    window_s: float = 300.0
    min_signals: int = 100


def _unit(data: bytes) -> float:
    """A stable position in [0, 1) for ``data`` (the same on every worker and every run)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") / _TWO_64


def in_share(key: bytes | None, signal_id: str, fraction: float) -> bool:
    """Is this record's key in the candidate's share? Keyless records hash their signal id."""
    if fraction <= 0.0:
        return False
    if fraction >= 1.0:
        return True
    return _unit(key if key else signal_id.encode()) < fraction


@dataclass(frozen=True, slots=True)
class ShadowOutcome:
    """What the candidate would have done with one signal, next to what was done."""

    signal_id: str
    candidate_version: str
    baseline: tuple[str, ...] | str  # destinations, or the DLQ reason
    candidate: tuple[str, ...] | str
    agree: bool


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    """The candidate was rolled back (``reason`` says which rate, by how much)."""

    candidate_version: str
    baseline_version: str
    reason: str
    at: float
    baseline_rates: dict[str, float] = field(default_factory=dict)
    candidate_rates: dict[str, float] = field(default_factory=dict)


class RolloutMonitor:
    """Per-second outcome counts of both arms over a sliding window."""

    __slots__ = ("_spec", "_buckets")

    # bucket: [second, b_total, b_dlq, b_nh, c_total, c_dlq, c_nh]
    def __init__(self, spec: RolloutSpec) -> None:
        self._spec = spec
        self._buckets: deque[list[int]] = deque()

    def observe(self, arm: Arm, outcome: Outcome, now: float) -> None:
        second = int(now)
        buckets = self._buckets
        if not buckets or buckets[-1][0] < second:
            buckets.append([second, 0, 0, 0, 0, 0, 0])
        bucket = buckets[-1] if buckets[-1][0] <= second else self._bucket_for(second)
        base = 1 if arm == "baseline" else 4
        bucket[base] += 1
        if outcome == "dlq":
            bucket[base + 1] += 1
        elif outcome == "no_healthy":
            bucket[base + 1] += 1  # a signal nobody could take is also not routed
            bucket[base + 2] += 1

    def _bucket_for(self, second: int) -> list[int]:
        for bucket in reversed(self._buckets):
            if bucket[0] <= second:
                return bucket
        return self._buckets[0]

    def rates(self, now: float) -> tuple[dict[str, float], dict[str, float], int]:
        horizon = now - self._spec.window_s
        while self._buckets and self._buckets[0][0] < horizon:
            self._buckets.popleft()
        b = [0, 0, 0]
        c = [0, 0, 0]
        for bucket in self._buckets:
            for i in range(3):
                b[i] += bucket[1 + i]
                c[i] += bucket[4 + i]
        return _rates(b), _rates(c), c[0]

    def verdict(self, now: float, baseline_version: str) -> RolloutEvent | None:
        """A rollback event when the candidate is measurably worse, else ``None``."""
        base, cand, seen = self.rates(now)
        spec = self._spec
        if seen < spec.min_signals:
            return None
        for name, margin in (("dlq_rate", spec.max_dlq_rate_delta),
                             ("no_healthy_rate", spec.max_no_healthy_delta)):
            if cand[name] - base[name] > margin:
                return RolloutEvent(
                    candidate_version=spec.candidate.version, baseline_version=baseline_version,
                    reason=(f"candidate {name} {cand[name]:.3f} exceeds baseline "
                            f"{base[name]:.3f} by more than {margin:.3f} over {seen} signals"),
                    at=now, baseline_rates=base, candidate_rates=cand,
                )
        return None


def _rates(counts: list[int]) -> dict[str, float]:
    total = counts[0]
    if total == 0:
        return {"dlq_rate": 0.0, "no_healthy_rate": 0.0}
    return {"dlq_rate": counts[1] / total, "no_healthy_rate": counts[2] / total}
