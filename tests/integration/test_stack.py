"""`router-stream stack` against the session's servers, when they came from the stack."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from router_stream.cli import _register, cli

pytestmark = pytest.mark.integration


def test_status_reports_both_servers_running(servers):
    if servers.origin != "stack":
        pytest.skip(f"servers come from {servers.origin}, not the local stack")
    _register()
    result = CliRunner().invoke(cli, ["stack", "status", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["kafka"]["running"] and rows["postgres"]["running"]
    assert rows["kafka"]["address"] == servers.kafka_bootstrap
    assert rows["kafka"]["rss_bytes"] > 0


def test_up_is_idempotent_and_reuses_running_servers(servers):
    if servers.origin != "stack":
        pytest.skip(f"servers come from {servers.origin}, not the local stack")
    _register()
    result = CliRunner().invoke(cli, ["stack", "up"])
    assert result.exit_code == 0, result.output
    assert "stack reused" in result.output
    assert f"export ROUTER_KAFKA_BOOTSTRAP={servers.kafka_bootstrap}" in result.output
