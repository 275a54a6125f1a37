"""Per-tenant token buckets (SPEC §4 ``tenants``: rate and burst).

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a signal of
``cost`` tokens is admitted when that many are available. Starting full, a bucket therefore never
admits more than ``burst + rate·t`` cost over any interval of length ``t`` of its clock.

The clock is the caller's ``now``; the bucket keeps the largest ``now`` it has seen as
``last_ts``, so a clock that steps backwards (or an out-of-order event time) refills nothing
rather than minting tokens. The bound above holds on that monotone clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A tenant's limit: ``rate`` tokens/second, bucket capacity ``burst``."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate >= 0.0):
            raise ValueError(f"rate must be a finite number >= 0, got {self.rate}")
        if not (math.isfinite(self.burst) and self.burst > 0.0):
            raise ValueError(f"burst must be a finite number > 0, got {self.burst}")


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """Tokens available as of ``last_ts``; ``last_ts is None`` means never used (full)."""

    tokens: float = 0.0
    last_ts: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "last_ts": self.last_ts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenBucket:
        last_ts = data.get("last_ts")
        return cls(float(data["tokens"]), None if last_ts is None else float(last_ts))


def admit(
    bucket: TokenBucket, now: float, rate: float, burst: float, cost: float = 1.0
) -> tuple[bool, TokenBucket]:
    """Try to take ``cost`` tokens at ``now``. Returns whether admitted and the new bucket (the
    refill is kept even when the signal is refused)."""
    if not (cost >= 0.0):  # also rejects NaN
        raise ValueError(f"cost must be >= 0, got {cost}")
    if bucket.last_ts is None:
        tokens, last_ts = burst, now
    else:
        tokens, last_ts = bucket.tokens, bucket.last_ts
        if now > last_ts:  # a backwards or NaN clock refills nothing
            tokens = min(burst, tokens + (now - last_ts) * rate)
            last_ts = now
    if not math.isfinite(last_ts):
        raise ValueError(f"now must be finite, got {now}")
    if tokens >= cost:
        return True, TokenBucket(tokens - cost, last_ts)
    return False, TokenBucket(tokens, last_ts)


def admit_limit(
    bucket: TokenBucket, now: float, limit: RateLimit, cost: float = 1.0
) -> tuple[bool, TokenBucket]:
    """:func:`admit` with a validated :class:`RateLimit`."""
    return admit(bucket, now, limit.rate, limit.burst, cost)
