"""What one batch sees of the engine's state: unavailable destinations, trust scores, probe
slots and load, derived once per batch rather than per signal.

Breakers and trust change only through the state topics, folded between batches, so a batch can
derive them once; what deciding a signal changes within a batch (a consensus observation's
trust, a half-open probe taken, a signal routed) is applied here, so a batch decides exactly as
its records would one by one. Methods that depend on the policy take the one deciding the
signal: in a canary rollout the candidate decides some signals of the batch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping

from router_stream.core import breaker as brk
from router_stream.core import trust as tr
from router_stream.core.breaker import BreakerState, BreakerTransition
from router_stream.core.compiled import CompiledPolicy, RouteSpec
from router_stream.core.overrides import ActiveOverrides, active
from router_stream.core.state import RouterState
from router_stream.core.strategies import LoadCounter, SelectionContext
from router_stream.core.wire import OutputEncoder, route_state

# A route's recorded trust and breaker states, and the two as a decision's members
RouteState = tuple[dict[str, float], dict[str, str], bytes]


class BatchView:
    """Per-batch derived state; built at the start of a batch, folded back at its end."""

    def __init__(self, state: RouterState, policy: CompiledPolicy, now: float) -> None:
        self._state = state
        self._now = now
        self.transitions: list[BreakerTransition] = []
        self.overrides: ActiveOverrides = active(state.overrides.values(), now)
        unavailable: set[str] = set(self.overrides.drained)
        self._half_open: dict[str, int] = {}
        for target, b in state.breakers.not_closed_items():
            cfg = policy.breaker_for(target)
            polled, moves = brk.poll(b, now, cfg)
            if moves:
                state.breakers[target] = polled
                self.transitions.extend(moves)
            if polled.state is BreakerState.OPEN:
                unavailable.add(target)
            elif polled.state is BreakerState.HALF_OPEN:
                slots = cfg.half_open_probes - polled.probes_in_flight - polled.probes_succeeded
                self._half_open[target] = max(0, slots)
                if slots <= 0:
                    unavailable.add(target)
        self.unavailable = unavailable
        self.unavailable_sources = unavailable | set(self.overrides.excluded)
        self._scores: Scores | None = None
        # Every source's deviation component, for consensus (a live view: see its class).
        self.track_record = tr.DeviationRecord(state.trust)
        # Keyed by route identity: a rollout candidate may route the same kind differently.
        self._contexts: dict[int, SelectionContext] = {}
        self._route_state: dict[int, RouteState] = {}
        self.probing = bool(self._half_open)
        # Signals routed per destination this batch, folded into the load counters at its end.
        self.routed: dict[str, int] = {}
        self.encoder = OutputEncoder(now)

    def trust_scores(self, policy: CompiledPolicy) -> Scores:
        """The batch's trust scores, weighted by the policy that first asks for them."""
        if self._scores is None:
            self._scores = Scores(self._state.trust, self._now, policy)
        return self._scores

    def route_state(self, route: RouteSpec, policy: CompiledPolicy) -> RouteState:
        """Trust and breaker state of a route's destinations, as recorded in its decisions:
        computed and serialised once per route and batch and shared by the batch's decisions
        (read-only)."""
        cached = self._route_state.get(id(route))
        if cached is None:
            dests = route.destinations
            trust = {d: self.trust_of(d, policy) for d in dests}
            breakers = {d: self.breaker_state(d) for d in dests}
            cached = (trust, breakers, route_state(trust, breakers))
            self._route_state[id(route)] = cached
        return cached

    def count_routed(self, destination: str, n: int = 1) -> None:
        """``n`` more signals routed to ``destination`` in this batch (negative: taken back)."""
        left = self.routed.get(destination, 0) + n
        if left > 0:
            self.routed[destination] = left
        else:
            self.routed.pop(destination, None)

    def fold_routed(self) -> None:
        """Add the batch's routed counts to the load counters (at the batch's end)."""
        load = self._state.load
        for dest, n in self.routed.items():
            counter = load.get(dest)
            load[dest] = counter.on_routed(n) if counter is not None else LoadCounter(routed=n)
        self.routed.clear()

    def trust_changed(self, target: str, state: tr.TrustState) -> None:
        """Keep the batch's scores equal to what a fresh batch would compute. Only the recorded
        state of routes that name ``target`` is dropped (docs/performance.md)."""
        for key, (trust, _breakers, _json) in list(self._route_state.items()):
            if target in trust:
                del self._route_state[key]
        if self._scores is not None:
            self._scores.changed(target, state)

    def trust_of(self, target: str, policy: CompiledPolicy) -> float:
        score = self.trust_scores(policy).get(target)
        return round(score if score is not None else policy.trust_params.initial, 4)

    def breaker_state(self, target: str) -> str:
        b = self._state.breakers.get(target)
        return b.state.value if b is not None else BreakerState.CLOSED.value

    def take_probe(self, target: str, policy: CompiledPolicy) -> bool:
        """Take a half-open probe slot (True for any non-half-open destination). A destination
        whose slots are taken is unavailable for the rest of the batch."""
        slots = self._half_open.get(target)
        if slots is None:
            return True
        if slots <= 0:
            self.unavailable.add(target)
            return False
        state = self._state
        allowed, updated, moves = brk.allow_request(state.breaker(target), self._now,
                                                    policy.breaker_for(target))
        state.breakers[target] = updated
        self.transitions.extend(moves)
        self._route_state.clear()
        self._half_open[target] = slots - 1 if allowed else 0
        if not allowed or slots - 1 <= 0:
            self.unavailable.add(target)
        return allowed

    def context(self, route: RouteSpec, policy: CompiledPolicy) -> SelectionContext:
        """What a selection strategy sees when ``policy`` routes by ``route`` (kept per route)."""
        ctx = self._contexts.get(id(route))
        if ctx is None:
            ctx = self._contexts[id(route)] = self.new_context(route, policy, self._state.rng,
                                                               self.trust_scores(policy))
        return ctx

    def new_context(self, route: RouteSpec, policy: CompiledPolicy, rng: random.Random,
                    trust: Scores) -> SelectionContext:
        """A selection context of its own (a shadow evaluation's, with its own random stream)."""
        state = self._state
        return SelectionContext(
            rng=rng, unavailable=self.unavailable, trust=trust, arms=state.arms,
            in_flight=InFlight(state.load, self.routed), capacity=policy.capacity,
            bandit=route.bandit, default_trust=policy.trust_params.initial,
        )


class Scores(Mapping[str, float]):
    """Trust scores of a batch, computed on first use per target and then kept: only the
    targets a batch's routes and consensus metrics look at are scored."""

    __slots__ = ("_states", "_now", "_weights", "_params", "_memo")

    def __init__(self, states: dict[str, tr.TrustState], now: float,
                 policy: CompiledPolicy) -> None:
        self._states = states
        self._now = now
        self._weights = policy.trust_weights
        self._params = policy.trust_params
        self._memo: dict[str, float] = {}

    def get(self, key: str, default: float | None = None) -> float | None:  # type: ignore[override]
        score = self._memo.get(key)
        if score is not None:
            return score
        state = self._states.get(key)
        if state is None:
            return default
        score = tr.score(state, self._now, self._weights, self._params)
        self._memo[key] = score
        return score

    def changed(self, key: str, state: tr.TrustState) -> None:
        self._memo[key] = tr.score(state, self._now, self._weights, self._params)

    def __getitem__(self, key: str) -> float:
        score = self.get(key)
        if score is None:
            raise KeyError(key)
        return score

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        return key in self._states


class InFlight(dict[str, float]):
    """A live view of in-flight load per destination for ``least_loaded``: the load counters
    plus what the current batch has routed so far (not yet folded in)."""

    def __init__(self, load: dict[str, LoadCounter], routed: dict[str, int]) -> None:
        super().__init__()
        self._load = load
        self._routed = routed

    def get(self, key: str, default: float | None = None) -> float:  # type: ignore[override]
        counter = self._load.get(key)
        pending = self._routed.get(key, 0)
        if counter is None:
            return float(pending) if pending else (default or 0.0)
        return float(max(0, counter.routed + pending - counter.completed))
