"""Migrations and the idempotent batch writers against a real PostgreSQL (a fresh database each)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

import router_stream.cli.db  # noqa: F401  (registers `db` on the root group)
from router_stream.adapters import postgres as pg
from router_stream.adapters.postgres.rows import transition_row
from router_stream.cli import cli
from router_stream.config import Settings
from router_stream.core.breaker import BreakerState, BreakerTransition
from router_stream.core.events import BreakerTransitionEvent
from router_stream.errors import DatabaseUnavailable

pytestmark = pytest.mark.integration

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
async def conn(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    connection = await pg.connect(settings)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def migrated(conn: asyncpg.Connection) -> asyncpg.Connection:
    await pg.migrate(conn)
    return conn


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """A private copy of migrations/ that a test may edit."""
    target = tmp_path / "migrations"
    target.mkdir()
    # Only the first migration: the tests add their own 002_*.sql files next to it.
    shutil.copy(pg.default_migrations_dir() / "001_init.sql", target)
    return target


PROJECT_MIGRATIONS = sorted(p.name for p in pg.default_migrations_dir().glob("[0-9]*.sql"))


def decision(signal_id: str, offset: int = 0, **changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "decision_id": f"d-{signal_id}-{offset}",
        "signal_id": signal_id,
        "tenant": "acme",
        "kind": "alert",
        "destinations": ["pager", "email"],
        "strategy": "fanout",
        "tier": 0,
        "policy_version": "v1",
        "confidence": 0.75,
        "state": {"trust": {"pager": 0.9}, "breaker": {"pager": "closed"}},
        "consensus": None,
        "input_topic": "signals",
        "input_partition": 2,
        "input_offset": offset,
        "signal_ts": T0,
        "decided_at": T0 + timedelta(milliseconds=5),
    }
    row.update(changes)
    return row


def dlq_dict(offset: int, **changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "reason": "invalid_json",
        "error": "Expecting value: line 1 column 1",
        "attempts": 1,
        "original_topic": "signals",
        "original_partition": 0,
        "original_offset": offset,
        "original_key": b"sender-1",
        "original_headers": [("trace", b"\x00\xffabc"), ("empty", None)],
        "original_value": b"\xff not json {",
        "original_timestamp": 1735787045000,
        "first_failed_at": T0,
        "last_failed_at": T0,
    }
    row.update(changes)
    return row


# --- migrations -------------------------------------------------------------------------------


async def test_migrate_creates_the_tables_and_a_second_run_is_a_no_op(conn: asyncpg.Connection):
    first = await pg.migrate(conn)
    second = await pg.migrate(conn)

    assert first == PROJECT_MIGRATIONS
    assert second == []
    tables = {
        r["tablename"]
        for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {
        "routing_decisions", "dlq_entries", "breaker_transitions", "trust_snapshots",
        "policy_versions", "routing_overrides", "schema_migrations",
    } <= tables
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(PROJECT_MIGRATIONS)


async def test_concurrent_migrators_apply_each_file_once(settings: Settings, migrations_copy: Path):
    # A slow second migration widens the race window: without the lock both would run it.
    (migrations_copy / "002_slow.sql").write_text(
        "SELECT pg_sleep(0.5); CREATE TABLE slow_marker (id int PRIMARY KEY);"
    )
    conns = [await pg.connect(settings) for _ in range(3)]
    try:
        results = await asyncio.gather(*(pg.migrate(c, migrations_copy) for c in conns))
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        for c in conns:
            await c.close()

    applied = sorted(name for result in results for name in result)
    assert applied == ["001_init.sql", "002_slow.sql"]  # each exactly once, across all three
    assert count == 2


async def test_changed_checksum_is_refused_before_anything_runs(
    conn: asyncpg.Connection, migrations_copy: Path
):
    await pg.migrate(conn, migrations_copy)
    init = migrations_copy / "001_init.sql"
    init.write_text(init.read_text() + "\n-- edited after it was applied\n")
    (migrations_copy / "002_next.sql").write_text("CREATE TABLE must_not_exist (id int);")

    with pytest.raises(pg.MigrationChecksumMismatch, match="001_init.sql"):
        await pg.migrate(conn, migrations_copy)

    assert await conn.fetchval("SELECT to_regclass('must_not_exist')") is None
    states = {s.filename: s.state for s in await pg.migration_status(conn, migrations_copy)}
    assert states == {"001_init.sql": "changed", "002_next.sql": "pending"}


async def test_failed_migration_rolls_back_and_is_not_recorded(
    conn: asyncpg.Connection, migrations_copy: Path
):
    (migrations_copy / "002_broken.sql").write_text(
        "CREATE TABLE half_done (id int); SELECT * FROM no_such_table;"
    )
    with pytest.raises(pg.MigrationError, match="002_broken.sql"):
        await pg.migrate(conn, migrations_copy)

    assert await conn.fetchval("SELECT to_regclass('half_done')") is None
    states = {s.filename: s.state for s in await pg.migration_status(conn, migrations_copy)}
    assert states == {"001_init.sql": "applied", "002_broken.sql": "pending"}
    # the lock was released: another migrate does not hang
    (migrations_copy / "002_broken.sql").unlink()
    assert await asyncio.wait_for(pg.migrate(conn, migrations_copy), 10) == []


async def test_status_before_and_after_migrate(conn: asyncpg.Connection, migrations_copy: Path):
    before = await pg.migration_status(conn, migrations_copy)
    await pg.migrate(conn, migrations_copy)
    (migrations_copy / "001_init.sql").rename(migrations_copy / "009_renamed.sql")
    after = await pg.migration_status(conn, migrations_copy)

    assert [(s.filename, s.state, s.applied_at) for s in before] == [
        ("001_init.sql", "pending", None)
    ]
    assert [(s.filename, s.state) for s in after] == [
        ("009_renamed.sql", "pending"), ("001_init.sql", "missing")
    ]
    assert after[1].applied_at is not None


async def test_unreachable_database_is_database_unavailable():
    dead = Settings(database_url="postgresql://router@127.0.0.1:1/router")  # type: ignore[arg-type]
    with pytest.raises(DatabaseUnavailable, match="127.0.0.1:1/router") as info:
        await pg.connect(dead, timeout=5)
    assert info.value.retriable
    assert isinstance(info.value.__cause__, OSError)


# --- idempotent writers -----------------------------------------------------------------------


async def test_insert_decisions_twice_with_the_same_signal_id_leaves_one_row(migrated):
    first = await pg.insert_decisions(migrated, [decision("s1"), decision("s2")])
    # the same signal_ids from other inputs (a producer's duplicates): the first row stays
    second = await pg.insert_decisions(migrated, [decision("s1", offset=7), decision("s3")])

    assert (first, second) == (2, 1)
    rows = await migrated.fetch("SELECT * FROM routing_decisions ORDER BY signal_id")
    assert [r["signal_id"] for r in rows] == ["s1", "s2", "s3"]
    s1 = rows[0]
    assert s1["decision_id"] == "d-s1-0"  # the first write wins
    assert s1["destinations"] == ["pager", "email"]
    assert s1["state"] == {"trust": {"pager": 0.9}, "breaker": {"pager": "closed"}}
    assert s1["consensus"] is None
    assert s1["signal_ts"] == T0


async def test_a_later_decision_of_the_same_input_replaces_its_row(migrated):
    later = T0 + timedelta(seconds=30)
    assert await pg.insert_decisions(migrated, [decision("s1", destinations=["desk-b"])]) == 1
    # a worker re-processed the input after a crash and drew another destination
    assert await pg.insert_decisions(
        migrated, [decision("s1", destinations=["desk-a"], decided_at=later)]) == 1
    # the first attempt's record projected late changes nothing
    assert await pg.copy_decisions(
        migrated, [_as_tuple(decision("s1", destinations=["desk-b"]))]) == 0

    row = await migrated.fetchrow("SELECT * FROM routing_decisions WHERE signal_id = 's1'")
    assert (row["destinations"], row["decided_at"]) == (["desk-a"], later)


@pytest.mark.parametrize("write", ["insert_decisions", "copy_decisions"])
async def test_a_batch_holding_two_attempts_of_one_input_writes_the_later(migrated, write):
    first = decision("s1", destinations=["desk-b"])
    again = decision("s1", destinations=["desk-a"], decided_at=T0 + timedelta(seconds=9))
    other_input = decision("s1", offset=3, destinations=["pager"],
                           decided_at=T0 + timedelta(seconds=20))
    rows = [_as_tuple(r) for r in (first, other_input, again)]

    assert await getattr(pg, write)(migrated, rows) == 1
    assert await migrated.fetchval(
        "SELECT destinations FROM routing_decisions WHERE signal_id = 's1'") == ["desk-a"]


def _as_tuple(row: dict[str, object]) -> tuple[object, ...]:
    """A row as copy_decisions takes it: the columns' own types, JSON as text."""
    json_text = {"state", "consensus"}
    return tuple(json.dumps(row[c]) if c in json_text and row[c] is not None else row[c]
                 for c in pg.DECISION_COLUMNS)


async def test_insert_decisions_accepts_tuples_in_documented_order(migrated):
    row = decision("tup", consensus={"value": 1.5, "method": "blend", "sources_used": ["a", "b"],
                                     "outliers": []}, destinations=["x"])
    as_tuple = tuple(row[c] for c in pg.DECISION_COLUMNS)

    assert await pg.insert_decisions(migrated, [as_tuple]) == 1
    consensus = await migrated.fetchval(
        "SELECT consensus FROM routing_decisions WHERE signal_id = 'tup'"
    )
    assert consensus["method"] == "blend"


async def test_a_batch_with_a_duplicate_inside_it_inserts_once(migrated):
    assert await pg.insert_decisions(migrated, [decision("dup"), decision("dup", offset=1)]) == 1


async def test_500_row_batch_and_its_replay(migrated):
    batch = [decision(f"sig-{i}", offset=i) for i in range(500)]
    assert await pg.insert_decisions(migrated, batch) == 500
    assert await pg.insert_decisions(migrated, batch) == 0
    assert await migrated.fetchval("SELECT count(*) FROM routing_decisions") == 500


async def test_writers_inside_a_callers_transaction(migrated):
    async with migrated.transaction():
        assert await pg.insert_decisions(migrated, [decision("t1")]) == 1
        await migrated.execute("DELETE FROM routing_decisions WHERE signal_id = 't1'")
        # the staging table must not leak the previous batch (t1) into this one
        assert await pg.insert_decisions(migrated, [decision("t2")]) == 1
    rows = await migrated.fetch("SELECT signal_id FROM routing_decisions")
    assert [r["signal_id"] for r in rows] == ["t2"]


async def test_a_bad_row_is_rejected_with_its_index(migrated):
    bad = decision("nokind")
    del bad["kind"]
    with pytest.raises(ValueError, match="row 1: missing kind"):
        await pg.insert_decisions(migrated, [decision("ok"), bad])
    assert await migrated.fetchval("SELECT count(*) FROM routing_decisions") == 0


async def test_dlq_insert_is_idempotent_on_original_coordinates(migrated):
    assert await pg.insert_dlq_entries(migrated, [dlq_dict(10), dlq_dict(11)]) == 2
    # Writing the same failure again (a re-processed batch) changes nothing.
    again = dlq_dict(10, error="the same failure written twice")
    assert await pg.insert_dlq_entries(migrated, [again]) == 0

    rows = await migrated.fetch("SELECT * FROM dlq_entries ORDER BY original_offset")
    assert [r["dlq_key"] for r in rows] == ["signals/0/10", "signals/0/11"]
    first = rows[0]
    assert first["status"] == "pending"
    assert first["attempts"] == 1
    assert first["original_value"] == b"\xff not json {"  # byte-exact
    assert first["original_key"] == b"sender-1"
    assert pg.decode_headers(first["original_headers"]) == [
        ("trace", b"\x00\xffabc"), ("empty", None)
    ]
    assert first["original_timestamp"] == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


async def test_a_replay_that_fails_again_reopens_its_entry_with_more_attempts(migrated):
    assert await pg.insert_dlq_entries(migrated, [dlq_dict(10)]) == 1
    await migrated.execute("UPDATE dlq_entries SET status = 'replayed', replayed_at = now()")
    failed_again = dlq_dict(10, attempts=2, error="second failure of the same record")
    assert await pg.insert_dlq_entries(migrated, [failed_again]) == 1
    row = await migrated.fetchrow("SELECT * FROM dlq_entries")
    assert (row["attempts"], row["status"], row["error"]) == (
        2, "pending", "second failure of the same record")
    assert row["original_value"] == b"\xff not json {"  # the original bytes are kept


async def test_dlq_reason_outside_the_closed_set_is_refused(migrated):
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.insert_dlq_entries(migrated, [dlq_dict(1, reason="because")])


async def test_breaker_transitions_and_trust_snapshots_are_idempotent(migrated):
    transitions = [
        ("pager", "closed", "open", "5 consecutive failures", {"failures": 5}, T0),
        ("pager", "open", "half_open", "cooldown elapsed", None, T0 + timedelta(seconds=30)),
    ]
    snapshots = [{"source_id": "feed-a", "score": 0.8, "components": {"freshness": 1.0},
                  "at": T0}]

    core = BreakerTransition("pager", BreakerState.HALF_OPEN, BreakerState.CLOSED,
                             at=(T0 + timedelta(seconds=40)).timestamp(), reason="probes ok")
    transitions.append(transition_row(BreakerTransitionEvent.of(core)))

    assert await pg.insert_breaker_transitions(migrated, transitions) == 3
    assert await pg.insert_breaker_transitions(migrated, transitions) == 0
    assert await migrated.fetchval(
        "SELECT reason FROM breaker_transitions WHERE to_state = 'closed'"
    ) == "probes ok"
    assert await pg.insert_trust_snapshots(migrated, snapshots) == 1
    assert await pg.insert_trust_snapshots(migrated, snapshots) == 0
    assert await migrated.fetchval(
        "SELECT details FROM breaker_transitions WHERE to_state = 'half_open'"
    ) == {}


async def test_record_policy_version_keeps_one_active(migrated):
    await pg.record_policy_version(migrated, "v1", "routes: {}\n", published_by="alice")
    await pg.record_policy_version(migrated, "v2", "routes: {a: 1}\n", published_by="bob")
    await pg.record_policy_version(migrated, "v2", "routes: {a: 1}\n")  # republish: no-op
    await pg.record_policy_version(
        migrated, "bad", "routes: [\n", status="rejected", status_reason="line 1: bad"
    )

    rows = await migrated.fetch("SELECT version, status FROM policy_versions ORDER BY version")
    assert {r["version"]: r["status"] for r in rows} == {
        "bad": "rejected", "v1": "superseded", "v2": "active"
    }


# --- the CLI ----------------------------------------------------------------------------------


def _invoke(settings: Settings, *args: str):
    env = {"ROUTER_DATABASE_URL": settings.database_url.get_secret_value()}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_cli_db_migrate_then_status_json(settings: Settings):
    migrated = _invoke(settings, "db", "migrate")
    again = _invoke(settings, "db", "migrate", "--json")
    status = _invoke(settings, "db", "status", "--json")
    table = _invoke(settings, "db", "status")

    assert migrated.exit_code == 0, migrated.output
    assert "applied 001_init.sql" in migrated.output
    assert json.loads(again.output) == {"applied": []}
    assert [(s["filename"], s["state"]) for s in json.loads(status.output)] == [
        (name, "applied") for name in PROJECT_MIGRATIONS
    ]
    assert table.exit_code == 0
    assert "001_init.sql" in table.output and "applied" in table.output


def test_cli_db_status_unreachable_exits_2():
    result = CliRunner().invoke(
        cli, ["db", "status"], env={"ROUTER_DATABASE_URL": "postgresql://router@127.0.0.1:1/x"}
    )
    assert result.exit_code == 2
    assert "cannot connect to Postgres" in result.output


def test_cli_db_migrate_edited_file_exits_1(settings: Settings, migrations_copy: Path):
    first = _invoke(settings, "db", "migrate", "--migrations-dir", str(migrations_copy))
    assert first.exit_code == 0
    (migrations_copy / "001_init.sql").write_text("-- rewritten\n")
    result = _invoke(settings, "db", "migrate", "--migrations-dir", str(migrations_copy))
    assert result.exit_code == 1
    assert "changed on disk: 001_init.sql" in result.output


async def test_core_decision_and_dlq_entry_round_trip(migrated, kafka_log):
    from router_stream.adapters.postgres.rows import (
        decision_row,
        decode_decision,
        dlq_row_from_record,
    )
    from router_stream.core.models import Decision, DlqEntry, DlqReason
    from router_stream.core.outputs import BatchResult, DlqRecord

    epoch = T0.timestamp()
    core_decision = Decision(
        decision_id="d-core", signal_id="s-core", tenant="acme", kind="reading",
        destinations=["db"], strategy="consensus", tier=None, policy_version="v9",
        confidence=0.5, trust={"a": 0.9}, breakers={"a": "closed"}, input_topic="signals",
        input_partition=1, input_offset=42, decided_at=epoch + 0.25, signal_ts=epoch,
        value=1.5, method="blend", sources_used=["a", "b"], outliers=["c"],
    )
    entry = DlqEntry(
        reason=DlqReason.NO_ROUTE, error="no route for kind 'x'", signal_id="s-x",
        original_topic="signals", original_partition=3, original_offset=9,
        original_key=None, original_value=b'{"sender_id": "x"}',
        original_headers=[("h", b"v")], first_failed_at=epoch, tenant="acme",
    )
    (record,) = kafka_log().of(BatchResult(dlq=[DlqRecord(entry, entry.kafka_headers())]),
                               int(epoch * 1000))

    assert await pg.insert_decisions(migrated, [decision_row(decode_decision(core_decision.to_json()))]) == 1
    assert await pg.insert_dlq_entries(migrated, [dlq_row_from_record(record)]) == 1
    assert await pg.insert_dlq_entries(migrated, [dlq_row_from_record(record)]) == 0

    d = await migrated.fetchrow("SELECT * FROM routing_decisions")
    assert d["decided_at"] == T0 + timedelta(milliseconds=250)
    assert d["state"] == {"trust": {"a": 0.9}, "breakers": {"a": "closed"}}
    assert d["consensus"] == {"value": 1.5, "method": "blend", "sources_used": ["a", "b"],
                              "outliers": ["c"]}
    e = await migrated.fetchrow("SELECT * FROM dlq_entries")
    assert (e["dlq_key"], e["reason"], e["tenant"]) == ("signals/3/9", "no_route", "acme")
    assert pg.decode_headers(e["original_headers"]) == [("h", b"v")]
