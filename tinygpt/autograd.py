"""The rules around the graph that every op shares: the grad mode (`no_grad`), the anomaly mode
(`detect_anomaly`), the count behind backward's `on_leaf` hook (`_leaf_uses`, `_count_down`),
and the helpers for broadcasting and axes (`unbroadcast`, `_axis`, `_normalize_axis`, `_count`,
`_expand`).

What it leaves out: the graph itself and the ops (tensor.py, functional.py), which read the two
modes through `is_grad_enabled()` and `is_anomaly_enabled()`.
"""
import contextlib

import numpy as np

_grad_enabled = True  # the grad mode; switched off inside `no_grad`
_anomaly = False      # anomaly mode; switched on inside `detect_anomaly`


def is_grad_enabled():
    return _grad_enabled


def is_anomaly_enabled():
    return _anomaly


@contextlib.contextmanager
def no_grad():
    """Record no graph inside this block. Works as `with no_grad():` and as `@no_grad()`."""
    global _grad_enabled
    prev, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = prev


@contextlib.contextmanager
def detect_anomaly():
    """Inside this block, every op's output and every gradient that backward() produces is checked
    for NaN and inf, and the first one found raises FloatingPointError naming the op (its `_op`,
    e.g. 'log', '@', 'cross_entropy'), whether its forward or its backward made it, and the shape.
    Like torch.autograd.detect_anomaly: slow (a pass over every array), for finding where a run
    diverges; outside it each op pays one flag test."""
    global _anomaly
    prev, _anomaly = _anomaly, True
    try:
        yield
    finally:
        _anomaly = prev


def _raise_anomaly(array, op, stage, part):
    kind = "NaN" if np.isnan(array).any() else "inf"
    raise FloatingPointError(f"detect_anomaly: the {stage} of '{op}' produced {kind} in {part}, "
                             f"of shape {array.shape}")


def _check_backward(node):
    """Anomaly mode: the gradients that node's backward just pushed into its inputs.
    subtle: a leaf's gradient accumulates, so one left non-finite by an earlier backward() is
    blamed on the first op that adds to it here: zero the gradients first."""
    for i, p in enumerate(node._prev):
        if p.grad is not None and not np.isfinite(p.grad).all():
            _raise_anomaly(p.grad, node._op, "backward", f"the gradient of its input {i}")


def _leaf_uses(topo):
    """{id(leaf): how many ops of `topo` read it}, for the `on_leaf` hook of backward()."""
    uses = {}
    for node in topo:
        for p in node._prev:
            if p.requires_grad and p._backward is None:
                uses[id(p)] = uses.get(id(p), 0) + 1
    return uses


def _count_down(node, uses, on_leaf):
    """`node`'s backward has run: its leaves wait for one op fewer; a leaf that waits for none
    has its final gradient, and `on_leaf` gets it now, while the rest of backward goes on."""
    for p in node._prev:
        if id(p) in uses:
            uses[id(p)] -= 1
            if uses[id(p)] == 0:
                on_leaf(p)


def unbroadcast(grad, shape):
    """Sum `grad` down to `shape`, undoing NumPy broadcasting.

    Example: x of shape (3, 1) + y of shape (4,) broadcasts to (3, 4); the gradient for x is the
    (3, 4) gradient summed over axis 1 (kept), and for y summed over axis 0 (dropped).
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)  # leading axes that broadcasting added
    axes = tuple(range(extra)) + tuple(
        i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1)
    grad = grad.sum(axis=axes, keepdims=True) if axes else grad
    return grad.reshape(shape)


def _axis(a, ndim):
    """One axis (negatives count from the end) -> its index in [0, ndim). A 0-d tensor has none."""
    if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
        raise TypeError(f"an axis must be an int, got {a!r}")
    if not -ndim <= a < ndim:
        raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dims")
    return int(a) % ndim


def _normalize_axis(axis, ndim):
    """None -> all axes; int or tuple (negatives allowed) -> sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = [_axis(a, ndim) for a in (axis if isinstance(axis, (tuple, list)) else (axis,))]
    if len(set(axes)) < len(axes):
        raise ValueError(f"axis {axis} names an axis twice")
    return tuple(sorted(axes))


def _count(shape, axes, op, ddof=0):
    """How many elements a reduction over `axes` averages: more than ddof, or ValueError."""
    n = int(np.prod([shape[a] for a in axes]))
    if n <= ddof:
        raise ValueError(f"{op}{f' with ddof={ddof}' if ddof else ''} over axes {axes} of a tensor of "
                         f"shape {shape} needs more than {ddof} elements, got {n}")
    return n


def _expand(grad, shape, axes, keepdims):
    """Broadcast the gradient of a reduction over `axes` back to the input's `shape`."""
    if not keepdims:
        grad = np.expand_dims(grad, axes)
    return np.broadcast_to(grad, shape)


def _freed_backward():
    raise RuntimeError("backward through a graph that was already freed: "
                       "call backward(retain_graph=True) the first time to go through it twice")
