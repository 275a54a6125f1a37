"""Names and field types every policy section uses: strategies, detectors, signal paths."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict

Strategy = Literal[
    "first_healthy", "fanout", "weighted", "least_loaded", "thompson", "ucb", "greedy", "consensus"
]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
BANDIT_STRATEGIES = frozenset({"thompson", "ucb", "greedy"})

Detector = Literal["email", "phone", "card", "ssn", "ipv4", "ipv6"]
DETECTORS: tuple[Detector, ...] = get_args(Detector)

SIGNAL_FIELDS = frozenset({
    "signal_id", "tenant", "sender_id", "ts", "kind", "priority", "ttl_ms", "metric",
    "source_id", "value", "payload",
})
"""Signal attributes a classify/redact path may start with; ``payload`` may continue."""

RESERVED_KIND = "dlq"  # ``defaults.unclassified: dlq`` would be ambiguous with a kind "dlq"
_NAME = r"^[A-Za-z0-9._-]{1,200}$"
"""Destinations become topic names (``routed.<destination>``) and kinds become metric labels."""


MAX_INDEX_DIGITS = 18
"""The longest list index a path may hold (an int64, far past any list a signal carries)."""


def is_list_index(segment: str) -> bool:
    """Whether a path segment indexes a list: 1 to :data:`MAX_INDEX_DIGITS` ASCII digits."""
    return segment.isascii() and segment.isdigit() and len(segment) <= MAX_INDEX_DIGITS


def split_path(path: str) -> tuple[str, ...]:
    """``payload.user.email`` -> ``("payload", "user", "email")``; validates the shape.

    The first segment must be a Signal field; only ``payload`` may have more segments
    (``*`` matches any key, a number indexes a list: :func:`is_list_index`; other digits,
    such as ``²`` or a longer number, are refused).
    """
    parts = tuple(path.split("."))
    if not path or any(not part for part in parts):
        raise ValueError(f"bad field path {path!r}: empty segment")
    head = parts[0]
    if head not in SIGNAL_FIELDS:
        fields = ", ".join(sorted(SIGNAL_FIELDS))
        raise ValueError(f"bad field path {path!r}: {head!r} is not a signal field ({fields})")
    if head != "payload" and len(parts) > 1:
        raise ValueError(f"bad field path {path!r}: only payload has nested fields")
    for part in parts[1:]:
        if part.isdigit() and not is_list_index(part):
            shown = part if len(part) <= 24 else part[:20] + "..."
            raise ValueError(f"bad field path: segment {shown!r} is not a list index"
                             f" (1-{MAX_INDEX_DIGITS} ASCII digits)")
    return parts


def _check_path(path: str) -> str:
    split_path(path)
    return path


FieldPath = Annotated[str, AfterValidator(_check_path)]
Name = Annotated[str, Field(pattern=_NAME)]
Fraction = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
Count = Annotated[int, Strict(), Field(ge=1)]
Share = Annotated[float, Strict(), Field(gt=0.0, le=1.0)]
NonNegative = Annotated[float, Strict(), Field(ge=0.0, allow_inf_nan=False)]
# Durations are bounded so a typo (an extra few zeros) is refused at validate time rather than
# pinning a breaker open or a parked signal for centuries.
MAX_DURATION_S = 30 * 86_400.0
PositiveSeconds = Annotated[
    float, Strict(), Field(gt=0.0, le=MAX_DURATION_S, allow_inf_nan=False)
]
MAX_RETRY_DELAY_S = 86_400.0
"""The longest one retry waits, however often its delay doubled: the worker holds back the whole
``router.retry`` partition behind a parked signal until it is due."""


class Section(BaseModel):
    """Every policy model: frozen, strict types, and unknown keys are errors (typo safety)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)


CONFIG_SECTION = ConfigDict(extra="forbid")
"""The config of the sections the core reads on its hot path (trust, breaker, bandit, consensus):
pydantic dataclasses (``frozen=True, slots=True``), so the core uses them as its own parameter
types. Their fields are strict one by one (``Strict()``): a strict dataclass would refuse a
mapping where a section is expected."""
