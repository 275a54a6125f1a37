"""The decision and routed bytes the engine builds from parts (``core/wire.py``) are exactly what
serialising a ``Decision`` and a route dict with orjson writes, for any field values."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from router_stream.core.models import Decision
from router_stream.core.outputs import DecisionRecord
from router_stream.core.wire import (
    Origin,
    OutputEncoder,
    consensus_members,
    decision_id_for,
    route_state,
    routed_body,
)

text = st.text(max_size=12)
ids = st.text(min_size=1, max_size=12)
number = st.floats(allow_nan=False, allow_infinity=False) | st.just(-0.0)
dests = st.lists(ids, min_size=1, max_size=3, unique=True).map(tuple)
consensus = st.none() | st.tuples(number, st.sampled_from(["blend", "single", "synthetic"]),
                                  st.lists(ids, max_size=3), st.lists(ids, max_size=3))
fields = st.fixed_dictionaries({
    "signal_id": ids, "tenant": ids, "kind": ids, "destinations": dests,
    "strategy": ids, "tier": st.none() | st.integers(0, 40), "version": ids,
    "confidence": number, "trust": st.dictionaries(ids, number, max_size=3),
    "breakers": st.dictionaries(ids, st.sampled_from(["closed", "open", "half_open"]),
                                max_size=3),
    "topic": ids, "partition": st.integers(0, 2**31), "offset": st.integers(0, 2**62),
    "now": number, "ts": number, "priority": st.none() | st.integers(-3, 30),
    "consensus": consensus, "replay_of": st.none() | ids,
})


def _encode(enc: OutputEncoder, f: dict[str, Any]) -> bytes:
    parts = enc.route(f["kind"], f["destinations"], f["strategy"], f["tier"], f["version"])
    c = f["consensus"]
    return enc.decision(
        enc.ids(f["signal_id"]), f["tenant"], parts,
        enc.number(f["confidence"]), route_state(f["trust"], f["breakers"]),
        Origin(f["topic"], f["partition"], f["offset"], 0, None), f["ts"], f["priority"],
        consensus_members(*c) if c is not None else None,
        {"replay_of": f["replay_of"]} if f["replay_of"] is not None else None)


def _decision(f: dict[str, Any]) -> Decision:
    c = f["consensus"] or (None, None, None, None)
    return Decision(
        decision_id_for(f["signal_id"]), f["signal_id"], f["tenant"], f["kind"],
        list(f["destinations"]),
        f["strategy"], f["tier"], f["version"], f["confidence"], f["trust"], f["breakers"],
        f["topic"], f["partition"], f["offset"], f["now"], f["ts"], f["priority"], None, None,
        *c, {"replay_of": f["replay_of"]} if f["replay_of"] is not None else {})


@given(st.lists(fields, min_size=1, max_size=4))
def test_a_decision_is_written_as_orjson_writes_the_dataclass(batch):
    # one encoder for the batch: what it keeps from one decision must not leak into the next
    now = batch[0]["now"]
    enc = OutputEncoder(now)
    for f in batch:
        f = {**f, "now": now}
        assert _encode(enc, f) == orjson.dumps(_decision(f))


@given(fields)
def test_a_decision_record_reads_back_as_its_decision(f):
    value = _encode(OutputEncoder(f["now"]), f)
    record = DecisionRecord(value, f["signal_id"], f["kind"], list(f["destinations"]),
                            f["strategy"], f["version"], f["confidence"])
    decision = _decision(f)
    assert record.decision() == decision
    assert record.decision().to_json() == record.to_json() == decision.to_json()
    assert record.decision_id == decision.decision_id
    assert record.tier == decision.tier and record.input_offset == decision.input_offset
    assert record.trust == decision.trust and record.extra == decision.extra


signal_values = st.dictionaries(st.text(max_size=6).filter(lambda k: k != "route"),
                                st.integers(-2**63, 2**63) | text | st.none(),
                                max_size=4)


@given(signal_values, fields, st.sampled_from(["", " ", "\n", " \t\r\n"]))
def test_a_routed_value_is_the_signal_with_its_route_member(signal, f, space):
    raw = orjson.dumps(signal)
    spaced = raw[:-1] + space.encode() + b"}" + space.encode()
    enc = OutputEncoder(f["now"])
    parts = enc.route(f["kind"], f["destinations"], f["strategy"], f["tier"], f["version"])
    c = f["consensus"]
    ids_json = enc.ids(f["signal_id"])
    for dest, dest_fields in zip(f["destinations"], parts.routed, strict=True):
        route: dict[str, Any] = {
            "decision_id": decision_id_for(f["signal_id"]), "signal_id": f["signal_id"],
            "destination": dest, "kind": f["kind"], "strategy": f["strategy"],
            "tier": f["tier"], "policy_version": f["version"], "confidence": f["confidence"],
            "routed_at": f["now"]}
        if c is not None:
            route.update(zip(("value", "method", "sources_used", "outliers"), c, strict=True))
        value = enc.routed(routed_body(raw), ids_json, dest_fields,
                           enc.number(f["confidence"]),
                           consensus_members(*c) if c is not None else None)
        assert value == orjson.dumps({**signal, "route": route})
        spliced = enc.routed(routed_body(spaced), ids_json, dest_fields,
                             enc.number(f["confidence"]),
                             consensus_members(*c) if c is not None else None)
        assert orjson.loads(spliced) == orjson.loads(value)
