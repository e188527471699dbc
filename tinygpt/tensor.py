"""Tensor: a NumPy array that remembers how it was made, so gradients can flow back through it.

This module owns the autograd engine: the `Tensor` class, the graph it builds, `backward()`, the
grad mode (`no_grad`), and the elementwise, reduction, shape and indexing ops. Each op is one
method: the forward computes `out` with NumPy, and right below it a `_backward` closure says how
`out.grad` flows back to the inputs. The derivative is stated once, in a comment.

Fused ops that are faster done in one piece (softmax, cross-entropy, layer norm, attention, ...)
live in `functional.py`; they use the same pattern.

Conventions:
- float32 by default; float64 is kept when given (gradient checks use it); integer tensors are
  allowed (token ids) but never differentiable.
- Gradients of leaves (parameters, inputs) accumulate, in place, over `backward()` calls until
  zeroed. Gradients of intermediate tensors are freed as soon as they have been passed on.
- Broadcasting is undone in exactly one place: `unbroadcast`.
"""
import numpy as np

_grad_enabled = True  # the grad mode; flipped by `no_grad`


def is_grad_enabled():
    return _grad_enabled


class no_grad:
    """Record no graph inside this block. Works as `with no_grad():` and as `@no_grad()`."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


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


def _normalize_axis(axis, ndim):
    """None -> all axes; int or tuple (negatives allowed) -> sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dims")
        out.append(int(a) % max(ndim, 1))
    return tuple(sorted(out))


def _expand(grad, shape, axes, keepdims):
    """Broadcast the gradient of a reduction over `axes` back to the input's `shape`."""
    if not keepdims:
        grad = np.expand_dims(grad, axes)
    return np.broadcast_to(grad, shape)


def _freed_backward():
    raise RuntimeError("backward through a graph that was already freed: "
                       "call backward(retain_graph=True) the first time to go through it twice")


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
    def _result(self, data, parents, op):
        """Wrap an op's output; it joins the graph only if an input needs a gradient."""
        out = Tensor.__new__(Tensor)
        # subtle: NumPy returns a scalar, not a 0-d array, from full reductions; keep arrays
        out.data, out.grad, out._op = np.asarray(data), None, op
        out.requires_grad = _grad_enabled and any(p.requires_grad for p in parents)
        out._prev = parents if out.requires_grad else ()
        out._backward = None
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

    def backward(self, grad=None, retain_graph=False):
        """Backpropagate from this tensor: fill `.grad` of every leaf that requires it."""
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
            if grad.shape != self.shape:
                raise ValueError(f"grad has shape {grad.shape} but the tensor has shape {self.shape}")

        # topological order, iteratively (a 10,000-op chain must not hit the recursion limit)
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
            node.grad = None  # intermediate gradients are not kept
            if not retain_graph:
                node._prev, node._backward = (), _freed_backward

    # ---- arithmetic (broadcasting) ---------------------------------------------------------
    def _lift(self, other):
        """Python scalars and arrays become constant tensors; scalars take self's dtype."""
        if isinstance(other, Tensor):
            return other
        if isinstance(other, np.ndarray):
            return Tensor(other)
        return Tensor(np.asarray(other, dtype=self.dtype if self.dtype.kind == "f" else None))

    def _binary(self, other, fn, name):
        other = self._lift(other)
        try:
            data = fn(self.data, other.data)
        except ValueError as e:
            raise ValueError(f"cannot broadcast shapes {self.shape} and {other.shape} for '{name}'") from e
        return other, self._result(data, (self, other), name)

    def __add__(self, other):
        other, out = self._binary(other, np.add, "+")

        def _backward():  # d(a+b)/da = d(a+b)/db = 1
            self._accumulate(unbroadcast(out.grad, self.shape))
            other._accumulate(unbroadcast(out.grad, other.shape))
        out._backward = _backward if out.requires_grad else None
        return out

    def __sub__(self, other):
        other, out = self._binary(other, np.subtract, "-")

        def _backward():  # d(a-b)/da = 1, d(a-b)/db = -1
            self._accumulate(unbroadcast(out.grad, self.shape))
            other._accumulate(unbroadcast(-out.grad, other.shape))
        out._backward = _backward if out.requires_grad else None
        return out

    def __mul__(self, other):
        other, out = self._binary(other, np.multiply, "*")

        def _backward():  # d(ab)/da = b, d(ab)/db = a
            if self.requires_grad:
                self._accumulate(unbroadcast(out.grad * other.data, self.shape))
            if other.requires_grad:
                other._accumulate(unbroadcast(out.grad * self.data, other.shape))
        out._backward = _backward if out.requires_grad else None
        return out

    def __truediv__(self, other):
        other, out = self._binary(other, np.true_divide, "/")

        def _backward():  # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
            if self.requires_grad:
                self._accumulate(unbroadcast(out.grad / other.data, self.shape))
            if other.requires_grad:
                other._accumulate(unbroadcast(-out.grad * out.data / other.data, other.shape))
        out._backward = _backward if out.requires_grad else None
        return out

    def __pow__(self, other):
        other, out = self._binary(other, np.power, "**")

        def _backward():  # d(a^b)/da = b a^(b-1), d(a^b)/db = a^b ln a
            if self.requires_grad:
                self._accumulate(unbroadcast(out.grad * other.data * self.data ** (other.data - 1), self.shape))
            if other.requires_grad:
                other._accumulate(unbroadcast(out.grad * out.data * np.log(self.data), other.shape))
        out._backward = _backward if out.requires_grad else None
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
        try:
            data = np.matmul(a, b)
        except ValueError as e:
            raise ValueError(f"matmul shapes {a.shape} and {b.shape} do not match "
                             f"(inner dims {a.shape[-1]} vs {b.shape[0] if b.ndim == 1 else b.shape[-2]})") from e
        out = self._result(data, (self, other), "@")

        def _backward():  # C = A B:  dA = dC B^T,  dB = A^T dC  (summed over broadcast batch dims)
            g = out.grad
            a2 = a[None, :] if a.ndim == 1 else a    # vectors become (1, K) and (K, 1) matrices
            b2 = b[:, None] if b.ndim == 1 else b
            g2 = g.reshape(g.shape[:-1] + (1,) + g.shape[-1:]) if a.ndim == 1 else g  # (.., 1, N)
            g2 = g2[..., None] if b.ndim == 1 else g2                                  # (.., M, 1)
            if self.requires_grad:
                self._accumulate(unbroadcast(np.matmul(g2, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape))
            if other.requires_grad:
                if b2.ndim == 2 and a2.ndim > 2:
                    # subtle: a weight shared over a batch (Linear): fold the batch into rows,
                    # one (K, rows) @ (rows, N) product instead of a stack of them summed after.
                    db = a2.reshape(-1, a2.shape[-1]).T @ g2.reshape(-1, g2.shape[-1])
                else:
                    db = unbroadcast(np.matmul(np.swapaxes(a2, -1, -2), g2), b2.shape)
                other._accumulate(db.reshape(b.shape))
        out._backward = _backward if out.requires_grad else None
        return out

    def __rmatmul__(self, other):
        return self._lift(other) @ self

    # ---- elementwise ------------------------------------------------------------------------
    def _unary(self, data, local_grad, name):
        """An elementwise op whose derivative is `local_grad()` (computed only if needed)."""
        out = self._result(data, (self,), name)

        def _backward():
            self._accumulate(out.grad * local_grad())
        out._backward = _backward if out.requires_grad else None
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
        out = self._result(self.data.sum(axis=axes, keepdims=keepdims), (self,), "sum")

        def _backward():  # every summed element gets the output's gradient
            self._accumulate(_expand(out.grad, self.shape, axes, keepdims))
        out._backward = _backward if out.requires_grad else None
        return out

    def mean(self, axis=None, keepdims=False):
        axes = _normalize_axis(axis, self.ndim)
        n = int(np.prod([self.shape[a] for a in axes]))
        return self.sum(axis=axes, keepdims=keepdims) * (1.0 / n)

    def var(self, axis=None, keepdims=False, ddof=0):
        """Variance, NumPy's default ddof=0 (use ddof=1 for the unbiased estimate)."""
        axes = _normalize_axis(axis, self.ndim)
        n = int(np.prod([self.shape[a] for a in axes]))
        centered = self.data - self.data.mean(axis=axes, keepdims=True)
        out = self._result((centered ** 2).sum(axis=axes, keepdims=keepdims) / (n - ddof), (self,), "var")

        def _backward():  # d var / dx_i = 2 (x_i - mean) / (n - ddof); the mean's term sums to 0
            self._accumulate(_expand(out.grad, self.shape, axes, keepdims) * centered * (2.0 / (n - ddof)))
        out._backward = _backward if out.requires_grad else None
        return out

    def max(self, axis=None, keepdims=False):
        """Maximum. subtle: with ties, the gradient is split evenly among the maxima."""
        axes = _normalize_axis(axis, self.ndim)
        m = self.data.max(axis=axes, keepdims=True)
        out = self._result(m if keepdims else m.squeeze(axes), (self,), "max")

        def _backward():
            hit = self.data == m
            self._accumulate(_expand(out.grad, self.shape, axes, keepdims) * hit / hit.sum(axis=axes, keepdims=True))
        out._backward = _backward if out.requires_grad else None
        return out

    # ---- shape ----------------------------------------------------------------------------------
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        try:
            data = self.data.reshape(shape)
        except ValueError as e:
            raise ValueError(f"cannot reshape a tensor of shape {self.shape} into {tuple(shape)}") from e
        out = self._result(data, (self,), "reshape")

        def _backward():
            self._accumulate(out.grad.reshape(self.shape))
        out._backward = _backward if out.requires_grad else None
        return out

    view = reshape

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        if sorted(a % self.ndim for a in axes) != list(range(self.ndim)):
            raise ValueError(f"permute axes {tuple(axes)} are not a permutation of {self.ndim} dims")
        out = self._result(self.data.transpose(axes), (self,), "permute")

        def _backward():  # undo the permutation
            self._accumulate(out.grad.transpose(np.argsort([a % self.ndim for a in axes])))
        out._backward = _backward if out.requires_grad else None
        return out

    def transpose(self, dim0=-2, dim1=-1):
        """Swap two axes (the last two by default)."""
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return self.permute(axes)

    T = property(lambda self: self.permute(tuple(reversed(range(self.ndim)))))

    def split(self, indices_or_sections, axis=0):
        """np.split: N equal sections, or split points. Returns a list of tensors."""
        axis = _normalize_axis(axis, self.ndim)[0]
        try:
            pieces = np.split(self.data, indices_or_sections, axis=axis)
        except ValueError as e:
            raise ValueError(f"cannot split axis {axis} of size {self.shape[axis]} into "
                             f"{indices_or_sections} equal sections") from e
        starts = np.cumsum([0] + [p.shape[axis] for p in pieces])
        shared = {"grad": None}  # the one full-size gradient array the pieces write into

        def piece(data, where):
            out = self._result(data, (self,), "split")

            def _backward():  # each piece's gradient goes into its own slice of one array
                # subtle: while that array is still self.grad (self is not a leaf and nothing
                # else added to it), the next piece writes its slice in place: one allocation
                # for all the pieces, instead of a zero-filled full-size array per piece
                if shared["grad"] is not None and self.grad is shared["grad"]:
                    shared["grad"][where] += out.grad
                else:
                    grad = np.zeros_like(self.data)
                    grad[where] = out.grad
                    self._accumulate(grad)
                    shared["grad"] = grad
            out._backward = _backward if out.requires_grad else None
            return out

        index = [slice(None)] * self.ndim
        outs = []
        for i, data in enumerate(pieces):
            index[axis] = slice(int(starts[i]), int(starts[i + 1]))
            outs.append(piece(data, tuple(index)))
        return outs

    # ---- indexing and selection ------------------------------------------------------------------
    def __getitem__(self, idx):
        idx = tuple(i.data if isinstance(i, Tensor) else i for i in idx) if isinstance(idx, tuple) else \
            (idx.data if isinstance(idx, Tensor) else idx)
        out = self._result(self.data[idx], (self,), "getitem")
        parts = idx if isinstance(idx, tuple) else (idx,)
        advanced = any(isinstance(i, (np.ndarray, list)) for i in parts)

        def _backward():
            grad = np.zeros_like(self.data)
            if advanced:
                np.add.at(grad, idx, out.grad)  # repeated indices must add up, not overwrite
            else:
                grad[idx] = out.grad            # basic indexing hits each element at most once
            self._accumulate(grad)
        out._backward = _backward if out.requires_grad else None
        return out

    def masked_fill(self, mask, value):
        """Where `mask` is True (broadcast to self's shape), put `value`; elsewhere keep self."""
        mask = np.asarray(mask.data if isinstance(mask, Tensor) else mask, dtype=bool)
        try:
            data = np.where(mask, np.asarray(value, dtype=self.dtype), self.data)
        except ValueError as e:
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to {self.shape}") from e
        if data.shape != self.shape:
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to {self.shape}")
        out = self._result(data, (self,), "masked_fill")

        def _backward():  # filled positions no longer depend on self
            self._accumulate(np.where(mask, 0, out.grad))
        out._backward = _backward if out.requires_grad else None
        return out


# ---- functions of several tensors ---------------------------------------------------------------
def _as_tensors(tensors):
    return [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]


def concatenate(tensors, axis=0):
    """np.concatenate for tensors; the gradient is split back into the pieces."""
    tensors = _as_tensors(tensors)
    try:
        data = np.concatenate([t.data for t in tensors], axis=axis)
    except ValueError as e:
        raise ValueError(f"cannot concatenate shapes {[t.shape for t in tensors]} on axis {axis}") from e
    out = tensors[0]._result(data, tuple(tensors), "concatenate")
    bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1]

    def _backward():
        for t, g in zip(tensors, np.split(out.grad, bounds, axis=axis)):
            t._accumulate(g)
    out._backward = _backward if out.requires_grad else None
    return out


def stack(tensors, axis=0):
    """np.stack for tensors: each gets its slice of the gradient back."""
    tensors = _as_tensors(tensors)
    if len({t.shape for t in tensors}) > 1:
        raise ValueError(f"stack needs tensors of one shape, got {[t.shape for t in tensors]}")
    axis = _normalize_axis(axis, tensors[0].ndim + 1)[0]
    return concatenate([t.reshape(t.shape[:axis] + (1,) + t.shape[axis:]) for t in tensors], axis=axis)


def where(condition, x, y):
    """Elementwise `x if condition else y`, broadcasting all three like np.where."""
    cond = np.asarray(condition.data if isinstance(condition, Tensor) else condition, dtype=bool)
    x, y = _as_tensors([x, y])
    try:
        data = np.where(cond, x.data, y.data)
    except ValueError as e:
        raise ValueError(f"cannot broadcast shapes {cond.shape}, {x.shape} and {y.shape} for where") from e
    out = x._result(data, (x, y), "where")

    def _backward():  # the gradient goes to whichever side was picked
        x._accumulate(unbroadcast(np.where(cond, out.grad, 0), x.shape))
        y._accumulate(unbroadcast(np.where(cond, 0, out.grad), y.shape))
    out._backward = _backward if out.requires_grad else None
    return out
