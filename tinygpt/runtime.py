"""Process-wide settings that make a training loop fast on a CPU; today one, `keep_freed_memory`.

A training step allocates every activation afresh and frees them all when backward is done.
glibc's malloc hands big freed arrays back to the kernel (munmap, and trimming the top of the
heap), so the next step faults every page in again, each fault a trip into the kernel that also
zero-fills the page. Asking malloc to keep freed memory for reuse removes those faults
(BENCHMARKS.md). The cost: the process keeps its peak memory after the peak (the peak itself
does not grow). Only glibc (Linux) has these knobs; elsewhere this does nothing.
"""
import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers, from glibc's malloc.h
_done = False


def keep_freed_memory(mmap_threshold=32 << 20, trim_threshold=1 << 30):
    """Tell glibc's malloc to serve arrays up to `mmap_threshold` bytes (32 MB, its maximum) from
    its heap, and to keep up to `trim_threshold` bytes of freed heap for reuse. Returns True if the
    settings took effect. Safe to call more than once."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    return _done
