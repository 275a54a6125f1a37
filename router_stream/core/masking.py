"""PII masking for what is persisted (decisions, DLQ rows, logs): SPEC §5 "PII ... is masked".

Two mechanisms, both driven by the policy's ``redact`` section:

* **named fields** (``redact.fields``, e.g. ``payload.user.email``; ``*`` matches any key or list
  element) are replaced whole by ``[REDACTED]``, whatever their type;
* **detectors** (``redact.detectors``) find PII inside every string value and replace it with a
  token that keeps just enough to be useful when debugging:

  ========  ==============================  ========================================
  detector  detected                        token
  ========  ==============================  ========================================
  email     ``local@domain.tld``            ``***@domain.tld`` (``***@***`` if the
                                            domain has digits)
  card      13-19 digits, spaces/dashes     ``[CARD ****1111]`` (last four);
            allowed, **Luhn-valid** with    JSON integers too
            an issuer's prefix and length
  ssn       ``ddd-dd-dddd``                 ``[SSN]``
  phone     ``+cc ...`` (8-15 digits),      ``[PHONE]``
            ``(ddd) ddd-dddd``,
            ``ddd-ddd-dddd`` (``.``/space)
  ipv4      dotted quad, octets <= 255      ``[IPV4]``
  ipv6      any form ``ipaddress`` accepts  ``[IPV6]``
  ========  ==============================  ========================================

In a JSON value (:func:`mask_value`) the detectors also look at object **keys** (a map keyed by
e-mail address is PII too; two keys that mask alike keep the last value) and at **numbers** (a
card number sent as a JSON number, positive or not, integer or float, becomes its token).

Masking is **idempotent**: ``mask_text(mask_text(s)) == mask_text(s)``. Tokens contain nothing
a detector matches, and because a replacement changes the neighbours another detector looks at
(``555-123-4567.1.2.3.4`` only shows an address once the phone is a token), the detectors are
applied until the text stops changing (in practice one extra pass that finds nothing). A
candidate that fails validation (Luhn, issuer prefix, octet range, ``ipaddress``) is left as it
was.

Luhn alone is not enough for cards: one number in ten passes it, and epoch timestamps are 13
(ms), 16 (us) or 19 (ns) digits long — a full chaos run found ``"ts": 1795990188xxx`` stored as
``[CARD ****0211]``. Card numbers also start with an issuer's prefix (:func:`card_issuer_ok`), and
none of those starts with ``1``, the first digit of every epoch timestamp until 2033.

Most strings the router masks (ids, tenants, short payload values) hold nothing any detector could
match, so a cheap test (:data:`_CANDIDATE`, a necessary condition for every detector) skips the
detectors for them: 0.5-5 us per string instead of 2.5-12 us on this machine.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from router_stream.core.policy import DETECTORS, Detector, RedactPolicy

__all__ = ["MAX_DEPTH", "REDACTED", "TOO_DEEP", "card_issuer_ok", "deeper_than", "luhn_valid",
           "mask_text", "mask_value", "text_masker"]

REDACTED = "[REDACTED]"
MAX_DEPTH = 200
"""The deepest JSON value :func:`mask_value` masks member by member (it recurses, and orjson
serialises at most 255 levels); a deeper one is masked whole, as :data:`TOO_DEEP`."""
TOO_DEEP = f"[REDACTED: nested deeper than {MAX_DEPTH} levels]"
_MAX_PASSES = 8  # each changing pass replaces at least one match by a token; 8 is never reached

# The lookbehind makes a match start only where a local part can start: without it, every
# position of a long run of local-part characters (a 5 MB digit string in the poison corpus)
# rescanned the run to its end looking for an "@" — quadratic (100k digits: 16.6 s).
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@"
                    r"([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})")
_IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_CARD = re.compile(r"(?<!\w)(?:\d[ -]?){12,18}\d(?!\w)")
_SSN = re.compile(r"(?<!\w)(?<!\d-)\d{3}-\d{2}-\d{4}(?!\w)(?!-\d)")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # international: validated to 8-15 digits
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"
    r"|\d{3}[ .-]\d{3}[ .-]\d{4}"
    r")(?!\w)"
)
_HEX = frozenset(string.hexdigits)
# True for every text in which some detector could match (each alternative is a necessary
# condition of one detector: '@' for emails, two colons for IPv6, a dotted quad, 13+ digits with
# single spaces/dashes for cards, the shapes of SSNs and phone numbers). False means: nothing to
# mask. tests/unit/test_masking.py checks it against mask_text on generated text.
_CANDIDATE = re.compile(
    r"@|:[^:]*:|\+\d|\(\d{3}\)|\d{3}[ .-]\d{2,3}[ .-]\d{4}|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d"
    r"|\d[\d -]{11,}\d"
)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a digit string (card numbers carry one; random numbers rarely do)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_issuer_ok(digits: str) -> bool:
    """Whether a digit string has the prefix and length of a payment card (ISO/IEC 7812 issuers).

    Visa 4 (13, 16, 19 digits); Mastercard 51-55 and 2221-2720 (16); American Express 34/37 (15);
    Diners 30/36/38/39 and JCB 35 (14-19); Discover, UnionPay and Maestro 5x/6x (16-19)."""
    n, first = len(digits), digits[:1]
    if first == "4":
        return n in (13, 16, 19)
    if first == "3":
        return (n == 15 and digits[:2] in ("34", "37")) or (
            14 <= n <= 19 and digits[:2] in ("30", "35", "36", "38", "39"))
    if first in ("5", "6"):
        return 16 <= n <= 19
    if first == "2":
        return n == 16 and 2221 <= int(digits[:4]) <= 2720
    return False


def _email(m: re.Match[str]) -> str:
    domain = m.group(1)
    return "***@***" if any(ch.isdigit() for ch in domain) else f"***@{domain}"


def _card(m: re.Match[str]) -> str:
    digits = "".join(ch for ch in m.group(0) if ch.isdigit())
    if 13 <= len(digits) <= 19 and card_issuer_ok(digits) and luhn_valid(digits):
        return f"[CARD ****{digits[-4:]}]"
    return m.group(0)


def _ipv4(m: re.Match[str]) -> str:
    if all(int(octet) <= 255 for octet in m.group(0).split(".")):
        return "[IPV4]"
    return m.group(0)


def _ipv6(m: re.Match[str]) -> str:
    text = m.group(0)
    if not any(ch in _HEX for ch in text):  # "::" alone is valid but is punctuation in prose
        return text
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return text
    return "[IPV6]"


def _phone(m: re.Match[str]) -> str:
    text = m.group(0)
    if text.startswith("+") and not 8 <= sum(ch.isdigit() for ch in text) <= 15:
        return text
    return "[PHONE]"


_Replacer = Callable[[re.Match[str]], str]
# Order matters within one pass: emails before the digit detectors (a phone inside an address
# is part of the address), addresses before cards/phones (dotted digits are not phone numbers).
_PASSES: tuple[tuple[Detector, re.Pattern[str], _Replacer | str], ...] = (
    ("email", _EMAIL, _email),
    ("ipv6", _IPV6, _ipv6),
    ("ipv4", _IPV4, _ipv4),
    ("card", _CARD, _card),
    ("ssn", _SSN, "[SSN]"),
    ("phone", _PHONE, _phone),
)


def _passes_for(detectors: Iterable[str]) -> tuple[tuple[re.Pattern[str], _Replacer | str], ...]:
    wanted = frozenset(detectors)
    unknown = wanted - set(DETECTORS)
    if unknown:
        raise ValueError(f"unknown detector(s): {', '.join(sorted(unknown))}")
    return tuple((pattern, repl) for name, pattern, repl in _PASSES if name in wanted)


_ALL_PASSES = _passes_for(DETECTORS)


def mask_text(text: str, detectors: Sequence[str] | None = None) -> str:
    """``text`` with every PII match of ``detectors`` (default: all) replaced by its token."""
    return _mask_with(text, _ALL_PASSES if detectors is None else _passes_for(detectors))


def text_masker(detectors: Sequence[str] | None = None) -> Callable[[str], str]:
    """:func:`mask_text` with its detectors chosen once, for masking many strings alike."""
    passes = _ALL_PASSES if detectors is None else _passes_for(detectors)
    return lambda text: _mask_with(text, passes)


def mask_value(value: Any, redact: RedactPolicy) -> Any:
    """A masked copy of a JSON value (usually a whole signal object); ``value`` is not changed.

    ``redact.fields`` paths start at the signal object (``payload.user.email``, ``sender_id``).
    Named paths are redacted first, so a key the detectors would change is still found by name.
    """
    if deeper_than(value, MAX_DEPTH):
        return TOO_DEEP
    masked = value
    for path in redact.fields:
        masked = _redact_path(masked, tuple(path.split(".")))
    return _mask_strings(masked, _passes_for(redact.detectors))


def deeper_than(value: Any, limit: int) -> bool:
    """True when ``value`` nests lists and objects more than ``limit`` levels deep (a scalar
    is level 0), found without recursion."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth >= limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children
                         if isinstance(child, dict | list))
    return False


def _mask_strings(value: Any, passes: tuple[tuple[re.Pattern[str], _Replacer | str], ...]) -> Any:
    if isinstance(value, str):
        return _mask_with(value, passes)
    if isinstance(value, dict):
        return {_mask_with(k, passes) if isinstance(k, str) else k: _mask_strings(v, passes)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_strings(v, passes) for v in value]
    if type(value) is int or type(value) is float:  # not bool: True is no card number
        text = str(value)
        masked = _mask_with(text, passes)
        return value if masked == text else masked
    return value


def _mask_with(text: str, passes: tuple[tuple[re.Pattern[str], _Replacer | str], ...]) -> str:
    if not passes or _CANDIDATE.search(text) is None:
        return text
    for _ in range(_MAX_PASSES):
        masked = text
        for pattern, repl in passes:
            masked = pattern.sub(repl, masked)
        if masked == text:
            break
        text = masked
    return text


def _redact_path(value: Any, keys: tuple[str, ...]) -> Any:
    """Replace what ``keys`` points at by ``[REDACTED]`` (absent paths are left alone)."""
    if not keys:
        return REDACTED
    key, rest = keys[0], keys[1:]
    if isinstance(value, dict):
        if key == "*":
            return {k: _redact_path(v, rest) for k, v in value.items()}
        if key in value:
            return {**value, key: _redact_path(value[key], rest)}
        return value
    if isinstance(value, list):
        if key == "*":
            return [_redact_path(v, rest) for v in value]
        if key.isdigit() and int(key) < len(value):
            index = int(key)
            return [*value[:index], _redact_path(value[index], rest), *value[index + 1:]]
    return value
