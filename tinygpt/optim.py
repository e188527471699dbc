"""Optimizers: AdamW and SGD, the learning-rate schedule, and gradient clipping.

This module owns how parameters move once their gradients are known. What it leaves out: the
gradients themselves (tensor.py), the array math of one AdamW update (`kernels.adamw_step`), and
when to call any of this (train.py).

The one design decision worth reading first: flat buffers.
A GPT has dozens of parameter tensors. Updating them one by one costs one Python round trip (and
one kernel call) each, every step. Instead, at construction we copy all trainable parameters of a
group into ONE flat float array and point each `p.data` at its slice of it (a reshaped view). The
model does not notice, since `p.data` is still an array of the right shape, but one kernel call
now updates every parameter at once. Gradients get the same treatment: `zero_grad()` points each
`p.grad` at its slice of a flat gradient buffer, and because leaf gradients accumulate in place
(`p.grad += g`, see tensor.py), backward writes straight into the flat buffer.

    flat data  [ wte ........ | wpe .... | c_attn.weight ....... | ... ]   one float32 array
                 ^ p.data of wte is a (V, C) view of this slice

subtle: anything that *replaces* `p.data` (rather than writing into it) cuts that parameter off
from the flat buffer. Load weights with an in-place copy (`p.data[...] = w`, which is what
`Module.load_state_dict` does). As a safety net, `step()` notices a replaced array, copies it into
the flat buffer and re-points `p.data`, so nothing is silently lost; likewise for `p.grad`.

Weight decay is decoupled (AdamW) and applies only to parameters with two or more dimensions
(matrices and embeddings); biases and LayerNorm gains are not decayed, as in nanoGPT. So there are
two groups, hence two flat buffers: `decay` and `no_decay`.
"""
import math
from types import SimpleNamespace

import numpy as np

from . import kernels
from .config import check_range
from .tensor import Tensor


def _trainable(params):
    """The distinct parameters that require a gradient, in first-seen order (tied weights once)."""
    if isinstance(params, Tensor) or not hasattr(params, "__iter__"):
        raise TypeError(f"expected an iterable of parameters (model.parameters()), got {type(params).__name__}")
    seen, out = set(), []
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"expected an iterable of parameters (model.parameters()), but it holds a "
                            f"{type(p).__name__}")
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class FlatGroup:
    """Parameters sharing one flat data buffer and one flat grad buffer (see the module doc)."""

    def __init__(self, name, params, weight_decay):
        self.name, self.params, self.weight_decay = name, params, weight_decay
        dtypes = {p.data.dtype for p in params}
        if len(dtypes) > 1:
            raise TypeError(f"parameter group {name!r} mixes dtypes {sorted(map(str, dtypes))}; "
                            "the optimizer keeps one flat buffer per group and needs one dtype")
        dtype = dtypes.pop() if dtypes else np.float32
        sizes = [p.data.size for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)  # slice i = offsets[i]:offsets[i+1]
        n = int(self.offsets[-1])
        self.data = np.empty(n, dtype=dtype)
        self.grad = np.zeros(n, dtype=dtype)
        self.data_views, self.grad_views = [], []
        for i, p in enumerate(params):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            self.data[lo:hi] = p.data.ravel()
            self.data_views.append(self.data[lo:hi].reshape(p.data.shape))
            self.grad_views.append(self.grad[lo:hi].reshape(p.data.shape))
            if p.grad is not None:  # keep a gradient computed before the optimizer existed
                self.grad_views[i][...] = p.grad
            p.data, p.grad = self.data_views[i], self.grad_views[i]

    def __len__(self):
        return self.data.size

    def zero_grad(self):
        self.grad.fill(0)
        for p, g in zip(self.params, self.grad_views):
            p.grad = g

    def sync(self):
        """Pull in any `p.data` / `p.grad` that was replaced instead of written in place."""
        for p, d, g in zip(self.params, self.data_views, self.grad_views):
            if p.data is not d:
                d[...] = p.data
                p.data = d
            if p.grad is not g:
                # subtle: a missing gradient (None) counts as zero, so the parameter still gets
                # weight decay and momentum; PyTorch would skip it. Frozen parameters are not here.
                g[...] = 0 if p.grad is None else p.grad
                p.grad = g


class _Optimizer:
    """What AdamW and SGD share: flat groups, `lr`, `zero_grad`, the step counter."""

    def __init__(self, params, lr, weight_decay):
        self.lr = lr  # read at every step, so a schedule just sets `opt.lr = get_lr(...)`
        self.weight_decay = weight_decay
        check_range(self, ("lr", "weight_decay"), 0, owner=type(self).__name__)
        params = _trainable(params)
        self.step_count = 0
        self.groups = [FlatGroup("decay", [p for p in params if p.data.ndim >= 2], weight_decay),
                       FlatGroup("no_decay", [p for p in params if p.data.ndim < 2], 0.0)]

    def zero_grad(self):
        """Zero the flat gradient buffers and point every `p.grad` at its slice."""
        for g in self.groups:
            g.zero_grad()

    def _buffers(self):
        """{name: flat array} of the optimizer's own state; subclasses say which."""
        raise NotImplementedError

    def state_dict(self):
        """The optimizer state as {name: ndarray} (copies), ready for an .npz checkpoint."""
        sd = {name: buf.copy() for name, buf in self._buffers().items()}
        sd["step"] = np.array(self.step_count, dtype=np.int64)
        return sd

    def load_state_dict(self, sd):
        """Copy a `state_dict()` back in place; shapes must match this optimizer's buffers."""
        bufs = self._buffers()
        missing = sorted((set(bufs) | {"step"}) - set(sd))
        if missing:
            raise ValueError(f"optimizer state is missing {missing}")
        for name, buf in bufs.items():
            arr = np.asarray(sd[name])
            if arr.shape != buf.shape:
                raise ValueError(f"optimizer state {name!r} has shape {arr.shape}, expected {buf.shape} "
                                 "(was it saved for a different model?)")
            buf[...] = arr
        self.step_count = int(sd["step"])


class AdamW(_Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's semantics:

        p <- p - lr wd p                      (decay only for the `decay` group: ndim >= 2)
        m <- b1 m + (1 - b1) g                v <- b2 v + (1 - b2) g^2
        p <- p - lr m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)
    """

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr, weight_decay)
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise TypeError(f"AdamW betas must be a pair (beta1, beta2), got {betas!r}")
        check_range(SimpleNamespace(beta1=betas[0], beta2=betas[1]), ("beta1", "beta2"), 0, 1, owner="AdamW")
        self.betas, self.eps = tuple(betas), eps
        check_range(self, ("eps",), 0, owner="AdamW")
        self.m = [np.zeros_like(g.data) for g in self.groups]  # first moment, one flat array a group
        self.v = [np.zeros_like(g.data) for g in self.groups]  # second moment

    def step(self):
        self.step_count += 1
        for g, m, v in zip(self.groups, self.m, self.v):
            if len(g) == 0:
                continue
            g.sync()
            kernels.adamw_step(g.data, g.grad, m, v, self.lr, self.betas[0], self.betas[1],
                               self.eps, g.weight_decay, self.step_count)

    def _buffers(self):
        out = {}
        for g, m, v in zip(self.groups, self.m, self.v):
            out[f"{g.name}.m"], out[f"{g.name}.v"] = m, v
        return out


class SGD(_Optimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay, PyTorch's semantics
    (dampening 0, no Nesterov):

        g <- g + wd p            (only for the `decay` group: ndim >= 2, as in AdamW)
        b <- momentum b + g      (b starts at 0, so the first step has b = g)
        p <- p - lr b
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.momentum = momentum
        check_range(self, ("momentum",), 0, 1, owner="SGD")
        self.buf = [np.zeros_like(g.data) for g in self.groups] if momentum else []

    def step(self):
        self.step_count += 1
        for i, g in enumerate(self.groups):
            if len(g) == 0:
                continue
            g.sync()
            d = g.grad + g.weight_decay * g.data if g.weight_decay else g.grad
            if self.momentum:
                b = self.buf[i]
                b *= self.momentum
                b += d
                d = b
            g.data -= self.lr * d

    def _buffers(self):
        return {f"{g.name}.momentum": b for g, b in zip(self.groups, self.buf)}


def get_lr(it, lr, min_lr, warmup_iters, lr_decay_iters):
    """Learning rate at iteration `it`: linear warmup, then cosine decay to `min_lr`, then flat.

        it < warmup:            lr * (it + 1) / (warmup + 1)      (never exactly 0)
        warmup <= it <= decay:  min_lr + (lr - min_lr) * (1 + cos(pi * r)) / 2,
                                r = (it - warmup) / (decay - warmup), going 0 -> 1
        it > decay:             min_lr

    Example: get_lr(0, 1e-3, 1e-4, 100, 2000) = 1e-3/101; get_lr(100, ...) = 1e-3 (the peak);
    get_lr(1050, ...) = 5.5e-4 (halfway); get_lr(2000, ...) = 1e-4.
    """
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    r = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * r))


def clip_grad_norm(params, max_norm):
    """Scale all gradients together so their global L2 norm is at most `max_norm`; return the norm
    before clipping (as PyTorch's clip_grad_norm_ does, with its 1e-6 guard).

    Each gradient's sum of squares is a float32 dot product (no float64 copy of the gradients);
    only the per-tensor partial sums are added up in Python floats (double precision).
    """
    check_range(SimpleNamespace(max_norm=max_norm), ("max_norm",), 0, owner="clip_grad_norm")
    if max_norm == 0:  # would zero every gradient
        raise ValueError("clip_grad_norm max_norm must be > 0, got 0")
    grads = [p.grad for p in _trainable(params) if p.grad is not None]
    total = math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= g.dtype.type(coef)
    return total
