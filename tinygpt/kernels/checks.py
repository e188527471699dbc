"""The input checks of the kernels: the shapes, dtypes and index ranges each kernel accepts.

One function per kernel, with the kernel's name and signature. It raises ValueError or TypeError,
naming the value and the limit, or returns the kernel's arguments checked and cast: arrays and
float scalars to the first array's dtype (float32 in training, float64 for gradient checks), so a
float32 op stays float32; ids to int64. `tinygpt.kernels` runs the check in front of either
kernel set (`kernels.checked`), so a bad input gets the same error whichever set runs.
subtle: for the numba set these checks are all that stands between a bad id and an out-of-bounds
read or write, since numba does not check bounds.

What this module leaves out: the math (reference.py) and memory layout (jit.py makes its
arrays contiguous).
"""
import numpy as np


def _float(name, x):
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} expects float32 or float64 arrays, got dtype {x.dtype}")
    return x


def _cast(x, dtype):
    return np.asarray(x).astype(dtype, copy=False)


def _same(name, x, *others):
    """x and each of `others` must have the same shape; others are cast to x's dtype."""
    x = _float(name, x)
    out = [x]
    for o in others:
        o = np.asarray(o)
        if o.shape != x.shape:
            raise ValueError(f"{name}: shapes {x.shape} and {o.shape} must match")
        out.append(o.astype(x.dtype, copy=False))
    return out


def _rows(name, x, *rows):
    """Per-row statistics (mean, rstd, lse, ...) must have shape (N,) for x of shape (N, C)."""
    out = []
    for r in rows:
        r = np.asarray(r)
        if r.shape != x.shape[:1]:
            raise ValueError(f"{name}: per-row array must have shape ({x.shape[0]},), got {r.shape}")
        out.append(r.astype(x.dtype, copy=False))
    return out


def matmul(a, b, out=None, bias=None, accumulate=False):
    a = _float("matmul", a)
    b = _cast(b, a.dtype)
    if accumulate and out is None:
        raise ValueError("matmul with accumulate=True adds into `out`: pass out=")
    batched = a.ndim == 3 and b.ndim == 3 and a.shape[0] == b.shape[0]
    if not ((a.ndim == 2 and b.ndim == 2) or batched) or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul expects (M, K) @ (K, N) or (B, M, K) @ (B, K, N), got {a.shape} @ {b.shape}")
    if out is not None:
        expected = a.shape[:-1] + b.shape[-1:]
        if not isinstance(out, np.ndarray) or out.shape != expected or out.dtype != a.dtype:
            raise ValueError(f"matmul out must be a {expected} {a.dtype} array, got {np.shape(out)} "
                             f"{getattr(out, 'dtype', type(out).__name__)}")
        if not out.flags.writeable:
            raise ValueError("matmul writes into out in place: it must be writeable, got a read-only array")
    if bias is not None:
        bias = _cast(bias, a.dtype)
        if bias.shape != b.shape[-1:]:
            raise ValueError(f"matmul bias must have shape ({b.shape[-1]},), got {bias.shape}")
    return a, b, out, bias, accumulate


def gemv(x, w, bias=None, scale=None, transposed=False):
    x = _float("gemv", x)
    w = np.asarray(w)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1 if transposed else 0]:
        raise ValueError(f"gemv expects x (M, K) and w {'(N, K)' if transposed else '(K, N)'}, "
                         f"got x {x.shape} and w {w.shape}")
    N = w.shape[0] if transposed else w.shape[1]
    if w.dtype == np.int8:
        if scale is None:
            raise ValueError("gemv with int8 weights needs scale=, one float per output channel")
    elif scale is not None:
        raise ValueError(f"gemv: scale is for int8 weights, got weights of dtype {w.dtype}")
    elif w.dtype != np.uint16:  # uint16: bfloat16 bits, widened by the kernel
        w = _cast(w, x.dtype)
    out = [x, w]
    for name, v in (("bias", bias), ("scale", scale)):
        if v is not None:
            v = _cast(v, x.dtype)
            if v.shape != (N,):
                raise ValueError(f"gemv {name} must have shape ({N},), got {v.shape}")
        out.append(v)
    return (*out, bool(transposed))


def sum_rows(x):
    x = _float("sum_rows", x)
    if x.ndim != 2:
        raise ValueError(f"sum_rows expects (N, C), got shape {x.shape}")
    return (x,)


def prefer_blas(M, K, N):
    return M, K, N  # sizes, not arrays: nothing to check


def softmax_forward(x, scale=1.0, causal=False):
    x = _float("softmax_forward", x)
    if causal and (x.ndim < 2 or x.shape[-1] < x.shape[-2]):
        raise ValueError(f"causal softmax needs (..., Tq, Tk) with Tk >= Tq, got shape {x.shape}")
    return x, x.dtype.type(scale), causal


def softmax_backward(y, dy, scale=1.0):
    y, dy = _same("softmax_backward", y, dy)
    return y, dy, y.dtype.type(scale)


def attention_forward(q, k, v, causal=True):
    q = _float("attention", q)
    k, v = _cast(k, q.dtype), _cast(v, q.dtype)
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention expects q (B, nh, Tq, hs) and k, v (B, nh, Tk, hs); "
                         f"got q {q.shape}, k {k.shape}, v {v.shape}")
    if k.shape[2] == 0:
        raise ValueError(f"attention needs at least one key, got k {k.shape}")
    if causal and k.shape[2] < q.shape[2]:  # else the first queries would see no key at all
        raise ValueError(f"causal attention needs Tk >= Tq, got Tq={q.shape[2]}, Tk={k.shape[2]}")
    return q, k, v, causal


def attention_backward(q, k, v, out, lse, dout, causal=True):
    q, k, v, causal = attention_forward(q, k, v, causal)
    _, out, dout = _same("attention_backward", q, out, dout)
    lse = _cast(lse, q.dtype)
    if lse.shape != q.shape[:3]:
        raise ValueError(f"attention_backward: lse must be {q.shape[:3]}, got {lse.shape}")
    return q, k, v, out, lse, dout, causal


def layer_norm_forward(x, weight, bias, eps=1e-5):
    x = _float("layer_norm", x)
    if x.ndim != 2:
        raise ValueError(f"layer_norm kernels expect x of shape (N, C), got {x.shape}")
    weight, bias = _cast(weight, x.dtype), _cast(bias, x.dtype)
    if weight.shape != x.shape[1:] or bias.shape != x.shape[1:]:
        raise ValueError(f"layer_norm over C={x.shape[1]} needs weight and bias of shape ({x.shape[1]},), "
                         f"got {weight.shape} and {bias.shape}")
    return x, weight, bias, x.dtype.type(eps)


def layer_norm_backward(dy, x, weight, mean, rstd):
    x, weight, _, _ = layer_norm_forward(x, weight, weight)
    _, dy = _same("layer_norm_backward", x, dy)
    mean, rstd = _rows("layer_norm_backward", x, mean, rstd)
    return dy, x, weight, mean, rstd


def gelu_forward(x):
    return (_float("gelu_forward", x),)


def gelu_backward(x, dy):
    return tuple(_same("gelu_backward", x, dy))


def cross_entropy_forward(logits, targets, ignore_index=-100):
    logits = _float("cross_entropy", logits)
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy targets must be integers, got dtype {targets.dtype}")
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy expects logits (N, C) and targets (N,), got logits {logits.shape} "
                         f"and targets {targets.shape}")
    C = logits.shape[1]
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= C))
    if bad.any():
        raise ValueError(f"cross_entropy target {targets[bad][0]} is out of range [0, {C}) "
                         f"(and is not ignore_index={ignore_index})")
    return logits, targets.astype(np.int64, copy=False), ignore_index


def cross_entropy_backward(logits, targets, logsum, dlosses, ignore_index=-100):
    logits, targets, ignore_index = cross_entropy_forward(logits, targets, ignore_index)
    logsum, dlosses = _rows("cross_entropy_backward", logits, logsum, dlosses)
    return logits, targets, logsum, dlosses, ignore_index


def embedding_backward(idx, dout, dweight):
    dweight = _float("embedding_backward", dweight)
    idx, dout = np.asarray(idx), np.asarray(dout)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding_backward ids must be integers, got dtype {idx.dtype}")
    if dweight.ndim != 2 or idx.ndim != 1 or dout.shape != idx.shape + dweight.shape[1:]:
        raise ValueError(f"embedding_backward expects idx (N,), dout (N, C) and dweight (V, C), got idx "
                         f"{idx.shape}, dout {dout.shape}, dweight {dweight.shape}")
    if not dweight.flags.writeable:
        raise ValueError("embedding_backward adds into dweight in place: it must be writeable")
    V = dweight.shape[0]
    if idx.size and (idx.min() < 0 or idx.max() >= V):
        bad = idx.min() if idx.min() < 0 else idx.max()
        raise ValueError(f"embedding_backward: id {bad} is out of range [0, {V})")
    return idx.astype(np.int64, copy=False), dout.astype(dweight.dtype, copy=False), dweight


def adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    param = _float("adamw_step", param)
    for name, a in (("param", param), ("m", m), ("v", v)):
        flat = isinstance(a, np.ndarray) and a.ndim == 1 and a.shape == param.shape
        if not (flat and a.dtype == param.dtype and a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"adamw_step updates flat buffers in place: {name} must be a writeable, "
                             f"contiguous 1-D {param.dtype} array, got shape {np.shape(a)} {np.asarray(a).dtype}")
    if step < 1:
        raise ValueError(f"adamw_step: step counts from 1, got {step}")
    grad = _same("adamw_step", param, grad)[1]
    # the hyperparameters as given: jit.py folds the bias corrections in double precision first
    return param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step
