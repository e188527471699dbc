"""Tensor semantics that a user relies on: dtypes, graph behaviour, no_grad, and bad input."""
import sys
import time

import numpy as np
import pytest

import tinygpt as tg
from tinygpt import Tensor, no_grad


def test_dtypes():
    assert Tensor([1.0, 2.0]).dtype == np.float32           # Python floats default to float32
    assert Tensor(np.ones(2)).dtype == np.float64           # float64 is kept when given
    assert Tensor(np.ones(2, np.float16)).dtype == np.float32
    assert Tensor(np.arange(3)).dtype.kind == "i"           # integers are allowed...
    assert (Tensor([1.0], requires_grad=True) * 2).dtype == np.float32  # scalars don't upcast
    assert (Tensor(np.ones(2)) * 2).dtype == np.float64
    t = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert t.shape == (2, 3) and t.ndim == 2 and t.numpy() is t.data and t.grad is None
    assert t.sum().item() == 15.0 and not t.detach().requires_grad and t.detach().data is t.data


def test_integer_tensors_are_never_differentiable():
    with pytest.raises(TypeError, match="int64"):
        Tensor(np.arange(3), requires_grad=True)
    x = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * Tensor(np.arange(3))
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 1, 2])


def test_gradients_accumulate_until_zeroed():
    x = Tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad, [6, 6])
    x.zero_grad()
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad, [3, 3])


def test_node_reached_by_several_paths_sums_them():
    a = Tensor([3.0], requires_grad=True)
    b = a + a          # db/da = 2
    c = b * b          # dc/db = 2b = 12
    c.backward()
    np.testing.assert_array_equal(a.grad, [24.0])
    a.zero_grad()
    d = a * a + a.exp() * a  # a reached four times
    d.backward()
    np.testing.assert_allclose(a.grad, 2 * 3 + np.exp(3) * 4, rtol=1e-6)


def test_leaf_grads_are_not_shared_buffers():
    a, b = Tensor([1.0], requires_grad=True), Tensor([2.0], requires_grad=True)
    (a + b).backward()
    a.grad += 10  # a user editing one gradient must not change another
    assert b.grad[0] == 1.0


def test_long_chain_is_iterative():
    assert sys.getrecursionlimit() < 10_000
    x = Tensor([1.0], requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    t0 = time.perf_counter()
    y.sum().backward()
    assert time.perf_counter() - t0 < 10
    np.testing.assert_allclose(x.grad, [1.0001 ** 10_000], rtol=1e-3)


def test_graph_is_freed_unless_retained():
    x = Tensor([2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()                 # the retained graph can be walked again: grads add up
    np.testing.assert_array_equal(x.grad, [8.0])
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()             # now it is freed
    z = x * x
    z.sum().backward()
    assert z._prev == ()         # no references keep intermediates alive


def test_no_grad_as_context_and_decorator():
    x = Tensor([1.0], requires_grad=True)
    with no_grad():
        y = x * 2
    assert not y.requires_grad and y._prev == () and y._backward is None and tg.is_grad_enabled()
    c = Tensor([1.0]) * 2  # no input requires grad: no graph either
    assert c._prev == () and c._backward is None and (x * 2)._backward is not None

    @no_grad()
    def f(t):
        return t * 2, tg.is_grad_enabled()

    z, enabled = f(x)
    assert not z.requires_grad and not enabled and tg.is_grad_enabled()
    assert (x * 2).requires_grad


def test_getitem_scatter_adds_like_add_at():
    x = Tensor(np.arange(12.0).reshape(4, 3), requires_grad=True)
    idx = np.array([0, 2, 0, 0])
    g = np.random.default_rng(0).standard_normal((4, 3))
    x[idx].backward(g)
    expected = np.zeros((4, 3))
    np.add.at(expected, idx, g)
    np.testing.assert_array_equal(x.grad, expected)


def test_split_sections_and_points():
    x = Tensor(np.arange(10.0), requires_grad=True)
    parts = x.split([2, 5])
    assert [p.shape for p in parts] == [(2,), (3,), (5,)]
    (parts[0].sum() + parts[2].sum() * 2).backward()
    np.testing.assert_array_equal(x.grad, [1, 1, 0, 0, 0, 2, 2, 2, 2, 2])


@pytest.mark.parametrize("call, exc, words", [
    (lambda: Tensor(np.ones((2, 3))) + Tensor(np.ones((4,))), ValueError, ["(2, 3)", "(4,)"]),
    (lambda: Tensor(np.ones((2, 3))) * np.ones((3, 2)), ValueError, ["(2, 3)", "(3, 2)"]),
    (lambda: Tensor(np.ones((2, 3))) @ Tensor(np.ones((2, 3))), ValueError, ["(2, 3)"]),
    (lambda: Tensor(np.ones(3)).reshape(2, 2), ValueError, ["(3,)", "(2, 2)"]),
    (lambda: Tensor("abc"), TypeError, ["<U3"]),
    (lambda: Tensor([object()]), TypeError, ["object"]),
    (lambda: Tensor(np.array([True])), TypeError, ["bool"]),
    (lambda: Tensor(np.arange(3), requires_grad=True), TypeError, ["int64"]),
    (lambda: Tensor(np.ones(3), requires_grad=True).exp().backward(), ValueError, ["(3,)"]),
    (lambda: Tensor(np.ones(3)).sum().backward(), ValueError, ["does not require grad"]),
    (lambda: Tensor(np.ones((2, 2))).sum(axis=2), ValueError, ["axis 2"]),
    (lambda: Tensor(np.ones((2, 2))).masked_fill(np.ones((3, 1), bool), 0), ValueError, ["(3, 1)", "(2, 2)"]),
    (lambda: tg.stack([Tensor(np.ones(2)), Tensor(np.ones(3))]), ValueError, ["(2,)", "(3,)"]),
    # bad axes: ValueError naming the axis and the dims (an IndexError or a wrap-around before)
    (lambda: Tensor(np.ones((2, 3))).transpose(0, 5), ValueError, ["axis 5", "2 dims"]),
    (lambda: Tensor(np.ones((2, 3))).permute(0, 5), ValueError, ["axis 5 is out of range", "2 dims"]),
    (lambda: Tensor(np.float32(1)).sum(axis=0), ValueError, ["axis 0 is out of range", "0 dims"]),
    (lambda: Tensor(np.ones((2, 3))).sum(axis=(0, 0)), ValueError, ["(0, 0)", "twice"]),
    (lambda: Tensor(np.ones((2, 3))).sum(axis=1.0), TypeError, ["1.0"]),
    (lambda: Tensor(np.ones((2, 3))).split(2, axis=-3), ValueError, ["axis -3", "2 dims"]),
    (lambda: tg.stack([Tensor(np.ones(2))], axis=3), ValueError, ["axis 3 is out of range"]),
    (lambda: tg.concatenate([Tensor(np.ones(2))], axis=1), ValueError, ["axis 1 is out of range"]),
    # empty inputs: ValueError naming the shape (a ZeroDivisionError, an IndexError or NaN before)
    (lambda: Tensor(np.ones(0)).mean(), ValueError, ["(0,)", "more than 0", "got 0"]),
    (lambda: Tensor(np.ones((0, 3))).var(axis=0), ValueError, ["(0, 3)", "got 0"]),
    (lambda: Tensor(np.ones(1)).var(ddof=1), ValueError, ["ddof", "more than 1", "got 1"]),
    (lambda: Tensor(np.ones((0, 3))).max(axis=0), ValueError, ["(0, 3)", "empty axis"]),
    (lambda: Tensor(np.ones(4)).split(0), ValueError, ["at least 1 section", "0"]),
    (lambda: tg.stack([]), ValueError, ["stack needs at least one tensor"]),
    (lambda: tg.concatenate([]), ValueError, ["concatenate needs at least one tensor"]),
    # operands that are not numbers: TypeError (None became NaN, a string a ValueError)
    (lambda: Tensor(np.ones(2)) + None, TypeError, ["NoneType"]),
    (lambda: None - Tensor(np.ones(2)), TypeError, ["NoneType"]),
    (lambda: Tensor(np.ones(2)) * "a", TypeError, ["str 'a'"]),
    (lambda: Tensor(np.ones(2)) + [None, 1.0], TypeError, ["[None, 1.0]"]),
    (lambda: Tensor(np.ones(2)) @ None, TypeError, ["NoneType"]),
    (lambda: Tensor(np.ones(2), requires_grad=True).exp().backward("ab"), TypeError, ["<U2"]),
    # masked_fill: a mask that grows the tensor, a value that is not one number, a mask that is not bool
    (lambda: Tensor(np.ones((2, 3))).masked_fill(np.ones((4, 2, 3), bool), 0), ValueError,
     ["(4, 2, 3)", "(2, 3)", "up to"]),
    (lambda: Tensor(np.ones((2, 3))).masked_fill(np.ones((2, 3), bool), np.ones(5)), TypeError, ["shape (5,)"]),
    (lambda: Tensor(np.ones(2)).masked_fill(np.ones(2, bool), None), TypeError, ["object"]),
    (lambda: Tensor(np.ones(2)).masked_fill(np.ones(2), 0.0), TypeError, ["boolean", "float64"]),
    (lambda: tg.where(np.ones(2), Tensor(np.ones(2)), 0.0), TypeError, ["boolean", "float64"]),
])
def test_bad_input_names_shapes_and_dtypes(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_import_is_fast_and_compiles_nothing():
    import subprocess
    code = ("import time, sys; t = time.perf_counter(); import tinygpt; "
            "print(time.perf_counter() - t, 'numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert float(out[0]) < 1.0 and out[1] == "False"
