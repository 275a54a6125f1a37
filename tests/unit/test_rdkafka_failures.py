"""librdkafka's errors and logs as the project's errors and one line per reason."""

from __future__ import annotations

import asyncio
import logging
import socket
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from router_stream.adapters.kafka_failures import (
    RDKAFKA_LOGGER,
    RdkafkaLog,
    commit_failures,
    describe_rdkafka,
    rdkafka_error,
    rdkafka_reason,
)
from router_stream.adapters.rdkafka import ClientThread, client_config, connect
from router_stream.config import Settings
from router_stream.errors import BrokerUnavailable, OperationTimeout, RouterError

PASSWORD = "kafka-Pw-0c1d2e-secret"
REFUSED = ("[thrd:127.0.0.1:9/bootstrap]: 127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9"
           " failed: Connection refused (after 0ms in state CONNECT)")


@pytest.fixture
def sasl_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("ROUTER_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("ROUTER_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("ROUTER_KAFKA_SASL_USERNAME", "router")
    monkeypatch.setenv("ROUTER_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("ROUTER_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    return Settings()


def test_a_reason_loses_its_thread_prefix_and_attempt_suffix():
    assert rdkafka_reason(REFUSED) == "Connect to ipv4#127.0.0.1:9 failed: Connection refused"
    assert rdkafka_reason("127.0.0.1:9/1: SSL handshake failed (after 3ms in state "
                          "SSL_HANDSHAKE, 4 identical error(s) suppressed)"
                          ) == "SSL handshake failed"


def test_each_distinct_line_reaches_the_logger_once(caplog: pytest.LogCaptureFixture):
    log = RdkafkaLog()
    with caplog.at_level(logging.DEBUG, logger=RDKAFKA_LOGGER):
        for _ in range(5):
            log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", REFUSED)
        log.log(logging.INFO, "%s [%s] %s", "CONF", "rdkafka#producer-1", "something else")
    assert [r.getMessage() for r in caplog.records] == [
        "Connect to ipv4#127.0.0.1:9 failed: Connection refused", "something else"]
    assert caplog.records[0].levelno == logging.ERROR


def test_errors_keep_their_reason_and_all_brokers_down_means_gave_up():
    log = RdkafkaLog()
    log.error(KafkaError(KafkaError._TRANSPORT, REFUSED))
    assert not log.gave_up
    log.error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert log.gave_up
    assert [rdkafka_reason(r) for r in log.reasons] == [
        "Connect to ipv4#127.0.0.1:9 failed: Connection refused"]


def test_a_client_failing_for_hours_keeps_only_its_newest_reasons():
    log = RdkafkaLog()
    for attempt in range(10_000):
        log.error(KafkaError(KafkaError._TRANSPORT, f"{REFUSED} #{attempt}"))
    assert len(log.reasons) == 64
    assert log.reasons[-1].endswith("#9999")


def test_a_failure_logged_only_as_a_line_is_a_reason_too(monkeypatch: pytest.MonkeyPatch):
    # a plaintext client at a TLS listener: librdkafka says so only in a FAIL log line
    monkeypatch.setenv("ROUTER_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    log = RdkafkaLog()
    log.log(logging.INFO, "%s [%s] %s", "FAIL", "rdkafka#producer-1",
            "[thrd:h:9/bootstrap]: h:9/bootstrap: Disconnected: connection reset by peer"
            " (after 0ms in state APIVERSION_QUERY)")
    log.log(logging.DEBUG, "%s [%s] %s", "BROKER", "rdkafka#producer-1", "h:9: Added")
    assert len(log.reasons) == 1
    message = describe_rdkafka(Settings(), log, "")
    assert "expects TLS" in message and "ROUTER_KAFKA_SECURITY_PROTOCOL" in message


def test_rejected_credentials_name_the_settings_not_the_password(sasl_settings: Settings):
    log = RdkafkaLog()
    log.error(KafkaError(KafkaError._AUTHENTICATION, (
        "SASL authentication error: Authentication failed during authentication due to invalid"
        " credentials with SASL mechanism SCRAM-SHA-256 (after 5ms in state AUTH_REQ)")))
    message = describe_rdkafka(sasl_settings, log, "Local: Broker transport failure")
    assert "rejected the credentials of user 'router' (SCRAM-SHA-256)" in message
    assert "ROUTER_KAFKA_SASL_PASSWORD" in message and PASSWORD not in message
    assert "\n" not in message


@pytest.mark.parametrize(("protocol", "reason", "says"), [
    ("SSL", "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed",
     "TLS certificate is not trusted"),
    ("SSL", "SSL handshake failed: error:0A00010B:SSL routines::wrong version number",
     "does not speak TLS"),
    ("PLAINTEXT", "Disconnected while requesting ApiVersion: might be caused by incorrect "
     "security.protocol configuration (connecting to a SSL listener?)", "expects TLS"),
])
def test_tls_mismatches_name_the_setting(monkeypatch: pytest.MonkeyPatch, protocol: str,
                                         reason: str, says: str):
    monkeypatch.setenv("ROUTER_KAFKA_SECURITY_PROTOCOL", protocol)
    log = RdkafkaLog()
    log.error(KafkaError(KafkaError._SSL, reason))
    assert says in describe_rdkafka(Settings(), log, "")


def test_without_a_reason_the_line_is_the_generic_one(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ROUTER_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    assert describe_rdkafka(Settings(), RdkafkaLog(), "Local: Broker transport failure") == (
        "cannot reach Kafka at 127.0.0.1:9: Local: Broker transport failure")


@pytest.mark.parametrize(("code", "kind", "retriable"), [
    (KafkaError._MSG_TIMED_OUT, OperationTimeout, True),
    (KafkaError._TRANSPORT, BrokerUnavailable, True),
    (KafkaError.NOT_LEADER_FOR_PARTITION, BrokerUnavailable, True),
    # a restarted broker's group coordinator answers commits with this while it loads
    (KafkaError.COORDINATOR_LOAD_IN_PROGRESS, BrokerUnavailable, True),
    (KafkaError.MSG_SIZE_TOO_LARGE, RouterError, False),
])
def test_request_errors_map_onto_the_error_tree(code: int, kind: type[RouterError],
                                                retriable: bool):
    error = rdkafka_error(Settings(), "producing to t failed", KafkaException(KafkaError(code)))
    assert type(error) is kind and error.retriable is retriable


def test_a_refused_connection_is_one_line_soon_and_logged_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    with socket.socket() as closed:  # bound, not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("ROUTER_KAFKA_BOOTSTRAP", f"127.0.0.1:{closed.getsockname()[1]}")
        settings = Settings()
        log = RdkafkaLog()
        producer = Producer(client_config(settings, log))
        thread = ClientThread("test")
        with caplog.at_level(logging.DEBUG, logger=RDKAFKA_LOGGER), \
                pytest.raises(BrokerUnavailable) as info:
            asyncio.run(connect(thread, producer, log, settings, timeout_s=30.0))
        thread.close()
    assert str(info.value) == (f"cannot reach Kafka at {settings.kafka_bootstrap}: Connect to"
                               f" ipv4#{settings.kafka_bootstrap} failed: Connection refused")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(set(lines))


class _Leaderless:
    """A consumer whose partition has no leader for its first ``misses`` watermark reads (a
    topic created a moment ago), then answers; or that fails with ``error`` every time."""

    def __init__(self, misses: int = 0, error: int = KafkaError.NOT_LEADER_FOR_PARTITION
                 ) -> None:
        self.misses = misses
        self.error = error
        self.calls = 0

    def get_watermark_offsets(self, tp: object, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.calls <= self.misses:
            raise KafkaException(KafkaError(self.error, "Broker: Not leader for partition"))
        return 0, 42


async def test_watermarks_wait_for_a_new_partitions_leader():
    from confluent_kafka import TopicPartition

    from router_stream.adapters.rdkafka import watermarks

    thread = ClientThread("test-watermarks")
    try:
        consumer = _Leaderless(misses=3)
        assert await watermarks(thread, consumer, TopicPartition("t", 0)) == (0, 42)  # type: ignore[arg-type]
        assert consumer.calls == 4

        forever = _Leaderless(misses=10**9)
        with pytest.raises(KafkaException):  # retriable, but only for timeout_s
            await watermarks(thread, forever, TopicPartition("t", 0), timeout_s=0.5)  # type: ignore[arg-type]
        assert 2 <= forever.calls <= 5

        refused = _Leaderless(misses=10**9, error=KafkaError.TOPIC_AUTHORIZATION_FAILED)
        with pytest.raises(KafkaException):  # not retriable: raised at once
            await watermarks(thread, refused, TopicPartition("t", 0))  # type: ignore[arg-type]
        assert refused.calls == 1
    finally:
        thread.close()


def test_a_commit_answer_fails_by_its_own_error_or_its_partitions_but_not_for_no_offset() -> None:
    no_offset, refused = KafkaError(KafkaError._NO_OFFSET), KafkaError(KafkaError.REQUEST_TIMED_OUT)
    ok = TopicPartition("t", 0, 5)
    bad = SimpleNamespace(error=refused)  # a TopicPartition's error is read-only
    assert commit_failures(None, [ok]) == []
    assert commit_failures(no_offset, [ok]) == []
    assert [e.code() for e in commit_failures(refused, [ok])] == [KafkaError.REQUEST_TIMED_OUT]
    assert [e.code() for e in commit_failures(None, [ok, bad])] == [KafkaError.REQUEST_TIMED_OUT]
