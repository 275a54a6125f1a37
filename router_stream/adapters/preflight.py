"""What an operator command needs of the running system, checked before it is sent.

A ``policy publish`` whose destinations have no ``routed.<destination>`` topic, or an ``override
set`` naming a destination the active policy lacks (or whose topic is missing), would be sent
through ``router.control`` and only then fail on every worker. These checks refuse it first, as
a :class:`~router_stream.errors.UserError` (exit 1) that says what is missing and how to create it.
Workers check again when the command arrives (:mod:`router_stream.worker.state`).

The active policy is the one ``policy_versions`` marks active (what ``policy publish`` recorded),
else the ``ROUTER_POLICY_FILE`` the workers start with; without either, destinations are not
checked (topics still are).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from router_stream.config import CONTROL, Settings
from router_stream.core.compiled import CompiledPolicy, routable_destinations
from router_stream.core.overrides import OverrideKind, unknown_target
from router_stream.errors import UserError

CLUSTER_TIMEOUT_S = 10.0


async def cluster_topics(settings: Settings, timeout: float = CLUSTER_TIMEOUT_S) -> set[str]:
    """Every topic name the cluster has (BrokerUnavailable/OperationTimeout when unreachable)."""
    from router_stream.adapters.topic_admin import connected_admin

    async with connected_admin(settings, timeout) as admin:
        return set((await admin.metadata()).topics)


def missing_topics_error(missing: list[str], *, fix: str) -> UserError:
    return UserError(f"topic(s) {', '.join(missing)} do not exist; create them with {fix}")


async def check_policy_topics(settings: Settings, compiled: CompiledPolicy, file: Path) -> None:
    """Refuse a policy publish whose routed topics (or router.control) do not exist."""
    wanted = [settings.topic(CONTROL)] + [settings.routed_topic(d)
                                          for d in routable_destinations(compiled)]
    existing = await cluster_topics(settings)
    missing = [t for t in wanted if t not in existing]
    if missing:
        raise missing_topics_error(
            missing, fix=f"`router-stream topics apply --policy {file}` (or publish with "
                         "--create-topics)")


async def active_policy(settings: Settings) -> CompiledPolicy | None:
    """The policy the workers run: the active row of policy_versions, else ROUTER_POLICY_FILE."""
    from router_stream.worker.policy_source import compile_policy_text

    text: str | None = None
    source = "policy_versions"
    directory: Path | None = None
    if settings.persist:
        text = await _active_policy_text(settings)
    if text is None and settings.policy_file:
        source = settings.policy_file
        directory = Path(source).parent
        try:
            text = Path(settings.policy_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read ROUTER_POLICY_FILE {settings.policy_file}: "
                            f"{exc.strerror}") from exc
    if text is None:
        return None
    compiled: CompiledPolicy = compile_policy_text(text, source, directory=directory)
    return compiled


async def _active_policy_text(settings: Settings) -> str | None:
    from router_stream.adapters import postgres
    from router_stream.adapters.heartbeat_store import not_migrated_as_user_error

    conn = await postgres.connect(settings)
    try:
        with postgres.unavailable_as_router_error("reading policy_versions"), \
                not_migrated_as_user_error():
            text: Any = await conn.fetchval(
                "SELECT policy FROM policy_versions WHERE status = 'active'")
    finally:
        await conn.close()
    return str(text) if text is not None else None


async def check_override_target(settings: Settings, action: OverrideKind, target: str) -> None:
    """Refuse an override naming a destination the active policy lacks, a forced destination
    without its routed topic, or any override while router.control does not exist."""
    wanted = [settings.topic(CONTROL)]
    if action is not OverrideKind.EXCLUDE_SOURCE:
        policy = await active_policy(settings)
        if policy is not None:
            unknown = unknown_target(action.value, target, routable_destinations(policy))
            if unknown is not None:
                raise UserError(f"{unknown} (policy {policy.version})")
    if action is OverrideKind.FORCE_DESTINATION:
        wanted.append(settings.routed_topic(target))
    existing = await cluster_topics(settings)
    missing = [t for t in wanted if t not in existing]
    if missing:
        raise missing_topics_error(
            missing, fix="`router-stream topics apply --policy FILE` (or `-d DESTINATION`)")
