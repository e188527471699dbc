"""Modules: parameter discovery and naming, state dicts, modes, and the four layers (checked against
PyTorch's functional ops in float64, tolerance rtol 1e-10 / atol 1e-12: same formulas, only the
summation order differs)."""
import numpy as np
import pytest

from tinygpt import Tensor
from tinygpt import is_grad_enabled
from tinygpt.nn import Dropout, Embedding, LayerNorm, Linear, Module, Parameter, evaluating


class Toy(Module):
    """Covers what named_parameters must find: own params, a submodule, a list of submodules,
    a frozen param, and a parameter shared (tied) between two places."""

    def __init__(self):
        self.emb = Embedding(5, 4)
        self.layers = [Linear(4, 4), Linear(4, 4, bias=False)]
        self.norm = LayerNorm(4)
        self.scale = Parameter(np.ones(4, dtype=np.float32), requires_grad=False)  # frozen
        self.head = Linear(4, 5)
        self.head.weight = self.emb.weight  # tied (shapes aside: only identity matters here)
        self.not_a_param = Tensor(np.zeros(3))  # a plain Tensor is not learned
        self.drop = Dropout(0.5)

    def forward(self, idx):
        return self.norm(self.layers[1](self.layers[0](self.emb(idx)))) * self.scale


def test_named_parameters_names_order_and_dedup():
    m = Toy()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["scale", "emb.weight", "layers.0.weight", "layers.0.bias", "layers.1.weight",
                     "norm.weight", "norm.bias", "head.bias"]  # head.weight is emb.weight: listed once
    assert len(m.parameters()) == len(names) == len({id(p) for p in m.parameters()})
    assert all(isinstance(p, Parameter) for p in m.parameters())
    assert dict(m.named_parameters())["scale"].requires_grad is False  # frozen, still listed
    assert "scale" in m.state_dict()


def test_named_modules_and_train_eval_reach_list_items():
    m = Toy()
    assert [n for n, _ in m.named_modules()] == ["", "emb", "layers.0", "layers.1", "norm", "head", "drop"]
    assert m.eval() is m
    assert all(not sub.training for _, sub in m.named_modules())
    m.train()
    assert all(sub.training for _, sub in m.named_modules())
    assert m.layers[1].training and m.drop.training


def test_evaluating_is_eval_mode_without_a_graph_and_restores_mixed_modes():
    m = Toy().train()
    m.drop.eval()  # a mixed state must come back as it was
    idx = np.array([[1, 2, 3]])
    with evaluating(m):
        assert not is_grad_enabled() and not any(sub.training for _, sub in m.named_modules())
        assert not m(idx).requires_grad
    assert is_grad_enabled() and m.training and m.layers[0].training and not m.drop.training
    with pytest.raises(KeyError):  # restored on an exception too
        with evaluating(m):
            raise KeyError
    assert is_grad_enabled() and m.training and not m.drop.training


def test_zero_grad_and_frozen_parameter_gets_no_grad():
    m = Toy()
    m(np.array([[0, 1, 2]])).sum().backward()
    assert m.scale.grad is None
    assert m.layers[0].weight.grad is not None and m.emb.weight.grad is not None
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_state_dict_round_trip_is_in_place():
    a, b = Toy(), Toy()
    a.scale.data[...] = 3.0
    flat = np.zeros(sum(p.size for p in b.parameters()), dtype=np.float32)
    offset = 0
    for p in b.parameters():  # as the optimizer does: every parameter a view into one flat buffer
        flat[offset:offset + p.size] = p.data.ravel()
        p.data = flat[offset:offset + p.size].reshape(p.shape)
        offset += p.size
    arrays_before = [p.data for p in b.parameters()]
    assert b.load_state_dict(a.state_dict()) == ([], [])
    for (name, pa), pb, arr in zip(a.named_parameters(), b.parameters(), arrays_before):
        assert pb.data is arr, f"{name} was rebound, not written in place"
        np.testing.assert_array_equal(pb.data, pa.data)
    np.testing.assert_array_equal(flat[:a.scale.size], a.scale.data)  # the flat buffer saw the load


def test_state_dict_values_are_the_parameter_arrays():
    m = Toy()
    assert m.state_dict()["norm.weight"] is m.norm.weight.data


def test_load_state_dict_names_every_problem_and_writes_nothing():
    m = Toy()
    before = {k: v.copy() for k, v in m.state_dict().items()}
    sd = {k: np.full(v.shape, 7.0) for k, v in before.items()}
    del sd["norm.bias"]                        # missing
    sd["extra.weight"] = np.zeros(2)           # unexpected
    sd["layers.0.weight"] = np.zeros((4, 5))   # wrong shape
    with pytest.raises(ValueError) as e:
        m.load_state_dict(sd)
    msg = str(e.value)
    assert "norm.bias" in msg and "extra.weight" in msg and "layers.0.weight" in msg and "(4, 5)" in msg
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # all or nothing


def test_load_state_dict_non_strict_reports_and_casts():
    m = Toy()
    sd = {"norm.weight": np.full(4, 2.0, dtype=np.float64), "extra": np.zeros(1)}
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert unexpected == ["extra"] and "norm.bias" in missing
    assert m.norm.weight.dtype == np.float32 and np.all(m.norm.weight.data == 2.0)
    with pytest.raises(ValueError, match="norm.weight"):  # shapes are checked even when not strict
        m.load_state_dict({"norm.weight": np.zeros(3)}, strict=False)


def test_layers_default_float32_and_build_float64():
    for layer in (Linear(3, 2), Embedding(4, 3), LayerNorm(3)):
        assert all(p.dtype == np.float32 for p in layer.parameters())
    for layer in (Linear(3, 2, dtype=np.float64), Embedding(4, 3, dtype=np.float64), LayerNorm(3, dtype=np.float64)):
        assert all(p.dtype == np.float64 for p in layer.parameters())


def test_init_statistics_and_seed():
    lin = Linear(256, 512, rng=0)
    assert lin.weight.shape == (256, 512)  # (in, out): GPT-2's Conv1D layout
    assert abs(lin.weight.data.std() - 0.02) < 1e-3 and np.all(lin.bias.data == 0)
    np.testing.assert_array_equal(lin.weight.data, Linear(256, 512, rng=0).weight.data)
    ln = LayerNorm(8, bias=False)
    assert np.all(ln.weight.data == 1) and ln.bias is None


def test_dropout_modes():
    x = Tensor(np.ones((100, 100), dtype=np.float32))
    d = Dropout(0.25, generator=np.random.default_rng(0))
    y = d(x).data
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)} and abs((y == 0).mean() - 0.25) < 0.02
    assert d.eval()(x) is x
    with pytest.raises(ValueError, match="1.0"):
        Dropout(1.0)


# ---- against PyTorch, float64 --------------------------------------------------------------------
torch = pytest.importorskip("torch")
TF = torch.nn.functional
TOL = dict(rtol=1e-10, atol=1e-12)


def _backward_both(ours_out, torch_out, seed=0):
    w = np.random.default_rng(seed).standard_normal(ours_out.shape)
    (ours_out * w).sum().backward()
    (torch_out * torch.tensor(w)).sum().backward()


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(bias):
    lin = Linear(5, 3, bias=bias, dtype=np.float64, rng=1)
    if bias:
        lin.bias.data[...] = np.random.default_rng(2).standard_normal(3)
    x = np.random.default_rng(3).standard_normal((2, 4, 5))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(lin.weight.data.T.copy(), requires_grad=True)  # torch stores (out, in)
    bt = torch.tensor(lin.bias.data, requires_grad=True) if bias else None
    xo = Tensor(x, requires_grad=True)
    out, ref = lin(xo), TF.linear(xt, wt, bt)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), **TOL)
    _backward_both(out, ref)
    np.testing.assert_allclose(xo.grad, xt.grad.numpy(), **TOL)
    np.testing.assert_allclose(lin.weight.grad, wt.grad.numpy().T, **TOL)
    if bias:
        np.testing.assert_allclose(lin.bias.grad, bt.grad.numpy(), **TOL)


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_matches_torch(bias):
    ln = LayerNorm(6, bias=bias, dtype=np.float64)
    rng = np.random.default_rng(4)
    ln.weight.data[...] = rng.standard_normal(6)
    if bias:
        ln.bias.data[...] = rng.standard_normal(6)
    x = rng.standard_normal((3, 2, 6))
    xt, xo = torch.tensor(x, requires_grad=True), Tensor(x, requires_grad=True)
    wt = torch.tensor(ln.weight.data, requires_grad=True)
    bt = torch.tensor(ln.bias.data, requires_grad=True) if bias else None
    out, ref = ln(xo), TF.layer_norm(xt, (6,), wt, bt, eps=1e-5)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), **TOL)
    _backward_both(out, ref)
    np.testing.assert_allclose(xo.grad, xt.grad.numpy(), **TOL)
    np.testing.assert_allclose(ln.weight.grad, wt.grad.numpy(), **TOL)
    if bias:
        np.testing.assert_allclose(ln.bias.grad, bt.grad.numpy(), **TOL)


def test_embedding_matches_torch():
    emb = Embedding(7, 3, dtype=np.float64, rng=5)
    idx = np.array([[0, 6, 6], [2, 0, 1]])  # repeated ids: their gradients add up
    wt = torch.tensor(emb.weight.data, requires_grad=True)
    out, ref = emb(idx), TF.embedding(torch.tensor(idx), wt)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), **TOL)
    _backward_both(out, ref)
    np.testing.assert_allclose(emb.weight.grad, wt.grad.numpy(), **TOL)


@pytest.mark.parametrize("make, exc, needle", [
    (lambda: Dropout("0.1"), TypeError, "'0.1'"),
    (lambda: Dropout(float("nan")), ValueError, "nan"),
    (lambda: Linear(0, 3), ValueError, "Linear: in_features must be a positive integer, got 0"),
    (lambda: Linear(3, 2.5), ValueError, "out_features .* got 2.5"),
    (lambda: Embedding(-1, 4), ValueError, "num_embeddings .* got -1"),
    (lambda: LayerNorm(True), ValueError, "ndim .* got True"),
])
def test_layers_refuse_bad_sizes_when_built(make, exc, needle):
    with pytest.raises(exc, match=needle):
        make()
