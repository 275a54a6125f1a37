"""The checks every scenario ends with: every signal, every routed copy, the state.

Ledger (Postgres)
    The signals topic is read back; each record is found by its ``x-chaos-index`` header. A
    record must have exactly one row — a ``routing_decisions`` row whose input coordinates are
    the record's, or a ``dlq_entries`` row whose original coordinates are — and that row must be
    the outcome the stream generator expected (the kind, or the DLQ reason). No row: *lost*;
    two or more: *duplicate rows*.

Kafka outputs (at-least-once)
    Every decision's signal is in ``routed.<d>`` for each of its destinations at least once, and
    every DLQ row has its record on ``router.dlq`` (same original coordinates and reason). Extra
    copies are counted, not failed: they are the documented at-least-once re-sends.

State
    The workers' breaker/trust state must equal a fault-free replay of the same inputs. A fresh
    :class:`~router_stream.core.engine.RouterEngine` (same policy) folds the ``source-health`` and
    ``outcomes`` records as read back from Kafka, in the follower's order (timestamp, topic,
    partition, offset), each at its record time. Then:

    * the ``breaker_transitions`` rows the workers wrote must be exactly the transitions of the
      replay (the chaos policy's cooldown outlasts every scenario, so every transition is driven
      by an event and carries the event's time — nothing depends on a wall clock);
    * every decision made once the state had settled (≥ ``SETTLE_S`` after both the last state
      event and the last fault) recorded, for each destination of its route, the trust score and
      breaker state the replayed engine has at that decision's ``decided_at`` — this compares the
      state *inside every worker that decided something*, including restarted ones, not just
      what one of them wrote.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from router_stream.adapters.kafka_io import read_records
from router_stream.config import DLQ, OUTCOMES, SIGNALS, SOURCE_HEALTH
from router_stream.errors import UserError
from tests.chaos.harness import DECIDED_KINDS, DESTINATIONS, INDEX_HEADER, Item, Run

SETTLE_S = 2.0


async def each_record(run: Run, topic: str, each: Any, timeout: float = 600) -> int:
    """Call ``each(record)`` for every record now in ``topic`` (all partitions, up to the end
    offsets seen at start), without keeping them; returns how many there were (0 for a topic
    that does not exist)."""
    n = 0
    try:
        async with asyncio.timeout(timeout):
            async for record in read_records(run.settings, topic, until_end=True):
                each(record)
                n += 1
    except UserError:  # no such topic
        return 0
    except TimeoutError:
        raise TimeoutError(f"reading {topic} timed out") from None
    return n


async def read_topic(run: Run, topic: str) -> list[Any]:
    out: list[Any] = []
    await each_record(run, topic, out.append)
    return out


def index_of(record: Any) -> int | None:
    for name, value in record.headers or ():
        if name == INDEX_HEADER and value is not None:
            return int(value)
    return None


async def fetch(run: Run, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(run.database_url, timeout=10)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


@dataclass
class Verdict:
    sent: int = 0
    decisions: int = 0
    dlq: int = 0
    lost: list[int] = field(default_factory=list)
    # of the lost: records below the group's committed offset (committed without a row: the
    # worker lost them) vs at/after it (never completed: the group stopped too early)
    lost_committed: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    wrong: list[tuple[int, str, str]] = field(default_factory=list)
    input_duplicates: list[int] = field(default_factory=list)
    missing_inputs: list[int] = field(default_factory=list)  # items never written to Kafka
    stray_rows: int = 0
    routed_missing: list[tuple[str, str]] = field(default_factory=list)
    routed_extra_copies: int = 0
    dlq_topic_missing: list[str] = field(default_factory=list)
    dlq_topic_extra_copies: int = 0
    state_equal: bool | None = None
    state_detail: str = ""
    tail_decisions_checked: int = 0
    # per input partition, when each of its records was decided (a decision's decided_at, a
    # DLQ entry's first failure): the workers' progress, not the projection's
    decided_by_partition: dict[int, list[float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.wrong or self.stray_rows
                    or self.routed_missing or self.dlq_topic_missing
                    or self.input_duplicates) and self.state_equal is not False

    def problems(self) -> list[str]:
        out = []
        for name in ("lost", "duplicates", "wrong", "input_duplicates", "routed_missing",
                     "dlq_topic_missing"):
            value = getattr(self, name)
            if value:
                out.append(f"{name}: {len(value)} e.g. {value[:5]}")
        if self.lost:
            out.append(f"of the lost, {len(self.lost_committed)} were below the group's "
                       f"committed offset (committed without a row), "
                       f"{len(self.lost) - len(self.lost_committed)} were never committed "
                       f"(the group stopped before them)")
        if self.stray_rows:
            out.append(f"stray rows (no input record): {self.stray_rows}")
        if self.state_equal is False:
            out.append(f"state differs: {self.state_detail}")
        return out

    def recovery_after(self, t: float) -> float | None:
        """Longest time any input partition waited after ``t`` for its next record to be
        decided (routed or dead-lettered) — until every partition, the dead worker's included,
        made progress again. Partitions without a record after ``t`` do not count."""
        waits = []
        for stamps in self.decided_by_partition.values():
            after = [s for s in stamps if s > t]
            if after:
                waits.append(min(after) - t)
        return max(waits) if waits else None


async def verify(run: Run, items: list[Item], *, check_state: bool = True,
                 settled_after: float | None = None) -> Verdict:
    """Every check of the module docstring; ``settled_after`` is the wall-clock time after
    which the state must have settled (the last fault healed and the last state event sent)."""
    v = Verdict()
    expected = {it.index: it for it in items}
    signals_topic = run.topic(SIGNALS)

    coords: dict[int, list[tuple[int, int]]] = defaultdict(list)

    def note(r: Any) -> None:
        idx = index_of(r)
        if idx is not None:
            coords[idx].append((r.partition, r.offset))

    await each_record(run, signals_topic, note)
    v.missing_inputs = sorted(set(expected) - set(coords))
    v.input_duplicates = sorted(i for i, cs in coords.items() if len(cs) > 1)
    v.sent = len(coords)

    decisions = await fetch(run, "SELECT signal_id, kind, destinations, input_topic,"
                                 " input_partition, input_offset, decided_at"
                                 " FROM routing_decisions")
    dlq_rows = await fetch(run, "SELECT reason, original_topic, original_partition,"
                                " original_offset, signal_id, first_failed_at FROM dlq_entries")
    v.decisions, v.dlq = len(decisions), len(dlq_rows)
    at: dict[tuple[int, int], list[str]] = defaultdict(list)
    by_partition: dict[int, list[float]] = defaultdict(list)
    for d in decisions:
        if d["input_topic"] == signals_topic:
            at[(d["input_partition"], d["input_offset"])].append(d["kind"])
            by_partition[d["input_partition"]].append(d["decided_at"].timestamp())
    for q in dlq_rows:
        if q["original_topic"] == signals_topic:
            at[(q["original_partition"], q["original_offset"])].append(q["reason"])
            by_partition[q["original_partition"]].append(q["first_failed_at"].timestamp())
    v.decided_by_partition = {p: sorted(s) for p, s in by_partition.items()}

    known: set[tuple[int, int]] = set()
    for idx, cs in coords.items():
        known.update(cs)
        outcomes = [o for c in cs for o in at.get(c, [])]
        if not outcomes:
            v.lost.append(idx)
        elif len(outcomes) > 1:
            v.duplicates.append(idx)
        elif idx in expected and outcomes[0] != expected[idx].expect:
            v.wrong.append((idx, expected[idx].expect, outcomes[0]))
    v.stray_rows = sum(len(rows) for c, rows in at.items() if c not in known)
    v.lost.sort()
    if v.lost:
        from tests.chaos.harness import committed_offsets

        committed = {tp.partition: off for tp, off in (await committed_offsets(run)).items()
                     if tp.topic == signals_topic}
        v.lost_committed = [i for i in v.lost
                            if any(o < committed.get(p, 0) for p, o in coords[i])]
    v.duplicates.sort()

    await _check_routed(run, decisions, v)
    await _check_dlq_topic(run, dlq_rows, v)
    if check_state:
        await _check_state(run, v, settled_after)
    return v


_SIGNAL_ID = re.compile(rb'"signal_id":\s*"([^"]+)"')


async def _check_routed(run: Run, decisions: list[asyncpg.Record], v: Verdict) -> None:
    copies: dict[str, Counter[str]] = {}
    for dest in DESTINATIONS:
        counter: Counter[str] = Counter()

        def count(r: Any, counter: Counter[str] = counter) -> None:
            m = _SIGNAL_ID.search(r.value or b"")
            if m:
                counter[m.group(1).decode()] += 1

        await each_record(run, run.settings.routed_topic(dest), count)
        copies[dest] = counter
    for d in decisions:
        for dest in d["destinations"]:
            if copies.get(dest, Counter())[d["signal_id"]] < 1:
                v.routed_missing.append((d["signal_id"], dest))
    v.routed_extra_copies = sum(n - 1 for c in copies.values() for n in c.values() if n > 1)


async def _check_dlq_topic(run: Run, dlq_rows: list[asyncpg.Record], v: Verdict) -> None:
    on_topic: Counter[tuple[str, int, int, str]] = Counter()

    def count(r: Any) -> None:
        h = {k: val for k, val in r.headers}
        try:
            on_topic[(h["x-dlq-original-topic"].decode(), int(h["x-dlq-original-partition"]),
                      int(h["x-dlq-original-offset"]), h["x-dlq-reason"].decode())] += 1
        except (KeyError, ValueError):
            v.dlq_topic_missing.append(f"DLQ record without headers at offset {r.offset}")

    await each_record(run, run.topic(DLQ), count)
    for q in dlq_rows:
        key = (q["original_topic"], q["original_partition"], q["original_offset"], q["reason"])
        if on_topic[key] < 1:
            v.dlq_topic_missing.append("/".join(map(str, key)))
    v.dlq_topic_extra_copies = sum(n - 1 for n in on_topic.values() if n > 1)


async def replay_state(run: Run) -> tuple[Any, list[Any]]:
    """A fresh engine fed the state topics as a worker's follower folds them (no faults).
    Returns the engine and the breaker transitions the replay produced."""
    from router_stream.core.parsing import Rejection, parse_health, parse_outcome
    from router_stream.worker.policy_source import build_engine, read_policy_file

    _, compiled = read_policy_file(run.settings)
    engine = build_engine(run.settings, compiled)
    health, outcomes = run.topic(SOURCE_HEALTH), run.topic(OUTCOMES)
    records = [*await read_topic(run, health), *await read_topic(run, outcomes)]
    records.sort(key=lambda r: (r.timestamp, r.topic, r.partition, r.offset))
    clock = 0.0
    transitions: list[Any] = []
    for r in records:
        clock = max(clock, r.timestamp / 1000.0)
        if r.topic == health:
            ev = parse_health(r.value, record_ts_ms=r.timestamp)
            if not isinstance(ev, Rejection):
                transitions += engine.apply_health(ev, clock)
        else:
            out = parse_outcome(r.value, record_ts_ms=r.timestamp)
            if not isinstance(out, Rejection):
                transitions += engine.apply_outcome(out, clock)
    return engine, transitions


MAX_STATE_ROWS = 50_000


async def _check_state(run: Run, v: Verdict, settled_after: float | None) -> None:
    engine, replayed = await replay_state(run)
    want = {(t.target_id, t.from_state.value, t.to_state.value, round(t.at, 3)) for t in replayed}
    rows = await fetch(run, "SELECT target, from_state, to_state, at FROM breaker_transitions")
    got = {(r["target"], r["from_state"], r["to_state"], round(r["at"].timestamp(), 3))
           for r in rows}
    problems = []
    if want != got:
        problems.append(f"breaker transitions: replay has {sorted(want - got)[:3]} not in "
                        f"Postgres; Postgres has {sorted(got - want)[:3]} not in the replay")
    routes = engine.policy.routes
    decisions = [] if settled_after is None else await fetch(
        run, "SELECT signal_id, kind, state, decided_at FROM routing_decisions"
             " WHERE decided_at >= to_timestamp($1) ORDER BY decided_at LIMIT $2",
        settled_after + SETTLE_S, MAX_STATE_ROWS)
    checked = mismatched = 0
    cache: dict[float, Any] = {}
    first_bad = ""
    for d in decisions:
        decided = d["decided_at"].timestamp()
        if d["kind"] not in DECIDED_KINDS:
            continue
        state = d["state"] if isinstance(d["state"], dict) else orjson.loads(d["state"])
        snap = cache.get(decided)
        if snap is None:
            snap = cache[decided] = engine.snapshot(decided)
        initial = engine.policy.trust_params.initial
        checked += 1
        for dest in routes[d["kind"]].destinations:
            want_trust = round(snap.trust.get(dest, initial), 4)
            want_breaker = snap.breakers.get(dest, "closed")
            got_trust = state["trust"].get(dest)
            got_breaker = state["breakers"].get(dest)
            if got_breaker != want_breaker or got_trust is None or abs(
                    got_trust - want_trust) > 1.5e-4:
                mismatched += 1
                if not first_bad:
                    first_bad = (f"{d['signal_id']} at {decided:.3f}: {dest} trust {got_trust} "
                                 f"vs replay {want_trust}, breaker {got_breaker} vs "
                                 f"{want_breaker}")
                break
    if settled_after is not None and not checked:
        problems.append("no decision was made after the state settled: nothing compared")
    if not want:
        problems.append("the replay opened no breaker: the state check would be vacuous")
    if mismatched:
        problems.append(f"{mismatched}/{checked} settled decisions disagree with the replay, "
                        f"first: {first_bad}")
    v.tail_decisions_checked = checked
    v.state_equal = not problems
    v.state_detail = "; ".join(problems) if problems else (
        f"{len(got)} breaker transitions equal; {checked} settled decisions match the replay")
