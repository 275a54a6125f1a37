"""Worker heartbeats: what each worker reports about itself, and how an operator reads the fleet.

Every worker records a :class:`WorkerHeartbeat` every ``ROUTER_HEARTBEAT_INTERVAL_S`` (to
``worker_heartbeats`` in Postgres, or to the compacted ``router.workers`` topic when
``ROUTER_PERSIST=false``); ``router-stream policy show`` reads them back. This module is the pure
part: the record, its JSON form, and the rules that turn a set of heartbeats into the table an
operator sees — when a worker counts as stale, whether it runs the active policy, which old
entries are hidden. Time is always passed in (the store's clock, never read here).

Liveness::

    reported status   last seen                          shown as
    stopped           any                                stopped   (clean exit)
    failed            any                                failed    (exited on an error)
    running/draining  <= STALE_AFTER_BEATS x interval    running / draining
    running/draining  >  STALE_AFTER_BEATS x interval    stale     (killed, hung, or partitioned)

The interval used is the one the worker itself reported, so workers configured with different
intervals are each judged by their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

WorkerStatus = Literal["running", "draining", "stopped", "failed"]
Liveness = Literal["running", "draining", "stopped", "failed", "stale"]
RolloutMode = Literal["shadow", "canary"]

STATUSES: tuple[WorkerStatus, ...] = ("running", "draining", "stopped", "failed")
STALE_AFTER_BEATS = 3
"""A worker not heard from for this many of its own heartbeat intervals is shown as stale: one
missed beat is a slow write, three are a worker that is gone or cannot reach the store."""

GONE_HIDDEN_AFTER_S = 3600.0
"""Stopped, failed and stale workers last seen longer ago than this are left out of the table
(``--all`` shows them): after a day of deploys it would otherwise list every pod that ever ran."""

_LIVENESS_ORDER: dict[str, int] = {"running": 0, "draining": 1, "stale": 2, "failed": 3,
                                   "stopped": 4}


@dataclass(frozen=True, slots=True)
class WorkerHeartbeat:
    """One worker process as it described itself at ``last_seen`` (epoch seconds)."""

    worker_id: str
    group_id: str
    host: str
    pid: int
    policy_version: str
    started_at: float
    last_seen: float
    status: WorkerStatus
    interval_s: float
    partitions: tuple[tuple[str, int], ...] = ()
    candidate_version: str | None = None
    rollout_mode: RolloutMode | None = None
    rollout_share: float | None = None
    signals_processed: int = 0
    beats: int = 0
    software_version: str = ""
    # The ROUTER_TOPIC_PREFIX it routes under: deployments sharing one database are told apart.
    topic_prefix: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")
        if not self.worker_id:
            raise ValueError("worker_id must not be empty")
        if self.interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        # One order, so two beats with the same assignment compare equal.
        object.__setattr__(self, "partitions", normalise_partitions(self.partitions))

    def as_json(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id, "group_id": self.group_id, "host": self.host,
            "pid": self.pid, "policy_version": self.policy_version,
            "candidate_version": self.candidate_version, "rollout_mode": self.rollout_mode,
            "rollout_share": self.rollout_share,
            "partitions": [[topic, p] for topic, p in self.partitions],
            "status": self.status, "signals_processed": self.signals_processed,
            "beats": self.beats, "interval_s": self.interval_s,
            "software_version": self.software_version, "topic_prefix": self.topic_prefix,
            "started_at": self.started_at, "last_seen": self.last_seen,
        }

    @classmethod
    def from_json(cls, data: Any) -> WorkerHeartbeat:
        """The inverse of :meth:`as_json`; a record that is not a heartbeat raises ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a heartbeat is a JSON object, not {type(data).__name__}")
        try:
            mode = data.get("rollout_mode")
            if mode not in (None, "shadow", "canary"):
                raise ValueError(f"rollout_mode {mode!r}")
            share = data.get("rollout_share")
            return cls(
                worker_id=str(data["worker_id"]), group_id=str(data["group_id"]),
                host=str(data.get("host", "")), pid=int(data.get("pid", 0)),
                policy_version=str(data["policy_version"]),
                started_at=float(data["started_at"]), last_seen=float(data["last_seen"]),
                status=cast(WorkerStatus, data["status"]),
                interval_s=float(data["interval_s"]),
                partitions=tuple(data.get("partitions") or ()),
                candidate_version=data.get("candidate_version"),
                rollout_mode=cast(RolloutMode | None, mode),
                rollout_share=None if share is None else float(share),
                signals_processed=int(data.get("signals_processed", 0)),
                beats=int(data.get("beats", 0)),
                software_version=str(data.get("software_version", "")),
                topic_prefix=str(data.get("topic_prefix") or ""),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a worker heartbeat: {exc!r}") from exc


def normalise_partitions(pairs: Iterable[Sequence[Any]]) -> tuple[tuple[str, int], ...]:
    """``[[topic, partition], ...]`` in any order -> sorted tuple of (topic, partition)."""
    return tuple(sorted((str(t), int(p)) for t, p in pairs))


def liveness(hb: WorkerHeartbeat, now: float) -> Liveness:
    """How the worker is shown at ``now`` (same clock as ``hb.last_seen``)."""
    if hb.status in ("stopped", "failed"):
        return hb.status
    if now - hb.last_seen > STALE_AFTER_BEATS * hb.interval_s:
        return "stale"
    return hb.status


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One line of ``policy show``."""

    heartbeat: WorkerHeartbeat
    state: Liveness
    age_s: float
    on_active: bool | None  # None: the active version is not known

    def as_json(self) -> dict[str, Any]:
        """The heartbeat as stored, but partitions as ``{topic: [partition, ...]}`` (what a
        script filters on), plus how it is shown."""
        by_topic: dict[str, list[int]] = {}
        for topic, p in self.heartbeat.partitions:
            by_topic.setdefault(topic, []).append(p)
        return {**self.heartbeat.as_json(), "partitions": by_topic, "state": self.state,
                "last_seen_ago_s": round(self.age_s, 3), "on_active_version": self.on_active}


@dataclass(frozen=True, slots=True)
class FleetView:
    """The active policy version and the workers' rows, plus what was left out."""

    active_version: str | None
    rows: tuple[WorkerRow, ...]
    hidden: int = 0
    notes: tuple[str, ...] = field(default=())

    def versions_in_use(self) -> dict[str, int]:
        """Live (running/draining) workers per policy version they decide with."""
        counts: dict[str, int] = {}
        for row in self.rows:
            if row.state in ("running", "draining"):
                v = row.heartbeat.policy_version
                counts[v] = counts.get(v, 0) + 1
        return counts

    def as_json(self) -> dict[str, Any]:
        return {"active_version": self.active_version,
                "workers": [r.as_json() for r in self.rows],
                "versions_in_use": self.versions_in_use(), "hidden": self.hidden,
                "notes": list(self.notes)}


def fleet_view(
    heartbeats: Iterable[WorkerHeartbeat], active_version: str | None, now: float, *,
    include_gone: bool = False, gone_after_s: float = GONE_HIDDEN_AFTER_S,
    notes: Sequence[str] = (),
) -> FleetView:
    """Rows sorted by group, then live before stale before stopped, then worker id.

    Stopped and stale workers last seen more than ``gone_after_s`` ago are counted in
    ``hidden`` instead of listed, unless ``include_gone``. (Failed ones too.)
    """
    rows: list[WorkerRow] = []
    hidden = 0
    for hb in heartbeats:
        state = liveness(hb, now)
        age = max(0.0, now - hb.last_seen)
        if state in ("stopped", "failed", "stale") and age > gone_after_s and not include_gone:
            hidden += 1
            continue
        on_active = None if active_version is None else hb.policy_version == active_version
        rows.append(WorkerRow(hb, state, age, on_active))
    rows.sort(key=lambda r: (r.heartbeat.group_id, _LIVENESS_ORDER[r.state],
                             r.heartbeat.worker_id))
    return FleetView(active_version, tuple(rows), hidden, tuple(notes))


def with_clock(hb: WorkerHeartbeat, last_seen: float) -> WorkerHeartbeat:
    """The heartbeat with ``last_seen`` taken from the store's clock (broker or database)."""
    return replace(hb, last_seen=last_seen)


# --- text for the table ----------------------------------------------------------------------


def format_ago(seconds: float) -> str:
    """``4s ago``, ``2m05s ago``, ``3h12m ago``, ``2d04h ago``: two units at most."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s ago"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m ago"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h ago"


def format_partitions(partitions: Iterable[tuple[str, int]], prefix: str = "") -> str:
    """``signals 0,3,5 · router.retry 0,3,5``: partitions grouped by topic, prefix stripped."""
    by_topic: dict[str, list[int]] = {}
    for topic, p in partitions:
        name = topic[len(prefix):] if prefix and topic.startswith(prefix) else topic
        by_topic.setdefault(name, []).append(p)
    if not by_topic:
        return "-"
    return " · ".join(f"{t} {','.join(str(p) for p in sorted(ps))}"
                      for t, ps in sorted(by_topic.items()))


def format_rollout(hb: WorkerHeartbeat) -> str:
    """``canary 10% p-…`` / ``shadow 50% p-…`` / ``-``."""
    if hb.candidate_version is None or hb.rollout_mode is None:
        return "-"
    share = "" if hb.rollout_share is None else f" {hb.rollout_share * 100:g}%"
    return f"{hb.rollout_mode}{share} {hb.candidate_version}"


def format_version(row: WorkerRow) -> str:
    """The worker's policy version, marked against the active one."""
    mark = {True: " (active)", False: " (NOT active)", None: ""}[row.on_active]
    return f"{row.heartbeat.policy_version}{mark}"
