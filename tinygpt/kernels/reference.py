"""NumPy reference kernels: the specification.

Every function here is the math written as directly as NumPy allows, in the style of picoGPT's
one-liners, forward and backward side by side. `jit.py` exports the same names with the same
signatures, and the tests check that the two agree; when they disagree, this file is right.

Inputs arrive checked and cast (checks.py, run by `tinygpt.kernels` in front of every kernel):
float32 (training) or float64 (gradient checks) arrays of matching shapes, and float scalars
in the arrays' dtype. What this module leaves out: those checks, speed (jit.py), Tensors and the
graph (tensor.py, functional.py), the choice between kernel sets (__init__.py).
"""
import numpy as np

GELU_C = np.sqrt(2.0 / np.pi)  # GPT-2's gelu(x) ~ 0.5 x (1 + tanh(C (x + 0.044715 x^3)))


# ---------------------------------------------------------------------------------------- matmul

def matmul(a, b, out=None, bias=None, accumulate=False):
    """(M, K) @ (K, N) -> (M, N), or batched (B, M, K) @ (B, K, N) -> (B, M, N); plus bias (N,)
    added to every row, if given. With `accumulate`, the result is added to `out` (out += a @ b)."""
    c = np.matmul(a, b) if accumulate else np.matmul(a, b, out=out)
    if bias is not None:
        c += bias
    if accumulate:
        out += c
        return out
    return c


def bf16_to_float32(q):
    """bfloat16 bits (uint16) -> float32: they are the upper 16 bits, the lower 16 are zero."""
    return (q.astype(np.uint32) << 16).view(np.float32)


def gemv(x, w, bias=None, scale=None, transposed=False):
    """x (M, K) @ w (K, N), or @ w (N, K)^T if `transposed` -> (M, N); times scale (N,), one per
    output channel (int8 w: w holds round(w_float / scale)), plus bias (N,). bfloat16 w (uint16)
    is widened to float32 first."""
    w = bf16_to_float32(w) if w.dtype == np.uint16 else w.astype(x.dtype)
    y = x @ (w.T if transposed else w)
    if scale is not None:
        y *= scale
    if bias is not None:
        y += bias
    return y


def sum_rows(x):
    """(N, C) -> (C,): the sum of the rows (a Linear's bias gradient, from the output's)."""
    return x.sum(axis=0)


def prefer_blas(M, K, N):
    """Whether callers should use np.matmul for an (M, K) @ (K, N) product: here `matmul` is it."""
    return True


# ---------------------------------------------------------------------------------------- softmax

def causal_mask(Tq, Tk):
    """(Tq, Tk) bool, True where query i may see key j: j <= i + (Tk - Tq).

    Example: causal_mask(2, 3) -> [[T, T, F], [T, T, T]]  (the last query sees every key).
    """
    return np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + (Tk - Tq)


def softmax_forward(x, scale=1.0, causal=False):
    """y = softmax(scale * x) over the last axis, (..., C) -> (..., C); with `causal`, x is
    (..., Tq, Tk) and masked entries get probability 0."""
    s = scale * x
    if causal:
        s = np.where(causal_mask(*x.shape[-2:]), s, -np.inf)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(y, dy, scale=1.0):
    """dx = scale * y * (dy - sum(dy * y)): the softmax Jacobian y_i (delta_ij - y_j), applied to dy.
    y, dy, dx: (..., C)."""
    return scale * y * (dy - (dy * y).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------------- attention

def attention_forward(q, k, v, causal=True):
    """softmax(q k^T / sqrt(hs), causal mask) v, plus each row's log-sum-exp of the scores.

    q: (B, nh, Tq, hs), k and v: (B, nh, Tk, hs) -> out (B, nh, Tq, hs), lse (B, nh, Tq).
    This reference materialises the (Tq, Tk) score matrix per head; jit.py never does.
    """
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
    mean = x.mean(axis=-1)
    xc = x - mean[:, None]
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=-1) + eps)
    return xc * rstd[:, None] * weight + bias, mean, rstd


def layer_norm_backward(dy, x, weight, mean, rstd):
    """With xhat = (x - mean) * rstd and g = dy * weight:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dweight = sum_rows(dy * xhat),  dbias = sum_rows(dy).
    """
    xhat = (x - mean[:, None]) * rstd[:, None]
    g = dy * weight
    dx = rstd[:, None] * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


# ---------------------------------------------------------------------------------------- gelu

def gelu_forward(x):
    """y = 0.5 x (1 + tanh(u)), u = C (x + 0.044715 x^3), C = sqrt(2 / pi); any shape, elementwise.

    Computed as x sigmoid(2u) = x / (1 + exp(-2u)), the same number, since
    0.5 (1 + tanh u) = sigmoid(2u). subtle: the tanh form cancels for x < -4 (1 + tanh u is
    1 - 1 + a little), which leaves few correct digits there.
    """
    s, _ = _sigmoid_pair(2 * _gelu_u(x))
    return x * s


def gelu_backward(x, dy):
    """dx = dy (s + x 2 s (1 - s) du/dx), s = sigmoid(2u), du/dx = C (1 + 3 * 0.044715 x^2)."""
    s, one_minus_s = _sigmoid_pair(2 * _gelu_u(x))
    return dy * (s + 2 * x * s * one_minus_s * x.dtype.type(GELU_C) * (1 + 3 * 0.044715 * x * x))


def _gelu_u(x):
    # x * x * x, not x**3: that calls pow, a general power function, much slower
    return x.dtype.type(GELU_C) * (x + 0.044715 * x * x * x)


def _sigmoid_pair(z):
    """(sigmoid(z), 1 - sigmoid(z)) = (1 / (1 + e^-z), 1 / (1 + e^z)), neither computed as a
    difference, so neither cancels. e^-z overflows to inf for z < -88 (float32): 1 / (1 + inf)
    is 0, the right limit, so that warning is silenced."""
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(z))


# ---------------------------------------------------------------------------------------- cross-entropy

def cross_entropy_forward(logits, targets, ignore_index=-100):
    """losses_i = (max_i - logits_i[target_i]) + log sum_j exp(logits_ij - max_i), 0 where
    target_i == ignore_index: logsumexp - logit, with the max taken out before it can swallow
    the log (at logits of 1e8, max + log(2) rounds to max in float32).

    logits (N, C), targets (N,) ints -> losses (N,), logsum (N,) = log sum_j exp(logits_ij - max_i).
    """
    m = logits.max(axis=-1)
    logsum = np.log(np.exp(logits - m[:, None]).sum(axis=-1))
    keep = targets != ignore_index
    picked = logits[np.arange(len(targets)), np.where(keep, targets, 0)]
    return np.where(keep, (m - picked) + logsum, 0).astype(logits.dtype), logsum


def cross_entropy_backward(logits, targets, logsum, dlosses, ignore_index=-100):
    """dlogits_i = dlosses_i * (softmax(logits_i) - onehot(target_i)); ignored rows get 0, and
    softmax = exp((logits - max) - logsum), the max taken out first as in the forward."""
    keep = targets != ignore_index
    dlogits = np.exp((logits - logits.max(axis=-1, keepdims=True)) - logsum[:, None])  # softmax(logits)
    dlogits[np.arange(len(targets))[keep], targets[keep]] -= 1
    return dlogits * np.where(keep, dlosses, 0)[:, None]     # where, not *: dlosses may be nan there


# ---------------------------------------------------------------------------------------- embedding

def embedding_backward(idx, dout, dweight):
    """The embedding's backward, in place: dweight[idx[i]] += dout[i] for every i.

    idx (N,) integer ids in [0, V), dout (N, C), dweight (V, C). A row picked k times receives
    the sum of its k gradients (np.add.at; plain `dweight[idx] += dout` would keep only one).
    Forward needs no kernel: it is the gather `weight[idx]`.
    """
    np.add.at(dweight, idx, dout)
    return dweight


# ---------------------------------------------------------------------------------------- AdamW

def adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW update, in place on flat buffers, with PyTorch's semantics (decoupled decay):

    p -= lr wd p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p -= lr (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps)
    """
    param -= lr * weight_decay * param
    m *= beta1
    m += (1 - beta1) * grad
    v *= beta2
    v += (1 - beta2) * grad * grad
    mhat = m / (1 - beta1**step)
    vhat = v / (1 - beta2**step)
    param -= lr * mhat / (np.sqrt(vhat) + eps)
