"""``router-stream persist`` on the real broker and Postgres: rows from records, offsets after
the transaction, and no record or row that can stop it (issue 15's Postgres half)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
import pytest

from router_stream.config import DECISIONS, DLQ, EVENTS, SIGNALS
from router_stream.core.events import PolicyVersionEvent, TrustSnapshotEvent, encode_event
from tests.support.kafka_admin import Admin
from tests.support.worker import POLICY, fetch, prepare, produce, signal, worker

pytestmark = pytest.mark.integration


def _decision(i: int, **fields: Any) -> bytes:
    body = dict(decision_id=f"dec-{i}", signal_id=f"s-{i}", tenant="default", kind="alert",
                destinations=["pager"], strategy="first_healthy", tier=0, policy_version="v1",
                confidence=0.9, trust={"pager": 0.8}, breakers={"pager": "closed"},
                input_topic="t.signals", input_partition=0, input_offset=i,
                decided_at=2e9, signal_ts=2e9 - 1)
    return orjson.dumps(body | fields)


async def _committed(settings, topic: str, partition: int) -> int | None:
    return await Admin(settings.kafka_bootstrap).committed(
        settings.projection_group_id, topic, partition)


async def test_rows_from_records_with_bad_content_isolated_and_offsets_committed(
        settings, tmp_path, project_to_idle):
    s = await prepare(settings, tmp_path)
    good = [(b"k", _decision(i)) for i in range(10)]
    nul = (b"k", _decision(10, signal_id="a\u0000b", tenant="t\u0000"))
    too_big_tier = (b"k", _decision(11, tier=2**40))  # past int4: refused when decoded
    not_a_decision = (b"k", b'{"hello": "world"}')
    at = await produce(s, DECISIONS, [*good[:5], nul, too_big_tier, not_a_decision, *good[5:]])
    (partition, _), (_, last) = at[6], at[-1]  # one key: one partition
    await produce(s, DLQ, [(b"k", b"v")])  # no x-dlq-* headers: not ours
    key, value = encode_event(TrustSnapshotEvent(scores={"src\u00001": 0.5}, at=100.0))
    # a source id past what its unique index holds (random: no compression): refused by
    # Postgres at write time, the row isolated from its batch
    unindexable = encode_event(TrustSnapshotEvent(scores={os.urandom(10_000).hex(): 0.5},
                                                  at=100.0))
    events_at = await produce(s, EVENTS, [(key, value), unindexable, (b"x", b"not json")])

    projection = await project_to_idle(s)

    ids = {r["signal_id"] for r in await fetch(s, "SELECT signal_id FROM routing_decisions")}
    assert ids == {f"s-{i}" for i in range(10)} | {"a\\u0000b"}
    assert [r["source_id"] for r in await fetch(s, "SELECT source_id FROM trust_snapshots")] == [
        "src\\u00001"]
    m = projection.metrics.registry.get_sample_value
    assert m("router_projection_rows_skipped_total", {"table": "trust_snapshots"}) == 1
    assert m("router_projection_bad_records_total", {"topic": s.topic(DECISIONS)}) == 2
    assert m("router_projection_bad_records_total", {"topic": s.topic(DLQ)}) == 1
    assert m("router_projection_bad_records_total", {"topic": s.topic(EVENTS)}) == 1
    # what was skipped is reported by its position, and the commit went past it
    assert f"{s.topic(DECISIONS)}/{partition}/{at[6][1]}" in projection.skipped
    event_partition, event_offset = events_at[1]
    assert f"{s.topic(EVENTS)}/{event_partition}/{event_offset}" in projection.skipped
    assert await _committed(s, s.topic(DECISIONS), partition) == last + 1
    assert m("router_projection_lag_seconds") == 0.0

    again = await project_to_idle(s)  # a restart reads nothing again
    assert again.projected == 0


async def test_a_nul_in_a_signal_is_routed_and_recorded_escaped_and_its_batch_with_it(
        settings, tmp_path):
    s = await prepare(settings, tmp_path)
    crit = {"payload": {"severity": "critical"}}
    values = [signal(i, **crit) for i in range(20)]
    values.insert(7, orjson.dumps({"signal_id": "a\u0000b", "sender_id": "s", "tenant": "t\u0000",
                                   "kind": "alert", "payload": {"text": "refund\u0000"}}))
    await produce(s, SIGNALS, [(b"k", v) for v in values])

    w = worker(s)
    await w.run_until_idle(0.5)

    rows = await fetch(s, "SELECT signal_id, tenant FROM routing_decisions")
    assert sorted(r["signal_id"] for r in rows) == sorted(
        [f"s-{i}" for i in range(20)] + ["a\\u0000b"])
    assert {r["tenant"] for r in rows} == {"default", "t\\u0000"}
    assert w.projection is not None and not w.projection.skipped


async def test_policy_versions_follow_the_events_and_the_active_one_masks(settings, tmp_path,
                                                                          project_to_idle):
    s = await prepare(settings, tmp_path)
    masking = POLICY + "redact: {fields: [tenant]}\n"
    key, value = encode_event(PolicyVersionEvent(version="v9", policy_yaml=masking,
                                                 status="active", published_by="ops", at=1.0))
    await produce(s, EVENTS, [(key, value)])
    await asyncio.wait_for(project_to_idle(s), 60)
    (policy,) = await fetch(s, "SELECT version, status, published_by FROM policy_versions")
    assert dict(policy) == {"version": "v9", "status": "active", "published_by": "ops"}

    # a restarted projection masks by the policy recorded active, not by the policy file
    await produce(s, DECISIONS, [(b"k", _decision(1, tenant="acme"))])
    await asyncio.wait_for(project_to_idle(s), 60)
    (row,) = await fetch(s, "SELECT tenant FROM routing_decisions")
    assert row["tenant"].startswith("[REDACTED]~h")


async def test_operators_are_told_how_far_behind_the_projection_is(settings, tmp_path,
                                                                  project_to_idle):
    from router_stream.projection.lag import projection_lag

    s = await prepare(settings, tmp_path)
    assert await projection_lag(s, s.topic(DLQ)) is None  # nothing there: nothing behind
    await produce(s, DLQ, [(b"k", b"v")] * 3)

    lag = await projection_lag(s, s.topic(DLQ))
    assert lag is not None and lag.records == 3
    assert lag.seconds is not None and 0 <= lag.seconds < 60
    assert "3 record(s) behind" in lag.describe(s.topic(DLQ))

    await project_to_idle(s)  # (not DLQ records of ours: skipped, but written past)
    assert await projection_lag(s, s.topic(DLQ)) is None


def _dlq_headers(offset: int, *, supersedes: bool) -> list[tuple[str, bytes]]:
    headers = [("x-dlq-reason", b"processing_error"),
               ("x-dlq-error", b"produce to routed.pager refused: MessageSizeTooLargeError"),
               ("x-dlq-original-topic", b"t.signals"), ("x-dlq-original-partition", b"0"),
               ("x-dlq-original-offset", str(offset).encode()), ("x-dlq-attempts", b"1"),
               ("x-dlq-first-failed-at", b"2000000000.0"), ("x-signal-id", f"s-{offset}".encode())]
    return headers + ([("x-dlq-supersedes-decision", b"true")] if supersedes else [])


async def test_a_dlq_entry_for_a_refused_output_replaces_the_decision_of_its_input(
        settings, tmp_path, project_to_idle):
    """The broker refused an output of an input whose decision record was already written, so
    the worker dead-lettered the input: that entry, not the decision, is its one outcome —
    whichever of the two records the projection reads first."""
    s = await prepare(settings, tmp_path)
    await produce(s, DECISIONS, [(b"k", _decision(1)), (b"k", _decision(2))])
    await project_to_idle(s)  # the decisions are rows before the DLQ records arrive
    await produce(s, DLQ, [(b"k", b'{"sender_id": "a"}')], headers=_dlq_headers(1, supersedes=True))
    await produce(s, DLQ, [(b"k", b'{"sender_id": "b"}')], headers=_dlq_headers(2, supersedes=False))
    await produce(s, DLQ, [(b"k", b'{"sender_id": "c"}')], headers=_dlq_headers(3, supersedes=True))
    await produce(s, DECISIONS, [(b"k", _decision(3))])  # its decision comes after its entry
    await project_to_idle(s)

    decided = {r["input_offset"] for r in await fetch(s, "SELECT input_offset FROM routing_decisions")}
    dead = {r["original_offset"] for r in await fetch(s, "SELECT original_offset FROM dlq_entries")}
    assert decided == {2}  # an ordinary late DLQ record still loses to the earlier decision
    assert dead == {1, 3}


async def test_written_through_a_fixed_target_while_others_keep_producing(settings, tmp_path):
    """A draining worker waits for the projection to write what was on the topics when it
    stopped routing, not for an end that other workers keep moving."""
    from router_stream.projection import Projection

    s = await prepare(settings, tmp_path)
    await produce(s, DECISIONS, [(b"k", _decision(i)) for i in range(5)])
    projection = Projection(s, http=False)
    await projection.start()
    ends = await projection.end_offsets()
    assert ends is not None and sum(ends.values()) == 5
    assert not await projection.written_through(ends)  # nothing written yet

    async def others_keep_producing() -> None:
        i = 5
        while True:
            await produce(s, DECISIONS, [(b"k", _decision(i))])
            i += 1

    more = asyncio.create_task(others_keep_producing())
    running = asyncio.create_task(projection.run())
    try:
        async with asyncio.timeout(30):
            while not await projection.written_through(ends):
                await asyncio.sleep(0.05)
    finally:
        more.cancel()
        projection.request_stop()
        await running
    ids = {r["signal_id"] for r in await fetch(s, "SELECT signal_id FROM routing_decisions")}
    assert {f"s-{i}" for i in range(5)} <= ids
