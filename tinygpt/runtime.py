"""What the machine gives a training run: memory, and one process-wide setting that makes a
training loop fast on a CPU, `keep_freed_memory`. `available_memory` and `check_memory` refuse
a model or a file that cannot fit, before anything is allocated.

A training step allocates every activation afresh and frees them all when backward is done.
glibc's malloc hands big freed arrays back to the kernel (munmap, and trimming the top of the
heap), so the next step faults every page in again, each fault a trip into the kernel that also
zero-fills the page. Asking malloc to keep freed memory for reuse removes those faults
(BENCHMARKS.md). The cost: the process keeps its peak memory after the peak (the peak itself
does not grow). Only glibc (Linux) has these knobs; elsewhere this does nothing.
"""
import ctypes
import ctypes.util
import os

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


def available_memory():
    """Bytes of memory this process could still allocate, as Linux's MemAvailable counts it (the
    physical memory elsewhere; None where neither is known). Readers check a file's declared
    sizes against it before inflating anything."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(config, batch_size, available=None):
    """Refuse a model that cannot train in this machine's memory, before allocating it. The
    estimate: weights, gradients and AdamW's two moments (4 float32 numbers a parameter), plus
    the activations a step keeps for backward (about 34 numbers per layer, position and
    channel, and the logits and their gradient)."""
    C, L, V, T = config.n_embd, config.n_layer, config.vocab_size, config.block_size
    n_params = V * C + T * C + L * (12 * C * C + 13 * C)
    need = 4 * (4 * n_params + batch_size * T * (34 * L * C + 2 * V))
    available = available_memory() if available is None else available
    if available is not None and need > available:
        raise ValueError(f"this model ({n_params / 1e6:,.0f}M parameters, batch {batch_size} x {T}) needs about "
                         f"{need / 1e9:,.1f} GB to train, but {available / 1e9:.1f} GB of memory is available; "
                         "use a smaller --n-embd, --n-layer, --block-size or --batch-size")
