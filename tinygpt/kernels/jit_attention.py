"""Fused causal attention in numba, flash-attention style: never a (T, T) matrix per head.

Forward, for each head and each block of BR = 24 query rows, one pass over the keys in blocks
of BC = 48 (Dao et al., FlashAttention, 2022):

    s = (scale q) k^T           (BR, BC) scores, on the stack
    mask                        keys j > i + (Tk - Tq) get probability 0
    online softmax              m = running row max, l = running sum of exp(s - m); when m grows,
                                the output so far is rescaled by alpha = exp(m_old - m_new)
    o += exp(s - m) v           (BR, hs), unnormalized
  then out = o / l and lse = m + log(l): the only things kept for the backward.

Backward, for each head and each block of BC keys (FlashAttention-2's order: the key block's
dk and dv stay on the stack while the query blocks stream past), with D_i = rowsum(dout * out):

    p  = exp(s - lse)           recomputed from lse, not stored
    dv += p^T dout              dp = dout v^T
    ds = p * (dp - D)           (softmax backward; D_i = sum_j p_ij dp_ij)
    dq += ds k                  dk += ds^T (scale q)        and finally dq *= scale

Every product above is a call of the matmul micro-kernel (`gemm6_into`) on blocks padded with
zeros: per head, q, k, v, dout are packed once into buffers whose rows and columns are padded to
the block sizes (zeros change no product, and padded keys are masked). The packing reads the
inputs through their strides, so the model's q, k, v views are taken as they are, without
copies (see _heads_major). Heads are split across cores (prange); each core owns whole heads,
so dk and dv need no locking.
A decode step (Tq = 1) would fill one row of each 24-row block: `_forward_one_query` instead takes
each head's one query as dot products with the keys, a softmax and a weighted sum of the values.
What this leaves out: splitting one head across cores (B * nh < cores leaves a core idle), and
head sizes above HSMAX = 128 (those use the NumPy reference). Inputs arrive checked (checks.py).
"""
import numpy as np
from numba import get_num_threads, njit, prange

from . import reference as ref
from .jit_math import LANES, PARALLEL_BYTES, exp_le0, on_one_thread, row_dot, row_max, stack_empty
from .jit_matmul import MR, gemm6_into

BR, BC = 4 * MR, 8 * MR   # query rows and keys per block (24, 48): multiples of MR and of KU;
                          # 24 rows, not 12: fewer, longer dk and dv products in the backward (BENCHMARKS.md)
HSMAX = 128               # largest head size handled here (the output block is on the stack)
S_TILE, O_TILE, L_TILE = BR * BC, BR * HSMAX, BR * LANES  # stack array sizes (must be constants)
KERNEL = dict(cache=True, error_model="numpy", fastmath={"contract"})  # no reassoc: exp_le0


def attention_forward(q, k, v, causal=True):
    if q.shape[3] > HSMAX:
        return ref.attention_forward(q, k, v, causal)
    out, lse = _heads_major(q.shape, q.dtype), np.empty(q.shape[:3], q.dtype)
    if q.shape[2] == 1:  # a decode step: it sees every key, so `causal` changes nothing
        kernel = _forward_one_query if k.nbytes + v.nbytes >= PARALLEL_BYTES else _forward_one_query_1
        kernel(q, k, v, out, lse)
        return out, lse
    _forward(q, k, v, causal, out, lse, get_num_threads())
    return out, lse


def attention_backward(q, k, v, out, lse, dout, causal=True):
    if q.shape[3] > HSMAX:
        return ref.attention_backward(q, k, v, out, lse, dout, causal)
    dq, dk, dv = _heads_major(q.shape, q.dtype), _heads_major(k.shape, k.dtype), _heads_major(v.shape, v.dtype)
    _backward(q, k, v, out, dout, lse, causal, dq, dk, dv, get_num_threads())
    return dq, dk, dv


def _heads_major(shape, dtype):
    """An empty (B, nh, T, hs) array laid out in memory as (B, T, nh, hs).

    The kernels read and write every array through its strides (they pack each head into their
    own buffers anyway), so they take the model's q, k, v as they come: (B, nh, T, hs) views of
    the (B, T, 3C) output of c_attn, not copies. Results come in this layout because the model
    turns them back into (B, T, C) = (B, T, nh * hs) heads side by side, which is then a
    reshape without a copy (functional.self_attention, forward and backward).
    """
    B, nh, T, hs = shape
    return np.empty((B, T, nh, hs), dtype).transpose(0, 2, 1, 3)


@njit(**KERNEL)
def _visible(i, Tk, offset, causal):
    """How many keys query row i sees: keys j < this (bottom-right aligned causal mask)."""
    return min(Tk, i + offset + 1) if causal else Tk


@njit(**KERNEL)
def _pad(n, block):
    return (n + block - 1) // block * block


@njit(**KERNEL)
def _pack_rows(x, dst, scale):
    """dst[:T, :hs] = scale * x; the padding of dst stays zero."""
    for i in range(x.shape[0]):
        for d in range(x.shape[1]):
            dst[i, d] = scale * x[i, d]


@njit(**KERNEL)
def _pack_transposed(x, dst):
    """dst[b, d, j] = x[b * BC + j, d]: x^T cut into (hs, BC) key blocks."""
    for i in range(x.shape[0]):
        for d in range(x.shape[1]):
            dst[i // BC, d, i % BC] = x[i, d]


# ---------------------------------------------------------------------------------------- forward

@njit(parallel=True, **KERNEL)
def _forward(q, k, v, causal, out, lse, nthreads):  # q, out (B, nh, Tq, hs), k, v (B, nh, Tk, hs), any strides
    BH = q.shape[0] * q.shape[1]
    for t in prange(nthreads):   # each core takes whole heads
        _forward_heads(q, k, v, causal, t * BH // nthreads, (t + 1) * BH // nthreads, out, lse)


@njit(**KERNEL)
def _forward_heads(q, k, v, causal, h0, h1, out, lse):
    """Heads h0 .. h1 (counted over B * nh): pack each one (scaled q, k^T in key blocks, v),
    then its query blocks."""
    nh, Tq, hs, Tk = q.shape[1], q.shape[2], q.shape[3], k.shape[2]
    HSP, TQP, TKP = _pad(hs, 16), _pad(Tq, BR), _pad(Tk, BC)
    qp, vp = np.zeros((TQP, HSP), q.dtype), np.zeros((TKP, HSP), q.dtype)
    kt = np.zeros((TKP // BC, HSP, BC), q.dtype)
    for h in range(h0, h1):
        b, hh = h // nh, h % nh
        _pack_rows(q[b, hh], qp, q.dtype.type(1 / np.sqrt(hs)))
        _pack_rows(v[b, hh], vp, q.dtype.type(1))
        _pack_transposed(k[b, hh], kt)
        for i0 in range(0, Tq, BR):
            _forward_block(qp, kt, vp, out[b, hh], lse[b, hh], i0, Tk, Tk - Tq, causal)


@njit(**KERNEL)
def _forward_block(qp, kt, vp, out, lse, i0, Tk, offset, causal):
    """Query rows i0 .. i0 + BR of one head, against all the keys they see."""
    HSP, one = qp.shape[1], qp.dtype.type(1)
    s = stack_empty(S_TILE, qp.dtype).reshape((BR, BC))     # scores, then probabilities
    o = stack_empty(O_TILE, qp.dtype).reshape((BR, HSMAX))  # unnormalized output
    m = stack_empty(BR, qp.dtype)                           # running row max
    l = stack_empty(L_TILE, qp.dtype).reshape((BR, LANES))  # running row sum, one per SIMD lane
    o[:] = 0
    m[:] = -np.inf
    l[:] = 0
    seen = _visible(i0 + BR - 1, Tk, offset, causal)   # keys the block's last row sees
    for j0 in range(0, seen, BC):
        for g in range(0, BR, MR):
            gemm6_into(qp[i0 + g:i0 + g + MR], kt[j0 // BC], BC, HSP, s[g:g + MR], False)
        for r in range(BR):
            row, lr, orow = s[r], l[r], o[r]
            row[max(_visible(i0 + r, Tk, offset, causal) - j0, 0):] = -np.inf   # the mask
            m_new = max(m[r], row_max(row, BC, one))  # finite: every row sees key 0
            alpha = exp_le0(m[r] - m_new)   # 0 on the first block, where m[r] = -inf
            # row = exp(row - m_new), and l = l alpha + sum(row), kept lane by lane: SIMD adds
            # without `reassoc`, and one horizontal sum per row at the very end instead of one
            # per key block. Loops of constant length LANES: each is one vector instruction.
            for u in range(LANES):
                lr[u] *= alpha
            for c in range(0, BC, LANES):
                seg = row[c:c + LANES]
                for u in range(LANES):
                    seg[u] = exp_le0(seg[u] - m_new)
                    lr[u] += seg[u]
            m[r] = m_new
            if alpha != one:
                for d in range(HSP):
                    orow[d] *= alpha
        for g in range(0, BR, MR):
            gemm6_into(s[g:g + MR], vp[j0:j0 + BC], HSP, BC, o[g:g + MR], True)
    for r in range(min(BR, out.shape[0] - i0)):
        total = qp.dtype.type(0)
        for u in range(LANES):
            total += l[r, u]
        for d in range(out.shape[1]):
            out[i0 + r, d] = o[r, d] / total
        lse[i0 + r] = m[r] + np.log(total)


@njit(parallel=True, **KERNEL)
def _forward_one_query(q, k, v, out, lse):  # q, out (B, nh, 1, hs), k, v (B, nh, Tk, hs), any strides
    """s_j = q . k_j / sqrt(hs), p = softmax(s), out = sum_j p_j v_j, for each head (prange)."""
    B, nh, Tk, hs = k.shape
    scale = q.dtype.type(1 / np.sqrt(hs))
    for h in prange(B * nh):
        b, hh = h // nh, h % nh
        # a head's rows are contiguous in the cache (whatever the strides between heads):
        # ascontiguousarray checks that at run time and copies only if they are not, and the
        # loops below, on arrays typed contiguous, vectorize
        qh, kh, vh = np.ascontiguousarray(q[b, hh, 0]), np.ascontiguousarray(k[b, hh]), np.ascontiguousarray(v[b, hh])
        s = np.empty(Tk, q.dtype)
        for j in range(Tk):
            s[j] = scale * row_dot(qh, kh[j], hs)
        m = row_max(s, Tk, q.dtype.type(1))
        o = np.zeros(hs, q.dtype)
        total = q.dtype.type(0)
        for j in range(Tk):
            p = exp_le0(s[j] - m)   # unnormalized; divided by the total at the end
            total += p
            vj = vh[j]
            for d in range(hs):
                o[d] += p * vj[d]
        for d in range(hs):
            out[b, hh, 0, d] = o[d] / total
        lse[b, hh, 0] = m + np.log(total)


_forward_one_query_1 = on_one_thread(_forward_one_query)


# ---------------------------------------------------------------------------------------- backward

@njit(parallel=True, **KERNEL)
def _backward(q, k, v, out, dout, lse, causal, dq, dk, dv, nthreads):  # all (B, nh, T, hs), any strides
    BH = q.shape[0] * q.shape[1]
    for t in prange(nthreads):   # each core takes whole heads, so dk and dv need no locks
        h0, h1 = t * BH // nthreads, (t + 1) * BH // nthreads
        _backward_heads(q, k, v, out, dout, lse, causal, h0, h1, dq, dk, dv)


@njit(**KERNEL)
def _backward_heads(q, k, v, out, dout, lse, causal, h0, h1, dq, dk, dv):
    """Heads h0 .. h1 (counted over B * nh): pack each one, then its key blocks; dq, dk, dv
    accumulate in padded buffers."""
    nh, Tq, hs, Tk = q.shape[1], q.shape[2], q.shape[3], k.shape[2]
    HSP, TQP, TKP = _pad(hs, 16), _pad(Tq, BR), _pad(Tk, BC)
    scale, one = q.dtype.type(1 / np.sqrt(hs)), q.dtype.type(1)
    qp, dop, dqp = np.zeros((TQP, HSP), q.dtype), np.zeros((TQP, HSP), q.dtype), np.zeros((TQP, HSP), q.dtype)
    kp, dkp, dvp = np.zeros((TKP, HSP), q.dtype), np.zeros((TKP, HSP), q.dtype), np.zeros((TKP, HSP), q.dtype)
    kt, vt = np.zeros((TKP // BC, HSP, BC), q.dtype), np.zeros((TKP // BC, HSP, BC), q.dtype)
    lsep, D = np.zeros(TQP, q.dtype), np.zeros(TQP, q.dtype)
    for h in range(h0, h1):
        b, hh = h // nh, h % nh
        _pack_rows(q[b, hh], qp, scale)
        _pack_rows(dout[b, hh], dop, one)
        _pack_rows(k[b, hh], kp, one)
        _pack_transposed(k[b, hh], kt)
        _pack_transposed(v[b, hh], vt)
        for i in range(Tq):
            lsep[i], D[i] = lse[b, hh, i], row_dot(dout[b, hh, i], out[b, hh, i], hs)   # D_i = rowsum(dout * out)
        dqp[:] = 0
        dkp[:] = 0
        dvp[:] = 0
        for j0 in range(0, Tk, BC):
            _backward_block(qp, dop, kp, kt, vt, lsep, D, dqp, dkp, dvp, j0, Tq, Tk, causal)
        for i in range(Tq):
            for d in range(hs):
                dq[b, hh, i, d] = scale * dqp[i, d]
        for j in range(Tk):
            for d in range(hs):
                dk[b, hh, j, d], dv[b, hh, j, d] = dkp[j, d], dvp[j, d]


@njit(**KERNEL)
def _backward_block(qp, dop, kp, kt, vt, lse, D, dqp, dkp, dvp, j0, Tq, Tk, causal):
    """Keys j0 .. j0 + BC of one head, against all the query blocks that see them."""
    HSP, offset = qp.shape[1], Tk - Tq
    p = stack_empty(S_TILE, qp.dtype).reshape((BR, BC))    # probabilities
    ds = stack_empty(S_TILE, qp.dtype).reshape((BR, BC))   # dp, then ds
    first = max(0, j0 - offset) // BR * BR if causal else 0   # earlier queries see none of these keys
    for i0 in range(first, Tq, BR):
        for g in range(0, BR, MR):
            gemm6_into(qp[i0 + g:i0 + g + MR], kt[j0 // BC], BC, HSP, p[g:g + MR], False)
            gemm6_into(dop[i0 + g:i0 + g + MR], vt[j0 // BC], BC, HSP, ds[g:g + MR], False)
        for r in range(BR):
            prow, dsrow, l, d = p[r], ds[r], lse[i0 + r], D[i0 + r]
            prow[max(_visible(i0 + r, Tk, offset, causal) - j0, 0):] = -np.inf   # the mask
            for j in range(BC):
                prow[j] = exp_le0(prow[j] - l)
                dsrow[j] = prow[j] * (dsrow[j] - d)
        for g in range(0, BR, MR):   # dq += ds k
            gemm6_into(ds[g:g + MR], kp[j0:j0 + BC], HSP, BC, dqp[i0 + g:i0 + g + MR], True)
        for g in range(0, BC, MR):   # dv += p^T dout and dk += ds^T (scale q), MR keys at a time
            gemm6_into(p.T[g:g + MR], dop[i0:i0 + BR], HSP, BR, dvp[j0 + g:j0 + g + MR], True)
            gemm6_into(ds.T[g:g + MR], qp[i0:i0 + BR], HSP, BR, dkp[j0 + g:j0 + g + MR], True)
