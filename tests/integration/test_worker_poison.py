"""No record can stop the worker, on the real broker and Postgres: the inputs of issue 15, a
record the broker refuses for good (issue 21) and a routed topic deleted at run time (issue 18).
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys

import orjson
import pytest
from confluent_kafka import Producer

from router_stream.adapters.topics import load_declarations
from router_stream.config import DECISIONS, DLQ, SIGNALS, SOURCE_HEALTH, Settings
from tests.support.kafka_admin import Admin
from tests.support.worker import fetch, prepare, produce, read_all, signal, wait_for, worker

pytestmark = pytest.mark.integration

NULL_HEADERS = [("x-trace", b"t1"), ("x-null", None)]


async def limit_record_size(s: Settings, logical: str, limit: int) -> None:
    """Set ``max.message.bytes`` of a topic (AlterConfigs replaces the whole set, so the
    declared configs go along and the worker's verification still passes)."""
    declarations = load_declarations()
    spec = (declarations.routed_spec(logical.removeprefix("routed."))
            if logical.startswith("routed.") else
            next(t for t in declarations.topics if t.logical == logical))
    configs = {**spec.for_cluster(1).configs, "max.message.bytes": str(limit)}  # one broker
    await Admin(s.kafka_bootstrap).alter_configs(s.topic(logical), configs)


async def committed_everywhere(s: Settings) -> bool:
    """The group's committed offset is the end offset of every partition of ``signals``."""
    return await Admin(s.kafka_bootstrap).committed_to_end(s.group_id, s.topic(SIGNALS))


def alert(i: int) -> bytes:
    return signal(i, payload={"severity": "critical"})


async def test_a_null_header_value_is_dead_lettered_byte_exact_alone_and_in_a_batch(
        settings, tmp_path):
    s = await prepare(settings, tmp_path)
    truncated = b'{"signal_id": "s-x", "sender_id": "svc", "ts": 1'
    await produce(s, SIGNALS, [(b"k", truncated)], headers=NULL_HEADERS)
    await produce(s, SIGNALS, [(b"k", alert(i)) for i in range(20)])
    await produce(s, SIGNALS, [(b"k", truncated)], headers=NULL_HEADERS)
    await produce(s, SIGNALS, [(b"k", alert(i)) for i in range(20, 40)], headers=NULL_HEADERS)
    await worker(s, http=False).run_until_idle(1.0)

    dlq = await read_all(s, s.topic(DLQ))
    assert len(dlq) == 2
    for rec in dlq:
        assert rec.value == truncated and list(rec.headers[:2]) == NULL_HEADERS
        assert dict(rec.headers)["x-dlq-reason"] == b"invalid_json"
    rows = await fetch(s, "SELECT reason, original_value FROM dlq_entries")
    assert [(r["reason"], bytes(r["original_value"])) for r in rows] == [
        ("invalid_json", truncated)] * 2
    decided = await fetch(s, "SELECT count(*) AS n FROM routing_decisions")
    assert decided[0]["n"] == 40
    assert await committed_everywhere(s)


async def test_a_nul_escape_in_ids_is_routed_byte_exact_on_kafka(settings, tmp_path):
    s = (await prepare(settings, tmp_path)).model_copy(update={"persist": False})
    nul = b'{"signal_id":"a\\u0000b","sender_id":"s","ts":1800000000000,' \
          b'"payload":{"severity":"critical"}}'
    await produce(s, SIGNALS, [(b"k", alert(i)) for i in range(5)] + [(b"k", nul)]
                  + [(b"k", alert(i)) for i in range(5, 10)])
    await worker(s, http=False).run_until_idle(1.0)
    routed = await read_all(s, s.routed_topic("pager"))
    assert len(routed) == 11
    assert sum(r.value.startswith(nul[:-1]) for r in routed) == 1
    assert len(await read_all(s, s.topic(DECISIONS))) == 11
    assert await committed_everywhere(s)


async def test_a_record_too_large_for_its_routed_topic_and_the_dlq_goes_as_a_reference(
        settings, tmp_path):
    s = await prepare(settings, tmp_path)
    await limit_record_size(s, "routed.pager", 3000)
    await limit_record_size(s, DLQ, 3000)
    # ~10 KB that gzip cannot shrink below 3000 bytes; the broker takes it on `signals`
    big = signal(10_000, payload={"severity": "critical",
                                  "blob": base64.b64encode(os.urandom(7500)).decode()})
    valid = [(f"svc-{i}".encode(), alert(i)) for i in range(300)]
    await produce(s, SIGNALS, valid[:150] + [(b"svc-3", big)] + valid[150:])
    w = worker(s, http=False)
    await asyncio.wait_for(w.run_until_idle(1.0), 120)

    routed = await read_all(s, s.routed_topic("pager"))
    assert sorted(r.value for r in routed) != [] and len(routed) == 300
    dlq = await read_all(s, s.topic(DLQ))
    (ref,) = dlq
    h = dict(ref.headers)
    assert h["x-dlq-reference"] == b"true" and h["x-dlq-reason"] == b"processing_error"
    assert int(h["x-dlq-original-size"]) >= len(big)
    assert b"MSG_SIZE_TOO_LARGE" in h["x-dlq-error"] and not ref.value
    rows = await fetch(s, "SELECT reason, signal_id, original_value FROM dlq_entries")
    assert [(r["reason"], r["signal_id"], r["original_value"]) for r in rows] == [
        ("processing_error", "s-10000", None)]
    decided = await fetch(s, "SELECT count(*) AS n FROM routing_decisions")
    assert decided[0]["n"] == 300
    assert await committed_everywhere(s)
    body = w.metrics.exposition().decode()
    assert 'routing_errors_total{destination="pager"} 1.0' in body


async def test_a_routed_topic_deleted_at_run_time_fails_over_and_nothing_stalls(
        settings, tmp_path):
    s = await prepare(settings, tmp_path)
    w = worker(s, http=False)
    await w.start()
    runner = asyncio.create_task(w.run())
    try:
        await produce(s, SIGNALS, [(b"k", alert(i)) for i in range(10)])
        await wait_for(lambda: w.signals.processed >= 10, 30, "first alerts")
        await Admin(s.kafka_bootstrap).delete_topics([s.routed_topic("pager")], wait_s=30)
        notes = [(b"n", signal(i, payload={"channel_hint": "x"})) for i in range(100, 110)]
        await produce(s, SIGNALS, [(b"k", alert(i)) for i in range(10, 30)] + notes)
        await wait_for(lambda: w.signals.processed >= 40, 90, "signals after the delete")
        # the refused routes reached pager's breaker through `outcomes` (threshold 3) ...
        await wait_for(lambda: w.engine.snapshot().breakers.get("pager") == "open", 30,
                       "pager's breaker open")
        # ... so later alerts fail over to the next tier
        await produce(s, SIGNALS, [(b"k", alert(i)) for i in range(30, 40)])
        await wait_for(lambda: w.signals.processed >= 50, 30, "alerts after the breaker opened")
        await wait_for(lambda: committed_everywhere(s), 10, "offsets committed")
    finally:
        w.request_stop()
        await runner

    decisions = {r["signal_id"]: r["destinations"] for r in await fetch(
        s, "SELECT signal_id, destinations FROM routing_decisions")}
    dead = {r["signal_id"]: (r["reason"], r["error"]) for r in await fetch(
        s, "SELECT signal_id, reason, error FROM dlq_entries")}
    ids = {f"s-{i}" for i in (*range(40), *range(100, 110))}
    assert decisions.keys() | dead.keys() == ids and not decisions.keys() & dead.keys()
    notes = {f"s-{i}": decisions.get(f"s-{i}", dead.get(f"s-{i}")) for i in range(100, 110)}
    assert all(d == ["email", "webhook"] for d in notes.values()), notes
    assert {reason for reason, _ in dead.values()} == {"processing_error"}
    assert all(decisions[f"s-{i}"] == ["slack"] for i in range(30, 40))
    assert all(f"s-{i}" in dead for i in range(10, 30))
    assert 'routing_errors_total{destination="pager"} 20.0' in w.metrics.exposition().decode()


class Fatal(BaseException):
    """Stands for a fault no ``except Exception`` catches: the process dies on it."""


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_record_that_kills_the_worker_is_dead_lettered_after_n_restarts(
        settings, tmp_path, guarantee):
    # exactly_once: the guard's marks ride on the transactions' offsets
    s = (await prepare(settings, tmp_path)).model_copy(update={
        "poison_restarts": 3, "processing_guarantee": guarantee})
    values = [alert(i) for i in range(30)]
    values[10] = signal(10, payload={"severity": "critical", "kill": True})
    coords = await produce(s, SIGNALS, [(b"same-key", v) for v in values])
    poison_at = coords[10]

    async def die_on_kill(step: str, result) -> None:
        if step == "decided" and any(d.signal_id == "s-10" for d in result.decisions):
            raise Fatal("killed by s-10")

    crashes = 0
    for _ in range(10):
        w = worker(s, http=False, on_step=die_on_kill)
        try:
            await asyncio.wait_for(w.run_until_idle(0.5), 60)
            break
        except Fatal:
            crashes += 1
    else:
        pytest.fail("the worker never got past the record")
    # one crash in a whole batch, then one record at a time: three more on the record itself
    assert crashes == 4, crashes
    rows = await fetch(s, "SELECT reason, original_partition, original_offset, original_value,"
                          " error FROM dlq_entries")
    assert [(r["reason"], r["original_partition"], r["original_offset"],
             bytes(r["original_value"])) for r in rows] == [
        ("processing_error", *poison_at, values[10])]
    assert "stopped 3 times" in rows[0]["error"]
    decided = await fetch(s, "SELECT signal_id FROM routing_decisions")
    assert sorted(r["signal_id"] for r in decided) == sorted(
        f"s-{i}" for i in range(30) if i != 10)
    assert await committed_everywhere(s)
    assert 'router_poison_skips_total{topic="' + s.topic(SIGNALS) + '"} 1.0' in (
        w.metrics.exposition().decode())


def lag_total(w) -> float:
    total = 0.0
    for line in w.metrics.exposition().decode().splitlines():
        if line.startswith("router_consumer_lag{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_a_stall_shows_in_readiness_and_lag_and_clears_when_healed(settings, tmp_path):
    s = (await prepare(settings, tmp_path)).model_copy(update={"stall_threshold_s": 1.0})
    # nothing fits on router.dlq, not even a reference: an environment fault, retried
    await limit_record_size(s, DLQ, 100)
    w = worker(s, http=False)
    await w.start()
    runner = asyncio.create_task(w.run())
    try:
        await produce(s, SIGNALS, [(b"k", b"{not json")] + [(b"k", alert(i)) for i in range(20)])
        await wait_for(lambda: not w.readiness()["making_progress"], 60, "the stall to show")
        await w.signals.refresh_lag()
        assert lag_total(w) == 21  # nothing committed: the whole input is lag
        await wait_for(lambda: w.metrics.ready._value.get() == 0.0, 5, "router_ready 0")

        await limit_record_size(s, DLQ, 1_048_588)
        await wait_for(lambda: w.readiness()["making_progress"], 60, "progress again")
        await wait_for(lambda: committed_everywhere(s), 30, "offsets committed")
        await w.signals.refresh_lag()
        assert lag_total(w) == 0
    finally:
        w.request_stop()
        await runner
    rows = await fetch(s, "SELECT reason FROM dlq_entries")
    assert [r["reason"] for r in rows] == ["invalid_json"]


def _produce_gzipped(bootstrap: str, topic: str, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": "gzip",
                         "message.max.bytes": 4 * 1024 * 1024})
    errors: list[object] = []
    producer.produce(topic, value, b"k", on_delivery=lambda err, _m: errors.append(err))
    assert producer.flush(30.0) == 0 and errors == [None], errors


async def test_a_signal_accepted_compressed_is_routed_compressed(settings, tmp_path):
    """Issue 21: a 1M-element array (2 MB of JSON) fits `signals` gzip-compressed; the worker
    compresses its outputs (ROUTER_COMPRESSION_TYPE, default lz4), so it fits `routed.pager`
    (1 MB limit, the broker's default) too."""
    s = await prepare(settings, tmp_path)
    assert s.compression_type == "lz4"
    big = orjson.dumps({"signal_id": "s-big", "sender_id": "svc",
                        "payload": {"severity": "critical", "values": [0] * 1_000_000}})
    assert len(big) > 2_000_000
    await asyncio.to_thread(_produce_gzipped, s.kafka_bootstrap, s.topic(SIGNALS), big)
    await produce(s, SIGNALS, [(b"k", alert(i)) for i in range(5)])
    await asyncio.wait_for(worker(s, http=False).run_until_idle(1.0), 120)
    routed = await read_all(s, s.routed_topic("pager"))
    assert len(routed) == 6 and any(r.value.startswith(big[:-1]) for r in routed)
    assert await read_all(s, s.topic(DLQ)) == []
    assert await committed_everywhere(s)


_RAW_HEADER_NAME_PRODUCER = """
import asyncio, os, sys
from aiokafka import AIOKafkaProducer

class RawName(str):  # the pure-Python record builder writes a header name as name.encode()
    def encode(self, *args, **kwargs):
        return bytes.fromhex(sys.argv[3])

async def main():
    producer = AIOKafkaProducer(bootstrap_servers=sys.argv[1], acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(sys.argv[2], sys.stdin.buffer.read(), key=b"k",
                                     headers=[("x-ok", b"1"), (RawName("x"), b"v")])
    finally:
        await producer.stop()

asyncio.run(main())
"""


async def produce_with_raw_header_name(s: Settings, logical: str, value: bytes,
                                       name: bytes) -> None:
    """One record whose second header's name is ``name`` as raw bytes: Java, Go and kcat
    producers can write a name that is not UTF-8, the Python clients cannot (aiokafka's
    pure-Python record builder, in a process of its own, is made to)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _RAW_HEADER_NAME_PRODUCER, s.kafka_bootstrap, s.topic(logical),
        name.hex(), stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"})
    _, err = await proc.communicate(value)
    assert proc.returncode == 0, err.decode()


async def test_a_header_name_that_is_not_utf8_is_dead_lettered_and_nothing_stops(
        settings, tmp_path):
    """confluent-kafka cannot read such a record's headers at all: the signal goes to the DLQ
    as invalid_signal (key and value byte-exact, without its headers), the records around it
    are routed, and the same on a state topic does not stop the worker."""
    s = (await prepare(settings, tmp_path)).model_copy(update={"persist": False})
    # dozens of records first: Python specialises the call that reads headers once it has run
    # a few times, and the specialised call lets the decode error through unseen
    await produce(s, SIGNALS, [(b"k", alert(i)) for i in range(50)])
    await produce_with_raw_header_name(s, SIGNALS, alert(99), b"\xff\xfe-name")
    await produce(s, SIGNALS, [(b"k", alert(i)) for i in range(50, 55)])
    health = b'{"source_id": "pagerduty", "ts": 1800000000000, "ok": true}'
    await produce(s, SOURCE_HEALTH, [(b"pagerduty", health)] * 50)
    await produce_with_raw_header_name(s, SOURCE_HEALTH, health, b"\xc3\x28")
    await worker(s, http=False).run_until_idle(1.0)

    dlq = await read_all(s, s.topic(DLQ))
    assert len(dlq) == 1
    headers = dict(dlq[0].headers)
    assert (dlq[0].key, dlq[0].value) == (b"k", alert(99))
    assert headers["x-dlq-reason"] == b"invalid_signal"
    assert b"header name is not UTF-8" in headers["x-dlq-error"]
    assert "x-ok" not in headers  # unreadable: none of the record's own headers travel
    assert len(await read_all(s, s.routed_topic("pager"))) == 55
    assert await committed_everywhere(s)
