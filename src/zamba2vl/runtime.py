"""Process-wide settings that make CPU inference faster; the CLI applies them, library users may call them.

``tune_cpu_allocator()``: glibc's malloc hands every allocation above 128 KiB-32 MiB (its adaptive mmap
threshold) straight to the kernel and gives it back on free, so each decode step's temporary tensors of a few
MiB (attention scores over a long cache, upcast inputs) come back as fresh pages and are page-faulted and zeroed
on first touch: measured on a 2-core AVX2 EPYC, a 64 MiB fp32 clone ran at 1.8 GB/s, 9.7 GB/s with the memory
kept; a 1.2B-shape decode step at 32k context went from 892 to ~700 ms. Raising the mmap and trim thresholds
keeps freed memory in the heap for reuse. Peak memory is unchanged (the memory was in use at the peak anyway);
what the process holds between peaks may stay higher.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done: bool | None = None


def tune_cpu_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 30) -> bool:
    """Keep freed memory for reuse in glibc's malloc (Linux only). True if applied.

    Set ``ZAMBA2VL_MALLOC=default`` to leave the allocator alone. Safe to call more than once; does nothing
    where malloc is not glibc's (macOS, Windows, musl, or jemalloc/tcmalloc preloaded: mallopt then fails).
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("ZAMBA2VL_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1 and
                 mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1)
    return _done


__all__ = ["tune_cpu_allocator"]
