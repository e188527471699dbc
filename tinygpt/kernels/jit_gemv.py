"""Products of a few rows with a weight matrix, in numba: generation's y = x W + b, one token at a time.

At one row, y = x W does two flops per weight it reads: it is bound by memory bandwidth, not
arithmetic, and a GEMM's packing of W (jit_matmul) only adds a second pass over it. So `gemv`
streams W once, from where it lies, in one of two layouts:

1. w (K, N), GPT-2's Conv1D layout. The rows of w (the k's) are cut into one stretch per core
   (prange); a core reads its stretch front to back, whole contiguous rows, and adds
   x[m, k] * w[k, :] into its own partial sum of the output (N floats a row of x, in L1). The
   partial sums are added up at the end (N floats each, against K x N weights read):

       partial[part, m, :] += x[m, k] * w[k, :]       for k in the part's stretch

   (Cutting the columns instead reads each row of w in short strided pieces: half the speed.)

2. w (N, K) with `transposed`: one weight row per output, as the tied output head reads wte
   (V, C). Each output is a dot product of a row of x with a contiguous row of w; the cores share
   blocks of BLOCK weight rows, and each weight row is read once for all the rows of x.

A weight smaller than PARALLEL_BYTES is read on the calling thread alone: waking the other
threads costs more than they save on it (jit_math.on_one_thread).

The int8 scale and the bias are applied to each output as it is written: a pass over the outputs,
never a second one over W.

int8 weights (`GPT.quantize`): w holds q = round(w / scale), with one float32 scale per output
channel (a column of a (K, N) w, a row of a (N, K) one). The scale is constant along the sum, so
y[m, n] = scale[n] * sum_k x[m, k] q[k, n] + bias[n]: each int8 becomes a float as it is read
and is never stored as one. bfloat16 weights (uint16, the upper half of a float32's bits) are
widened the same way, by a shift into the upper half (`widen`). Inputs arrive checked (checks.py).
"""
import numpy as np
from numba import get_num_threads, njit, prange
from numba.core import types
from numba.extending import overload

from .jit_math import PARALLEL_BYTES, bitcast, on_one_thread

BLOCK = 64   # weight rows a task in layout 2: enough tasks to balance the cores
SUM = {"contract", "reassoc"}  # FMAs, and sums in any order (float32 tolerance: ~K eps)
KERNEL = dict(cache=True, error_model="numpy", fastmath=SUM)


def widen(v):
    """A weight as a float: bfloat16 bits (uint16) -> float32; int8 and floats as they are."""
    raise NotImplementedError("called only from numba kernels")


@overload(widen)
def _widen(v):
    if v == types.uint16:
        return lambda v: bitcast(np.int32(np.int32(v) << 16))  # the 16 bits: a float32's upper half
    return lambda v: v


def gemv(x, w, bias=None, scale=None, transposed=False):
    """x (M, K) @ w (K, N), or @ w (N, K)^T if `transposed`, times scale (N,) if given (int8 w),
    plus bias (N,) if given -> (M, N)."""
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w)
    N = w.shape[0] if transposed else w.shape[1]
    empty = np.zeros(0, x.dtype)  # no bias, or no scale
    bias = empty if bias is None else np.ascontiguousarray(bias)
    scale = empty if scale is None else np.ascontiguousarray(scale)
    out = np.empty((x.shape[0], N), x.dtype)
    parallel = w.nbytes >= PARALLEL_BYTES  # else on the calling thread (on_one_thread)
    if transposed:
        (_gemv_rows if parallel else _gemv_rows_1)(x, w, bias, scale, out)
    else:
        (_gemv_columns if parallel else _gemv_columns_1)(x, w, bias, scale, out, get_num_threads() if parallel else 1)
    return out


@njit(parallel=True, **KERNEL)
def _gemv_columns(x, w, bias, scale, out, nparts):  # layout 1: w (K, N)
    M, K = x.shape
    N = w.shape[1]
    partial = np.zeros((nparts, M, N), out.dtype)  # each part's sum over its stretch of k
    for part in prange(nparts):
        for k in range(part * K // nparts, (part + 1) * K // nparts):
            wk = w[k]                   # a whole contiguous row: memory is read front to back
            for i in range(M):
                a, acc = x[i, k], partial[part, i]
                for j in range(N):      # vectorized along j; acc (N floats) stays in L1
                    acc[j] += a * widen(wk[j])
    for i in range(M):                  # add the parts up, then the scale and the bias
        orow = out[i]
        orow[:] = partial[0, i]
        for part in range(1, nparts):
            prow = partial[part, i]
            for j in range(N):
                orow[j] += prow[j]
        if scale.size:
            for j in range(N):
                orow[j] *= scale[j]
        if bias.size:
            for j in range(N):
                orow[j] += bias[j]


@njit(parallel=True, **KERNEL)
def _gemv_rows(x, w, bias, scale, out):  # layout 2: w (N, K), a dot product per output
    M, K = x.shape
    N = w.shape[0]
    for block in prange((N + BLOCK - 1) // BLOCK):
        for n in range(block * BLOCK, min(N, (block + 1) * BLOCK)):
            wn = w[n]
            for m in range(M):
                xm = x[m]
                acc = x.dtype.type(0)
                for k in range(K):  # vectorized: `reassoc` lets LLVM split the sum over SIMD lanes
                    acc += xm[k] * widen(wn[k])
                if scale.size:
                    acc *= scale[n]
                if bias.size:
                    acc += bias[n]
                out[m, n] = acc


_gemv_columns_1, _gemv_rows_1 = on_one_thread(_gemv_columns), on_one_thread(_gemv_rows)
