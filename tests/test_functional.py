"""Gradient checks for the fused ops in tinygpt.functional (finite differences, float64), run under
whichever kernel set TINYGPT_KERNELS picks (CI runs this file under both).
"""
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt as tg
import tinygpt.functional as F
from gradcheck import arrays, check_grad, nonscalar_shapes

N = 50  # hypothesis examples per op


@settings(max_examples=N)
@given(data=st.data(), shape=nonscalar_shapes)
def test_softmax_and_log_softmax(data, shape):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(arrays(shape, -5, 5))
    check_grad(lambda t: F.softmax(t, axis=axis), x)
    check_grad(lambda t: F.log_softmax(t, axis=axis), x)


@settings(max_examples=N)
@given(data=st.data(), lead=st.sampled_from([(5,), (2, 3), (1, 1), (3, 1)]), C=st.integers(1, 6),
       reduction=st.sampled_from(["mean", "sum", "none"]))
def test_cross_entropy(data, lead, C, reduction):
    logits = data.draw(arrays(lead + (C,), -5, 5))
    targets = data.draw(hnp.arrays(np.int64, lead, elements=st.sampled_from([-100] + list(range(C)))))
    check_grad(lambda t: F.cross_entropy(t, targets, reduction=reduction), logits)


@settings(max_examples=N)
@given(data=st.data(), shape=nonscalar_shapes, with_bias=st.booleans())
def test_layer_norm(data, shape, with_bias):
    C = shape[-1]
    x = data.draw(arrays(shape))
    # subtle: a row of (nearly) equal values has variance ~0, so rstd = 1/sqrt(var + 1e-5) ~ 316
    # and the third derivative ~ rstd^3 is huge. That is smooth, not a kink: rather than narrowing
    # the domain, the finite difference takes a 10x smaller step (truncation error ~ step^2).
    w, b = data.draw(arrays((C,))), data.draw(arrays((C,)))
    # y = xhat * w + b can cancel to ~0 (x = w = b = [0, -1]): its terms set the tolerance's scale
    xhat = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    terms = np.abs(xhat * w) + (np.abs(b) if with_bias else 0)
    if with_bias:
        check_grad(lambda t, w_, b_: F.layer_norm(t, w_, b_), x, w, b, eps=1e-7, terms=terms)
    else:
        check_grad(lambda t, w_: F.layer_norm(t, w_, None), x, w, eps=1e-7, terms=terms)


@settings(max_examples=N)
@given(data=st.data(), shape=nonscalar_shapes)
def test_gelu(data, shape):
    check_grad(F.gelu, data.draw(arrays(shape, -5, 5)))


@pytest.mark.parametrize("x", [-4.5, -5.0, -6.0, -8.0])
def test_gelu_far_left_tail(x):
    # hypothesis found x = -5, where the NumPy kernel's old tanh form cancelled (gradient off by
    # 2.5e-4 relative); pinned here, with points further out
    check_grad(F.gelu, np.array([x]))


@settings(max_examples=N)
@given(data=st.data(), shape=nonscalar_shapes, p=st.sampled_from([0.0, 0.1, 0.5, 0.9]), seed=st.integers(0, 99))
def test_dropout(data, shape, p, seed):
    x = data.draw(arrays(shape))
    # the same seed gives the same mask in every evaluation of f
    check_grad(lambda t: F.dropout(t, p, training=True, generator=np.random.default_rng(seed)), x)
    out = F.dropout(tg.Tensor(x), p, training=True, generator=np.random.default_rng(seed)).data
    kept = out != 0
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-12)
    assert F.dropout(tg.Tensor(x), p, training=False).data is x  # eval: identity


@settings(max_examples=N)
@given(data=st.data(), V=st.integers(1, 6), C=st.integers(1, 4),
       idx_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=5))
def test_embedding(data, V, C, idx_shape):
    weight = data.draw(arrays((V, C)))
    idx = data.draw(hnp.arrays(np.int64, idx_shape, elements=st.integers(0, V - 1)))
    check_grad(lambda w: F.embedding(w, idx), weight)  # repeated ids must add up


def test_embedding_accumulates_into_an_existing_gradient():
    # the backward adds straight into a leaf's existing .grad (the optimizer's flat buffer)
    weight = tg.Tensor(np.arange(12.0).reshape(4, 3), requires_grad=True)
    idx = np.array([[1, 3, 1], [0, 1, 1]])
    F.embedding(weight, idx).sum().backward()
    buffer = weight.grad
    F.embedding(weight, idx).sum().backward()
    assert weight.grad is buffer  # written in place, not replaced
    np.testing.assert_array_equal(weight.grad, 2 * np.array([[1] * 3, [4] * 3, [0] * 3, [1] * 3]))


@settings(max_examples=N)
@given(data=st.data(), lead=st.sampled_from([(1,), (3,), (2, 3), (1, 2, 2)]), K=st.integers(1, 5),
       M=st.integers(1, 5), with_bias=st.booleans(), transpose_weight=st.booleans())
def test_linear(data, lead, K, M, with_bias, transpose_weight):
    x = data.draw(arrays(lead + (K,)))
    w = data.draw(arrays((M, K) if transpose_weight else (K, M)))
    f = lambda t, w_, *b: F.linear(t, w_, *b, transpose_weight=transpose_weight)
    check_grad(f, x, w, *([data.draw(arrays((M,)))] if with_bias else []))
    expected = x @ (w.T if transpose_weight else w)
    np.testing.assert_allclose(f(tg.Tensor(x), tg.Tensor(w)).data, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("transpose_weight", [False, True])
@pytest.mark.parametrize("rows,K,M", [(96, 80, 72), (700, 20, 130)])  # the second runs transposed (SWAP_M)
def test_linear_weight_gradient_adds_into_the_leaf_buffer(transpose_weight, rows, K, M):
    # once a leaf has a .grad (the optimizer's buffer after zero_grad), the matmul kernel adds the
    # weight gradient straight into it: same buffer, and the sum of both backward passes
    rng = np.random.default_rng(rows)
    x = tg.Tensor(rng.standard_normal((rows, K)).astype(np.float32))
    w = rng.standard_normal((M, K) if transpose_weight else (K, M)).astype(np.float32)
    weight = tg.Tensor(w, requires_grad=True)
    dy = rng.standard_normal((rows, M)).astype(np.float32)
    F.linear(x, weight, transpose_weight=transpose_weight).backward(dy)
    buffer = weight.grad
    F.linear(x, weight, transpose_weight=transpose_weight).backward(dy)
    assert weight.grad is buffer
    once = (dy.T @ x.data) if transpose_weight else (x.data.T @ dy)
    np.testing.assert_allclose(weight.grad, 2 * once, rtol=1e-4, atol=1e-4 * np.sqrt(rows))


@settings(max_examples=N)
@given(data=st.data(), B=st.integers(1, 2), nh=st.integers(1, 3), T=st.integers(1, 7),
       extra=st.integers(0, 3), hs=st.integers(1, 9), causal=st.booleans())
def test_scaled_dot_product_attention(data, B, nh, T, extra, hs, causal):
    q = data.draw(arrays((B, nh, T, hs)))
    k = data.draw(arrays((B, nh, T + extra, hs)))   # longer keys: a KV-cache step
    v = data.draw(arrays((B, nh, T + extra, hs)))
    check_grad(lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_, causal=causal), q, k, v)


@settings(max_examples=N)
@given(data=st.data(), B=st.integers(1, 2), nh=st.integers(1, 3), T=st.integers(1, 7), hs=st.integers(1, 5),
       causal=st.booleans())
def test_self_attention(data, B, nh, T, hs, causal):
    qkv = data.draw(arrays((B, T, 3 * nh * hs)))
    check_grad(lambda t: F.self_attention(t, nh, causal=causal), qkv)
    # the one op equals the composition the model uses with a KV cache: split, heads, attention, merge
    t = tg.Tensor(qkv)
    q, k, v = [p.reshape(B, T, nh, hs).permute(0, 2, 1, 3) for p in t.split(3, axis=-1)]
    want = F.scaled_dot_product_attention(q, k, v, causal=causal).permute(0, 2, 1, 3).reshape(B, T, nh * hs)
    np.testing.assert_allclose(F.self_attention(t, nh, causal=causal).data, want.data, rtol=1e-12, atol=1e-12)


def test_attention_matches_naive_composition():
    """The fused op equals the textbook composition built from Tensor ops."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, 5, 4)) for _ in range(3))
    y = F.scaled_dot_product_attention(tg.Tensor(q), tg.Tensor(k), tg.Tensor(v)).data
    att = q @ np.swapaxes(k, -1, -2) / 2.0
    att = np.where(np.tril(np.ones((5, 5), bool)), att, -np.inf)
    att = np.exp(att - att.max(-1, keepdims=True))
    np.testing.assert_allclose(y, att / att.sum(-1, keepdims=True) @ v, rtol=1e-10, atol=1e-12)


# ---- values the ops must get right, and inputs they must refuse -------------------------------------
def test_softmax_extreme_logits_stay_finite():
    x = tg.Tensor(np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=np.float32), requires_grad=True)
    y = F.softmax(x)
    loss = F.cross_entropy(x, np.array([1, 2]))
    loss.backward()
    assert np.isfinite(y.data).all() and np.isfinite(loss.data).all() and np.isfinite(x.grad).all()
    np.testing.assert_allclose(y.data[1], [1 / 3] * 3, rtol=1e-6)


def test_cross_entropy_all_ignored_is_zero_not_nan():
    x = tg.Tensor(np.ones((3, 4)), requires_grad=True)
    loss = F.cross_entropy(x, np.full(3, -100))
    loss.backward()
    assert loss.item() == 0.0 and not x.grad.any()


@pytest.mark.parametrize("call, exc, words", [
    (lambda: F.cross_entropy(tg.Tensor(np.ones((2, 3))), np.array([0, 3])), ValueError, ["3"]),
    (lambda: F.cross_entropy(tg.Tensor(np.ones((2, 3))), np.array([0.0, 1.0])), TypeError, ["float64"]),
    (lambda: F.cross_entropy(tg.Tensor(np.ones((2, 3))), np.array([0, 1, 2])), ValueError, ["(2, 3)", "(3,)"]),
    (lambda: F.embedding(tg.Tensor(np.ones((4, 2))), np.array([1, 4])), ValueError, ["4", "[0, 4)"]),
    (lambda: F.embedding(tg.Tensor(np.ones((4, 2))), np.array([-1])), ValueError, ["-1"]),
    (lambda: F.linear(tg.Tensor(np.ones((3, 4))), tg.Tensor(np.ones((5, 2)))), ValueError, ["(3, 4)", "(5, 2)"]),
    (lambda: F.layer_norm(tg.Tensor(np.ones((2, 3))), tg.Tensor(np.ones(4))), ValueError, ["(4,)"]),
    (lambda: F.dropout(tg.Tensor(np.ones(3)), 1.0), ValueError, ["1.0"]),
    (lambda: F.softmax(tg.Tensor(np.arange(3))), TypeError, ["int64"]),
    (lambda: F.scaled_dot_product_attention(*(tg.Tensor(np.ones((2, 3, 4))),) * 3), ValueError, ["(2, 3, 4)"]),
    (lambda: F.self_attention(tg.Tensor(np.ones((2, 3, 10))), 2), ValueError, ["(2, 3, 10)", "n_head=2"]),
    (lambda: F.self_attention(tg.Tensor(np.ones((2, 3, 6))), 0), ValueError, ["n_head", "got 0"]),
    (lambda: F.self_attention(tg.Tensor(np.ones((2, 3, 6))), 1.0), ValueError, ["n_head", "got 1.0"]),
    # bad axes, empty axes
    (lambda: F.softmax(tg.Tensor(np.ones((2, 3))), axis=5), ValueError, ["axis 5", "2 dims"]),
    (lambda: F.log_softmax(tg.Tensor(np.ones((2, 3))), axis=-3), ValueError, ["axis -3 is out of range"]),
    (lambda: F.softmax(tg.Tensor(np.float32(1))), ValueError, ["0 dims"]),
    (lambda: F.softmax(tg.Tensor(np.ones((2, 0)))), ValueError, ["size 0", "(2, 0)"]),
    (lambda: F.cross_entropy(tg.Tensor(np.ones((2, 0))), np.array([0, 0])), ValueError, ["at least one class"]),
    (lambda: F.layer_norm(tg.Tensor(np.ones((2, 0))), tg.Tensor(np.ones(0))), ValueError, ["(2, 0)"]),
    # arrays where Tensors belong, tables of the wrong rank or dtype
    (lambda: F.embedding(np.ones((4, 2)), np.array([1])), TypeError, ["weight", "ndarray"]),
    (lambda: F.embedding(tg.Tensor(np.ones(4)), np.array([1])), ValueError, ["(V, C)", "(4,)"]),
    (lambda: F.embedding(tg.Tensor(np.ones((4, 2), np.int64)), np.array([1])), TypeError, ["weight", "int64"]),
    (lambda: F.linear(tg.Tensor(np.ones((2, 3))), np.ones((3, 2))), TypeError, ["weight", "ndarray"]),
    (lambda: F.linear(tg.Tensor(np.ones((2, 3))), tg.Tensor(np.ones(3))), ValueError, ["2-D", "(3,)"]),
    (lambda: F.layer_norm(tg.Tensor(np.ones((2, 3))), np.ones(3)), TypeError, ["weight", "ndarray"]),
    (lambda: F.dropout(np.ones(3), 0.5), TypeError, ["ndarray"]),
    (lambda: F.dropout(tg.Tensor(np.ones(3)), "0.5"), TypeError, ["'0.5'"]),
])
def test_bad_input(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    for w in words:
        assert w in str(e.value)


# ---- exact at any logit scale -------------------------------------------------------------------
# The reference, in float64 from the very same values: softmax = exp(x - max) / sum and
# loss = (max - x[t]) + log(sum), sum = sum(exp(x - max)). Written as logsumexp - x[t], the loss
# loses log(sum) into the max once the max dwarfs it: [[1e8, 1e8, 0]] with target 0 is 0.6931 (as
# torch says), not the 0 that float32 gives for (1e8 + 0.6931) - 1e8.
FMAX = float(np.finfo(np.float32).max)
TOL = {np.float32: 1e-5, np.float64: 1e-12}  # relative to the value, with an absolute floor as big


def exact_softmax_and_cross_entropy(x, targets):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=-1, keepdims=True)
    loss = (m[:, 0] - x[np.arange(len(x)), targets]) + np.log(s[:, 0])
    return e / s, loss


# values from a few levels, so that rows often tie at their max (the case logsumexp - x[t] gets wrong)
unit_logits = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
                         elements=st.one_of(st.sampled_from([-1.0, -0.5, 0.0, 1.0]), st.floats(-1, 1)))
exact_scales = dict(unit=unit_logits, exponent=st.floats(-3, 30), dtype=st.sampled_from([np.float32, np.float64]))


@settings(max_examples=N)
@given(**exact_scales)
def test_softmax_is_exact_at_any_logit_scale(unit, exponent, dtype):
    x = (unit * 10.0 ** exponent).astype(dtype)
    want, _ = exact_softmax_and_cross_entropy(x, np.zeros(len(x), dtype=np.int64))
    got = F.softmax(tg.Tensor(x)).data
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])


@settings(max_examples=N)
@given(**exact_scales, shift=st.integers(0, 5))
@example(unit=np.array([[1.0, 1.0, 0.0]]), exponent=8.0, dtype=np.float32, shift=0)  # the case
def test_cross_entropy_is_exact_at_any_logit_scale(unit, exponent, dtype, shift):
    x = (unit * 10.0 ** exponent).astype(dtype)
    targets = (np.arange(len(x)) + shift) % x.shape[1]
    softmax, want = exact_softmax_and_cross_entropy(x, targets)
    logits = tg.Tensor(x, requires_grad=True)
    loss = F.cross_entropy(logits, targets, reduction="sum")
    loss.backward()
    tol = TOL[dtype]
    got = F.cross_entropy(tg.Tensor(x), targets, reduction="none").data
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(loss.item(), want.sum(), rtol=tol, atol=tol * len(x))
    # dloss/dlogits = softmax - onehot(target)
    np.testing.assert_allclose(logits.grad, softmax - np.eye(x.shape[1])[targets], rtol=tol, atol=tol)


def _against_torch(rows, targets):
    """Our float32 cross-entropy (per row) and its gradient next to torch's."""
    torch = pytest.importorskip("torch")
    x = np.array(rows, dtype=np.float32)
    ours, theirs = tg.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    with np.errstate(over="ignore"):  # at float32's max, max - x[t] overflows to inf on purpose
        got = F.cross_entropy(ours, np.array(targets), reduction="none")
        got.backward(np.ones(len(rows), np.float32))
    want = torch.nn.functional.cross_entropy(theirs, torch.tensor(targets), reduction="none")
    want.backward(torch.ones(len(rows)))
    np.testing.assert_allclose(got.data, want.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-6, atol=1e-6)
    return got.data, ours.grad


@pytest.mark.parametrize("s", [1e4, -1e4, 1e8, -1e8, FMAX, -FMAX])
def test_cross_entropy_with_one_largest_logit_matches_torch(s):
    # one logit above the rest: log(sum) is ~0 or the gap dominates, so both forms agree; at
    # float32's max, [s, -s] with target -s is inf on both sides (the true 2s does not fit)
    rows = [[s, -s, 0.0], [s, 0.0, -s], [s, 0.5 * s, 0.0]]
    _against_torch(rows * 3, [0] * 3 + [1] * 3 + [2] * 3)


@pytest.mark.parametrize("s", [1e4, -1e4, 1e8, -1e8, FMAX, -FMAX])
def test_cross_entropy_with_tied_largest_logits_matches_torch(s):
    # rows tied at their max: the loss is log(2) or log(3) at any scale, not 0
    losses, grad = _against_torch([[s, s, 0.0] if s > 0 else [s, s, s], [s, s, s]], [0, 1])
    np.testing.assert_allclose(losses, [np.log(2.0) if s > 0 else np.log(3.0), np.log(3.0)], rtol=1e-6)
    if s == 1e8:  # the case, spelled out
        np.testing.assert_allclose(grad[0], [-0.5, 0.5, 0.0], atol=1e-6)
