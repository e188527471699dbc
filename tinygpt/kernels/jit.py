"""Numba kernels: the same names and signatures as reference.py, compiled to parallel SIMD code.

Every public function is a thin Python wrapper: it makes its inputs contiguous (they arrive
checked: checks.py, run by `tinygpt.kernels`) and calls an @njit core that loops over rows. The
cores fuse what NumPy does in several passes over memory (max, exp, sum, divide...) into one or
two passes over a row that sits in L1 cache, and split the rows across cores with `prange`.

This file holds the row-wise kernels (softmax, layer norm, the sum of rows, gelu, cross-entropy,
the embedding's backward, AdamW); matmul, attention and gemv have their own files (jit_matmul.py,
jit_attention.py, jit_gemv.py) and are re-exported here, so `jit` has exactly the names of `reference`.
"""
import numpy as np
from numba import get_num_threads, njit, prange

from . import reference as ref
from .jit_math import FEW_ROWS, exp_le0, on_one_thread, row_dot, row_max, row_sum, sigmoid_pair
from .jit_matmul import matmul, prefer_blas  # noqa: F401 (re-exported)
from .jit_attention import attention_backward, attention_forward  # noqa: F401 (re-exported)
from .jit_gemv import gemv  # noqa: F401 (re-exported)

# Compile options used throughout:
# - `cache=True`: compiled code is saved next to the source, so only the first run pays for it.
# - `error_model="numpy"`: x / 0 gives inf like NumPy instead of raising, which also removes the
#   zero check that would stop LLVM from vectorizing a loop with a division.
# - `fastmath=FMA`: a*b + c may be fused into one FMA instruction (rounded once: never less exact).
# - `fastmath=SUM` (FMA + `reassoc`) only in layer norm, whose loops are plain sums: it lets LLVM
#   reorder the additions across SIMD lanes (rounding changes by ~n eps: inside float32
#   tolerances, ~1e-14 in float64). subtle: never on code that calls exp_le0, whose range
#   reduction relies on the order of its operations; those kernels reduce rows with
#   jit_math's row_max / row_sum / row_dot, which vectorize without `reassoc`.
FMA = {"contract"}
SUM = {"contract", "reassoc"}
KERNEL = dict(cache=True, error_model="numpy", fastmath=FMA)

contiguous = np.ascontiguousarray


# ---------------------------------------------------------------------------------------- softmax

def softmax_forward(x, scale=1.0, causal=False):
    Tq, Tk = x.shape[-2:] if causal else (1, x.shape[-1])
    offset = Tk - Tq if causal else Tk  # row r (query r % Tq) sees keys j <= r % Tq + offset
    return _softmax_rows(contiguous(x).reshape(-1, x.shape[-1]), scale, Tq, offset).reshape(x.shape)


@njit(parallel=True, **KERNEL)
def _softmax_rows(x, scale, Tq, offset):  # x (R, C) -> y (R, C)
    R, C = x.shape
    y = np.empty_like(x)
    for r in prange(R):
        n = min(C, r % Tq + offset + 1)  # unmasked length of this row: 1 <= n <= C
        xr, yr = x[r], y[r]
        m = row_max(xr, n, scale)
        for j in range(n):               # pass 1: shifted exps (vectorized exp)
            yr[j] = exp_le0(scale * xr[j] - m)
        inv = yr.dtype.type(1) / row_sum(yr, n)
        for j in range(n):               # pass 2: normalize
            yr[j] *= inv
        yr[n:] = 0
    return y


def softmax_backward(y, dy, scale=1.0):
    C = y.shape[-1]
    dx = _softmax_backward_rows(contiguous(y).reshape(-1, C), contiguous(dy).reshape(-1, C), scale)
    return dx.reshape(y.shape)


@njit(parallel=True, **KERNEL)
def _softmax_backward_rows(y, dy, scale):  # dx = scale * y * (dy - sum(dy * y))
    dx = np.empty_like(y)
    for r in prange(y.shape[0]):
        d = row_dot(dy[r], y[r], y.shape[1])
        for j in range(y.shape[1]):
            dx[r, j] = scale * y[r, j] * (dy[r, j] - d)
    return dx


# ---------------------------------------------------------------------------------------- layer norm

def layer_norm_forward(x, weight, bias, eps=1e-5):
    kernel = _layer_norm_rows if x.shape[0] >= FEW_ROWS else _layer_norm_rows_1  # a decode step's one row: one thread
    return kernel(contiguous(x), contiguous(weight), contiguous(bias), eps)


@njit(parallel=True, cache=True, error_model="numpy", fastmath=SUM)
def _layer_norm_rows(x, w, b, eps):  # x (N, C) -> y (N, C), mean (N,), rstd (N,)
    N, C = x.shape
    y, mean, rstd = np.empty_like(x), np.empty(N, x.dtype), np.empty(N, x.dtype)
    one, inv_c = x.dtype.type(1), x.dtype.type(1 / C)  # subtle: a bare `1 / C` would make float32 math float64
    for r in prange(N):
        xr = x[r]
        mu = row_sum(xr, C) * inv_c
        var = x.dtype.type(0)
        for j in range(C):               # two passes (mean, then variance): no cancellation
            var += (xr[j] - mu) * (xr[j] - mu)
        rs = one / np.sqrt(var * inv_c + eps)
        for j in range(C):
            y[r, j] = (xr[j] - mu) * rs * w[j] + b[j]
        mean[r], rstd[r] = mu, rs
    return y, mean, rstd


_layer_norm_rows_1 = on_one_thread(_layer_norm_rows)


def layer_norm_backward(dy, x, weight, mean, rstd):
    return _layer_norm_backward_rows(contiguous(dy), contiguous(x), contiguous(weight), contiguous(mean),
                                     contiguous(rstd), get_num_threads())


@njit(parallel=True, cache=True, error_model="numpy", fastmath=SUM)
def _layer_norm_backward_rows(dy, x, w, mean, rstd, nchunks):
    # dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w, xhat = (x - mean) * rstd.
    # dweight and dbias sum over all rows: each chunk of rows sums into its own row of `partial`
    # (no two threads write the same memory), and the chunks are added at the end.
    N, C = x.shape
    dx = np.empty_like(x)
    partial = np.zeros((nchunks, 2, C), x.dtype)  # [chunk, (dweight, dbias), C]
    inv_c = x.dtype.type(1 / C)
    for c in prange(nchunks):
        for r in range(c * N // nchunks, (c + 1) * N // nchunks):
            mu, rs = mean[r], rstd[r]
            g_mean, gx_mean = x.dtype.type(0), x.dtype.type(0)
            for j in range(C):
                g = dy[r, j] * w[j]
                g_mean += g
                gx_mean += g * (x[r, j] - mu) * rs
            g_mean, gx_mean = g_mean * inv_c, gx_mean * inv_c
            for j in range(C):
                xhat = (x[r, j] - mu) * rs
                dx[r, j] = rs * (dy[r, j] * w[j] - g_mean - xhat * gx_mean)
                partial[c, 0, j] += dy[r, j] * xhat
                partial[c, 1, j] += dy[r, j]
    for c in range(1, nchunks):   # (a loop, not partial.sum(axis=0), which numba compiles slowly)
        partial[0] += partial[c]
    return dx, partial[0, 0], partial[0, 1]


def sum_rows(x):
    return _sum_rows(contiguous(x), get_num_threads())


@njit(parallel=True, **KERNEL)
def _sum_rows(x, nchunks):  # (N, C) -> (C,): each chunk of rows into its own partial sum, then added
    N, C = x.shape
    partial = np.zeros((nchunks, C), x.dtype)
    for c in prange(nchunks):
        total = partial[c]
        for r in range(c * N // nchunks, (c + 1) * N // nchunks):
            row = x[r]
            for j in range(C):
                total[j] += row[j]
    for c in range(1, nchunks):
        partial[0] += partial[c]
    return partial[0]


# ---------------------------------------------------------------------------------------- gelu

def gelu_forward(x):
    kernel = _gelu if x.ndim < 2 or x.size >= FEW_ROWS * x.shape[-1] else _gelu_1  # a decode step's one row: one thread
    return kernel(contiguous(x).reshape(-1), x.dtype.type(ref.GELU_C)).reshape(x.shape)


@njit(parallel=True, **KERNEL)
def _gelu(x, c):
    # y = 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = c (x + 0.044715 x^3). subtle: not the tanh
    # form: for x < -4, 1 + tanh(u) cancels, leaving a few correct digits (none below x = -9)
    y = np.empty_like(x)
    k = x.dtype.type(0.044715)
    for i in prange(x.shape[0]):
        xi = x[i]
        u = c * (xi + k * xi * xi * xi)
        y[i] = xi * sigmoid_pair(u + u)[0]
    return y


_gelu_1 = on_one_thread(_gelu)


def gelu_backward(x, dy):
    c = x.dtype.type(ref.GELU_C)
    return _gelu_backward(contiguous(x).reshape(-1), contiguous(dy).reshape(-1), c).reshape(x.shape)


@njit(parallel=True, **KERNEL)
def _gelu_backward(x, dy, c):
    # with s = sigmoid(2u): dy/dx = s + x * 2 s (1 - s) * du/dx, du/dx = c (1 + 3 * 0.044715 x^2)
    # (the same as 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx with t = tanh u, without the cancellation)
    dx = np.empty_like(x)
    k, k3, one = x.dtype.type(0.044715), x.dtype.type(3 * 0.044715), x.dtype.type(1)
    for i in prange(x.shape[0]):
        xi = x[i]
        u = c * (xi + k * xi * xi * xi)
        s, s_minus = sigmoid_pair(u + u)
        dx[i] = dy[i] * (s + (xi + xi) * s * s_minus * c * (one + k3 * xi * xi))
    return dx


# ---------------------------------------------------------------------------------------- cross-entropy

def cross_entropy_forward(logits, targets, ignore_index=-100):
    return _cross_entropy_rows(contiguous(logits), contiguous(targets), ignore_index, get_num_threads())


@njit(parallel=True, **KERNEL)
def _cross_entropy_rows(x, targets, ignore_index, nchunks):  # -> losses (N,), logsum (N,)
    N, C = x.shape
    losses, logsum = np.empty(N, x.dtype), np.empty(N, x.dtype)
    for c in prange(nchunks):
        e = np.empty(C, x.dtype)  # scratch row for the exps, one per chunk of rows
        for r in range(c * N // nchunks, (c + 1) * N // nchunks):
            xr = x[r]
            m = row_max(xr, C, x.dtype.type(1))
            for j in range(C):
                e[j] = exp_le0(xr[j] - m)
            logsum[r] = np.log(row_sum(e, C))
            t = targets[r]
            # (max - x[t]) + log(sum): the max is taken out before it can swallow the log
            losses[r] = 0 if t == ignore_index else (m - xr[t]) + logsum[r]
    return losses, logsum


def cross_entropy_backward(logits, targets, logsum, dlosses, ignore_index=-100):
    return _cross_entropy_backward_rows(contiguous(logits), contiguous(targets), contiguous(logsum),
                                        contiguous(dlosses), ignore_index)


@njit(parallel=True, **KERNEL)
def _cross_entropy_backward_rows(x, targets, logsum, dlosses, ignore_index):
    # dlogits = dloss * (softmax(x) - onehot(target)), softmax(x) = exp((x - max) - logsum):
    # the max taken out first, as in the forward (one more pass over the row, to find it)
    C = x.shape[1]
    dx = np.empty_like(x)
    for r in prange(x.shape[0]):
        t = targets[r]
        if t == ignore_index:
            dx[r] = 0
            continue
        d, l, xr = dlosses[r], logsum[r], x[r]
        m = row_max(xr, C, x.dtype.type(1))
        for j in range(C):
            dx[r, j] = exp_le0((xr[j] - m) - l) * d
        dx[r, t] -= d
    return dx


# ---------------------------------------------------------------------------------------- embedding

def embedding_backward(idx, dout, dweight):
    _embedding_backward(idx, contiguous(dout), dweight)
    return dweight


@njit(**KERNEL)
def _embedding_backward(idx, dout, dweight):  # dweight[idx[i]] += dout[i]
    # subtle: serial on purpose. Two rows with the same id would race if split across threads,
    # and this is one pass over dout (B*T*C floats), a small part of a step (BENCHMARKS.md).
    for i in range(idx.shape[0]):
        row = idx[i]
        for c in range(dout.shape[1]):
            dweight[row, c] += dout[i, c]


# ---------------------------------------------------------------------------------------- AdamW

def adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    grad = contiguous(grad)
    t = param.dtype.type  # hyperparameters in the buffers' dtype, bias corrections folded in
    _adamw(param, grad, m, v, t(lr), t(beta1), t(beta2), t(eps), t(weight_decay),
           t(1 / (1 - beta1**step)), t(1 / np.sqrt(1 - beta2**step)))


@njit(parallel=True, **KERNEL)
def _adamw(p, g, m, v, lr, b1, b2, eps, wd, c1, c2):
    # p -= lr wd p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr (m c1) / (sqrt(v) c2 + eps)
    # with c1 = 1 / (1 - b1^step) and c2 = 1 / sqrt(1 - b2^step), so sqrt(v) c2 = sqrt(vhat)
    one = p.dtype.type(1)
    for i in prange(p.shape[0]):
        m[i] = b1 * m[i] + (one - b1) * g[i]
        v[i] = b2 * v[i] + (one - b2) * g[i] * g[i]
        p[i] = p[i] - lr * wd * p[i] - lr * (m[i] * c1) / (np.sqrt(v[i]) * c2 + eps)
