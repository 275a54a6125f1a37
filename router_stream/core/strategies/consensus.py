"""``consensus``: one value for a metric from several sources' numeric observations.

Steps, in order:

1. **Filter.** Drop non-finite values, observations older than ``max_staleness_s``, and sources
   in ``excluded`` (breaker open, operator exclude). A source that reported several times counts
   once, with its newest observation, so no source can stuff the ballot.
2. **Outliers by MAD.** ``m`` = median of the remaining values, ``MAD`` = median of
   ``|x − m|``. With ``MAD > 0``, ``x`` is an outlier when its modified z-score
   ``0.6745·|x − m| / MAD`` exceeds ``mad_k``. With ``MAD = 0`` at least half of the values equal
   ``m`` exactly; every other value has an infinite z-score, so it is an outlier — on a
   quantised sensor that is strict, but a strict majority agreeing exactly is the strongest
   evidence there is.
3. **Blend or single.** Dispersion is the *range* of the inliers divided by
   ``max(|m|, scale_floor)`` — the widest disagreement that survived, relative to the value's
   magnitude (the range, not the MAD, so one far-but-not-outlying inlier is enough to stop a
   blend). With at least two inliers and dispersion ≤ ``max_dispersion`` the value is the
   weighted mean of the inliers (``blend``), clamped to their [min, max] against rounding; a
   source's weight is its trust × its ``track_record`` (how close its recent values were to the
   consensus, in [0, 1]; 1 when unknown), because trust alone is mostly about availability — a
   source that is up, fresh and fast but keeps disagreeing must count for less;
   otherwise it is the most trusted inlier (``single``; ties go to the one nearest ``m``). A
   relative measure explodes for metrics whose true value is near 0, which then resolve as
   ``single`` — a safe answer, just not a blended one.
4. **Synthetic.** With fewer than ``min_sources`` usable sources (or no inlier), the last good
   consensus (:class:`LastGood`, kept by the caller via :func:`remember`) is returned with its
   confidence decaying linearly to 0 at ``synthetic_max_age_s``; past that, ``None`` and the
   router sends the signal to the DLQ.

**Outlier bound.** Suppose, among the observations that pass step 1, ``h`` honest values lie in
``[lo, hi]`` and ``a ≤ ⌊(n − 1)/2⌋`` values (``n = h + a``) are arbitrary, i.e. the honest ones
are a strict majority. Let ``W = hi − lo``. Then a ``blend`` or ``single`` result lies within
``[lo − mad_k·W/0.6745, hi + mad_k·W/0.6745]`` — and within ``[lo, hi]`` when ``W = 0`` — whatever
the arbitrary values and whatever the trust. (Proof in ``tests/unit/test_consensus.py``.)

Confidence: ``agreement`` = inliers / usable sources; ``blend`` = agreement × mean trust of the
inliers; ``single`` = agreement × trust of the chosen source × ``max_dispersion / dispersion``
(capped at 1) — disagreement lowers it.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable, Mapping
from typing import Any, NamedTuple

import msgspec
from pydantic.dataclasses import dataclass as pydantic_dataclass

from router_stream.core.policy.fields import CONFIG_SECTION, NonNegative
from router_stream.core.policy.sections import ConsensusParams

_MAD_TO_Z = 0.6745  # Φ⁻¹(0.75): makes MAD comparable to a standard deviation (Iglewicz–Hoaglin)

BLEND = "blend"
SINGLE = "single"
SYNTHETIC = "synthetic"


@pydantic_dataclass(frozen=True, slots=True, config=CONFIG_SECTION)
class ConsensusConfig(ConsensusParams):
    """The policy's ``consensus`` section (see the module docstring for what each field decides),
    and the smallest spread the robust scale is taken to have."""

    scale_floor: NonNegative = 1e-9


class Observation(NamedTuple):
    """One source's value of the metric at ``ts`` (epoch seconds)."""

    source_id: str
    value: float
    ts: float


class ConsensusResult(NamedTuple):
    """``mad`` is the MAD around the median of the usable values (0 for synthetic); the caller
    uses it to score each source's deviation (:func:`deviation_z`)."""

    value: float
    method: str
    sources_used: tuple[str, ...]
    outliers: tuple[str, ...]
    confidence: float
    mad: float


class LastGood(msgspec.Struct, frozen=True, gc=False):
    """The last live (blend/single) consensus of a metric, for synthetic fallback (a frozen
    ``msgspec.Struct``: one is built per live consensus, cheaper than a frozen dataclass)."""

    value: float
    ts: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ts": self.ts, "confidence": self.confidence}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LastGood:
        return cls(float(data["value"]), float(data["ts"]), float(data["confidence"]))


def _median(sorted_values: list[float]) -> float:
    n = len(sorted_values)
    mid = n // 2
    if n % 2:
        return sorted_values[mid]
    low, high = sorted_values[mid - 1], sorted_values[mid]
    middle = (low + high) / 2.0
    return middle if math.isfinite(middle) else low / 2.0 + high / 2.0  # huge values overflow


def _trust_of(trust: Mapping[str, float], source_id: str, default: float) -> float:
    t = trust.get(source_id, default)
    return t if 0.0 <= t <= 1.0 else (1.0 if t > 1.0 else 0.0)  # NaN -> 0


_Fields = tuple[float, str, tuple[str, ...], tuple[str, ...], float, float]


def _result(fields: _Fields) -> ConsensusResult:
    """``ConsensusResult(*fields)`` without the NamedTuple ``__new__`` overhead (hot path)."""
    return tuple.__new__(ConsensusResult, fields)


_NO_TRUST: Mapping[str, float] = {}
_NOBODY: frozenset[str] = frozenset()


def consensus(
    observations: Iterable[Observation],
    now: float,
    cfg: ConsensusConfig,
    trust: Mapping[str, float] = _NO_TRUST,
    excluded: Container[str] = _NOBODY,
    last_good: LastGood | None = None,
    track_record: Mapping[str, float] = _NO_TRUST,
) -> ConsensusResult | None:
    """The consensus value of one metric at ``now``, or ``None`` (→ DLQ) when there is neither a
    live consensus nor a synthetic one young enough."""
    usable = _usable(observations, now, cfg, excluded)
    if len(usable) < cfg.min_sources:
        return synthetic(last_good, now, cfg, ())
    values = sorted([o.value for o in usable])
    median = _median(values)
    mad = _median(sorted([abs(v - median) for v in values]))
    # Inlier test as 0.6745·|x − m| ≤ k·MAD rather than |x − m| ≤ k·MAD/0.6745: each side is one
    # rounded product and rounding is monotone, so with k ≥ 0.6745 every value within one MAD of
    # the median (at least half of them) is an inlier even at the edge of float precision.
    # With MAD = 0 only x = m qualifies.
    limit = cfg.mad_k * mad
    inliers: list[Observation] = []
    outliers: list[str] = []
    low = math.inf
    high = -math.inf
    for o in usable:
        v = o.value
        if _MAD_TO_Z * abs(v - median) <= limit:
            inliers.append(o)
            if v < low:
                low = v
            if v > high:
                high = v
        else:
            outliers.append(o.source_id)
    if not inliers:
        return synthetic(last_good, now, cfg, tuple(outliers))
    agreement = len(inliers) / len(usable)
    dispersion = (high - low) / max(abs(median), cfg.scale_floor)
    if len(inliers) >= 2 and dispersion <= cfg.max_dispersion:
        value, total = _blend(inliers, low, high, trust, cfg.default_trust, track_record)
        used = tuple([o.source_id for o in inliers])
        return _result((value, BLEND, used, tuple(outliers), agreement * total / len(inliers), mad))
    chosen, trusted, penalty = _single(inliers, median, dispersion, trust, cfg)
    confidence = agreement * trusted * penalty
    return _result((chosen.value, SINGLE, (chosen.source_id,), tuple(outliers), confidence, mad))


def _usable(
    observations: Iterable[Observation], now: float, cfg: ConsensusConfig, excluded: Container[str]
) -> list[Observation]:
    """Fresh, finite, not excluded observations, one per source (its newest)."""
    horizon = now - cfg.max_staleness_s
    isfinite = math.isfinite
    usable: list[Observation] = []
    index: dict[str, int] = {}
    for o in observations:
        if not isfinite(o.value) or not o.ts >= horizon or o.source_id in excluded:
            continue
        position = index.get(o.source_id)
        if position is None:
            index[o.source_id] = len(usable)
            usable.append(o)
        elif o.ts > usable[position].ts:
            usable[position] = o
    return usable


def _blend(
    inliers: list[Observation], low: float, high: float, trust: Mapping[str, float],
    default: float, track_record: Mapping[str, float],
) -> tuple[float, float]:
    """The trust × track-record weighted mean of the inliers, and the sum of their trust."""
    total = weight_sum = weighted_sum = 0.0
    for o in inliers:
        t = trust.get(o.source_id, default)
        t = t if 0.0 <= t <= 1.0 else (1.0 if t > 1.0 else 0.0)
        r = track_record.get(o.source_id, 1.0)
        w = t * (r if 0.0 <= r <= 1.0 else (1.0 if r > 1.0 else 0.0))
        total += t
        weight_sum += w
        weighted_sum += w * o.value
    # With no weight anywhere, an equal-weight mean: weights can only reorder, never silence.
    value = (weighted_sum / weight_sum if weight_sum > 0.0
             else sum([o.value for o in inliers]) / len(inliers))
    if not low <= value <= high:  # a convex combination; clamp away rounding (and overflow)
        value = min(high, max(low, value)) if not math.isnan(value) else low / 2.0 + high / 2.0
    return value, total


def _single(
    inliers: list[Observation], median: float, dispersion: float, trust: Mapping[str, float],
    cfg: ConsensusConfig,
) -> tuple[Observation, float, float]:
    """The most trusted inlier (closest to the median on a tie), its trust, and the confidence
    penalty for a dispersion over ``max_dispersion``."""
    def rank(o: Observation) -> tuple[float, float, str]:
        trusted = _trust_of(trust, o.source_id, cfg.default_trust)
        return (-trusted, abs(o.value - median), o.source_id)

    chosen = min(inliers, key=rank)
    penalty = 1.0 if dispersion <= cfg.max_dispersion else cfg.max_dispersion / dispersion
    return chosen, _trust_of(trust, chosen.source_id, cfg.default_trust), penalty


def synthetic(
    last_good: LastGood | None, now: float, cfg: ConsensusConfig, outliers: tuple[str, ...]
) -> ConsensusResult | None:
    """The last good value with confidence decaying linearly by age; ``None`` past
    ``synthetic_max_age_s`` or without a last good value."""
    if last_good is None:
        return None
    age = max(0.0, now - last_good.ts)
    if not age <= cfg.synthetic_max_age_s:  # also NaN
        return None
    fraction = 1.0 - age / cfg.synthetic_max_age_s if cfg.synthetic_max_age_s > 0.0 else 1.0
    confidence = min(1.0, max(0.0, last_good.confidence * fraction))
    return ConsensusResult(last_good.value, SYNTHETIC, (), outliers, confidence, 0.0)


def remember(result: ConsensusResult | None, now: float) -> LastGood | None:
    """What to store as the metric's last good consensus after ``result``: only live results
    count — a synthetic one must not refresh the timestamp, or it would never age out. ``None``
    means keep the previous one."""
    if result is None or result.method == SYNTHETIC:
        return None
    return LastGood(result.value, now, result.confidence)


def deviation_z(value: float, result: ConsensusResult) -> float:
    """A source's robust z-score against the consensus, for ``trust.observe_deviation``; with a
    zero MAD, any difference is infinitely far."""
    diff = abs(value - result.value)
    if result.mad > 0.0:
        return _MAD_TO_Z * diff / result.mad
    return 0.0 if diff == 0.0 else math.inf
