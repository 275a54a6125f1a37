"""What the router persists and logs, masked per the policy's ``redact`` section (SPEC §5).

:mod:`.masking` finds PII in text and JSON values; this module decides what masking means for
each thing the worker writes to Postgres or to its logs. A :class:`Redactor` is compiled once
per policy (:func:`router_stream.core.compiled.compile_policy`); during a rollout it is the union
of the active policy's and the candidate's sections, so neither can leave the other's PII behind.

DLQ entries (:meth:`Redactor.dlq_entry`)
    The original bytes stay byte-exact on ``router.dlq`` (SPEC §2); ``dlq_entries`` gets a
    masked copy:

    * the **value**: parsed as JSON when it is JSON (named fields and detectors, object keys and
      numbers included, see :func:`~router_stream.core.masking.mask_value`) and serialised
      again; other UTF-8 text gets the detectors; bytes that are not UTF-8 are decoded with
      ``surrogateescape`` so the detectors see every text run inside them, and the bytes between
      runs are kept as they were. A value with nothing to mask is kept byte for byte (never
      re-serialised).
    * the **key** and every **header** (name and value), the same way as a text value;
    * the **error**: detectors, and the values of named top-level signal fields (``tenant``,
      ``signal_id``, ...) that the router's own messages quote;
    * ``signal_id``, ``tenant``, ``kind`` as identifiers (below).

    ``masked`` says whether key, value or headers differ from the originals: then the bytes to
    replay are read back from ``router.dlq`` (``dlq replay``), not from Postgres.

Identifiers (:meth:`Redactor.identifier`)
    ``routing_decisions.signal_id`` is UNIQUE and is the idempotency key of the decisions ledger,
    so two ids must never mask alike (``order-bob@x.com`` and ``order-ann@x.com`` would both be
    ``order-***@x.com``, and the second decision would be dropped as a duplicate). An id that
    masking changes keeps the masked text plus ``~h`` and 16 hex digits of an unkeyed blake2b of
    the original: distinct ids stay distinct, the same id always maps to the same value (so log
    lines, decision rows and DLQ rows of one signal still correlate), and an id with nothing to
    mask is unchanged. The digest does not make a guessable id safe (an SSN can be confirmed by
    hashing guesses), which ``decision_id`` — a hash of ``signal_id`` — already allows: keep PII
    out of ids. An id named in ``redact.fields`` becomes ``[REDACTED]~h<digest>``.

Everything here is pure: bytes and values in, masked values out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from router_stream.core.masking import REDACTED, mask_value, text_masker
from router_stream.core.models import DlqEntry
from router_stream.core.policy import DETECTORS, Detector, RedactPolicy

__all__ = ["DEFAULT_REDACTOR", "ID_FIELDS", "MaskedDlq", "Redactor"]

ID_FIELDS = frozenset({"signal_id", "tenant", "kind"})
"""Signal attributes the router stores as identifiers (see the module docstring)."""

_DIGEST_MARK = "~h"  # a word character before the hex: no detector can start inside the digest
_HEX = frozenset("0123456789abcdef")
_MIN_UNQUOTED = 4  # shorter named values are replaced only where quoted ('ab')


@dataclass(frozen=True, slots=True)
class MaskedDlq:
    """The parts of a DLQ entry as they are persisted (see :meth:`Redactor.dlq_entry`)."""

    error: str
    signal_id: str | None
    tenant: str | None
    kind: str | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    masked: bool
    """key, value or headers differ from the original bytes (replay reads ``router.dlq``)."""


@dataclass(frozen=True, slots=True)
class Redactor:
    """A ``redact`` section compiled for persisting and logging. Build with :meth:`of`."""

    fields: tuple[str, ...] = ()
    detectors: tuple[Detector, ...] = ()
    _text: Callable[[str], str] = field(init=False, repr=False, compare=False)
    _policy: RedactPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_text", text_masker(self.detectors))
        object.__setattr__(self, "_policy", RedactPolicy(fields=list(self.fields),
                                                         detectors=list(self.detectors)))

    @classmethod
    def of(cls, *sections: RedactPolicy) -> Redactor:
        """The union of ``sections`` (fields in order of appearance, detectors in their order)."""
        fields = dict.fromkeys(f for s in sections for f in s.fields)
        wanted = {d for s in sections for d in s.detectors}
        return cls(tuple(fields), tuple(d for d in DETECTORS if d in wanted))

    def union(self, other: Redactor) -> Redactor:
        return Redactor.of(self._policy, other._policy)

    @property
    def active(self) -> bool:
        """False when the section masks nothing (no fields, no detectors)."""
        return bool(self.fields or self.detectors)

    # --- strings ---------------------------------------------------------------------------

    def text(self, text: str) -> str:
        """Free text (an error message, a log field): the detectors."""
        return self._text(text)

    def identifier(self, value: str, name: str) -> str:
        """An id (``signal_id``, ``tenant``, ``kind``) masked so distinct ids stay distinct."""
        masked = REDACTED if name in self.fields else self._text(value)
        if masked == value or self._already_masked(value, name):
            return value
        digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8,
                                 person=b"rs-redact").hexdigest()
        return f"{masked}{_DIGEST_MARK}{digest}"

    def _already_masked(self, value: str, name: str) -> bool:
        """``value`` is an output of :meth:`identifier` (masking twice changes nothing)."""
        head, mark, digest = value[:-18], value[-18:-16], value[-16:]
        if mark != _DIGEST_MARK or len(digest) != 16 or not set(digest) <= _HEX:
            return False
        return head == REDACTED if name in self.fields else self._text(head) == head

    # --- DLQ entries -----------------------------------------------------------------------

    def dlq_entry(self, entry: DlqEntry) -> MaskedDlq:
        """What of ``entry`` is persisted in ``dlq_entries`` (see the module docstring)."""
        return self.dlq_parts(
            error=entry.error, signal_id=entry.signal_id, tenant=entry.tenant, kind=entry.kind,
            key=entry.original_key, value=entry.original_value, headers=entry.original_headers)

    def dlq_parts(self, *, error: str, signal_id: str | None, tenant: str | None,
                  kind: str | None, key: bytes | None, value: bytes | None,
                  headers: Sequence[tuple[str, bytes | None]]) -> MaskedDlq:
        """:meth:`dlq_entry` for the parts of a record read back from ``router.dlq``."""
        headers = list(headers)
        if not self.active:
            return MaskedDlq(error, signal_id, tenant, kind, key, value, headers, masked=False)
        parsed = _parse_json(value)
        named = self._named_values(parsed)
        masked_value = None if value is None else self._value(value, parsed)
        masked_key = None if key is None else self._bytes(key, named)
        masked_headers = [(self._scrub(name, named),
                           None if v is None else self._bytes(v, named)) for name, v in headers]
        return MaskedDlq(
            error=self._scrub(error, named),
            signal_id=self._optional_id(signal_id, "signal_id"),
            tenant=self._optional_id(tenant, "tenant"),
            kind=self._optional_id(kind, "kind"),
            key=masked_key, value=masked_value, headers=masked_headers,
            masked=(masked_key != key or masked_value != value or masked_headers != headers),
        )

    def _optional_id(self, value: str | None, name: str) -> str | None:
        return None if value is None else self.identifier(value, name)

    def _value(self, value: bytes, parsed: Any) -> bytes:
        if parsed is _NOT_JSON:
            return self._bytes(value, ())
        masked = mask_value(parsed, self._policy)
        if masked != parsed:
            return orjson.dumps(masked)
        # JSON that masks to itself can still spell PII that parsing hides: of a duplicate key
        # only the last value is parsed. Then the re-serialisation is stored instead.
        return value if self._bytes(value, ()) == value else orjson.dumps(masked)

    def _bytes(self, data: bytes, named: Sequence[str]) -> bytes:
        text = data.decode("utf-8", "surrogateescape")
        masked = self._scrub(text, named)
        return data if masked == text else masked.encode("utf-8", "surrogateescape")

    def _scrub(self, text: str, named: Sequence[str]) -> str:
        """The values of named top-level fields wherever they occur, then the detectors (last,
        so they see what the replacements put next to each other)."""
        for value in named:
            text = text.replace(repr(value), REDACTED)
            if len(value) >= _MIN_UNQUOTED:
                text = text.replace(value, REDACTED)
        return self._text(text)

    def _named_values(self, parsed: Any) -> tuple[str, ...]:
        """String values of the named top-level fields (``tenant``, ``sender_id`` ...): the
        router's errors quote these (``tenant 'acme' is over its rate limit``), and a key is
        often one of them (``--key-field sender_id``). Payload values are never quoted."""
        if not isinstance(parsed, dict):
            return ()
        found = {parsed.get(f) for f in self.fields if "." not in f}
        values = {v for v in found if isinstance(v, str) and v and v not in REDACTED}
        return tuple(sorted(values, key=lambda v: (-len(v), v)))  # longest first


_NOT_JSON = object()


def _parse_json(value: bytes | None) -> Any:
    if value is None:
        return _NOT_JSON
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return _NOT_JSON


DEFAULT_REDACTOR = Redactor.of(RedactPolicy())
"""What a policy without a ``redact`` section masks: every detector, no named field."""
