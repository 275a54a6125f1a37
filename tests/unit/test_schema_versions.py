"""topics/schemas/: every schema is valid draft 2020-12 and names its major version in its $id
(the compatibility rule is in topics/schemas/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).resolve().parents[2] / "topics" / "schemas"


def test_schemas_are_versioned_and_the_dlq_headers_schema_is_declared():
    for path in SCHEMAS.glob("*.schema.json"):
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        assert schema["$id"] == f"https://router-stream.dev/schemas/v1/{path.name}"
    topics = yaml.safe_load((SCHEMAS.parent / "topics.yaml").read_text())
    assert topics["topics"]["router.dlq"]["headers_schema"] == "schemas/dlq-headers.schema.json"
