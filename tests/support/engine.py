"""The engine's inputs for unit tests: a fixed clock, inbound records, a compiled policy with one
route per strategy family, and signal bytes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from router_stream.core.breaker import BreakerConfig
from router_stream.core.compiled import CompiledPolicy, RouteSpec
from router_stream.core.ratelimit import RateLimit
from router_stream.core.strategies import ConsensusConfig
from router_stream.core.trust import TrustParams, TrustWeights

NOW = 1_800_000_000.0


def ms(t: float) -> int:
    """Wire timestamps are epoch milliseconds."""
    return int(t * 1000)


@dataclass
class Rec:
    """An inbound record as the engine reads it."""

    value: bytes | None
    offset: int = 0
    key: bytes | None = b"k"
    topic: str = "signals"
    partition: int = 0
    timestamp: int = int(NOW * 1000)
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)


def _classify(signal):
    sev = signal.payload.get("severity")
    if sev is not None:
        return ("alert", 1)
    if signal.metric is not None:
        return ("observation", None)
    return None


def policy(**changes: Any) -> CompiledPolicy:
    """Routes for alerts (first_healthy over three tiers), observations (consensus) and notes
    (thompson); ``changes`` replace fields of the compiled policy."""
    base = CompiledPolicy(
        version="p-test",
        routes={
            "alert": RouteSpec("alert", "first_healthy", (("pager",), ("slack",), ("email",))),
            "observation": RouteSpec("observation", "consensus", (("tsdb",),),
                                     consensus=ConsensusConfig(max_dispersion=0.1)),
            "note": RouteSpec("note", "thompson", (("a", "b", "c"),)),
        },
        classify=_classify,
        unclassified_kind=None,
        destinations=("pager", "slack", "email", "tsdb", "a", "b", "c"),
        capacity={},
        trust_weights=TrustWeights(),
        trust_params=TrustParams(),
        breaker=BreakerConfig(failure_threshold=3, cooldown_s=10.0, max_cooldown_s=60.0),
        tenant_limits={"tiny": RateLimit(rate=0.0, burst=2.0)},
        default_limit=None,
    )
    return replace(base, **changes)


def sig(i: int, **fields) -> bytes:
    body = {"signal_id": f"s{i}", "sender_id": "svc", "ts": int(NOW * 1000),
            "payload": {"severity": "high"}} | fields
    return orjson.dumps(body)
