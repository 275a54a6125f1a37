"""Checkpoints on ``router.state`` that no writer of ours makes — a zlib bomb, a replay clock no
replay reaches, a restore that fails unexpectedly — are refused in one line, and the worker
replays the state topics in full instead of failing to start."""

from __future__ import annotations

import hashlib
import time
import zlib
from typing import Any

import orjson
import pytest

from router_stream.adapters import checkpoint_store
from router_stream.adapters.checkpoint_store import (
    MANIFEST_KEY,
    MAX_CLOCK_LEAD_S,
    Checkpoint,
    PolicyOrigin,
    StatePartition,
    decode,
    encode,
)
from router_stream.config import STATE, Settings
from router_stream.core.checkpoint import CheckpointRefused, export_state
from router_stream.core.engine import RouterEngine
from router_stream.worker import state as state_module
from router_stream.worker.policy_source import compile_policy_text
from router_stream.worker.state import StateFollower
from tests.support.engine import NOW, Rec

POLICY = """
name: %s
destinations: {pager: {}, slack: {}}
classify: [{name: all, when: {field: sender_id, exists: true}, kind: alert}]
routes: {alert: {strategy: first_healthy, tiers: [[pager], [slack]]}}
"""
SETTINGS = Settings(topic_prefix="t.")


def manifest_for(body: bytes, at: float = NOW, **changes: Any) -> dict[str, Any]:
    """A manifest as a writer of ours makes it at ``at``, for one chunk holding ``body``
    (``load_checkpoints`` refuses one written later than the wall clock: ``at=time.time()``)."""
    manifest = {"format": 1, "checkpoint_id": "c1", "chunks": 1,
                "sha256": hashlib.sha256(body).hexdigest(), "offsets": [], "clock": at,
                "policy": {"origin": "file", "text": "", "source": ""}, "policy_version": "p",
                "written_at": at, "writer": "w"}
    return {**manifest, **changes}


async def load(monkeypatch: pytest.MonkeyPatch, body: bytes,
               manifest: dict[str, Any]) -> checkpoint_store.LoadedCheckpoints:
    """``load_checkpoints`` over a router.state holding one chunk and a manifest."""
    topic = SETTINGS.topic(STATE)
    records = [Rec(body, topic=topic, offset=0, key=b"chunk/c1/0"),
               Rec(orjson.dumps(manifest), topic=topic, offset=1, key=MANIFEST_KEY)]

    async def read(settings: Any, topic: str, **_: Any) -> Any:
        for record in records:
            yield record

    monkeypatch.setattr(checkpoint_store, "read_records", read)
    return await checkpoint_store.load_checkpoints(SETTINGS)


# --- a document that inflates past any state a worker holds ---------------------------------------


async def test_a_checkpoint_that_inflates_past_the_bound_is_refused_unread(monkeypatch) -> None:
    """~1000:1: a few MB of chunks would inflate to GBs in every starting worker (here the bound
    is lowered to 1 MiB and the bomb inflates to 8 MiB, a valid JSON document)."""
    monkeypatch.setattr(checkpoint_store, "MAX_DOCUMENT_BYTES", 1 << 20)
    bomb = zlib.compress(b" " * (8 << 20) + b"{}", 9)
    assert len(bomb) < 10_000
    loaded = await load(monkeypatch, bomb, manifest_for(bomb, time.time()))
    assert loaded.latest is None and loaded.stale_keys == [b"chunk/c1/0"]
    assert loaded.problem is not None and "inflates past 1048576 bytes" in loaded.problem
    assert "\n" not in loaded.problem
    # A document under the bound still loads.
    doc = zlib.compress(b" " * ((1 << 20) - 2) + b"{}", 9)
    assert (await load(monkeypatch, doc, manifest_for(doc, time.time()))).latest is not None


async def test_a_memory_error_while_decoding_is_a_refused_checkpoint(monkeypatch) -> None:
    """What an allocation failure, or any error nobody foresaw, raises while decoding must not
    stop start-up: no worker could start until someone deleted the topic."""
    def decode_out_of_memory(*args: Any, **kwargs: Any) -> Checkpoint:
        raise MemoryError("Unable to allocate output buffer.")

    monkeypatch.setattr(checkpoint_store, "decode", decode_out_of_memory)
    body = zlib.compress(b"{}")
    loaded = await load(monkeypatch, body, manifest_for(body))
    assert loaded.latest is None and loaded.stale_keys == [b"chunk/c1/0"]
    assert loaded.problem == "checkpoint unusable: MemoryError: Unable to allocate output buffer."


# --- a replay clock no replay reaches -------------------------------------------------------------


@pytest.mark.parametrize("changes", [
    {"clock": "nan"}, {"clock": "inf"}, {"clock": "-inf"}, {"clock": 1e300},
    {"clock": NOW + MAX_CLOCK_LEAD_S + 1}, {"written_at": "nan"},
])
def test_a_clock_no_replay_reaches_is_refused(changes: dict[str, Any]) -> None:
    """Restored, a clock of nan (``max(nan, ts)`` stays nan) or of a far future would fold every
    later state record at that time: a breaker opened then never recovers."""
    body = zlib.compress(orjson.dumps({"format": 1}))
    with pytest.raises(CheckpointRefused, match="finite|after the checkpoint was written"):
        decode(manifest_for(body, **changes), [body])
    # a clock a little after the checkpoint was written (a record dated ahead) is kept
    lead = decode(manifest_for(body, clock=NOW + 60), [body])
    assert lead.clock == NOW + 60


def test_a_checkpoint_written_in_the_future_is_refused() -> None:
    """Otherwise a manifest dated in 9999 could carry a clock of 9999 past the check above."""
    body = zlib.compress(orjson.dumps({"format": 1}))
    far = manifest_for(body, clock=NOW + 86_400, written_at=NOW + 86_400)
    with pytest.raises(CheckpointRefused, match="written at"):
        decode(far, [body], now=NOW)
    assert decode(manifest_for(body), [body], now=NOW).written_at == NOW


async def test_a_manifest_with_a_nan_clock_is_reported_not_loaded(monkeypatch) -> None:
    body = zlib.compress(orjson.dumps({"format": 1}))
    now = time.time()
    loaded = await load(monkeypatch, body, manifest_for(body, now, clock="nan"))
    assert loaded.latest is None and loaded.stale_keys == [b"chunk/c1/0"]
    assert loaded.problem == ("checkpoint unusable: replay clock nan or written_at "
                              f"{now!r} is not a finite time")
    assert (await load(monkeypatch, body, manifest_for(body, now))).latest is not None


# --- a restore that fails unexpectedly ------------------------------------------------------------


def test_a_restore_that_fails_unexpectedly_is_refused_and_the_topics_replayed(monkeypatch) -> None:
    """A MemoryError (or any error) restoring the document leaves the engine on its policy and
    the follower starting from the beginning of every state partition."""
    engine = RouterEngine(compile_policy_text(POLICY % "file"))
    baseline = engine.policy
    follower = StateFollower(SETTINGS, engine, on_transitions=lambda t: None,
                             on_policy=lambda e: None, reload_policy=lambda: ("", baseline),
                             checkpoint=None)
    manifest, chunks = encode(Checkpoint(
        checkpoint_id="c1", offsets={StatePartition("t.outcomes", 0): 5}, clock=NOW,
        policy=PolicyOrigin("control", POLICY % "published", "policy v2"), policy_version="v2",
        state=export_state(engine), written_at=NOW, writer="w"))
    follower._checkpoint = decode(orjson.loads(orjson.dumps(manifest)), chunks)
    follower._end_at_start = {StatePartition("t.outcomes", 0): 9}

    def restore_out_of_memory(engine: Any, doc: dict[str, Any]) -> None:
        raise MemoryError

    monkeypatch.setattr(state_module, "restore_state", restore_out_of_memory)
    begin = {StatePartition("t.outcomes", 0): 0}
    assert follower._start_positions(begin) == begin
    assert follower.restored is None and engine.policy is baseline
