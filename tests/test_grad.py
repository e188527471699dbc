"""Gradient checks for every Tensor op, on hypothesis-generated shapes (up to 4-D, broadcasting
pairs, size-1 dims) and values, against a central finite difference in float64 (see gradcheck.py).

Domains are narrowed only where the math demands it: log/sqrt/pow need positive bases, division
a denominator away from 0, relu and max have kinks (no derivative at 0 or at ties).
"""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt as tg
from gradcheck import arrays, broadcast_pairs, check_grad, nonscalar_shapes, shapes

N = 50  # hypothesis examples per op


def away_from_zero(a, gap=1e-3):
    """Push values off a kink at 0 (finite differences straddling it are meaningless)."""
    return np.where(np.abs(a) < gap, np.where(a < 0, -gap, gap) * 10, a)


# ---- binary arithmetic, with broadcasting ---------------------------------------------------------
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a ** b,
}


@pytest.mark.parametrize("op", BINARY)
@settings(max_examples=N)
@given(data=st.data(), shapes_=broadcast_pairs)
def test_binary_broadcasting(op, data, shapes_):
    sa, sb = shapes_.input_shapes
    a = data.draw(arrays(sa, 0.5, 2.0) if op == "pow" else arrays(sa))
    b = data.draw(arrays(sb))
    if op == "div":
        b = np.where(np.abs(b) < 0.5, 0.5 + np.abs(b), b)  # 1/b needs b away from 0
    check_grad(BINARY[op], a, b)


@pytest.mark.parametrize("op", [
    lambda x: 2.5 + x, lambda x: 2.5 - x, lambda x: 2.5 * x, lambda x: 2.5 / x, lambda x: 2.5 ** x,
    lambda x: x + 2.5, lambda x: x - 2.5, lambda x: x * 2.5, lambda x: x / 2.5, lambda x: x ** 3,
    lambda x: -x, lambda x: np.full(x.shape, 2.0) * x, lambda x: x - np.ones(x.shape),
], ids=["radd", "rsub", "rmul", "rtruediv", "rpow", "add", "sub", "mul", "div", "pow_int", "neg",
        "rmul_array", "sub_array"])
@settings(max_examples=N)
@given(data=st.data(), shape=shapes)
def test_scalar_and_reflected(op, data, shape):
    x = data.draw(arrays(shape))
    x = np.where(np.abs(x) < 0.5, 0.5 + np.abs(x), x)  # the reflected division divides by x
    check_grad(op, x)


@settings(max_examples=N)
@given(data=st.data(), shape=shapes, p=st.sampled_from([0.5, -1.5, 2.0, 0.3]))
def test_pow_fractional(data, shape, p):
    check_grad(lambda x: x ** p, data.draw(arrays(shape, 0.2, 3.0)))


# ---- matmul: 2-D, batched with broadcast batch dims, vectors ----------------------------------------
@settings(max_examples=N)
@given(data=st.data(), m=st.integers(1, 5), k=st.integers(1, 5), n=st.integers(1, 5),
       batch=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3),
       vec=st.sampled_from(["none", "left", "right", "both"]))
def test_matmul(data, m, k, n, batch, vec):
    ba, bb = batch.input_shapes
    sa = (k,) if vec in ("left", "both") else ba + (m, k)
    sb = (k,) if vec in ("right", "both") else bb + (k, n)
    check_grad(lambda a, b: a @ b, data.draw(arrays(sa)), data.draw(arrays(sb)))


@settings(max_examples=20)
@given(data=st.data(), b=st.integers(1, 3), t=st.integers(1, 4), k=st.integers(1, 5), n=st.integers(1, 5))
def test_matmul_shared_weight(data, b, t, k, n):
    """(B, T, K) @ (K, N): the Linear-layer path whose weight gradient folds the batch into rows."""
    check_grad(lambda x, w: x @ w, data.draw(arrays((b, t, k))), data.draw(arrays((k, n))))
    check_grad(lambda x, w: x @ w.T, data.draw(arrays((b, t, k))),
               data.draw(arrays((n, k))))


# ---- elementwise ---------------------------------------------------------------------------------------
UNARY = {
    "exp": (lambda x: x.exp(), -3, 3),
    "log": (lambda x: x.log(), 0.05, 5),
    "sqrt": (lambda x: x.sqrt(), 0.05, 5),
    "tanh": (lambda x: x.tanh(), -3, 3),
    "relu": (lambda x: x.relu(), -3, 3),
}


@pytest.mark.parametrize("op", UNARY)
@settings(max_examples=N)
@given(data=st.data(), shape=shapes)
def test_unary(op, data, shape):
    f, lo, hi = UNARY[op]
    x = data.draw(arrays(shape, lo, hi))
    check_grad(f, away_from_zero(x) if op == "relu" else x)


# ---- reductions ------------------------------------------------------------------------------------------
def axis_strategy(ndim):
    """None, one axis or a tuple of distinct axes, negatives included."""
    if ndim == 0:
        return st.none()
    one = st.integers(-ndim, ndim - 1)
    many = st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).flatmap(
        lambda axes: st.tuples(*[st.sampled_from([a, a - ndim]) for a in axes]))
    return st.one_of(st.none(), one, many)


@pytest.mark.parametrize("op", ["sum", "mean", "max", "var"])
@settings(max_examples=N)
@given(data=st.data(), shape=shapes, keepdims=st.booleans())
def test_reductions(op, data, shape, keepdims):
    axis = data.draw(axis_strategy(len(shape)))
    x = data.draw(arrays(shape))
    if op == "max":
        # ties have no derivative: use distinct values, at least 1e-2 apart
        x = (np.random.default_rng(len(shape)).permutation(x.size).reshape(shape) * 1e-2 + x * 1e-3)
    if op == "var":
        n = x.size if axis is None else int(np.prod([shape[a] for a in np.atleast_1d(axis)]))
        assume(n > 1)
        check_grad(lambda t: t.var(axis=axis, keepdims=keepdims, ddof=1), x)
    check_grad(lambda t: getattr(t, op)(axis=axis, keepdims=keepdims), x)


# ---- shape ops -------------------------------------------------------------------------------------------
@settings(max_examples=N)
@given(data=st.data(), shape=nonscalar_shapes)
def test_reshape_permute_transpose(data, shape):
    x = data.draw(arrays(shape))
    perm = data.draw(st.permutations(range(len(shape))))
    check_grad(lambda t: t.reshape(-1), x)
    check_grad(lambda t: t.reshape((x.size, 1)) * np.arange(x.size)[:, None], x)
    check_grad(lambda t: t.permute(*perm) * np.arange(x.size).reshape(x.transpose(perm).shape), x)
    check_grad(lambda t: t.T * np.arange(x.size).reshape(x.T.shape), x)
    if len(shape) >= 2:
        check_grad(lambda t: t.transpose(0, -1) * np.arange(x.size).reshape(np.swapaxes(x, 0, -1).shape), x)


@settings(max_examples=N)
@given(data=st.data(), shape=nonscalar_shapes, n=st.integers(1, 3))
def test_concatenate_stack_split(data, shape, n):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    xs = [data.draw(arrays(shape)) for _ in range(n)]
    w = np.arange(1, 1 + n * int(np.prod(shape)))
    check_grad(lambda *ts: tg.concatenate(ts, axis=axis) * w.reshape(np.concatenate(xs, axis).shape), *xs)
    check_grad(lambda *ts: tg.stack(ts, axis=axis) * w.reshape(np.stack(xs, axis).shape), *xs)
    big = np.concatenate(xs, axis=axis)
    check_grad(lambda t: t.split(n, axis=axis)[-1] * 3 + t.split(n, axis=axis)[0], big)

    def pieces_of_intermediate(t):
        # the pieces of a non-leaf write into one shared gradient array; here `u` also has
        # another consumer (u * u), and with n > 1 the first piece goes unused
        u = t * 2.0
        pieces = u.split(n, axis=axis)
        out = pieces[-1] * 3
        for i, p in enumerate(pieces[1:-1]):
            out = out + p * (i + 5)
        return out + (u * u).sum()
    check_grad(pieces_of_intermediate, big)


# ---- indexing and selection --------------------------------------------------------------------------------
@settings(max_examples=N)
@given(data=st.data(), shape=hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=4))
def test_getitem(data, shape):
    x = data.draw(arrays(shape))
    i = data.draw(st.integers(-shape[0], shape[0] - 1))
    s = data.draw(st.slices(shape[1]))
    assume(len(range(*s.indices(shape[1]))) > 0)
    rows = data.draw(hnp.arrays(np.int64, st.integers(1, 6), elements=st.integers(0, shape[0] - 1)))
    check_grad(lambda t: t[i], x)
    check_grad(lambda t: t[:, s], x)
    check_grad(lambda t: t[None, ..., 0], x)
    check_grad(lambda t: t[rows] * np.arange(1, 1 + len(rows)).reshape((-1,) + (1,) * (len(shape) - 1)), x)
    check_grad(lambda t: t[rows, 0], x)  # integer arrays mixed with ints; repeats scatter-add


@settings(max_examples=N)
@given(data=st.data(), shapes_=broadcast_pairs)
def test_masked_fill_and_where(data, shapes_):
    sx, sm = shapes_.input_shapes
    x = data.draw(arrays(sx))
    out_shape = np.broadcast_shapes(sx, sm)
    mask = data.draw(hnp.arrays(bool, sm))
    y = data.draw(arrays(sm))
    if out_shape == x.shape:
        check_grad(lambda t: t.masked_fill(mask, -7.0), x)
    check_grad(lambda a, b: tg.where(mask, a, b), x, y)
    check_grad(lambda a: tg.where(mask, a, 0.0), x)
