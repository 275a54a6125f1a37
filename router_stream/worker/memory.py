"""The worker process's malloc settings: large buffers are always mmapped (glibc).

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB) with its own
``mmap`` and unmaps it on ``free``. But the threshold is *dynamic*: each time an mmapped chunk
is freed, glibc raises the threshold to that chunk's size (up to 32 MiB) and the trim threshold
to twice that. The worker's large buffers — the largest blocks tracemalloc saw were aiokafka's
fetch responses and asyncio's stream buffers, 100 KiB to 1 MiB — come and go in varying sizes;
once the threshold had risen, they were carved out of the main heap instead, and the holes they
left stayed resident: the heap kept growing long after every Python structure had stopped.

Measured in the 10-minute soak (``python -m tests.chaos.run --only 8``) with the bounded
key-hash cache, sampling the worker every 30 s (``mallinfo2``, ``/proc/self/smaps``,
``sys.getallocatedblocks``), after the 2-minute warm-up:

* dynamic threshold (glibc's default): Python objects flat (allocated blocks ~385 000, gc
  objects ~76 000, every engine dict and cache constant), but glibc's main heap 17.0 -> 24.6 MiB
  of RSS, its free chunks 2.4 -> 7.1 MiB (at the end mostly 255 KiB - 2.9 MiB chunks), while
  its mmapped bytes fell 4.1 -> 1.3 MiB as the threshold rose; RSS 77.1 -> 82.0 MiB, the soak
  criterion +6.1 % (1 866 signals/s; load average 2.75 -> 2.67).
* threshold pinned at 128 KiB (``MALLOC_MMAP_THRESHOLD_=131072``): heap flat at 14.7 MiB with
  0.6 MiB free, mmapped ~5 MiB; RSS 74.0 -> 74.5 MiB, the criterion +0.6 % (1 510 signals/s;
  load average 2.85 -> 3.04). With this pin in the worker: +0.4 % (1 762 signals/s).

Pinning the threshold with ``mallopt`` also switches the dynamic adjustment off, the same as the
environment variable; doing it here makes it part of the worker wherever it runs, not of one
deployment's environment. An operator's own ``MALLOC_MMAP_THRESHOLD_`` or glibc tunable wins.
The cost is an ``mmap``/``munmap`` pair and fresh zeroed pages per large buffer: in a soak at
1 932 signals/s, ``perf stat`` on the worker counted 36 ``mmap`` and 36 ``munmap`` calls and 165
page faults a second (without the pin: ~0 and 20), at ~10 µs a pair — well under 0.1 % of a
core.
"""

from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD = 128 * 1024
"""glibc's initial (and documented default) ``M_MMAP_THRESHOLD``."""

_M_MMAP_THRESHOLD = -3  # <malloc.h>


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (and so stop its dynamic adjustment) for this process.

    Returns True when set; False where there is nothing to do: not glibc (musl's ``mallopt``
    is a no-op returning 0, macOS has none) or the operator chose a value already
    (``MALLOC_MMAP_THRESHOLD_``, or ``glibc.malloc.mmap_threshold`` in ``GLIBC_TUNABLES``)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or \
            "glibc.malloc.mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
