"""A producer that fails for good on the real broker says so: librdkafka reports a fatal error
(here, a transactional producer fenced by a newer holder of its transactional.id) through
``error_cb``, and :meth:`OutputProducer.failed` returns its reason — what the worker watches its
side producer with."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from confluent_kafka import KafkaException

from router_stream.config import Settings
from router_stream.worker.rdkafka import OutputProducer

pytestmark = pytest.mark.integration


async def test_a_fenced_producer_reports_that_it_failed_for_good(servers, topic_factory,
                                                                  test_id):
    topic = await topic_factory("out")
    settings = Settings(kafka_bootstrap=servers.kafka_bootstrap)
    tid = f"failed-for-good-{test_id}"
    old = OutputProducer(settings, "old", transactional_id=tid)
    new = OutputProducer(settings, "new", transactional_id=tid)
    try:
        await old.init_transactions()
        await new.init_transactions()  # fences the old one
        old.begin_transaction()
        with contextlib.suppress(KafkaException):
            await asyncio.wait_for(old.send(topic, b"from the fenced one"), 30)
            await old.commit_transaction()
        reason = await asyncio.wait_for(old.failed(), 30)
        assert reason.startswith("_FENCED: ") and "fenced" in reason, reason

        new.begin_transaction()  # the newer holder is not failed
        await asyncio.wait_for(new.send(topic, b"from the new one"), 30)
        await new.commit_transaction()
    finally:
        await old.close(1)
        await new.close(1)
