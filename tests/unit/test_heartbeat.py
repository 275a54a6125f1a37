"""Worker heartbeats: staleness, the fleet view of `policy show`, its text, and the worker side's
promise that a heartbeat never takes routing down (a store that fails or hangs)."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_stream.config import Settings
from router_stream.core.heartbeat import (
    STALE_AFTER_BEATS,
    WorkerHeartbeat,
    fleet_view,
    format_ago,
    format_partitions,
    format_rollout,
    format_version,
    liveness,
)
from router_stream.errors import DatabaseUnavailable
from router_stream.worker.heartbeat import Heartbeat
from router_stream.worker.rdkafka import Partition

NOW = 1_800_000_000.0


def hb(worker_id: str = "a:1", *, seen_ago: float = 1.0, status: str = "running",
       version: str = "p-new", interval_s: float = 5.0, group: str = "g", **kw) -> WorkerHeartbeat:
    return WorkerHeartbeat(worker_id=worker_id, group_id=group, host="a", pid=1,
                           policy_version=version, started_at=NOW - 600,
                           last_seen=NOW - seen_ago, status=status, interval_s=interval_s,
                           **kw)  # type: ignore[arg-type]


# --- liveness ----------------------------------------------------------------------------------


def test_a_worker_is_stale_after_three_of_its_own_intervals_not_before():
    assert liveness(hb(seen_ago=3 * 5.0), NOW) == "running"
    assert liveness(hb(seen_ago=3 * 5.0 + 0.01), NOW) == "stale"
    # judged by the interval it reported, not a global one
    assert liveness(hb(seen_ago=20, interval_s=10), NOW) == "running"
    assert liveness(hb(seen_ago=20, interval_s=5), NOW) == "stale"


def test_draining_goes_stale_too_but_stopped_and_failed_are_final():
    assert liveness(hb(status="draining", seen_ago=1), NOW) == "draining"
    assert liveness(hb(status="draining", seen_ago=60), NOW) == "stale"
    assert liveness(hb(status="stopped", seen_ago=10_000), NOW) == "stopped"
    assert liveness(hb(status="failed", seen_ago=10_000), NOW) == "failed"


@given(age=st.floats(0, 1e5), more=st.floats(0, 1e5), interval=st.floats(0.1, 300))
def test_silence_only_ever_makes_a_worker_staler(age, more, interval):
    state = liveness(hb(seen_ago=age, interval_s=interval), NOW)
    if age < STALE_AFTER_BEATS * interval * 0.999:
        assert state == "running"
    if state == "stale":
        assert liveness(hb(seen_ago=age + more, interval_s=interval), NOW) == "stale"


def test_a_heartbeat_with_an_unknown_status_or_no_id_is_refused():
    with pytest.raises(ValueError, match="status"):
        hb(status="asleep")
    with pytest.raises(ValueError, match="worker_id"):
        hb(worker_id="")
    with pytest.raises(ValueError, match="not a worker heartbeat"):
        WorkerHeartbeat.from_json({"worker_id": "x"})


# --- the fleet view ----------------------------------------------------------------------------


def test_each_worker_is_marked_against_the_active_version():
    view = fleet_view([hb("a:1", version="p-new"), hb("b:2", version="p-old")], "p-new", NOW)
    marks = {r.heartbeat.worker_id: r.on_active for r in view.rows}
    assert marks == {"a:1": True, "b:2": False}
    assert [format_version(r) for r in view.rows] == ["p-new (active)", "p-old (NOT active)"]
    assert view.versions_in_use() == {"p-new": 1, "p-old": 1}


def test_without_an_active_version_nothing_is_marked():
    view = fleet_view([hb()], None, NOW)
    assert view.rows[0].on_active is None
    assert format_version(view.rows[0]) == "p-new"


def test_rows_sort_live_first_and_long_gone_workers_are_hidden_unless_asked():
    beats = [hb("z:9", status="stopped", seen_ago=30), hb("y:8", seen_ago=100),
             hb("x:7", seen_ago=1), hb("old:1", status="stopped", seen_ago=7200),
             hb("old:2", seen_ago=7200), hb("old:3", status="failed", seen_ago=7200)]
    view = fleet_view(beats, "p-new", NOW)
    assert [(r.heartbeat.worker_id, r.state) for r in view.rows] == [
        ("x:7", "running"), ("y:8", "stale"), ("z:9", "stopped")]
    assert view.hidden == 3
    everything = fleet_view(beats, "p-new", NOW, include_gone=True)
    assert len(everything.rows) == 6 and everything.hidden == 0


def test_stale_and_stopped_workers_do_not_count_as_versions_in_use():
    view = fleet_view([hb("a", version="p-1"), hb("b", version="p-2", seen_ago=100),
                       hb("c", version="p-3", status="stopped")], "p-1", NOW)
    assert view.versions_in_use() == {"p-1": 1}


def test_json_carries_what_scripts_need():
    view = fleet_view([hb(partitions=(("signals", 1), ("retry", 0), ("signals", 0)),
                          signals_processed=7)], "p-new", NOW, notes=["n"])
    out = view.as_json()
    worker = out["workers"][0]
    assert out["active_version"] == "p-new" and out["notes"] == ["n"]
    assert worker["on_active_version"] is True and worker["state"] == "running"
    assert worker["partitions"] == {"retry": [0], "signals": [0, 1]}
    assert worker["signals_processed"] == 7
    assert worker["last_seen_ago_s"] == 1.0


# --- text --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (-3, "0s ago"), (0.9, "0s ago"), (59, "59s ago"), (60, "1m00s ago"), (125, "2m05s ago"),
    (3600, "1h00m ago"), (3 * 3600 + 12 * 60 + 5, "3h12m ago"), (2 * 86400 + 4 * 3600, "2d04h ago"),
])
def test_format_ago(seconds, text):
    assert format_ago(seconds) == text


def test_partitions_are_grouped_by_topic_without_the_prefix():
    parts = (("t1.signals", 5), ("t1.router.retry", 0), ("t1.signals", 0), ("other", 2))
    assert format_partitions(parts, "t1.") == "other 2 · router.retry 0 · signals 0,5"
    assert format_partitions((), "t1.") == "-"


def test_rollout_text():
    assert format_rollout(hb()) == "-"
    assert format_rollout(hb(candidate_version="p-c", rollout_mode="canary",
                             rollout_share=0.1)) == "canary 10% p-c"


# --- the worker side: never blocks, never raises -----------------------------------------------


class _Store:
    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.written: list[WorkerHeartbeat] = []

    async def write(self, beat: WorkerHeartbeat) -> None:
        if self.behaviour == "down":
            raise DatabaseUnavailable("recording the heartbeat: connection refused")
        if self.behaviour == "hang":
            await asyncio.Event().wait()
        if self.behaviour == "bug":
            raise KeyError("oops")
        self.written.append(beat)


def _worker(**settings):
    consumer = SimpleNamespace(assignment=lambda: {Partition("signals", 2),
                                                   Partition("signals", 0)})
    engine = SimpleNamespace(policy_version="p-1", rollout=SimpleNamespace(
        mode="shadow", fraction=0.5, candidate=SimpleNamespace(version="p-2")))
    return SimpleNamespace(settings=Settings(worker_id="w-1", group_id="grp", **settings),
                           engine=engine, signals=SimpleNamespace(consumer=consumer, processed=12),
                           draining=False)


async def test_a_beat_describes_the_worker():
    store = _Store()
    beat = Heartbeat(_worker(), store)
    assert await beat.beat("running")
    [written] = store.written
    assert (written.worker_id, written.group_id, written.partitions) == (
        "w-1", "grp", (("signals", 0), ("signals", 2)))
    assert (written.policy_version, written.candidate_version, written.rollout_mode,
            written.rollout_share) == ("p-1", "p-2", "shadow", 0.5)
    assert (written.signals_processed, written.beats, written.interval_s) == (12, 1, 5.0)
    await beat.final()
    assert store.written[-1].status == "stopped" and store.written[-1].partitions == ()
    assert store.written[-1].beats == 2


async def test_a_failing_store_is_logged_once_per_outage_and_never_raises(caplog):
    store = _Store("down")
    beat = Heartbeat(_worker(), store)
    with caplog.at_level(logging.INFO, logger="router_stream.worker.heartbeat"):
        assert [await beat.beat("running") for _ in range(3)] == [False] * 3
        store.behaviour = "ok"
        assert await beat.beat("running")
    records = _ours(caplog)
    assert [r.getMessage() for r in records] == [
        "heartbeat not recorded; routing goes on, retrying every beat", "heartbeat recorded again"]
    assert records[0].levelno == logging.WARNING
    assert (beat.failed, beat.recorded) == (3, 1)


async def test_a_bug_in_the_store_is_an_error_line_not_a_crash(caplog):
    beat = Heartbeat(_worker(), _Store("bug"))
    with caplog.at_level(logging.ERROR, logger="router_stream.worker.heartbeat"):
        assert not await beat.beat("running")
    [record] = _ours(caplog)
    assert record.levelno == logging.ERROR and record.exc_info


def _ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Only the heartbeat's lines (a library may log through the same capture)."""
    return [r for r in caplog.records if r.name == "router_stream.worker.heartbeat"]


async def test_the_loop_ends_when_cancelled_just_as_it_is_woken():
    # stop() wakes the heartbeat ("draining") and soon after cancels it. With asyncio.wait_for
    # (Python 3.11) a cancel landing as the wake-up completed was swallowed and the loop beat on
    # forever, so the worker's stop() hung (seen in CI: "stop requested, draining", no exit).
    for i in range(60):
        store = _Store()
        beat = Heartbeat(_worker(heartbeat_interval_s=60), store)
        task = asyncio.create_task(beat.run())
        written = store.written
        await _until(lambda: len(written) == 1)  # noqa: B023 - awaited in this iteration
        beat.wake()
        for _ in range(i % 6):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1.0)
        assert done, f"round {i}: the heartbeat loop survived its cancellation"


async def test_a_hanging_store_costs_the_timeout_not_the_worker():
    beat = Heartbeat(_worker(), _Store("hang"))
    started = asyncio.get_running_loop().time()
    assert not await beat.beat("running", timeout_s=0.2)
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_the_loop_beats_every_interval_and_at_once_when_woken():
    store = _Store()
    worker = _worker(heartbeat_interval_s=60)
    beat = Heartbeat(worker, store)
    task = asyncio.create_task(beat.run())
    try:
        await _until(lambda: len(store.written) == 1)
        worker.draining = True
        beat.wake()  # what request_stop() does: no waiting for the 60 s interval
        await _until(lambda: len(store.written) == 2)
        assert store.written[-1].status == "draining"
    finally:
        task.cancel()


async def test_a_rebalance_or_policy_switch_is_told_without_waiting_for_the_interval():
    store = _Store()
    worker = _worker(heartbeat_interval_s=60)
    assigned = {Partition("signals", 0), Partition("signals", 2)}
    worker.signals.consumer.assignment = lambda: assigned
    beat = Heartbeat(worker, store)
    task = asyncio.create_task(beat.run())
    try:
        await _until(lambda: len(store.written) == 1)
        await asyncio.sleep(0.6)  # counters may move; nothing an operator sees changed
        worker.signals.processed += 100
        await asyncio.sleep(0.6)
        assert len(store.written) == 1
        assigned.add(Partition("signals", 4))  # the other worker left: more partitions
        await _until(lambda: len(store.written) == 2, timeout=2)
        assert store.written[-1].partitions == (("signals", 0), ("signals", 2), ("signals", 4))
        worker.engine.policy_version = "p-9"
        await _until(lambda: len(store.written) == 3, timeout=2)
        assert store.written[-1].policy_version == "p-9"
    finally:
        task.cancel()


async def test_the_loop_keeps_going_through_failures():
    store = _Store("down")
    beat = Heartbeat(_worker(heartbeat_interval_s=0.05), store)
    task = asyncio.create_task(beat.run())
    try:
        await _until(lambda: beat.failed >= 3)
        store.behaviour = "ok"
        await _until(lambda: beat.recorded >= 1)
        assert not task.done()
    finally:
        task.cancel()


async def _until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_an_empty_worker_id_setting_means_the_default():
    # `export ROUTER_WORKER_ID=` in a manifest template should not be a start-up error
    worker = _worker()
    worker.settings = Settings(worker_id="")
    assert worker.settings.worker_id is None
    assert Heartbeat(worker, _Store()).worker_id.endswith(f":{os.getpid()}")


def test_a_heartbeat_compares_by_content():
    a = hb(partitions=(("s", 2), ("s", 1)))
    assert a == replace(a, partitions=(("s", 1), ("s", 2)))
