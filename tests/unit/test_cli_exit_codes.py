"""Exit codes scripts can rely on: 0 ok, 1 user error (including click's usage errors), 2 runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[2] / "examples" / "policy.yaml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router_stream.cli", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "code"), [
    (["--help"], 0),
    (["policy", "validate", str(EXAMPLE)], 0),
    (["no-such-command"], 1),
    (["dlq", "list", "--limit", "many"], 1),
    (["policy", "validate", "/does/not/exist.yaml"], 1),
])
def test_exit_codes(args, code):
    result = run(*args)
    assert result.returncode == code, result.stderr
    if code:
        assert "Traceback" not in result.stderr


def test_runtime_failure_is_exit_2_with_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "router_stream.cli", "topics", "list"], capture_output=True,
        text=True, timeout=60, env={"ROUTER_KAFKA_BOOTSTRAP": "127.0.0.1:1", "PATH": "/usr/bin"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error:")
