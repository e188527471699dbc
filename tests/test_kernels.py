"""The numba kernels (jit.py) against the NumPy specification (reference.py), the specification
against the math, and the input checks (checks.py) in front of both: each set is called as the
ops call it, through `kernels.checked`, so a bad input must raise the same error from either.

Tolerances. float64 runs the same numba code, so it must agree to ~1e-12 relative: any
looser and a real bug could hide behind rounding. For float32, a length-K sum or dot product
summed in a different order (SIMD lanes, tiles) differs by up to about K * eps * sum|terms|, with
eps = 1.2e-7; in practice ~sqrt(K) * eps. Each test states its float32 bound in those terms.
"""
import inspect

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

from tinygpt import kernels
from tinygpt.kernels import checks, jit as numba_set, jit_math, jit_matmul, reference

ref, jit = kernels.checked(reference), kernels.checked(numba_set)

DTYPES = [np.float32, np.float64]
seeds = st.integers(0, 2**32 - 1)


def rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def non_contiguous(a):
    """The same values as `a`, as a non-contiguous view (the last two axes transposed in memory)."""
    return np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2) if a.ndim >= 2 else a[::-1].copy()[::-1]


def close(actual, expected, dtype, k=1.0, scale=None):
    """|actual - expected| <= tol * |expected| + tol * scale, with tol = 4 k eps for float32 and
    max(1e-12, 4 k eps) for float64. k is the error growth the test expects (e.g. K for a K-term
    dot product, |s| for exp(s), whose relative error is |s| times that of s); scale is the size
    of the terms (default max|expected|)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == dtype
    assert np.all(np.isfinite(actual) == np.isfinite(expected))
    tol = 4 * k * np.finfo(dtype).eps
    tol = tol if dtype == np.float32 else max(tol, 1e-12)
    scale = np.abs(expected).max(initial=0.0) if scale is None else scale
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * (scale + 1e-30))


# ---------------------------------------------------------------------------------------- matmul

@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40)
@given(seed=seeds, M=st.integers(1, 70), K=st.integers(1, 70), N=st.integers(1, 90),
       batch=st.sampled_from([None, 1, 3]), layout=st.sampled_from(["c", "a^T", "b^T"]), with_bias=st.booleans(),
       accumulate=st.booleans())
def test_matmul_agrees(dtype, seed, M, K, N, batch, layout, with_bias, accumulate):
    rng = np.random.default_rng(seed)
    lead = () if batch is None else (batch,)
    a, b = rand(rng, lead + (M, K), dtype), rand(rng, lead + (K, N), dtype)
    bias = rand(rng, (N,), dtype) if with_bias else None
    if layout == "a^T":
        a = non_contiguous(a)
    elif layout == "b^T":
        b = non_contiguous(b)
    # float32: a K-term dot product of O(1) values, off by ~K eps at worst (scaled by sqrt(K) below)
    if not accumulate:
        close(jit.matmul(a, b, bias=bias), ref.matmul(a, b, bias=bias), dtype, k=K, scale=np.sqrt(K))
        return
    before = rand(rng, lead + (M, N), dtype)  # out += a @ b (+ bias), on both sides
    out, expected = before.copy(), before.copy()
    assert jit.matmul(a, b, out=out, bias=bias, accumulate=True) is out
    assert ref.matmul(a, b, out=expected, bias=bias, accumulate=True) is expected
    close(out, expected, dtype, k=K, scale=np.sqrt(K))
    close(out - before, a @ b + (0 if bias is None else bias), dtype, k=K, scale=np.sqrt(K))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["c", "a^T", "b^T"])
@pytest.mark.parametrize("M,K,N", [(300, 333, 517), (1, 700, 1), (257, 1, 129), (70, 1024, 130)])
def test_matmul_larger_than_tiles(dtype, layout, M, K, N):
    # more than one panel group (N > 512) and K block (K > 512), K off the multiple of 4, edges
    rng = np.random.default_rng(M * K * N)
    a, b = rand(rng, (M, K), dtype), rand(rng, (K, N), dtype)
    a, b = (non_contiguous(a), b) if layout == "a^T" else (a, non_contiguous(b)) if layout == "b^T" else (a, b)
    out = np.full((M, N), np.nan, dtype)
    bias = rand(rng, (N,), dtype)  # added once, not once per K block
    c = jit.matmul(a, b, out=out, bias=bias)
    assert c is out
    close(c, a @ b + bias, dtype, k=K, scale=np.sqrt(K))


def test_matmul_batched_transposed_and_out_views():
    rng = np.random.default_rng(1)
    a, b = rand(rng, (3, 40, 70), np.float32), rand(rng, (3, 50, 70), np.float32)
    bt = b.swapaxes(1, 2)                       # (3, 70, 50) transposed view
    out = np.zeros((3, 50, 40), np.float32).swapaxes(1, 2)   # a non-contiguous `out`
    c = jit.matmul(a, bt, out=out)
    assert c is out
    close(c, a @ bt, np.float32, k=70, scale=np.sqrt(70))


def test_prefer_blas_sends_only_products_openblas_runs_on_one_thread():
    # a LoRA weight gradient (r = 8 rows) stays on the numba kernel, since OpenBLAS's spinning
    # threads slow the next kernels; products under OpenBLAS's threading threshold go to it
    assert not jit_matmul.prefer_blas(8, 1024, 384)
    assert jit_matmul.prefer_blas(8, 64, 64)
    assert not jit_matmul.prefer_blas(768, 128, 384)


@pytest.mark.parametrize("out_layout,accumulate", [(None, False), ("c", False), ("transposed", False),
                                                   ("c", True), ("transposed", True)])
@pytest.mark.parametrize("K", [700, 90])  # longer and shorter than N
def test_matmul_few_rows_runs_transposed(out_layout, accumulate, K, monkeypatch):
    # M <= SWAP_M and M < K, N: matmul computes (B^T A^T)^T, then transposes it into `out` (in
    # 16 x 16 blocks, adding the bias, or adding into out); the result and `out` must not notice
    rng = np.random.default_rng(2)
    M, N = 20, 130
    assert M <= jit_matmul.SWAP_M and M < min(K, N)
    transposed = []
    monkeypatch.setattr(jit_matmul, "_transpose_into", lambda *args, f=jit_matmul._transpose_into: transposed.append(f(*args)))
    a, b = rand(rng, (M, K), np.float32), rand(rng, (K, N), np.float32)
    before = rand(rng, (M, N), np.float32) if accumulate else np.zeros((M, N), np.float32)
    out = {None: None, "c": before.copy(), "transposed": np.asfortranarray(before)}[out_layout]
    bias = rand(rng, (N,), np.float32)
    c = jit.matmul(a, b, out=out, bias=bias, accumulate=accumulate)
    assert len(transposed) == 1  # it took the transposed path
    assert c.shape == (M, N) and c.flags.c_contiguous == (out_layout != "transposed")
    assert out is None or c is out
    close(c - before, ref.matmul(a, b, bias=bias), np.float32, k=K, scale=np.sqrt(K))


@pytest.mark.parametrize("m", [ref, jit], ids=["numpy", "numba"])
def test_matmul_with_an_empty_inner_dimension_is_zero_plus_bias(m):
    a, b, bias = np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(m.matmul(a, b), np.zeros((3, 4)))
    np.testing.assert_array_equal(m.matmul(a, b, bias=bias), np.tile(bias, (3, 1)))
    out = np.ones((3, 4), np.float32)
    m.matmul(a, b, out=out, accumulate=True)
    np.testing.assert_array_equal(out, np.ones((3, 4)))  # += nothing


def test_matmul_rejects_bad_shapes():
    for m in (ref, jit):
        with pytest.raises(ValueError, match=r"\(3, 4\) @ \(5, 6\)"):
            m.matmul(np.ones((3, 4)), np.ones((5, 6)))
        with pytest.raises(ValueError):
            m.matmul(np.ones((2, 3, 4)), np.ones((3, 4, 5)))
        with pytest.raises(ValueError):
            m.matmul(np.ones((3, 4)), np.ones((4, 5)), out=np.ones((3, 4)))
        with pytest.raises(TypeError):
            m.matmul(np.ones((3, 4), np.int64), np.ones((4, 5), np.int64))
        with pytest.raises(ValueError, match=r"bias must have shape \(5,\), got \(4,\)"):
            m.matmul(np.ones((3, 4)), np.ones((4, 5)), bias=np.ones(4))
        with pytest.raises(ValueError, match="accumulate=True adds into `out`"):
            m.matmul(np.ones((3, 4)), np.ones((4, 5)), accumulate=True)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30)
@given(seed=seeds, N=st.integers(1, 300), C=st.integers(1, 100), layout=st.sampled_from(["c", "T"]))
def test_sum_rows_agrees(dtype, seed, N, C, layout):
    x = rand(np.random.default_rng(seed), (N, C), dtype)
    x = non_contiguous(x) if layout == "T" else x
    # a sum of N O(1) terms: off by ~N eps at worst, scaled by sqrt(N)
    close(jit.sum_rows(x), ref.sum_rows(x), dtype, k=N, scale=np.sqrt(N))


def test_sum_rows_rejects_bad_input():
    for m in (ref, jit):
        with pytest.raises(ValueError, match=r"\(N, C\), got shape \(3,\)"):
            m.sum_rows(np.ones(3))
        with pytest.raises(TypeError):
            m.sum_rows(np.ones((2, 3), np.int32))


# ---------------------------------------------------------------------------------------- softmax

@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40)
@given(seed=seeds, rows=st.integers(1, 6), Tq=st.integers(1, 20), extra=st.integers(0, 40),
       scale=st.sampled_from([1.0, 0.125, 3.0]), causal=st.booleans(), big=st.booleans(),
       contiguous=st.booleans())
def test_softmax_agrees(dtype, seed, rows, Tq, extra, scale, causal, big, contiguous):
    rng = np.random.default_rng(seed)
    x = rand(rng, (rows, Tq, Tq + extra), dtype, scale=1e4 if big else 3.0)  # 1e4: no NaN/inf allowed
    x = x if contiguous else non_contiguous(x)
    y = jit.softmax_forward(x, scale, causal)
    # each probability is exp(s - max) / sum: a Tk-term sum, and exp(s - max) whose relative error
    # is |s| times that of s (so 1e4-sized logits carry ~1e-3 relative error in float32 anyway)
    growth = 4 + x.shape[-1] + scale * np.abs(x).max()
    close(y, ref.softmax_forward(x, scale, causal), dtype, k=growth)
    if causal and extra == 0:  # the first query sees only itself: a one-element softmax is exactly 1
        assert np.all(y[..., 0, 0] == 1) and np.all(y[..., 0, 1:] == 0)
    dy = rand(rng, x.shape, dtype)
    dy = dy if contiguous else non_contiguous(dy)
    # backward: sum(dy * y) over Tk terms, then one product; scale by max|dy| since dx ~ y * dy
    close(jit.softmax_backward(y, dy, scale), ref.softmax_backward(y, dy, scale), dtype,
          k=4 + x.shape[-1], scale=scale * np.abs(dy).max())  # y is given: no exp here


@pytest.mark.parametrize("m", [ref, jit], ids=["numpy", "numba"])
def test_extreme_logits_give_no_nan(m):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [3e4, 3e4, -3e4]], np.float32)
    y = m.softmax_forward(x)
    assert np.all(np.isfinite(y)) and np.allclose(y.sum(-1), 1)
    np.testing.assert_allclose(y[0], [1, 0, 0]) and np.testing.assert_allclose(y[2], [0.5, 0.5, 0])
    losses, lse = m.cross_entropy_forward(x, np.array([1, 0, 2]))
    # lse sits near 1e4 in float32, whose spacing there is ~1e-3: absolute tolerance 4e-3
    np.testing.assert_allclose(losses, [2e4, np.log(3), 6e4 + np.log(2)], rtol=1e-6, atol=4e-3)
    d = m.cross_entropy_backward(x, np.array([1, 0, 2]), lse, np.ones(3, np.float32))
    assert np.all(np.isfinite(d))


def test_softmax_rejects_bad_inputs():
    for m in (ref, jit):
        with pytest.raises(ValueError, match="Tk >= Tq"):
            m.softmax_forward(np.ones((4, 3)), causal=True)
        with pytest.raises(ValueError, match="must match"):
            m.softmax_backward(np.ones((4, 3)), np.ones((4, 2)))


# ---------------------------------------------------------------------------------------- layer norm

@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30)
@given(seed=seeds, N=st.integers(1, 40), C=st.integers(1, 300), shift=st.sampled_from([0.0, 5.0]),
       contiguous=st.booleans())
def test_layer_norm_agrees(dtype, seed, N, C, shift, contiguous):
    rng = np.random.default_rng(seed)
    x = rand(rng, (N, C), dtype) + dtype(shift)
    x = x if contiguous else non_contiguous(x)
    w, b, dy = rand(rng, C, dtype), rand(rng, C, dtype), rand(rng, (N, C), dtype)
    got, want = jit.layer_norm_forward(x, w, b, 1e-5), ref.layer_norm_forward(x, w, b, 1e-5)
    # float32: mean and variance are C-term sums; y inherits their relative error times |xhat| |w|
    for g, e in zip(got, want):
        close(g, e, dtype, k=4 + C, scale=1.0)
    _, mean, rstd = want
    got, want = jit.layer_norm_backward(dy, x, w, mean, rstd), ref.layer_norm_backward(dy, x, w, mean, rstd)
    # dx: two C-term means; dweight, dbias: N-term sums over rows
    close(got[0], want[0], dtype, k=4 + C, scale=float(rstd.max()) * np.abs(w).max())
    close(got[1], want[1], dtype, k=4 + N + C, scale=np.sqrt(N))
    close(got[2], want[2], dtype, k=4 + N, scale=np.sqrt(N))


def test_layer_norm_rejects_bad_shapes():
    for m in (ref, jit):
        with pytest.raises(ValueError, match=r"\(5,\)"):
            m.layer_norm_forward(np.ones((3, 5)), np.ones(4), np.zeros(5))
        with pytest.raises(ValueError):
            m.layer_norm_forward(np.ones((2, 3, 5)), np.ones(5), np.zeros(5))
        with pytest.raises(ValueError):
            m.layer_norm_backward(np.ones((3, 5)), np.ones((3, 5)), np.ones(5), np.zeros(2), np.ones(3))


# ---------------------------------------------------------------------------------------- exp

@njit(error_model="numpy")
def exp_le0_each(x):
    y = np.empty_like(x)
    for i in range(x.size):
        y[i] = jit_math.exp_le0(x[i])
    return y


@pytest.mark.parametrize("dtype,lo,ulps", [(np.float32, -87.0, 2), (np.float64, -708.0, 3)])
def test_exp_le0_is_within_a_few_ulp(dtype, lo, ulps):
    # the SIMD exp under softmax, cross-entropy, gelu and attention, over its whole range x <= 0
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(lo, 0, 100_000), rng.uniform(-1, 0, 100_000), [0.0, lo]]).astype(dtype)
    exact = np.exp(x.astype(np.longdouble))
    ulp = np.abs(exp_le0_each(x) - exact) / np.spacing(exact.astype(dtype))
    assert ulp.max() < ulps, ulp.max()
    below = np.array([lo - 1, -1e30, -np.inf], dtype)  # below the float's normal range: 0
    np.testing.assert_array_equal(exp_le0_each(below), 0)


# ---------------------------------------------------------------------------------------- gelu

@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30)
@given(seed=seeds, shape=st.lists(st.integers(1, 30), min_size=1, max_size=3),
       scale=st.sampled_from([1.0, 10.0, 1e4]), contiguous=st.booleans())
def test_gelu_agrees(dtype, seed, shape, scale, contiguous):
    rng = np.random.default_rng(seed)
    x, dy = rand(rng, shape, dtype, scale), rand(rng, shape, dtype)
    if not contiguous:
        x, dy = non_contiguous(x), non_contiguous(dy)
    # float32: a tanh (a few ulps) inside a handful of products; the backward also forms 1 - t^2
    close(jit.gelu_forward(x), ref.gelu_forward(x), dtype, k=4, scale=1.0)
    # subtle: for 4 < |x| < 6, 1 - t^2 is a few ulps of t times ~x^3, so allow 16 ulps there
    close(jit.gelu_backward(x, dy), ref.gelu_backward(x, dy), dtype, k=16, scale=np.abs(dy).max())


# ---------------------------------------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40)
@given(seed=seeds, N=st.integers(1, 30), C=st.integers(1, 200), big=st.booleans(),
       ignore=st.sampled_from(["none", "some", "all"]), contiguous=st.booleans())
def test_cross_entropy_agrees(dtype, seed, N, C, big, ignore, contiguous):
    rng = np.random.default_rng(seed)
    logits = rand(rng, (N, C), dtype, scale=1e4 if big else 3.0)  # 1e4: no NaN/inf allowed
    logits = logits if contiguous else non_contiguous(logits)
    targets = rng.integers(0, C, N)
    if ignore != "none":
        targets[rng.random(N) < 0.5 if ignore == "some" else slice(None)] = -100
    losses, lse = jit.cross_entropy_forward(logits, targets, -100)
    want_losses, want_lse = ref.cross_entropy_forward(logits, targets, -100)
    # float32: lse = max + log(sum of C exps); loss = lse - logit, so the error scales with |logits|
    big_scale = np.abs(logits).max()
    close(lse, want_lse, dtype, k=4 + C, scale=big_scale)
    close(losses, want_losses, dtype, k=4 + C, scale=big_scale)
    dl = rand(rng, N, dtype)
    dl[targets == -100] = np.nan  # an ignored row's upstream gradient must not leak in
    got = jit.cross_entropy_backward(logits, targets, lse, dl, -100)
    close(got, ref.cross_entropy_backward(logits, targets, want_lse, dl, -100), dtype, k=4 + C, scale=1.0)
    if ignore == "all":
        assert np.all(losses == 0) and np.all(got == 0)


@pytest.mark.parametrize("m", [ref, jit], ids=["numpy", "numba"])
def test_cross_entropy_rejects_bad_targets(m):
    logits = np.zeros((3, 5), np.float32)
    for bad in (5, -1, 1000):
        with pytest.raises(ValueError, match=f"target {bad} is out of range \\[0, 5\\)"):
            m.cross_entropy_forward(logits, np.array([0, bad, 1]))
        with pytest.raises(ValueError, match=f"target {bad}"):
            m.cross_entropy_backward(logits, np.array([0, bad, 1]), np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match=r"\(3, 5\) and targets \(2,\)"):
        m.cross_entropy_forward(logits, np.array([0, 1]))
    with pytest.raises(TypeError):
        m.cross_entropy_forward(logits, np.array([0.0, 1.0, 2.0]))


# ---------------------------------------------------------------------------------------- AdamW

@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=20)
@given(seed=seeds, n=st.integers(1, 3000), wd=st.sampled_from([0.0, 0.1]), lr=st.sampled_from([1e-3, 0.1]))
def test_adamw_agrees(dtype, seed, n, wd, lr):
    rng = np.random.default_rng(seed)
    p, m, v = rand(rng, n, dtype), np.zeros(n, dtype), np.zeros(n, dtype)
    mine = (p.copy(), m.copy(), v.copy())
    for step in range(1, 4):
        g = rand(rng, n, dtype)
        ref.adamw_step(p, g, m, v, lr, 0.9, 0.95, 1e-8, wd, step)
        jit.adamw_step(*mine[:1], g, *mine[1:], lr, 0.9, 0.95, 1e-8, wd, step)
    # float32: a few roundings per step, each relative to |p| (the update itself is ~lr in size)
    for got, want in zip(mine, (p, m, v)):
        close(got, want, dtype, k=16, scale=1.0)


def test_adamw_twice_on_one_buffer_and_bad_inputs():
    # callers update decayed and non-decayed parameters as two slices of one flat buffer
    p, g = np.ones(6, np.float32), np.full(6, 0.5, np.float32)
    m, v = np.zeros(6, np.float32), np.zeros(6, np.float32)
    ps = [p.copy(), p.copy()]
    for mod, q in zip((ref, jit), ps):
        mm, vv = m.copy(), v.copy()
        mod.adamw_step(q[:4], g[:4], mm[:4], vv[:4], 0.1, 0.9, 0.95, 1e-8, 0.1, 1)
        mod.adamw_step(q[4:], g[4:], mm[4:], vv[4:], 0.1, 0.9, 0.95, 1e-8, 0.0, 1)
    np.testing.assert_allclose(ps[1], ps[0], rtol=1e-6)
    np.testing.assert_allclose(ps[0], [1 - 0.01 - 0.1] * 4 + [1 - 0.1] * 2, rtol=1e-5)
    for mod in (ref, jit):
        with pytest.raises(ValueError, match="contiguous 1-D"):
            mod.adamw_step(np.ones((2, 3)), np.ones((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)),
                           0.1, 0.9, 0.95, 1e-8, 0, 1)
        with pytest.raises(ValueError, match="must match"):
            mod.adamw_step(np.ones(3), np.ones(4), np.zeros(3), np.zeros(3), 0.1, 0.9, 0.95, 1e-8, 0, 1)


# ---------------------------------------------------------------------------------------- embedding

@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=30)
@given(seed=seeds, V=st.integers(1, 70), N=st.integers(0, 200), C=st.integers(1, 40), contiguous=st.booleans())
def test_embedding_backward_agrees(dtype, seed, V, N, C, contiguous):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, size=N)  # with N > V, ids repeat: their rows must add up
    dout = rand(rng, (N, C), dtype)
    dout = dout if contiguous else non_contiguous(dout)
    start = rand(rng, (V, C), dtype)  # the kernels add into dweight: start from nonzero values
    expected, actual = ref.embedding_backward(idx, dout, start.copy()), jit.embedding_backward(idx, dout, start.copy())
    # float32: each row sums at most N terms, in the same order in both (np.add.at and the loop go
    # through idx in order), so they agree to rounding of a sum of N values
    close(actual, expected, dtype, k=max(N, 1), scale=1.0)
    # and the definition: row v gets start[v] plus the sum of the dout rows whose id is v
    by_hand = start.astype(np.float64) + np.stack([dout[idx == v].sum(axis=0) for v in range(V)])
    np.testing.assert_allclose(expected, by_hand, rtol=1e-5, atol=1e-5 * (1 + np.sqrt(N)))


@pytest.mark.parametrize("m", [ref, jit], ids=["numpy", "numba"])
def test_embedding_backward_rejects_bad_ids(m):
    dweight = np.zeros((5, 3), np.float32)
    for bad in (5, -1):
        with pytest.raises(ValueError, match=rf"id {bad} is out of range \[0, 5\)"):
            m.embedding_backward(np.array([0, bad]), np.ones((2, 3), np.float32), dweight)
    with pytest.raises(TypeError, match="integers"):
        m.embedding_backward(np.array([0.0, 1.0]), np.ones((2, 3), np.float32), dweight)
    with pytest.raises(ValueError, match="expects idx"):
        m.embedding_backward(np.array([0, 1]), np.ones((2, 4), np.float32), dweight)
    assert not dweight.any()  # nothing was written before the checks failed


# ---------------------------------------------------------------------------------------- attention

def naive_attention(q, k, v, causal):
    """softmax(q k^T / sqrt(hs)) v one query at a time, straight from the definition."""
    B, nh, Tq, hs = q.shape
    Tk = k.shape[2]
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(nh):
            for i in range(Tq):
                seen = range(i + Tk - Tq + 1) if causal else range(Tk)
                s = np.array([q[b, h, i] @ k[b, h, j] / np.sqrt(hs) for j in seen])
                p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
                out[b, h, i] = sum(pj * v[b, h, j] for pj, j in zip(p, seen))
    return out


@settings(max_examples=20)
@given(seed=seeds, Tq=st.integers(1, 6), extra=st.integers(0, 3), hs=st.integers(1, 5), causal=st.booleans())
def test_reference_attention_is_the_definition(seed, Tq, extra, hs, causal):
    rng = np.random.default_rng(seed)
    q, k, v = rand(rng, (2, 2, Tq, hs), np.float64), *(rand(rng, (2, 2, Tq + extra, hs), np.float64) for _ in "kv")
    out, lse = ref.attention_forward(q, k, v, causal)
    np.testing.assert_allclose(out, naive_attention(q, k, v, causal), rtol=1e-12, atol=1e-12)
    s = reference._scores(q, k, causal)
    np.testing.assert_allclose(lse, np.log(np.exp(s).sum(-1)), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40)
@given(seed=seeds, B=st.integers(1, 2), nh=st.integers(1, 3), Tq=st.integers(1, 70), extra=st.integers(0, 40),
       hs=st.sampled_from([1, 3, 8, 16, 17, 32, 64]), causal=st.booleans(),
       layout=st.sampled_from(["c", "(B,T,nh,hs)", "T^T"]), big=st.booleans())
def test_attention_agrees(dtype, seed, B, nh, Tq, extra, hs, causal, layout, big):
    rng = np.random.default_rng(seed)
    Tk = Tq + extra
    if causal and extra > 0 and seed % 2:  # keep the common training case (Tq == Tk) well covered
        Tk = Tq
    shape = lambda T: (B, nh, T, hs)
    q, k, v, dout = rand(rng, shape(Tq), dtype, 30.0 if big else 1.0), rand(rng, shape(Tk), dtype), \
        rand(rng, shape(Tk), dtype), rand(rng, shape(Tq), dtype)
    if layout == "(B,T,nh,hs)":  # how the model produces them: a transposed view of (B, T, nh, hs)
        q, k, v = (np.ascontiguousarray(a.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3) for a in (q, k, v))
    elif layout == "T^T":
        q, k, v, dout = (non_contiguous(a) for a in (q, k, v, dout))
    out, lse = jit.attention_forward(q, k, v, causal)
    want_out, want_lse = ref.attention_forward(q, k, v, causal)
    # float32: scores are hs-term dot products (|q||k| sized; 30x for `big`), then a softmax over Tk
    # and a Tk-term weighted sum of v; the error is relative to the scores' size
    size = (30.0 if big else 1.0) * np.sqrt(hs)
    close(lse, want_lse, dtype, k=4 + hs + Tk, scale=size)
    close(out, want_out, dtype, k=(4 + hs + Tk) * size, scale=1.0)
    got = jit.attention_backward(q, k, v, out, lse, dout, causal)
    want = ref.attention_backward(q, k, v, want_out, want_lse, dout, causal)
    for g, w in zip(got, want):
        close(g, w, dtype, k=(4 + hs + Tk) * size, scale=np.abs(w).max() + 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Tq,Tk,hs,causal", [(1, 1, 4, True), (1, 9, 8, True), (1, 9, 8, False), (5, 5, 1, True),
                                             (13, 13, 17, True), (50, 97, 24, False), (130, 130, 128, True),
                                             (3, 3, 130, True), (64, 64, 32, True), (25, 33, 16, True),
                                             (100, 100, 64, True)])
def test_attention_edge_shapes(dtype, Tq, Tk, hs, causal):
    # T = 1, a KV-cache step (Tq = 1 < Tk), head sizes off the tile (1, 17, 24), the stack limit
    # (128), and beyond it (130: the NumPy fallback); causal edges where a query block sees only
    # part of a key block (T = 64: 32 and 16 of its 48 keys; 25 x 33: 32 of them)
    rng = np.random.default_rng(Tq * Tk * hs)
    q, k, v, dout = rand(rng, (2, 3, Tq, hs), dtype), rand(rng, (2, 3, Tk, hs), dtype), \
        rand(rng, (2, 3, Tk, hs), dtype), rand(rng, (2, 3, Tq, hs), dtype)
    out, lse = jit.attention_forward(q, k, v, causal)
    want_out, want_lse = ref.attention_forward(q, k, v, causal)
    k_ = 4 + hs + Tk
    close(out, want_out, dtype, k=k_, scale=1.0)
    close(lse, want_lse, dtype, k=k_, scale=np.sqrt(hs))
    for g, w in zip(jit.attention_backward(q, k, v, out, lse, dout, causal),
                    ref.attention_backward(q, k, v, want_out, want_lse, dout, causal)):
        close(g, w, dtype, k=k_, scale=np.abs(w).max() + 1.0)


def test_attention_rejects_bad_shapes():
    q = np.zeros((1, 2, 4, 8))
    for m in (ref, jit):
        with pytest.raises(ValueError, match="Tk >= Tq"):
            m.attention_forward(q, q[:, :, :2], q[:, :, :2], causal=True)
        with pytest.raises(ValueError, match="q \\(1, 2, 4, 8\\)"):
            m.attention_forward(q, q[..., :4], q[..., :4])
        with pytest.raises(ValueError):
            m.attention_forward(q[0], q[0], q[0])
        with pytest.raises(ValueError, match="lse"):
            m.attention_backward(q, q, q, q, np.zeros((1, 2)), q)


# ---------------------------------------------------------------------------------------- reference gradients

def directional_check(f, args, i, grad, rng, h=1e-6):
    """<u, df/dargs[i]> by central difference along a random direction u, against the analytic one."""
    u = rng.standard_normal(args[i].shape)
    plus, minus = list(args), list(args)
    plus[i], minus[i] = args[i] + h * u, args[i] - h * u
    numeric = (f(*plus) - f(*minus)) / (2 * h)
    np.testing.assert_allclose((u * grad).sum(), numeric, rtol=1e-6, atol=1e-8)


def test_reference_backwards_match_finite_differences():
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    w, b = rng.standard_normal(7), rng.standard_normal(7)

    loss = lambda x: (ref.softmax_forward(x, 0.7, True) * dy).sum()
    directional_check(loss, [x], 0, ref.softmax_backward(ref.softmax_forward(x, 0.7, True), dy, 0.7), rng)
    directional_check(lambda x: (ref.gelu_forward(x) * dy).sum(), [x], 0, ref.gelu_backward(x, dy), rng)

    loss = lambda x, w, b: (ref.layer_norm_forward(x, w, b)[0] * dy).sum()
    _, mean, rstd = ref.layer_norm_forward(x, w, b)
    grads = ref.layer_norm_backward(dy, x, w, mean, rstd)
    for i in range(3):
        directional_check(loss, [x, w, b], i, grads[i], rng)

    t, dl = np.array([1, -100, 6, 0, 3]), rng.standard_normal(5)
    lse = ref.cross_entropy_forward(x, t)[1]
    directional_check(lambda x: (ref.cross_entropy_forward(x, t)[0] * dl).sum(), [x], 0,
                      ref.cross_entropy_backward(x, t, lse, dl), rng)

    q, k, v = (rng.standard_normal((1, 2, 4, 3)) for _ in "qkv")
    dout = rng.standard_normal(q.shape)
    out, lse = ref.attention_forward(q, k, v)
    grads = ref.attention_backward(q, k, v, out, lse, dout)
    for i in range(3):
        directional_check(lambda *qkv: (ref.attention_forward(*qkv)[0] * dout).sum(), [q, k, v], i, grads[i], rng)


# ---------------------------------------------------------------------------------------- dispatch

def test_every_kernel_set_exports_the_contract():
    for name in kernels.NAMES:
        for module in (reference, numba_set, checks):
            assert callable(getattr(module, name)), (module.__name__, name)


def test_compile_failure_falls_back_to_numpy_for_that_kernel_alone(monkeypatch):
    from numba.core.errors import TypingError

    def broken(*args, **kwargs):
        raise TypingError("simulated: this numba cannot compile the kernel")
    before = kernels.backend
    monkeypatch.setattr(numba_set, "gelu_forward", broken)
    try:
        kernels.use("numba")
        with pytest.warns(RuntimeWarning, match="gelu_forward falls back to its NumPy version"):
            y = kernels.gelu_forward(np.zeros(3))
        np.testing.assert_array_equal(y, 0)
        assert inspect.unwrap(kernels.gelu_forward) is reference.gelu_forward
        assert kernels.backend == "numba" and inspect.unwrap(kernels.softmax_forward) is numba_set.softmax_forward
    finally:
        monkeypatch.undo()
        kernels.use(before or "numba")


def test_missing_numba_falls_back_to_numpy(monkeypatch):
    import sys
    before = kernels.backend
    monkeypatch.setitem(sys.modules, "tinygpt.kernels.jit", None)  # `import` of it now fails
    monkeypatch.delattr(kernels, "jit")
    try:
        with pytest.warns(RuntimeWarning, match="numba kernels unavailable"):
            assert kernels.use("numba") == "numpy"
    finally:
        monkeypatch.undo()
        kernels.use(before or "numba")


def test_use_switches_and_rejects_unknown(monkeypatch):
    before = kernels.backend
    try:
        assert kernels.use("numpy") == "numpy" and kernels.softmax_forward.__wrapped__ is reference.softmax_forward
        assert kernels.use("numba") == "numba"
        with pytest.raises(ValueError, match=r"id 5 is out of range"):  # the installed kernels are checked
            kernels.embedding_backward(np.array([5]), np.ones((1, 3), np.float32), np.zeros((5, 3), np.float32))
        with pytest.raises(ValueError, match="'cuda'"):
            kernels.use("cuda")
    finally:
        if before is not None:
            kernels.use(before)


# ---------------------------------------------------------------------------------------- gemv

@pytest.mark.parametrize("transposed", [False, True], ids=["w(K,N)", "w(N,K)"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 768, 2304), (3, 100, 301), (17, 64, 1000), (1, 5, 1)])
def test_gemv_matches_reference(M, K, N, dtype, transposed):
    rng = np.random.default_rng(M * K + N)
    x, b = rand(rng, (M, K), dtype), rand(rng, (N,), dtype)
    w = rand(rng, (N, K) if transposed else (K, N), dtype)
    for bias in (None, b):
        # a K-term dot product: error ~K eps, the terms of size |x||w| ~ 1
        close(jit.gemv(x, w, bias, transposed=transposed), ref.gemv(x, w, bias, transposed=transposed),
              dtype, k=K, scale=1.0)


@pytest.mark.parametrize("transposed", [False, True], ids=["w(K,N)", "w(N,K)"])
@pytest.mark.parametrize("M,K,N", [(1, 768, 2304), (5, 130, 257), (1, 1536, 2048)])  # the last: parallel
def test_gemv_int8_matches_reference(M, K, N, transposed):
    rng = np.random.default_rng(K + N)
    x, b = rand(rng, (M, K), np.float32), rand(rng, (N,), np.float32)
    q = rng.integers(-127, 128, (N, K) if transposed else (K, N)).astype(np.int8)
    scale = (rng.random(N) / 127).astype(np.float32)
    expected = ref.gemv(x, q, b, scale, transposed)
    # the int8 -> float conversion is exact, so only the sum's order differs: ~K eps of sum|terms|
    close(jit.gemv(x, q, b, scale, transposed), expected, np.float32, k=K, scale=np.abs(expected).max())
    # and it is the product with the dequantized float weights
    wf = q.astype(np.float64) * (scale[:, None] if transposed else scale[None, :])
    np.testing.assert_allclose(expected, x @ (wf.T if transposed else wf) + b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("transposed", [False, True], ids=["w(K,N)", "w(N,K)"])
@pytest.mark.parametrize("M,K,N", [(1, 768, 2304), (5, 130, 257), (1, 1536, 2048)])  # the last: parallel
def test_gemv_bf16_matches_reference(M, K, N, transposed):
    rng = np.random.default_rng(K + 2 * N)
    x, b = rand(rng, (M, K), np.float32), rand(rng, (N,), np.float32)
    w = rand(rng, (N, K) if transposed else (K, N), np.float32)
    q = (w.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 bits: float32's upper half
    expected = ref.gemv(x, q, b, None, transposed)
    # the widening is exact, so only the sum's order differs: ~K eps of sum|terms|
    close(jit.gemv(x, q, b, None, transposed), expected, np.float32, k=K, scale=np.abs(expected).max())
    # and it is the product with the float32 whose lower 16 bits are zero
    wf = (w.view(np.uint32) & 0xFFFF0000).view(np.float32).astype(np.float64)
    np.testing.assert_allclose(expected, x @ (wf.T if transposed else wf) + b, rtol=1e-4, atol=1e-4)


def test_gemv_rejects_bad_input():
    x = np.ones((2, 4), np.float32)
    for kernel_set in (ref, jit):
        with pytest.raises(ValueError, match=r"w \(K, N\), got x \(2, 4\) and w \(5, 3\)"):
            kernel_set.gemv(x, np.ones((5, 3), np.float32))
        with pytest.raises(ValueError, match=r"w \(N, K\)"):
            kernel_set.gemv(x, np.ones((4, 3), np.float32), transposed=True)
        with pytest.raises(ValueError, match="needs scale="):
            kernel_set.gemv(x, np.ones((4, 3), np.int8))
        with pytest.raises(ValueError, match="scale is for int8"):
            kernel_set.gemv(x, np.ones((4, 3), np.float32), scale=np.ones(3))
        with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
            kernel_set.gemv(x, np.ones((4, 3), np.float32), np.ones(4))
        with pytest.raises(TypeError):
            kernel_set.gemv(x.astype(np.int32), np.ones((4, 3), np.float32))


def test_one_thread_twins_equal_their_parallel_kernels():
    """Small work (a decode step's one row) runs a kernel's twin compiled without parallel=True
    (jit_math.on_one_thread): the same loops, so the same numbers as the parallel kernel."""
    from tinygpt.kernels import jit_attention, jit_gemv
    rng = np.random.default_rng(0)
    x, w, b = rand(rng, (3, 40), np.float32), rand(rng, (40,), np.float32), rand(rng, (40,), np.float32)
    q, k, v = rand(rng, (2, 3, 1, 8), np.float32), rand(rng, (2, 3, 9, 8), np.float32), rand(rng, (2, 3, 9, 8), np.float32)
    wk, bias, none = rand(rng, (40, 7), np.float32), rand(rng, (7,), np.float32), np.zeros(0, np.float32)
    out = lambda shape: np.zeros(shape, np.float32)  # noqa: E731
    calls = [  # (parallel kernel, its twin, arguments, which of them are outputs)
        (numba_set._layer_norm_rows, numba_set._layer_norm_rows_1, (x, w, b, 1e-5), ()),
        (numba_set._gelu, numba_set._gelu_1, (x.reshape(-1), np.float32(reference.GELU_C)), ()),
        (jit_attention._forward_one_query, jit_attention._forward_one_query_1,
         (q, k, v, out((2, 3, 1, 8)), out((2, 3, 1))), (3, 4)),
        (jit_gemv._gemv_columns, jit_gemv._gemv_columns_1, (x, wk, bias, none, out((3, 7)), 1), (4,)),
        (jit_gemv._gemv_rows, jit_gemv._gemv_rows_1, (x, wk.T.copy(), bias, none, out((3, 7))), (4,)),
    ]
    def results(kernel, args, outs):  # the returned arrays, or the outputs written in place
        args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        returned = kernel(*args)
        return [args[i] for i in outs] if outs else list(returned) if isinstance(returned, tuple) else [returned]
    for kernel, twin, args, outs in calls:
        assert twin.py_func.__code__ is kernel.py_func.__code__ and not twin.targetoptions["parallel"]
        for got, expected in zip(results(twin, args, outs), results(kernel, args, outs), strict=True):
            close(got, expected, np.float32, k=40)


def test_numba_kernels_hold_openblas_to_one_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if kernels.use("numba") != "numba":
        pytest.skip("numba unavailable")
    blas = [i for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"]
    assert blas and all(i["num_threads"] == 1 for i in blas)
