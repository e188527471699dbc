"""Differentiable functions of Tensors (the ops that are Tensor methods live in tensor.py).

Two kinds: the functions of several tensors (`concatenate`, `stack`, `where`), and the fused ops,
the pieces of a transformer that are faster (and numerically safer) done in one piece than as a
chain of Tensor ops (softmax, cross-entropy, linear, layer norm, GELU, dropout, embedding,
attention). Each takes and returns Tensors; its `_backward` closure sits right under the forward,
as in `tensor.py`, and a fused op's forward and hand-derived backward call the array kernels in
`tinygpt.kernels` (numba or NumPy, chosen there). What this module leaves out: the graph machinery
(tensor.py) and the kernels' inner loops (kernels/).
"""
import math
import numbers

import numpy as np

from . import kernels
from .autograd import _axis, is_grad_enabled, unbroadcast
from .tensor import Tensor

_rng = np.random.default_rng()  # dropout's default generator; reseed with `manual_seed`


def manual_seed(seed):
    """Reseed the generator that dropout uses when it is given none."""
    global _rng
    _rng = np.random.default_rng(seed)


def _check_float(x, name, arg="x"):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} expects {arg} to be a Tensor, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name} expects {arg} to be a float tensor, got dtype {x.dtype}")


def _check_dropout_p(p):
    """A dropout probability: a real number in [0, 1) (NaN refused: `not` of a comparison)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"dropout probability must be a real number, got {type(p).__name__} {p!r}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")


# ---- functions of several tensors ---------------------------------------------------------------
def _as_tensors(tensors, name):
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError(f"{name} needs at least one tensor, got none")
    return tensors


def concatenate(tensors, axis=0):
    """np.concatenate for tensors; the gradient is split back into the pieces."""
    tensors = _as_tensors(tensors, "concatenate")
    axis = _axis(axis, tensors[0].ndim)
    try:
        data = np.concatenate([t.data for t in tensors], axis=axis)
    except ValueError as e:
        raise ValueError(f"cannot concatenate shapes {[t.shape for t in tensors]} on axis {axis}") from e
    bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1]

    def _backward():  # each input gets its own stretch of the gradient
        for t, g in zip(tensors, np.split(out.grad, bounds, axis=axis)):
            t._accumulate(g)
    out = tensors[0]._result(data, tuple(tensors), "concatenate", _backward)
    return out


def stack(tensors, axis=0):
    """np.stack for tensors: each gains a new axis of length 1, and they are concatenated on it."""
    tensors = _as_tensors(tensors, "stack")
    if len({t.shape for t in tensors}) > 1:
        raise ValueError(f"stack needs tensors of one shape, got {[t.shape for t in tensors]}")
    axis = _axis(axis, tensors[0].ndim + 1)  # the new axis may also go after the last
    shape = np.expand_dims(tensors[0].data, axis).shape
    return concatenate([t.reshape(shape) for t in tensors], axis=axis)


def where(condition, x, y):
    """Elementwise `x if condition else y`, broadcasting all three like np.where."""
    cond = np.asarray(condition.data if isinstance(condition, Tensor) else condition)
    if cond.dtype != bool:
        raise TypeError(f"where needs a boolean condition, got dtype {cond.dtype}")
    x, y = _as_tensors([x, y], "where")
    try:
        data = np.where(cond, x.data, y.data)
    except ValueError as e:
        raise ValueError(f"cannot broadcast shapes {cond.shape}, {x.shape} and {y.shape} for where") from e

    def _backward():  # the gradient goes to whichever side was picked
        x._accumulate(unbroadcast(np.where(cond, out.grad, 0), x.shape))
        y._accumulate(unbroadcast(np.where(cond, 0, out.grad), y.shape))
    out = x._result(data, (x, y), "where", _backward)
    return out


# ---- fused ops ---------------------------------------------------------------------------------
def softmax(x, axis=-1):
    """softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x), along `axis`."""
    _check_float(x, "softmax")
    axis = _axis(axis, x.ndim)
    if x.shape[axis] == 0:
        raise ValueError(f"softmax over axis {axis} of size 0 (shape {x.shape}): nothing to normalise")
    last = axis == x.ndim - 1
    x_last = x.data if last else np.moveaxis(x.data, axis, -1)
    y = kernels.softmax_forward(x_last)

    def _backward():  # dx = y * (dy - sum(dy * y))
        g = out.grad if last else np.moveaxis(out.grad, axis, -1)
        dx = kernels.softmax_backward(y, g)
        x._accumulate(dx if last else np.moveaxis(dx, -1, axis))
    out = x._result(y if last else np.moveaxis(y, -1, axis), (x,), "softmax", _backward)
    return out


def log_softmax(x, axis=-1):
    """log softmax(x) = x - logsumexp(x), along `axis`, without ever forming exp(x) unshifted."""
    _check_float(x, "log_softmax")
    axis = _axis(axis, x.ndim)
    if x.shape[axis] == 0:
        raise ValueError(f"log_softmax over axis {axis} of size 0 (shape {x.shape}): nothing to normalise")
    m = x.data.max(axis=axis, keepdims=True)
    shifted = x.data - m
    y = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    def _backward():  # dx = dy - softmax(x) * sum(dy)
        x._accumulate(out.grad - np.exp(y) * out.grad.sum(axis=axis, keepdims=True))
    out = x._result(y, (x,), "log_softmax", _backward)
    return out


def cross_entropy(logits, targets, ignore_index=-100, reduction="mean"):
    """Cross-entropy of (N, C) or (B, T, C) logits against integer targets of shape (N,) or (B, T).

    loss_i = logsumexp(logits_i) - logits_i[target_i]; positions whose target is `ignore_index`
    count for nothing. 'mean' averages over the counted positions (0.0 if there are none, rather
    than NaN), 'sum' adds them, 'none' returns one loss per position (0 where ignored).
    """
    _check_float(logits, "cross_entropy")
    targets = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy targets must be integers, got dtype {targets.dtype}")
    if logits.ndim not in (2, 3) or targets.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy expects logits (N, C) or (B, T, C) and targets of the "
                         f"leading shape; got logits {logits.shape} and targets {targets.shape}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    C = logits.shape[-1]
    if C == 0:
        raise ValueError(f"cross_entropy needs at least one class, got logits of shape {logits.shape}")
    logits2 = logits.data.reshape(-1, C)  # (N, C)
    targets1 = targets.reshape(-1)        # (N,)
    losses, logsum = kernels.cross_entropy_forward(logits2, targets1, ignore_index)
    count = int(np.count_nonzero(targets1 != ignore_index))
    if reduction == "none":
        data = losses.reshape(targets.shape)
    else:
        total = losses.sum(dtype=losses.dtype)
        data = total / max(count, 1) if reduction == "mean" else total

    def _backward():  # dlogits_i = dloss_i * (softmax(logits_i) - onehot(target_i))
        if reduction == "none":
            dlosses = out.grad.reshape(-1)
        else:
            scale = out.grad / max(count, 1) if reduction == "mean" else out.grad
            dlosses = np.full(targets1.shape, scale, dtype=logits.dtype)
        dlogits = kernels.cross_entropy_backward(logits2, targets1, logsum, dlosses, ignore_index)
        logits._accumulate(dlogits.reshape(logits.shape))
    out = logits._result(np.asarray(data, dtype=logits.dtype), (logits,), "cross_entropy", _backward)
    return out


# inference products of fewer rows stream the weights once (kernels.gemv); from 16 rows on (a
# prompt), the matmul kernel's transposed product is faster (BENCHMARKS.md)
GEMV_ROWS = 16


def _mm(a, b, bias=None):
    """a (M, K) @ b (K, N) (+ bias (N,)): in inference with few rows (generation), the gemv kernel;
    otherwise the matmul kernel, or np.matmul (OpenBLAS) where the kernels say it should do this
    shape (kernels.prefer_blas: tiny products)."""
    if not is_grad_enabled() and a.shape[0] < GEMV_ROWS:
        if not b.flags.c_contiguous and b.T.flags.c_contiguous:  # w.T of a (N, K) weight: the output head
            return kernels.gemv(a, b.T, bias, transposed=True)
        return kernels.gemv(a, b, bias)
    if not kernels.prefer_blas(a.shape[0], a.shape[1], b.shape[1]):
        return kernels.matmul(a, b, bias=bias)
    c = a @ b
    if bias is not None:
        c += bias
    return c


def _accumulate_mm(param, a, b):
    """param.grad += a @ b, for a weight gradient. When the parameter is a leaf that already has
    its gradient buffer (the optimizer's, set by zero_grad), the matmul kernel adds its tiles
    straight into it: no (in, out) temporary and no second pass to add it in."""
    grad = param.grad
    if (param.is_leaf and grad is not None and grad.dtype == a.dtype and grad.flags.writeable
            and not kernels.prefer_blas(a.shape[0], a.shape[1], b.shape[1])):
        kernels.matmul(a, b, out=grad, accumulate=True)
    else:
        param._accumulate(_mm(a, b))


def linear(x, weight, bias=None, transpose_weight=False):
    """y = x @ weight + bias over the last axis: x (..., in) -> (..., out).

    weight is (in, out), GPT-2's Conv1D layout. With `transpose_weight` it is (out, in) and
    y = x @ weight^T: the output head, which reuses the (vocab, n_embd) token embedding.

    One op instead of reshape, matmul, transpose and add: a single matrix product forward (over
    all leading axes at once) with the bias added while the product is written out, and backward
    produces each gradient in its parameter's own layout. The transposes (w.T, x2.T, g.T) are
    views: the matmul kernel reads them through their strides, so nothing is copied on the way
    back.
    """
    _check_float(x, "linear")
    if isinstance(weight, Tensor) and weight.dtype in (np.int8, np.uint16):  # GPT.quantize's int8 or bf16
        return _linear_quantized(x, weight, bias, transpose_weight)
    _check_float(weight, "linear", "weight")
    if bias is not None:
        _check_float(bias, "linear", "bias")
    if weight.ndim != 2 or x.ndim == 0:
        raise ValueError(f"linear needs x of at least 1 dim and a 2-D weight, got x {x.shape} "
                         f"and weight {weight.shape}")
    w = weight.data.T if transpose_weight else weight.data  # (in, out), a view
    K, N = w.shape
    if x.shape[-1] != K or (bias is not None and bias.shape != (N,)):
        raise ValueError(f"linear: x {x.shape} needs weight of {('(out, in)' if transpose_weight else '(in, out)')} "
                         f"layout with in = {x.shape[-1]}, and bias (out,); got weight {weight.shape} "
                         f"and bias {None if bias is None else bias.shape}")
    rows = math.prod(x.shape[:-1])  # not reshape(-1, K), which cannot infer rows when K = 0
    x2 = x.data.reshape(rows, K)  # (rows, in)
    y = _mm(x2, w, None if bias is None else bias.data)  # (rows, out), the bias added as C is written

    def _backward():  # dx = dy W^T;  dW = x^T dy  ((out, in) layout: dy^T x);  dbias = sum of dy's rows
        g = out.grad.reshape(rows, N)  # (rows, out)
        if x.requires_grad:
            x._accumulate(_mm(g, w.T).reshape(x.shape))
        if weight.requires_grad:
            _accumulate_mm(weight, *((g.T, x2) if transpose_weight else (x2.T, g)))
        if bias is not None and bias.requires_grad:
            bias._accumulate(kernels.sum_rows(g))
    parents = (x, weight) if bias is None else (x, weight, bias)
    out = x._result(y.reshape(x.shape[:-1] + (N,)), parents, "linear", _backward)
    return out


def _linear_quantized(x, weight, bias, transpose_weight):
    """`linear` with quantized weights (GPT.quantize): int8, weight.data holds round(w / weight.scale)
    with one scale per output channel; or bfloat16 bits (uint16). The gemv kernel widens them as
    it reads. Inference only."""
    if is_grad_enabled():
        kind = "int8" if weight.dtype == np.int8 else "bf16"
        raise RuntimeError(f"this model's weights are quantized to {kind}, for inference only: run it under "
                           "no_grad() or evaluating(model); training needs the float32 model")
    N = weight.shape[0] if transpose_weight else weight.shape[1]
    x2 = x.data.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (rows, in)
    y = kernels.gemv(x2, weight.data, None if bias is None else bias.data, weight.scale, transpose_weight)
    return Tensor(y.reshape(x.shape[:-1] + (N,)))


def layer_norm(x, weight, bias=None, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, over the last axis."""
    _check_float(x, "layer_norm")
    _check_float(weight, "layer_norm", "weight")
    if bias is not None:
        _check_float(bias, "layer_norm", "bias")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"layer_norm normalises the last axis, which needs at least one element; got x {x.shape}")
    C = x.shape[-1]
    if weight.shape != (C,) or (bias is not None and bias.shape != (C,)):
        raise ValueError(f"layer_norm over {C} features needs weight and bias of shape ({C},), got "
                         f"{weight.shape} and {None if bias is None else bias.shape}")
    x2 = x.data.reshape(-1, C)  # (N, C)
    b = bias.data if bias is not None else np.zeros(C, dtype=x.dtype)
    y, mean, rstd = kernels.layer_norm_forward(x2, weight.data, b, eps)

    def _backward():
        # with xhat = (x - mean) * rstd:  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
        # dxhat = dy * weight, dweight = sum(dy * xhat), dbias = sum(dy) over rows
        dx, dweight, dbias = kernels.layer_norm_backward(out.grad.reshape(-1, C), x2, weight.data, mean, rstd)
        x._accumulate(dx.reshape(x.shape))
        weight._accumulate(dweight)
        if bias is not None:
            bias._accumulate(dbias)
    parents = (x, weight) if bias is None else (x, weight, bias)
    out = x._result(y.reshape(x.shape), parents, "layer_norm", _backward)
    return out


def gelu(x):
    """GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    _check_float(x, "gelu")
    y = kernels.gelu_forward(x.data)

    def _backward():  # dx = dy * gelu'(x), the derivative written out in the kernels
        x._accumulate(kernels.gelu_backward(x.data, out.grad))
    out = x._result(y, (x,), "gelu", _backward)
    return out


def dropout(x, p=0.1, training=True, generator=None):
    """Zero each element with probability p and scale the survivors by 1/(1-p) (inverted dropout),
    so evaluation needs no rescaling. `generator` is an np.random.Generator (default: the module's,
    see `manual_seed`)."""
    _check_float(x, "dropout")
    _check_dropout_p(p)
    if not training or p == 0.0:
        return x
    rng = generator if generator is not None else _rng
    mask = (rng.random(x.shape, dtype=np.float32) >= p).astype(x.dtype) * (1.0 / (1.0 - p))

    def _backward():  # the same mask scales the gradient
        x._accumulate(out.grad * mask)
    out = x._result(x.data * mask, (x,), "dropout", _backward)
    return out


def embedding(weight, idx):
    """Rows of `weight` (V, C) picked by integer ids `idx` of any shape -> idx.shape + (C,)."""
    _check_float(weight, "embedding", "weight")
    if weight.ndim != 2:
        raise ValueError(f"embedding weight must be a (V, C) table, got shape {weight.shape}")
    idx = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
    if idx.dtype.kind not in "iu":
        raise ValueError(f"embedding ids must be integers, got dtype {idx.dtype}")
    V = weight.shape[0]
    if idx.size and (idx.min() < 0 or idx.max() >= V):
        bad = idx.min() if idx.min() < 0 else idx.max()
        raise ValueError(f"embedding id {bad} is out of range [0, {V})")

    def _backward():  # a row used k times receives the sum of its k gradients
        ids, g = idx.reshape(-1), out.grad.reshape(idx.size, weight.shape[1])  # (N,), (N, C)
        if weight.is_leaf and weight.grad is not None and weight.grad.dtype == weight.dtype:
            # add straight into the leaf's own gradient buffer (the optimizer's flat buffer),
            # instead of building a (V, C) array of mostly zeros and adding that: no temporary
            # the size of the table, and no two passes over it every step
            kernels.embedding_backward(ids, g, weight.grad)
        else:
            weight._accumulate(kernels.embedding_backward(ids, g, np.zeros_like(weight.data)))
    out = weight._result(weight.data[idx], (weight,), "embedding", _backward)
    return out


def scaled_dot_product_attention(q, k, v, causal=True):
    """softmax(q k^T / sqrt(hs), causal mask) v over (B, nh, T, hs) tensors.

    The kernel keeps only the output and each row's log-sum-exp; the backward recomputes the
    attention probabilities from them instead of storing a (T, T) matrix per head.
    """
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        _check_float(t, "scaled_dot_product_attention")
        if t.ndim != 4:
            raise ValueError(f"scaled_dot_product_attention expects (B, nh, T, hs); {name} has shape {t.shape}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention shapes do not match: q {q.shape}, k {k.shape}, v {v.shape}")
    y, lse = kernels.attention_forward(q.data, k.data, v.data, causal)

    def _backward():  # with P = softmax(S), S = q k^T / sqrt(hs) (recomputed from lse), D = rowsum(dy * y):
        # dv = P^T dy, dS = P * (dy v^T - D), dq = dS k / sqrt(hs), dk = dS^T q / sqrt(hs)
        dq, dk, dv = kernels.attention_backward(q.data, k.data, v.data, y, lse, out.grad, causal)
        q._accumulate(dq)
        k._accumulate(dk)
        v._accumulate(dv)
    out = q._result(y, (q, k, v), "attention", _backward)
    return out


def self_attention(qkv, n_head, causal=True, kv_cache=None):
    """Multi-head self-attention straight from c_attn's output: qkv (B, T, 3C), laid out as
    [q | k | v] with each C = n_head * hs wide and heads side by side -> (B, T, C), heads side
    by side again.

    The same as splitting qkv into q, k, v, viewing each as (B, nh, T, hs) and calling
    scaled_dot_product_attention, then merging the heads, but as ONE op: q, k, v are strided
    views that the kernel reads in place, the numba kernel's output is already laid out
    (B, T, nh, hs), and the backward hands back one (B, T, 3C) gradient. That drops the split,
    permute and reshape nodes and their gradient copies (BENCHMARKS.md), in training and in
    each step of generation.

    With `kv_cache` (a model.KVCache), k and v are appended to the cached positions and the T
    queries attend to all of them. The cache holds plain arrays, so as in the model's manual
    path the gradient reaches q only: the keys and values are constants (inference).
    """
    _check_float(qkv, "self_attention")
    if isinstance(n_head, bool) or not isinstance(n_head, (int, np.integer)) or n_head < 1:
        raise ValueError(f"self_attention n_head must be a positive integer, got {n_head!r}")
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_head):
        raise ValueError(f"self_attention expects qkv (B, T, 3 * C) with C a multiple of n_head={n_head}, "
                         f"got shape {qkv.shape}")
    B, T, C = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    heads = qkv.data.reshape(B, T, 3, n_head, C // n_head)                      # a view
    q, k, v = (heads[:, :, i].transpose(0, 2, 1, 3) for i in range(3))          # 3 x (B, nh, T, hs) views
    if kv_cache is not None:
        k, v = kv_cache.append(k, v)                                            # (B, nh, T_past + T, hs)
    y, lse = kernels.attention_forward(q, k, v, causal)                         # (B, nh, T, hs)

    def _backward():  # scaled_dot_product_attention's backward, on the heads' views
        dy = out.grad.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)  # (B, nh, T, hs) view
        dq, dk, dv = kernels.attention_backward(q, k, v, y, lse, dy, causal)
        if kv_cache is not None:  # constants: no gradient
            dk = dv = np.zeros_like(dq)
        # back to [dq | dk | dv] over the last axis: (B, nh, T, hs) -> (B, T, C) each, one copy
        qkv._accumulate(np.concatenate([g.transpose(0, 2, 1, 3).reshape(B, T, C) for g in (dq, dk, dv)], axis=-1))
    out = qkv._result(y.transpose(0, 2, 1, 3).reshape(B, T, C), (qkv,), "attention", _backward)
    return out
