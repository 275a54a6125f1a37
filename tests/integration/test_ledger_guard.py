"""Exactly one outcome per input record in Postgres, even when re-processing decides otherwise.

Rate-limit buckets and the dedupe window start empty in a restarted worker, so a record DLQ'd as
``rate_limited`` before a crash can be routed when it is processed again (and the reverse). The
projection keeps the later attempt's outcome (projection/writer.py ``latest_outcomes``): that
attempt had all its outputs acknowledged before its offset was committed; an earlier one may
have died after its decision record and before its routed records.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml

from router_stream.adapters import postgres as pg
from router_stream.adapters.postgres.rows import decode_decision, dlq_row_from_record
from router_stream.core.compiled import load_compiled
from router_stream.core.engine import RouterEngine
from router_stream.core.outputs import BatchResult
from router_stream.core.redaction import DEFAULT_REDACTOR
from router_stream.core.wire import (
    H_ATTEMPTS,
    H_DLQ_ID,
    H_OFFSET,
    H_PARTITION,
    H_TOPIC,
)
from router_stream.projection.writer import ProjectionBatch, write_batch

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.yaml"
NOW = 1_800_000_000.0
LATER = NOW + 5  # a restarted worker decides the same inputs again


class Rec:
    def __init__(self, value: bytes, offset: int, headers=None) -> None:
        self.value, self.offset, self.key = value, offset, b"k"
        self.topic, self.partition, self.timestamp = "t.signals", 0, int(NOW * 1000)
        self.headers = headers or []


def _engine() -> RouterEngine:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["tenants"]["tiny-co"] = {"rate": 0}  # burst 1: the first signal passes, then none
    data["routes"]["alert"]["on_duplicate"] = "dlq"
    return RouterEngine(load_compiled(yaml.safe_dump(data)))


def _alert(i: int) -> bytes:
    return orjson.dumps({"signal_id": f"s{i}", "sender_id": "mon", "tenant": "tiny-co",
                         "payload": {"severity": "critical"}})


async def _ledger(conn) -> tuple[dict[str, str], dict[str, tuple[str, int, str]]]:
    decisions = {r["signal_id"]: f"{r['input_offset']}" for r in
                 await conn.fetch("SELECT signal_id, input_offset FROM routing_decisions")}
    dlq = {r["dlq_key"]: (r["reason"], r["attempts"], r["status"]) for r in
           await conn.fetch("SELECT dlq_key, reason, attempts, status FROM dlq_entries")}
    return decisions, dlq


def _batch(records) -> ProjectionBatch:
    """What the projection makes of the records a worker produced."""
    batch = ProjectionBatch()
    for r in records:
        at = f"{r.topic}/{r.partition}/{r.offset}"
        if r.topic.endswith("router.decisions"):
            batch.add_decision(decode_decision(r.value), at, r.timestamp, DEFAULT_REDACTOR)
        elif r.topic.endswith("router.dlq"):
            batch.dlq.append((dlq_row_from_record(r), at, r.timestamp))
    return batch


@pytest.fixture
def persist_outputs(kafka_log):
    """Write the records of batches decided at the given times as the projection does (each
    call: one projection batch). A record's timestamp is its batch's decision time."""
    log = kafka_log("t.")

    async def persist(pool, *results: tuple[BatchResult, float]) -> None:
        records = [r for result, at in results for r in log.of(result, int(at * 1000))]
        async with pool.acquire() as conn:
            await write_batch(conn, _batch(records), DEFAULT_REDACTOR)

    return persist


@pytest.fixture
async def pool(settings):
    await pg.migrate_database(settings)
    p = await pg.create_pool(settings)
    yield p
    await p.close()


ORDERS = ["in two batches", "in one batch", "the first one late"]  # the last: read out of order


async def _persist_in(order: str, persist_outputs, pool, first, again) -> None:
    """Project ``first`` (decided at NOW) and ``again`` (LATER) in ``order``."""
    if order == "in two batches":
        await persist_outputs(pool, (first, NOW))
        await persist_outputs(pool, (again, LATER))
    elif order == "in one batch":
        await persist_outputs(pool, (first, NOW), (again, LATER))
    else:
        await persist_outputs(pool, (again, LATER))
        await persist_outputs(pool, (first, NOW))


async def _ledger_after(order: str, persist_outputs, pool, first, again):
    """The ledger (:func:`_ledger`) once ``first`` and ``again`` are projected in ``order``."""
    await _persist_in(order, persist_outputs, pool, first, again)
    async with pool.acquire() as conn:
        return await _ledger(conn)


@pytest.mark.parametrize("order", ORDERS)
async def test_the_later_outcome_wins_in_both_directions(pool, persist_outputs, order):
    first = _engine().decide_batch([Rec(_alert(1), 1), Rec(_alert(2), 2)], NOW)
    assert [q.entry.reason.value for q in first.dlq] == ["rate_limited"]  # s2 over the limit
    # After a "crash", a fresh engine decides s2 (fresh bucket) and rate-limits s1 instead.
    again = _engine().decide_batch([Rec(_alert(2), 2), Rec(_alert(1), 1)], LATER)
    assert {d.signal_id for d in again.decisions} == {"s2"}
    assert [q.entry.signal_id for q in again.dlq] == ["s1"]
    decisions, dlq = await _ledger_after(order, persist_outputs, pool, first, again)
    assert decisions == {"s2": "2"}
    assert dlq == {"t.signals/0/1": ("rate_limited", 1, "pending")}


async def test_an_entry_an_operator_replayed_is_kept_beside_a_later_decision(
        pool, persist_outputs):
    first = _engine().decide_batch([Rec(_alert(1), 1), Rec(_alert(2), 2)], NOW)
    await persist_outputs(pool, (first, NOW))
    async with pool.acquire() as conn:
        await conn.execute("UPDATE dlq_entries SET status = 'replayed', replayed_at = now()")
    again = _engine().decide_batch([Rec(_alert(2), 2)], LATER)
    await persist_outputs(pool, (again, LATER))

    async with pool.acquire() as conn:
        decisions, dlq = await _ledger(conn)
    assert decisions == {"s1": "1", "s2": "2"}
    assert dlq == {"t.signals/0/2": ("rate_limited", 1, "replayed")}


@pytest.mark.parametrize("order", ORDERS)
async def test_a_record_decided_again_in_the_same_worker_keeps_its_decision(
        pool, persist_outputs, order):
    """A worker that decides a record again (its batch failed: a rebalance during a broker
    outage) finds the signal in its own dedupe window: that is no new outcome."""
    engine = _engine()
    first = engine.decide_batch([Rec(_alert(1), 1)], NOW)
    again = engine.decide_batch([Rec(_alert(1), 1)], LATER)
    assert [q.entry.reason.value for q in again.dlq] == ["duplicate"]
    decisions, dlq = await _ledger_after(order, persist_outputs, pool, first, again)
    assert decisions == {"s1": "1"}
    assert dlq == {}


@pytest.mark.parametrize("order", ORDERS)
async def test_a_duplicate_of_another_record_stays_one_after_a_restart(
        pool, persist_outputs, order):
    """Record 2 repeats record 1's signal_id. A restarted worker (empty dedupe window) decides
    record 2 again: the signal's row stays record 1's, and record 2's outcome its DLQ entry."""
    first = _engine().decide_batch([Rec(_alert(1), 1), Rec(_alert(1), 2)], NOW)
    assert [q.entry.reason.value for q in first.dlq] == ["duplicate"]
    again = _engine().decide_batch([Rec(_alert(1), 2)], LATER)
    assert [d.signal_id for d in again.decisions] == ["s1"]
    decisions, dlq = await _ledger_after(order, persist_outputs, pool, first, again)
    assert decisions == {"s1": "1"}
    assert dlq == {"t.signals/0/2": ("duplicate", 1, "pending")}


def _posing_as(offset: int) -> list[tuple[str, bytes]]:
    """Origin headers a producer copied from another record (as retries and replays carry)."""
    return [(H_TOPIC, b"t.signals"), (H_PARTITION, b"0"), (H_OFFSET, str(offset).encode())]


@pytest.mark.parametrize("order", ORDERS)
async def test_a_record_posing_as_another_input_cannot_replace_its_outcome(
        pool, persist_outputs, order):
    first = _engine().decide_batch([Rec(_alert(1), 1), Rec(_alert(2), 2)], NOW)  # s2 limited
    # Later, s9 poses as record 2 and is decided; s7 poses as record 1 and is rate-limited.
    again = _engine().decide_batch(
        [Rec(_alert(9), 9, _posing_as(2)), Rec(_alert(7), 7, _posing_as(1))], LATER)
    assert [d.signal_id for d in again.decisions] == ["s9"]
    assert [q.entry.signal_id for q in again.dlq] == ["s7"]
    decisions, dlq = await _ledger_after(order, persist_outputs, pool, first, again)
    assert decisions == {"s1": "1"}
    assert dlq == {"t.signals/0/2": ("rate_limited", 1, "pending")}


async def test_replay_of_a_pending_entry_is_decided_and_a_failing_replay_counts_attempts(
        pool, persist_outputs):
    first = _engine().decide_batch([Rec(_alert(1), 1), Rec(_alert(2), 2)], NOW)
    await persist_outputs(pool, (first, NOW))
    replay_headers = [(H_TOPIC, b"t.signals"), (H_PARTITION, b"0"), (H_OFFSET, b"2"),
                      (H_ATTEMPTS, b"1"), (H_DLQ_ID, b"42")]

    # Replayed while its tenant is still over the limit: back in the DLQ with attempts 2.
    engine = _engine()
    engine.decide_batch([Rec(_alert(9), 9)], NOW)  # use up tiny-co's single token
    failed = engine.decide_batch([Rec(_alert(2), 0, replay_headers)], NOW + 1)
    assert [(q.entry.reason.value, q.entry.attempts) for q in failed.dlq] == [("rate_limited", 2)]
    async with pool.acquire() as conn:
        await conn.execute("UPDATE dlq_entries SET status = 'replayed', replayed_at = now()")
    await persist_outputs(pool, (failed, NOW + 1))
    async with pool.acquire() as conn:
        _, dlq = await _ledger(conn)
    assert dlq == {"t.signals/0/2": ("rate_limited", 2, "pending")}

    # Replayed again with room in the bucket: decided, although the entry is still pending.
    ok = _engine().decide_batch(
        [Rec(_alert(2), 0, replay_headers[:-2] + [(H_ATTEMPTS, b"2"), (H_DLQ_ID, b"42")])],
        NOW + 2)
    assert [d.signal_id for d in ok.decisions] == ["s2"]
    await persist_outputs(pool, (ok, NOW + 2))
    async with pool.acquire() as conn:
        decisions, _ = await _ledger(conn)
    assert decisions == {"s1": "1", "s2": "2"}


async def test_a_batch_written_again_after_a_crash_adds_no_row_and_skips_none(pool, kafka_log):
    """The second write meets rows already there: its transaction without savepoints is
    refused and rolled back, and the batch is written again through ON CONFLICT."""
    result = _engine().decide_batch([Rec(_alert(1), 1), Rec(_alert(2), 2)], NOW)
    batch = _batch(kafka_log().of(result, int(NOW * 1000)))
    async with pool.acquire() as conn:
        first = await write_batch(conn, batch, DEFAULT_REDACTOR)
        again = await write_batch(conn, batch, DEFAULT_REDACTOR)
        decisions, dlq = await _ledger(conn)
    assert first.written == {"routing_decisions": 1, "dlq_entries": 1}
    assert again.written == {"routing_decisions": 0, "dlq_entries": 0} and not again.skipped
    assert decisions == {"s1": "1"}
    assert dlq == {"t.signals/0/2": ("rate_limited", 1, "pending")}


def _notification(i: int) -> bytes:
    return orjson.dumps({"signal_id": f"n{i}", "sender_id": "app-x", "payload": {}})


def _redrawn(first: BatchResult) -> BatchResult:
    """The same input decided again later by a restarted engine whose bandit drew another
    destination (its draws were spent on other signals first)."""
    for warm_up in range(1, 50):
        engine = _engine()
        engine.decide_batch([Rec(_notification(100 + i), 100 + i) for i in range(warm_up)], NOW)
        again = engine.decide_batch([Rec(_notification(1), 1)], LATER)
        if again.decisions[0].destinations != first.decisions[0].destinations:
            return again
    raise AssertionError("no warm-up made the bandit draw another destination")


@pytest.mark.parametrize("order", ORDERS)
async def test_a_later_decision_of_the_same_input_replaces_the_first(pool, persist_outputs,
                                                                      order):
    first = _engine().decide_batch([Rec(_notification(1), 1)], NOW)
    again = _redrawn(first)
    await _persist_in(order, persist_outputs, pool, first, again)

    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT destinations, input_offset FROM routing_decisions")
    assert [(r["destinations"], r["input_offset"]) for r in rows] == [
        (again.decisions[0].destinations, 1)]
