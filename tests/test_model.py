"""GPT: configuration checks, init, bad input, the manual attention against the fused one, the KV
cache against a cache-free loop, sampling, learning, and equality with Hugging Face's
GPT2LMHeadModel (loading and saving through tinygpt.hf, logits, loss and every gradient)."""
import json
import os

import numpy as np
import pytest

from tinygpt import hf, no_grad
from tinygpt.model import GPT, GPTConfig
from tinygpt.sampling import sample_next

SMALL = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)


def rel_err(a, b):
    """Norm-relative error ||a - b|| / ||b||: robust to float32 summation-order noise in entries
    that are themselves tiny, which an elementwise rtol would flag."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def jittered(config, seed=0, dtype=np.float64, scale=0.3):
    """A model whose weights (biases and LayerNorms too) are far from their init, so that every
    parameter matters and greedy decoding does not just repeat one token."""
    model = GPT(config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    for p in model.parameters():
        p.data += scale * rng.standard_normal(p.shape).astype(p.dtype)
    return model


# ---- configuration and init -------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, needle", [
    (dict(n_embd=30, n_head=4), "30"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(block_size=-1), "-1"),
    (dict(n_layer=1.5), "1.5"),
    (dict(dropout=1.0), "1.0"),
    (dict(dropout=-0.1), "-0.1"),
])
def test_config_validation(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        GPTConfig(**{**SMALL, **kwargs})


@pytest.mark.parametrize("kwargs, needle", [
    (dict(bias="no"), "bias must be True or False, got 'no'"),  # "no" is truthy: it built biases
    (dict(bias=1), "got 1"),
    (dict(dropout="0.1"), "dropout must be a real number, got '0.1'"),
    (dict(dropout=True), "got True"),
])
def test_config_fields_of_the_wrong_type(kwargs, needle):
    with pytest.raises(TypeError, match=needle):
        GPTConfig(**{**SMALL, **kwargs})


def test_config_defaults_are_gpt2_small():
    c = GPTConfig()
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd, c.dropout, c.bias) == \
        (50257, 1024, 12, 12, 768, 0.0, True)


def test_init_follows_gpt2_and_seed_reproduces():
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=4, n_head=4, n_embd=64)
    model = GPT(config, seed=0)
    params = dict(model.named_parameters())
    assert all(p.dtype == np.float32 for p in params.values())
    for name, p in params.items():
        if name.endswith("c_proj.weight"):
            assert abs(p.data.std() / (0.02 / np.sqrt(2 * config.n_layer)) - 1) < 0.05, name
        elif name.endswith("weight") and ".ln_" not in name and "ln_f" not in name:
            assert abs(p.data.std() / 0.02 - 1) < 0.05, name
        elif "ln_" in name and name.endswith("weight"):
            assert np.all(p.data == 1), name
        else:
            assert np.all(p.data == 0), name  # every bias
    same = GPT(config, seed=0)
    assert all(np.array_equal(a, same.state_dict()[k]) for k, a in model.state_dict().items())
    assert not np.array_equal(GPT(config, seed=1).transformer.wte.weight.data, model.transformer.wte.weight.data)


def test_initial_loss_is_about_ln_vocab_size():
    config = GPTConfig(**SMALL)
    rng = np.random.default_rng(0)
    _, loss = GPT(config, seed=0)(rng.integers(0, 50, (4, 16)), rng.integers(0, 50, (4, 16)))
    assert abs(loss.item() - np.log(50)) < 0.15


def test_num_params_and_crop_block_size():
    model = jittered(GPTConfig(**SMALL))
    C, V, L = 32, 50, 2
    per_block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    assert model.num_params(non_embedding=False) == V * C + 16 * C + L * per_block + 2 * C
    assert model.num_params() == model.num_params(non_embedding=False) - 16 * C
    idx = np.random.default_rng(0).integers(0, 50, (2, 8))
    before, _ = model(idx)
    model.crop_block_size(8)
    assert model.config.block_size == 8 and model.transformer.wpe.weight.shape == (8, C)
    after, _ = model(idx)
    np.testing.assert_array_equal(after.data, before.data)
    with pytest.raises(ValueError, match="9"):
        model(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="16"):
        model.crop_block_size(16)


# ---- forward -----------------------------------------------------------------------------------------------
def test_forward_shapes_loss_and_ignore_index():
    model = GPT(GPTConfig(**SMALL), seed=0)
    idx = np.random.default_rng(0).integers(0, 50, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 50) and loss is None and logits.dtype == np.float32
    targets = np.full((3, 10), -100)
    targets[1, 4] = 7
    _, loss = model(idx, targets)
    log_probs = logits.data[1, 4] - np.log(np.exp(logits.data[1, 4].astype(np.float64)).sum())
    assert loss.dtype == np.float32 and abs(loss.item() + log_probs[7]) < 1e-5  # the one counted position


@pytest.mark.parametrize("idx, needle", [
    (np.array([[1, 50]]), r"50 is out of range \[0, 50\)"),
    (np.array([[-1, 3]]), r"-1 is out of range \[0, 50\)"),
    (np.zeros((1, 17), dtype=np.int64), "17.*16"),
    (np.zeros((1, 3), dtype=np.float32), "integers.*float32"),
    (np.zeros(3, dtype=np.int64), r"\(3,\)"),
    (np.zeros((1, 1, 3), dtype=np.int64), r"\(1, 1, 3\)"),
])
def test_forward_rejects_bad_ids(idx, needle):
    with pytest.raises(ValueError, match=needle):
        GPT(GPTConfig(**SMALL), seed=0)(idx)


def test_forward_rejects_bad_targets():
    model = GPT(GPTConfig(**SMALL), seed=0)
    idx = np.zeros((2, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        model(idx, np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="50"):
        model(idx, np.full((2, 4), 50))


def test_dropout_follows_seed_and_mode():
    config = GPTConfig(**SMALL, dropout=0.2)
    idx = np.random.default_rng(0).integers(0, 50, (2, 16))
    a, b = GPT(config, seed=3), GPT(config, seed=3)
    assert a(idx, idx)[1].item() == b(idx, idx)[1].item()  # same init, same masks
    train_loss = a(idx, idx)[1].item()
    a.eval()
    assert a(idx, idx)[1].item() == a(idx, idx)[1].item() != train_loss


def test_gradient_matches_finite_difference_float64():
    """<u, dL/dθ> against (L(θ + εu) - L(θ - εu)) / 2ε along one random direction u over all
    parameters at once (truncation O(ε²) ~ 1e-12, so rtol 1e-6 is tight)."""
    model = jittered(GPTConfig(**SMALL), scale=0.1)
    rng = np.random.default_rng(1)
    idx, targets = rng.integers(0, 50, (2, 12)), rng.integers(0, 50, (2, 12))
    model(idx, targets)[1].backward()
    us = [rng.standard_normal(p.shape) for p in model.parameters()]
    analytic = sum(float((p.grad * u).sum()) for p, u in zip(model.parameters(), us))

    def loss_at(eps):
        for p, u in zip(model.parameters(), us):
            p.data += eps * u
        with no_grad():
            value = model(idx, targets)[1].item()
        for p, u in zip(model.parameters(), us):
            p.data -= eps * u
        return value
    numeric = (loss_at(1e-6) - loss_at(-1e-6)) / 2e-6
    assert abs(numeric - analytic) <= 1e-6 * abs(analytic) + 1e-8


# ---- KV cache and generation ------------------------------------------------------------------------------
CACHE = GPTConfig(vocab_size=30, block_size=8, n_layer=2, n_head=2, n_embd=16)


def set_fused(model, fused):
    for block in model.transformer.h:
        block.attn.fused = fused


@pytest.mark.parametrize("chunks", [[8], [5, 2, 1]], ids=["full", "kv_cache"])
def test_manual_attention_equals_fused(chunks):
    """The manual implementation of attention (Tensor ops, a masked (T, T) matrix per head)
    against the fused kernels, float64: logits, loss and every parameter gradient, for one full
    forward and for chunks run through the KV cache (T_past > 0 with T > 1 checks that the mask
    is aligned bottom-right)."""
    model = jittered(CACHE)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 30, (2, 8)), rng.integers(0, 30, (2, 8))
    results = {}
    for fused in (True, False):
        set_fused(model, fused)
        model.zero_grad()
        cache = model.new_kv_cache(2) if len(chunks) > 1 else None
        logits, start = [], 0
        for n in chunks:  # the cache stores plain arrays: each chunk's loss has its own graph
            out, loss = model(idx[:, start:start + n], targets[:, start:start + n], kv_cache=cache)
            loss.backward()
            logits.append(out.data)
            start += n
        results[fused] = np.concatenate(logits, axis=1), {k: p.grad for k, p in model.named_parameters()}
    (fused_logits, fused_grads), (manual_logits, manual_grads) = results[True], results[False]
    np.testing.assert_allclose(manual_logits, fused_logits, rtol=1e-10, atol=1e-12)
    for name, g in fused_grads.items():
        np.testing.assert_allclose(manual_grads[name], g, rtol=1e-9, atol=1e-12, err_msg=name)


def test_cached_steps_equal_full_forward():
    model = jittered(CACHE)
    idx = np.random.default_rng(0).integers(0, 30, (2, 8))
    full, _ = model(idx)
    cache = model.new_kv_cache(2)
    with no_grad():
        logits = [model(idx[:, :5], kv_cache=cache)[0].data]
        logits += [model(idx[:, t:t + 1], kv_cache=cache)[0].data for t in range(5, 8)]
    np.testing.assert_allclose(np.concatenate(logits, axis=1), full.data, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="longer than the 0 positions left"):
        model(idx[:, :1], kv_cache=cache)


def reference_generate(model, idx, n, temperature=0.0, top_k=None, top_p=None, seed=None):
    """Generation without a cache: a full forward over the cropped context for every token."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        with no_grad():
            logits, _ = model(idx[:, -model.config.block_size:])
        idx = np.concatenate([idx, sample_next(logits.data[:, -1], temperature, top_k, top_p, rng)[:, None]], 1)
    return idx


@pytest.mark.parametrize("prompt_len", [1, 3, 11])  # 11 > block_size: the prompt is cropped
def test_greedy_with_cache_equals_without_past_block_size(prompt_len):
    model = jittered(CACHE, seed=2, scale=0.6)  # seed and scale picked so greedy does not fall into a short loop
    idx = np.random.default_rng(prompt_len).integers(0, 30, (2, prompt_len))
    out = model.generate(idx, 20, temperature=0)
    assert out.shape == (2, prompt_len + 20)
    np.testing.assert_array_equal(out, reference_generate(model, idx, 20))
    assert len(np.unique(out[:, prompt_len:])) > 3  # not one token repeated: the check has teeth


def test_sampling_with_cache_equals_without_and_is_seeded():
    model = jittered(CACHE, dtype=np.float32)
    idx = np.random.default_rng(0).integers(0, 30, (3, 4))
    kw = dict(temperature=0.8, top_k=10, top_p=0.9, seed=123)
    out = model.generate(idx, 15, **kw)
    np.testing.assert_array_equal(out, reference_generate(model, idx, 15, **kw))
    np.testing.assert_array_equal(out, model.generate(idx, 15, **kw))
    assert not np.array_equal(out, model.generate(idx, 15, **{**kw, "seed": 124}))


def test_generate_stream_yields_tokens_in_eval_without_graph():
    model = jittered(CACHE, dtype=np.float32)
    model.train()
    model.transformer.h[0].eval()  # mixed modes are restored as they were
    idx = np.array([[1, 2, 3]])
    stream = model.generate_stream(idx, 5, temperature=0)
    steps = list(stream)
    assert len(steps) == 5 and all(s.shape == (1,) and s.dtype == np.int64 for s in steps)
    np.testing.assert_array_equal(np.stack(steps, 1), model.generate(idx, 5, temperature=0)[:, 3:])
    assert model.training and not model.transformer.h[0].training and model.transformer.h[1].training
    assert all(p.grad is None for p in model.parameters())
    np.testing.assert_array_equal(model.generate(idx, 0), idx)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(max_new_tokens=-1), "-1"), (dict(temperature=-0.5), "-0.5"), (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "1.5"),
])
def test_generate_rejects_bad_arguments_at_call_time(kwargs, needle):
    model = GPT(CACHE, seed=0)
    args = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=needle):
        model.generate_stream(np.array([[1]]), **args)  # no next() needed
    with pytest.raises(ValueError, match=r"30 is out of range"):
        model.generate(np.array([[30]]), 2)


def test_sample_next_filters():
    logits = np.log(np.array([[0.05, 0.5, 0.15, 0.3]] * 20000))
    rng = np.random.default_rng(0)
    assert np.all(sample_next(logits, 0.0) == 1)
    assert np.all(sample_next(logits, 1.0, top_k=1, rng=rng) == 1)
    assert np.all(sample_next(logits, 1.0, top_p=0.3, rng=rng) == 1)
    freq = np.bincount(sample_next(logits, 1.0, rng=rng), minlength=4) / 20000
    np.testing.assert_allclose(freq, [0.05, 0.5, 0.15, 0.3], atol=0.015)
    freq = np.bincount(sample_next(logits, 1.0, top_k=2, rng=rng), minlength=4) / 20000
    np.testing.assert_allclose(freq, [0, 0.5 / 0.8, 0, 0.3 / 0.8], atol=0.015)
    freq = np.bincount(sample_next(logits, 1.0, top_p=0.7, rng=rng), minlength=4) / 20000  # 0.5 + 0.3 >= 0.7
    np.testing.assert_allclose(freq, [0, 0.5 / 0.8, 0, 0.3 / 0.8], atol=0.015)
    cold = np.bincount(sample_next(logits, 0.25, rng=rng), minlength=4) / 20000  # p^4, renormalised
    np.testing.assert_allclose(cold, np.array([0.05, 0.5, 0.15, 0.3]) ** 4 / (np.array([0.05, 0.5, 0.15, 0.3]) ** 4).sum(), atol=0.015)


@pytest.mark.parametrize("bad, needle", [([0, np.nan, 0, 1], "row 1 holds NaN"),
                                         ([-np.inf] * 4, "row 1 is -inf everywhere")])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sample_next_refuses_a_row_that_names_no_token(bad, needle, temperature):
    # it used to return token 0 for these, as if the model had picked it
    with pytest.raises(ValueError, match=needle):
        sample_next(np.array([[0.0, 1, 2, 3], bad]), temperature, rng=0)


def test_sample_next_refuses_1d_logits_and_survives_any_temperature():
    with pytest.raises(ValueError, match=r"logits must be \(B, V\).*\(4,\)"):
        sample_next(np.zeros(4), 1.0)
    with pytest.raises(ValueError, match=r"\(2, 0\)"):
        sample_next(np.zeros((2, 0)), 0.0)
    # logits / temperature would overflow to [-inf, inf] (and softmax to NaN): shifted by the max first
    huge = np.array([[-3e38, 3e38]], np.float32)
    assert sample_next(huge, 0.01, rng=0).tolist() == [1]


def test_sample_next_with_inf_logits_follows_torch():
    torch = pytest.importorskip("torch")
    inf = np.array([[0, np.inf, 0, 1], [np.inf, 1, np.inf, 0]], np.float32)
    # greedy: torch.argmax takes the +inf (the first, when tied), and so do we
    assert sample_next(inf, 0.0).tolist() == torch.argmax(torch.from_numpy(inf), dim=-1).tolist() == [1, 0]
    # sampling: softmax is NaN there, which torch.multinomial refuses, and so do we
    with pytest.raises(RuntimeError):
        torch.multinomial(torch.softmax(torch.from_numpy(inf), dim=-1), 1)
    with pytest.raises(ValueError, match=r"row 0 holds \+inf"):
        sample_next(inf, 1.0, rng=0)
    # a -inf logit is a token of probability 0 (torch's softmax gives it 0): never sampled
    masked = np.array([[-np.inf, 0.0, -np.inf, 1.0]] * 4000)
    want = torch.softmax(torch.from_numpy(masked[0]), dim=-1).numpy()
    freq = np.bincount(sample_next(masked, 1.0, rng=0), minlength=4) / 4000
    assert freq[0] == freq[2] == 0
    np.testing.assert_allclose(freq, want, atol=0.03)


# ---- learning ----------------------------------------------------------------------------------------------
def test_overfits_one_batch():
    """Adam (written out here so the test does not depend on optim.py) drives the loss on one
    fixed batch below 0.1."""
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32), seed=0)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 32, (4, 16)), rng.integers(0, 32, (4, 16))
    params = model.parameters()
    m = [np.zeros_like(p.data) for p in params]
    v = [np.zeros_like(p.data) for p in params]
    lr, b1, b2 = 1e-2, 0.9, 0.99
    losses = []
    for step in range(1, 301):
        model.zero_grad()
        _, loss = model(idx, targets)
        losses.append(loss.item())
        if losses[-1] < 0.1:
            break
        loss.backward()
        for p, mi, vi in zip(params, m, v):
            mi[...] = b1 * mi + (1 - b1) * p.grad
            vi[...] = b2 * vi + (1 - b2) * p.grad ** 2
            p.data -= lr * (mi / (1 - b1 ** step)) / (np.sqrt(vi / (1 - b2 ** step)) + 1e-8)
    assert abs(losses[0] - np.log(32)) < 0.15
    assert losses[-1] < 0.1, f"loss after {len(losses)} steps: {losses[-1]:.3f}"


# ---- Hugging Face GPT-2 -----------------------------------------------------------------------------------
def _hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return torch, transformers


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A small random GPT2LMHeadModel with every parameter (biases, LayerNorms) jittered away
    from its init, saved as safetensors."""
    torch, transformers = _hf()
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=16, vocab_size=50,
                                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(path, safe_serialization=True)
    return path, model


def test_logits_loss_and_every_gradient_match_hugging_face(hf_checkpoint):
    """float32 on both sides; tolerance: norm-relative error <= 1e-4 per tensor (see rel_err)."""
    torch, _ = _hf()
    path, theirs = hf_checkpoint
    ours = GPT.from_pretrained(path)
    assert ours.transformer.wte.weight.dtype == np.float32
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 50, (3, 16)), rng.integers(0, 50, (3, 16))
    targets[0, :5] = -100
    logits, loss = ours(idx, targets)
    loss.backward()
    theirs.zero_grad()
    t_logits = theirs(torch.tensor(idx)).logits
    t_loss = torch.nn.functional.cross_entropy(t_logits.reshape(-1, 50), torch.tensor(targets).reshape(-1),
                                               ignore_index=-100)
    t_loss.backward()
    assert rel_err(logits.data, t_logits.detach().numpy()) < 1e-4
    assert rel_err(loss.data, t_loss.detach().numpy()) < 1e-4
    t_grads = {n: p.grad.numpy() for n, p in theirs.named_parameters()}  # tied lm_head listed once, as wte
    our_params = dict(ours.named_parameters())
    assert set(t_grads) == set(our_params)
    for name, g in t_grads.items():
        assert rel_err(our_params[name].grad, g) < 1e-4, name


def test_save_pretrained_loads_in_transformers(tmp_path):
    torch, transformers = _hf()
    for bias in (True, False):  # bias=False is written as zero biases, which GPT-2 always has
        ours = jittered(GPTConfig(**SMALL, bias=bias), dtype=np.float32, scale=0.1)
        path = tmp_path / f"bias{bias}"
        ours.save_pretrained(path)
        assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]  # no temp files left
        theirs = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
        idx = np.random.default_rng(0).integers(0, 50, (2, 16))
        with torch.no_grad():
            t_logits = theirs(torch.tensor(idx)).logits.numpy()
        assert rel_err(ours(idx)[0].data, t_logits) < 1e-4
        back = hf.from_pretrained(path)  # what GPT.from_pretrained calls
        sd = back.state_dict()
        assert all(np.array_equal(v, sd[k]) for k, v in ours.state_dict().items())


def test_from_pretrained_gpt2model_keys_without_prefix(hf_checkpoint, tmp_path):
    _, theirs = hf_checkpoint
    theirs.transformer.save_pretrained(tmp_path, safe_serialization=True)  # a GPT2Model: no "transformer."
    ours = GPT.from_pretrained(tmp_path)
    np.testing.assert_array_equal(ours.transformer.wte.weight.data, theirs.transformer.wte.weight.detach().numpy())


def test_from_pretrained_errors_name_the_file_and_key(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model = GPT(GPTConfig(**SMALL), seed=0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = st.load_file(weights)
    tensors["transformer.h.1.mlp.c_fc.bias"] = np.zeros(3, dtype=np.float32)
    del tensors["transformer.ln_f.bias"]
    st.save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"model.safetensors does not hold the weights .*config.json describes: "
                                         r"1 missing \['transformer.ln_f.bias'\], 0 unknown"):
        GPT.from_pretrained(tmp_path)
    tensors["transformer.ln_f.bias"] = np.zeros(32, dtype=np.float32)
    st.save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"model.safetensors: transformer.h.1.mlp.c_fc.bias has shape \(3,\), "
                                         r"but .*config.json says \(128,\)"):
        GPT.from_pretrained(tmp_path)
    tensors["transformer.h.1.mlp.c_fc.bias"] = np.zeros(128, dtype=np.float32)
    st.save_file(dict(tensors, **{"transformer.h.1.mlp.extra": np.zeros(3, dtype=np.float32)}), weights)
    with pytest.raises(ValueError, match=r"0 missing \[\], 1 unknown \['transformer.h.1.mlp.extra'\]"):
        GPT.from_pretrained(tmp_path)
    tensors = dict(model.state_dict(), **{"lm_head.weight": np.zeros((50, 32), dtype=np.float32)})
    st.save_file(tensors, weights)
    with pytest.raises(ValueError, match="lm_head.weight"):
        GPT.from_pretrained(tmp_path)
    os.remove(weights)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        GPT.from_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    st.save_file(dict(model.state_dict()), weights)
    with pytest.raises(ValueError, match="activation_function='relu'"):
        GPT.from_pretrained(tmp_path)


def _lie(path, name, change):
    """Rewrite the file `name` in a checkpoint folder: change(bytes) -> bytes."""
    (path / name).write_bytes(change((path / name).read_bytes()))


def _with_header(data, edit):
    """A safetensors file's bytes with its JSON header edited (edit(dict) -> dict), data unchanged."""
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(edit(json.loads(data[8:8 + n]))).encode()
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


def _retype(header, key, dtype):
    header[key]["dtype"] = dtype
    return header


@pytest.mark.parametrize("name, change, needle", [
    ("model.safetensors", lambda b: b[:8] + b"{garbage" + b[16:], "invalid JSON in header"),
    ("model.safetensors", lambda b: b[:-100], "not fully covered"),                # truncated
    ("model.safetensors", lambda b: b"", "model.safetensors"),
    ("model.safetensors", lambda b: (10**15).to_bytes(8, "little") + b[8:], "header too large"),
    # the header says int32 for float32 bytes: the right size, the wrong kind of number
    ("model.safetensors", lambda b: _with_header(b, lambda h: _retype(h, "transformer.ln_f.bias", "I32")),
     "transformer.ln_f.bias is I32, but weights must be one of"),
    ("model.safetensors", lambda b: _with_header(b, lambda h: _retype(h, "transformer.ln_f.bias", "F64")),
     "invalid shape, data type, or offset"),                                      # 8 bytes each: too few
    ("config.json", lambda b: b"{not json", "config.json is not a GPT-2 config"),
    ("config.json", lambda b: b"\xff\xfe", "config.json is not a GPT-2 config"),   # not UTF-8
    ("config.json", lambda b: b"[" * 100_000 + b"]" * 100_000, "config.json is not a GPT-2 config: it is nested too"),
    ("config.json", lambda b: b'"vocab_size n_positions n_layer n_head n_embd"', "holds a str, not an object"),
    ("config.json", lambda b: json.dumps({**json.loads(b), "n_embd": "32"}).encode(), "config.json: GPTConfig.n_embd"),
    # a config that claims a model far bigger than its weights: refused before the model is built
    ("config.json", lambda b: json.dumps({**json.loads(b), "n_embd": 10**7, "n_head": 1}).encode(),
     r"config.json: GPTConfig\(.*n_embd=10000000.*\), with .* parameters, needs about .* GB to hold its weights"),
    # one that fits in memory, but not in the file: refused before the model is built
    ("config.json", lambda b: json.dumps({**json.loads(b), "vocab_size": 10**5}).encode(),
     r"transformer.wte.weight has shape \(50, 32\), but .*config.json says \(100000, 32\)"),
    # a config of 10^9 tokens that names a weight the file lacks: no 10^9-row table is allocated
    ("config.json", lambda b: json.dumps({**json.loads(b), "vocab_size": 10**9, "n_embd": 2, "n_head": 1}).encode(),
     r"needs about 16.0 GB to hold its weights|has shape \(\d+,( \d+)?\), but .*config.json says"),
])
def test_from_pretrained_refuses_a_lying_file_naming_it(tmp_path, name, change, needle):
    pytest.importorskip("safetensors")
    GPT(GPTConfig(**SMALL), seed=0).save_pretrained(tmp_path)
    _lie(tmp_path, name, change)
    with pytest.raises(ValueError, match=needle) as e:
        GPT.from_pretrained(tmp_path)
    assert str(tmp_path / name) in str(e.value)
