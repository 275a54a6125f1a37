"""Fixtures for tests that use the database directly (loaded with ``pytest_plugins``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from router_stream.adapters import postgres as pg
from router_stream.config import Settings


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database, migrated to the latest schema."""
    conn = await pg.connect(settings)
    await pg.migrate(conn)
    try:
        yield conn
    finally:
        await conn.close()
