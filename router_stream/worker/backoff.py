"""Retrying a commit step through transient failures: capped exponential backoff, full jitter.

Only :class:`~router_stream.errors.TransientError` is retried (the adapters translate broker and
database errors into it); anything else is a bug or bad data and propagates, so the worker stops
without committing rather than spin on it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from router_stream.errors import OperationTimeout, TransientError

log = logging.getLogger("router_stream.worker")
T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.1
    cap_s: float = 5.0
    attempt_timeout_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^attempt)]."""
        return rng.uniform(0, min(self.cap_s, self.base_s * (2 ** attempt)))


async def retry_transient(
    step: str,
    op: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    give_up: Callable[[], bool],
    on_retry: Callable[[str], None] = lambda step: None,
    rng: random.Random | None = None,
    logger: logging.Logger = log,
) -> T:
    """Run ``op`` until it succeeds; on a TransientError wait and try again.

    ``give_up()`` is asked before every new attempt (a draining worker past its deadline);
    when it says yes the last error is raised and nothing after this step happens. Retries
    are logged on ``logger`` (the worker's unless the caller is another service).
    """
    attempt = 0
    while True:
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
            # that arrives as the operation completes.
            async with asyncio.timeout(backoff.attempt_timeout_s):
                return await op()
        except TimeoutError as exc:
            error: TransientError = OperationTimeout(f"{step}: no answer in "
                                                     f"{backoff.attempt_timeout_s:.0f}s")
            error.__cause__ = exc
        except TransientError as exc:
            error = exc
        if give_up():
            raise error
        # Made on the first retry only: seeding a Random reads the OS's entropy, a cost every
        # batch's commit steps would pay otherwise.
        rng = rng or random.Random()
        delay = backoff.delay(attempt, rng)
        on_retry(step)
        logger.warning("transient failure, retrying", extra={
            "step": step, "attempt": attempt + 1, "retry_in_s": round(delay, 3),
            "error": str(error)})
        attempt += 1
        await asyncio.sleep(delay)
