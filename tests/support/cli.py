"""Running ``router-stream`` commands in-process against a test's servers."""

from __future__ import annotations

import asyncio

from click.testing import CliRunner, Result

from router_stream.cli import _register, cli
from router_stream.config import Settings


def invoke(settings: Settings, *args: str, policy_file: str = "",
           catch_exceptions: bool = True) -> Result:
    """``router-stream ARGS`` with the test's broker, database and topic prefix; no policy file
    unless one is given (a ROUTER_POLICY_FILE of the developer's shell does not leak in)."""
    _register()
    env = {"ROUTER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "ROUTER_DATABASE_URL": settings.database_url.get_secret_value(),
           "ROUTER_TOPIC_PREFIX": settings.topic_prefix, "ROUTER_POLICY_FILE": policy_file}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=catch_exceptions)


async def run_cli(settings: Settings, *args: str, policy_file: str = "") -> Result:
    """``invoke`` off this test's event loop (the command runs its own), exceptions raised."""
    return await asyncio.to_thread(invoke, settings, *args, policy_file=policy_file,
                                   catch_exceptions=False)
