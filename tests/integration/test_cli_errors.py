"""Bad invocations keep the README's promise: one line on stderr starting with ``error:`` (or
click's usage message), exit 1 for the user's mistake, 2 for a runtime failure, no traceback.

Each case runs the real CLI in a subprocess against the real broker and Postgres (own topic
prefix and database per test), so what is checked is what a user's shell sees.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from router_stream.adapters import postgres as pg
from router_stream.adapters.topics import apply_topics, policy_destinations

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.yaml"


def _env(settings, **extra: str) -> dict[str, str]:
    return {**os.environ, "ROUTER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "ROUTER_DATABASE_URL": settings.database_url.get_secret_value(),
            "ROUTER_TOPIC_PREFIX": settings.topic_prefix, "ROUTER_GROUP_ID": settings.group_id,
            **extra}


def _run(settings, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router_stream.cli", *args],
                          env=_env(settings, **extra), capture_output=True, text=True,
                          timeout=90)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something already listens on (as a worker on 6066 would be)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def yaml_error_on_line_27(tmp_path: Path) -> Path:
    lines = EXAMPLE.read_text().splitlines()
    assert lines[26] == "  slack: {capacity: 500}", "examples/policy.yaml drifted"
    lines[26] = "  slack: {capacity: 500"
    path = tmp_path / "broken.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _assert_one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")
              or line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


async def test_bad_invocations_exit_with_one_line_and_the_documented_code(
    settings, tmp_path, busy_port, yaml_error_on_line_27
):
    await pg.migrate_database(settings)
    no_topics = [
        (("policy", "publish", str(EXAMPLE)), 1,
         [settings.topic("router.control"), "topics apply --policy"]),
        (("override", "set", "--kind", "alert", "--destination", "slack"), 1,
         [settings.routed_topic("slack"), "topics apply"]),
    ]
    for args, code, needles in no_topics:
        _assert_one_line(await asyncio.to_thread(_run, settings, *args), code, *needles)

    await apply_topics(settings, policy_destinations(EXAMPLE))
    published = await asyncio.to_thread(_run, settings, "policy", "publish", str(EXAMPLE))
    assert published.returncode == 0, published.stderr
    cases = [
        (("no-such-command",), 1, ["No such command"]),
        (("dlq", "discard", "999999", "--reason", "typo"), 1, ["no DLQ entry with id 999999"]),
        (("dlq", "show", "999999"), 1, ["no DLQ entry with id 999999"]),
        (("dlq", "replay", "999999"), 1, ["999999"]),
        (("dlq", "list", "--dlq-reason", "bogus"), 1, ["bogus"]),
        (("override", "set", "--kind", "alert", "--destination", "nosuchdest", "--ttl", "5m"),
         1, ["'nosuchdest' is not in the active policy"]),
        (("override", "clear", "ovr-nope"), 1, ["no override with id 'ovr-nope'"]),
        (("policy", "rollback", "--to", "p-nope"), 1, ["p-nope"]),
        (("worker", "--http-port", str(busy_port), "--policy", str(EXAMPLE)), 2,
         [f"cannot listen on 127.0.0.1:{busy_port}", "--http-port"]),
    ]
    for args, code, needles in cases:
        result = await asyncio.to_thread(_run, settings, *args)
        _assert_one_line(result, code, *needles)

    # validate lists every issue (one per line, under the file's name), at the mistake's line
    invalid = await asyncio.to_thread(_run, settings, "policy", "validate",
                                      str(yaml_error_on_line_27))
    assert invalid.returncode == 1 and "Traceback" not in invalid.stderr, invalid.stderr
    assert invalid.stderr.rstrip().endswith("(line 27)"), invalid.stderr


async def test_a_runtime_failure_is_exit_2_with_one_line(settings):
    unreachable = await asyncio.to_thread(
        _run, settings, "override", "set", "--exclude-source", "probe-1",
        ROUTER_KAFKA_BOOTSTRAP="127.0.0.1:1")
    _assert_one_line(unreachable, 2)
