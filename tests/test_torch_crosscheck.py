"""The second family of checks: forward values and gradients against PyTorch, float64, on the same
hypothesis-generated inputs. Runs when torch is installed (CI installs it, so there it runs).

Tolerance: rtol 1e-10 / atol 1e-12. Both sides compute the same float64 formulas; only the order
of summation differs, which moves results by a few ulps times the number of terms.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt as tg
import tinygpt.functional as F
from gradcheck import arrays, broadcast_pairs, nonscalar_shapes

torch = pytest.importorskip("torch")
TF = torch.nn.functional
N = 30  # hypothesis examples per op


def compare(tg_fn, torch_fn, *inputs, rtol=1e-10, atol=1e-12):
    """Run both on the same float64 inputs; compare outputs and the gradients of sum(out * w)."""
    ours = [tg.Tensor(x, requires_grad=True) for x in inputs]
    theirs = [torch.tensor(x, requires_grad=True) for x in inputs]
    out, ref = tg_fn(*ours), torch_fn(*theirs)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=rtol, atol=atol)
    w = np.random.default_rng(0).standard_normal(out.shape)
    (out * w).sum().backward()
    (ref * torch.tensor(w)).sum().backward()
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=rtol, atol=atol)


BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / b, lambda a, b: a / b),
    "pow": (lambda a, b: a.exp() ** b, lambda a, b: a.exp() ** b),
    "where": (lambda a, b: tg.where(a.data > 0, a, b), lambda a, b: torch.where(a > 0, a, b)),
}


@pytest.mark.parametrize("op", BINARY)
@settings(max_examples=N)
@given(data=st.data(), shapes_=broadcast_pairs)
def test_binary(op, data, shapes_):
    sa, sb = shapes_.input_shapes
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    if op == "div":
        b = np.where(np.abs(b) < 0.5, 0.5 + np.abs(b), b)
    compare(*BINARY[op], a, b)


UNARY = {
    "exp": (lambda x: x.exp(), torch.exp),
    "log": (lambda x: (x * x + 0.1).log(), lambda x: (x * x + 0.1).log()),
    "sqrt": (lambda x: (x * x + 0.1).sqrt(), lambda x: (x * x + 0.1).sqrt()),
    "tanh": (lambda x: x.tanh(), torch.tanh),
    "relu": (lambda x: x.relu(), torch.relu),
    "neg_rsub_rdiv": (lambda x: 2.0 - (-x) / 3.0 + 1.5 / (x * x + 1), lambda x: 2.0 - (-x) / 3.0 + 1.5 / (x * x + 1)),
    "softmax": (lambda x: F.softmax(x, axis=-1), lambda x: torch.softmax(x, -1)),
    "softmax_axis0": (lambda x: F.softmax(x, axis=0), lambda x: torch.softmax(x, 0)),
    "log_softmax": (lambda x: F.log_softmax(x), lambda x: torch.log_softmax(x, -1)),
    "gelu": (F.gelu, lambda x: TF.gelu(x, approximate="tanh")),
    "sum": (lambda x: x.sum(axis=-1), lambda x: x.sum(-1)),
    "sum_keepdims": (lambda x: x.sum(axis=0, keepdims=True), lambda x: x.sum(0, keepdim=True)),
    "mean": (lambda x: x.mean(), lambda x: x.mean()),
    "max": (lambda x: x.max(axis=-1), lambda x: torch.amax(x, -1)),
    "var": (lambda x: x.var(axis=-1, keepdims=True), lambda x: x.var(-1, keepdim=True, unbiased=False)),
    "reshape": (lambda x: x.reshape(-1) * np.arange(x.size), lambda x: x.reshape(-1) * torch.arange(x.numel())),
    "transpose": (lambda x: x.transpose(0, -1), lambda x: x.transpose(0, -1)),
    "T": (lambda x: x.T, lambda x: x.permute(*reversed(range(x.ndim)))),
    "getitem": (lambda x: x[..., None, 0], lambda x: x[..., None, 0]),
    "masked_fill": (lambda x: x.masked_fill(x.data > 0.5, -1.0), lambda x: x.masked_fill(x > 0.5, -1.0)),
    "concatenate": (lambda x: tg.concatenate([x, x * 2], axis=0), lambda x: torch.cat([x, x * 2], 0)),
    "stack": (lambda x: tg.stack([x, x.exp()], axis=-1), lambda x: torch.stack([x, x.exp()], -1)),
    "split": (lambda x: x.split(1, axis=0)[0] * 3, lambda x: x.split(x.shape[0], 0)[0] * 3),
}


@pytest.mark.parametrize("op", UNARY)
@settings(max_examples=N)
@given(data=st.data(), shape=nonscalar_shapes)
def test_unary(op, data, shape):
    x = data.draw(arrays(shape))
    if op == "max":  # distinct values: ties have no single gradient convention
        x = np.random.default_rng(0).permutation(x.size).reshape(shape) * 1e-2 + x * 1e-3
    if op == "relu":
        x = np.where(np.abs(x) < 1e-3, 0.5, x)
    compare(*UNARY[op], x)


@settings(max_examples=N)
@given(data=st.data(), batch=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3),
       m=st.integers(1, 5), k=st.integers(1, 5), n=st.integers(1, 5))
def test_matmul(data, batch, m, k, n):
    a = data.draw(arrays(batch.input_shapes[0] + (m, k)))
    b = data.draw(arrays(batch.input_shapes[1] + (k, n)))
    compare(lambda x, y: x @ y, lambda x, y: x @ y, a, b)
    vec = data.draw(arrays((k,)))
    compare(lambda x, y: x @ y, lambda x, y: x @ y, a, vec)  # (batched) matrix @ vector
    compare(lambda x, y: x @ y, lambda x, y: x @ y, vec, b)  # vector @ (batched) matrix


@settings(max_examples=N)
@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
def test_layer_norm(data, shape):
    C = shape[-1]
    compare(lambda x, w, b: F.layer_norm(x, w, b), lambda x, w, b: TF.layer_norm(x, (C,), w, b, 1e-5),
            data.draw(arrays(shape)), data.draw(arrays((C,))), data.draw(arrays((C,))), rtol=1e-9)


@settings(max_examples=N)
@given(data=st.data(), lead=st.sampled_from([(4,), (2, 3)]), C=st.integers(1, 7),
       reduction=st.sampled_from(["mean", "sum", "none"]))
def test_cross_entropy(data, lead, C, reduction):
    targets = data.draw(hnp.arrays(np.int64, lead, elements=st.sampled_from([-100] + list(range(C)))))
    if (targets == -100).all():
        targets.flat[0] = 0  # torch's mean over zero targets is NaN; ours is 0 (tested elsewhere)
    t = torch.tensor(targets)
    compare(lambda x: F.cross_entropy(x, targets, reduction=reduction),
            lambda x: TF.cross_entropy(x.reshape(-1, C), t.reshape(-1), ignore_index=-100,
                                       reduction=reduction).reshape(lead if reduction == "none" else ()),
            data.draw(arrays(lead + (C,), -5, 5)))


@settings(max_examples=N)
@given(data=st.data(), V=st.integers(1, 6), C=st.integers(1, 4))
def test_embedding(data, V, C):
    idx = data.draw(hnp.arrays(np.int64, (2, 5), elements=st.integers(0, V - 1)))
    compare(lambda w: F.embedding(w, idx), lambda w: TF.embedding(torch.tensor(idx), w), data.draw(arrays((V, C))))


@settings(max_examples=N)
@given(data=st.data(), B=st.integers(1, 2), nh=st.integers(1, 3), T=st.integers(1, 9), hs=st.integers(1, 8),
       causal=st.booleans())
def test_attention(data, B, nh, T, hs, causal):
    q, k, v = (data.draw(arrays((B, nh, T, hs))) for _ in range(3))
    compare(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal=causal),
            lambda a, b, c: TF.scaled_dot_product_attention(a, b, c, is_causal=causal), q, k, v, rtol=1e-9)


@settings(max_examples=N)
@given(data=st.data(), B=st.integers(1, 2), nh=st.integers(1, 3), T=st.integers(1, 9), hs=st.integers(1, 6),
       causal=st.booleans())
def test_self_attention(data, B, nh, T, hs, causal):
    """F.self_attention against nanoGPT's forward: split c_attn's output, heads, SDPA, merge."""
    def torch_self_attention(qkv):
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in qkv.split(nh * hs, dim=2))
        y = TF.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return y.transpose(1, 2).contiguous().view(B, T, nh * hs)
    compare(lambda qkv: F.self_attention(qkv, nh, causal=causal), torch_self_attention,
            data.draw(arrays((B, T, 3 * nh * hs))), rtol=1e-9)
