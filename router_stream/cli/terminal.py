"""Text from Kafka and Postgres on an operator's terminal: shown as it is, never obeyed.

Signal ids, tenants, error texts, header names, heartbeat fields, override reasons: whoever
produces to the router's topics chooses them. Printed raw, a control character drives the
terminal (an escape sequence rewrites the screen or plants an OSC 8 link), and in a rich table
``[...]`` is markup (``[/]`` raises, ``[b]`` vanishes). Every such string goes out through here.
JSON output stays JSON: ``json.dumps`` escapes C0 itself; :func:`printable_json` adds the rest.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text

__all__ = ["cell", "printable", "printable_json", "printable_json_bytes"]

# C0, DEL and C1: Unicode's control characters (category Cc), every one a terminal may act on
_CONTROLS = (*range(0x20), *range(0x7F, 0xA0))
_ESCAPED = {c: f"\\x{c:02x}" for c in _CONTROLS}
# what json.dumps(ensure_ascii=False) and orjson leave raw: DEL and C1, as JSON escapes
_JSON_ESCAPED = {c: f"\\u{c:04x}" for c in range(0x7F, 0xA0)}
_JSON_RAW_BYTES = re.compile(rb"\x7f|\xc2[\x80-\x9f]")  # in UTF-8: \xc2 only ever leads


def printable(value: object) -> str:
    """``value`` as text, every control character (newline and tab too) shown as ``\\xNN``."""
    return str(value).translate(_ESCAPED)


def printable_json(text: str) -> str:
    """JSON text with DEL and C1 written as ``\\u00NN`` escapes: the same JSON, inert."""
    return text.translate(_JSON_ESCAPED)


def printable_json_bytes(data: bytes) -> bytes:
    """:func:`printable_json` for UTF-8 JSON bytes (orjson's output)."""
    return _JSON_RAW_BYTES.sub(lambda m: b"\\u%04x" % ord(m.group().decode()), data)


def cell(value: object, style: str = "") -> Text:
    """A rich table cell that shows ``value`` literally: no markup, no control characters."""
    from rich.text import Text

    return Text(printable(value), style=style)
