"""The worker pins glibc's mmap threshold (router_stream.worker.memory): large buffers stay
mmapped — returned to the OS when freed — instead of leaving resident holes in the heap once
glibc's dynamic threshold has risen (the soak's residual RSS drift, docs/reliability.md)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")

# In a fresh process (mallopt is process-wide): free a 4 MiB buffer — glibc then raises its
# dynamic threshold to 4 MiB — trim the heap (how much free top the imports left varies) and
# print how many bytes a new 1 MiB buffer got mmapped (a free chunk that size left in the heap's
# bins by the imports would serve it instead: the hash seed is fixed so that layout is too).
_PROBE = """
import ctypes, sys
from router_stream.worker.memory import pin_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "pin":
    print(pin_mmap_threshold())
big = bytearray(4 * 2**20)
del big
libc.malloc_trim(0)  # glibc mmaps only what the heap's free top cannot serve: release it first
before = libc.mallinfo2().hblkhd
buf = bytearray(2**20)
print(libc.mallinfo2().hblkhd - before)
"""


def _run(mode: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode],
                         env=clean | {"PYTHONHASHSEED": "0"} | env, check=True,
                         capture_output=True, text=True, timeout=60)
    return out.stdout.split()


@glibc_only
def test_large_buffers_stay_mmapped_once_the_threshold_is_pinned() -> None:
    try:
        _run("default")
    except subprocess.CalledProcessError as exc:
        if "mallinfo2" in exc.stderr:
            pytest.skip("glibc < 2.33: no mallinfo2")
        raise
    # glibc's default: after the 4 MiB free the 1 MiB buffer comes from the heap
    assert _run("default") == ["0"]
    pinned, mapped = _run("pin")
    assert pinned == "True"
    assert int(mapped) >= 2**20


@glibc_only
def test_an_operators_malloc_setting_wins() -> None:
    pinned, mapped = _run("pin", MALLOC_MMAP_THRESHOLD_="8388608")
    assert pinned == "False"  # not overridden: their 8 MiB threshold holds
    assert mapped == "0"
