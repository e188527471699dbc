"""What the machine gives a training run: memory, and one process-wide setting that makes a
training loop (and sampling) fast on a CPU, `keep_freed_memory`. `available_memory` and
`check_memory` refuse a model or a file that cannot fit, before anything is allocated.

A training step allocates every activation afresh and frees them all when backward is done; so
does each layer of a prompt's forward in generation. glibc's malloc hands big freed arrays back
to the kernel (munmap, and trimming the top of the heap), so the next step faults every page in
again, each fault a trip into the kernel that also zero-fills the page. Asking malloc to keep
freed memory for reuse removes those faults (BENCHMARKS.md). The cost: the process keeps its peak memory after the peak (the peak itself
does not grow). Only glibc (Linux) has these knobs; elsewhere this does nothing.
"""
import ctypes
import ctypes.util
import dataclasses
import math
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
    physical memory elsewhere; None where neither is known), and no more than what an address-space
    limit (`ulimit -v`) leaves. Readers check a file's declared sizes against it before inflating
    anything."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        try:
            found.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            pass
    try:
        import resource  # POSIX only
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:  # the address space this process already uses
                used = [int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")]
            found.append(max(0, limit - sum(used)))
    except (ImportError, OSError, ValueError):
        pass
    return min(found) if found else None


def check_memory(config, batch_size=None, available=None, bytes_per_param=4):
    """Refuse a model that cannot fit in this machine's memory, before allocating it: a GPTConfig
    to train with `batch_size` sequences a step, or (batch_size None) to build, `bytes_per_param`
    bytes a weight. The training estimate: weights, gradients and AdamW's two moments (4 float32
    numbers a parameter), plus the activations a step keeps for backward (about 34 numbers per
    layer, position and channel, and the logits and their gradient)."""
    C, L, V, T = config.n_embd, config.n_layer, config.vocab_size, config.block_size
    # the parameters of a one-block model, its block counted L times: no list of L blocks' names
    one = dataclasses.replace(config, n_layer=1).parameter_shapes()
    block = sum(math.prod(shape) for name, shape in one.items() if ".h.0." in name)
    n_params = sum(math.prod(shape) for shape in one.values()) + (L - 1) * block
    if batch_size is None:
        need, what = bytes_per_param * n_params, "to hold its weights"
        fix = "use smaller GPTConfig sizes (n_embd, n_layer, vocab_size, block_size)"
    else:
        need, what = 4 * (4 * n_params + batch_size * T * (34 * L * C + 2 * V)), f"(batch {batch_size} x {T}) to train"
        fix = "use a smaller --n-embd, --n-layer, --block-size or --batch-size"
    available = available_memory() if available is None else available
    if available is not None and need > available:
        model = f"{config}, with {n_params / 1e6:,.1f}M parameters," if batch_size is None else \
            f"this model ({n_params / 1e6:,.0f}M parameters)"
        raise ValueError(f"{model} needs about {need / 1e9:,.1f} GB "
                         f"{what}, but {available / 1e9:.1f} GB of memory is available; {fix}")
