"""Per-tenant token buckets (SPEC §4 ``tenants``: rate and burst).

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a signal of
``cost`` tokens is admitted when that many are available. Starting full, a bucket therefore never
admits more than ``burst + rate·t`` cost over any interval of length ``t`` of its clock.

The clock is the caller's ``now``; the bucket keeps the largest ``now`` it has seen as
``last_ts``, so a clock that steps backwards (or an out-of-order event time) refills nothing
rather than minting tokens. The bound above holds on that monotone clock.

:class:`TenantBuckets` holds the buckets of one engine with memory bounded whatever tenant
values arrive. Tenants the policy names have one bucket each (as many as the policy names).
Tenants it does not name — any string a producer puts in ``tenant`` — are limited as
:class:`UnknownTenants` says: one shared bucket between all of them, or one each, kept in
least-recently-used order, dropped once refilled to full (a full bucket is what a new one
starts as: it carries no information) and capped at ``max_buckets`` (past it the least recently
used is forgotten, and that tenant starts full again); and optionally a ``total`` bucket all of
them draw from together, which is what stops a producer that rotates tenant values from getting
a fresh burst each time.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
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
    _check_cost(cost)
    ok, (tokens, last_ts) = _take(
        None if bucket.last_ts is None else (bucket.tokens, bucket.last_ts), now, rate, burst,
        cost)
    return ok, TokenBucket(tokens, last_ts)


Held = tuple[float, float]
"""A bucket as :class:`TenantBuckets` holds it: (tokens, last_ts); one is built per signal, and
a tuple is cheaper to build than a :class:`TokenBucket`."""


def _take(held: Held | None, now: float, rate: float, burst: float, cost: float
          ) -> tuple[bool, Held]:
    """:func:`admit` on a held bucket (None: never used, so full)."""
    if held is None:
        tokens, last_ts = burst, now
    else:
        tokens, last_ts = held
        if now > last_ts:  # a backwards or NaN clock refills nothing
            tokens = min(burst, tokens + (now - last_ts) * rate)
            last_ts = now
    if not math.isfinite(last_ts):
        raise ValueError(f"now must be finite, got {now}")
    if tokens >= cost:
        return True, (tokens - cost, last_ts)
    return False, (tokens, last_ts)


def _check_cost(cost: float) -> None:
    if not (cost >= 0.0):  # also rejects NaN
        raise ValueError(f"cost must be >= 0, got {cost}")


def admit_limit(
    bucket: TokenBucket, now: float, limit: RateLimit, cost: float = 1.0
) -> tuple[bool, TokenBucket]:
    """:func:`admit` with a validated :class:`RateLimit`."""
    return admit(bucket, now, limit.rate, limit.burst, cost)


@dataclass(frozen=True, slots=True)
class UnknownTenants:
    """How tenants the policy does not name share their limits (the policy's ``default``)."""

    shared: bool = False  # one bucket between all of them instead of one each
    total: RateLimit | None = None  # what all of them together may use
    max_buckets: int = 100_000  # own buckets remembered at most (least recently used go)

    def __post_init__(self) -> None:
        if self.max_buckets < 1:
            raise ValueError(f"max_buckets must be >= 1, got {self.max_buckets}")


NO_OPTIONS: UnknownTenants = UnknownTenants()


class TenantBuckets:
    """Every tenant's bucket, with memory bounded under unbounded tenant values."""

    __slots__ = ("_named", "_unknown", "_shared", "_total")

    def __init__(self) -> None:
        self._named: dict[str, Held] = {}
        self._unknown: OrderedDict[str, Held] = OrderedDict()
        self._shared: Held | None = None
        self._total: Held | None = None

    def __len__(self) -> int:
        """Buckets held for single tenants (named and unknown; not the shared and total ones)."""
        return len(self._named) + len(self._unknown)

    def admit(self, tenant: str, now: float, named: Mapping[str, RateLimit],
              default: RateLimit | None, options: UnknownTenants = NO_OPTIONS,
              cost: float = 1.0) -> bool:
        """Take ``cost`` tokens for ``tenant`` at ``now``: from its own bucket when ``named``
        lists it, else per ``default`` (each unknown tenant's limit; None: none) and
        ``options``. A refused signal takes no token from any bucket."""
        if not named and default is None and options.total is None:
            return True  # no limit applies to anyone
        _check_cost(cost)
        limit = named.get(tenant)
        if limit is not None:
            ok, self._named[tenant] = _take(self._named.get(tenant), now, limit.rate,
                                            limit.burst, cost)
            return ok
        total = options.total
        if total is None:  # the common case: each unknown tenant's own limit, or none
            return default is None or self._take_own(tenant, now, default, options, cost)
        ok, after = _take(self._total, now, total.rate, total.burst, cost)
        if not ok:
            return False  # not stored: a later refill from the old state is the same
        if default is not None and not self._take_own(tenant, now, default, options, cost):
            return False
        self._total = after
        return True

    def _take_own(self, tenant: str, now: float, limit: RateLimit, options: UnknownTenants,
                  cost: float) -> bool:
        if options.shared:
            ok, self._shared = _take(self._shared, now, limit.rate, limit.burst, cost)
            return ok
        buckets = self._unknown
        # re-inserted last: the most recently used
        ok, buckets[tenant] = _take(buckets.pop(tenant, None), now, limit.rate, limit.burst,
                                    cost)
        self._forget(now, limit, options.max_buckets)
        return ok

    def _forget(self, now: float, limit: RateLimit, max_buckets: int) -> None:
        """Drop least recently used buckets over the cap and those refilled to full: each is
        looked at once, so this costs O(1) per admit on average."""
        buckets = self._unknown
        rate, burst = limit.rate, limit.burst
        while buckets:
            tokens, last_ts = next(iter(buckets.values()))
            idle = now - last_ts
            refilled = tokens + idle * rate if idle > 0 else tokens
            if len(buckets) <= max_buckets and refilled < burst:
                return
            buckets.popitem(last=False)
