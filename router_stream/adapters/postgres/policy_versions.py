"""``policy_versions``: the published policies and their status."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from router_stream.adapters.postgres.connections import unavailable_as_router_error
from router_stream.adapters.postgres.tables import _ts, json_text

_POLICY_STATUSES = ("candidate", "active", "superseded", "rejected", "rolled_back")


async def record_policy_version(
    conn: asyncpg.Connection,
    version: str,
    policy: str,
    *,
    status: str = "active",
    published_by: str = "",
    published_at: Any = None,
    policy_json: Any = None,
    status_reason: str | None = None,
) -> None:
    """Record a policy version (idempotent on ``version``) and set its status.

    Making a version ``active`` marks the previously active one ``superseded`` in the same
    transaction, so there is never more than one active policy.
    """
    if status not in _POLICY_STATUSES:
        raise ValueError(f"status must be one of {', '.join(_POLICY_STATUSES)}")
    with unavailable_as_router_error("recording a policy version"):
        await _record_policy_version(conn, version, policy, status, published_by,
                                     _ts(published_at), json_text(policy_json), status_reason)


async def _record_policy_version(
    conn: asyncpg.Connection, version: str, policy: str, status: str, published_by: str,
    published_at: datetime | None, policy_json: str | None, status_reason: str | None,
) -> None:
    async with conn.transaction():
        if status == "active":
            await conn.execute(
                "UPDATE policy_versions SET status = 'superseded', status_changed_at = now()"
                " WHERE status = 'active' AND version <> $1",
                version,
            )
        await conn.execute(
            """
            INSERT INTO policy_versions
                (version, policy, policy_json, status, status_reason, published_at, published_by)
            VALUES ($1, $2, $3::text::jsonb, $4, $5, COALESCE($6, now()), $7)
            ON CONFLICT (version) DO UPDATE SET
                status = EXCLUDED.status,
                status_reason = EXCLUDED.status_reason,
                status_changed_at = CASE WHEN policy_versions.status = EXCLUDED.status
                                         THEN policy_versions.status_changed_at ELSE now() END
            """,
            version, policy, policy_json, status, status_reason, published_at, published_by,
        )


async def mark_policy_status(
    conn: asyncpg.Connection, version: str, status: str, reason: str | None = None
) -> None:
    """Set the status of a recorded version (e.g. a rollout candidate ``rolled_back``); a
    candidate that was never recorded on its own gets a row that points at its parent."""
    if status not in _POLICY_STATUSES or status == "active":
        raise ValueError(f"status must be one of {', '.join(_POLICY_STATUSES)} except active")
    with unavailable_as_router_error("updating a policy version"):
        await conn.execute(
            """
            INSERT INTO policy_versions (version, policy, status, status_reason, published_at)
            VALUES ($1, '# rollout candidate: see the rollout section of the active policy',
                    $2, $3, now())
            ON CONFLICT (version) DO UPDATE SET
                status = EXCLUDED.status, status_reason = EXCLUDED.status_reason,
                status_changed_at = now()
            WHERE policy_versions.status <> 'active'
            """,
            version, status, reason,
        )
