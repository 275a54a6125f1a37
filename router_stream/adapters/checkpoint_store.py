"""State checkpoints on the compacted ``router.state`` topic: the changelog of the shared state.

Why (docs/worker.md, "Checkpoints"): the state topics ``source-health`` and ``outcomes`` keep 3
days of records, so replaying them alone rebuilds only the state of the last 3 days, while a
long-running worker remembers bandit statistics and breaker history from before. A checkpoint
is the shared state (:mod:`router_stream.core.checkpoint`) plus the state-topic offsets it
reflects; a starting worker restores the newest one and replays only the records after those
offsets — the same state as a full replay, and a start-up time bounded by the checkpoint
interval instead of the retention.

Layout (one partition, ``cleanup.policy=compact``, text keys):

* ``chunk/<checkpoint_id>/<i>`` — the i-th piece of the zlib-compressed document, ≤ 512 KiB
  each so that no record nears the broker's 1 MB default limit;
* ``manifest`` — the newest checkpoint's id, chunk count, SHA-256, offsets, replay clock and
  policy.

A writer sends every chunk, then the manifest (each acknowledged before the next step), and
only then tombstones the chunks of checkpoints older than that manifest. A reader that reads the
topic to its end and takes the last manifest therefore always finds that manifest's chunks; a
writer that died half-way leaves chunks no manifest names, which the next writer tombstones.
One worker writes (the one that owns partition 0 of ``signals``); two writers during a
rebalance are harmless, as each manifest is self-consistent and the last one wins.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from confluent_kafka import KafkaException

from router_stream.adapters.kafka_io import read_records
from router_stream.adapters.rdkafka import RecordSender
from router_stream.config import STATE, Settings
from router_stream.core.checkpoint import Captured, CheckpointRefused, to_document
from router_stream.errors import BrokerUnavailable

log = logging.getLogger("router_stream.adapters.checkpoint_store")

CHUNK_BYTES = 512 * 1024
MANIFEST_KEY = b"manifest"
MANIFEST_FORMAT = 1

MAX_DOCUMENT_BYTES = 256 * 1024 * 1024
"""The most a checkpoint's document may inflate to; past it the checkpoint is refused unread.
Chunks bound what is stored, not what zlib makes of it (up to ~1000:1), and the state has no cap
on sources or destinations, so the bound is what a worker could hold: at ~330 bytes of document
per id (full breaker windows) it is ~800k ids, where the state-memory bench's worker used
~0.8 KB of memory per id — more than the deployment's 512 MiB holds."""

_PIECE_BYTES = 1024 * 1024  # what refusing a zlib bomb costs (:func:`_inflated_size`)

MAX_CLOCK_LEAD_S = 2 * 3600.0
"""How far a checkpoint's replay clock may be after its ``written_at``, and ``written_at`` after
the reader's clock. The replay clock is the newest record timestamp folded, which a Kafka 4
broker takes at most ``message.timestamp.after.max.ms`` (1 hour by default) ahead of its own
clock; twice that leaves room for clock skew. Past it (or ``nan``, ``inf``) the checkpoint is
refused: restored, every later state record would be folded at that time."""


@dataclass(frozen=True)
class PolicyOrigin:
    """Where the active policy came from, so a restore decides like a replay would.

    ``file``: the policy file (at start-up or a ``policy_reload``) — a replay would read the
    file as it is *now*, so a restore does too. ``control``: a ``policy_publish`` — its text is
    in the checkpoint.
    """

    origin: str  # "file" | "control"
    text: str
    source: str


class StatePartition(NamedTuple):
    """A partition of a state topic, as checkpoint offsets and the follower's positions key
    it (a plain pair: no Kafka client's type)."""

    topic: str
    partition: int


@dataclass(frozen=True)
class Checkpoint:
    """``state`` is the document (:func:`router_stream.core.checkpoint.to_document`) when
    read, or the engine's captured tables when about to be written (built in :func:`encode`,
    off the event loop)."""

    checkpoint_id: str
    offsets: dict[StatePartition, int]
    clock: float
    policy: PolicyOrigin
    policy_version: str
    state: dict[str, Any] | Captured
    written_at: float
    writer: str


@dataclass
class LoadedCheckpoints:
    """What a read of ``router.state`` found: the newest complete checkpoint (if any) and
    the chunk keys no manifest names any more (for the next writer to delete)."""

    latest: Checkpoint | None = None
    stale_keys: list[bytes] = field(default_factory=list)
    problem: str | None = None


def encode(ckpt: Checkpoint) -> tuple[dict[str, Any], list[bytes]]:
    """The manifest and the chunks of a checkpoint (CPU work: run it off the event loop)."""
    doc = ckpt.state if isinstance(ckpt.state, dict) else to_document(ckpt.state)
    body = zlib.compress(orjson.dumps(doc), 1)
    chunks = [body[i:i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)] or [b""]
    manifest = {
        "format": MANIFEST_FORMAT,
        "checkpoint_id": ckpt.checkpoint_id,
        "chunks": len(chunks),
        "sha256": hashlib.sha256(body).hexdigest(),
        "offsets": [[tp.topic, tp.partition, off] for tp, off in sorted(ckpt.offsets.items())],
        "clock": ckpt.clock,
        "policy": {"origin": ckpt.policy.origin, "text": ckpt.policy.text,
                   "source": ckpt.policy.source},
        "policy_version": ckpt.policy_version,
        "written_at": ckpt.written_at,
        "writer": ckpt.writer,
    }
    return manifest, chunks


def decode(manifest: dict[str, Any], chunks: list[bytes], *,
           now: float | None = None) -> Checkpoint:
    """Inverse of :func:`encode`; raises ValueError on anything inconsistent
    (:class:`CheckpointRefused` for what no writer makes: see ``MAX_DOCUMENT_BYTES`` and
    ``MAX_CLOCK_LEAD_S``). ``now``: the reader's clock (None: ``written_at`` is not checked)."""
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"manifest format {manifest.get('format')!r}")
    clock, written_at = float(manifest["clock"]), float(manifest["written_at"])
    _check_times(clock, written_at, now)
    body = b"".join(chunks)
    if hashlib.sha256(body).hexdigest() != manifest["sha256"]:
        raise ValueError("checksum mismatch")
    state = orjson.loads(_inflate(body))
    policy = manifest["policy"]
    return Checkpoint(
        checkpoint_id=str(manifest["checkpoint_id"]),
        offsets={StatePartition(str(t), int(p)): int(o) for t, p, o in manifest["offsets"]},
        clock=clock,
        policy=PolicyOrigin(str(policy["origin"]), str(policy["text"]), str(policy["source"])),
        policy_version=str(manifest["policy_version"]),
        state=state,
        written_at=written_at,
        writer=str(manifest["writer"]),
    )


def _check_times(clock: float, written_at: float, now: float | None) -> None:
    if not (math.isfinite(clock) and math.isfinite(written_at)):
        raise CheckpointRefused(f"replay clock {clock!r} or written_at {written_at!r} is not "
                                "a finite time")
    if clock > written_at + MAX_CLOCK_LEAD_S:
        raise CheckpointRefused(f"replay clock {clock!r} is more than {MAX_CLOCK_LEAD_S:.0f} s "
                                f"after the checkpoint was written ({written_at!r})")
    if now is not None and written_at > now + MAX_CLOCK_LEAD_S:
        raise CheckpointRefused(f"written at {written_at!r}, more than {MAX_CLOCK_LEAD_S:.0f} s "
                                "from now")


def _inflate(body: bytes) -> bytes:
    """``body`` decompressed, once its size is known to be at most ``MAX_DOCUMENT_BYTES``."""
    return zlib.decompress(body, bufsize=max(_inflated_size(body), 1))  # one buffer, no regrowth


def _inflated_size(body: bytes) -> int:
    """How many bytes ``body`` inflates to, counted a piece at a time and given up past
    ``MAX_DOCUMENT_BYTES``: refusing a bomb costs one piece of memory, not the bound (twice
    over, as a growing buffer)."""
    inflater = zlib.decompressobj()
    size, rest = 0, body
    while not inflater.eof:
        piece = inflater.decompress(rest, _PIECE_BYTES)
        if not (piece or len(inflater.unconsumed_tail) < len(rest) or inflater.eof):
            raise CheckpointRefused("checkpoint document is truncated")  # no progress
        rest = inflater.unconsumed_tail
        size += len(piece)
        if size > MAX_DOCUMENT_BYTES:
            raise CheckpointRefused(
                f"checkpoint document inflates past {MAX_DOCUMENT_BYTES} bytes")
    return size


def _chunk_key(checkpoint_id: str, i: int) -> bytes:
    return f"chunk/{checkpoint_id}/{i}".encode()


async def load_checkpoints(settings: Settings) -> LoadedCheckpoints:
    """Read ``router.state`` to its current end and return the newest complete checkpoint."""
    topic = settings.topic(STATE)
    manifest: dict[str, Any] | None = None
    chunks: dict[bytes, bytes] = {}
    async for record in read_records(settings, topic, until_end=True):
        if record.key is None:
            continue
        if record.key == MANIFEST_KEY:
            if record.value is not None:
                try:
                    manifest = orjson.loads(record.value)
                except orjson.JSONDecodeError:
                    log.warning("unreadable checkpoint manifest ignored",
                                extra={"offset": record.offset})
            continue
        if record.value is None:
            chunks.pop(record.key, None)
        else:
            chunks[record.key] = record.value
    out = LoadedCheckpoints()
    if manifest is None:
        out.stale_keys = sorted(chunks)
        return out
    try:
        ckpt_id = str(manifest["checkpoint_id"])
        count = int(manifest["chunks"])
        if not 0 < count <= len(chunks):  # a manifest names only chunks written before it
            raise ValueError(f"{count} chunks named, {len(chunks)} on the topic")
        keys = [_chunk_key(ckpt_id, i) for i in range(count)]
        missing = [k for k in keys if k not in chunks]
        if missing:
            raise ValueError(f"{len(missing)} of {len(keys)} chunks missing")
        out.latest = decode(manifest, [chunks[k] for k in keys], now=time.time())
        out.stale_keys = sorted(set(chunks) - set(keys))
    except (KeyError, TypeError, ValueError, zlib.error, orjson.JSONDecodeError) as exc:
        out.problem = f"checkpoint unusable: {exc}"
        out.stale_keys = sorted(chunks)
    except Exception as exc:  # noqa: BLE001 - MemoryError, a manifest of another shape: a replay
        # in full rebuilds the state, whereas a raise here would stop every worker's start-up
        out.problem = f"checkpoint unusable: {type(exc).__name__}: {exc}".replace("\n", "; ")
        out.stale_keys = sorted(chunks)
    return out


class CheckpointWriter:
    """Writes checkpoints with the worker's producer (renewed over time, hence a callable)."""

    def __init__(self, settings: Settings, producer: Callable[[], RecordSender | None], *,
                 writer: str,
                 stale_keys: list[bytes] | None = None,
                 last_offsets: dict[StatePartition, int] | None = None) -> None:
        self._topic = settings.topic(STATE)
        self._producer = producer
        self.writer = writer
        self._to_delete: list[bytes] = list(stale_keys or [])
        self.written = 0
        # The offsets of the newest checkpoint on the topic (the one read at start, then each
        # one written): an unchanged state is not written again.
        self.last_offsets = dict(last_offsets) if last_offsets is not None else None

    async def write(self, ckpt: Checkpoint) -> tuple[int, int]:
        """Send one checkpoint (chunks, manifest, then tombstones); returns (chunks, bytes)."""
        manifest, chunks = await asyncio.to_thread(encode, ckpt)
        producer: RecordSender | None = self._producer()
        if producer is None:
            raise BrokerUnavailable("writing a checkpoint: the worker has no producer")
        keys = [_chunk_key(ckpt.checkpoint_id, i) for i in range(len(chunks))]
        try:
            await asyncio.gather(*[producer.send(self._topic, chunk, key)
                                   for key, chunk in zip(keys, chunks, strict=True)])
            await producer.send(self._topic, orjson.dumps(manifest), MANIFEST_KEY)
        except KafkaException as exc:
            self._to_delete.extend(keys)  # whatever arrived is named by no manifest
            raise BrokerUnavailable(f"writing a checkpoint to {self._topic}: {exc!r}") from exc
        # Only now are the older chunks unreferenced by the newest manifest; this one's go
        # after the next manifest.
        old, self._to_delete = self._to_delete, keys
        try:
            await asyncio.gather(*[producer.send(self._topic, None, k) for k in old])
        except KafkaException as exc:
            self._to_delete = old + keys
            raise BrokerUnavailable(f"deleting old checkpoint chunks: {exc!r}") from exc
        self.written += 1
        self.last_offsets = dict(ckpt.offsets)
        return len(chunks), sum(len(c) for c in chunks)


def new_checkpoint_id() -> str:
    """Unique per write and sortable by time (for people reading the topic)."""
    return f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:8]}"
