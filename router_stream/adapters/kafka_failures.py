"""Why a Kafka client failed, in the project's terms: for aiokafka, why it could not connect (one
line that names the setting to fix); for librdkafka (confluent-kafka), which error codes are a
record's fault, which mean "rebalanced away", and the connection error in one line.

aiokafka does not raise the reason a bootstrap failed: it logs it per host (``Unable connect to
"h:p": <reason>``, on the ``aiokafka`` logger) and raises a bare ``Unable to bootstrap from
[...]``. A wrong password, an untrusted certificate and a listener that expects TLS all look the
same from the exception. :class:`ConnectFailures` keeps those reasons while a client starts, and
:meth:`ConnectFailures.describe` turns the last one into a sentence.

The sentence never holds a credential: aiokafka's reasons carry none (the broker answers "invalid
credentials"), and we add only the user name and the mechanism.
"""

from __future__ import annotations

import logging
from types import TracebackType

from aiokafka.errors import IllegalSaslStateError, UnsupportedSaslMechanismError
from confluent_kafka import KafkaError as RdError

from router_stream.config import Settings

__all__ = ["ConnectFailures", "describe_rd_error", "is_rd_refusal", "is_rd_rebalanced_away"]

# Produce errors retrying cannot fix (the broker refuses the same record the same way until an
# operator changes the topic or the ACLs): the record is dead-lettered, the batch goes on.
_RD_REFUSALS = frozenset({
    RdError.MSG_SIZE_TOO_LARGE,  # also raised by produce() above message.max.bytes
    RdError.RECORD_LIST_TOO_LARGE,
    RdError.INVALID_MSG,
    RdError.INVALID_RECORD,
    RdError.TOPIC_EXCEPTION,  # invalid topic name
    RdError.TOPIC_AUTHORIZATION_FAILED,
})

# Commit errors that mean the partitions are no longer ours: the next owner re-processes from
# the last commit (at-least-once), nothing to retry.
_RD_REBALANCED = frozenset({
    RdError.REBALANCE_IN_PROGRESS, RdError.ILLEGAL_GENERATION, RdError.UNKNOWN_MEMBER_ID,
    RdError._STATE, RdError.FENCED_INSTANCE_ID, RdError.STALE_MEMBER_EPOCH,
    RdError.FENCED_MEMBER_EPOCH, RdError._ASSIGNMENT_LOST,
})


def is_rd_refusal(error: RdError) -> bool:
    """True for a librdkafka produce error that will recur however often the record is sent."""
    return error.code() in _RD_REFUSALS


def is_rd_rebalanced_away(error: RdError) -> bool:
    """True for a librdkafka commit error that says the group moved the partitions away."""
    return error.code() in _RD_REBALANCED


def describe_rd_error(settings: Settings, error: RdError) -> str:
    """One line for a librdkafka connection error (from ``error_cb``), naming the setting."""
    where = f"Kafka at {settings.kafka_bootstrap}"
    code, text = error.code(), " ".join(str(error.str()).split())
    protocol = settings.kafka_security_protocol
    if code == RdError._AUTHENTICATION or code == RdError.SASL_AUTHENTICATION_FAILED:
        mechanism = settings.kafka_sasl_mechanism or "PLAIN"
        return (f"{where} rejected the credentials of user {settings.kafka_sasl_username!r} "
                f"({mechanism}): check ROUTER_KAFKA_SASL_USERNAME and ROUTER_KAFKA_SASL_PASSWORD"
                f" ({text})")
    if code == RdError._SSL:
        return (f"{where}: TLS handshake failed ({text}); check ROUTER_KAFKA_SSL_CAFILE and "
                f"ROUTER_KAFKA_SECURITY_PROTOCOL (now {protocol})")
    return f"cannot reach {where}: {text}"

_LOGGER = "aiokafka"  # aiokafka/client.py logs bootstrap failures here, not on aiokafka.client
_UNABLE = "Unable connect to"


class ConnectFailures(logging.Filter):
    """``with ConnectFailures() as failures: await client.start()``; then ``describe``.

    A logging filter on aiokafka's logger that records each connection failure's reason and
    lets the record through (the worker's logs keep it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.reasons: list[BaseException] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_UNABLE) and record.args:
            reason = record.args[-1] if isinstance(record.args, tuple) else None
            if isinstance(reason, BaseException):
                self.reasons.append(reason)
        return True

    def __enter__(self) -> ConnectFailures:
        logging.getLogger(_LOGGER).addFilter(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        logging.getLogger(_LOGGER).removeFilter(self)

    def describe(self, settings: Settings, exc: BaseException) -> str:
        """One line: the most likely cause and what to set; else the old generic message."""
        if self.reasons:
            explained = _explain(settings, self.reasons[-1])
            if explained:
                return explained
        reason = self.reasons[-1] if self.reasons else exc
        return f"cannot reach Kafka at {settings.kafka_bootstrap}: {_text(reason)}"


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _explain(settings: Settings, reason: BaseException) -> str | None:
    where = f"Kafka at {settings.kafka_bootstrap}"
    protocol = settings.kafka_security_protocol
    mechanism = settings.kafka_sasl_mechanism or "PLAIN"
    text = _text(reason)
    if "SaslAuthenticationFailed" in text or "Authentication failed" in text:
        return (
            f"{where} rejected the credentials of user {settings.kafka_sasl_username!r} "
            f"({mechanism}): check ROUTER_KAFKA_SASL_USERNAME and ROUTER_KAFKA_SASL_PASSWORD"
        )
    if isinstance(reason, UnsupportedSaslMechanismError):
        return (
            f"{where} does not enable SASL mechanism {mechanism}: "
            f"set ROUTER_KAFKA_SASL_MECHANISM to one it does ({text})"
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"{where}: its TLS certificate is not trusted ({text}); set "
            "ROUTER_KAFKA_SSL_CAFILE to the CA that signed it"
        )
    if isinstance(reason, IllegalSaslStateError):
        return (
            f"{where} does not expect SASL on this listener: check "
            f"ROUTER_KAFKA_SECURITY_PROTOCOL (now {protocol})"
        )
    if "WRONG_VERSION_NUMBER" in text or (
        protocol in ("SSL", "SASL_SSL") and isinstance(reason, ConnectionResetError)
    ):
        return (
            f"{where} does not speak TLS on this listener: check "
            f"ROUTER_KAFKA_SECURITY_PROTOCOL (now {protocol})"
        )
    if protocol in ("PLAINTEXT", "SASL_PLAINTEXT") and "closed" in text:
        return (
            f"{where} closed the connection during the handshake; its listener probably "
            f"expects TLS: check ROUTER_KAFKA_SECURITY_PROTOCOL (now {protocol}) and "
            "ROUTER_KAFKA_SSL_CAFILE"
        )
    return None
