"""LoRA: a wrapped model equals the base model at init, merged equals unmerged, the layer passes the
gradient check, only the LoRA matrices train, names map to the base model's, and the rank-8
classifier setting of examples/finetune_classifier.py stays under 2% of the parameters."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck import arrays, check_grad
from tinygpt import Tensor
from tinygpt.finetune import GPTClassifier, count_params, set_trainable
from tinygpt.lora import (DEFAULT_TARGETS, LORA_PATTERNS, LoRALinear, apply_lora, block_targets, lora_layers,
                          merge_lora, merged_state_dict, unmerge_lora)
from tinygpt.model import GPT, GPTConfig
from tinygpt.nn import Linear
from tinygpt.optim import AdamW
from tinygpt.train import train_step

SMALL = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)


def idx_batch(seed=0, B=2, T=10, V=40):
    return np.random.default_rng(seed).integers(0, V, size=(B, T))


def randomize_B(model, seed=1):
    """B != 0, so that the LoRA branch changes the output (at init it adds exactly zero)."""
    rng = np.random.default_rng(seed)
    for m in lora_layers(model):
        m.lora_B.data[...] = 0.1 * rng.standard_normal(m.lora_B.shape)


def test_wrapped_model_equals_base_at_init_and_names_map():
    model = GPT(SMALL, seed=0, dtype=np.float64)
    base_sd = {k: v.copy() for k, v in model.state_dict().items()}
    before = model(idx_batch())[0].data
    wrapped = apply_lora(model, rank=4, alpha=8, seed=0)
    assert len(wrapped) == 4 * SMALL.n_layer
    assert np.array_equal(model(idx_batch())[0].data, before)  # B = 0: exactly the same logits
    # the base names are all still there, with the same values; LoRA only adds lora_A / lora_B
    sd = model.state_dict()
    assert all(np.array_equal(sd[k], v) for k, v in base_sd.items())
    assert sorted(set(sd) - set(base_sd)) == sorted(f"{n}.{ab}" for n in wrapped for ab in ("lora_A", "lora_B"))
    missing, unexpected = model.load_state_dict(base_sd, strict=False)
    assert not unexpected and all(k.endswith(("lora_A", "lora_B")) for k in missing)


def test_merge_equals_unmerged_and_unmerge_restores():
    model = GPT(SMALL, seed=0, dtype=np.float64)
    apply_lora(model, rank=4, alpha=8, seed=0)
    randomize_B(model)
    w0 = model.transformer.h[0].attn.c_attn.weight.data.copy()
    unmerged = model(idx_batch())[0].data
    merge_lora(model)
    assert all(m.merged for m in lora_layers(model))
    np.testing.assert_allclose(model(idx_batch())[0].data, unmerged, rtol=1e-10, atol=1e-12)
    merge_lora(model)  # a second merge is a no-op, not a double update
    np.testing.assert_allclose(model(idx_batch())[0].data, unmerged, rtol=1e-10, atol=1e-12)
    # the merged weights are what a plain model loads
    plain = GPT(SMALL, dtype=np.float64)
    plain.load_state_dict(merged_state_dict(model))
    np.testing.assert_allclose(plain(idx_batch())[0].data, unmerged, rtol=1e-10, atol=1e-12)
    unmerge_lora(model)
    np.testing.assert_allclose(model.transformer.h[0].attn.c_attn.weight.data, w0, rtol=0, atol=1e-14)
    np.testing.assert_allclose(model(idx_batch())[0].data, unmerged, rtol=1e-10, atol=1e-12)
    plain.load_state_dict(merged_state_dict(model))  # unmerged: merged_state_dict folds it in itself
    np.testing.assert_allclose(plain(idx_batch())[0].data, unmerged, rtol=1e-10, atol=1e-12)


@settings(max_examples=30)
@given(st.data())
def test_lora_linear_gradcheck(data):
    n_in, n_out = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    rank = data.draw(st.integers(1, min(n_in, n_out)))
    lead = data.draw(st.sampled_from([(3,), (2, 3)]))
    bias = data.draw(st.booleans())
    layer = LoRALinear(Linear(n_in, n_out, bias=bias, dtype=np.float64, rng=0), rank, alpha=2.0, rng=1)
    x = data.draw(arrays(lead + (n_in,)))
    A = data.draw(arrays((n_in, rank)))
    B = data.draw(arrays((rank, n_out)))

    def f(x, A, B):
        layer.lora_A, layer.lora_B = A, B
        return layer(x)
    check_grad(f, x, A, B)


def test_lora_linear_forward_is_the_formula():
    layer = LoRALinear(Linear(6, 5, dtype=np.float64, rng=0), rank=2, alpha=3.0, rng=1)
    layer.bias.data[...] = np.arange(5)
    layer.lora_B.data[...] = np.random.default_rng(2).standard_normal((2, 5))
    x = np.random.default_rng(3).standard_normal((4, 6))
    want = x @ layer.weight.data + layer.bias.data + 1.5 * (x @ layer.lora_A.data) @ layer.lora_B.data
    np.testing.assert_allclose(layer(Tensor(x)).data, want, rtol=1e-12)
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_only_lora_and_head_train_and_frozen_stay_bit_identical():
    model = GPTClassifier(SMALL, num_classes=3, seed=0)
    apply_lora(model, rank=2, alpha=4, seed=0)
    names = set_trainable(model, LORA_PATTERNS + ("out_head.*",))
    assert all(n.endswith(("lora_A", "lora_B")) or n.startswith("out_head.") for n in names)
    frozen = {n: p.data.copy() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.data.copy() for n, p in model.named_parameters() if p.requires_grad}
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    rng = np.random.default_rng(0)
    for _ in range(3):
        train_step(model, opt, [{"idx": idx_batch(int(rng.integers(100)), B=4), "targets": rng.integers(0, 3, 4),
                                 "lengths": rng.integers(1, 11, 4)}], grad_clip=1.0)
    params = dict(model.named_parameters())
    for n, before in frozen.items():
        assert np.array_equal(params[n].data, before), n
        assert params[n].grad is None, n
    assert all(not np.array_equal(params[n].data, before) for n, before in trained.items())


def test_classifier_lora_setting_is_under_two_percent():
    """examples/finetune_classifier.py --lora-rank 8 on the default 4-layer, 128-channel model."""
    config = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False)
    model = GPTClassifier(config, num_classes=2, seed=0)
    base_total = count_params(model)[1]
    apply_lora(model, 8, 16, ["transformer.h.3.attn.c_attn", "transformer.h.3.mlp.c_fc", "transformer.h.3.mlp.c_proj"])
    set_trainable(model, LORA_PATTERNS + ("out_head.*",))
    trainable, _ = count_params(model)
    assert trainable == 8 * (128 + 384) + 2 * 8 * (128 + 512) + 128 * 2 + 2
    assert trainable / base_total < 0.02


def test_apply_lora_errors_name_the_problem():
    model = GPT(SMALL, seed=0)
    with pytest.raises(ValueError, match="matches"):
        apply_lora(model, 2, 4, targets=["*.nothing"])
    with pytest.raises(ValueError, match="rank"):
        apply_lora(model, 17, 4)
    with pytest.raises(TypeError, match="Linear"):
        LoRALinear(model.transformer.ln_f, 2, 4)
    assert DEFAULT_TARGETS == ("*.attn.c_attn", "*.attn.c_proj", "*.mlp.c_fc", "*.mlp.c_proj")


def test_block_targets_name_the_last_blocks_and_refuse_too_many():
    assert block_targets(4, 2, ["attn.c_attn", " mlp.c_fc"]) == [
        "transformer.h.2.attn.c_attn", "transformer.h.2.mlp.c_fc", "transformer.h.3.attn.c_attn", "transformer.h.3.mlp.c_fc"]
    assert block_targets(4, 0, ["*"]) == []
    with pytest.raises(ValueError, match=r"must be in \[0, 4\] for a 4-block model, got 99"):
        block_targets(4, 99, ["*"])
