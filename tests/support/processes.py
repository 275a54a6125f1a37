"""Child processes a test starts in their own session (``start_new_session=True``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


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
