"""The per-batch state a strategy may consult, so the registry can call every selection
strategy the same way. Built once per batch by the router, never per signal."""

from __future__ import annotations

import random
from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from router_stream.core.strategies.bandits import BanditArm, BanditConfig


@dataclass(slots=True)
class SelectionContext:
    """``unavailable``: destinations ruled out (open breakers, no probe slot, drained);
    ``trust``: trust score per destination; ``arms``: bandit statistics; ``in_flight`` and
    ``capacity``: load per destination; ``rng``: the seeded random source."""

    rng: random.Random
    unavailable: Set[str] = frozenset()
    trust: Mapping[str, float] = field(default_factory=dict)
    arms: Mapping[str, BanditArm] = field(default_factory=dict)
    in_flight: Mapping[str, float] = field(default_factory=dict)
    capacity: Mapping[str, float] = field(default_factory=dict)
    bandit: BanditConfig = field(default_factory=BanditConfig)
    default_trust: float = 0.5
    default_capacity: float = 1.0
