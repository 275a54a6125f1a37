"""Why a Kafka client could not connect, in one line that names the setting to fix; and a
librdkafka request's error as the project's error.

librdkafka (confluent-kafka) does not raise the reason a connection failed: it reports it to the
client's ``logger`` and ``error_cb`` and retries forever. :class:`RdkafkaLog` is both,
:func:`describe_rdkafka` makes the sentence, :func:`rdkafka_error` maps a request's error onto
the error tree.

The sentence never holds a credential: the client's reasons carry none (the broker answers
"invalid credentials"), and we add only the user name and the mechanism.
"""

from __future__ import annotations

import logging
import re
from collections import deque

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from router_stream.config import Settings
from router_stream.errors import BrokerUnavailable, OperationTimeout, RouterError

__all__ = ["RDKAFKA_LOGGER", "RdkafkaLog", "commit_rebalanced",
           "describe_rdkafka", "is_rd_rebalanced_away", "is_rd_refusal", "rdkafka_error",
           "rdkafka_reason"]

# Produce errors retrying cannot fix (the broker refuses the same record the same way until an
# operator changes the topic or the ACLs): the record is dead-lettered, the batch goes on.
_RD_REFUSALS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE,  # also raised by produce() above message.max.bytes
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_MSG,
    KafkaError.INVALID_RECORD,
    KafkaError.TOPIC_EXCEPTION,  # invalid topic name
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
})


def is_rd_refusal(error: KafkaError) -> bool:
    """True for a librdkafka produce error that will recur however often the record is sent."""
    return error.code() in _RD_REFUSALS

# --- librdkafka (confluent-kafka) ---------------------------------------------------------------
#
# librdkafka retries a failing connection forever in its own threads and reports each attempt to
# its ``logger`` and ``error_cb``. :class:`RdkafkaLog` is both for one client: it keeps the
# reasons (what :func:`describe_rdkafka` explains), says whether the client gave up on every
# broker, and passes each distinct line once to the ``router_stream.librdkafka`` logger, so a
# dead broker is one line in the worker's log, not one per reconnect.

RDKAFKA_LOGGER = "router_stream.librdkafka"
_THREAD_PREFIX = re.compile(r"^(?:\[thrd:[^\]]*\]: )?(?:\S+/(?:bootstrap|\d+): )?")
_ATTEMPT_SUFFIX = re.compile(r"\s*\(after \d+ms in state [A-Z_]+(?:, .*)?\)$")
_FAILURE_FACILITIES = ("FAIL", "ERROR")
_KEPT_REASONS = 64  # the newest; describe_rdkafka explains the last one it can
_GAVE_UP = {"_ALL_BROKERS_DOWN", "_AUTHENTICATION", "_SSL", "_RESOLVE"}
_TIMEOUTS = {"_TIMED_OUT", "_MSG_TIMED_OUT", "REQUEST_TIMED_OUT", "_TIMED_OUT_QUEUE"}
_UNREACHABLE = {"_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE", "_AUTHENTICATION", "_SSL",
                "_DESTROY", "NOT_COORDINATOR", "COORDINATOR_NOT_AVAILABLE",
                "COORDINATOR_LOAD_IN_PROGRESS", "_WAIT_COORD", "NETWORK_EXCEPTION",
                "LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION", "BROKER_NOT_AVAILABLE"}


def rdkafka_reason(text: str) -> str:
    """A librdkafka line without its thread prefix and its "(after 3ms in state X)" suffix."""
    return _ATTEMPT_SUFFIX.sub("", _THREAD_PREFIX.sub("", " ".join(text.split())))


class RdkafkaLog:
    """The ``logger`` and ``error_cb`` of one librdkafka client: ``{**conf, **log.config()}``.

    Both are called from the client's ``poll``/``consume``/``flush``, on whichever thread
    serves it.
    """

    def __init__(self) -> None:
        self.reasons: deque[str] = deque(maxlen=_KEPT_REASONS)  # a client may fail for hours
        self.gave_up = False
        self._seen: set[str] = set()
        self._logger = logging.getLogger(RDKAFKA_LOGGER)

    def config(self) -> dict[str, object]:
        return {"logger": self, "error_cb": self.error}

    def log(self, level: int, fmt: str, *args: object) -> None:
        """What confluent-kafka calls as ``logger.log(level, "%s [%s] %s", fac, name, text)``;
        a FAIL or ERROR line is a connection's failure and its reason."""
        text = str(args[-1]) if args else fmt
        if args and args[0] in _FAILURE_FACILITIES:
            self._keep(text)
        self._pass_on(level, text)

    def error(self, err: KafkaError) -> None:
        if err.name() != "_ALL_BROKERS_DOWN":  # "1/1 brokers are down" says no why
            self._keep(err.str())
        self.gave_up = self.gave_up or err.name() in _GAVE_UP or err.fatal()
        self._pass_on(logging.WARNING, err.str())

    def _keep(self, text: str) -> None:
        self.reasons.append(_THREAD_PREFIX.sub("", " ".join(text.split())))

    def _pass_on(self, level: int, text: str) -> None:
        line = rdkafka_reason(text)
        if line not in self._seen:
            self._seen.add(line)
            self._logger.log(level, "%s", line)


def describe_rdkafka(settings: Settings, log: RdkafkaLog, fallback: str) -> str:
    """One line for a librdkafka client that could not connect; ``fallback`` when no reason
    was reported."""
    for reason in reversed(log.reasons):
        explained = _explain_rdkafka(settings, reason)
        if explained:
            return explained
    reason = rdkafka_reason(log.reasons[-1]) if log.reasons else fallback
    return f"cannot reach Kafka at {settings.kafka_bootstrap}: {reason}"


def _explain_rdkafka(settings: Settings, raw: str) -> str | None:
    """``raw`` keeps its "(after 0ms in state X)": the state tells a TLS mismatch apart."""
    where = f"Kafka at {settings.kafka_bootstrap}"
    protocol = settings.kafka_security_protocol
    mechanism = settings.kafka_sasl_mechanism or "PLAIN"
    reason = rdkafka_reason(raw)
    lowered = raw.lower()
    if "invalid credentials" in lowered or "authentication failed" in lowered:
        return (
            f"{where} rejected the credentials of user {settings.kafka_sasl_username!r} "
            f"({mechanism}): check ROUTER_KAFKA_SASL_USERNAME and ROUTER_KAFKA_SASL_PASSWORD"
        )
    if "not supported by broker" in lowered or "unsupported sasl mechanism" in lowered:
        return (
            f"{where} does not enable SASL mechanism {mechanism}: "
            f"set ROUTER_KAFKA_SASL_MECHANISM to one it does ({reason})"
        )
    if "certificate verify failed" in lowered:
        return (
            f"{where}: its TLS certificate is not trusted ({reason}); set "
            "ROUTER_KAFKA_SSL_CAFILE to the CA that signed it"
        )
    if "sasl state" in lowered or "illegal_sasl_state" in lowered:
        return (
            f"{where} does not expect SASL on this listener: check "
            f"ROUTER_KAFKA_SECURITY_PROTOCOL (now {protocol})"
        )
    if protocol in ("SSL", "SASL_SSL") and ("ssl handshake failed" in lowered
                                            or "wrong version number" in lowered):
        return (
            f"{where} does not speak TLS on this listener: check "
            f"ROUTER_KAFKA_SECURITY_PROTOCOL (now {protocol})"
        )
    if protocol in ("PLAINTEXT", "SASL_PLAINTEXT") and "disconnected" in lowered and (
            "ssl listener" in lowered or "apiversion" in lowered):
        return (
            f"{where} closed the connection during the handshake; its listener probably "
            f"expects TLS: check ROUTER_KAFKA_SECURITY_PROTOCOL (now {protocol}) and "
            "ROUTER_KAFKA_SSL_CAFILE"
        )
    return None


# a commit refused with these was rebalanced away: the partitions' next owner reads again from
# the group's last commit
# Commit errors that mean the partitions are no longer ours: the next owner re-processes from
# the last commit (at-least-once), nothing to retry.
_REBALANCED = {"ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "REBALANCE_IN_PROGRESS",
               "FENCED_INSTANCE_ID", "_ASSIGNMENT_LOST", "_STATE", "STALE_MEMBER_EPOCH",
               "FENCED_MEMBER_EPOCH"}


def is_rd_rebalanced_away(error: KafkaError) -> bool:
    """True for a librdkafka commit error that says the group moved the partitions away."""
    return error.name() in _REBALANCED


def commit_rebalanced(exc: KafkaException) -> bool:
    """Whether a librdkafka commit failed because the consumer lost its partitions."""
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and is_rd_rebalanced_away(err)


def commit_failures(error: KafkaError | None, tps: list[TopicPartition]) -> list[KafkaError]:
    """What failed in librdkafka's answer to a commit (its ``on_commit`` arguments): the
    request's error or each partition's, leaving out "no offset to commit"."""
    errors = [error] if error is not None else [tp.error for tp in tps if tp.error]
    return [e for e in errors if e.code() != KafkaError._NO_OFFSET]


def rdkafka_error(settings: Settings, what: str, exc: KafkaException | KafkaError
                  ) -> RouterError:
    """A librdkafka error of a request as the project's error: a timeout, an unreachable
    broker (retriable), or a refusal (e.g. a record too large)."""
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    if not isinstance(err, KafkaError):
        return BrokerUnavailable(f"{what} at {settings.kafka_bootstrap}: {exc}")
    text = rdkafka_reason(err.str())
    if err.name() in _TIMEOUTS:
        return OperationTimeout(f"{what}: timed out talking to {settings.kafka_bootstrap}")
    if err.retriable() or err.name() in _UNREACHABLE:
        return BrokerUnavailable(f"{what} at {settings.kafka_bootstrap}: {text}")
    return RouterError(f"{what}: the broker refused it: {text}")
