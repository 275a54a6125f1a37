"""The worker's heartbeat: who it is, what it owns and which policy it decides with, recorded
every ``ROUTER_HEARTBEAT_INTERVAL_S`` for ``router-stream policy show``.

Off the hot path by construction: the beat runs in its own task, reads only in-memory state
(the engine's policy and rollout, the consumer's assignment, the committed-record count), and
each write is bounded by :data:`WRITE_TIMEOUT_S`. A write that fails or times out is logged
once per outage (and once when beats get through again) and simply tried again at the next
beat — a beat is the worker's current state, so nothing queues up and nothing is replayed. A
Postgres or broker outage therefore costs stale rows in ``policy show``, never a stalled batch.

Beats go out early (without waiting for the interval) when what they say changed — partitions
after a rebalance, the policy or rollout after a switch, draining — checked every
:data:`CHANGE_CHECK_S` from memory, and a last one when the worker exits: ``stopped`` when it exits
cleanly, ``failed`` when it stops on an error. A worker that dies without that last beat
(SIGKILL, OOM, power) is shown ``stale`` once it missed three intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any, Protocol

from router_stream import __version__
from router_stream.adapters.heartbeat_store import HeartbeatStore
from router_stream.config import Settings
from router_stream.core.heartbeat import WorkerHeartbeat, WorkerStatus, normalise_partitions
from router_stream.errors import TransientError

log = logging.getLogger("router_stream.worker.heartbeat")

WRITE_TIMEOUT_S = 5.0
FINAL_WRITE_TIMEOUT_S = 2.0
"""The ``stopped`` beat is part of the drain, which must end well under 30 s."""
CHANGE_CHECK_S = 0.5
"""How often the loop compares the worker with its last beat between intervals (in-memory)."""


class _Worker(Protocol):
    """What the heartbeat reads from :class:`~router_stream.worker.service.RouterWorker`."""

    settings: Settings
    engine: Any
    signals: Any

    @property
    def draining(self) -> bool: ...


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    def __init__(self, worker: _Worker, store: HeartbeatStore) -> None:
        self._worker = worker
        self._store = store
        s = worker.settings
        self.worker_id = s.worker_id or default_worker_id()
        self.interval_s = s.heartbeat_interval_s
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._started_at = time.time()
        self._beats = 0
        self._wake = asyncio.Event()
        self._last_said: tuple[Any, ...] | None = None
        self._failing_since: float | None = None
        self._failed_in_a_row = 0
        self.recorded = 0
        self.failed = 0

    def wake(self) -> None:
        """Beat now rather than at the end of the interval (draining, policy switched)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self.beat(self._status())
            await self._until_due()

    async def _until_due(self) -> None:
        """Sleep until the next interval, or less if woken or if the worker changed since the
        last beat (a failed beat counts as said: it is tried again at the interval)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self.interval_s
        while (left := due - loop.time()) > 0:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that lands as the wait completes (wake() just before stop() cancels this task),
            # and the loop then beat on forever while the worker's stop() awaited it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(CHANGE_CHECK_S, left)):
                    await self._wake.wait()
            if self._wake.is_set() or self._changed():
                return

    def _status(self) -> WorkerStatus:
        return "draining" if self._worker.draining else "running"

    def _changed(self) -> bool:
        try:
            return _what_it_says(self.snapshot(self._status())) != self._last_said
        except Exception:  # noqa: BLE001 - beat() logs the same failure at the interval
            return False

    async def final(self, *, failed: bool = False) -> None:
        """The last beat: ``stopped`` after a clean exit, ``failed`` when the worker stops on
        an error (the group is left either way: no partitions)."""
        await self.beat("failed" if failed else "stopped", timeout_s=FINAL_WRITE_TIMEOUT_S)

    async def beat(self, status: WorkerStatus, *, timeout_s: float = WRITE_TIMEOUT_S) -> bool:
        """Record one heartbeat; False when it could not be (logged, never raised)."""
        self._beats += 1
        try:
            hb = self.snapshot(status)
            self._last_said = _what_it_says(hb)
            async with asyncio.timeout(timeout_s):  # not wait_for: see _until_due
                await self._store.write(hb)
        except Exception as exc:  # noqa: BLE001 - a heartbeat must never take routing down
            self._failed(exc)
            return False
        self.recorded += 1
        if self._failing_since is not None:
            log.info("heartbeat recorded again", extra={
                "worker_id": self.worker_id, "failed_beats": self._failed_in_a_row,
                "after_s": round(time.monotonic() - self._failing_since, 1)})
            self._failing_since, self._failed_in_a_row = None, 0
        return True

    def _failed(self, exc: Exception) -> None:
        self.failed += 1
        self._failed_in_a_row += 1
        if self._failing_since is not None:
            return  # logged when the outage began; logged again when it ends
        self._failing_since = time.monotonic()
        expected = isinstance(exc, TransientError | TimeoutError)
        log.log(logging.WARNING if expected else logging.ERROR,
                "heartbeat not recorded; routing goes on, retrying every beat",
                exc_info=None if expected else exc,
                extra={"worker_id": self.worker_id, "error": str(exc) or type(exc).__name__})

    def snapshot(self, status: WorkerStatus) -> WorkerHeartbeat:
        """The worker as it is now (in-memory reads only)."""
        w = self._worker
        engine = w.engine
        rollout = engine.rollout
        consumer = w.signals.consumer if w.signals is not None else None
        live = status in ("running", "draining")
        assigned = consumer.assignment() if consumer is not None and live else ()
        return WorkerHeartbeat(
            worker_id=self.worker_id, group_id=w.settings.group_id, host=self._host,
            pid=self._pid, policy_version=engine.policy_version,
            candidate_version=rollout.candidate.version if rollout is not None else None,
            rollout_mode=rollout.mode if rollout is not None else None,
            rollout_share=rollout.fraction if rollout is not None else None,
            partitions=normalise_partitions((tp.topic, tp.partition) for tp in assigned),
            started_at=self._started_at, last_seen=time.time(), status=status,
            interval_s=self.interval_s,
            signals_processed=w.signals.processed if w.signals is not None else 0,
            beats=self._beats, software_version=__version__,
            topic_prefix=w.settings.topic_prefix,
        )


def _what_it_says(hb: WorkerHeartbeat) -> tuple[Any, ...]:
    """What an operator would see change (not the counters and clocks that always do)."""
    return (hb.status, hb.partitions, hb.policy_version, hb.candidate_version, hb.rollout_mode,
            hb.rollout_share)
