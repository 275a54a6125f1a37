"""Which produce errors are a fault of one record, and which of the environment.

A *refusal* is an error retrying cannot fix: the broker will refuse the same record the same way
until an operator changes the topic or the ACLs. The hot path dead-letters a refused record and
goes on (:mod:`router_stream.core.refusals`); every other error — broker down, timeouts, not
enough replicas, leader elections, a producer fenced or out of sequence — is transient: the
batch is retried, its partitions paused, nothing committed past it.

=================================  ========================================================
refusal                            why
=================================  ========================================================
``MessageSizeTooLargeError``       larger than the topic's ``max.message.bytes`` (or the
                                   producer's ``max_request_size``)
``RecordListTooLargeError``,       the same, said of a batch / by the client
``RecordTooLargeError``
``CorruptRecordException``,        the broker cannot store it as sent
``InvalidTopicError``
``TopicAuthorizationFailedError``  the worker may not write that topic
:class:`TopicMissing`              the topic is not in fresh metadata from a reachable broker
=================================  ========================================================
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from aiokafka.protocol.metadata import MetadataRequest

TOPIC_CHECK_S = 2.0
"""How long a metadata refresh may take to say whether a topic exists. A broker that does not
answer within it is treated as unreachable (transient), never as "topic missing"."""


class TopicMissing(UnknownTopicOrPartitionError):  # type: ignore[misc]
    """The topic is absent from metadata the broker just sent: deleted, or never created."""


_REFUSALS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError,
             CorruptRecordException, InvalidTopicError, TopicAuthorizationFailedError,
             TopicMissing)


def is_refusal(exc: BaseException) -> bool:
    """True for an error that will recur however often the same record is sent."""
    return isinstance(exc, _REFUSALS)


async def topic_missing(producer: AIOKafkaProducer, topic: str,
                        bound_s: float = TOPIC_CHECK_S) -> bool:
    """True only when a broker answered that the topic does not exist (error
    UNKNOWN_TOPIC_OR_PARTITION to a metadata request that may not create it). A topic in the
    producer's metadata costs one dict lookup; no answer within ``bound_s`` means "cannot tell"
    (False): a broker that does not answer is an environment fault, retried."""
    client = producer.client
    if client.cluster.partitions_for_topic(topic) is not None:
        return False
    try:
        async with asyncio.timeout(bound_s):
            node = client.get_random_node()
            if node is None:
                return False
            response = await client.send(node, MetadataRequest([topic],
                                                               allow_auto_topic_creation=False))
    except (TimeoutError, KafkaError):
        return False
    codes = [t[0] for t in response.topics if t[1] == topic]
    return codes == [UnknownTopicOrPartitionError.errno]
