"""Optimizers against torch.optim, weight-decay groups, frozen parameters, clipping, the schedule."""
import math

import numpy as np
import pytest

from tinygpt import Tensor
from tinygpt.optim import SGD, AdamW, clip_grad_norm, get_lr

SHAPES = [(5, 3), (3,), (4, 2, 2), (7,)]  # two matrices (decayed), two vectors (not)


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return [Tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True) for s in SHAPES]


def grads_for(step, seed=1):
    rng = np.random.default_rng(seed + step)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def run_ours(opt_cls, n_steps, **kw):
    params = make_params()
    opt = opt_cls(params, **kw)
    for t in range(n_steps):
        opt.zero_grad()
        for p, g in zip(params, grads_for(t)):
            p.grad += g  # what backward does: accumulate in place
        opt.step()
    return params, opt


def run_torch(torch_cls, n_steps, wd, **kw):
    torch = pytest.importorskip("torch")
    params = [torch.tensor(p.data.copy(), requires_grad=True) for p in make_params()]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": wd},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = getattr(torch.optim, torch_cls)(groups, **kw)
    for t in range(n_steps):
        for p, g in zip(params, grads_for(t)):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in params]


def test_adamw_matches_torch():
    ours, _ = run_ours(AdamW, 6, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    ref = run_torch("AdamW", 6, 0.1, lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    for p, r in zip(ours, ref):
        assert p.data.dtype == np.float32
        np.testing.assert_allclose(p.data, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.05)])
def test_sgd_matches_torch(momentum, wd):
    ours, _ = run_ours(SGD, 5, lr=0.1, momentum=momentum, weight_decay=wd)
    ref = run_torch("SGD", 5, wd, lr=0.1, momentum=momentum)
    for p, r in zip(ours, ref):
        np.testing.assert_allclose(p.data, r, rtol=1e-5, atol=1e-6)


def test_weight_decay_only_on_matrices():
    # zero gradients: Adam's update is 0/(0+eps) = 0, so only the decay can move a parameter
    params = make_params()
    before = [p.data.copy() for p in params]
    opt = AdamW(params, lr=0.1, weight_decay=0.5)
    opt.zero_grad()
    opt.step()
    for p, b in zip(params, before):
        if p.ndim >= 2:
            np.testing.assert_allclose(p.data, b * (1 - 0.1 * 0.5), rtol=1e-6)
        else:
            np.testing.assert_array_equal(p.data, b)


def test_frozen_params_untouched_and_unbuffered():
    params = make_params()
    frozen = Tensor(np.ones((3, 3), np.float32), requires_grad=False)
    frozen_vec = Tensor(np.ones(4, np.float32), requires_grad=False)
    before = frozen.data.copy()
    opt = AdamW(params + [frozen, frozen_vec], lr=0.1, weight_decay=0.1)
    assert sum(len(g) for g in opt.groups) == sum(p.size for p in params)
    for t in range(3):
        opt.zero_grad()
        frozen.grad = np.ones_like(frozen.data)  # even a stray gradient must not move it
        for p, g in zip(params, grads_for(t)):
            p.grad += g
        opt.step()
    assert frozen.data.tobytes() == before.tobytes() and frozen_vec.data.tobytes() == np.ones(4, np.float32).tobytes()


def test_flat_buffers_are_shared_views_and_tied_params_counted_once():
    params = make_params()
    opt = AdamW(params + [params[0]], lr=0.1)  # params[0] passed twice, as tied weights are
    assert sum(len(g) for g in opt.groups) == sum(p.size for p in params)
    for p in params:
        assert np.shares_memory(p.data, opt.groups[0 if p.ndim >= 2 else 1].data)
    # a gradient that was replaced (not accumulated in place) still reaches the update
    opt.zero_grad()
    params[1].grad = None
    params[3].grad = np.full(SHAPES[3], 2.0, np.float32)
    before = [p.data.copy() for p in params]
    opt.step()
    assert not np.array_equal(params[3].data, before[3])
    assert params[3].grad is not None and np.shares_memory(params[3].grad, opt.groups[1].grad)
    # weights replaced instead of copied in place are pulled back into the buffer
    params[0].data = np.zeros(SHAPES[0], np.float32)
    opt.zero_grad()
    opt.step()
    assert np.shares_memory(params[0].data, opt.groups[0].data)
    assert np.abs(params[0].data).max() < 1e-6  # zeros, decayed: still zeros


def test_backward_accumulates_into_flat_buffer():
    params = make_params()
    opt = SGD(params, lr=1.0)
    opt.zero_grad()
    loss = (params[0] * params[0]).sum() + params[1].sum()
    loss.backward()
    np.testing.assert_allclose(opt.groups[0].grad[:15], 2 * params[0].data.ravel())
    expected = [p.data - g for p, g in zip(params, [2 * params[0].data, np.ones(3), 0, 0])]
    opt.step()
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.data, e, rtol=1e-6)


@pytest.mark.parametrize("opt_cls,kw", [(AdamW, {"weight_decay": 0.1}), (SGD, {"momentum": 0.9})])
def test_state_dict_round_trip(opt_cls, kw):
    params, opt = run_ours(opt_cls, 3, lr=0.01, **kw)
    sd = opt.state_dict()
    snapshot = [p.data.copy() for p in params]
    # continue the original for 2 steps
    for t in range(3, 5):
        opt.zero_grad()
        for p, g in zip(params, grads_for(t)):
            p.grad += g
        opt.step()
    # a fresh optimizer on fresh params, loaded with the snapshot, must land on the same values
    params2 = [Tensor(s.copy(), requires_grad=True) for s in snapshot]
    opt2 = opt_cls(params2, lr=0.01, **kw)
    opt2.load_state_dict(sd)
    assert opt2.step_count == 3
    for t in range(3, 5):
        opt2.zero_grad()
        for p, g in zip(params2, grads_for(t)):
            p.grad += g
        opt2.step()
    for p, q in zip(params, params2):
        assert p.data.tobytes() == q.data.tobytes()


def test_load_state_dict_errors():
    _, opt = run_ours(AdamW, 1, lr=0.01)
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="missing"):
        opt.load_state_dict({k: v for k, v in sd.items() if k != "decay.m"})
    sd["decay.v"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(sd)


def test_clip_grad_norm_returns_norm_and_scales():
    params = make_params()
    grads = grads_for(0)
    for p, g in zip(params, grads):
        p.grad = g.copy()
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    got = clip_grad_norm(params, max_norm=1.0)
    assert got == pytest.approx(norm, rel=1e-6)
    new_norm = math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in params))
    assert new_norm == pytest.approx(1.0, rel=1e-5)
    for p, g in zip(params, grads):  # direction kept, float32 kept
        assert p.grad.dtype == np.float32
        np.testing.assert_allclose(p.grad, g / norm, rtol=1e-5)
    # under the limit: untouched, norm still returned
    before = [p.grad.copy() for p in params]
    assert clip_grad_norm(params, max_norm=10.0) == pytest.approx(1.0, rel=1e-5)
    for p, b in zip(params, before):
        assert p.grad.tobytes() == b.tobytes()


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    params = make_params()
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    for p, tp, g in zip(params, tparams, grads_for(3)):
        p.grad, tp.grad = g.copy(), torch.tensor(g)
    ours = clip_grad_norm(params, 0.5)
    ref = torch.nn.utils.clip_grad_norm_(tparams, 0.5)
    assert ours == pytest.approx(float(ref), rel=1e-5)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_get_lr_schedule():
    kw = dict(lr=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000)
    assert get_lr(0, **kw) == pytest.approx(1e-3 / 101)
    assert get_lr(49, **kw) == pytest.approx(1e-3 * 50 / 101)
    assert get_lr(100, **kw) == pytest.approx(1e-3)            # warmup done: the peak
    assert get_lr(1050, **kw) == pytest.approx(5.5e-4)         # halfway down the cosine
    assert get_lr(2000, **kw) == pytest.approx(1e-4)           # end of decay
    assert get_lr(5000, **kw) == pytest.approx(1e-4)           # flat afterwards
    lrs = [get_lr(i, **kw) for i in range(100, 2001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))           # monotone decay
    assert get_lr(0, 1e-3, 1e-4, 0, 0) == 1e-4                 # degenerate: no warmup, no decay


def test_optimizer_argument_errors():
    with pytest.raises(ValueError, match="AdamW lr must be >= 0, got -1"):
        AdamW(make_params(), lr=-1)
    with pytest.raises(ValueError, match=r"AdamW beta2 must be in \[0, 1\), got 1.0"):
        AdamW(make_params(), lr=1e-3, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="momentum"):
        SGD(make_params(), lr=1e-3, momentum=1.5)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(make_params(), 0)
    with pytest.raises(TypeError, match="dtypes"):
        AdamW([Tensor(np.ones((2, 2)), requires_grad=True),
               Tensor(np.ones((2, 2), np.float32), requires_grad=True)], lr=1e-3)
