"""`router-stream dlq ...` against a real Postgres and a real broker (fresh database and topics
per test): list/show/discard on inserted rows, replay byte-exact with the right headers and
marking only after the ack, the max-attempts guard, dry runs, and reindex from router.dlq."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import random
import signal
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from router_stream.adapters import postgres as pg
from router_stream.adapters.kafka_io import ConsumedRecord, OutRecord, RecordWriter, read_records
from router_stream.config import DLQ, Settings
from router_stream.core.models import DlqEntry, DlqReason
from router_stream.dlq.filters import DlqFilter
from router_stream.dlq.replay import replay_dlq
from router_stream.errors import BrokerUnavailable
from tests.support.cli import run_cli

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"


def signal_bytes(n: int, **extra: Any) -> bytes:
    body = {"signal_id": f"sig-{n}", "sender_id": f"s{n % 3}", "tenant": "acme", "kind": "alert",
            "ts": "2025-01-02T03:04:05Z", "payload": {"n": n, **extra}}
    # Odd spacing on purpose: the replayed bytes must be these, not a re-serialisation.
    return json.dumps(body, separators=(", ", " : ")).encode()


def entry(offset: int, *, topic: str = "signals", **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "reason": "no_healthy_destination", "error": "every destination of kind 'alert' is down",
        "signal_id": f"sig-{offset}", "tenant": "acme", "kind": "alert", "attempts": 1,
        "original_topic": topic, "original_partition": 0, "original_offset": offset,
        "original_key": f"s{offset % 3}".encode(),
        "original_headers": [("traceparent", b"00-abc-01"), ("x-empty", None)],
        "original_value": signal_bytes(offset),
        "first_failed_at": NOW - timedelta(minutes=10), "last_failed_at": NOW - timedelta(minutes=5),
    }
    row.update(changes)
    return row


async def ids_by_offset(conn: asyncpg.Connection) -> dict[int, int]:
    rows = await conn.fetch("SELECT id, original_offset FROM dlq_entries")
    return {r["original_offset"]: r["id"] for r in rows}


async def status_of(conn: asyncpg.Connection) -> dict[int, str]:
    rows = await conn.fetch("SELECT original_offset, status FROM dlq_entries")
    return {r["original_offset"]: r["status"] for r in rows}


async def read_all(settings: Settings, topic: str) -> list[ConsumedRecord]:
    return [r async for r in read_records(settings, topic, from_beginning=True, until_end=True)]


# --- list / show / discard ---------------------------------------------------------------------


async def test_list_filters_combine_and_summary_counts(settings: Settings, db):
    await pg.insert_dlq_entries(db, [
        entry(1), entry(2), entry(3, reason="invalid_json", tenant=None, kind=None),
        entry(4, tenant="globex"),
        entry(5, last_failed_at=NOW - timedelta(days=3), first_failed_at=NOW - timedelta(days=3)),
    ])
    await db.execute("UPDATE dlq_entries SET status = 'discarded', discarded_at = now()"
                     " WHERE original_offset = 2")

    result = await run_cli(settings, "dlq", "list", "--reason", "no_healthy_destination",
                           "--status", "pending", "--since", "1d", "--json")
    assert result.exit_code == 0, result.output
    assert [e["original_offset"] for e in json.loads(result.stdout)] == [1, 4]

    result = await run_cli(settings, "dlq", "list", "--tenant", "globex", "--json")
    assert [e["original_offset"] for e in json.loads(result.stdout)] == [4]

    result = await run_cli(settings, "dlq", "list", "--limit", "2", "--json")
    assert [e["original_offset"] for e in json.loads(result.stdout)] == [1, 2]

    result = await run_cli(settings, "dlq", "list", "--summary", "--json")
    summary = json.loads(result.stdout)
    assert summary["total"] == 5
    counts = {(g["reason"], g["status"]): g["count"] for g in summary["groups"]}
    assert counts == {("no_healthy_destination", "pending"): 3,
                      ("no_healthy_destination", "discarded"): 1, ("invalid_json", "pending"): 1}

    table = await run_cli(settings, "dlq", "list", "--reason", "invalid_json")
    assert table.exit_code == 0 and "invalid_json" in table.output and "1 entries" in table.output


async def test_list_rejects_a_bad_filter_with_exit_1(settings: Settings, db):
    bad_time = await run_cli(settings, "dlq", "list", "--since", "yesterday-ish")
    assert bad_time.exit_code == 1
    assert "not a time: 'yesterday-ish'" in bad_time.output
    bad_reason = await run_cli(settings, "dlq", "list", "--reason", "nope")
    assert bad_reason.exit_code == 1 and "unknown reason 'nope'" in bad_reason.output


async def test_show_prints_bytes_and_masks_per_policy(settings: Settings, db):
    pii = signal_bytes(7, email="jane.doe@example.com", card="4111 1111 1111 1111",
                       note="paid with 4111 1111 1111 1111")
    await pg.insert_dlq_entries(db, [entry(7, original_value=pii),
                                     entry(8, original_value=b"\xff\x00binary\x9c")])
    ids = await ids_by_offset(db)

    plain = await run_cli(settings, "dlq", "show", str(ids[7]), "--json")
    assert plain.exit_code == 0, plain.output
    detail = json.loads(plain.stdout)
    assert detail["value"]["json"]["payload"]["email"] == "jane.doe@example.com"
    assert detail["masked"] is False
    assert detail["headers"] == [["traceparent", "00-abc-01"], ["x-empty", None]]
    assert detail["key"] == {"encoding": "text", "size": 2, "text": "s1"}

    masked = await run_cli(settings, "dlq", "show", str(ids[7]), "--json",
                           policy_file=str(EXAMPLE_POLICY))
    shown = json.loads(masked.stdout)["value"]["json"]["payload"]
    assert "jane.doe" not in masked.output and "4111 1111 1111 1111" not in masked.output
    assert shown["email"] == "***@example.com"  # a detector
    assert shown["card"] == "[REDACTED]"  # a named field (payload.card in the example policy)
    assert shown["note"] == "paid with [CARD ****1111]"

    binary = json.loads((await run_cli(settings, "dlq", "show", str(ids[8]), "--json")).stdout)
    assert binary["value"]["encoding"] == "base64"
    assert base64.b64decode(binary["value"]["base64"]) == b"\xff\x00binary\x9c"

    text = await run_cli(settings, "dlq", "show", str(ids[7]))
    assert text.exit_code == 0 and "not masked: no policy given" in text.output

    missing = await run_cli(settings, "dlq", "show", "999999")
    assert missing.exit_code == 1 and "no DLQ entry with id 999999" in missing.output


async def test_discard_records_reason_and_time_and_only_touches_pending(settings: Settings, db):
    await pg.insert_dlq_entries(db, [entry(1), entry(2), entry(3, reason="invalid_json")])
    await db.execute("UPDATE dlq_entries SET status = 'replayed', replayed_at = now()"
                     " WHERE original_offset = 2")
    ids = await ids_by_offset(db)

    everything = await run_cli(settings, "dlq", "discard", "--reason", "x")
    assert everything.exit_code == 1 and "refusing to discard every DLQ entry" in everything.output

    result = await run_cli(settings, "dlq", "discard", str(ids[1]), str(ids[2]),
                           "--reason", "load test traffic", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"discarded": [ids[1]]}
    row = await db.fetchrow("SELECT status, discard_reason, discarded_at FROM dlq_entries"
                            " WHERE id = $1", ids[1])
    assert row["status"] == "discarded" and row["discard_reason"] == "load test traffic"
    assert row["discarded_at"] is not None
    assert await status_of(db) == {1: "discarded", 2: "replayed", 3: "pending"}

    by_filter = await run_cli(settings, "dlq", "discard", "--dlq-reason", "invalid_json",
                              "--reason", "bad producer")
    assert by_filter.exit_code == 0 and "discarded 1 entries" in by_filter.output
    assert (await status_of(db))[3] == "discarded"


# --- replay ------------------------------------------------------------------------------------


async def test_replay_sends_original_bytes_and_headers_then_marks_replayed(
    settings: Settings, db, topic_factory
):
    topic = await topic_factory("signals", partitions=3)
    rows = [entry(n, topic=topic, original_partition=n % 3, attempts=1 + n % 2) for n in range(6)]
    rows[0]["original_key"] = None
    rows[1]["original_timestamp"] = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    await pg.insert_dlq_entries(db, rows)
    await pg.insert_dlq_entries(db, [entry(9, topic=topic, reason="invalid_json")])
    ids = await ids_by_offset(db)

    report = await replay_dlq(settings, DlqFilter(reasons=("no_healthy_destination",)))
    assert sorted(report.sent) == sorted(ids[n] for n in range(6))

    sent = await read_all(settings, topic)
    assert len(sent) == 6
    by_offset = {int(dict(r.headers)["x-dlq-original-offset"]): r for r in sent}
    for n, row in enumerate(rows):
        record = by_offset[n]
        assert record.value == row["original_value"]  # byte-exact
        assert record.key == row["original_key"]
        headers = dict(record.headers)
        assert record.headers[:2] == [("traceparent", b"00-abc-01"), ("x-empty", None)]
        assert headers["x-dlq-id"] == str(ids[n]).encode()
        assert headers["x-dlq-attempts"] == str(row["attempts"]).encode()
        assert headers["x-dlq-original-topic"] == topic.encode()
        assert headers["x-dlq-original-partition"] == str(n % 3).encode()
        assert headers["x-signal-id"] == f"sig-{n}".encode()
        first = float(headers["x-dlq-first-failed-at"])
        assert first == pytest.approx(row["first_failed_at"].timestamp())
    assert by_offset[1].timestamp == 1735787045678  # the original record timestamp restored

    assert await status_of(db) == {**{n: "replayed" for n in range(6)}, 9: "pending"}
    assert await db.fetchval("SELECT min(replay_count) FROM dlq_entries WHERE status = 'replayed'"
                             " AND replayed_at IS NOT NULL") == 1

    again = await run_cli(settings, "dlq", "replay", "--reason", "no_healthy_destination",
                          "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["sent"] == []
    assert len(await read_all(settings, topic)) == 6  # nothing new on the topic

    by_id = await run_cli(settings, "dlq", "replay", str(ids[0]))
    assert by_id.exit_code == 0 and "replayed 0 entries" in by_id.output
    assert f"not pending (already replayed or discarded), skipped: {ids[0]}" in by_id.output


def per_key_inversions(records: list[ConsumedRecord]) -> int:
    """Records of a key that arrived after a record of the same key with a larger offset."""
    last: dict[bytes | None, int] = {}
    inversions = 0
    for r in records:
        offset = int(dict(r.headers)["x-dlq-original-offset"])
        inversions += offset < last.get(r.key, -1)
        last[r.key] = max(offset, last.get(r.key, -1))
    return inversions


async def test_replay_keeps_each_keys_original_order_whatever_the_row_order(
    settings: Settings, db, topic_factory, monkeypatch
):
    monkeypatch.setattr("router_stream.dlq.replay.WINDOW", 7)  # several windows (keyset pages)
    topic = await topic_factory("signals", partitions=2)
    offsets = list(range(60))
    random.Random(20).shuffle(offsets)  # rows written out of offset order: ids are not the order
    for n in offsets:  # a key lives in one partition: s0 and s2 in 0, s1 and s3 in 1
        await pg.insert_dlq_entries(db, [entry(n, topic=topic, original_partition=n % 2,
                                               original_key=f"s{n % 4}".encode())])
    ids = await ids_by_offset(db)

    first = await replay_dlq(settings, DlqFilter(topics=(topic,)), limit=25)
    # --limit takes the first entries in original order: partition 0's, then partition 1's
    first_sent = sorted(offsets, key=lambda n: (n % 2, n))[:25]
    assert sorted(first.sent) == sorted(ids[n] for n in first_sent)
    rest = await replay_dlq(settings, DlqFilter(topics=(topic,)))
    assert len(rest.sent) == 35 and rest.held_entries == 0

    records = await read_all(settings, topic)
    assert len(records) == 60 and per_key_inversions(records) == 0
    in_id_order = sorted(records, key=lambda r: int(dict(r.headers)["x-dlq-id"]))
    assert per_key_inversions(in_id_order) > 0  # what sending by id would have done


async def test_an_earlier_pending_entry_of_a_key_holds_back_the_later_ones(
    settings: Settings, db, topic_factory
):
    topic = await topic_factory("signals")
    # keys s0: 0 3 6 9, s1: 1 4 7, s2: 2 5 8; 3 is not selected (another reason), 4 is refused
    await pg.insert_dlq_entries(db, [
        entry(n, topic=topic, **({"reason": "no_route"} if n == 3 else {}),
              **({"attempts": 5} if n == 4 else {})) for n in range(10)])
    ids = await ids_by_offset(db)

    result = await run_cli(settings, "dlq", "replay", "--reason", "no_healthy_destination",
                           "--json")
    assert result.exit_code == 1, result.output
    out = json.loads(result.stdout)
    assert sorted(out["sent"]) == sorted(ids[n] for n in (0, 1, 2, 5, 8))
    assert out["held_back"] == {"entries": 3, "keys": 2, "why": {
        "an earlier entry of the key is pending but not selected": 2,  # 6, 9 behind 3
        "an earlier entry of the key is refused by --max-attempts": 1}}  # 7 behind 4
    assert ("held back 3 entries of 2 keys to keep each key's order (2 because an earlier entry"
            " of the key is pending but not selected; 1 because an earlier entry of the key is"
            " refused by --max-attempts)") in result.stderr
    assert {n for n, st in (await status_of(db)).items() if st == "pending"} == {3, 4, 6, 7, 9}

    dry = await run_cli(settings, "dlq", "replay", "--topic", topic, "--dry-run")
    assert "dry run: 3 entries would be replayed" in dry.output  # 3, 6, 9; 7 is behind 4

    allowed = await run_cli(settings, "dlq", "replay", "--reason", "no_healthy_destination",
                            "--allow-reorder", "--progress")
    assert allowed.exit_code == 0, allowed.output
    assert "replayed 3 entries" in allowed.output
    assert "replaying" in allowed.stderr and "3/3" in allowed.stderr  # asked for: a bar
    assert "replaying" not in result.stderr  # not a terminal, not asked for: none
    assert {n for n, st in (await status_of(db)).items() if st == "pending"} == {3, 4}


async def test_entries_with_a_key_larger_than_an_index_entry_are_stored_and_replayed_in_order(
    settings: Settings, db, topic_factory
):
    topic = await topic_factory("signals")
    big = random.Random(6).randbytes(20_000)  # incompressible: over a btree entry (~2.7 kB)
    await pg.insert_dlq_entries(db, [entry(n, topic=topic, original_key=big) for n in (3, 1)]
                                + [entry(2, topic=topic, original_key=big, reason="no_route")])
    result = await run_cli(settings, "dlq", "replay", "--reason", "no_healthy_destination")
    assert result.exit_code == 1 and "held back 1 entries of 1 keys" in result.stderr
    assert await status_of(db) == {1: "replayed", 2: "pending", 3: "pending"}
    await run_cli(settings, "dlq", "replay", "--topic", topic)
    records = await read_all(settings, topic)
    assert [int(dict(r.headers)["x-dlq-original-offset"]) for r in records] == [1, 2, 3]


async def test_a_replay_interrupted_with_sigint_and_run_again_sends_each_entry_once(
    settings: Settings, db, topic_factory
):
    topic = await topic_factory("signals", partitions=2)
    n = 1500
    await pg.insert_dlq_entries(db, [entry(i, topic=topic, original_partition=i % 2,
                                           original_key=f"s{i % 4}".encode())
                                     for i in range(n)])
    env = {**os.environ, "ROUTER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "ROUTER_DATABASE_URL": settings.database_url.get_secret_value(),
           "ROUTER_TOPIC_PREFIX": settings.topic_prefix, "PYTHONPATH": os.getcwd()}
    # --rate 1000: windows of 1000 entries a second, so SIGINT lands with entries in flight
    argv = [sys.executable, "-m", "router_stream.cli", "dlq", "replay", "--topic", topic,
            "--rate", "1000"]
    # As from a terminal: a suite run as a background job of a non-interactive shell (nohup,
    # `cmd &`) passes SIGINT on ignored, and Python then installs no handler for it.
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    async with asyncio.timeout(60):
        while await db.fetchval("SELECT count(*) FROM dlq_entries WHERE status = 'replayed'"
                                ) == 0 and proc.returncode is None:
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = await proc.communicate()
    assert proc.returncode == 2, stderr
    assert b"interrupted: the entries acknowledged so far are marked replayed" in stderr
    marked = await db.fetchval("SELECT count(*) FROM dlq_entries WHERE status = 'replayed'")
    assert 0 < marked < n

    again = await run_cli(settings, "dlq", "replay", "--topic", topic)
    assert again.exit_code == 0, again.output
    assert f"replayed {n - marked} entries" in again.output
    records = await read_all(settings, topic)
    sent_ids = Counter(dict(r.headers)["x-dlq-id"] for r in records)
    assert len(sent_ids) == n and set(sent_ids.values()) == {1}  # each exactly once overall
    assert per_key_inversions(records) == 0
    assert await db.fetchval("SELECT count(*) FROM dlq_entries WHERE status = 'pending'") == 0


async def test_replay_marks_nothing_without_an_ack(settings: Settings, db, topic_factory):
    topic = await topic_factory("signals")
    await pg.insert_dlq_entries(db, [entry(1, topic=topic), entry(2, topic=f"{topic}-gone")])

    unreachable = settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    with pytest.raises(BrokerUnavailable):
        await replay_dlq(unreachable, DlqFilter(topics=(topic,)))
    assert await status_of(db) == {1: "pending", 2: "pending"}

    # an entry naming a topic the router does not read signals from stays pending, alone
    report = await replay_dlq(settings, DlqFilter(reasons=("no_healthy_destination",)))
    ids = await ids_by_offset(db)
    assert [entry_id for entry_id, _ in report.unavailable] == [ids[2]]
    assert len(report.sent) == 1
    assert await status_of(db) == {1: "replayed", 2: "pending"}
    assert [r.value for r in await read_all(settings, topic)] == [signal_bytes(1)]

    cli_result = await run_cli(settings, "dlq", "replay", "--topic", f"{topic}-gone")
    assert cli_result.exit_code == 1
    assert "is not the topic the router reads signals from" in cli_result.output


async def test_an_entry_the_broker_refuses_stays_pending_and_holds_back_its_key(
    settings: Settings, db, topic_factory
):
    topic = await topic_factory("signals")
    too_big = b'{"pad": "' + b"x" * 1_100_000 + b'"}'  # over the 1 MB record limit
    # keys: 1 -> s1, 2 -> s2, 3 -> s0 (too big), 4 -> s1, 6 -> s0 (behind 3)
    await pg.insert_dlq_entries(db, [entry(1, topic=topic), entry(2, topic=topic),
                                     entry(3, topic=topic, original_value=too_big),
                                     entry(4, topic=topic), entry(6, topic=topic)])
    report = await replay_dlq(settings, DlqFilter(topics=(topic,)))
    ids = await ids_by_offset(db)
    assert [entry_id for entry_id, _ in report.failed] == [ids[3]]
    assert report.held == {"an earlier entry of the key failed to send": 1}
    assert report.held_keys == 1
    assert await status_of(db) == {1: "replayed", 2: "replayed", 3: "pending", 4: "replayed",
                                   6: "pending"}
    assert [r.value for r in await read_all(settings, topic)] == [
        signal_bytes(1), signal_bytes(2), signal_bytes(4)]

    result = await run_cli(settings, "dlq", "replay", "--topic", topic)
    assert result.exit_code == 2  # the broker refused an entry
    assert f"error: entry {ids[3]} not replayed: cannot produce" in result.output
    assert ("held back 1 entries of 1 keys to keep each key's order (1 because an earlier entry"
            " of the key failed to send)") in result.output


async def test_max_attempts_guard_refuses_and_sends_nothing(settings: Settings, db, topic_factory):
    topic = await topic_factory("signals")
    await pg.insert_dlq_entries(db, [entry(1, topic=topic, attempts=5),
                                     entry(2, topic=topic, attempts=7)])

    result = await run_cli(settings, "dlq", "replay", "--topic", topic)
    assert result.exit_code == 1
    assert "refused 2 entries with attempts >= --max-attempts 5" in result.output
    assert await read_all(settings, topic) == []
    assert await status_of(db) == {1: "pending", 2: "pending"}

    raised = await run_cli(settings, "dlq", "replay", "--topic", topic, "--max-attempts", "6",
                           "--json")
    assert raised.exit_code == 0, raised.output
    out = json.loads(raised.stdout)
    assert len(out["sent"]) == 1 and out["refused"] == 1
    assert await status_of(db) == {1: "replayed", 2: "pending"}
    [record] = await read_all(settings, topic)
    assert dict(record.headers)["x-dlq-attempts"] == b"5"


async def test_dry_run_prints_what_would_be_sent_and_sends_nothing(
    settings: Settings, db, topic_factory
):
    topic = await topic_factory("signals")
    await pg.insert_dlq_entries(db, [entry(1, topic=topic), entry(2, topic=topic)])
    ids = await ids_by_offset(db)

    result = await run_cli(settings, "dlq", "replay", "--topic", topic, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["dry_run"] is True and out["sent"] == []
    assert [r["id"] for r in out["records"]] == [ids[1], ids[2]]
    first = out["records"][0]
    assert first["topic"] == topic and first["value"]["json"]["signal_id"] == "sig-1"
    assert ["x-dlq-attempts", "1"] in first["headers"]

    text = await run_cli(settings, "dlq", "replay", "--topic", topic, "--dry-run", "--limit", "1")
    assert f"would send entry {ids[1]} -> {topic}" in text.output
    assert "dry run: 1 entries would be replayed" in text.output

    assert await read_all(settings, topic) == []
    assert await status_of(db) == {1: "pending", 2: "pending"}


async def test_replay_with_a_rate_is_paced(settings: Settings, db, topic_factory):
    topic = await topic_factory("signals")
    await pg.insert_dlq_entries(db, [entry(n, topic=topic) for n in range(6)])
    started = asyncio.get_running_loop().time()
    report = await replay_dlq(settings, DlqFilter(topics=(topic,)), rate=10.0, limit=5)
    elapsed = asyncio.get_running_loop().time() - started
    assert len(report.sent) == 5 and elapsed >= 0.4  # 5 records at 10/s: >= 4 intervals
    assert sorted((await status_of(db)).values()) == ["pending"] + ["replayed"] * 5


# --- reindex -----------------------------------------------------------------------------------


def dlq_record(topic: str, offset: int, *, attempts: int = 1,
               reason: DlqReason = DlqReason.NO_HEALTHY_DESTINATION) -> OutRecord:
    e = DlqEntry(reason=reason, error=f"failure of {offset}", signal_id=f"sig-{offset}",
                 original_topic="prod.signals", original_partition=2, original_offset=offset,
                 original_key=b"k%d" % offset, original_value=signal_bytes(offset),
                 original_headers=[("traceparent", b"t-%d" % offset)], attempts=attempts,
                 first_failed_at=1735787045.5)
    return OutRecord(topic=topic, value=e.original_value, key=e.original_key,
                     headers=e.kafka_headers())


async def test_reindex_rebuilds_rows_and_keeps_what_operators_did(
    settings: Settings, db, topic_factory
):
    dlq_topic = await topic_factory(DLQ)
    assert dlq_topic == settings.topic(DLQ)
    async with RecordWriter(settings) as writer:
        for record in [dlq_record(dlq_topic, n) for n in range(4)]:
            await writer.send_and_wait(record)
        await writer.send_and_wait(OutRecord(dlq_topic, b"not a dlq record", b"x"))
        await writer.send_and_wait(dlq_record(dlq_topic, 1, attempts=2))  # failed again
        await writer.send_and_wait(dlq_record(dlq_topic, 2, attempts=2))  # ... but discarded

    # Rows that survived the "loss": 1 was replayed, 2 was discarded by an operator.
    await pg.insert_dlq_entries(db, [
        entry(1, topic="prod.signals", original_partition=2, signal_id="sig-1"),
        entry(2, topic="prod.signals", original_partition=2, signal_id="sig-2"),
    ])
    await db.execute("UPDATE dlq_entries SET status = 'replayed', replayed_at = now(),"
                     " replay_count = 1 WHERE original_offset = 1")
    await db.execute("UPDATE dlq_entries SET status = 'discarded', discarded_at = now(),"
                     " discard_reason = 'operator' WHERE original_offset = 2")

    result = await run_cli(settings, "dlq", "reindex", "--json")
    assert result.exit_code == 0, result.output
    # updated: 1 failed again; 2 (discarded) was written without its router.dlq coordinates
    # (as before migration 004) and gets them, keeping its status
    assert json.loads(result.stdout) == {"read": 7, "inserted": 2, "updated": 2, "skipped": 1,
                                         "masked": 0, "decided": 0}

    rows = {r["original_offset"]: r for r in await db.fetch("SELECT * FROM dlq_entries")}
    assert sorted(rows) == [0, 1, 2, 3]
    assert rows[1]["status"] == "pending" and rows[1]["attempts"] == 2  # a later failure
    assert rows[1]["replay_count"] == 1
    assert rows[2]["status"] == "discarded" and rows[2]["attempts"] == 1
    assert rows[2]["discard_reason"] == "operator"
    new = rows[3]
    assert new["status"] == "pending" and new["reason"] == "no_healthy_destination"
    assert new["dlq_key"] == "prod.signals/2/3" and new["error"] == "failure of 3"
    assert bytes(new["original_value"]) == signal_bytes(3) and bytes(new["original_key"]) == b"k3"
    assert new["original_headers"] == [["traceparent", base64.b64encode(b"t-3").decode()]]
    assert new["tenant"] == "acme" and new["kind"] == "alert" and new["signal_id"] == "sig-3"
    assert new["first_failed_at"].timestamp() == 1735787045.5

    assert all(r["dlq_topic"] == dlq_topic and r["dlq_offset"] is not None
               for r in rows.values())

    again = await run_cli(settings, "dlq", "reindex", "--json")
    assert json.loads(again.stdout) == {"read": 7, "inserted": 0, "updated": 0, "skipped": 1,
                                        "masked": 0, "decided": 0}


async def test_reindex_leaves_out_entries_whose_input_has_a_decision_as_its_outcome(
    settings: Settings, db, topic_factory
):
    """As the projection: an input decided again after its DLQ record (a re-processed record)
    keeps its decision, and a ``duplicate`` entry loses to its input's earlier decision."""
    dlq_topic = await topic_factory(DLQ)
    async with RecordWriter(settings) as writer:
        for offset, reason in ((10, DlqReason.NO_HEALTHY_DESTINATION),
                               (11, DlqReason.NO_HEALTHY_DESTINATION),
                               (12, DlqReason.DUPLICATE), (13, DlqReason.NO_HEALTHY_DESTINATION)):
            await writer.send_and_wait(dlq_record(dlq_topic, offset, reason=reason))
    now = datetime.now(UTC)
    decided = {10: now + timedelta(hours=1), 11: now - timedelta(hours=1),
               12: now - timedelta(hours=1)}
    await pg.insert_decisions(db, [
        {"decision_id": f"d-{offset}", "signal_id": f"sig-{offset}", "tenant": "acme",
         "kind": "alert", "destinations": ["pager"], "strategy": "first_healthy",
         "policy_version": "v1", "confidence": 1.0, "input_topic": "prod.signals",
         "input_partition": 2, "input_offset": offset, "decided_at": at}
        for offset, at in decided.items()])

    result = await run_cli(settings, "dlq", "reindex", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"read": 4, "inserted": 2, "updated": 0, "skipped": 0,
                                         "masked": 0, "decided": 2}
    assert sorted(r["original_offset"] for r in await db.fetch(
        "SELECT original_offset FROM dlq_entries")) == [11, 13]
    assert sorted(r["input_offset"] for r in await db.fetch(
        "SELECT input_offset FROM routing_decisions")) == [10, 11, 12]  # not the rebuild's

    text = await run_cli(settings, "dlq", "reindex")
    assert "2 left out (their inputs' outcome is a decision)" in text.output


async def test_reindex_stores_a_nul_in_a_dlq_header_escaped_as_the_projection_does(
    settings: Settings, db, topic_factory
):
    dlq_topic = await topic_factory(DLQ)
    record = dlq_record(dlq_topic, 21)
    record = dataclasses.replace(record, headers=[
        (k, v.replace(b"failure", b"fail\x00ure") if k == "x-dlq-error" and v else v)
        for k, v in record.headers])
    async with RecordWriter(settings) as writer:
        await writer.send_and_wait(record)

    result = await run_cli(settings, "dlq", "reindex", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inserted"] == 1
    assert await db.fetchval("SELECT error FROM dlq_entries") == "fail\\u0000ure of 21"


async def test_reindex_masks_per_the_policy_and_masks_rows_stored_before_masking(
    settings: Settings, db, topic_factory, tmp_path: Path
):
    dlq_topic = await topic_factory(DLQ)
    pii = b'{"signal_id": "sig-7", "tenant": "acme", "payload": {"user": {"name": "Ann Lee",' \
          b' "email": "ann.lee@example.com"}, "ssn": "123-45-6789"}}'
    records = []
    for offset in (7, 8):
        e = DlqEntry(reason=DlqReason.NO_ROUTE, error="no route for kind 'ann.lee@example.com'",
                     signal_id=f"sig-{offset}", original_topic="prod.signals",
                     original_partition=0, original_offset=offset,
                     original_key=b"ann.lee@example.com", original_value=pii,
                     original_headers=[("x-phone", b"(555) 867-5309")], first_failed_at=1.0)
        records.append(OutRecord(dlq_topic, e.original_value, e.original_key, e.kafka_headers()))
    async with RecordWriter(settings) as writer:
        positions = [await writer.send_and_wait(r) for r in records]
    # entry 7 was stored unmasked by a worker without masking, and an operator discarded it
    await pg.insert_dlq_entries(db, [entry(7, topic="prod.signals", original_value=pii,
                                           original_key=b"ann.lee@example.com",
                                           error="no route for kind 'ann.lee@example.com'")])
    await db.execute("UPDATE dlq_entries SET status = 'discarded', discarded_at = now(),"
                     " discard_reason = 'operator'")
    policy = tmp_path / "policy.yaml"
    policy.write_text(EXAMPLE_POLICY.read_text())  # redact: payload.user.email ... + detectors

    result = await run_cli(settings, "dlq", "reindex", "--policy", str(policy), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"read": 2, "inserted": 1, "updated": 1, "skipped": 0,
                                         "masked": 2, "decided": 0}
    rows = {r["original_offset"]: r for r in await db.fetch("SELECT * FROM dlq_entries")}
    for offset, (partition, dlq_offset) in zip((7, 8), positions, strict=True):
        row = rows[offset]
        assert row["masked"] is True
        assert (row["dlq_topic"], row["dlq_partition"], row["dlq_offset"]) == (
            dlq_topic, partition, dlq_offset)
        text = f"{bytes(row['original_value'])!r} {bytes(row['original_key'])!r} {row['error']}"
        text += repr([base64.b64decode(v) for _, v in row["original_headers"]])
        for secret in ("ann.lee", "123-45-6789", "867-5309"):
            assert secret not in text
    assert rows[7]["status"] == "discarded" and rows[7]["discard_reason"] == "operator"
    assert json.loads(bytes(rows[8]["original_value"]))["payload"]["ssn"] == "[SSN]"
