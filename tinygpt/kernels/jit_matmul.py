"""A hand-written matrix multiply in numba: C = A @ B, float32 (or float64), 2-D or batched 3-D.

The shape of the algorithm is the classic one of BLAS libraries (Goto's, BLIS), simplified:

1. Pack B once into panels of NB = 64 columns: panel p is the (K, NB) block B[:, p*NB:(p+1)*NB],
   contiguous and zero-padded, so the inner loop reads it with unit stride.
2. Split the rows of C across cores (prange). For each block of MR = 6 rows of A (read in
   place; packed with zero padding only at the edges), compute the (MR, NB) tile of C against
   each panel in turn.
3. The micro-kernel (`gemm6`) is where the time goes. It walks K four steps at a time; for each
   step it loads a 6 x 4 block of A into 24 scalars (`a00`..`a53`), then sweeps the NB columns:

       c[r, j] += a[r, k] b[k, j] + a[r, k+1] b[k+1, j] + a[r, k+2] b[k+2, j] + a[r, k+3] b[k+3, j]

   LLVM vectorizes the sweep along j (16 float32 lanes per AVX-512 register). In `_tile`, where
   the sweep is the constant NB = 64 columns, it goes further: it unrolls the sweep into 4
   registers a row and keeps the whole 6 x 64 tile of C in 24 zmm registers for the entire K
   loop, so each step of k is 6 broadcasts of A, 4 loads of B and 24 FMAs, with no load or
   store of C (read `_tile.inspect_asm()`). That is the register blocking of a BLAS
   micro-kernel, obtained from plain loops; six rows by four steps is the fastest such tile
   (BENCHMARKS.md). The tile lives in a stack array (`stack_empty`), so LLVM proves it does not
   overlap B: no runtime checks.

Cache blocking: B is packed NC = 8 panels (512 columns) at a time, and for K > KC = 512 the
product is summed over K blocks, so the panels in use (KC x 512 floats, 1 MB) stay in L2 while
the rows of A stream past; one 6-row block of A (KC x 6) sits in L1.

Zero padding does the edge handling: B's last panel and K are padded to multiples of NB and KU
with zeros, A's last row block is packed with zeros, and only the valid part of a tile is written
back. Transposed inputs (views such as `w.T`) are read through their strides while packing B or
loading A's scalars, so they cost no copy. jit_attention.py runs `gemm6` on its blocks too.
What it leaves out: BLAS's hand-written assembly and prefetching, and packing A (how close it
comes to OpenBLAS all the same: BENCHMARKS.md). Inputs arrive checked (checks.py).
"""
import numpy as np
from numba import get_num_threads, njit, prange

from .jit_math import stack_empty

MR, KU, NB = 6, 4, 64     # tile rows, K steps per sweep, tile columns (4 AVX-512 registers of float32)
TMAX = 128                # widest block gemm6_into computes
TILE, T_TILE = MR * NB, MR * TMAX
NC, KC = 8, 512          # panels packed at a time, and the K block: NC panels of KC rows are 1 MB (L2)
SWAP_M = 384              # products of at most this many rows, fewer than K and N, run transposed (see matmul)
SUM = {"contract", "reassoc"}  # FMAs, and sums in any order (float32 tolerance: ~K eps)
KERNEL = dict(cache=True, error_model="numpy", fastmath=SUM)


def matmul(a, b, out=None, bias=None, accumulate=False):
    """(M, K) @ (K, N) -> (M, N), or (B, M, K) @ (B, K, N) -> (B, M, N); plus bias (N,) on every
    row, added while each tile of C is written out (no second pass over C). With `accumulate`,
    the tiles are added into `out` instead (out += a @ b)."""
    M, K = a.shape[-2:]
    N = b.shape[-1]
    if K == 0:  # an empty sum is 0: the tile loops below would write nothing at all
        c = np.zeros(a.shape[:-1] + (N,), a.dtype) + (0 if bias is None else bias)
        if out is None:
            return c
        out[...] = out + c if accumulate else c
        return out
    if a.ndim == 2 and M <= SWAP_M and M < min(N, K):
        # Few rows, fewer than both other sides (a prompt's forward, a GPT-2 step's products at
        # T = 128, the weight gradients x^T dy of narrow layers): packing B, K x N, costs more
        # than the M rows that reuse it save, and M rows split poorly across cores. So compute
        # C^T = B^T A^T, which packs the smaller A instead and splits the N rows of C^T (both
        # transposes are views; it pays only in this corner: BENCHMARKS.md). C^T is then
        # transposed into `out` in blocks (bias or accumulate on the way), not written through
        # out.T's strides, which can map a tile's 64 rows of C to a few cache sets.
        ct = _product(b.T, a.T, None, None, False)  # (N, M)
        if out is None:
            out = np.empty((M, N), a.dtype)
        _transpose_into(ct, out, np.zeros(0, a.dtype) if bias is None else bias, accumulate)
        return out
    return _product(a, b, out, bias, accumulate)


def _product(a, b, out, bias, accumulate):
    batched = a.ndim == 3
    a3, ta = _rows(a if batched else a[None])
    b3, tb = _rows(b if batched else b[None])
    shape = a.shape[:-1] + b.shape[-1:]
    if out is None:
        c = np.empty(shape, a.dtype)
    elif out.flags.c_contiguous:
        c = out
    else:  # a view: compute into a buffer, then copy
        c = out.copy() if accumulate else np.empty(shape, a.dtype)
    bias = np.zeros(0, a.dtype) if bias is None else np.ascontiguousarray(bias)  # empty: no bias
    _matmul(a3, ta, b3, tb, c if batched else c[None], bias, accumulate, get_num_threads())
    if out is not None and c is not out:
        out[...] = c
        return out
    return c


def prefer_blas(M, K, N):
    """Whether np.matmul (OpenBLAS) should do this (M, K) @ (K, N) product instead of `matmul`.

    On its own, OpenBLAS is faster at most shapes (its kernels are hand-written assembly), and
    most of all at few rows, where packing B costs more than the product. But its worker threads
    spin after each call, and the next parallel numba kernel then fights them for the cores,
    which costs more than OpenBLAS saved (BENCHMARKS.md). So OpenBLAS gets only what it runs on
    one thread: M K N < 2^18, its threading threshold. (Generation's products of a few rows run
    kernels.gemv instead: functional.GEMV_ROWS.)
    """
    return M * K * N < 1 << 18


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
def _matmul(a, ta, b, tb, c, bias, accumulate, nthreads):
    nbatch, M, N = c.shape
    K = a.shape[1] if ta else a.shape[2]
    K4 = (K + KU - 1) // KU * KU
    npanels, mblocks = (N + NB - 1) // NB, (M + MR - 1) // MR
    items = nbatch * mblocks                              # (batch, block of MR rows) pairs
    bp = np.empty((nbatch, NC, K4, NB), c.dtype)          # packed B: one group of NC panels
    for p0 in range(0, npanels, NC):                      # a group of panels stays in L2 ...
        group = min(NC, npanels - p0)
        for t in prange(nbatch * group):
            _pack_b(b[t // group], tb, (p0 + t % group) * NB, bp[t // group, t % group])
        for t in prange(nthreads):                        # ... while each core does its rows
            ap = np.empty((KC, MR), c.dtype)
            for k0 in range(0, K4, KC):                   # K blocks, for large K only
                kc = min(KC, K4 - k0)
                add = k0 > 0 or accumulate
                tile_bias = bias if k0 == 0 else bias[:0]  # the bias once, with the first K block
                for item in range(t * items // nthreads, (t + 1) * items // nthreads):
                    bi, i0 = item // mblocks, (item % mblocks) * MR
                    if K == K4 and i0 + MR <= M:          # a whole block of A: read it in place
                        for p in range(group):
                            blk = a[bi, k0:k0 + kc, i0:i0 + MR].T if ta else a[bi, i0:i0 + MR, k0:k0 + kc]
                            _tile(blk, bp[bi, p, k0:k0 + kc], c[bi], i0, (p0 + p) * NB, add, tile_bias)
                    else:                                 # an edge: pack it, zero-padded
                        _pack_a(a[bi], ta, i0, k0, ap[:kc])
                        for p in range(group):
                            _tile(ap[:kc].T, bp[bi, p, k0:k0 + kc], c[bi], i0, (p0 + p) * NB, add, tile_bias)


@njit(parallel=True, **KERNEL)
def _transpose_into(src, dst, bias, accumulate):
    """dst (M, N) = src (N, M)^T + bias (or +=, if `accumulate`), in 16 x 16 blocks: a block's
    16 rows of src and 16 rows of dst stay in L1, where NumPy's ascontiguousarray(src.T) goes
    row by row of dst (BENCHMARKS.md)."""
    M, N = dst.shape
    for ib in prange((M + 15) // 16):
        i0 = ib * 16
        mi = min(16, M - i0)
        for j0 in range(0, N, 16):
            nj = min(16, N - j0)
            blk, out = src[j0:j0 + nj, i0:i0 + mi], dst[i0:i0 + mi, j0:j0 + nj]
            if accumulate:
                for i in range(mi):
                    for j in range(nj):
                        out[i, j] += blk[j, i]
            else:
                for i in range(mi):
                    for j in range(nj):
                        out[i, j] = blk[j, i]
            if bias.size:
                b = bias[j0:j0 + nj]
                for i in range(mi):
                    for j in range(nj):
                        out[i, j] += b[j]


@njit(**KERNEL)
def _pack_b(b, transposed, j0, panel):
    """panel[k, j] = B[k, j0 + j], zero outside B. b is B, or B^T (N, K) if `transposed`."""
    K, N = (b.shape[1], b.shape[0]) if transposed else (b.shape[0], b.shape[1])
    nr = min(NB, N - j0)
    panel[K:] = 0              # the padding only: zeroing the whole panel would double the stores
    if nr < NB:
        panel[:, nr:] = 0
    if transposed:  # a transpose, 16 rows of the panel at a time (they stay in L1 while j sweeps)
        for k0 in range(0, K, 16):
            kn = min(16, K - k0)
            for j in range(nr):
                row = b[j0 + j, k0:k0 + kn]
                for k in range(kn):
                    panel[k0 + k, j] = row[k]
    else:
        for k in range(K):
            for j in range(nr):
                panel[k, j] = b[k, j0 + j]


@njit(**KERNEL)
def _pack_a(a, transposed, i0, k0, ap):
    """ap[k, r] = A[i0 + r, k0 + k], zero outside A. a is A, or A^T (K, M) if `transposed`."""
    K, M = (a.shape[0], a.shape[1]) if transposed else (a.shape[1], a.shape[0])
    mr, kc = min(MR, M - i0), min(ap.shape[0], K - k0)
    ap[:] = 0
    for r in range(mr):
        for k in range(kc):
            ap[k, r] = a[k0 + k, i0 + r] if transposed else a[i0 + r, k0 + k]


@njit(**KERNEL)
def _tile(a, panel, c, i0, j0, accumulate, bias):
    """c[i0:i0+MR, j0:j0+NB] (+)= a (MR, kc) @ panel (kc, NB) (+ bias[j0:j0+NB], unless bias is
    empty), writing only the part inside c."""
    ct = stack_empty(TILE, c.dtype)  # the (MR, NB) tile, row r at ct[r*NB : (r+1)*NB]
    ct[:] = 0
    gemm6(a, panel, ct, NB, NB, panel.shape[0])
    M, N = c.shape
    n, m, brow = min(NB, N - j0), min(MR, M - i0), bias[j0:]
    for r in range(m):
        crow, trow = c[i0 + r, j0:], ct[r * NB:(r + 1) * NB]
        if bias.size:
            for j in range(n):
                trow[j] += brow[j]
        if accumulate:
            for j in range(n):
                crow[j] += trow[j]
        else:
            for j in range(n):
                crow[j] = trow[j]


@njit(**KERNEL)
def gemm6_into(a, b, n, kk, c, accumulate):
    """c[:MR, :n] = a[:MR, :kk] @ b[:kk, :n] (or +=, if `accumulate`), for any 2-D c; only the
    part of that block that lies inside c is written. n <= TMAX, kk a multiple of KU.

    The form attention uses: it is not inlined, so its call sites share one compiled copy
    (inlined, each would compile again, slowly). It runs `gemm6` into its own stack tile, then
    writes the tile out.
    """
    t = stack_empty(T_TILE, c.dtype)  # (MR, TMAX), row r at t[r*TMAX:]
    for r in range(MR):               # zero only the n columns in use
        t[r * TMAX:r * TMAX + n] = 0
    gemm6(a, b, t, TMAX, n, kk)
    for r in range(min(MR, c.shape[0])):
        crow, trow = c[r], t[r * TMAX:(r + 1) * TMAX]
        if accumulate:
            for j in range(min(n, c.shape[1])):
                crow[j] += trow[j]
        else:
            for j in range(min(n, c.shape[1])):
                crow[j] = trow[j]


@njit(inline="always", **KERNEL)
def gemm6(a, b, c, ldc, n, kk):
    """c[r*ldc + j] += sum over k < kk of a[r, k] b[k, j], for the MR = 6 rows r and j < n.

    The micro-kernel shared by matmul and attention. kk must be a multiple of KU (callers
    zero-pad). a is any 2-D view (a transposed one too); b has contiguous rows; c is a 1-D stack
    array (stack_empty) and ldc a constant. Inlined into its caller, so that LLVM sees all that,
    proves c cannot overlap b, and vectorizes the j loop without runtime checks.
    subtle: the innermost index must be the loop counter j itself: numba wraps negative indices,
    and for a computed index like b[q + j] LLVM cannot rule that out; the select it keeps turns
    the vector loads into gathers, which are slow.
    """
    for step in range(kk // KU):
        # subtle: unsigned indices. numba lets a signed index count from the end when negative,
        # so a signed a[r, k + 1] costs a compare and a select; an unsigned index cannot
        # be negative (BENCHMARKS.md).
        k = np.uint64(step * KU)
        k1, k2, k3 = k + np.uint64(1), k + np.uint64(2), k + np.uint64(3)
        # a<row><step>: the 6 x 4 block of A, held in registers as broadcasts
        a00, a01, a02, a03 = a[0, k], a[0, k1], a[0, k2], a[0, k3]
        a10, a11, a12, a13 = a[1, k], a[1, k1], a[1, k2], a[1, k3]
        a20, a21, a22, a23 = a[2, k], a[2, k1], a[2, k2], a[2, k3]
        a30, a31, a32, a33 = a[3, k], a[3, k1], a[3, k2], a[3, k3]
        a40, a41, a42, a43 = a[4, k], a[4, k1], a[4, k2], a[4, k3]
        a50, a51, a52, a53 = a[5, k], a[5, k1], a[5, k2], a[5, k3]
        for j in range(n):  # vectorized by LLVM along j
            b0, b1, b2, b3 = b[k, j], b[k1, j], b[k2, j], b[k3, j]
            c[j] += a00 * b0 + a01 * b1 + a02 * b2 + a03 * b3
            c[ldc + j] += a10 * b0 + a11 * b1 + a12 * b2 + a13 * b3
            c[2 * ldc + j] += a20 * b0 + a21 * b1 + a22 * b2 + a23 * b3
            c[3 * ldc + j] += a30 * b0 + a31 * b1 + a32 * b2 + a33 * b3
            c[4 * ldc + j] += a40 * b0 + a41 * b1 + a42 * b2 + a43 * b3
            c[5 * ldc + j] += a50 * b0 + a51 * b1 + a52 * b2 + a53 * b3
