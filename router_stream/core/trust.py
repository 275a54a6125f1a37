"""Five-component trust score for sources and destinations (SPEC §3).

A :class:`TrustState` keeps one EWMA-smoothed *goodness* value in [0, 1] per component, where 1 is
always "good":

- ``freshness``    how recent the data behind a health event is (``last_data_ts``);
- ``error_rate``   1 − the smoothed error rate (health ``error_rate`` and outcome ``ok``);
- ``latency``      ``latency_target_ms / max(latency_target_ms, latency_ms)``;
- ``deviation``    how close the source's values are to the consensus (robust z-score);
- ``availability`` health ``ok`` (1/0), scaled by ``completeness`` when given.

:func:`score` is the policy-weighted sum of the components, decayed toward ``floor`` once nothing
has been heard for ``stale_after_s``: a source that went quiet must not keep the trust it earned.

Every input may be absent, NaN, infinite or negative (events come from the outside world). Invalid
samples are ignored, never propagated, so trust is always a finite number in [0, 1]; ``from_dict``
re-clamps too, so even a corrupt changelog entry cannot break that invariant.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

from router_stream.core.policy.sections import TrustPolicy
from router_stream.core.policy.sections import TrustWeights as TrustWeights

COMPONENTS: tuple[str, ...] = ("freshness", "error_rate", "latency", "deviation", "availability")


def _clamp01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def _valid(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


TrustParams = TrustPolicy
"""How observations turn into components and how trust decays: the policy's trust section."""


class TrustState(msgspec.Struct, frozen=True, gc=False):
    """Smoothed components of one source/destination. ``last_ts`` is the newest observation time
    (never moves backwards), ``None`` until the first observation.

    A frozen ``msgspec.Struct``: a consensus observation builds one per signal, and that is
    cheaper than a frozen dataclass (docs/performance.md)."""

    freshness: float = 0.5
    error_rate: float = 0.5
    latency: float = 0.5
    deviation: float = 0.5
    availability: float = 0.5
    last_ts: float | None = None
    observations: int = 0

    @classmethod
    def initial(cls, params: TrustParams) -> TrustState:
        v = params.initial
        return cls(freshness=v, error_rate=v, latency=v, deviation=v, availability=v)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in COMPONENTS}
        out["last_ts"] = self.last_ts
        out["observations"] = self.observations
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrustState:
        comps: dict[str, float] = {}
        for name in COMPONENTS:
            value = float(data.get(name, 0.5))
            comps[name] = _clamp01(value) if not math.isnan(value) else 0.5
        raw_ts = data.get("last_ts")
        last_ts = float(raw_ts) if raw_ts is not None else None
        if last_ts is not None and not math.isfinite(last_ts):
            last_ts = None
        return cls(**comps, last_ts=last_ts, observations=int(data.get("observations", 0)))


def _ewma(old: float, sample: float, alpha: float) -> float:
    return _clamp01(old + alpha * (_clamp01(sample) - old))


def _touch(state: TrustState, now: float, **components: float) -> TrustState:
    """Apply the component updates and advance ``last_ts`` (a late or non-finite ``now`` does not
    move it backwards or poison it)."""
    last_ts = state.last_ts
    if math.isfinite(now) and (last_ts is None or now > last_ts):
        last_ts = now
    # Positional, not dataclasses.replace: this runs once per consensus observation.
    get = components.get
    return TrustState(
        get("freshness", state.freshness), get("error_rate", state.error_rate),
        get("latency", state.latency), get("deviation", state.deviation),
        get("availability", state.availability), last_ts, state.observations + 1,
    )


def _latency_sample(latency_ms: float, params: TrustParams) -> float:
    # +inf latency is a timeout: the worst sample, not an invalid one.
    if latency_ms <= params.latency_target_ms:
        return 1.0
    return params.latency_target_ms / latency_ms


def observe_health(
    state: TrustState,
    *,
    now: float,
    params: TrustParams,
    ok: bool | None = None,
    latency_ms: float | None = None,
    error_rate: float | None = None,
    last_data_ts: float | None = None,
    completeness: float | None = None,
) -> TrustState:
    """Fold one HealthEvent into ``state``. Absent or invalid fields leave their component alone."""
    a = params.ewma_alpha
    updates: dict[str, float] = {}
    if _valid(latency_ms) and latency_ms is not None and latency_ms >= 0.0:
        updates["latency"] = _ewma(state.latency, _latency_sample(latency_ms, params), a)
    if _valid(error_rate) and error_rate is not None:
        updates["error_rate"] = _ewma(state.error_rate, 1.0 - _clamp01(error_rate), a)
    if _valid(last_data_ts) and last_data_ts is not None and math.isfinite(now):
        age = max(0.0, now - last_data_ts)  # a future last_data_ts (clock skew) counts as fresh
        updates["freshness"] = _ewma(state.freshness, 1.0 - age / params.stale_after_s, a)
    availability: float | None = None
    if ok is not None:
        availability = 1.0 if ok else 0.0
    if _valid(completeness) and completeness is not None:
        c = _clamp01(completeness)
        availability = c if availability is None else availability * c
    if availability is not None:
        updates["availability"] = _ewma(state.availability, availability, a)
    return _touch(state, now, **updates)


def observe_outcome(
    state: TrustState,
    *,
    ok: bool,
    now: float,
    params: TrustParams,
    latency_ms: float | None = None,
) -> TrustState:
    """Fold one delivery Outcome into ``state``: a failed delivery is an error sample, and a
    delivered one proves the destination is up."""
    a = params.ewma_alpha
    sample = 1.0 if ok else 0.0
    updates = {
        "error_rate": _ewma(state.error_rate, sample, a),
        "availability": _ewma(state.availability, sample, a),
    }
    if _valid(latency_ms) and latency_ms is not None and latency_ms >= 0.0:
        updates["latency"] = _ewma(state.latency, _latency_sample(latency_ms, params), a)
    return _touch(state, now, **updates)


def observe_deviation(
    state: TrustState, *, z: float, now: float, params: TrustParams
) -> TrustState:
    """Fold how far the source's last value was from the consensus, as a robust z-score
    (``0.6745·|x − consensus| / MAD``; sign ignored, +inf = infinitely far)."""
    if math.isnan(z):
        return state
    sample = 1.0 - abs(z) / params.deviation_z_max
    deviation = _ewma(state.deviation, sample, params.ewma_alpha)
    last_ts = state.last_ts
    if math.isfinite(now) and (last_ts is None or now > last_ts):
        last_ts = now
    # _touch with one component, spelt out: this runs once per consensus observation
    return TrustState(state.freshness, state.error_rate, state.latency, deviation,
                      state.availability, last_ts, state.observations + 1)


def raw_score(state: TrustState, weights: TrustWeights) -> float:
    """The weighted sum of the components, without staleness decay."""
    total = (
        weights.freshness * state.freshness
        + weights.error_rate * state.error_rate
        + weights.latency * state.latency
        + weights.deviation * state.deviation
        + weights.availability * state.availability
    )
    return _clamp01(total)


def score(state: TrustState, now: float, weights: TrustWeights, params: TrustParams) -> float:
    """Trust in [0, 1]: the weighted sum, decayed exponentially toward ``floor`` after
    ``stale_after_s`` of silence. A score already below the floor is not raised by silence."""
    raw = raw_score(state, weights)
    if state.last_ts is None or math.isnan(now):
        return raw
    silence = now - state.last_ts - params.stale_after_s
    if not silence > 0.0:
        return raw
    target = min(params.floor, raw)
    factor = 0.5 ** (silence / params.decay_half_life_s)  # inf silence -> factor 0.0
    return _clamp01(target + (raw - target) * factor)


class DeviationRecord(Mapping[str, float]):
    """A live view of every source's ``deviation`` component: how close its recent values were
    to the consensus (consensus's ``track_record``), without copying the states."""

    __slots__ = ("_states",)

    def __init__(self, states: Mapping[str, TrustState]) -> None:
        self._states = states

    def get(self, key: str, default: float | None = None) -> float | None:  # type: ignore[override]
        state = self._states.get(key)
        return state.deviation if state is not None else default

    def __getitem__(self, key: str) -> float:
        return self._states[key].deviation

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)
