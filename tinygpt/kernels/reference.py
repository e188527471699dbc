"""NumPy reference kernels: the specification.

Every function here is the math written as directly as NumPy allows, in the style of picoGPT's
one-liners. `jit.py` exports the same names with the same signatures, and the tests check that
the two agree; when they disagree, this file is right.

What this module owns: the array math of each op (forward and backward side by side) and the
input checks both kernel sets share (bottom of the file), so a bad shape raises the same
ValueError whichever set runs. What it leaves out: speed (jit.py), Tensors and the graph
(tensor.py, functional.py), the choice between kernel sets (__init__.py).

Arrays are float32 (training) or float64 (gradient checks); the first array argument's dtype
decides and the other float arguments are cast to it, so a float32 op stays float32.
"""
import numpy as np

GELU_C = np.sqrt(2.0 / np.pi)  # GPT-2's gelu(x) ~ 0.5 x (1 + tanh(C (x + 0.044715 x^3)))


# ---------------------------------------------------------------------------------------- matmul

def matmul(a, b, out=None, bias=None, accumulate=False):
    """(M, K) @ (K, N) -> (M, N), or batched (B, M, K) @ (B, K, N) -> (B, M, N); plus bias (N,)
    added to every row, if given. With `accumulate`, the result is added to `out` (out += a @ b)."""
    a, b, bias = check_matmul(a, b, out, bias, accumulate)
    c = np.matmul(a, b) if accumulate else np.matmul(a, b, out=out)
    if bias is not None:
        c += bias
    if accumulate:
        out += c
        return out
    return c


def sum_rows(x):
    """(N, C) -> (C,): the sum of the rows (a Linear's bias gradient, from the output's)."""
    return check_sum_rows(x).sum(axis=0)


def prefer_blas(M, K, N, inference=False):
    """Whether callers should use np.matmul for an (M, K) @ (K, N) product: here `matmul` is it."""
    return True


# ---------------------------------------------------------------------------------------- softmax

def causal_mask(Tq, Tk):
    """(Tq, Tk) bool, True where query i may see key j: j <= i + (Tk - Tq).

    Example: causal_mask(2, 3) -> [[T, T, F], [T, T, T]]  (the last query sees every key).
    """
    return np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + (Tk - Tq)


def softmax_forward(x, scale=1.0, causal=False):
    """y = softmax(scale * x) over the last axis; with `causal`, masked entries get probability 0."""
    x, scale = check_softmax(x, scale, causal)
    s = scale * x
    if causal:
        s = np.where(causal_mask(*x.shape[-2:]), s, -np.inf)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(y, dy, scale=1.0):
    """dx = scale * y * (dy - sum(dy * y)): the softmax Jacobian y_i (delta_ij - y_j), applied to dy."""
    y, dy = check_same("softmax_backward", y, dy)
    scale = y.dtype.type(scale)
    return scale * y * (dy - (dy * y).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------------- attention

def attention_forward(q, k, v, causal=True):
    """softmax(q k^T / sqrt(hs), causal mask) v, plus each row's log-sum-exp of the scores.

    q: (B, nh, Tq, hs), k and v: (B, nh, Tk, hs) -> out (B, nh, Tq, hs), lse (B, nh, Tq).
    This reference materialises the (Tq, Tk) score matrix per head; jit.py never does.
    """
    q, k, v = check_attention(q, k, v, causal)
    s = _scores(q, k, causal)                                 # (B, nh, Tq, Tk)
    m = s.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(s - m).sum(axis=-1, keepdims=True)))[..., 0]   # (B, nh, Tq)
    p = np.exp(s - lse[..., None])                            # softmax, from the lse we return
    return p @ v, lse


def attention_backward(q, k, v, out, lse, dout, causal=True):
    """Gradients of attention_forward. The probabilities are recomputed from lse, not stored.

    With s = scale q k^T and p = softmax(s):  dv = p^T dout,  dp = dout v^T,
    ds = p * (dp - rowsum(dp * p)) (softmax backward),  dq = scale ds k,  dk = scale ds^T q.
    """
    q, k, v = check_attention(q, k, v, causal)
    out, lse, dout = check_attention_grads(q, out, lse, dout)
    scale = q.dtype.type(1.0 / np.sqrt(q.shape[-1]))
    p = np.exp(_scores(q, k, causal) - lse[..., None])       # (B, nh, Tq, Tk)
    dv = p.swapaxes(-1, -2) @ dout                            # (B, nh, Tk, hs)
    ds = softmax_backward(p, dout @ v.swapaxes(-1, -2), scale)   # includes the factor `scale`
    return ds @ k, ds.swapaxes(-1, -2) @ q, dv


def _scores(q, k, causal):
    """scale * q k^T with masked entries at -inf: (B, nh, Tq, Tk)."""
    scale = q.dtype.type(1.0 / np.sqrt(q.shape[-1]))
    s = scale * (q @ k.swapaxes(-1, -2))
    return np.where(causal_mask(q.shape[2], k.shape[2]), s, -np.inf) if causal else s


# ---------------------------------------------------------------------------------------- layer norm

def layer_norm_forward(x, weight, bias, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over each row of x (N, C).

    Returns y (N, C) and, for the backward, mean (N,) and rstd = 1 / sqrt(var + eps) (N,).
    """
    x, weight, bias = check_layer_norm(x, weight, bias)
    mean = x.mean(axis=-1)
    xc = x - mean[:, None]
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=-1) + x.dtype.type(eps))
    return xc * rstd[:, None] * weight + bias, mean, rstd


def layer_norm_backward(dy, x, weight, mean, rstd):
    """With xhat = (x - mean) * rstd and g = dy * weight:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dweight = sum_rows(dy * xhat),  dbias = sum_rows(dy).
    """
    x, dy, weight, mean, rstd = check_layer_norm_grads(x, dy, weight, mean, rstd)
    xhat = (x - mean[:, None]) * rstd[:, None]
    g = dy * weight
    dx = rstd[:, None] * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


# ---------------------------------------------------------------------------------------- gelu

def gelu_forward(x):
    """y = 0.5 x (1 + tanh(u)), u = C (x + 0.044715 x^3), C = sqrt(2 / pi).

    Computed as x sigmoid(2u) = x / (1 + exp(-2u)), the same number, since
    0.5 (1 + tanh u) = sigmoid(2u). subtle: the tanh form cancels for x < -4 (1 + tanh u is
    1 - 1 + a little), which leaves few correct digits there: at x = -5 its gradient was off by
    2.5e-4, relative.
    """
    x = check_float("gelu_forward", x)
    s, _ = _sigmoid_pair(2 * _gelu_u(x))
    return x * s


def gelu_backward(x, dy):
    """dx = dy (s + x 2 s (1 - s) du/dx), s = sigmoid(2u), du/dx = C (1 + 3 * 0.044715 x^2)."""
    x, dy = check_same("gelu_backward", x, dy)
    s, one_minus_s = _sigmoid_pair(2 * _gelu_u(x))
    return dy * (s + 2 * x * s * one_minus_s * x.dtype.type(GELU_C) * (1 + 3 * 0.044715 * x * x))


def _gelu_u(x):
    # x * x * x, not x**3: that calls pow, 100x slower
    return x.dtype.type(GELU_C) * (x + 0.044715 * x * x * x)


def _sigmoid_pair(z):
    """(sigmoid(z), 1 - sigmoid(z)) = (1 / (1 + e^-z), 1 / (1 + e^z)), neither computed as a
    difference, so neither cancels. e^-z overflows to inf for z < -88 (float32): 1 / (1 + inf)
    is 0, the right limit, so that warning is silenced."""
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(z))


# ---------------------------------------------------------------------------------------- cross-entropy

def cross_entropy_forward(logits, targets, ignore_index=-100):
    """losses_i = logsumexp(logits_i) - logits_i[target_i], 0 where target_i == ignore_index.

    logits (N, C), targets (N,) ints -> losses (N,), lse (N,).
    """
    logits, targets = check_cross_entropy(logits, targets, ignore_index)
    m = logits.max(axis=-1)
    lse = m + np.log(np.exp(logits - m[:, None]).sum(axis=-1))
    keep = targets != ignore_index
    picked = logits[np.arange(len(targets)), np.where(keep, targets, 0)]
    return np.where(keep, lse - picked, 0).astype(logits.dtype), lse


def cross_entropy_backward(logits, targets, lse, dlosses, ignore_index=-100):
    """dlogits_i = dlosses_i * (softmax(logits_i) - onehot(target_i)); ignored rows get 0."""
    logits, targets = check_cross_entropy(logits, targets, ignore_index)
    lse, dlosses = check_rows("cross_entropy_backward", logits, lse, dlosses)
    keep = targets != ignore_index
    dlogits = np.exp(logits - lse[:, None])                   # softmax(logits)
    dlogits[np.arange(len(targets))[keep], targets[keep]] -= 1
    return dlogits * np.where(keep, dlosses, 0)[:, None]     # where, not *: dlosses may be nan there


# ---------------------------------------------------------------------------------------- embedding

def embedding_backward(idx, dout, dweight):
    """The embedding's backward, in place: dweight[idx[i]] += dout[i] for every i.

    idx (N,) integer ids in [0, V), dout (N, C), dweight (V, C). A row picked k times receives
    the sum of its k gradients (np.add.at; plain `dweight[idx] += dout` would keep only one).
    Forward needs no kernel: it is the gather `weight[idx]`.
    """
    idx, dout = check_embedding_grads(idx, dout, dweight)
    np.add.at(dweight, idx, dout)
    return dweight


# ---------------------------------------------------------------------------------------- AdamW

def adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW update, in place on flat buffers, with PyTorch's semantics (decoupled decay):

    p -= lr wd p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p -= lr (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps)
    """
    grad = check_adamw(param, grad, m, v, step)
    param -= lr * weight_decay * param
    m *= beta1
    m += (1 - beta1) * grad
    v *= beta2
    v += (1 - beta2) * grad * grad
    mhat = m / (1 - beta1**step)
    vhat = v / (1 - beta2**step)
    param -= lr * mhat / (np.sqrt(vhat) + eps)


# ---------------------------------------------------------------------------------------- input checks
# Shared with jit.py, so both kernel sets reject the same inputs with the same message. Each check
# returns its arrays cast to the leading array's dtype. subtle: in jit.py these checks are also what
# stands between a bad index and a numba out-of-bounds read, since numba does not check bounds.

def check_float(name, x):
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} expects float32 or float64 arrays, got dtype {x.dtype}")
    return x


def check_same(name, x, *others):
    """x and each of `others` must have the same shape; others are cast to x's dtype."""
    x = check_float(name, x)
    out = [x]
    for o in others:
        o = np.asarray(o)
        if o.shape != x.shape:
            raise ValueError(f"{name}: shapes {x.shape} and {o.shape} must match")
        out.append(o.astype(x.dtype, copy=False))
    return out


def check_matmul(a, b, out=None, bias=None, accumulate=False):
    a, b = check_float("matmul", a), np.asarray(b).astype(np.asarray(a).dtype, copy=False)
    if accumulate and out is None:
        raise ValueError("matmul with accumulate=True adds into `out`: pass out=")
    batched = a.ndim == 3 and b.ndim == 3 and a.shape[0] == b.shape[0]
    if not ((a.ndim == 2 and b.ndim == 2) or batched) or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul expects (M, K) @ (K, N) or (B, M, K) @ (B, K, N), got {a.shape} @ {b.shape}")
    if out is not None:
        expected = a.shape[:-1] + b.shape[-1:]
        if out.shape != expected or out.dtype != a.dtype:
            raise ValueError(f"matmul out must be {expected} {a.dtype}, got {out.shape} {out.dtype}")
    if bias is not None:
        bias = np.asarray(bias).astype(a.dtype, copy=False)
        if bias.shape != b.shape[-1:]:
            raise ValueError(f"matmul bias must have shape ({b.shape[-1]},), got {bias.shape}")
    return a, b, bias


def check_sum_rows(x):
    x = check_float("sum_rows", x)
    if x.ndim != 2:
        raise ValueError(f"sum_rows expects (N, C), got shape {x.shape}")
    return x


def check_softmax(x, scale, causal):
    x = check_float("softmax_forward", x)
    if causal and (x.ndim < 2 or x.shape[-1] < x.shape[-2]):
        raise ValueError(f"causal softmax needs (..., Tq, Tk) with Tk >= Tq, got shape {x.shape}")
    return x, x.dtype.type(scale)


def check_attention(q, k, v, causal):
    q = check_float("attention", q)
    k, v = np.asarray(k).astype(q.dtype, copy=False), np.asarray(v).astype(q.dtype, copy=False)
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention expects q (B, nh, Tq, hs) and k, v (B, nh, Tk, hs); "
                         f"got q {q.shape}, k {k.shape}, v {v.shape}")
    if k.shape[2] == 0:
        raise ValueError(f"attention needs at least one key, got k {k.shape}")
    if causal and k.shape[2] < q.shape[2]:  # else the first queries would see no key at all
        raise ValueError(f"causal attention needs Tk >= Tq, got Tq={q.shape[2]}, Tk={k.shape[2]}")
    return q, k, v


def check_attention_grads(q, out, lse, dout):
    _, out, dout = check_same("attention_backward", q, out, dout)
    lse = np.asarray(lse).astype(q.dtype, copy=False)
    if lse.shape != q.shape[:3]:
        raise ValueError(f"attention_backward: lse must be {q.shape[:3]}, got {lse.shape}")
    return out, lse, dout


def check_layer_norm(x, weight, bias):
    x = check_float("layer_norm", x)
    if x.ndim != 2:
        raise ValueError(f"layer_norm kernels expect x of shape (N, C), got {x.shape}")
    weight, bias = (np.asarray(w).astype(x.dtype, copy=False) for w in (weight, bias))
    if weight.shape != x.shape[1:] or bias.shape != x.shape[1:]:
        raise ValueError(f"layer_norm over C={x.shape[1]} needs weight and bias of shape ({x.shape[1]},), "
                         f"got {weight.shape} and {bias.shape}")
    return x, weight, bias


def check_layer_norm_grads(x, dy, weight, mean, rstd):
    x, weight, _ = check_layer_norm(x, weight, weight)
    _, dy = check_same("layer_norm_backward", x, dy)
    mean, rstd = check_rows("layer_norm_backward", x, mean, rstd)
    return x, dy, weight, mean, rstd


def check_rows(name, x, *rows):
    """Per-row statistics (mean, rstd, lse, ...) must have shape (N,) for x of shape (N, C)."""
    out = []
    for r in rows:
        r = np.asarray(r)
        if r.shape != x.shape[:1]:
            raise ValueError(f"{name}: per-row array must have shape ({x.shape[0]},), got {r.shape}")
        out.append(r.astype(x.dtype, copy=False))
    return out


def check_cross_entropy(logits, targets, ignore_index):
    logits = check_float("cross_entropy", logits)
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
    return logits, targets.astype(np.int64, copy=False)


def check_embedding_grads(idx, dout, dweight):
    dweight = check_float("embedding_backward", dweight)
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
    return idx.astype(np.int64, copy=False), dout.astype(dweight.dtype, copy=False)


def check_adamw(param, grad, m, v, step):
    param = check_float("adamw_step", param)
    for name, a in (("param", param), ("m", m), ("v", v)):
        flat = isinstance(a, np.ndarray) and a.ndim == 1 and a.shape == param.shape
        if not (flat and a.dtype == param.dtype and a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"adamw_step updates flat buffers in place: {name} must be a writeable, "
                             f"contiguous 1-D {param.dtype} array, got shape {np.shape(a)} {np.asarray(a).dtype}")
    if step < 1:
        raise ValueError(f"adamw_step: step counts from 1, got {step}")
    return check_same("adamw_step", param, grad)[1]
