"""The topics' JSON Schemas (topics/schemas/), checked with ``jsonschema``: independent of the
router's own models, so a test using them catches a model that drifted from the contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parents[2] / "topics" / "schemas"


def _registry() -> Registry:
    resources = []
    for path in SCHEMAS.glob("*.schema.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


REGISTRY = _registry()


def schema_errors(schema_file: str, instance: Any) -> list[str]:
    """What is wrong with ``instance`` by the schema in ``schema_file`` (empty: valid).

    Formats are asserted (``date-time`` by rfc3339-validator), as a consumer validating the
    contract strictly would."""
    schema = json.loads((SCHEMAS / schema_file).read_text())
    validator = Draft202012Validator(
        schema, registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    return [e.message for e in validator.iter_errors(instance)]
