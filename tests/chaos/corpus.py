"""The poison corpus: records a producer can put on ``signals`` that are not routable signals.

Each entry says what it is and the DLQ reason it must get. The suite checks that every one is
dead-lettered exactly once (Postgres and ``router.dlq``), byte-exact, with the SPEC headers and its
own headers kept, that the partition it sits in keeps moving, and that the worker's memory does
not grow with it (scenario 6).

Two kinds of record never reach the worker and are checked at the door instead: a record larger
than the topic's ``max.message.bytes`` and one whose timestamp is further in the future than the
broker allows (``log.message.timestamp.after.max.ms``) — the broker refuses them to the producer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from tests.chaos.harness import Item

MB = 1024 * 1024
POISON_KEY = b"poison"


@dataclass(frozen=True)
class Poison:
    label: str
    value: bytes | None
    expect: str
    key: bytes | None = POISON_KEY
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_ms: int | None = None
    signal_id: str | None = None  # the x-signal-id the DLQ record must carry, when known


def poison_corpus(tag: str) -> list[Poison]:
    """≥ 25 kinds of poison; ``tag`` keeps signal ids unique per round."""
    sid = f"{tag}-p"
    now_ms = int(time.time() * 1000)

    def js(label: str, **fields: object) -> bytes:
        return orjson.dumps({"signal_id": f"{sid}-{label}", **fields})

    deep = b'{"signal_id": "x", "sender_id": "s", "payload": ' + b'{"a": ' * 5000 + b"1" + \
        b"}" * 5001
    five_mb = "x" * (5 * MB)
    return [
        Poison("invalid-utf8", b'{"signal_id": "' + sid.encode() + b'-u", "sender_id": "\xff\xfe"}',
               "invalid_json"),
        Poison("truncated-json", b'{"signal_id": "%s-t", "sender_id": "a", "payl' % sid.encode(),
               "invalid_json"),
        Poison("nan", b'{"signal_id": "%s-nan", "sender_id": "a", "value": NaN}' % sid.encode(),
               "invalid_json"),
        Poison("infinity", b'{"signal_id": "%s-inf", "sender_id": "a", "value": Infinity}'
               % sid.encode(), "invalid_json"),
        Poison("minus-infinity", b'{"signal_id": "%s-minf", "sender_id": "a", "value": -Infinity}'
               % sid.encode(), "invalid_json"),
        Poison("lone-surrogate", b'{"signal_id": "%s-sur", "sender_id": "\\ud800"}'
               % sid.encode(), "invalid_json"),
        Poison("raw-control-char", b'{"signal_id": "%s-ctl", "sender_id": "a\x01b"}'
               % sid.encode(), "invalid_json"),
        Poison("empty-value", b"", "invalid_json"),
        Poison("utf8-bom", b"\xef\xbb\xbf" + js("bom", sender_id="a"), "invalid_json"),
        Poison("number-overflows-double", b'{"signal_id": "%s-big", "sender_id": "a", '
               b'"value": 1e400}' % sid.encode(), "invalid_json"),
        Poison("deep-nesting-5000", deep, "invalid_json"),
        Poison("int-over-64-bit-priority",
               b'{"signal_id": "%s-i65", "sender_id": "a", "priority": 36893488147419103232}'
               % sid.encode(), "invalid_signal", signal_id=f"{sid}-i65"),
        Poison("int-64-bit-ts", js("i64ts", sender_id="a", ts=2**63 - 1), "invalid_signal",
               signal_id=f"{sid}-i64ts"),
        Poison("5mb-string-in-sender-id", js("5mbid", sender_id=five_mb), "invalid_signal",
               signal_id=f"{sid}-5mbid"),
        Poison("5mb-string-in-payload", js("5mbpl", sender_id="a", payload={"blob": five_mb}),
               "unclassified", signal_id=f"{sid}-5mbpl"),
        Poison("oversized-7mb-record", js("7mb", sender_id="a",
                                          payload={"blob": "y" * (7 * MB)}),
               "unclassified", signal_id=f"{sid}-7mb"),
        Poison("wrong-type-sender-id", js("wt1", sender_id=12345), "invalid_signal",
               signal_id=f"{sid}-wt1"),
        Poison("wrong-type-payload", js("wt2", sender_id="a", payload="severity=critical"),
               "invalid_signal", signal_id=f"{sid}-wt2"),
        Poison("wrong-type-priority", js("wt3", sender_id="a", priority="high"),
               "invalid_signal", signal_id=f"{sid}-wt3"),
        Poison("wrong-type-value", js("wt4", sender_id="a", value="NaN"), "invalid_signal",
               signal_id=f"{sid}-wt4"),
        Poison("priority-out-of-range", js("pr", sender_id="a", priority=42), "invalid_signal",
               signal_id=f"{sid}-pr"),
        Poison("negative-ttl", js("ttl", sender_id="a", ttl_ms=-5), "invalid_signal",
               signal_id=f"{sid}-ttl"),
        Poison("signal-id-too-long", orjson.dumps({"signal_id": "z" * 300, "sender_id": "a"}),
               "invalid_signal"),
        Poison("missing-sender-id", js("ms", payload={"severity": "critical"}), "invalid_signal",
               signal_id=f"{sid}-ms"),
        Poison("json-array", b'[{"signal_id": "a", "sender_id": "b"}]', "invalid_signal"),
        Poison("json-string", b'"critical alert"', "invalid_signal"),
        Poison("json-null", b"null", "invalid_signal"),
        Poison("tombstone", None, "invalid_signal"),
        # issue 15: a header without a value (Kafka allows it) on a record bound for the DLQ
        Poison("null-header-value", b'{"signal_id": "%s-nh", "sender_id": "a", "ts": 1'
               % sid.encode(), "invalid_json",
               headers=(("x-trace", b"t1"), ("x-null", None), ("x-null", None))),
        # issue 15: NUL escapes in the ids that become Postgres text columns
        Poison("nul-escape-in-ids", orjson.dumps({
            "signal_id": f"{sid}-nul\u0000", "tenant": "t\u0000", "sender_id": "a\u0000b",
            "payload": {"colour": "nul"}}).replace(b"\\u0000", b"\u0000"), "unclassified",
               signal_id=f"{sid}-nul\x00"),
        Poison("rtl-and-emoji-ids", js("rtl\u202e\U0001f4a5", sender_id="\u05d0\u202e",
                                       payload={"colour": "\U0001f308"}),
               "unclassified", signal_id=f"{sid}-rtl\u202e\U0001f4a5"),
        Poison("unknown-kind", js("uk", sender_id="a", kind="no-such-kind"), "no_route",
               signal_id=f"{sid}-uk"),
        Poison("unclassified", js("uc", sender_id="a", payload={"colour": "blue"}),
               "unclassified", signal_id=f"{sid}-uc"),
        Poison("bad-headers", js("bh", sender_id="a", payload={"colour": "red"}), "unclassified",
               headers=(("x-binary", b"\xff\x00\xfe"), ("x-dlq-original-partition", b"abc"),
                        ("x-dlq-attempts", b"-1"), ("traceparent", b"\xff-\xfe-\x00"),
                        ("", b"empty name"), ("x-dup", b"1"), ("x-dup", b"2")),
               signal_id=f"{sid}-bh"),
        Poison("forged-retry-headers", js("fr", sender_id="a", payload={"colour": "green"}),
               "unclassified", headers=(("x-retry-not-before", b"99999999999"),
                                        ("x-dlq-original-topic", b"elsewhere")),
               signal_id=f"{sid}-fr"),
        Poison("ts-beyond-year-9999", js("fut", sender_id="a", ts=253_402_300_800_000),
               "invalid_signal", signal_id=f"{sid}-fut"),
        Poison("ts-negative", js("neg", sender_id="a", ts=-1), "invalid_signal",
               signal_id=f"{sid}-neg"),
        Poison("ts-not-a-time", js("nat", sender_id="a", ts="yesterday"), "invalid_signal",
               signal_id=f"{sid}-nat"),
        Poison("ts-without-zone", js("tz", sender_id="a", ts="2024-01-01T00:00:00"),
               "invalid_signal", signal_id=f"{sid}-tz"),
        Poison("past-ts-expired", js("old", sender_id="a", ts=now_ms - 86_400_000, ttl_ms=1000,
                                     payload={"severity": "critical"}), "expired",
               signal_id=f"{sid}-old"),
        Poison("record-timestamp-1970-expired", js("r1970", sender_id="a", ttl_ms=60_000,
                                                   payload={"severity": "critical"}),
               "expired", timestamp_ms=1, signal_id=f"{sid}-r1970"),
        Poison("ts-far-future-but-valid", js("y2999", sender_id="a", ts="2999-01-01T00:00:00Z",
                                             payload={"colour": "far"}),
               "unclassified", signal_id=f"{sid}-y2999"),
        Poison("null-key", js("nk", sender_id="a", payload={"colour": "none"}), "unclassified",
               key=None, signal_id=f"{sid}-nk"),
        Poison("binary-key", js("bk", sender_id="a", payload={"colour": "bin"}), "unclassified",
               key=b"\xff\xfe\x00poison", signal_id=f"{sid}-bk"),
        # The first copy is a routable alert (checked as a decision); the second is the poison.
        Poison("duplicate-id-first", js("dup", sender_id="a", payload={"severity": "critical"}),
               "alert", signal_id=f"{sid}-dup"),
        Poison("duplicate-id-second", js("dup", sender_id="a", payload={"severity": "critical"}),
               "duplicate", signal_id=f"{sid}-dup"),
    ]


def corpus_items(tag: str, start: int) -> tuple[list[Item], dict[int, Poison]]:
    """The corpus as stream items, each followed by a routable alert on the same key (so the
    same partition): every follower must be decided — the partition keeps moving."""
    items: list[Item] = []
    poison_of: dict[int, Poison] = {}
    i = start
    for p in poison_corpus(tag):
        items.append(Item(i, p.key, p.value, p.expect, p.headers, p.timestamp_ms, p.label))
        poison_of[i] = p
        i += 1
        follower = orjson.dumps({"signal_id": f"{tag}-after-{p.label}", "sender_id": "poison",
                                 "payload": {"severity": "critical"}})
        items.append(Item(i, p.key, follower, "alert", (), None, f"after {p.label}"))
        i += 1
    return items, poison_of


def door_refusals() -> list[tuple[str, bytes, int | None]]:
    """Records the broker must refuse at produce time: (label, value, timestamp_ms)."""
    too_big = orjson.dumps({"signal_id": "too-big", "sender_id": "a", "payload": {
        "blob": "z" * (9 * MB)}})
    future = orjson.dumps({"signal_id": "future-record", "sender_id": "a"})
    return [("record-over-max.message.bytes", too_big, None),
            ("record-timestamp-10-years-ahead", future,
             int(time.time() * 1000) + 10 * 365 * 86_400_000)]
