"""Child processes a test starts in their own session (``start_new_session=True``), and
waiting for what they do."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def until(what: str, timeout: float, probe: Callable[[], Any | Awaitable[Any]]) -> Any:
    """The first truthy result of ``probe`` (a plain or an async function), polled every
    100 ms for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop_process(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM the process group (SIGKILL after 60 s) and return the tail of its output; "" when
    it was already stopped and read, so a test may call it again from its ``finally``."""
    if proc.stdout is None or proc.stdout.closed:
        return ""
    with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out.decode(errors="replace")[-3000:]
