"""A built wheel works outside the checkout: the topic declarations, the migrations and the example
policy travel inside it, and a worker routes a signal from an unrelated working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from router_stream.config import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding only the built wheel (its dependencies come from the system site)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(root / "dist"), str(REPO)], check=True, timeout=300)
    wheel, = (root / "dist").glob("router_stream-*.whl")
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--ignore-installed",
                    "--no-deps", str(wheel)], check=True, timeout=300)
    return root / "venv" / "bin"


def _outside_env() -> dict[str, str]:
    """The environment without anything that points back into the checkout."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_") and k != "PYTHONPATH"}


def _run(bin_dir: Path, cwd: Path, settings: Settings, *args: str, timeout: float = 120,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = _outside_env()
    env.update(ROUTER_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
               ROUTER_DATABASE_URL=settings.database_url.get_secret_value(),
               ROUTER_TOPIC_PREFIX=settings.topic_prefix, ROUTER_GROUP_ID=settings.group_id)
    return subprocess.run([str(bin_dir / "router-stream"), *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def test_the_installed_wheel_runs_the_worker_outside_the_checkout(
        wheel_env: Path, settings: Settings, tmp_path: Path) -> None:
    where = subprocess.run([str(wheel_env / "python"), "-c",
                            "import router_stream; print(router_stream.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True,
                           env=_outside_env())
    assert not where.stdout.strip().startswith(str(REPO)), where.stdout

    example = subprocess.run([str(wheel_env / "python"), "-c",
                              "from router_stream.adapters import data_path;"
                              "print(data_path('examples') / 'policy.yaml')"],
                             cwd=tmp_path, capture_output=True, text=True, check=True,
                             env=_outside_env())
    policy = Path(example.stdout.strip())
    assert policy.is_file() and not str(policy).startswith(str(REPO))
    for args in (("policy", "validate", str(policy)), ("db", "migrate"),
                 ("topics", "apply", "--policy", str(policy))):
        done = _run(wheel_env, tmp_path, settings, *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    status = _run(wheel_env, tmp_path, settings, "db", "status")
    assert "001_init.sql" in status.stdout and "pending" not in status.stdout, status.stdout

    signal = '{"signal_id": "w-1", "sender_id": "pager-probe", "kind": "alert", ' \
             '"payload": {"severity": "critical", "text": "disk full"}}\n'
    done = _run(wheel_env, tmp_path, settings, "produce", "--logical", "signals",
                "--key-field", "sender_id", stdin=signal)
    assert done.returncode == 0, done.stderr
    done = _run(wheel_env, tmp_path, settings, "worker", "--policy", str(policy),
                "--http-port", "0", "--exit-when-idle", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    done = _run(wheel_env, tmp_path, settings, "tail", "--logical", "router.decisions",
                "--from-beginning", "--max", "1", "--timeout", "20")
    (decision,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert decision["value"]["signal_id"] == "w-1" and decision["value"]["destinations"]

    done = _run(wheel_env, tmp_path, settings, "demo", "--help")
    assert done.returncode == 0 and "Usage: router-stream demo" in done.stdout
