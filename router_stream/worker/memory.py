"""The worker process's malloc settings: large buffers are always mmapped (glibc).

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB) with its own
``mmap`` and unmaps it on ``free``. But the threshold is *dynamic*: each time an mmapped chunk
is freed, glibc raises the threshold to that chunk's size (up to 32 MiB) and the trim threshold
to twice that. The worker's large buffers (the Kafka client's fetch responses, asyncio's stream
buffers: 100 KiB to 1 MiB) come and go in varying sizes; once the threshold had risen, they
were carved out of the main heap instead, and the holes they left stayed resident: the heap
kept growing long after every Python structure had stopped.

Pinning the threshold with ``mallopt`` also switches the dynamic adjustment off, the same as the
environment variable, and makes it part of the worker wherever it runs. An operator's own
``MALLOC_MMAP_THRESHOLD_`` or glibc tunable wins. The soak figures behind this are in
docs/performance.md ("Memory: glibc's mmap threshold").
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
