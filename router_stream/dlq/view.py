"""How a DLQ entry is shown to an operator (``dlq show``, ``dlq list --json``, dry runs).

Pure. Bytes are shown as text when they are valid UTF-8, otherwise as base64 (with a hex preview
of the first bytes, which is what one reads when guessing a binary format). When a policy's
``redact`` section is given, PII is masked in everything shown: the value (named fields and
detectors when it is JSON, detectors when it is other text), the key, header values and the
error text. Without a policy nothing more is masked — ``dlq show`` says so.

What the worker stored is already masked per the redact section it ran with when the entry is
``masked`` (``masked_at_rest``; migrations/004_dlq_masking.sql): its original bytes are only on
``router.dlq``, at the coordinates shown, and nothing here reads them.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from router_stream.core.masking import MAX_DEPTH, deeper_than, mask_text, mask_value
from router_stream.core.policy import RedactPolicy
from router_stream.dlq.store import DlqRow

__all__ = ["describe_bytes", "entry_detail", "entry_summary"]

_HEX_PREVIEW = 32


def describe_bytes(data: bytes | None, redact: RedactPolicy | None = None) -> dict[str, Any]:
    """``{"encoding": "json"|"text"|"base64"|"null", "size": n, "text"|"base64": ...}``."""
    if data is None:
        return {"encoding": "null", "size": 0}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return {"encoding": "base64", "size": len(data),
                "base64": base64.b64encode(data).decode("ascii"),
                "hex_preview": data[:_HEX_PREVIEW].hex(" ")}
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {"encoding": "text", "size": len(data), "text": _mask(text, redact)}
    if redact is None and deeper_than(parsed, MAX_DEPTH):  # too deep to print as JSON
        return {"encoding": "text", "size": len(data), "text": text}
    shown = mask_value(parsed, redact) if redact is not None else parsed  # too deep: TOO_DEEP
    return {"encoding": "json", "size": len(data), "json": shown}


def _mask(text: str, redact: RedactPolicy | None) -> str:
    return text if redact is None else mask_text(text, redact.detectors)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def entry_summary(row: DlqRow) -> dict[str, Any]:
    """The fields of a list line (no bytes), JSON-ready."""
    return {
        "id": row.id, "reason": row.reason, "status": row.status, "attempts": row.attempts,
        "signal_id": row.signal_id, "tenant": row.tenant, "kind": row.kind,
        "original_topic": row.original_topic, "original_partition": row.original_partition,
        "original_offset": row.original_offset, "error": row.error,
        "first_failed_at": _iso(row.first_failed_at), "last_failed_at": _iso(row.last_failed_at),
        "replayed_at": _iso(row.replayed_at), "replay_count": row.replay_count,
        "discarded_at": _iso(row.discarded_at), "discard_reason": row.discard_reason,
        "value_size": row.value_size, "masked_at_rest": row.masked,
    }


def _headers(headers: Sequence[tuple[str, bytes | None]],
             redact: RedactPolicy | None) -> list[list[Any]]:
    shown: list[list[Any]] = []
    for name, value in headers:
        if value is None:
            shown.append([name, None])
            continue
        try:
            shown.append([name, _mask(value.decode("utf-8"), redact)])
        except UnicodeDecodeError:
            shown.append([name, "base64:" + base64.b64encode(value).decode("ascii")])
    return shown


def entry_detail(row: DlqRow, redact: RedactPolicy | None = None) -> dict[str, Any]:
    """Everything about one entry, masked per ``redact`` (None: nothing masked)."""
    detail = entry_summary(row)
    detail.update({
        "dlq_key": row.dlq_key,
        "error": _mask(row.error, redact),
        "original_timestamp": _iso(row.original_timestamp),
        "created_at": _iso(row.created_at),
        "key": describe_bytes(row.original_key, redact),
        "headers": _headers(row.original_headers, redact),
        "value": describe_bytes(row.original_value, redact),
        "masked": redact is not None or row.masked,
        "dlq_record": None if row.dlq_offset is None else {
            "topic": row.dlq_topic, "partition": row.dlq_partition, "offset": row.dlq_offset},
    })
    return detail
