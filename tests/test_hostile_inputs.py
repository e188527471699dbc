"""Failing loudly at the Python entry points (issue 18, what a probe of hostile inputs found after
test_failures.py): empty inner dimensions, configs of the wrong type or too big to build,
sampling and optimizer settings out of range, read-only outputs, checkpoint members bigger than
their config allows, files that never end, and messages that must not echo a file's content.

Each test here failed on the code before it was written: a traceback, a silent wrong answer,
or a read that never ended.
"""
import inspect
import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from tinygpt import functional as F
from tinygpt import kernels
from tinygpt.checkpoint import read_checkpoint, save_checkpoint
from tinygpt.fileio import read_file
from tinygpt.kernels import jit as numba_set
from tinygpt.model import GPT, GPTConfig
from tinygpt.sampling import sample_next
from tinygpt.optim import SGD, AdamW, clip_grad_norm
from tinygpt.runtime import check_memory
from tinygpt.tensor import Tensor
from tinygpt.tokenizer import CharTokenizer, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)


# ---- shapes: an inner dimension of 0 -------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("x_shape", [(2, 0), (2, 3, 0)])
def test_linear_with_no_input_features_is_the_bias_and_its_gradients_are_zero(backend, x_shape):
    before = kernels.backend
    kernels.use(backend)
    try:
        x = Tensor(np.ones(x_shape, np.float32), requires_grad=True)
        w = Tensor(np.ones((0, 4), np.float32), requires_grad=True)
        b = Tensor(np.arange(4, dtype=np.float32), requires_grad=True)
        y = F.linear(x, w, b)
        np.testing.assert_array_equal(y.data, np.broadcast_to(b.data, x_shape[:-1] + (4,)))
        y.sum().backward()
        assert x.grad.shape == x_shape and w.grad.shape == (0, 4)
        np.testing.assert_array_equal(b.grad, np.full(4, np.prod(x_shape[:-1]), np.float32))
        head = Tensor(np.ones((4, 0), np.float32), requires_grad=True)  # (out, in): the tied head's layout
        F.linear(x, head, transpose_weight=True).sum().backward()
        assert head.grad.shape == (4, 0)
    finally:
        kernels.use(before or "numba")


@pytest.mark.parametrize("a_shape, b_shape", [((2, 3, 0), (0, 4)), ((2, 3, 4), (4, 0))])
def test_batched_matmul_by_a_shared_matrix_with_an_empty_inner_or_outer_dim(a_shape, b_shape):
    a = Tensor(np.ones(a_shape, np.float32), requires_grad=True)
    b = Tensor(np.ones(b_shape, np.float32), requires_grad=True)
    (a @ b).sum().backward()
    assert a.grad.shape == a_shape and b.grad.shape == b_shape and not b.grad.any()


# ---- models: the config's type, and memory before allocation ------------------------------------

@pytest.mark.parametrize("config", [SMALL, None, "gpt2", 3])
def test_gpt_takes_a_gptconfig_only(config):
    with pytest.raises(TypeError, match="GPT takes a GPTConfig, got"):
        GPT(config)


def test_a_model_too_big_to_build_is_refused_at_once_with_its_size():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"GPTConfig\(.*n_embd=10000000.*\), with .*M parameters, needs about "
                                         r"[\d,.]+ GB to hold its weights, but"):
        GPT(GPTConfig(n_embd=10**7, n_head=10))
    with pytest.raises(ValueError, match="to hold its weights"):
        GPT(GPTConfig(n_layer=10**9))  # not a list of 10^9 blocks' names, either
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_shapes_and_the_memory_estimate_are_the_models_own(bias):
    config = GPTConfig(**SMALL, bias=bias)
    model = GPT(config)
    assert {n: p.shape for n, p in model.named_parameters()} == config.parameter_shapes()
    n_bytes = 4 * sum(p.size for p in model.parameters())
    check_memory(config, available=n_bytes)  # exactly enough
    with pytest.raises(ValueError, match="to hold its weights"):
        check_memory(config, available=n_bytes - 1)
    with pytest.raises(TypeError, match="dtype"):
        GPT(config, dtype=np.int8)


# ---- sampling settings ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(temperature=-1.0), ValueError, "temperature must be a finite number >= 0 .*got -1.0"),
    (dict(temperature=float("nan")), ValueError, "temperature .* got nan"),
    (dict(temperature=float("inf")), ValueError, "temperature .* got inf"),
    (dict(temperature="hot"), TypeError, "temperature must be a number"),
    (dict(top_k=0), ValueError, "top_k must be a positive integer or None, got 0"),
    (dict(top_k=-2), ValueError, "top_k .* got -2"),
    (dict(top_k=2.5), TypeError, "top_k .* got 2.5"),
    (dict(top_k=True), TypeError, "top_k"),
    (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\] or None, got 0.0"),
    (dict(top_p=1.5), ValueError, "top_p .* got 1.5"),
    (dict(top_p=float("nan")), ValueError, "top_p .* got nan"),
])
def test_sampling_settings_out_of_range_are_refused_at_every_entry_point(kwargs, error, message):
    logits = np.zeros((2, 5), np.float32)
    with pytest.raises(error, match=message):
        sample_next(logits, **kwargs)
    model = GPT(GPTConfig(**SMALL), seed=0)
    with pytest.raises(error, match=message):
        model.generate(np.zeros((1, 2), np.int64), 3, **kwargs)
    with pytest.raises(error, match=message):
        model.generate_stream(np.zeros((1, 2), np.int64), 3, **kwargs)  # at the call, not the first next()


def test_temperature_zero_is_still_greedy():
    assert sample_next(np.array([[0.0, 3.0, 1.0]]), temperature=0).tolist() == [1]


# ---- optimizer settings --------------------------------------------------------------------------

def params():
    return [Tensor(np.ones((2, 2), np.float32), requires_grad=True)]


@pytest.mark.parametrize("make, error, message", [
    (lambda: AdamW(params(), lr=1e-3, betas=(0.9,)), TypeError, r"betas must be a pair \(beta1, beta2\), got \(0.9,\)"),
    (lambda: AdamW(params(), lr=1e-3, betas=(0.9, 0.99, 0.9)), TypeError, "betas must be a pair"),
    (lambda: AdamW(params(), lr=1e-3, betas=0.9), TypeError, "betas must be a pair"),
    (lambda: AdamW(params(), lr=1e-3, betas="ab"), TypeError, "betas must be a pair"),
    (lambda: AdamW(params(), lr=1e-3, betas=(0.9, float("nan"))), ValueError, "AdamW beta2 must be in"),
    (lambda: AdamW(params(), lr=1e-3, betas=(None, 0.9)), TypeError, "AdamW beta1 must be a number, got None"),
    (lambda: AdamW(params(), lr=float("nan")), ValueError, "AdamW lr must be a finite number >= 0, got nan"),
    (lambda: AdamW(params(), lr="1e-3"), TypeError, "AdamW lr must be a number, got '1e-3'"),
    (lambda: AdamW(params(), lr=1e-3, eps=-1e-8), ValueError, "AdamW eps must be a finite number >= 0"),
    (lambda: AdamW(params(), lr=1e-3, weight_decay=float("nan")), ValueError, "AdamW weight_decay .* got nan"),
    (lambda: SGD(params(), lr=1e-3, momentum=float("nan")), ValueError, r"SGD momentum must be in \[0, 1\)"),
    (lambda: AdamW(Tensor(np.ones(3), requires_grad=True), lr=1e-3), TypeError, "iterable of parameters"),
    (lambda: AdamW([np.ones(3)], lr=1e-3), TypeError, "holds a ndarray"),
    (lambda: clip_grad_norm(params(), float("nan")), ValueError, "clip_grad_norm max_norm .* got nan"),
    (lambda: clip_grad_norm(params(), 0), ValueError, "max_norm must be > 0"),
])
def test_optimizer_settings_that_cannot_train_are_refused(make, error, message):
    with pytest.raises(error, match=message):
        make()


# ---- kernels: a read-only out is refused, and no mistake switches the kernel set ----------------

def test_a_read_only_out_is_refused_and_the_kernels_stay_numbas():
    before = kernels.backend
    kernels.use("numba")
    try:
        out = np.zeros((4, 5), np.float32)
        out.flags.writeable = False
        with pytest.raises(ValueError, match="matmul writes into out in place: it must be writeable"):
            kernels.matmul(np.ones((4, 3), np.float32), np.ones((3, 5), np.float32), out=out)
        with pytest.raises(ValueError, match="matmul out must be a"):
            kernels.matmul(np.ones((4, 3), np.float32), np.ones((3, 5), np.float32), out=[[0.0] * 5] * 4)
        assert kernels.backend == "numba" and inspect.unwrap(kernels.matmul) is numba_set.matmul
    finally:
        kernels.use(before or "numba")


# ---- checkpoints: members bounded by their config, iter_num checked ------------------------------

def small_checkpoint(tmp_path, **kwargs):
    model = GPT(GPTConfig(**SMALL), seed=0)
    path = str(tmp_path / "ckpt.npz")
    save_checkpoint(path, model, AdamW(model.parameters(), lr=1e-3), config={"model": SMALL}, **kwargs)
    return path


def add_member(path, name, data):
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)


def npy(n, dtype="<f4"):
    """An honest .npy of n zeros: its header tells the truth."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": (n,)}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(n * np.dtype(dtype).itemsize)


@pytest.mark.parametrize("name, message", [
    ("model/extra.npy", r"holds 25,000,000 numbers of float32, more than the 256 its model config allows"),
    ("optim/decay.extra.npy", r"more than the 1,\d+ its model config allows"),
    ("optim/step.npy", "more than the 1 its"),
    ("extra.npy", "member 23 is not one of a checkpoint's"),
])
def test_a_member_bigger_than_its_config_allows_is_refused_before_inflating(tmp_path, name, message):
    path = small_checkpoint(tmp_path)
    if name == "optim/step.npy":  # replace it
        with zipfile.ZipFile(path) as z:
            members = {n: z.read(n) for n in z.namelist() if n != name}
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for n, b in dict(members, **{name: npy(25_000_000)}).items():
                z.writestr(n, b)
    else:
        add_member(path, name, npy(25_000_000))  # 100 MB of zeros, deflated to 100 kB
    assert os.path.getsize(path) < 1_000_000
    with pytest.raises(ValueError, match=message):
        read_checkpoint(path)  # the memory available would hold it: the config's shapes do not


def test_a_meta_bigger_than_its_cap_is_refused(tmp_path):
    path = small_checkpoint(tmp_path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist() if n != "meta.npy"}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in dict(members, **{"meta.npy": npy(20 << 20, "|u1")}).items():
            z.writestr(n, b)
    with pytest.raises(ValueError, match="its meta would take 20,971,6.. bytes, more than the 16,777,216 allowed"):
        read_checkpoint(path)


@pytest.mark.parametrize("iter_num", [-1, 2**64])
def test_an_iteration_number_out_of_range_is_refused(tmp_path, iter_num, monkeypatch):
    path = small_checkpoint(tmp_path, iter_num=0)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
        meta = json.loads(np.load(path)["meta"].tobytes())
    meta["iter_num"] = iter_num
    text = json.dumps(meta).encode()
    header = repr({"descr": "|u1", "fortran_order": False, "shape": (len(text),)}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    members["meta.npy"] = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + text
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(ValueError, match=r"'iter_num' must be in \[0, 2\*\*63\), got " + str(iter_num)):
        read_checkpoint(path)


# ---- files that never end, and messages that never echo a file -----------------------------------

@pytest.mark.parametrize("path, message", [("/dev/zero", "is not a regular file"), ("/dev/null", "not a regular")])
def test_a_device_is_no_tokenizer_file(path, message):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=f"{path} is not a regular file, but should be a tokenizer file"):
        load_tokenizer(path)
    assert time.perf_counter() - t0 < 1.0


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = str(tmp_path / "tok.fifo")
    os.mkfifo(fifo)
    code = f"from tinygpt.tokenizer import load_tokenizer; load_tokenizer({fifo!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "is not a regular file, but should be a tokenizer file" in r.stderr


def test_a_file_over_the_cap_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.tok"
    with open(path, "wb") as f:
        f.write(b"tinygpt-char 1\n")
        f.truncate(100 << 20)  # sparse: 100 MB that take no disk
    with pytest.raises(ValueError, match=r"big.tok is 104,857,600 bytes, more than the 67,108,864 that a "
                                         r"tokenizer file may hold"):
        load_tokenizer(str(path))
    with pytest.raises(ValueError, match="more than the 10 that a thing may hold"):
        read_file(str(path), 10, "a thing")


def test_a_foreign_files_content_is_never_echoed(tmp_path):
    secret = "root:x:0:0:SECRET-TOKEN-1234:/root:/bin/bash"
    (tmp_path / "passwd").write_text(secret + "\n")
    for load in (load_tokenizer, CharTokenizer.load):
        with pytest.raises(ValueError, match="passwd:1: not a") as e:
            load(str(tmp_path / "passwd"))
        assert "SECRET" not in str(e.value) and "x:0:0" not in str(e.value)
    from tinygpt.tokenizer.files import parse_gpt2
    (tmp_path / "encoder.json").write_text(json.dumps({"SECRET-KEY": "SECRET-VALUE"}))
    with pytest.raises(ValueError, match="entry 1: the id must be an integer") as e:
        parse_gpt2(str(tmp_path / "encoder.json"), str(tmp_path / "passwd"))
    assert "SECRET" not in str(e.value)
    (tmp_path / "latin1").write_bytes(b"tinygpt-char 1\nSECRET \xff\n")
    with pytest.raises(ValueError, match=r"latin1:2: not UTF-8 text \(byte 8 of the line\)") as e:
        load_tokenizer(str(tmp_path / "latin1"))
    assert "SECRET" not in str(e.value)


def test_a_token_folders_meta_json_that_never_ends_is_refused(tmp_path):
    from tinygpt.data import TokenDataset, write_token_files
    write_token_files(str(tmp_path / "zero"), [0, 1, 2], [0, 1], vocab_size=3)
    os.remove(tmp_path / "zero" / "meta.json")
    os.symlink("/dev/zero", tmp_path / "zero" / "meta.json")
    with pytest.raises(ValueError, match="meta.json is not a regular file"):
        TokenDataset.from_dir(str(tmp_path / "zero"))
    write_token_files(str(tmp_path / "fifo"), [0, 1, 2], [0, 1], vocab_size=3)
    os.remove(tmp_path / "fifo" / "meta.json")
    os.mkfifo(tmp_path / "fifo" / "meta.json")
    code = f"from tinygpt.data import TokenDataset; TokenDataset.from_dir({str(tmp_path / 'fifo')!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "meta.json is not a regular file" in r.stderr


def test_a_checkpoints_tokenizer_that_is_a_device_is_named_as_such(tmp_path):
    from tinygpt.checkpoint import load_model
    path = small_checkpoint(tmp_path)
    os.symlink("/dev/zero", tmp_path / "tokenizer.tok")
    with pytest.raises(ValueError, match="tokenizer.tok is not a regular file"):
        load_model(path)


def test_an_instruction_file_that_never_ends_is_refused():
    from tinygpt.finetune import read_instructions
    with pytest.raises(ValueError, match="/dev/zero is not a regular file, but should be an instruction JSON file"):
        read_instructions("/dev/zero")


def test_more_new_tokens_than_memory_holds_is_refused_at_the_call():
    model = GPT(GPTConfig(**SMALL), seed=0)
    with pytest.raises(ValueError, match=r"max_new_tokens=1000000000000 would take 8,000.0 GB for the token ids"):
        model.generate_stream(np.zeros((1, 2), np.int64), 10**12)
