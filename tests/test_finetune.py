"""Fine-tuning: freezing (no gradient, no update), the classification loss on the last real token,
masked targets, the collate function's worked example, the Alpaca prompt, the small helpers, and
both examples end to end for a few steps (subprocess smoke tests)."""
import dataclasses
import doctest
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA_DIR
from tinygpt import Tensor
from tinygpt import finetune
from tinygpt import functional as F
from tinygpt.checkpoint import read_checkpoint, save_checkpoint
from tinygpt.finetune import (GPTClassifier, collate, count_params, encode_known, ensure_eot, format_prompt,
                              pad_batch, set_trainable, split)
from tinygpt.model import GPT, GPTConfig
from tinygpt.optim import AdamW
from tinygpt.tokenizer import CharTokenizer
from tinygpt.train import train_step

SMALL = GPTConfig(vocab_size=40, block_size=16, n_layer=3, n_head=2, n_embd=16)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_data = pytest.mark.skipif(not DATA_DIR, reason="needs $TINYGPT_DATA_DIR")


def last_block_head_patterns(n_layer):
    return [f"transformer.h.{n_layer - 1}.*", "transformer.ln_f.*", "out_head.*"]


# ---- freezing ------------------------------------------------------------------------------------
def test_frozen_parameters_get_no_gradient_and_stay_bit_identical():
    model = GPTClassifier(SMALL, num_classes=2, seed=0)
    names = set_trainable(model, last_block_head_patterns(SMALL.n_layer))
    assert names and all(n.startswith(("transformer.h.2.", "transformer.ln_f.", "out_head.")) for n in names)
    frozen = {n: p.data.copy() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.data.copy() for n, p in model.named_parameters() if p.requires_grad}
    assert "transformer.wte.weight" in frozen and "transformer.h.0.attn.c_attn.weight" in frozen
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # decay would move a frozen matrix
    assert sum(len(g) for g in opt.groups) == count_params(model)[0]  # the optimizer holds only these
    rng = np.random.default_rng(0)
    for _ in range(3):
        train_step(model, opt, [{"idx": rng.integers(0, 40, (4, 12)), "targets": rng.integers(0, 2, 4),
                                 "lengths": rng.integers(1, 13, 4)}], grad_clip=1.0)
    params = dict(model.named_parameters())
    for n, before in frozen.items():
        assert np.array_equal(params[n].data, before), n
        assert params[n].grad is None, n  # no gradient was stored either
    assert all(not np.array_equal(params[n].data, before) for n, before in trainable.items())


def test_frozen_prefix_builds_no_graph():
    """Below the first trainable layer nothing requires a gradient, so no graph is recorded there."""
    model = GPTClassifier(SMALL, num_classes=2, seed=0)
    set_trainable(model, last_block_head_patterns(SMALL.n_layer))
    x = model.transformer.wte(np.zeros((1, 4), dtype=np.int64))
    assert not x.requires_grad and x._backward is None


def test_set_trainable_rejects_patterns_matching_nothing():
    with pytest.raises(ValueError, match="lm_hed"):
        set_trainable(GPT(SMALL, seed=0), ["lm_hed.*"])


# ---- classification ------------------------------------------------------------------------------
def test_classification_loss_is_on_the_last_real_token():
    model = GPTClassifier(SMALL, num_classes=3, seed=0, dtype=np.float64)
    rng = np.random.default_rng(1)
    model.out_head.bias.data[...] = rng.standard_normal(3)
    idx = rng.integers(0, 40, (4, 9))  # the tail of each row after `lengths` is junk padding
    lengths, targets = np.array([9, 3, 1, 6]), np.array([2, 0, 1, 2])
    logits, loss = model(idx, targets, lengths)
    # by hand: hidden states at position lengths-1, the head, log-softmax, mean of -log p(target)
    h = model._hidden(idx).data[np.arange(4), lengths - 1]                      # (4, C)
    z = h @ model.out_head.weight.data + model.out_head.bias.data                  # (4, 3)
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    np.testing.assert_allclose(logits.data, z, rtol=1e-12)
    np.testing.assert_allclose(loss.item(), -logp[np.arange(4), targets].mean(), rtol=1e-12)
    # padding is handled: each row alone, unpadded, gives the same logits
    for i in range(4):
        alone = model(idx[i:i + 1, :lengths[i]])[0].data[0]
        np.testing.assert_allclose(alone, logits.data[i], rtol=1e-10, atol=1e-12)


def test_auxiliary_lm_loss_is_the_base_gpts_loss_on_the_real_tokens():
    gpt = GPT(SMALL, seed=2, dtype=np.float64).eval()
    model = GPTClassifier.from_gpt(gpt, 2, seed=0).eval()
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 40, (3, 7))  # junk padding after `lengths`
    lengths, targets = np.array([7, 2, 5]), np.array([1, 0, 1])
    _, class_loss = model(idx, targets, lengths)
    _, loss = model(idx, targets, lengths, lm_weight=0.3)
    # the peer: the GPT's own next-token loss on each row without its padding, weighted by the
    # number of predicted tokens (length - 1) so that it is a mean over all of them
    total = sum(gpt(idx[i:i + 1, :n - 1], idx[i:i + 1, 1:n])[1].item() * (n - 1) for i, n in enumerate(lengths))
    np.testing.assert_allclose(loss.item() - class_loss.item(), 0.3 * total / (lengths - 1).sum(), rtol=1e-10)
    # and it has a gradient: the term's alone is the total's minus the class loss's
    loss.backward()
    total_grad = model.transformer.h[0].attn.c_attn.weight.grad.copy()
    model.zero_grad()
    class_loss.backward()
    assert np.abs(total_grad - model.transformer.h[0].attn.c_attn.weight.grad).max() > 1e-6
    # rows of one token predict nothing: the term is 0, not NaN; a negative weight is refused
    _, loss = model(idx[:, :1], targets, np.ones(3, dtype=np.int64), lm_weight=0.3)
    np.testing.assert_allclose(loss.item(), model(idx[:, :1], targets)[1].item(), rtol=1e-12)
    loss.backward()
    with pytest.raises(ValueError, match="lm_weight"):
        model(idx, targets, lengths, lm_weight=-1.0)


def test_classifier_from_gpt_copies_the_weights_and_checks_input():
    gpt = GPT(SMALL, seed=3)
    model = GPTClassifier.from_gpt(gpt, 2, seed=0)
    assert np.array_equal(model.transformer.h[1].mlp.c_fc.weight.data, gpt.transformer.h[1].mlp.c_fc.weight.data)
    assert model.out_head.weight.shape == (16, 2)
    with pytest.raises(ValueError, match="lengths"):
        model(np.zeros((2, 5), dtype=np.int64), lengths=[5, 6])
    with pytest.raises(ValueError, match="class ids"):
        model(np.zeros((2, 5), dtype=np.int64), targets=[0, 2])
    with pytest.raises(ValueError, match="num_classes"):
        GPTClassifier(SMALL, 1)


def test_pad_batch_example():
    idx, lengths = pad_batch([[5, 6, 7], [8]], pad_id=0, block_size=2)
    assert idx.tolist() == [[5, 6], [8, 0]] and lengths.tolist() == [2, 1]


# ---- instruction tuning --------------------------------------------------------------------------
def test_collate_docstring_example():
    tests = doctest.DocTestFinder().find(finetune.collate, "collate", globs={"collate": collate})
    runner = doctest.DocTestRunner()
    for t in tests:
        runner.run(t)
    assert runner.summarize(verbose=False) == doctest.TestResults(failed=0, attempted=4)
    # the same example, spelled out
    inputs, targets = collate([[1, 2, 3], [4, 5]], pad_id=9, prompt_lengths=[2, 0])
    assert inputs.tolist() == [[1, 2, 3], [4, 5, 9]]
    assert targets.tolist() == [[-100, 3, 9], [5, 9, -100]]


def test_collate_masks_by_position_and_truncates():
    seqs = [[7, 7, 9, 7], [9], [1, 2, 3, 4, 5, 6]]  # 9 is the end-of-text id, also inside texts
    inputs, targets = collate(seqs, pad_id=9, prompt_lengths=[3, 0, 1], block_size=5)
    assert inputs.shape == targets.shape == (3, 5) and inputs.dtype == targets.dtype == np.int64
    assert targets.tolist() == [[-100, -100, 7, 9, -100],   # the 9 inside the text is still a target
                                [9, -100, -100, -100, -100],
                                [2, 3, 4, 5, 6]]             # cut at block_size before its end-of-text


def test_masked_targets_contribute_nothing():
    model = GPT(SMALL, seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(0, 39, n)) for n in (7, 3, 5)]
    inputs, targets = collate(seqs, pad_id=39, prompt_lengths=[2, 1, 3])
    keep = targets != -100

    def grads_of(loss_fn):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.item(), {n: p.grad.copy() for n, p in model.named_parameters()}

    def masked():
        return model(inputs, targets)[1]

    def removed():  # the same loss over only the kept positions: no ignore_index anywhere
        logits = model(inputs)[0]
        rows, cols = np.nonzero(keep)
        return F.cross_entropy(logits[rows, cols], targets[rows, cols])

    (l1, g1), (l2, g2) = grads_of(masked), grads_of(removed)
    np.testing.assert_allclose(l1, l2, rtol=1e-12)
    for n in g1:
        np.testing.assert_allclose(g1[n], g2[n], rtol=1e-10, atol=1e-14, err_msg=n)
    # and directly: the loss sends no gradient to the logits of masked positions
    logits = Tensor(rng.standard_normal(inputs.shape + (40,)), requires_grad=True)
    F.cross_entropy(logits, targets).backward()
    assert np.all(logits.grad[~keep] == 0) and np.all(np.abs(logits.grad[keep]).sum(-1) > 0)
    # the padding after a row's end changes nothing before it (causal attention)
    alone = model(inputs[1:2, :len(seqs[1]) + 1])[0].data[0]
    np.testing.assert_allclose(model(inputs)[0].data[1, :len(seqs[1]) + 1], alone, rtol=1e-10, atol=1e-12)


def test_format_prompt_alpaca():
    with_input = format_prompt({"instruction": "Edit this.", "input": "He go.", "output": "He goes."})
    assert with_input == ("Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request.\n\n### Instruction:\nEdit this.\n\n### Input:\nHe go.\n\n"
                          "### Response:\n")
    without = format_prompt({"instruction": "Say hi.", "input": ""})
    assert "### Input" not in without and without.endswith("Say hi.\n\n### Response:\n")


# ---- helpers -------------------------------------------------------------------------------------
def test_split_is_seeded_and_covers_everything():
    parts = split(range(100), (0.85, 0.10, 0.05), seed=0)
    assert [len(p) for p in parts] == [85, 10, 5]
    assert sorted(sum(parts, [])) == list(range(100))
    assert parts == split(range(100), (0.85, 0.10, 0.05), seed=0) != split(range(100), (0.85, 0.10, 0.05), seed=1)
    with pytest.raises(ValueError, match="add up to 1"):
        split(range(4), (0.5, 0.4), seed=0)


def test_encode_known_and_ensure_eot_for_a_char_model():
    tok = CharTokenizer("ab c")
    assert encode_known(tok, "a 2b") == ([1, 0, 2], 1)
    model = GPT(dataclasses.replace(SMALL, vocab_size=4), seed=0)
    wte = model.transformer.wte.weight.data.copy()
    assert ensure_eot(model, tok) == 4
    assert model.config.vocab_size == 5 and model.transformer.wte.weight.shape == (5, 16)
    np.testing.assert_allclose(model.transformer.wte.weight.data[4], wte.mean(0), rtol=1e-6)
    assert model(np.array([[4, 0]]))[0].shape == (1, 2, 5)

    class WithEot:
        eot_token = 3
    assert ensure_eot(model, WithEot()) == 3


# ---- the examples, end to end --------------------------------------------------------------------
def run_example(name, *args):
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def char_checkpoint(tmp_path_factory):
    """A small random character-level GPT saved as train_shakespeare.py saves one."""
    folder = tmp_path_factory.mktemp("base")
    with open(os.path.join(DATA_DIR, "tinyshakespeare.txt"), encoding="utf-8") as f:
        tok = CharTokenizer(f.read())
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16, bias=False)
    tok.save(str(folder / "tokenizer.tok"))
    save_checkpoint(str(folder / "ckpt.npz"), GPT(config, seed=0), config={"model": dataclasses.asdict(config)},
                    extra={"tokenizer_file": "tokenizer.tok"})
    return folder / "ckpt.npz"


def load_example(name):
    """Import examples/<name>.py as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_data
def test_classifier_data_is_balanced_and_split_by_paragraph():
    example = load_example("finetune_classifier")
    cfg = example.ClassifierConfig(data_dir=DATA_DIR, seed=3)
    sets, pool = example.load_data(cfg)
    with open(os.path.join(DATA_DIR, "the-verdict.txt"), encoding="utf-8") as f:
        paragraphs = f.read().split("\n")
    prose = example.wrap(sets["train"], cfg)  # the training paragraphs, as lines
    # each val/test line's paragraph is found by its text: the wrap only changes spaces, and the
    # example removes '"()_'
    clean = ["".join(c for c in p if c not in '"()_') for p in paragraphs]
    for name in ("val", "test"):
        texts, labels = sets[name]
        assert len(texts) == len(labels) and 2 * labels.sum() == len(labels)  # balanced
        wharton = [t for t, y in zip(texts, labels) if y == 1]
        assert not set(wharton) & set(prose) and not set(texts) & set(pool)
        # no val/test line shares a paragraph with a training line
        for line in wharton:
            home = [p for p in clean if line in p]
            assert home and not any(t in p for p in home for t in prose), line
    assert 0.6 < len(prose) / (len(prose) + len(sets["val"][0]) / 2 + len(sets["test"][0]) / 2) < 0.8
    assert all(len(t) >= cfg.min_chars for t in prose + pool)
    # each epoch's lines: the same paragraphs, shifted by a few words, so other lines within the same limits
    words = [" ".join(p.split()) for p in sets["train"]]
    shifted = example.wrap(sets["train"], cfg, np.random.default_rng(0))
    assert set(shifted) != set(prose) and all(cfg.min_chars <= len(t) <= cfg.wrap_width for t in shifted)
    assert all(any(t in p for p in words) for t in shifted)
    texts, labels = example.training_lines(prose, pool, np.random.default_rng(0))
    assert labels.tolist() == [1] * len(prose) + [0] * len(prose) and texts[:len(prose)] == prose
    assert set(texts[len(prose):]) <= set(pool)
    with pytest.raises(ValueError, match="cannot balance"):
        example.training_lines(prose, pool[:3], np.random.default_rng(0))


@needs_data
@pytest.mark.parametrize("options", [[], ["--lora-rank", "2"], ["--lm-weight", "0.5"]],
                         ids=["last-block", "lora", "lm-loss"])
def test_finetune_classifier_example_runs(char_checkpoint, tmp_path, options):
    out = run_example("finetune_classifier.py", "--init-from", str(char_checkpoint), "--out-dir", str(tmp_path),
                      "--epochs", "1", "--max-steps", "3", "--batch-size", "8", *options)
    assert "test accuracy:" in out and "trainable parameters:" in out
    ckpt = read_checkpoint(str(tmp_path / "classifier.npz"))
    model = GPTClassifier(GPTConfig(**ckpt.config["model"]), num_classes=2)
    model.load_state_dict(ckpt.model)  # strict: a plain classifier, LoRA merged in
    assert os.path.isfile(tmp_path / "tokenizer.tok")


@needs_data
def test_finetune_instructions_example_runs(char_checkpoint, tmp_path):
    out = run_example("finetune_instructions.py", "--init-from", str(char_checkpoint), "--out-dir", str(tmp_path),
                      "--max-steps", "2", "--batch-size", "4", "--max-test", "2", "--max-new-tokens", "5",
                      "--mask-prompt", "--lora-rank", "2", "--learning-rate", "1e-3")
    assert "val loss" in out
    with open(tmp_path / "test-responses.json", encoding="utf-8") as f:
        responses = json.load(f)
    assert len(responses) == 2 and all({"instruction", "output", "model_response"} <= set(r) for r in responses)
    assert read_checkpoint(str(tmp_path / "ckpt.npz")).extra["eot_id"] == 65  # a new id after 65 characters


@needs_data
@pytest.mark.slow
def test_finetune_instructions_example_runs_on_a_gpt2_folder(tmp_path):
    """The GPT-2 path: a Hugging Face folder (a tiny random model with GPT-2's vocabulary) and the
    GPT-2 tokenizer, whose end-of-text is 50256."""
    pytest.importorskip("safetensors", reason="Hugging Face folders need the crosscheck extra")
    config = GPTConfig(vocab_size=50257, block_size=64, n_layer=1, n_head=2, n_embd=8)
    GPT(config, seed=0).save_pretrained(str(tmp_path / "gpt2"))
    out = run_example("finetune_instructions.py", "--init-from", str(tmp_path / "gpt2"), "--out-dir",
                      str(tmp_path / "out"), "--max-steps", "1", "--batch-size", "2", "--max-test", "1",
                      "--max-new-tokens", "3")
    assert "end-of-text id 50256" in out
    assert GPT.from_pretrained(str(tmp_path / "out" / "model")).config.vocab_size == 50257
