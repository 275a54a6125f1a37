"""Markers and fixtures of the fault suite.

* ``chaos_fast`` — the fast subset (poison corpus, one SIGKILL): collected and run by the normal
  ``make test`` / ``pytest`` (< 60 s together).
* ``chaos`` — the full scenarios (minutes each): skipped unless selected with ``-m chaos`` or
  ``RUN_CHAOS=1`` is set; ``make chaos`` runs them through ``python -m tests.chaos.run``, which
  also prints the table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import OwnStack, Servers


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos_fast: fast fault scenario, part of the normal suite")
    config.addinivalue_line(
        "markers", "chaos: slow fault scenario; skipped unless -m chaos or RUN_CHAOS=1")


def _chaos_selected(config: pytest.Config) -> bool:
    if os.environ.get("RUN_CHAOS") == "1":
        return True
    expr = config.getoption("-m") or ""
    return re.search(r"(?<!not )\bchaos\b(?!_)", expr) is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _chaos_selected(config):
        return
    skip = pytest.mark.skip(reason="slow fault scenario: `make chaos`, `-m chaos` or RUN_CHAOS=1")
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def chaos_servers(servers: object) -> Servers:
    """The session's shared Kafka + Postgres (tests/conftest.py) in the harness's terms."""
    return Servers(servers.kafka_bootstrap, servers.database_url, "shared")  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def own_stack() -> Iterator[OwnStack]:
    """A second local stack the broker-kill and Postgres-stop scenarios may break."""
    from router_stream.stack import kafka, postgres

    stack = OwnStack()
    started = not (kafka.is_running(stack.cfg.kafka) and postgres.is_running(stack.cfg.postgres))
    stack.up()
    yield stack
    if started:
        stack.down()


@pytest.fixture
def chaos_dir(tmp_path: Path) -> Path:
    return tmp_path / "chaos"
