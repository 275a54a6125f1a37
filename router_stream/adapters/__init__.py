"""Adapters: the only modules that talk to Kafka (admin, topics) and Postgres.

Each translates its client library's errors into router_stream.errors at the seam.
"""

from __future__ import annotations

import logging
from pathlib import Path

# librdkafka reports why a connection failed to its logger, whose lines adapters/kafka_failures.py
# passes on once each and turns into one line that says why. Where no logging is configured (the
# CLI), Python's last-resort handler would print librdkafka's lines too; a NullHandler keeps it to
# our one line. Where logging is configured (the worker), records still reach its handlers.
logging.getLogger("router_stream.librdkafka").addHandler(logging.NullHandler())


def data_path(name: str) -> Path:
    """Where a data directory shipped with the package (``topics``, ``migrations``,
    ``examples``) is: ``router_stream/_data/<name>``, inside the installed wheel or, in a source
    checkout, a link to the repository's top-level directory of that name."""
    return Path(__file__).resolve().parents[1] / "_data" / name
