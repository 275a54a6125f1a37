"""Hosting the worker process.

``run_hosted`` runs :class:`~router_stream.worker.service.RouterWorker` on an asyncio loop with
SIGTERM/SIGINT handlers that drain, after pinning glibc's mmap threshold
(:func:`~router_stream.worker.memory.pin_mmap_threshold`, which keeps the RSS flat).
"""

from __future__ import annotations

import asyncio

from router_stream.config import Settings
from router_stream.worker.memory import pin_mmap_threshold
from router_stream.worker.service import run_worker


def run_hosted(settings: Settings, *, exit_when_idle: float | None = None) -> None:
    pin_mmap_threshold()
    asyncio.run(run_worker(settings, exit_when_idle=exit_when_idle))
