"""The one place that chooses which kernels the ops run on.

Two sets of kernels share the same names and signatures:

- `reference.py`: plain NumPy. It is the specification: short, obviously right, and the thing
  every numba kernel is tested against.
- `jit.py`: numba-jitted versions of the same functions, for speed.

Each name here is its kernel behind its input check (`checks.py`, applied by `checked`), so a bad
input raises the same ValueError or TypeError whichever set runs. `TINYGPT_KERNELS=numba|numpy`
picks the set (default numba). If numba cannot be imported we fall back to NumPy with a single
warning instead of crashing; if one numba kernel fails to compile, that kernel alone falls back to
its NumPy version, with a warning naming it: with numba, each name is also wrapped in a guard that
catches numba's compile errors on the call that triggers the compile (`_or_numpy`). The checks
refuse every input numba cannot type (a read-only `out`, say), so the guard meets only a numba
or LLVM version we do not know, never a user's mistake.

subtle: nothing is imported or compiled here at `import tinygpt` time. The set is resolved on the
first kernel call (module `__getattr__`, PEP 562), so importing tinygpt stays fast and numba's
compile (or cache load) is paid only by programs that actually run a kernel.

The contract (all arrays are NumPy arrays; float32 in training, float64 accepted for gradient checks):

    matmul(a, b, out=None, bias=None, accumulate=False) -> c     (M,K)@(K,N) or (B,M,K)@(B,K,N), + bias (N,);
                                                                 accumulate: out += the product
    gemv(x, w, bias=None, scale=None, transposed=False) -> y   x (M,K) @ w (K,N), or w (N,K)^T; few rows
                                                                 (generation); int8 w: times scale (N,)
    sum_rows(x) -> (C,)                                          x:(N,C), a bias gradient
    attention_forward(q, k, v, causal=True) -> (out, lse)        q:(B,nh,Tq,hs) k,v:(B,nh,Tk,hs)
    attention_backward(q, k, v, out, lse, dout, causal=True) -> (dq, dk, dv)
    softmax_forward(x, scale=1.0, causal=False) -> y             over the last axis
    softmax_backward(y, dy, scale=1.0) -> dx
    layer_norm_forward(x, weight, bias, eps=1e-5) -> (y, mean, rstd)      x:(N,C) mean,rstd:(N,)
    layer_norm_backward(dy, x, weight, mean, rstd) -> (dx, dweight, dbias)
    gelu_forward(x) -> y                                         GPT-2's tanh approximation
    gelu_backward(x, dy) -> dx
    cross_entropy_forward(logits, targets, ignore_index=-100) -> (losses, logsum)   logits:(N,C),
                                           logsum = log sum exp(logits - row max): the max kept apart
    cross_entropy_backward(logits, targets, logsum, dlosses, ignore_index=-100) -> dlogits
    embedding_backward(idx, dout, dweight) -> dweight             dweight[idx[i]] += dout[i], in place
    adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step) -> None  (in place)
    prefer_blas(M, K, N) -> bool: True where np.matmul should be used instead of `matmul`

Attention scale is 1/sqrt(hs). With `causal`, query i may see key j when j <= i + (Tk - Tq)
(bottom-right alignment, so a KV-cache step with Tq=1 sees every cached key).
"""
import functools
import os
import warnings
from types import SimpleNamespace

NAMES = (
    "matmul", "gemv", "sum_rows",
    "attention_forward", "attention_backward",
    "softmax_forward", "softmax_backward",
    "layer_norm_forward", "layer_norm_backward",
    "gelu_forward", "gelu_backward",
    "cross_entropy_forward", "cross_entropy_backward",
    "embedding_backward",
    "adamw_step",
    "prefer_blas",
)

backend = None  # "numba" or "numpy", set on first use (or by `use`)


def use(name):
    """Choose the kernel set: 'numba' or 'numpy'. Returns the name actually in use."""
    global backend
    if name not in ("numba", "numpy"):
        raise ValueError(f"unknown kernel set {name!r}: expected 'numba' or 'numpy'")
    module = None
    if name == "numba":
        try:
            from . import jit as module
            _set_numba_threads()
            _hold_openblas_to_one_thread()
        except Exception as e:  # numba missing or broken: fall back, once, loudly
            warnings.warn(f"numba kernels unavailable ({e!r}); falling back to NumPy", RuntimeWarning)
            name = "numpy"
    if module is None:
        from . import reference as module
    entries = checked(module)
    for fn in NAMES:
        entry = getattr(entries, fn)
        globals()[fn] = _or_numpy(fn, entry) if name == "numba" else entry
    backend = name
    return name


def checked(module):
    """The kernels of `module` (reference or jit), each behind its input check: a namespace with
    one function per name in NAMES. `use` installs these; tests and benchmarks call them to run
    both sets side by side, as the ops run them."""
    from . import checks
    return SimpleNamespace(**{name: _behind(getattr(checks, name), getattr(module, name)) for name in NAMES})


def _behind(check, kernel):
    @functools.wraps(kernel)
    def checked_kernel(*args, **kwargs):
        return kernel(*check(*args, **kwargs))
    return checked_kernel


def _set_numba_threads():
    """Numba's threads: TINYGPT_NUM_THREADS, default one per core (numba's own default), shared
    out among the ranks that mpiexec started on this machine (distributed.py), so that they do
    not oversubscribe each other's cores.

    subtle: one per core pays only because a training step does not call OpenBLAS for its big
    products (jit_matmul.prefer_blas): OpenBLAS's threads spin after each call and would fight
    numba's for the cores (BENCHMARKS.md).
    """
    import numba
    # ranks on this host, as Open MPI and MPICH's mpiexec tell each of them (1 without mpiexec)
    local = os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or os.environ.get("MPI_LOCALNRANKS") or "1"
    cores = numba.config.NUMBA_NUM_THREADS
    default = cores // int(local) if local.isdigit() and int(local) > 0 else cores
    n = int(os.environ.get("TINYGPT_NUM_THREADS", default))
    numba.set_num_threads(max(1, min(n, cores)))


_blas_limit = None  # threadpoolctl's limiter, kept for the life of the process


def _hold_openblas_to_one_thread():
    """Keep NumPy's OpenBLAS on one thread for the rest of the process, once numba runs the kernels.

    OpenBLAS's threads spin after each call and fight numba's for the cores (BENCHMARKS.md); the
    kernels hand OpenBLAS only products it runs on one thread anyway (prefer_blas), so the limit
    costs them nothing and stops any other np.matmul (Tensor @, a user's) from starting the fight.
    Only OpenBLAS is limited: PyTorch's own threads in the same process are left alone.
    """
    global _blas_limit
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # an install without it (it is in install_requires): the kernels still run
        return
    _blas_limit = ThreadpoolController().select(internal_api="openblas").limit(limits=1)


def _or_numpy(name, kernel):
    """`kernel`, except that if numba fails to compile it, this name switches to its NumPy
    version (one warning), which answers this call and every later one; the other kernels stay."""
    from numba.core.errors import NumbaError

    @functools.wraps(kernel)
    def guarded(*args, **kwargs):
        try:
            return kernel(*args, **kwargs)
        except NumbaError as e:  # typing or lowering failed: a numba or LLVM version we don't know
            warnings.warn(f"numba could not compile {name} ({type(e).__name__}: {str(e)[:300]}); "
                          f"{name} falls back to its NumPy version", RuntimeWarning)
            from . import reference
            globals()[name] = getattr(checked(reference), name)
            return globals()[name](*args, **kwargs)
    return guarded


def __getattr__(attr):
    # first access to a kernel name resolves the set from the environment
    if attr in NAMES:
        use(os.environ.get("TINYGPT_KERNELS", "numba").strip().lower() or "numba")
        return globals()[attr]
    raise AttributeError(f"module 'tinygpt.kernels' has no attribute {attr!r}")
