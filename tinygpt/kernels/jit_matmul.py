"""A hand-written matrix multiply in numba: C = A @ B, float32 (or float64), 2-D or batched 3-D.

The shape of the algorithm is the classic one of BLAS libraries (Goto's, BLIS), simplified:

1. Pack B once into panels of NB columns: panel p is the (K, NB) block B[:, p*NB:(p+1)*NB],
   contiguous and zero-padded, so the inner loop reads it with unit stride.
2. Split the rows of C across cores (prange). For each block of MR = 4 rows, pack those rows
   of A (K, MR) and compute the (MR, NB) tile of C against each panel in turn.
3. The tile kernel (`_tile`) is where the time goes. It walks K four steps at a time; for each
   step it loads a 4x4 block of A into sixteen scalars (`a00`..`a33`) and then sweeps the NB
   columns, doing 16 multiply-adds per column:

       c[r, j] += a[r, k] b[k, j] + a[r, k+1] b[k+1, j] + a[r, k+2] b[k+2, j] + a[r, k+3] b[k+3, j]

   LLVM vectorizes the sweep along j (16 float32 lanes per AVX-512 register) and keeps the
   sixteen A values in registers as broadcasts: per 16 columns it does 16 vector FMAs for 4
   loads of B and 4 loads + 4 stores of the C tile. The tile lives in a stack array
   (`stack_empty`), so LLVM can prove it does not overlap B and needs no runtime checks.

Zero padding does all the edge handling: A's last row block, B's last panel and K are padded
to multiples of MR, NB and KU with zeros, so there is a single code path, and only the valid
part of a tile is written back. Transposed inputs (views such as `w.T`) are read in the packing
step, so they cost nothing extra. What this module leaves out: BLAS's hand-written assembly,
prefetching, and a K-blocking level (K is at most a few thousand in a GPT of this size).
"""
import numpy as np
from numba import get_num_threads, njit, prange

from . import reference as ref
from .jit_math import stack_empty

MR, KU, NB = 6, 4, 64     # tile rows, K steps per sweep, tile columns (4 AVX-512 registers of float32)
TILE = MR * NB
NC = 8                    # panels (NC * NB columns of B) kept hot in L2 while A streams past them
SUM = {"contract", "reassoc"}  # FMAs, and sums in any order (float32 tolerance: ~K eps)
KERNEL = dict(cache=True, error_model="numpy", fastmath=SUM)


def matmul(a, b, out=None):
    """(M, K) @ (K, N) -> (M, N), or (B, M, K) @ (B, K, N) -> (B, M, N)."""
    a, b = ref.check_matmul(a, b, out)
    batched = a.ndim == 3
    a3, ta = _rows(a if batched else a[None])
    b3, tb = _rows(b if batched else b[None])
    shape = a.shape[:-1] + b.shape[-1:]
    c = out if out is not None and out.flags.c_contiguous else np.empty(shape, a.dtype)
    _matmul(a3, ta, b3, tb, c.reshape((-1,) + shape[-2:]), get_num_threads())
    if out is not None and c is not out:
        out[...] = c
        return out
    return c


def prefer_blas(M, K, N):
    """True where np.matmul (OpenBLAS) beats `matmul` on this machine; see bench_kernels.py."""
    return False


def _rows(x):
    """x as a C-contiguous (B, R, S) array plus `transposed`: True if it holds x's last two axes
    swapped (x was a transposed view, like w.T), so the packing step reads it the other way."""
    if x.flags.c_contiguous:
        return x, False
    xt = np.swapaxes(x, -1, -2)
    if xt.flags.c_contiguous:
        return xt, True
    return np.ascontiguousarray(x), False


@njit(parallel=True, **KERNEL)
def _matmul(a, ta, b, tb, c, nthreads):
    nbatch, M, N = c.shape
    K = a.shape[1] if ta else a.shape[2]
    K4 = (K + KU - 1) // KU * KU
    npanels, mblocks = (N + NB - 1) // NB, (M + MR - 1) // MR
    bp = np.empty((nbatch, npanels, K4, NB), c.dtype)   # packed B, one (K4, NB) panel at a time
    for t in prange(nbatch * npanels):
        _pack_b(b[t // npanels], tb, (t % npanels) * NB, bp[t // npanels, t % npanels])
    items = nbatch * mblocks                              # (batch, block of MR rows) pairs
    for p0 in range(0, npanels, NC):                      # a group of panels stays in L2 ...
        for t in prange(nthreads):                        # ... while each core streams its rows
            ap = np.empty((K4, MR), c.dtype)
            for item in range(t * items // nthreads, (t + 1) * items // nthreads):
                bi, i0 = item // mblocks, (item % mblocks) * MR
                _pack_a(a[bi], ta, i0, ap)
                for p in range(p0, min(p0 + NC, npanels)):
                    _tile(ap, bp[bi, p], c[bi], i0, p * NB)


@njit(**KERNEL)
def _pack_b(b, transposed, j0, panel):
    """panel[k, j] = B[k, j0 + j], zero outside B. b is B, or B^T (N, K) if `transposed`."""
    K, N = (b.shape[1], b.shape[0]) if transposed else (b.shape[0], b.shape[1])
    nr = min(NB, N - j0)
    panel[:] = 0
    if transposed:
        for j in range(nr):
            for k in range(K):
                panel[k, j] = b[j0 + j, k]
    else:
        for k in range(K):
            for j in range(nr):
                panel[k, j] = b[k, j0 + j]


@njit(**KERNEL)
def _pack_a(a, transposed, i0, ap):
    """ap[k, r] = A[i0 + r, k], zero outside A. a is A, or A^T (K, M) if `transposed`."""
    K, M = (a.shape[0], a.shape[1]) if transposed else (a.shape[1], a.shape[0])
    mr = min(MR, M - i0)
    ap[:] = 0
    for r in range(mr):
        for k in range(K):
            ap[k, r] = a[k, i0 + r] if transposed else a[i0 + r, k]


@njit(**KERNEL)
def _tile(ap, panel, c, i0, j0):
    """c[i0:i0+MR, j0:j0+NB] = A rows (packed in ap) @ panel, writing only the part inside c."""
    ct = stack_empty(TILE, c.dtype)  # the (MR, NB) tile, row r at ct[r*NB : (r+1)*NB]
    ct[:] = 0
    gemm6(ap.T, panel, ct, NB, NB, ap.shape[0])
    M, N = c.shape
    for r in range(min(MR, M - i0)):
        for j in range(min(NB, N - j0)):
            c[i0 + r, j0 + j] = ct[r * NB + j]


@njit(inline="always", **KERNEL)
def gemm6(a, b, c, ldc, n, kk):
    """c[r*ldc + j] += sum over k < kk of a[r, k] b[k, j], for the MR = 6 rows r and j < n.

    The micro-kernel shared by matmul and attention. kk must be a multiple of KU (callers
    zero-pad). a is any 2-D view (a transposed one too); b has contiguous rows; c is a 1-D stack
    array (stack_empty) and ldc a constant. Inlined into its caller, so that LLVM sees all that,
    proves c cannot overlap b, and vectorizes the j loop without runtime checks.
    subtle: the innermost index must be the loop counter j itself: numba wraps negative indices,
    and for a computed index like b[q + j] LLVM cannot rule that out; the select it keeps turns
    the vector loads into gathers, 4x slower.
    """
    for k in range(0, kk, KU):
        # a<row><step>: the 6 x 4 block of A, held in registers as broadcasts
        a00, a01, a02, a03 = a[0, k], a[0, k + 1], a[0, k + 2], a[0, k + 3]
        a10, a11, a12, a13 = a[1, k], a[1, k + 1], a[1, k + 2], a[1, k + 3]
        a20, a21, a22, a23 = a[2, k], a[2, k + 1], a[2, k + 2], a[2, k + 3]
        a30, a31, a32, a33 = a[3, k], a[3, k + 1], a[3, k + 2], a[3, k + 3]
        a40, a41, a42, a43 = a[4, k], a[4, k + 1], a[4, k + 2], a[4, k + 3]
        a50, a51, a52, a53 = a[5, k], a[5, k + 1], a[5, k + 2], a[5, k + 3]
        for j in range(n):  # vectorized by LLVM along j
            b0, b1, b2, b3 = b[k, j], b[k + 1, j], b[k + 2, j], b[k + 3, j]
            c[j] += a00 * b0 + a01 * b1 + a02 * b2 + a03 * b3
            c[ldc + j] += a10 * b0 + a11 * b1 + a12 * b2 + a13 * b3
            c[2 * ldc + j] += a20 * b0 + a21 * b1 + a22 * b2 + a23 * b3
            c[3 * ldc + j] += a30 * b0 + a31 * b1 + a32 * b2 + a33 * b3
            c[4 * ldc + j] += a40 * b0 + a41 * b1 + a42 * b2 + a43 * b3
            c[5 * ldc + j] += a50 * b0 + a51 * b1 + a52 * b2 + a53 * b3
