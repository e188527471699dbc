"""Generation: cached decoding against the cache-free model (tokens and logits), no graph and one
KV cache per generate, greedy tokens equal to Hugging Face's, int8 and bf16 quantization (the round
trips, the kernel path, closeness of greedy decoding to float32, training refused), and the few-row
products (kernels.gemv) going where `linear` sends them. Runs under TINYGPT_KERNELS=numpy too."""
import numpy as np
import pytest

from tinygpt import functional as F, is_grad_enabled, kernels, no_grad
from tinygpt.kernels.reference import bf16_to_float32
from tinygpt.model import GPT, GPTConfig
from tinygpt.quantize import QuantizedEmbedding, quantize_bf16, quantize_int8
from tinygpt.nn import evaluating
from tinygpt.tensor import Tensor

SMALL = dict(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=64)


def jittered(config, seed=0, scale=0.3):
    """float32 weights far from their init, so that greedy decoding does not repeat one token."""
    model = GPT(config, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for p in model.parameters():
        p.data += (scale * rng.standard_normal(p.shape)).astype(p.dtype)
    return model


def uncached_greedy(model, idx, n):
    """Greedy decoding the slow way: the whole sequence through forward every step."""
    idx, logits = np.asarray(idx), []
    with evaluating(model):
        for _ in range(n):
            last = model(idx[:, -model.config.block_size:])[0].data[:, -1]  # (B, V)
            logits.append(last)
            idx = np.concatenate([idx, last.argmax(-1)[:, None]], axis=1)
    return idx, np.stack(logits, axis=1)


def test_cached_decoding_equals_uncached_tokens_and_logits():
    model = jittered(GPTConfig(**SMALL))
    prompt = np.random.default_rng(0).integers(0, SMALL["vocab_size"], (2, 5))
    expected, expected_logits = uncached_greedy(model, prompt, 12)
    assert np.array_equal(model.generate(prompt, 12, temperature=0), expected)
    cache, logits, tokens = model.new_kv_cache(2), [], prompt
    for _ in range(12):  # the same steps as _stream: the prompt, then one position a step
        step = model._next_logits(tokens if not logits else tokens[:, -1:], cache)
        logits.append(step)
        tokens = np.concatenate([tokens, step.argmax(-1)[:, None]], axis=1)
    np.testing.assert_allclose(np.stack(logits, axis=1), expected_logits, rtol=1e-4, atol=1e-4)


def test_cached_decoding_past_block_size_slides_the_window():
    model = jittered(GPTConfig(**dict(SMALL, block_size=8)))
    prompt = np.random.default_rng(1).integers(0, SMALL["vocab_size"], (1, 6))
    expected, _ = uncached_greedy(model, prompt, 10)
    assert np.array_equal(model.generate(prompt, 10, temperature=0), expected)


def test_generation_builds_no_graph_and_one_kv_cache(monkeypatch):
    model = jittered(GPTConfig(**SMALL))
    made = []
    new_kv_cache = model.new_kv_cache
    monkeypatch.setattr(model, "new_kv_cache", lambda B: made.append(B) or new_kv_cache(B))
    seen = []
    monkeypatch.setattr(model, "_logits", lambda x, head=model._logits: seen.append(head(x)) or seen[-1])
    model.generate(np.zeros((1, 3), np.int64), 6, temperature=0)
    assert made == [1]  # allocated once, for the whole generate
    assert all(not t.requires_grad and t._prev == () for t in seen)  # no graph under no_grad


def test_generation_steps_run_in_eval_mode_and_leave_the_model_as_it_was_between_them():
    model = jittered(GPTConfig(**dict(SMALL, dropout=0.5)))  # training mode: dropout would change the tokens
    prompt = np.random.default_rng(2).integers(0, SMALL["vocab_size"], (1, 4))
    expected, _ = uncached_greedy(model, prompt, 5)
    model.transformer.h[0].mlp.dropout.training = False  # a mixed mode, to come back as it was
    modes = [m.training for _, m in model.named_modules()]
    stream, tokens = model.generate_stream(prompt, 5, temperature=0), []
    for token in stream:  # between steps: the user's modes, and the graph on
        tokens.append(token)
        assert [m.training for _, m in model.named_modules()] == modes and is_grad_enabled()
    assert np.array_equal(np.concatenate([prompt, np.stack(tokens, axis=1)], axis=1), expected)


def test_linear_in_inference_runs_gemv_on_few_rows(monkeypatch):
    calls = []
    gemv = kernels.gemv
    monkeypatch.setattr(kernels, "gemv", lambda *a, **k: calls.append(a[1].shape) or gemv(*a, **k))
    rng = np.random.default_rng(0)
    x, w, b = (Tensor(rng.standard_normal(s).astype(np.float32)) for s in ((2, 3, 16), (16, 24), (24,)))
    head = Tensor(rng.standard_normal((40, 16)).astype(np.float32))
    with no_grad():
        y = F.linear(x, w, b)
        logits = F.linear(x, head, transpose_weight=True)
    np.testing.assert_allclose(y.data, x.data @ w.data + b.data, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits.data, x.data @ head.data.T, rtol=1e-5, atol=1e-5)
    assert calls == [(16, 24), (40, 16)]  # the head read row by row, in its own (V, C) layout
    calls.clear()
    F.linear(x, w, b)  # with a graph: the matmul kernel, never gemv
    assert calls == []


def test_quantize_int8_round_trip_within_half_a_step():
    w = np.random.default_rng(0).standard_normal((48, 20)).astype(np.float32)
    w[:, 3] = 0  # an all-zero channel
    for axis in (0, 1):
        q, scale = quantize_int8(w, axis)
        assert q.dtype == np.int8 and scale.dtype == np.float32 and np.abs(q).max() <= 127
        s = scale[None, :] if axis == 0 else scale[:, None]
        assert np.all(np.abs(q * s - w) <= s / 2 * (1 + 1e-5))
        assert np.allclose(np.abs(w).max(axis=axis), scale * 127 * (np.abs(w).max(axis=axis) > 0))


def test_quantize_bf16_round_trip_within_half_a_step():
    rng = np.random.default_rng(1)
    w = (rng.standard_normal(10000) * 10.0 ** rng.integers(-20, 20, 10000)).astype(np.float32)  # many exponents
    q = quantize_bf16(w)
    assert q.dtype == np.uint16
    back = bf16_to_float32(q)
    # 8 significant bits: half a step is at most 2^-8 of |w|, rounding to nearest
    assert np.all(np.abs(back - w) <= np.abs(w) * 2.0**-8)
    assert np.array_equal(bf16_to_float32(quantize_bf16(back)), back)  # bfloat16 values are kept exactly
    # a tie goes to the even neighbour: 1 + 2^-8 is halfway between 1 and 1 + 2^-7
    assert bf16_to_float32(quantize_bf16(np.float32([1 + 2**-8, 1 + 3 * 2**-8]))).tolist() == [1.0, 1 + 2**-6]


@pytest.mark.parametrize("kind,dtype", [("int8", np.int8), ("bf16", np.uint16)])
def test_quantized_model_decodes_close_to_float32_and_refuses_training(kind, dtype):
    config = GPTConfig(**dict(SMALL, n_embd=128))
    model = jittered(config, scale=0.05)
    prompt = np.random.default_rng(2).integers(0, SMALL["vocab_size"], (1, 4))
    expected = model.generate(prompt, 24, temperature=0)  # float32's greedy sequence
    with evaluating(model):
        ref_logits = model(expected)[0].data
    model.quantize(kind)
    assert model.transformer.h[0].mlp.c_fc.weight.dtype == dtype
    assert isinstance(model.transformer.wte, QuantizedEmbedding)
    with evaluating(model):
        logits = model(expected)[0].data
    assert np.abs(logits - ref_logits).max() < 0.05 * np.abs(ref_logits).max()
    # greedy choices along float32's sequence (one diverging token would change all that follow)
    agreement = (logits.argmax(-1) == ref_logits.argmax(-1)).mean()
    assert agreement >= 0.9, agreement
    assert model.generate(prompt, 24, temperature=0).shape == expected.shape
    with pytest.raises(RuntimeError, match=f"{kind}, for inference only"):
        model(prompt, prompt)
    with pytest.raises(ValueError, match="int8"):
        model.quantize("int4")
    with pytest.raises(ValueError, match="already quantized"):
        model.quantize("bf16")


def test_greedy_tokens_equal_hugging_face(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=300,
                                                              n_positions=64)).eval()
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path)
    prompt = np.random.default_rng(3).integers(0, 300, (1, 7))
    with torch.no_grad():
        theirs = hf.generate(torch.from_numpy(prompt), max_new_tokens=20, min_new_tokens=20, do_sample=False,
                             use_cache=True, pad_token_id=0).numpy()
    assert np.array_equal(model.generate(prompt, 20, temperature=0), theirs)


def test_sampling_runs_and_is_reproducible():
    model = jittered(GPTConfig(**SMALL))
    prompt = np.zeros((2, 2), np.int64)
    a = model.generate(prompt, 8, temperature=0.9, top_k=20, top_p=0.9, seed=5)
    assert a.shape == (2, 10) and np.array_equal(a, model.generate(prompt, 8, temperature=0.9, top_k=20,
                                                                   top_p=0.9, seed=5))
    model.quantize("int8")
    assert model.generate(prompt, 8, temperature=0.9, seed=5).shape == (2, 10)
