"""What is persisted and logged, masked (core/redaction.py): DLQ entries, identifiers, the policy.

The invariants, checked with hypothesis on PII-shaped input: masking is idempotent, no detector
hit survives in any stored part (key, value, headers, error, ids), distinct ids stay distinct,
and a record with nothing to mask is stored byte for byte (never re-serialised).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_stream.core import masking
from router_stream.core.compiled import load_compiled
from router_stream.core.masking import REDACTED, mask_text, mask_value
from router_stream.core.models import DlqEntry, DlqReason
from router_stream.core.policy import DETECTORS, RedactPolicy
from router_stream.core.redaction import DEFAULT_REDACTOR, MaskedDlq, Redactor

EMAIL, PHONE, CARD, SSN = "bob.smith@example.com", "(555) 123-4567", "4111 1111 1111 1111", "123-45-6789"
PII = (EMAIL, PHONE, CARD, SSN, "4111111111111111", "192.168.0.1")

REDACTOR = Redactor.of(RedactPolicy(fields=["payload.user.name", "tenant", "sender_id"]))


def entry(value: bytes | None, **changes: Any) -> DlqEntry:
    fields: dict[str, Any] = dict(
        reason=DlqReason.INVALID_SIGNAL, error="bad", original_topic="signals",
        original_partition=0, original_offset=7, original_key=b"k", original_value=value,
        first_failed_at=1.0)
    fields.update(changes)
    return DlqEntry(**fields)


def stored_texts(m: MaskedDlq) -> list[str]:
    """Every stored part as text, the way a grep over the table would see it."""
    texts = [m.error, m.signal_id or "", m.tenant or "", m.kind or ""]
    for data in (m.key, m.value, *(v for _, v in m.headers)):
        if data is not None:
            texts.append(data.decode("utf-8", "surrogateescape"))
    texts += [name for name, _ in m.headers]
    return texts


def again(m: MaskedDlq, e: DlqEntry) -> DlqEntry:
    """``e`` with its parts replaced by their masked copies (to mask a second time)."""
    return e.model_copy(update=dict(
        error=m.error, signal_id=m.signal_id, tenant=m.tenant, kind=m.kind,
        original_key=m.key, original_value=m.value, original_headers=m.headers))


# --- DLQ entries -------------------------------------------------------------------------------


def test_every_stored_part_of_a_dlq_entry_is_masked() -> None:
    value = orjson.dumps({
        "signal_id": f"s-{EMAIL}", "tenant": "acme-corp", "sender_id": "crm-7",
        "payload": {"user": {"name": "Bob", "email": EMAIL}, "card": CARD, "ssn": SSN,
                    "phone": PHONE, "n": 4111111111111111, EMAIL: "a map keyed by address"},
    })
    e = entry(value, error=f"tenant 'acme-corp' is over its rate limit ({EMAIL})",
              signal_id=f"s-{EMAIL}", tenant="acme-corp", kind="alert", original_key=b"crm-7",
              original_headers=[("x-user", PHONE.encode()), ("bin", b"\xff\x00" + SSN.encode())])
    m = REDACTOR.dlq_entry(e)

    assert m.masked
    for text in stored_texts(m):
        for pii in (*PII, "acme-corp", "crm-7", "Bob"):
            assert pii not in text
    masked_value = orjson.loads(m.value or b"")
    assert masked_value["payload"]["user"] == {"name": REDACTED, "email": "***@example.com"}
    assert masked_value["payload"]["n"] == "[CARD ****1111]"
    assert (masked_value["tenant"], masked_value["sender_id"]) == (REDACTED, REDACTED)
    assert m.error == f"tenant {REDACTED} is over its rate limit (***@example.com)"
    assert m.key == REDACTED.encode()  # the key was a named field's value (sender_id)
    assert m.headers == [("x-user", b"[PHONE]"), ("bin", b"\xff\x00[SSN]")]  # binary kept
    assert m.kind == "alert"
    assert m.tenant is not None and m.tenant.startswith(REDACTED + "~h")
    # "s-bob.smith" is the address's local part; the digest keeps distinct ids distinct
    assert re.fullmatch(r"\*\*\*@example\.com~h[0-9a-f]{16}", m.signal_id or "")


def test_a_record_with_nothing_to_mask_is_stored_byte_for_byte() -> None:
    value = b'{ "signal_id": "s-1",\n  "payload": {"severity": "critical", "n": 1.50} }'
    e = entry(value, signal_id="s-1", tenant="acme", original_headers=[("trace", b"abc")])
    m = DEFAULT_REDACTOR.dlq_entry(e)
    assert not m.masked
    assert (m.value, m.key, m.headers) == (value, b"k", [("trace", b"abc")])
    assert (m.signal_id, m.tenant, m.error) == ("s-1", "acme", "bad")


def test_text_and_binary_values_are_masked_where_they_hold_text() -> None:
    text = DEFAULT_REDACTOR.dlq_entry(entry(f"not json, mail {EMAIL}".encode()))
    assert text.value == b"not json, mail ***@example.com" and text.masked
    raw = b"\x00\x9f\xfe" + EMAIL.encode() + b"\xc3\x28"
    binary = DEFAULT_REDACTOR.dlq_entry(entry(raw))
    assert binary.value == b"\x00\x9f\xfe***@example.com\xc3\x28"  # the bytes around it kept


def test_json_that_hides_pii_from_the_parser_is_stored_reserialised() -> None:
    # Of a duplicate key only the last value is parsed; the first still sits in the bytes.
    value = b'{"to": "' + EMAIL.encode() + b'", "to": "nobody"}'
    m = DEFAULT_REDACTOR.dlq_entry(entry(value))
    assert m.masked and m.value == b'{"to":"nobody"}'


def test_a_policy_that_masks_nothing_stores_everything_as_it_came() -> None:
    nothing = Redactor.of(RedactPolicy(fields=[], detectors=[]))
    e = entry(EMAIL.encode(), error=EMAIL, signal_id=EMAIL, original_key=EMAIL.encode())
    m = nothing.dlq_entry(e)
    assert not nothing.active and not m.masked
    assert (m.value, m.key, m.error, m.signal_id) == (EMAIL.encode(), EMAIL.encode(), EMAIL, EMAIL)


def test_short_named_values_are_replaced_only_where_quoted() -> None:
    redactor = Redactor.of(RedactPolicy(fields=["tenant"], detectors=[]))
    e = entry(b'{"tenant": "ab"}', error="tenant 'ab' is over its rate limit; absent")
    assert redactor.dlq_entry(e).error == f"tenant {REDACTED} is over its rate limit; absent"


def test_detectors_run_after_named_values_are_replaced() -> None:
    # "svc-a" shields the card number from the detectors (a word character before it); once
    # the named value is replaced the number stands alone and must be masked too.
    redactor = Redactor.of(RedactPolicy(fields=["sender_id"]))
    m = redactor.dlq_entry(entry(b'{"sender_id": "svc-a"}', original_key=b"svc-a4111111111111111"))
    assert m.key == b"[REDACTED][CARD ****1111]"


# --- identifiers -------------------------------------------------------------------------------


def test_identifiers_stay_distinct_and_stable() -> None:
    a = DEFAULT_REDACTOR.identifier("order-ann@example.com", "signal_id")
    b = DEFAULT_REDACTOR.identifier("order-bob@example.com", "signal_id")
    assert a != b and a.startswith("***@example.com~h") and b.startswith("***@example.com~h")
    assert a == DEFAULT_REDACTOR.identifier("order-ann@example.com", "signal_id")
    assert DEFAULT_REDACTOR.identifier("s-42", "signal_id") == "s-42"
    named = Redactor.of(RedactPolicy(fields=["signal_id"]))
    assert re.fullmatch(r"\[REDACTED\]~h[0-9a-f]{16}", named.identifier("s-42", "signal_id"))


ids = st.text(alphabet="abs-_.@0123456789:", max_size=24)


@given(ids, ids)
def test_distinct_ids_never_mask_alike(a: str, b: str) -> None:
    if a != b:
        assert DEFAULT_REDACTOR.identifier(a, "signal_id") != DEFAULT_REDACTOR.identifier(
            b, "signal_id")


# --- invariants on generated entries -------------------------------------------------------------

pii_pieces = st.sampled_from([
    *PII, "378282246310005", "+44 20 7946 0958", "555.123.4567", "10.0.0.255", "fe80::1",
    "2001:db8::1", "x@1.2.3.4.com", "[PHONE]", "***@", "[CARD ****1111]", "12:30:45", REDACTED,
])
glue = st.text(alphabet="0123456789abcdef.:-@+*()[] xX_~h", max_size=6)
pii_text = st.lists(st.one_of(pii_pieces, glue), max_size=6).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.sampled_from([4111111111111111, -4111111111111111, 4111111111111111.0, 0.5])
    | pii_text,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.one_of(st.sampled_from(["user", "email", "ssn", "name"]), pii_text),
                      inner, max_size=3),
    max_leaves=10,
)
signals = st.fixed_dictionaries(
    {"signal_id": pii_text, "payload": json_values},
    optional={"tenant": pii_text, "sender_id": pii_text})
values = st.one_of(
    signals.map(orjson.dumps),
    pii_text.map(str.encode),
    st.lists(st.one_of(pii_text.map(str.encode), st.binary(max_size=4))).map(b"".join),
    st.none(),
)
redactors = st.builds(
    lambda fields, detectors: Redactor.of(RedactPolicy(fields=fields, detectors=detectors)),
    st.lists(st.sampled_from(["payload.user", "payload.*.email", "payload.name", "tenant",
                              "sender_id", "signal_id"]), max_size=3, unique=True),
    st.lists(st.sampled_from(DETECTORS), unique=True),
)
entries = st.builds(
    lambda value, key, header, error, sid, tenant: entry(
        value, original_key=key, original_headers=[("h", header)], error=error, signal_id=sid,
        tenant=tenant),
    values, st.one_of(st.none(), pii_text.map(str.encode)), pii_text.map(str.encode),
    pii_text, st.one_of(st.none(), pii_text.filter(bool)), st.one_of(st.none(), pii_text.filter(bool)))


@settings(max_examples=300)
@given(entries, redactors)
def test_no_detector_hit_survives_in_anything_stored(e: DlqEntry, redactor: Redactor) -> None:
    m = redactor.dlq_entry(e)
    for text in stored_texts(m):
        assert mask_text(text, redactor.detectors) == text


@settings(max_examples=300)
@given(entries, redactors)
def test_masking_a_dlq_entry_is_idempotent(e: DlqEntry, redactor: Redactor) -> None:
    once = redactor.dlq_entry(e)
    twice = redactor.dlq_entry(again(once, e))
    assert twice == MaskedDlq(**{**{s: getattr(once, s) for s in MaskedDlq.__slots__},
                                 "masked": False})


@given(entries, redactors)
def test_masked_says_whether_the_stored_bytes_differ(e: DlqEntry, redactor: Redactor) -> None:
    m = redactor.dlq_entry(e)
    same = (m.key, m.value, m.headers) == (e.original_key, e.original_value, e.original_headers)
    assert m.masked is not same


@given(signals, redactors)
def test_named_fields_are_redacted_in_the_stored_value(signal: dict[str, Any],
                                                       redactor: Redactor) -> None:
    stored = orjson.loads(redactor.dlq_entry(entry(orjson.dumps(signal))).value or b"")
    for path in redactor.fields:
        if "." not in path and path in signal:
            assert stored[path] == REDACTED


# --- the detector prefilter ----------------------------------------------------------------------


def _unfiltered(text: str) -> str:
    """mask_text without the :data:`masking._CANDIDATE` shortcut."""
    for _ in range(8):
        masked = text
        for pattern, repl in masking._ALL_PASSES:
            masked = pattern.sub(repl, masked)
        if masked == text:
            return text
        text = masked
    return text


@settings(max_examples=500)
@given(st.one_of(pii_text, st.text(max_size=60)))
def test_the_prefilter_never_skips_text_a_detector_would_change(text: str) -> None:
    assert mask_text(text) == _unfiltered(text)


def test_mask_value_masks_keys_and_card_numbers_of_any_sign() -> None:
    masked = mask_value({EMAIL: -4111111111111111, "f": 4111111111111111.0, "ok": True},
                        RedactPolicy())
    assert masked == {"***@example.com": "-[CARD ****1111]", "f": "[CARD ****1111].0",
                      "ok": True}


# --- the compiled policy -------------------------------------------------------------------------


def test_the_compiled_policy_carries_its_redactor_and_a_rollout_candidates_too() -> None:
    compiled = load_compiled("""
destinations: {pager: {}}
routes: {alert: {strategy: first_healthy, destinations: [pager]}}
redact: {fields: [payload.user.email], detectors: [email]}
rollout:
  mode: shadow
  sample: 0.5
  candidate:
    destinations: {pager: {}}
    routes: {alert: {strategy: first_healthy, destinations: [pager]}}
    redact: {fields: [sender_id], detectors: [ssn]}
""")
    assert compiled.redactor.fields == ("payload.user.email", "sender_id")
    assert compiled.redactor.detectors == ("email", "ssn")
    plain = load_compiled("destinations: {pager: {}}\n"
                          "routes: {alert: {strategy: first_healthy, destinations: [pager]}}\n")
    assert plain.redactor == DEFAULT_REDACTOR and DEFAULT_REDACTOR.detectors == DETECTORS


@pytest.mark.parametrize("sections", [
    (RedactPolicy(fields=["tenant"], detectors=["email"]), RedactPolicy(detectors=["ipv4"])),
])
def test_union_keeps_every_field_and_detector(sections: tuple[RedactPolicy, ...]) -> None:
    union = Redactor.of(*sections)
    assert union.fields == ("tenant",) and union.detectors == ("email", "ipv4")
    assert Redactor.of(sections[0]).union(Redactor.of(sections[1])) == union
