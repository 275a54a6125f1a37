"""Inputs that could pin the router's state or break its contracts: a retry backoff doubled past
any sensible wait, health events and outcomes dated far in the future, and DLQ context headers
that the dlq-headers schema does not allow."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
import pytest

from router_stream.adapters.postgres.rows import dlq_row_from_record
from router_stream.config import OUTCOMES, SOURCE_HEALTH, Settings
from router_stream.core.breaker import BreakerTransition
from router_stream.core.compiled import load_compiled
from router_stream.core.engine import RouterEngine
from router_stream.core.models import BreakerForce
from router_stream.core.parsing import Rejection, parse_health, parse_outcome
from router_stream.core.policy.fields import MAX_RETRY_DELAY_S
from router_stream.core.state import MAX_EVENT_LEAD_S
from router_stream.core.wire import (
    H_ATTEMPTS,
    H_FIRST_FAILED,
    H_OFFSET,
    H_ORIGINAL_TS,
    H_ORIGINAL_TS_TYPE,
    H_PARTITION,
    H_RETRY_NOT_BEFORE,
    H_TOPIC,
)
from router_stream.errors import PolicyError
from router_stream.worker.state import StateFollower
from tests.support.schemas import schema_errors

NOW = 1_800_000_000.0
NOW_MS = int(NOW * 1000)
YEAR_9999 = "9999-12-31T00:00:00Z"
POLICY = """
destinations: {slack: {}}
routes:
  alert:
    strategy: first_healthy
    tiers: [[slack]]
    retry: {max_attempts: 100, delay_ms: %d}
"""


@dataclass
class Rec:
    """A consumed record as the engine and the state follower read it."""

    value: bytes | None = b"not json"
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    topic: str = "signals"
    partition: int = 0
    offset: int = 5
    key: bytes | None = b"k"
    timestamp: int = NOW_MS


def engine(delay_ms: int = 1000) -> RouterEngine:
    return RouterEngine(load_compiled(POLICY % delay_ms), consumer_group="g")


def retried(attempts: int, signal_id: str = "s1") -> Rec:
    """An alert back from ``router.retry`` after ``attempts`` retries."""
    headers: list[tuple[str, bytes | None]] = [
        (H_TOPIC, b"signals"), (H_PARTITION, b"0"), (H_OFFSET, b"7"),
        (H_ATTEMPTS, str(attempts).encode()), (H_FIRST_FAILED, repr(NOW).encode())]
    value = orjson.dumps({"sender_id": "s", "kind": "alert", "signal_id": signal_id})
    return Rec(value, headers if attempts else [], topic="router.retry" if attempts else "signals")


def wait_of_retry(e: RouterEngine, attempts: int) -> float:
    """How long the next retry of a signal already retried ``attempts`` times waits."""
    [parked] = e.decide_batch([retried(attempts)], NOW).retries
    assert float(dict(parked.headers)[H_RETRY_NOT_BEFORE]) == parked.not_before
    return parked.not_before - NOW


# --- retry backoff ------------------------------------------------------------------------------


def test_the_retry_delay_doubles_up_to_its_cap_and_no_further() -> None:
    e = engine(delay_ms=1000)
    e.apply_control(BreakerForce(target="slack", state="open"), NOW)
    waits = [wait_of_retry(e, n) for n in (0, 16, 17, 20, 33, 99)]
    assert waits == [1.0, 65_536.0, *[MAX_RETRY_DELAY_S] * 4]


def test_the_largest_delay_a_policy_may_give_is_the_wait_of_every_retry() -> None:
    """Validation and the backoff agree: ``delay_ms`` may be the cap, not one ms more, and a
    retry of that route never waits longer than its first one."""
    largest = int(MAX_RETRY_DELAY_S * 1000)
    with pytest.raises(PolicyError, match="retry.delay_ms"):
        load_compiled(POLICY % (largest + 1))
    e = engine(delay_ms=largest)
    e.apply_control(BreakerForce(target="slack", state="open"), NOW)
    assert [wait_of_retry(e, n) for n in (0, 1, 2)] == [MAX_RETRY_DELAY_S] * 3


# --- health events and outcomes dated in the future --------------------------------------------


def health(ts: str | int, ok: bool) -> bytes:
    return orjson.dumps({"source_id": "slack", "ts": ts, "ok": ok})


def outcome(ts: str | int, ok: bool, i: int = 0) -> bytes:
    return orjson.dumps({"signal_id": f"x{i}", "destination": "slack", "ok": ok, "ts": ts})


def fold_health(e: RouterEngine, value: bytes, now: float) -> list[BreakerTransition]:
    event = parse_health(value, record_ts_ms=int(now * 1000))
    assert not isinstance(event, Rejection)
    return e.apply_health(event, now)


def fold_outcome(e: RouterEngine, value: bytes, now: float) -> None:
    event = parse_outcome(value, record_ts_ms=int(now * 1000))
    assert not isinstance(event, Rejection)
    e.apply_outcome(event, now)


def test_failures_dated_in_9999_open_the_breaker_now_and_it_recovers() -> None:
    e = engine()
    for _ in range(5):
        fold_health(e, health(YEAR_9999, ok=False), NOW)
    assert e.state.breakers["slack"].opened_at == NOW
    cooldown = e.policy.breaker_for("slack").cooldown_s
    assert [t.to_state.value for t in e.tick(NOW + cooldown)] == ["half_open"]
    for i in range(5):
        fold_outcome(e, outcome(int(NOW_MS + 1000 * cooldown), ok=True, i=i), NOW + cooldown)
    assert e.snapshot(NOW + cooldown).breakers == {"slack": "closed"}


def test_outcomes_dated_in_9999_are_placed_at_now() -> None:
    e = engine()
    for i in range(5):
        fold_outcome(e, outcome(YEAR_9999, ok=False, i=i), NOW)
    breaker = e.state.breakers["slack"]
    assert breaker.state.value == "open" and breaker.opened_at == NOW
    assert e.state.trust["slack"].last_ts == NOW


def test_a_source_dated_in_9999_loses_its_trust_when_it_goes_quiet() -> None:
    e = engine()
    for _ in range(20):
        fold_health(e, health(YEAR_9999, ok=True), NOW)
    params = e.policy.trust_params
    trusted = e.snapshot(NOW).trust["slack"]
    later = NOW + params.stale_after_s + 20 * params.decay_half_life_s
    assert e.state.trust["slack"].last_ts == NOW
    assert params.floor < trusted
    assert e.snapshot(later).trust["slack"] == pytest.approx(params.floor, abs=1e-3)


def test_an_event_a_little_ahead_keeps_its_time_and_one_further_ahead_does_not() -> None:
    near = NOW + MAX_EVENT_LEAD_S
    far = NOW + MAX_EVENT_LEAD_S + 1.0
    times = []
    for ts in (near, far):
        e = engine()
        moves = [m for _ in range(5) for m in fold_health(e, health(int(ts * 1000), False), NOW)]
        times.append([m.at for m in moves])
    assert times == [[near], [NOW]]


def follower(policy: str) -> tuple[StateFollower, RouterEngine]:
    e = RouterEngine(load_compiled(policy))
    return StateFollower(Settings(topic_prefix="t."), e, on_transitions=lambda t: None,
                         on_policy=lambda p: None, reload_policy=lambda: ("", e.policy),
                         on_skip=lambda topic, reason: None), e


def test_replaying_future_dated_records_folds_them_at_their_record_time_every_time() -> None:
    """The state follower's ``now`` is the newest record timestamp, so a replay of the same
    records puts a future-dated event at the same time on every worker."""
    records = [Rec(health(YEAR_9999, ok=False), topic=f"t.{SOURCE_HEALTH}", offset=i,
                   timestamp=NOW_MS + i) for i in range(5)]
    records += [Rec(outcome(YEAR_9999, ok=False), topic=f"t.{OUTCOMES}", offset=0,
                    timestamp=NOW_MS + 10_000)]
    states = []
    for _ in range(2):
        f, e = follower(POLICY % 1000)
        for record in records:
            f._fold(record)
        states.append((e.state.breakers["slack"].to_dict(), e.state.trust["slack"].to_dict()))
    assert states[0] == states[1]
    breaker, trust = states[0]
    assert breaker["opened_at"] == (NOW_MS + 4) / 1000 and trust["last_ts"] == NOW + 10.0


# --- DLQ context headers -------------------------------------------------------------------------


def dead_letter_headers(record: Rec) -> dict[str, str]:
    """The DLQ headers the engine writes for ``record`` (not a signal: invalid_json)."""
    [dead] = engine().decide_batch([record], NOW).dlq
    headers = {k: v.decode() for k, v in dead.headers if v is not None}
    assert schema_errors("dlq-headers.schema.json", headers) == []
    return headers


@dataclass
class TypedRec(Rec):
    timestamp_type: int = 0  # as a Kafka client's record has it: 0 CreateTime


def test_a_record_without_a_timestamp_has_no_original_timestamp_headers() -> None:
    headers = dead_letter_headers(TypedRec(timestamp=-1))
    assert H_ORIGINAL_TS not in headers and H_ORIGINAL_TS_TYPE not in headers
    headers = dead_letter_headers(TypedRec())
    assert (headers[H_ORIGINAL_TS], headers[H_ORIGINAL_TS_TYPE]) == (str(NOW_MS), "CreateTime")


def origin(first: bytes) -> list[tuple[str, bytes | None]]:
    return [(H_TOPIC, b"orders"), (H_PARTITION, b"2"), (H_OFFSET, b"9"), (H_ATTEMPTS, b"1"),
            (H_FIRST_FAILED, first)]


@pytest.mark.parametrize("first", [b"-5", b"-1e-300", b"1e300", b"253402300800"])
def test_a_first_failed_at_out_of_range_makes_the_record_its_own_origin(first: bytes) -> None:
    headers = dead_letter_headers(Rec(headers=origin(first)))
    assert (headers[H_TOPIC], headers[H_OFFSET]) == ("signals", "5")
    assert headers[H_FIRST_FAILED] == repr(NOW)


def test_a_first_failed_at_of_minus_zero_is_kept_unsigned() -> None:
    kept = {first: dead_letter_headers(Rec(headers=origin(first)))[H_FIRST_FAILED]
            for first in (b"-0", b"0", b"253402300799")}
    assert kept == {b"-0": "0.0", b"0": "0.0", b"253402300799": "253402300799.0"}


def test_a_dead_letter_with_a_first_failed_at_past_9999_still_projects_to_a_row() -> None:
    [dead] = engine().decide_batch([Rec(headers=origin(b"1e300"))], NOW).dlq
    row = dlq_row_from_record(Rec(headers=dead.headers, topic="router.dlq", value=None))
    assert row is not None and row["first_failed_at"].timestamp() == NOW


@pytest.mark.parametrize("kind", [b"Bogus\nType", b"createtime", b"", b"\xff"])
def test_an_original_timestamp_type_kafka_does_not_have_is_dropped(kind: bytes) -> None:
    earlier = [(H_ORIGINAL_TS, b"1"), (H_ORIGINAL_TS_TYPE, kind)]
    headers = dead_letter_headers(Rec(headers=earlier))
    assert headers[H_ORIGINAL_TS] == "1" and H_ORIGINAL_TS_TYPE not in headers
    earlier[1] = (H_ORIGINAL_TS_TYPE, b"LogAppendTime")
    assert dead_letter_headers(Rec(headers=earlier))[H_ORIGINAL_TS_TYPE] == "LogAppendTime"


def test_an_observation_dated_in_9999_goes_stale_like_one_made_now() -> None:
    """A consensus observation is kept at its event time; one far ahead is kept at now, so it
    ages out after max_staleness_s instead of weighing on every later consensus."""
    policy = """
destinations: {tsdb: {}}
classify: [{name: m, when: {field: metric, exists: true}, kind: obs}]
routes: {obs: {strategy: consensus, tiers: [[tsdb]], consensus: {max_staleness_s: 30}}}
"""

    def obs(i: int, source: str, value: float, ts: object) -> Rec:
        return Rec(orjson.dumps({"signal_id": f"o{i}", "sender_id": source, "metric": "m",
                                 "source_id": source, "value": value, "ts": ts}), offset=i)

    later = NOW + 86_400
    honest = obs(1, "honest", 10.0, int(later * 1000))
    lied_to = RouterEngine(load_compiled(policy))
    lied_to.decide_batch([obs(0, "liar", 999.0, "9999-12-31T00:00:00Z")], NOW)
    alone = RouterEngine(load_compiled(policy))
    [got] = lied_to.decide_batch([honest], later).decisions
    [expected] = alone.decide_batch([honest], later).decisions
    assert got.confidence == expected.confidence
