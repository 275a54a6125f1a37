"""Classification rules: a rule's condition is a field match or an all/any/not of conditions."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from router_stream.core.policy.fields import FieldPath, Name, Section
from router_stream.core.rulere import RuleRegexError, compile_rule_regex


class Range(Section):
    min: float | None = Field(default=None, allow_inf_nan=False)
    max: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounds(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"range min ({self.min:g}) is greater than max ({self.max:g})")
        return self


OPERATORS = ("equals", "in", "contains_any", "regex", "exists", "range")


class FieldMatch(Section):
    """One test on one signal field: ``{field: payload.severity, in: [critical, high]}``."""

    field: FieldPath
    equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in", min_length=1)
    contains_any: list[Any] | None = Field(default=None, min_length=1)
    regex: str | None = None
    exists: bool | None = None
    range: Range | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compile_rule_regex(value)
            except RuleRegexError as exc:
                raise ValueError(f"regex {value!r} {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_operator(self) -> FieldMatch:
        given = self.operators()
        if not given:
            raise ValueError(f"no operator: give one of {', '.join(OPERATORS)}")
        if len(given) > 1:
            raise ValueError(
                f"more than one operator ({', '.join(given)}): combine them with 'all'"
            )
        return self

    def operators(self) -> list[str]:
        """The operators this match sets (``equals: null`` counts: it tests for null)."""
        fields_set = self.model_fields_set
        return [op for op in OPERATORS if ("in_" if op == "in" else op) in fields_set]

    @property
    def operator(self) -> str:
        return self.operators()[0]


class AllOf(Section):
    all: list[Condition] = Field(min_length=1)


class AnyOf(Section):
    any: list[Condition] = Field(min_length=1)


class NotOf(Section):
    not_: Condition = Field(alias="not")


def _condition_tag(value: Any) -> str | None:
    """Which condition shape a mapping is, from its keys (so errors name only that shape)."""
    if isinstance(value, dict):
        for key in ("all", "any", "not"):
            if key in value:
                return f"<{key}>"
        return "<match>"
    return _MODEL_TAGS.get(type(value))


Condition = Annotated[
    Annotated[FieldMatch, Tag("<match>")]
    | Annotated[AllOf, Tag("<all>")]
    | Annotated[AnyOf, Tag("<any>")]
    | Annotated[NotOf, Tag("<not>")],
    Discriminator(
        _condition_tag,
        custom_error_type="condition_shape",
        custom_error_message="a condition is a mapping: {field, <operator>} or all/any/not",
    ),
]
_MODEL_TAGS: dict[type, str] = {FieldMatch: "<match>", AllOf: "<all>", AnyOf: "<any>",
                                NotOf: "<not>"}
AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()


class Rule(Section):
    """Classification rule; rules are tried in order and the first match decides."""

    name: str = Field(min_length=1)
    when: Condition
    kind: Name
    priority: int | None = Field(default=None, ge=0, le=9)

