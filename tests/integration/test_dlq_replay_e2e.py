"""Issue 5 acceptance, end to end on the real broker and Postgres with the real worker:

500 signals are DLQ'd ``no_healthy_destination`` while their only destination is down; it
recovers; ``dlq replay --reason no_healthy_destination`` sends them back; every one is routed
exactly once (routed topic and Postgres) and marked ``replayed``; a second replay routes nothing.
A replay that fails again comes back with one more attempt and stops at ``--max-attempts``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from router_stream.adapters.control import send_control
from router_stream.config import DLQ, SIGNALS, Settings
from router_stream.core.models import BreakerForce, BreakerReset
from router_stream.dlq.filters import DlqFilter
from router_stream.dlq.replay import replay_dlq
from tests.support.worker import fetch, prepare, produce, read_all, signal, worker

pytestmark = pytest.mark.integration

POLICY = """
name: dlq-replay-e2e
destinations:
  pager: {}
classify:
  - name: alerts
    when: {field: payload.severity, equals: critical}
    kind: alert
routes:
  alert:
    strategy: first_healthy
    tiers: [[pager]]
    retry: {max_attempts: 0}
defaults: {unclassified: dlq, unrouted: dlq}
tenants:
  default: {rate: 100000, burst: 100000}
"""
N = 500


async def statuses(s: Settings) -> Counter[tuple[str, str, int]]:
    rows = await fetch(s, "SELECT reason, status, attempts FROM dlq_entries")
    return Counter((r["reason"], r["status"], r["attempts"]) for r in rows)


async def routed_ids(s: Settings) -> Counter[str]:
    records = await read_all(s, s.routed_topic("pager"))
    return Counter(json.loads(r.value)["signal_id"] for r in records)


async def test_500_dead_lettered_signals_are_routed_exactly_once_after_replay(
    settings: Settings, tmp_path: Path
):
    s = await prepare(settings, tmp_path, POLICY)
    values = [(f"svc-{i % 7}".encode(), signal(i, payload={"severity": "critical", "i": i}))
              for i in range(N)]
    originals = {f"s-{i}": v for i, (_, v) in enumerate(values)}

    # pager is down: every alert has no healthy destination and no retry budget -> DLQ
    await send_control(s, BreakerForce(target="pager", state="open", reason="outage"))
    await produce(s, SIGNALS, values)
    await worker(s).run_until_idle(1.0)
    assert await statuses(s) == Counter({("no_healthy_destination", "pending", 1): N})
    assert await fetch(s, "SELECT 1 FROM routing_decisions") == []
    assert await routed_ids(s) == Counter()

    # pager recovers; the operator replays the DLQ
    await send_control(s, BreakerReset(target="pager"))
    report = await replay_dlq(s, DlqFilter(reasons=("no_healthy_destination",)))
    assert len(report.sent) == N and report.refused == 0
    await worker(s).run_until_idle(1.0)

    routed = await routed_ids(s)
    assert routed == Counter({sid: 1 for sid in originals})  # all 500, exactly once
    decisions = await fetch(s, "SELECT signal_id, input_topic, input_offset, destinations"
                               " FROM routing_decisions")
    assert sorted(d["signal_id"] for d in decisions) == sorted(originals)
    assert {tuple(d["destinations"]) for d in decisions} == {("pager",)}
    assert {d["input_topic"] for d in decisions} == {s.topic(SIGNALS)}
    # each decision keeps the signal's original coordinates, not the replayed record's
    assert max(d["input_offset"] for d in decisions) < N
    assert await statuses(s) == Counter({("no_healthy_destination", "replayed", 1): N})
    for record in (await read_all(s, s.routed_topic("pager")))[:20]:
        body = json.loads(record.value)
        sent = json.loads(originals[body["signal_id"]])
        assert {k: v for k, v in body.items() if k != "route"} == sent

    # a second replay sends and routes nothing new
    again = await replay_dlq(s, DlqFilter(reasons=("no_healthy_destination",)))
    assert again.sent == [] and again.selected == 0
    await worker(s).run_until_idle(1.0)
    assert await routed_ids(s) == routed
    assert len(await fetch(s, "SELECT 1 FROM routing_decisions")) == N
    assert len(await read_all(s, s.topic(SIGNALS))) == 2 * N  # originals + one replay each


async def test_a_replay_that_fails_again_counts_an_attempt_and_stops_at_the_max(
    settings: Settings, tmp_path: Path
):
    s = await prepare(settings, tmp_path, POLICY)
    await send_control(s, BreakerForce(target="pager", state="open", reason="long outage"))
    await produce(s, SIGNALS, [(b"k", signal(i, payload={"severity": "critical"}))
                               for i in range(3)])
    await worker(s).run_until_idle(1.0)
    assert await statuses(s) == Counter({("no_healthy_destination", "pending", 1): 3})

    for attempts in (2, 3):  # pager still down: each replay fails again with one more attempt
        report = await replay_dlq(s, DlqFilter(reasons=("no_healthy_destination",)),
                                  max_attempts=3)
        assert len(report.sent) == 3
        await worker(s).run_until_idle(1.0)
        assert await statuses(s) == Counter({("no_healthy_destination", "pending", attempts): 3})

    # each trip's router.dlq record replaced the x-dlq-* headers: as many as the first one had
    trips: dict[str, list[tuple[int, int, float]]] = {}
    for record in await read_all(s, s.topic(DLQ)):
        h = dict(record.headers)
        trips.setdefault(h["x-signal-id"].decode(), []).append(
            (int(h["x-dlq-attempts"]), len(record.headers), float(h["x-dlq-first-failed-at"])))
    assert len(trips) == 3
    for trip in trips.values():
        assert sorted(a for a, _, _ in trip) == [1, 2, 3]
        assert len({n for _, n, _ in trip}) == 1
        firsts = [f for _, _, f in trip]  # kept, to Postgres' microsecond
        assert max(firsts) - min(firsts) < 1e-5

    refused = await replay_dlq(s, DlqFilter(reasons=("no_healthy_destination",)),
                               max_attempts=3)
    assert refused.sent == [] and refused.refused == 3
    assert len(await read_all(s, s.topic(SIGNALS))) == 3 + 2 * 3
    assert await fetch(s, "SELECT 1 FROM routing_decisions") == []


async def test_entries_sent_again_after_a_lost_mark_are_routed_once_in_order(
    settings: Settings, tmp_path: Path
):
    """The crash window of a replay: the broker acknowledged, the `replayed` mark was lost, and
    the rerun sends the same entries again. The worker routes each signal once, in key order."""
    s = await prepare(settings, tmp_path, POLICY)
    n = 300
    await send_control(s, BreakerForce(target="pager", state="open", reason="outage"))
    await produce(s, SIGNALS, [(f"svc-{i % 3}".encode(),
                                signal(i, payload={"severity": "critical", "i": i}))
                               for i in range(n)])
    await worker(s).run_until_idle(1.0)
    await send_control(s, BreakerReset(target="pager"))

    first = await replay_dlq(s, DlqFilter(reasons=("no_healthy_destination",)))
    assert len(first.sent) == n
    lost = sorted(first.sent)[::2]  # as if SIGKILL came between their ack and their mark
    await fetch(s, "UPDATE dlq_entries SET status = 'pending' WHERE id = ANY($1::bigint[])", lost)
    again = await replay_dlq(s, DlqFilter(reasons=("no_healthy_destination",)))
    assert sorted(again.sent) == lost
    await worker(s).run_until_idle(1.0)

    routed = await read_all(s, s.routed_topic("pager"))
    assert await routed_ids(s) == Counter({f"s-{i}": 1 for i in range(n)})
    last: dict[bytes, int] = {}
    for record in routed:  # each key's signals in their original order
        i = json.loads(record.value)["payload"]["i"]
        assert i > last.get(record.key, -1)
        last[record.key] = i
    assert len(await fetch(s, "SELECT 1 FROM routing_decisions")) == n
    assert await statuses(s) == Counter({("no_healthy_destination", "replayed", 1): n})
