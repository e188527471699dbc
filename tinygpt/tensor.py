"""Tensor: a NumPy array that remembers how it was made, so gradients can flow back through it.

This module owns the autograd engine: the `Tensor` class, the graph it builds, `backward()`, and
the elementwise, reduction, shape and indexing ops (the grad and anomaly modes and the
broadcasting helpers they share are in autograd.py). Each op is one method: the forward computes the data with NumPy, a `_backward`
closure right below it says how `out.grad` flows back to the inputs (the derivative stated once,
in a comment), and `_result` wraps the data into `out`. What it leaves out: the functions of
tensors (`concatenate`, `stack`, `where`, and the fused softmax, cross-entropy, layer norm,
attention, ...): `functional.py`, written in the same pattern.

Conventions:
- float32 by default; float64 is kept when given (gradient checks use it); integer tensors are
  allowed (token ids) but never differentiable.
- Gradients of leaves (parameters, inputs) accumulate, in place, over `backward()` calls until
  zeroed. Gradients of intermediate tensors are freed as soon as they have been passed on.
- Broadcasting is undone in exactly one place: `unbroadcast`.
"""
import numbers

import numpy as np

from . import autograd
from .autograd import _axis, _check_backward, _count, _expand, _freed_backward, _normalize_axis, _raise_anomaly, unbroadcast

class Tensor:
    """An n-dimensional array with reverse-mode autodiff. `.data` is the np.ndarray."""

    __array_ufunc__ = None  # `ndarray * Tensor` defers to Tensor.__rmul__ instead of looping in NumPy

    def __init__(self, data, requires_grad=False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        arr = np.asarray(data, dtype=dtype)
        if dtype is None and not isinstance(data, (np.ndarray, np.generic)) and arr.dtype == np.float64:
            arr = arr.astype(np.float32)  # Python floats and lists default to float32
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"Tensor data must be numeric (float or int), got dtype {arr.dtype}")
        if arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        if requires_grad and arr.dtype.kind != "f":
            raise TypeError(f"only float tensors can require gradients, got dtype {arr.dtype}")
        self.data = arr
        self.grad = None                 # np.ndarray of data's shape, or None
        self.requires_grad = bool(requires_grad)
        self._prev = ()                  # the tensors this one was computed from
        self._backward = None            # closure: pushes self.grad into self._prev's grads
        self._op = ""                    # the op that made it, for debugging

    # ---- basic properties -----------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self._backward is None)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    def numpy(self):
        return self.data

    def item(self):
        return self.data.item()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def zero_grad(self):
        self.grad = None

    # ---- graph plumbing -------------------------------------------------------------------
    def _result(self, data, parents, op, backward):
        """Wrap an op's output as `out`. It joins the graph (keeps its parents and `backward`, the
        closure that pushes out.grad into the parents' grads) only if grad mode is on and a parent
        requires a gradient; otherwise it keeps neither, so no_grad builds no graph.

        subtle: `backward` reads the `out` returned here, by late binding: the op defines the
        closure first and binds `out = self._result(...)` after it; the closure runs only later.
        """
        out = Tensor.__new__(Tensor)
        # subtle: NumPy returns a scalar, not a 0-d array, from full reductions; keep arrays
        out.data, out.grad, out._op = np.asarray(data), None, op
        # masked_fill is exempt: its fill value is the caller's constant (-inf: the causal mask)
        if autograd.is_anomaly_enabled() and op != "masked_fill" and not np.isfinite(out.data).all():
            _raise_anomaly(out.data, op, "forward", "its output")
        out.requires_grad = autograd.is_grad_enabled() and any(p.requires_grad for p in parents)
        out._prev = parents if out.requires_grad else ()
        out._backward = backward if out.requires_grad else None
        return out

    def _accumulate(self, grad):
        """Add `grad` into self.grad. Leaves own their buffer and add in place; intermediate
        tensors never modify a gradient array in place, because it may be shared."""
        if not self.requires_grad:
            return
        if grad.dtype != self.data.dtype:
            grad = grad.astype(self.data.dtype)
        if self._backward is None:  # a leaf: its .grad is what the user and optimizer see
            if self.grad is None:
                self.grad = np.array(grad, copy=True)
            else:
                self.grad += grad
        else:
            self.grad = grad if self.grad is None else self.grad + grad

    def backward(self, grad=None, retain_graph=False, on_leaf=None):
        """Backpropagate from this tensor: fill `.grad` of every leaf that requires it.
        `on_leaf(p)`, if given, is called for each leaf p that an op reads, as soon as all those
        ops have run: p.grad is final while backward goes on (distributed.py sends it then)."""
        if not self.requires_grad:
            raise ValueError("backward() on a tensor that does not require grad "
                             "(no input had requires_grad=True, or it was made under no_grad)")
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward() without `grad` needs a scalar, got shape {self.shape}; "
                                 "pass grad= an array of that shape")
            grad = np.ones_like(self.data)
        else:
            grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad)
            if grad.dtype.kind not in "fiu":
                raise TypeError(f"grad must be a numeric array, got dtype {grad.dtype}")
            if grad.shape != self.shape:
                raise ValueError(f"grad has shape {grad.shape} but the tensor has shape {self.shape}")

        # topological order, iteratively: a long chain of ops must not hit Python's recursion limit
        topo, visited, stack = [], set(), [(self, False)]
        while stack:
            node, done = stack.pop()
            if done:
                topo.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in node._prev if p.requires_grad and id(p) not in visited)

        self._accumulate(grad.astype(self.dtype, copy=True) if self._backward is None else grad)
        del node, stack, visited
        uses = autograd._leaf_uses(topo) if on_leaf is not None else None
        while topo:  # reverse topological order: every node after all the nodes computed from it
            # subtle: pop, so this list stops holding the node. Once its backward has run and its
            # closure is dropped, nothing else refers to an intermediate tensor (unless the caller
            # kept one), so its activation arrays are freed as backward goes (as PyTorch frees
            # its saved tensors), not all at the end; the gradients being made reuse that memory
            node = topo.pop()
            if node._backward is None:
                continue  # a leaf: keep its gradient
            if node.grad is not None:
                node._backward()
                if autograd.is_anomaly_enabled():
                    _check_backward(node)
            if uses is not None:
                autograd._count_down(node, uses, on_leaf)
            node.grad = None  # intermediate gradients are not kept
            if not retain_graph:
                node._prev, node._backward = (), _freed_backward

    # ---- arithmetic (broadcasting) ---------------------------------------------------------
    def _lift(self, other):
        """Python scalars and arrays become constant tensors; scalars and lists take self's dtype."""
        if isinstance(other, Tensor):
            return other
        if isinstance(other, np.ndarray):
            return Tensor(other)
        dtype = self.dtype if self.dtype.kind == "f" else None
        if isinstance(other, (numbers.Real, np.number, np.bool_)):
            return Tensor(np.asarray(other, dtype=dtype))
        # subtle: casting straight to a float dtype would turn None into NaN: look at the values first
        arr = np.asarray(other) if isinstance(other, (list, tuple)) else None
        if arr is None or arr.dtype.kind not in "biuf":
            raise TypeError(f"a Tensor operand must be a Tensor, an array or a real number, "
                            f"got {type(other).__name__} {other!r}")
        return Tensor(arr.astype(dtype) if dtype else arr)

    def _binary(self, other, fn, name):
        """(other as a Tensor, fn(self.data, other.data)), naming both shapes if they do not broadcast."""
        other = self._lift(other)
        try:
            return other, fn(self.data, other.data)
        except ValueError as e:
            raise ValueError(f"cannot broadcast shapes {self.shape} and {other.shape} for '{name}'") from e

    def __add__(self, other):
        other, data = self._binary(other, np.add, "+")

        def _backward():  # d(a+b)/da = d(a+b)/db = 1
            self._accumulate(unbroadcast(out.grad, self.shape))
            other._accumulate(unbroadcast(out.grad, other.shape))
        out = self._result(data, (self, other), "+", _backward)
        return out

    def __sub__(self, other):
        other, data = self._binary(other, np.subtract, "-")

        def _backward():  # d(a-b)/da = 1, d(a-b)/db = -1
            self._accumulate(unbroadcast(out.grad, self.shape))
            other._accumulate(unbroadcast(-out.grad, other.shape))
        out = self._result(data, (self, other), "-", _backward)
        return out

    def __mul__(self, other):
        other, data = self._binary(other, np.multiply, "*")

        def _backward():  # d(ab)/da = b, d(ab)/db = a
            if self.requires_grad:
                self._accumulate(unbroadcast(out.grad * other.data, self.shape))
            if other.requires_grad:
                other._accumulate(unbroadcast(out.grad * self.data, other.shape))
        out = self._result(data, (self, other), "*", _backward)
        return out

    def __truediv__(self, other):
        other, data = self._binary(other, np.true_divide, "/")

        def _backward():  # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
            if self.requires_grad:
                self._accumulate(unbroadcast(out.grad / other.data, self.shape))
            if other.requires_grad:
                other._accumulate(unbroadcast(-out.grad * out.data / other.data, other.shape))
        out = self._result(data, (self, other), "/", _backward)
        return out

    def __pow__(self, other):
        other, data = self._binary(other, np.power, "**")

        def _backward():  # d(a^b)/da = b a^(b-1), d(a^b)/db = a^b ln a
            if self.requires_grad:
                self._accumulate(unbroadcast(out.grad * other.data * self.data ** (other.data - 1), self.shape))
            if other.requires_grad:
                other._accumulate(unbroadcast(out.grad * out.data * np.log(self.data), other.shape))
        out = self._result(data, (self, other), "**", _backward)
        return out

    def __neg__(self):
        return self * -1

    __radd__ = __add__
    __rmul__ = __mul__

    def __rsub__(self, other):
        return self._lift(other) - self

    def __rtruediv__(self, other):
        return self._lift(other) / self

    def __rpow__(self, other):
        return self._lift(other) ** self

    def __matmul__(self, other):
        """Matrix product with np.matmul's rules: 2-D, batched N-D (batch dims broadcast), 1-D."""
        other = self._lift(other)
        a, b = self.data, other.data
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul needs at least 1-D operands, got shapes {a.shape} and {b.shape}")
        a2 = a[None, :] if a.ndim == 1 else a  # a vector is a (1, K) matrix on the left
        b2 = b[:, None] if b.ndim == 1 else b  # and a (K, 1) matrix on the right
        try:
            c2 = np.matmul(a2, b2)             # (..., M, N)
        except ValueError as e:
            raise ValueError(f"matmul shapes {a.shape} and {b.shape} do not match "
                             f"(inner dims {a.shape[-1]} vs {b2.shape[-2]})") from e
        data = c2[..., 0, :] if a.ndim == 1 else c2  # drop the vectors' axes again, as np.matmul does
        data = data[..., 0] if b.ndim == 1 else data

        def _backward():  # C = A B:  dA = dC B^T,  dB = A^T dC  (summed over broadcast batch dims)
            g = out.grad.reshape(c2.shape)     # (..., M, N): the vectors' axes back
            if self.requires_grad:
                self._accumulate(unbroadcast(np.matmul(g, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape))
            if other.requires_grad:
                if b2.ndim == 2 and a2.ndim > 2:
                    # subtle: a weight shared over a batch: fold the batch into rows, one
                    # (K, rows) @ (rows, N) product instead of a stack of them summed after
                    rows = int(np.prod(a2.shape[:-1]))  # not -1: it cannot be inferred when K or N is 0
                    db = a2.reshape(rows, a2.shape[-1]).T @ g.reshape(rows, g.shape[-1])
                else:
                    db = unbroadcast(np.matmul(np.swapaxes(a2, -1, -2), g), b2.shape)
                other._accumulate(db.reshape(b.shape))
        out = self._result(data, (self, other), "@", _backward)
        return out

    def __rmatmul__(self, other):
        return self._lift(other) @ self

    # ---- elementwise ------------------------------------------------------------------------
    def _unary(self, data, local_grad, name):
        """An elementwise op whose derivative is `local_grad()` (computed only if needed)."""
        def _backward():  # chain rule: dx = dy * f'(x)
            self._accumulate(out.grad * local_grad())
        out = self._result(data, (self,), name, _backward)
        return out

    def exp(self):
        out_data = np.exp(self.data)
        return self._unary(out_data, lambda: out_data, "exp")                  # d e^x = e^x

    def log(self):
        return self._unary(np.log(self.data), lambda: 1.0 / self.data, "log")  # d ln x = 1/x

    def sqrt(self):
        out_data = np.sqrt(self.data)
        return self._unary(out_data, lambda: 0.5 / out_data, "sqrt")         # d √x = 1/(2√x)

    def tanh(self):
        out_data = np.tanh(self.data)
        return self._unary(out_data, lambda: 1.0 - out_data ** 2, "tanh")      # d tanh = 1 - tanh²

    def relu(self):
        return self._unary(np.maximum(self.data, 0), lambda: self.data > 0, "relu")  # 1 where x > 0

    # ---- reductions ---------------------------------------------------------------------------
    def sum(self, axis=None, keepdims=False):
        axes = _normalize_axis(axis, self.ndim)
        data = self.data.sum(axis=axes, keepdims=keepdims)

        def _backward():  # every summed element gets the output's gradient
            self._accumulate(_expand(out.grad, self.shape, axes, keepdims))
        out = self._result(data, (self,), "sum", _backward)
        return out

    def mean(self, axis=None, keepdims=False):
        axes = _normalize_axis(axis, self.ndim)
        n = _count(self.shape, axes, "mean")
        return self.sum(axis=axes, keepdims=keepdims) * (1.0 / n)

    def var(self, axis=None, keepdims=False, ddof=0):
        """Variance, sum((x - mean)^2) / (n - ddof): NumPy's default ddof=0 (ddof=1 for the
        unbiased estimate). Made of the ops above, so its gradient needs no rule of its own."""
        axes = _normalize_axis(axis, self.ndim)
        n = _count(self.shape, axes, "var", ddof)
        centered = self - self.mean(axis=axes, keepdims=True)
        return (centered * centered).sum(axis=axes, keepdims=keepdims) / (n - ddof)

    def max(self, axis=None, keepdims=False):
        """Maximum. subtle: with ties, the gradient is split evenly among the maxima."""
        axes = _normalize_axis(axis, self.ndim)
        if any(self.shape[a] == 0 for a in axes):
            raise ValueError(f"max over axes {axes} of a tensor of shape {self.shape}: "
                             "an empty axis has no maximum")
        m = self.data.max(axis=axes, keepdims=True)

        def _backward():  # the gradient goes to the maxima
            hit = self.data == m
            self._accumulate(_expand(out.grad, self.shape, axes, keepdims) * hit / hit.sum(axis=axes, keepdims=True))
        out = self._result(m if keepdims else m.squeeze(axes), (self,), "max", _backward)
        return out

    # ---- shape ----------------------------------------------------------------------------------
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        try:
            data = self.data.reshape(shape)
        except ValueError as e:
            raise ValueError(f"cannot reshape a tensor of shape {self.shape} into {tuple(shape)}") from e

        def _backward():  # the same numbers, in the input's shape
            self._accumulate(out.grad.reshape(self.shape))
        out = self._result(data, (self,), "reshape", _backward)
        return out

    view = reshape

    def permute(self, *axes):
        given = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = [_axis(a, self.ndim) for a in given]
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"permute axes {tuple(given)} are not a permutation of {self.ndim} dims")

        def _backward():  # undo the permutation
            self._accumulate(out.grad.transpose(np.argsort(axes)))
        out = self._result(self.data.transpose(axes), (self,), "permute", _backward)
        return out

    def transpose(self, dim0=-2, dim1=-1):
        """Swap two axes (the last two by default)."""
        dim0, dim1 = _axis(dim0, self.ndim), _axis(dim1, self.ndim)
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return self.permute(axes)

    T = property(lambda self: self.permute(tuple(reversed(range(self.ndim)))))

    def split(self, indices_or_sections, axis=0):
        """np.split: N equal sections, or split points. Returns a list of tensors, each a slice
        of self (so each piece's gradient goes into its own slice, through `__getitem__`)."""
        axis = _axis(axis, self.ndim)
        if isinstance(indices_or_sections, (int, np.integer)) and indices_or_sections < 1:
            raise ValueError(f"split needs at least 1 section, got {indices_or_sections}")
        try:
            pieces = np.split(self.data, indices_or_sections, axis=axis)  # views: for their sizes
        except ValueError as e:
            raise ValueError(f"cannot split axis {axis} of size {self.shape[axis]} into "
                             f"{indices_or_sections} equal sections") from e
        ends = np.cumsum([p.shape[axis] for p in pieces])
        before = (slice(None),) * axis  # every axis in front of `axis`, whole
        return [self[before + (slice(int(end - p.shape[axis]), int(end)),)] for p, end in zip(pieces, ends)]

    # ---- indexing and selection ------------------------------------------------------------------
    def __getitem__(self, idx):
        idx = tuple(i.data if isinstance(i, Tensor) else i for i in idx) if isinstance(idx, tuple) else \
            (idx.data if isinstance(idx, Tensor) else idx)
        parts = idx if isinstance(idx, tuple) else (idx,)
        advanced = any(isinstance(i, (np.ndarray, list)) for i in parts)

        def _backward():  # each picked element's gradient goes back to where it was picked from
            grad = np.zeros_like(self.data)
            if advanced:
                np.add.at(grad, idx, out.grad)  # repeated indices must add up, not overwrite
            else:
                grad[idx] = out.grad            # basic indexing hits each element at most once
            self._accumulate(grad)
        out = self._result(self.data[idx], (self,), "getitem", _backward)
        return out

    def masked_fill(self, mask, value):
        """Where boolean `mask` is True (broadcast to self's shape), put the number `value`;
        elsewhere keep self."""
        mask = np.asarray(mask.data if isinstance(mask, Tensor) else mask)
        if mask.dtype != bool:
            raise TypeError(f"masked_fill needs a boolean mask, got dtype {mask.dtype}")
        value = np.asarray(value.data if isinstance(value, Tensor) else value)
        if value.ndim != 0 or value.dtype.kind not in "iuf":
            raise TypeError(f"masked_fill value must be one real number, got {value.dtype} of shape {value.shape}")
        if self.dtype.kind != "f" and not float(value).is_integer():  # -inf into int64 is garbage
            raise ValueError(f"masked_fill value {value} does not fit an integer tensor ({self.dtype})")
        try:
            shape = np.broadcast_shapes(mask.shape, self.shape)
        except ValueError:
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to {self.shape}") from None
        if shape != self.shape:
            raise ValueError(f"mask of shape {mask.shape} would broadcast the tensor of shape {self.shape} "
                             f"up to {shape}: a mask may not add to the tensor's shape")
        data = np.where(mask, value.astype(self.dtype), self.data)

        def _backward():  # filled positions no longer depend on self
            self._accumulate(np.where(mask, 0, out.grad))
        out = self._result(data, (self,), "masked_fill", _backward)
        return out
