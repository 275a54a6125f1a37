"""Running ``router-stream`` commands in-process against a test's servers."""

from __future__ import annotations

import asyncio

from click.testing import CliRunner, Result

import router_stream.cli.dlq  # noqa: F401  (registers `dlq` on the root group)
from router_stream.cli import cli
from router_stream.config import Settings


def _invoke(settings: Settings, *args: str, policy_file: str = "") -> Result:
    env = {"ROUTER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "ROUTER_DATABASE_URL": settings.database_url.get_secret_value(),
           "ROUTER_TOPIC_PREFIX": settings.topic_prefix, "ROUTER_POLICY_FILE": policy_file}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


async def run_cli(settings: Settings, *args: str, policy_file: str = "") -> Result:
    # the command runs its own event loop (asyncio.run): call it off this test's loop
    return await asyncio.to_thread(_invoke, settings, *args, policy_file=policy_file)
