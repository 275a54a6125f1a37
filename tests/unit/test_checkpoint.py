"""Checkpoints of the shared state: restoring one and folding the rest equals folding everything."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_stream.core.checkpoint import CheckpointRefused, export_state, restore_state
from router_stream.core.engine import RouterEngine
from router_stream.core.models import BreakerForce, HealthEvent, Outcome, OverrideSet
from tests.support.engine import NOW, Rec, ms, policy, sig

TARGETS = ["pager", "slack", "email", "a", "b", "c", "src-1", "src-2"]

health = st.builds(
    lambda t, i, ok, lat: ("health", HealthEvent(source_id=t, ts=ms(NOW + i), ok=ok,
                                                 latency_ms=lat)),
    st.sampled_from(TARGETS), st.integers(0, 600), st.one_of(st.none(), st.booleans()),
    st.one_of(st.none(), st.floats(0, 5000)))
outcome = st.builds(
    lambda t, i, ok, r: ("outcome", Outcome(signal_id=f"o{i}", destination=t, ts=ms(NOW + i), ok=ok,
                                           reward=r)),
    st.sampled_from(TARGETS), st.integers(0, 600), st.booleans(),
    st.one_of(st.none(), st.floats(0, 1)))
control = st.one_of(
    st.builds(lambda t, i: ("control", OverrideSet(override_id=f"o-{t}", action="drain",
                                                   target=t, expires_at=NOW + i)),
              st.sampled_from(TARGETS), st.integers(1, 900)),
    st.builds(lambda t, s: ("control", BreakerForce(target=t, state=s)),
              st.sampled_from(TARGETS), st.sampled_from(["open", "closed"])),
)
events = st.lists(st.one_of(health, outcome, control), max_size=60)


def fold(engine: RouterEngine, evs: list, first: int = 0) -> None:
    """As the state follower folds records: in order, each at its own time (``first`` is the
    index of ``evs[0]`` in the whole stream: a command's time is its position)."""
    for i, (kind, ev) in enumerate(evs, start=first):
        if kind == "health":
            engine.apply_health(ev, ev.ts)
        elif kind == "outcome":
            engine.apply_outcome(ev, ev.ts)
        else:
            engine.apply_control(ev, NOW + i)


def shared(engine: RouterEngine) -> bytes:
    """Everything a checkpoint carries, in a comparable form."""
    return orjson.dumps(export_state(engine), option=orjson.OPT_SORT_KEYS)


@settings(max_examples=150, deadline=None)
@given(events, st.integers(0, 60))
def test_restore_then_fold_the_rest_equals_folding_everything(evs, cut):
    cut = min(cut, len(evs))
    full = RouterEngine(policy())
    fold(full, evs)

    writer = RouterEngine(policy())
    fold(writer, evs[:cut])
    doc = orjson.loads(orjson.dumps(export_state(writer)))  # as it travels: JSON bytes
    restored = RouterEngine(policy())
    restore_state(restored, doc)
    fold(restored, evs[cut:], cut)

    assert shared(restored) == shared(full)
    assert restored.snapshot(NOW + 700) == full.snapshot(NOW + 700)
    # The not-closed index the hot path and tick rely on is rebuilt, not just the dict.
    assert (sorted(t for t, _ in restored.state.breakers.not_closed_items())
            == sorted(t for t, _ in full.state.breakers.not_closed_items()))
    assert restored.tick(NOW + 2000) == full.tick(NOW + 2000)


def test_a_restored_engine_decides_like_the_original():
    writer = RouterEngine(policy())
    for i in range(3):  # the primary's breaker opens: alerts go to the second tier
        writer.apply_health(HealthEvent(source_id="pager", ts=ms(NOW + i), ok=False), NOW + i)
    for dest, ok in [("a", False), ("b", True), ("c", True), ("b", True)]:
        writer.apply_outcome(Outcome(signal_id="s", destination=dest, ts=ms(NOW), ok=ok), NOW)
    restored = RouterEngine(policy())
    restore_state(restored, orjson.loads(orjson.dumps(export_state(writer))))

    records = [Rec(sig(i), offset=i) for i in range(5)] + [
        Rec(sig(10 + i, payload={"text": "x"}, kind="note"), offset=10 + i) for i in range(20)]
    a = writer.decide_batch(records, NOW + 5)
    b = restored.decide_batch(records, NOW + 5)
    assert [d.destinations for d in a.decisions][:5] == [["slack"]] * 5
    assert [d.to_json() for d in a.decisions] == [d.to_json() for d in b.decisions]
    assert restored.state.arms == writer.state.arms


def test_signal_path_state_is_not_in_a_checkpoint():
    """Load, rate-limit buckets and the dedupe window are each worker's own (its partitions)."""
    engine = RouterEngine(policy())
    engine.decide_batch([Rec(sig(i), offset=i) for i in range(3)], NOW)
    assert set(export_state(engine)) == {"format", "fields", "trust", "breakers", "arms",
                                         "overrides"}


@pytest.mark.parametrize("damage", [
    lambda d: d.update(format=99),
    lambda d: d["fields"]["trust"].append("new_component"),
    lambda d: d["breakers"]["pager"].__setitem__(0, "ajar"),
    lambda d: d["trust"]["pager"].pop(),
    lambda d: d["arms"].__setitem__("a", [1.0, "x", 0, 0.0]),
    lambda d: d["trust"]["pager"].__setitem__(0, float("nan")),
])
def test_a_bad_document_is_refused_and_changes_nothing(damage):
    writer = RouterEngine(policy())
    writer.apply_health(HealthEvent(source_id="pager", ts=ms(NOW), ok=False), NOW)
    writer.apply_outcome(Outcome(signal_id="s", destination="a", ts=ms(NOW), ok=True), NOW)
    doc = export_state(writer)
    damage(doc)
    target = RouterEngine(policy())
    target.apply_health(HealthEvent(source_id="slack", ts=ms(NOW), ok=True), NOW)
    before = shared(target)
    with pytest.raises(CheckpointRefused):
        restore_state(target, doc)
    assert shared(target) == before


# --- the stored form (router_stream.adapters.checkpoint_store) --------------------------------------


def _checkpoint(state: dict):
    from router_stream.adapters.checkpoint_store import Checkpoint, PolicyOrigin, StatePartition

    return Checkpoint(checkpoint_id="1-abc", offsets={StatePartition("outcomes", 3): 17},
                      clock=NOW + 0.25, policy=PolicyOrigin("control", "version: 1\n", "policy v"),
                      policy_version="v", state=state, written_at=NOW, writer="w-1")


def test_a_checkpoint_survives_encoding_in_chunks_below_the_record_limit():
    import random

    from router_stream.adapters.checkpoint_store import CHUNK_BYTES, decode, encode

    rng = random.Random(3)  # incompressible enough to need several chunks
    state = {"trust": {f"src-{i}": [rng.random() for _ in range(5)] + [NOW, i]
                       for i in range(60_000)}}
    ckpt = _checkpoint(state)
    manifest, chunks = encode(ckpt)
    assert len(chunks) > 1 and all(len(c) <= CHUNK_BYTES for c in chunks)
    assert manifest["chunks"] == len(chunks)
    assert decode(orjson.loads(orjson.dumps(manifest)), chunks) == ckpt


def test_a_chunk_from_another_checkpoint_is_detected():
    from router_stream.adapters.checkpoint_store import decode, encode

    manifest, chunks = encode(_checkpoint({"trust": {"a": [0.5] * 5 + [None, 0]}}))
    _, other = encode(_checkpoint({"trust": {"b": [0.1] * 5 + [None, 0]}}))
    with pytest.raises(ValueError, match="checksum"):
        decode(manifest, other)
