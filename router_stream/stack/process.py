"""Small process helpers shared by the stack's Kafka and Postgres parts.

The stack records the pid of every process it starts in a pid file, so ``down`` stops exactly
those processes and nothing else that happens to listen on the same port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

from router_stream.errors import RouterError, UserError


class StackError(RouterError):
    """The local stack could not be started or stopped."""


class MissingTool(UserError):
    """A binary the stack needs is not installed; the message says what to install."""


def require_binary(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingTool(f"'{name}' not found on PATH: {install_hint}")
    return path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists"; treat it as dead so `down`/`status` tell the truth.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def stop_pid(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM, wait up to ``timeout`` for a clean exit, then SIGKILL."""
    if not pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while pid_alive(pid):
        time.sleep(0.05)
