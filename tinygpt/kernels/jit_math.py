"""Numba plumbing shared by the kernels: SIMD-friendly exp and sigmoid, row reductions, stack
arrays, the vector width, and `on_one_thread`, a kernel's twin for small work on the calling thread.

Why not math.exp? Without Intel's SVML, numba lowers math.exp and math.tanh to scalar libm calls,
and a loop that calls libm cannot be vectorized; a loop that calls the polynomial below can, so
softmax, cross-entropy, gelu (via sigmoid: 0.5 (1 + tanh u) = sigmoid(2u)) and attention get SIMD
exponentials. The method (as in Cephes and every vector math library): exp(x) = 2^n * exp(r) with
n = round(x / ln2) and r = x - n ln2 in [-ln2/2, ln2/2]; exp(r) is a Taylor polynomial, and 2^n
is built straight into the exponent bits of a float. The error stays under 2 ulp (float32) and
3 ulp (float64), which tests/test_kernels.py checks. Each helper works in its argument's dtype:
the public name dispatches by type with numba's `overload`, at compile time.
subtle: numba's on-disk cache tracks only the source file of the kernel that was compiled; after
editing this file (or gemm6 in jit_matmul.py), clear `tinygpt/kernels/__pycache__`, or kernels
in other files may keep running the old helper.
"""
import math
import os
from types import FunctionType

import numpy as np
from llvmlite import binding as llvm, ir
from numba import njit
from numba.core import config, registry, types
from numba.extending import intrinsic, overload
from numba.np.arrayobj import populate_array


FEW_ROWS = 64                # below this many rows (a decode step's one token), a row kernel runs on one thread
PARALLEL_BYTES = 2 * 2**20   # a decode step's product or attention that reads less than this runs on one thread


def on_one_thread(kernel):
    """`kernel` compiled again without parallel=True: its prange loops run as plain loops on the
    calling thread. For work too small to pay for numba's threads (a decode step's one row): a
    parallel region wakes every thread and waits for the slowest, which costs more than one
    row's work, and on a loaded machine a whole scheduler time slice; holding it to one thread
    with set_num_threads still pays for the launch, twice over (BENCHMARKS.md).
    subtle: the twin is a copy of the function under its own name, because numba's on-disk cache
    is keyed by the function's name: under the same one, the two would load each other's code."""
    f = kernel.py_func
    twin = FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    twin.__qualname__ = f"{f.__qualname__}_on_one_thread"
    options = {k: v for k, v in kernel.targetoptions.items() if k != "nopython"}  # njit's own
    return njit(cache=True, **{**options, "parallel": False})(twin)


def prefer_512_bit_vectors():
    """On AVX-512 CPUs, let LLVM use 512-bit vectors (zmm registers); it defaults to 256 bits.

    LLVM's tuning for Intel server CPUs prefers 256-bit vectors (older chips slowed their clock on
    512-bit instructions). The matmul's inner loop then runs at half the width OpenBLAS uses. The
    feature string is a numba setting for the whole process, read once when numba first compiles,
    so this is done at import, before any kernel is compiled or loaded from the cache.
    subtle: it is skipped if the user set NUMBA_CPU_FEATURES, or if numba already compiled
    something in this process (then the kernels still work, on 256-bit vectors).
    """
    if os.environ.get("NUMBA_CPU_FEATURES") or "_toplevel_target_context" in vars(registry.cpu_target):
        return
    features = llvm.get_host_cpu_features().flatten()
    if "+avx512f" in features.split(","):
        config.CPU_FEATURES = features + ",-prefer-256-bit"


prefer_512_bit_vectors()


@intrinsic
def bitcast(typingctx, x):
    """Reinterpret the bits of a float32 as an int32 (and back), float64 as int64 (and back)."""
    pairs = {types.float32: types.int32, types.int32: types.float32,
             types.float64: types.int64, types.int64: types.float64}
    if x not in pairs:
        return None
    result = pairs[x]

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(result))
    return result(x), codegen


def bitcast_py(f):
    """bitcast for a NumPy float scalar, outside numba: its bits as an int of the same width."""
    return f.view(np.int32 if f.dtype == np.float32 else np.int64).item()


@intrinsic
def stack_empty(typingctx, n, dtype):
    """A 1-D scratch array of `n` (a compile-time constant) elements on the stack, uninitialized.

    Why: LLVM knows stack memory cannot overlap any array the kernel was given, so a loop that
    accumulates into it needs no runtime aliasing checks and vectorizes; np.empty returns heap
    memory LLVM knows nothing about. subtle: the array dies with the function that calls this;
    never return it or store it anywhere.
    """
    if not isinstance(n, types.IntegerLiteral):
        return None  # numba then retries with the literal value, if the caller passed a constant
    dt = dtype.dtype if isinstance(dtype, types.DType) else getattr(dtype, "instance_type", None)
    if dt not in (types.float32, types.float64):
        return None
    size, arrty = n.literal_value, types.Array(dt, 1, "C")

    def codegen(context, builder, signature, args):
        llty = context.get_data_type(dt)
        with builder.goto_entry_block():  # one allocation per call, even if used inside a loop
            buf = builder.alloca(ir.ArrayType(llty, size))
            buf.align = 64                # a cache line: aligned vector loads and stores
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(llty))
        ary = context.make_array(arrty)(context, builder)
        populate_array(ary, data=builder.bitcast(buf, llty.as_pointer()),
                       shape=[context.get_constant(types.intp, size)], strides=[itemsize],
                       itemsize=itemsize, meminfo=None)
        return ary._getvalue()
    return arrty(n, dtype), codegen


@intrinsic
def select(typingctx, cond, a, b):
    """`a if cond else b` as one LLVM select: no branch, so numba's inliner makes no phi nodes
    and LLVM vectorizes it. a and b must have the same type."""
    if not isinstance(cond, types.Boolean) or a != b:
        return None

    def codegen(context, builder, signature, args):
        return builder.select(args[0], args[1], args[2])
    return a(cond, a, b), codegen


# Per dtype: exp's constants. ln2 is split in a short high part (n * LN2_HI is exact) and the rest,
# so r = x - n ln2 keeps full precision (Cody and Waite). MAGIC = 1.5 * 2^mantissa_bits: adding it
# rounds x / ln2 to an integer that lands in the low bits of the float's mantissa.
_F32 = dict(LOG2E=np.float32(1.4426950408889634), LN2_HI=np.float32(0.693359375),
            LN2_LO=np.float32(-2.12194440e-4), MAGIC=np.float32(12582912.0),
            LO=np.float32(-87.0), ZERO=np.float32(0.0), ONE=np.float32(1.0),
            INT=np.int32, SHIFT=23, BIAS=127)
_F64 = dict(LOG2E=np.float64(1.4426950408889634), LN2_HI=np.float64(6.93147180369123816490e-01),
            LN2_LO=np.float64(1.90821492927058770002e-10), MAGIC=np.float64(6755399441055744.0),
            LO=np.float64(-708.0), ZERO=np.float64(0.0), ONE=np.float64(1.0),
            INT=np.int64, SHIFT=52, BIAS=1023)
T32 = tuple(np.float32(1 / math.factorial(i)) for i in range(8))    # Taylor coefficients 1/i! of exp
T64 = tuple(np.float64(1 / math.factorial(i)) for i in range(13))


@njit(inline="always")
def _taylor32(r):  # exp(r) to degree 7, for |r| <= ln2/2: error below one float32 ulp
    t = T32
    return t[0] + r * (t[1] + r * (t[2] + r * (t[3] + r * (t[4] + r * (t[5] + r * (t[6] + r * t[7]))))))


@njit(inline="always")
def _taylor64(r):  # exp(r) to degree 12: error below one float64 ulp
    t = T64
    return t[0] + r * (t[1] + r * (t[2] + r * (t[3] + r * (t[4] + r * (t[5] + r * (t[6] + r * (
        t[7] + r * (t[8] + r * (t[9] + r * (t[10] + r * (t[11] + r * t[12])))))))))))


def _make_exp(c, taylor):
    LOG2E, LN2_HI, LN2_LO, MAGIC = c["LOG2E"], c["LN2_HI"], c["LN2_LO"], c["MAGIC"]
    LO, ZERO = c["LO"], c["ZERO"]
    INT, SHIFT, BIAS = c["INT"], c["SHIFT"], c["BIAS"] - bitcast_py(c["MAGIC"])

    def exp_le0(x):
        xc = select(x < LO, LO, x)            # keeps 2^n a normal float; a NaN passes through
        k = xc * LOG2E + MAGIC                # n = round(x / ln2), in k's low mantissa bits
        n = k - MAGIC
        r = (xc - n * LN2_HI) - n * LN2_LO    # x - n ln2, |r| <= ln2 / 2
        p = taylor(r)
        two_n = bitcast(INT((bitcast(k) + BIAS) << SHIFT))   # 2^n, written into the exponent bits
        return select(x < LO, ZERO, p * two_n)  # exp(-inf) = 0, and so is anything below LO
    return exp_le0


def _make_sigmoid_pair(c):
    ZERO, ONE = c["ZERO"], c["ONE"]

    def sigmoid_pair(x):
        # with e = exp(-|x|) <= 1: sigmoid(x) = 1 / (1 + e) for x >= 0, and e / (1 + e) for x < 0
        e = exp_le0(-abs(x))
        big, small = ONE / (ONE + e), e / (ONE + e)
        return select(x < ZERO, small, big), select(x < ZERO, big, small)
    return sigmoid_pair


_exp32, _exp64 = _make_exp(_F32, _taylor32), _make_exp(_F64, _taylor64)
_sigmoid_pair32, _sigmoid_pair64 = _make_sigmoid_pair(_F32), _make_sigmoid_pair(_F64)  # use exp_le0 below


def exp_le0(x):
    """exp(x) for x <= 0 (correct up to x ~ 88), vectorizable. Pure-Python fallback: math.exp."""
    return math.exp(x)


def sigmoid_pair(x):
    """(sigmoid(x), sigmoid(-x)), each to full relative precision in both tails, where computing
    1 - sigmoid(x) as a difference would cancel to nothing. Vectorizable. Pure-Python fallback."""
    e = math.exp(-abs(x))
    big, small = 1 / (1 + e), e / (1 + e)
    return (small, big) if x < 0 else (big, small)


@overload(exp_le0, inline="always")
def _exp_le0_typed(x):
    return {types.float32: _exp32, types.float64: _exp64}.get(x)


@overload(sigmoid_pair, inline="always")
def _sigmoid_pair_typed(x):
    return {types.float32: _sigmoid_pair32, types.float64: _sigmoid_pair64}.get(x)


# Row reductions. LLVM turns `m = max(m, a[j])` or `s += a[j]` into SIMD code only for long
# loops (64+ elements, and for sums only with `reassoc`), and runs a short row (48 keys, 65
# characters) one element at a time. So the reductions below keep LANES running results, one per
# SIMD lane: an elementwise loop, which always vectorizes; a halving tree adds the lanes up at the end.

LANES = 16  # float32 lanes in an AVX-512 register


@njit(inline="always", error_model="numpy")
def row_max(a, n, scale):
    """max(scale * a[:n]) for a 1-D array (n = 0 gives -inf).

    subtle: `v if v > m else m` is one vmaxps instruction but may skip a NaN; every caller
    follows with exp(x - max) over the same row, which turns a NaN row into NaNs anyway.
    """
    acc = stack_empty(LANES, a.dtype)
    acc[:] = -np.inf
    full = n - n % LANES
    for c in range(0, full, LANES):
        seg = a[c:c + LANES]
        for u in range(LANES):
            v = scale * seg[u]
            acc[u] = v if v > acc[u] else acc[u]
    for j in range(full, n):
        v = scale * a[j]
        acc[0] = v if v > acc[0] else acc[0]
    w = LANES // 2
    while w > 0:
        for u in range(w):
            acc[u] = acc[u + w] if acc[u + w] > acc[u] else acc[u]
        w //= 2
    return acc[0]


@njit(inline="always", error_model="numpy")
def row_dot(a, b, n):
    """(a[:n] * b[:n]).sum() for 1-D arrays."""
    acc = stack_empty(LANES, a.dtype)
    acc[:] = 0
    full = n - n % LANES
    for c in range(0, full, LANES):
        sa, sb = a[c:c + LANES], b[c:c + LANES]
        for u in range(LANES):
            acc[u] += sa[u] * sb[u]
    for j in range(full, n):
        acc[0] += a[j] * b[j]
    w = LANES // 2
    while w > 0:
        for u in range(w):
            acc[u] += acc[u + w]
        w //= 2
    return acc[0]


@njit(inline="always", error_model="numpy")
def row_sum(a, n):
    """a[:n].sum() for a 1-D array."""
    acc = stack_empty(LANES, a.dtype)
    acc[:] = 0
    full = n - n % LANES
    for c in range(0, full, LANES):
        seg = a[c:c + LANES]
        for u in range(LANES):
            acc[u] += seg[u]
    for j in range(full, n):
        acc[0] += a[j]
    w = LANES // 2
    while w > 0:
        for u in range(w):
            acc[u] += acc[u + w]
        w //= 2
    return acc[0]
