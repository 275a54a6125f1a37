"""Which produce errors are a fault of one record, and which of the environment.

A *refusal* is an error retrying cannot fix: the broker will refuse the same record the same way
until an operator changes the topic or the ACLs. The hot path dead-letters a refused record and
goes on (:mod:`router_stream.core.refusals`); every other error — broker down, timeouts, not
enough replicas, leader elections, a producer fenced or out of sequence, a full queue — is
transient: the batch is retried, its partitions paused, nothing committed past it.

=======================================  ===================================================
refusal (librdkafka code)                why
=======================================  ===================================================
``MSG_SIZE_TOO_LARGE``                   larger than the topic's ``max.message.bytes`` (or
                                         the producer's ``message.max.bytes``)
``RECORD_LIST_TOO_LARGE``                the same, said of a batch
``INVALID_MSG``, ``INVALID_RECORD``,     the broker cannot store it as sent
``TOPIC_EXCEPTION``
``TOPIC_AUTHORIZATION_FAILED``           the worker may not write that topic
:class:`TopicMissing`                    the topic is not in fresh metadata from a reachable
                                         broker
=======================================  ===================================================

The codes live in :mod:`router_stream.adapters.kafka_failures` with the client's other errors.
"""

from __future__ import annotations

from confluent_kafka import KafkaException

from router_stream.adapters.kafka_failures import is_rd_refusal


class TopicMissing(Exception):
    """The topic is absent from metadata the broker just sent: deleted, or never created."""


def is_refusal(exc: BaseException) -> bool:
    """True for an error that will recur however often the same record is sent."""
    if isinstance(exc, TopicMissing):
        return True
    return isinstance(exc, KafkaException) and bool(exc.args) and is_rd_refusal(exc.args[0])
