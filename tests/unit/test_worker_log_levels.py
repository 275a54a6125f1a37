"""A retried coordinator lookup is a warning in the worker's JSON log, any other aiokafka error
stays an error (the demo fails on an error-level line in a healthy run)."""

from __future__ import annotations

import io
import logging

import orjson
from aiokafka.errors import CoordinatorNotAvailableError, GroupAuthorizationFailedError

from router_stream.worker.logs import JsonFormatter, RetriedByAiokafka


def _line(msg: str, *args: object) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RetriedByAiokafka())
    logger = logging.getLogger("aiokafka.consumer.group_coordinator.test")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.error(msg, *args)
    return orjson.loads(stream.getvalue())


def test_a_retriable_coordinator_lookup_failure_is_a_warning() -> None:
    line = _line("Group Coordinator Request failed: %s", CoordinatorNotAvailableError())
    assert line["level"] == "warning"


def test_a_fatal_one_and_other_errors_stay_errors() -> None:
    fatal = _line("Group Coordinator Request failed: %s", GroupAuthorizationFailedError())
    other = _line("Topic %s not found in cluster metadata", "routed.gone")
    assert fatal["level"] == "error" and other["level"] == "error"
