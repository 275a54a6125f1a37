"""A record that fails again after each replay keeps one set of ``x-dlq-*`` headers: replaced,
not appended, with the attempts counted up and the first failure kept (issue 20: Spring Kafka's
growing DLT headers end in RecordTooLargeException)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest

from router_stream.adapters.kafka_io import ConsumedRecord
from router_stream.core.breaker import BreakerConfig
from router_stream.core.compiled import CompiledPolicy
from router_stream.core.engine import RouterEngine
from router_stream.core.models import DlqReason
from router_stream.core.outputs import DlqRecord
from router_stream.core.trust import TrustParams, TrustWeights
from router_stream.core.wire import (
    DLQ_HEADERS,
    H_ATTEMPTS,
    H_FIRST_FAILED,
    H_REASON,
    dlq_headers,
)
from router_stream.dlq.replay import replay_record
from router_stream.dlq.store import DlqRow

NOW = 1_800_000_000.0
ORIGINAL_HEADERS: list[tuple[str, bytes]] = [("traceparent", b"00-abc-01"),
                                                     ("x-empty", b"")]


def unclassifying_policy() -> CompiledPolicy:
    """Every signal is unclassified and the default is the DLQ: each trip fails again."""
    return CompiledPolicy(
        version="p-dlq", routes={}, classify=lambda signal: None, unclassified_kind=None,
        destinations=(), capacity={}, trust_weights=TrustWeights(), trust_params=TrustParams(),
        breaker=BreakerConfig(), tenant_limits={}, default_limit=None,
    )


def row_of(q: DlqRecord, entry_id: int) -> DlqRow:
    """The dlq_entries row the worker writes for ``q`` (what replay reads back)."""
    e = q.entry
    first = datetime.fromtimestamp(e.first_failed_at, tz=UTC)
    return DlqRow(
        id=entry_id, dlq_key=q.dlq_key, reason=e.reason.value, error=e.error,
        signal_id=e.signal_id, tenant=e.tenant, kind=e.kind, attempts=e.attempts,
        status="pending", original_topic=e.original_topic,
        original_partition=e.original_partition, original_offset=e.original_offset,
        original_key=e.original_key, original_headers=list(e.original_headers),
        first_failed_at=first, last_failed_at=first, created_at=first, replayed_at=None,
        replay_count=0, discarded_at=None, discard_reason=None, original_timestamp=None,
        value_size=len(e.original_value or b""), original_value=e.original_value)


@pytest.mark.parametrize("from_topic", [False, True], ids=["from-postgres", "from-router.dlq"])
def test_ten_dlq_cycles_keep_the_header_count_of_the_first(from_topic: bool) -> None:
    """Fail, replay, fail again ten times: the DLQ record's headers have the count of the
    first failure, attempts go 1..10 and the first failure time never moves. ``from_topic``:
    the replay is built from the router.dlq record (as for a masked entry)."""
    engine = RouterEngine(unclassifying_policy())
    value = orjson.dumps({"signal_id": "s1", "sender_id": "svc", "ts": int(NOW * 1000),
                          "payload": {}})
    record = ConsumedRecord("signals", 3, 41, b"k", value, int(NOW * 1000), ORIGINAL_HEADERS)
    counts, attempts = [], []
    for cycle in range(10):
        [q] = engine.decide_batch([record], NOW + cycle).dlq
        counts.append(len(q.headers))
        attempts.append(int(dict(q.headers)[H_ATTEMPTS]))
        assert float(dict(q.headers)[H_FIRST_FAILED]) == NOW  # the first failure, kept
        assert [k for k, _ in q.headers].count(H_REASON) == 1
        on_dlq = ConsumedRecord("router.dlq", 0, cycle, q.entry.original_key,
                                q.entry.original_value, int(NOW * 1000), q.headers)
        row = row_of(q, 7)
        sent = replay_record(_masked(row), on_dlq) if from_topic else replay_record(row)
        record = ConsumedRecord("signals", 3, 100 + cycle, sent.key, sent.value,
                                int(NOW * 1000), sent.headers)
    assert counts == [counts[0]] * 10
    assert attempts == list(range(1, 11))
    assert [(k, v) for k, v in record.headers if k not in DLQ_HEADERS] == ORIGINAL_HEADERS


def _masked(row: DlqRow) -> DlqRow:
    return replace(row, masked=True, original_key=b"[MASKED]", dlq_topic="router.dlq",
                   dlq_partition=0, dlq_offset=0)


def test_dlq_headers_replace_every_router_header_and_keep_the_others_in_order() -> None:
    stale = [("traceparent", b"t"), (H_REASON, b"no_route"), (H_ATTEMPTS, b"3"), ("b", None),
             (H_ATTEMPTS, b"4"), ("x-dlq-id", b"9"), ("x-retry-not-before", b"1.0")]
    headers = dlq_headers(stale, reason=DlqReason.EXPIRED, error="late", topic="signals",
                          partition=1, offset=2, attempts=5, first_failed_at=NOW,
                          signal_id="s1")
    assert headers == [
        ("traceparent", b"t"), ("b", None),
        (H_REASON, b"expired"), ("x-dlq-error", b"late"), ("x-dlq-original-topic", b"signals"),
        ("x-dlq-original-partition", b"1"), ("x-dlq-original-offset", b"2"), (H_ATTEMPTS, b"5"),
        (H_FIRST_FAILED, repr(NOW).encode()), ("x-signal-id", b"s1"),
    ]
    again = dlq_headers(headers, reason=DlqReason.EXPIRED, error="late", topic="signals",
                        partition=1, offset=2, attempts=6, first_failed_at=NOW, signal_id=None)
    assert len(again) == len(headers) - 1  # no signal id this time, nothing appended


def test_the_same_replay_received_twice_is_decided_once_and_the_next_one_again() -> None:
    """A replay killed between the broker's ack and the ``replayed`` mark sends the entry again
    with the same origin and attempts: the engine drops the copy. A later replay (one more
    attempt, after a failure) is decided."""
    engine = RouterEngine(unclassifying_policy())
    value = orjson.dumps({"signal_id": "s1", "sender_id": "svc", "ts": int(NOW * 1000),
                          "payload": {}})
    [q] = engine.decide_batch([ConsumedRecord("signals", 0, 5, b"k", value, 0, [])], NOW).dlq
    sent = replay_record(row_of(q, 3))
    copies = [ConsumedRecord("signals", 0, 6 + n, sent.key, sent.value, 0, sent.headers)
              for n in range(2)]
    first = engine.decide_batch(copies, NOW + 1)
    assert len(first.dlq) == 1 and first.dropped_duplicates == 1
    assert int(dict(first.dlq[0].headers)[H_ATTEMPTS]) == 2
    again = replay_record(row_of(first.dlq[0], 3))
    later = engine.decide_batch(
        [ConsumedRecord("signals", 0, 9, again.key, again.value, 0, again.headers)], NOW + 2)
    assert len(later.dlq) == 1 and later.dropped_duplicates == 0
