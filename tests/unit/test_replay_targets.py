"""Where `dlq replay` sends: only to the topic the router reads signals from. An entry naming
another topic (a router.dlq record the router did not write) or a topic that does not exist is
not sent, stays pending and is reported in one line; the other entries are replayed.

``replay_dlq`` runs on fakes of its Postgres store and its producer (tests/integration/test_dlq.py
runs it on a real broker and database)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from router_stream.adapters.kafka_io import OutRecord
from router_stream.config import SIGNALS, Settings
from router_stream.core.deadletter import dead_letter
from router_stream.core.models import DlqReason
from router_stream.core.wire import Origin, retry_headers
from router_stream.dlq import replay
from router_stream.dlq.filters import DlqFilter
from router_stream.dlq.store import DlqRow
from router_stream.errors import UserError

NOW = datetime(2025, 1, 2, 12, 0, tzinfo=UTC)
SETTINGS = Settings(topic_prefix="prod.")
COMMAND = b'{"type":"policy_publish","policy_yaml":"version: 1\\n..."}'


def row(entry_id: int, topic: str, **changes: object) -> DlqRow:
    values: dict[str, object] = dict(
        id=entry_id, dlq_key=f"{topic}/0/{entry_id}", reason="invalid_json", error="bad",
        signal_id=None, tenant=None, kind=None, attempts=1, status="pending",
        original_topic=topic, original_partition=0, original_offset=entry_id,
        original_key=b"k", original_headers=[], first_failed_at=NOW, last_failed_at=NOW,
        created_at=NOW, replayed_at=None, replay_count=0, discarded_at=None,
        discard_reason=None, original_timestamp=None, value_size=len(COMMAND),
        original_value=COMMAND,
    )
    values.update(changes)
    return DlqRow(**values)  # type: ignore[arg-type]


@dataclass
class FakeStore:
    """``dlq.store`` over a list of pending rows (every filter matches them all)."""

    rows: list[DlqRow]
    marked: list[int] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def replay_lock(self, conn: Any) -> AsyncIterator[None]:
        yield

    def _sendable(self, max_attempts: int) -> list[DlqRow]:
        return [r for r in self.rows if r.attempts < max_attempts and r.id not in self.marked]

    async def count_entries(self, conn: Any, where: DlqFilter, *, min_attempts: int | None = None,
                            max_attempts: int | None = None) -> int:
        return sum(1 for r in self.rows if (min_attempts is None or r.attempts >= min_attempts)
                   and (max_attempts is None or r.attempts < max_attempts))

    async def list_entries(self, conn: Any, where: DlqFilter, **_: Any) -> list[DlqRow]:
        return list(self.rows)

    async def topics_of(self, conn: Any, where: DlqFilter, *, max_attempts: int) -> list[str]:
        return sorted({r.original_topic for r in self._sendable(max_attempts)})

    async def pending_in_order(self, conn: Any, where: DlqFilter, *, max_attempts: int,
                               page: int, limit: int | None = None
                               ) -> AsyncIterator[list[DlqRow]]:
        rows = sorted(self._sendable(max_attempts),
                      key=lambda r: (r.original_topic, r.original_partition, r.original_offset))
        for start in range(0, len(rows[:limit]), page):
            yield rows[:limit][start:start + page]

    async def earliest_pending(self, conn: Any, keys: Sequence[Any], selected: DlqFilter, *,
                               max_attempts: int) -> dict[Any, Any]:
        return {}

    async def mark_replayed(self, conn: Any, ids: Sequence[int]) -> int:
        self.marked.extend(ids)
        return len(ids)


class FakeWriter:
    """``RecordWriter`` on a cluster holding ``topics``; every record is acknowledged."""

    topics: set[str] = set()
    sent: list[OutRecord] = []

    def __init__(self, settings: Settings) -> None:
        pass

    async def __aenter__(self) -> FakeWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        missing = sorted(set(topics) - self.topics)
        if missing:  # as rdkafka.cluster_with says it
            raise UserError(f"topic {', '.join(missing)} does not exist on 127.0.0.1:19092"
                            " (run `router-stream topics apply`, or check ROUTER_TOPIC_PREFIX)")

    def refusal(self, record: OutRecord) -> None:
        return None

    async def send_many(self, records: Sequence[OutRecord]) -> list[asyncio.Future[None]]:
        await self.ensure_topics(sorted({r.topic for r in records}))
        FakeWriter.sent += records
        done = []
        for _ in records:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.set_result(None)
            done.append(future)
        return done


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(rows: list[DlqRow], topics: set[str]) -> FakeStore:
        store = FakeStore(rows)

        async def connect(settings: Settings) -> Any:
            async def close() -> None:
                pass
            return SimpleNamespace(close=close)

        monkeypatch.setattr(replay, "store", store)
        monkeypatch.setattr(replay, "pg", SimpleNamespace(connect=connect))
        monkeypatch.setattr(replay, "RecordWriter", FakeWriter)
        monkeypatch.setattr(FakeWriter, "topics", topics)
        monkeypatch.setattr(FakeWriter, "sent", [])
        return store

    return install


SIGNALS_TOPIC = SETTINGS.topic(SIGNALS)
ROGUES = ("prod.router.control", "prod.routed.pagerduty", "prod.router.retry", "signals")


def rogue_line(entry_id: int, topic: str) -> str:
    return (f"entry {entry_id} not replayed: its original topic {topic} is not the topic the"
            " router reads signals from (prod.signals; check ROUTER_TOPIC_PREFIX), and replay"
            f" sends nowhere else; discard it with `dlq discard {entry_id} --reason ...`")


async def test_an_entry_naming_a_topic_the_router_does_not_read_is_not_sent(fakes: Any) -> None:
    store = fakes([row(1, SIGNALS_TOPIC), *(row(n, t) for n, t in enumerate(ROGUES, 2)),
                   row(9, SIGNALS_TOPIC)], {SIGNALS_TOPIC, *ROGUES})  # every one exists

    report = await replay.replay_dlq(SETTINGS, DlqFilter())

    assert [r.topic for r in FakeWriter.sent] == [SIGNALS_TOPIC, SIGNALS_TOPIC]
    assert report.sent == store.marked == [1, 9]  # the rogue ones stay pending
    assert dict(report.unavailable) == {n: rogue_line(n, t) for n, t in enumerate(ROGUES, 2)}
    assert not report.failed and report.held_entries == 0


async def test_an_entry_naming_a_topic_that_does_not_exist_stops_no_other_entry(
        fakes: Any) -> None:
    store = fakes([row(1, SIGNALS_TOPIC), row(2, "no-such-topic")], {SIGNALS_TOPIC})

    report = await replay.replay_dlq(SETTINGS, DlqFilter())  # was: UserError for the whole run

    assert [r.topic for r in FakeWriter.sent] == [SIGNALS_TOPIC]
    assert report.sent == store.marked == [1]
    assert report.unavailable == [(2, rogue_line(2, "no-such-topic"))]


async def test_a_missing_signals_topic_is_a_line_per_entry_not_a_failed_replay(fakes: Any) -> None:
    store = fakes([row(1, SIGNALS_TOPIC), row(2, SIGNALS_TOPIC, original_key=b"other")],
                  set())

    report = await replay.replay_dlq(SETTINGS, DlqFilter())  # was: UserError for the whole run

    assert FakeWriter.sent == [] and report.sent == store.marked == []
    assert [entry_id for entry_id, _ in report.unavailable] == [1, 2]
    assert report.unavailable[0][1] == (
        "entry 1 not replayed: topic prod.signals does not exist on 127.0.0.1:19092 (run"
        " `router-stream topics apply`, or check ROUTER_TOPIC_PREFIX)")
    assert report.held_entries == 0


async def test_a_dry_run_shows_only_the_entries_that_would_go_to_signals(fakes: Any) -> None:
    fakes([row(1, SIGNALS_TOPIC), row(2, "prod.router.control")], {SIGNALS_TOPIC})
    previewed: list[int] = []

    report = await replay.replay_dlq(SETTINGS, DlqFilter(), dry_run=True,
                                     on_preview=lambda r: previewed.append(r.id))

    assert previewed == [1] and report.would_send == 1
    assert [entry_id for entry_id, _ in report.unavailable] == [2]
    assert FakeWriter.sent == []


def test_a_retried_signal_s_entry_names_the_signals_topic_and_goes_there() -> None:
    """A record re-fed from router.retry keeps its first origin: its DLQ entry names signals,
    so a legitimate entry always replays to signals, never to router.retry."""
    origin = Origin(SIGNALS_TOPIC, 2, 40, 0, None)
    retried = SimpleNamespace(
        topic="prod.router.retry", partition=0, offset=7, key=b"k", value=b"{}", timestamp=0,
        headers=retry_headers([], origin, 1, 1.0, 2.0, "sig-1"))
    entry = dead_letter(retried, DlqReason.NO_HEALTHY_DESTINATION, "down", 3.0).entry
    assert entry.original_topic == SIGNALS_TOPIC
    targets = replay.replay_topics(SETTINGS)
    assert targets == {SIGNALS_TOPIC}
    assert replay.target_problem(row(1, entry.original_topic), targets) is None
    assert replay.target_problem(row(1, "prod.router.retry"), targets) is not None
