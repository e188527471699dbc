"""Anomaly mode (tinygpt.detect_anomaly): the first NaN or inf an op makes, in its forward or in its
backward, raises FloatingPointError naming the op and the stage; it is off by default and off again
after its block, and a model's own -inf (the causal mask) is no anomaly."""
import numpy as np
import pytest

import tinygpt as tg
import tinygpt.functional as F
from tinygpt import Tensor
from tinygpt.model import GPT, GPTConfig

BIG = np.float32(3e38)  # near float32's max: a sum of two overflows


@pytest.fixture(autouse=True)
def quiet_numpy():
    with np.errstate(all="ignore"):  # the NaNs and infs below are made on purpose
        yield


@pytest.mark.parametrize("make, op, kind, shape", [
    (lambda x: (x.log() * 2).sum(), "log", "inf", "(2,)"),       # log(0): named, not the * or sum after it
    (lambda x: (x / x).sum(), "/", "NaN", "(2,)"),               # 0/0
    (lambda x: F.cross_entropy(x.reshape(1, 2) * BIG - BIG * x[::-1].reshape(1, 2), np.array([0])),
     "cross_entropy", "inf", "()"),                              # logits [-BIG, BIG], target the -BIG
    (lambda x: F.linear(x.reshape(1, 2) + BIG, Tensor(np.ones((2, 3), np.float32))), "linear", "inf", "(1, 3)"),
    (lambda x: (x + BIG) @ Tensor(np.ones(2, np.float32)), "@", "inf", "()"),
])
def test_a_non_finite_forward_names_its_op(make, op, kind, shape):
    x = Tensor(np.array([0.0, 1.0], np.float32), requires_grad=True)
    with tg.detect_anomaly():
        with pytest.raises(FloatingPointError) as e:
            make(x)
    message = str(e.value)
    assert f"the forward of '{op}' produced {kind} in its output, of shape {shape}" in message, message


@pytest.mark.parametrize("make, op", [
    (lambda x: x.sqrt().sum(), "sqrt"),     # sqrt(0) = 0, but its derivative 1/(2 sqrt(0)) is inf
    (lambda x: (x ** 0.5).sum(), "**"),     # the same through pow
])
def test_a_backward_that_alone_goes_non_finite_names_its_op(make, op):
    x = Tensor(np.array([0.0, 4.0], np.float32), requires_grad=True)
    with tg.detect_anomaly():
        y = make(x)  # the forward is finite: no error yet
        assert np.isfinite(y.data).all()
        with pytest.raises(FloatingPointError) as e:
            y.backward()
    assert f"the backward of '{op}' produced inf in the gradient of its input 0, of shape (2,)" in str(e.value)


def test_off_by_default_and_off_again_after_the_block():
    x = Tensor(np.array([0.0, 1.0], np.float32), requires_grad=True)
    assert x.log().data[0] == -np.inf  # off: NaN and inf flow on silently, as in NumPy and torch
    with pytest.raises(FloatingPointError):
        with tg.detect_anomaly():
            x.log()
    x.sqrt().sum().backward()          # off again, after an exception too
    assert x.grad[0] == np.inf
    with tg.no_grad(), tg.detect_anomaly():  # the forward check does not need a graph
        with pytest.raises(FloatingPointError, match="'log'"):
            x.log()


def test_a_model_step_and_generation_raise_nothing():
    # the manual attention fills the future with -inf (masked_fill): by design, not an anomaly
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.1), seed=0)
    idx = np.random.default_rng(0).integers(0, 20, (2, 8))
    with tg.detect_anomaly():
        for fused in (True, False):
            model.transformer.h[0].attn.fused = fused
            _, loss = model(idx, idx)
            loss.backward()
        assert model.generate(idx[:, :2], 8, temperature=0.8, seed=0).shape == (2, 10)
