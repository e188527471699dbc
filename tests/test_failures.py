"""Failing loudly: diverged training, files of another vocabulary, crafted and corrupt files,
paths that point out of their folder, two runs in one folder, and models too big to fit.

Each test here failed on the code before it was written (issue 18): the run trained on, the
file was opened, or a traceback reached the user.
"""
import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tinygpt.checkpoint import load_model, model_config, read_checkpoint, save_checkpoint
from tinygpt.config import parse_config
from tinygpt.data import TokenDataset, prepare_token_files, read_text, write_token_files
from tinygpt.fileio import file_in_folder, lock_folder, remove_stale_temps
from tinygpt.finetune import read_instructions
from tinygpt.model import GPT, GPTConfig
from tinygpt.tokenizer import CharTokenizer
from tinygpt.runtime import check_memory
from tinygpt.train import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-iters", "2", "--log-interval", "5", "--sample-tokens", "0"]


def train(*args):
    cmd = [sys.executable, "-m", "tinygpt.cli", "train", *TINY, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text("\n".join(f"Line {i}: the king and the queen of night." for i in range(400)))
    return str(path)


# ---- 1. non-finite training stops, and keeps the last good checkpoint --------------------------

def test_a_diverging_run_stops_non_zero_and_leaves_the_checkpoint_bitwise_unchanged(text_file, tmp_path):
    out = str(tmp_path / "o")
    good = train("--data", text_file, "--out-dir", out, "--max-iters", "2", "--eval-interval", "2")
    assert good.returncode == 0, good.stderr
    before = open(os.path.join(out, "ckpt.npz"), "rb").read()
    # no evaluation before it diverges, so the only checkpoint is the good one
    bad = train("--data", text_file, "--out-dir", out, "--max-iters", "40", "--eval-interval", "100", "--resume",
                "--learning-rate", "1e3", "--warmup-iters", "0", "--always-save")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "diverged at iteration" in bad.stderr and "without saving" in bad.stderr and "Traceback" not in bad.stderr
    assert open(os.path.join(out, "ckpt.npz"), "rb").read() == before


@pytest.mark.parametrize("flag, value", [("--learning-rate", "nan"), ("--learning-rate", "0"), ("--grad-clip", "-1"),
                                         ("--grad-clip", "nan"), ("--min-lr", "inf"), ("--beta2", "1"),
                                         ("--weight-decay", "nan"), ("--seed", "-1"), ("--bpe-vocab-size", "10"),
                                         ("--lr-decay-iters", "-1")])
def test_settings_that_cannot_train_are_usage_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(TrainConfig, [flag, value])
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_an_empty_text_file_is_refused_by_name(tmp_path):
    from tinygpt.data import read_text
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.txt is empty"):
        read_text(str(empty))


# ---- 3. one vocabulary, checked before any step ------------------------------------------------

def test_resume_with_a_tokenizer_of_another_vocabulary_is_refused(text_file, tmp_path):
    out = tmp_path / "o"
    assert train("--data", text_file, "--out-dir", str(out), "--max-iters", "1", "--eval-interval", "1").returncode == 0
    CharTokenizer("abc").save(str(out / "tokenizer.tok"))
    r = train("--data", text_file, "--out-dir", str(out), "--max-iters", "2", "--resume")
    assert r.returncode == 2 and "has a vocabulary of" in r.stderr and "Traceback" not in r.stderr


def test_sampling_with_a_tokenizer_of_another_vocabulary_is_refused(text_file, tmp_path):
    out = tmp_path / "o"
    assert train("--data", text_file, "--out-dir", str(out), "--max-iters", "1", "--eval-interval", "1").returncode == 0
    CharTokenizer("abc").save(str(tmp_path / "other.tok"))
    with pytest.raises(ValueError, match="has a vocabulary of"):
        load_model(str(out / "ckpt.npz"), str(tmp_path / "other.tok"))
    r = subprocess.run([sys.executable, "-m", "tinygpt.cli", "sample", "--out-dir", str(out), "--tokenizer",
                        str(tmp_path / "other.tok")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "has a vocabulary of" in r.stderr


def test_token_folders_whose_ids_or_tokenizer_disagree_are_refused(tmp_path):
    text = "hello world\n" * 200
    tok = CharTokenizer(text)
    prepare_token_files(text, tok, str(tmp_path / "ok"))
    # ids beyond the vocabulary meta.json gives
    write_token_files(str(tmp_path / "big"), [0, 1, 2, 30], [0, 1], vocab_size=40, tokenizer="tokenizer.tok")
    meta = json.loads((tmp_path / "big" / "meta.json").read_text())
    (tmp_path / "big" / "meta.json").write_text(json.dumps(dict(meta, vocab_size=8)))
    with pytest.raises(ValueError, match=r"train.bin holds id 30, outside the vocabulary of 8"):
        TokenDataset.from_dir(str(tmp_path / "big"))
    # meta.json names a tokenizer of another vocabulary (GPT-2's, say) for char ids
    meta = json.loads((tmp_path / "ok" / "meta.json").read_text())
    meta["vocab_size"] = 50257 if tok.vocab_size != 50257 else 7
    (tmp_path / "ok" / "meta.json").write_text(json.dumps(meta))
    r = train("--data", str(tmp_path / "ok"), "--out-dir", str(tmp_path / "o"), "--max-iters", "1")
    assert r.returncode == 2 and "meta.json" in r.stderr and "Traceback" not in r.stderr


# ---- 4. crafted and corrupt checkpoints: error: ..., bounded in time and memory ------------------

def small_checkpoint(tmp_path, **extra):
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=0)
    path = str(tmp_path / "ckpt.npz")
    save_checkpoint(path, model, config={"model": vars(model.config)}, extra=extra)
    return path


def rewrite(path, member, data):
    """A copy of the zip `path` with `member` replaced by the bytes `data` (deflated)."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[member] = data
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in members.items():
            z.writestr(n, b)


def npy(shape_claim, payload=b"", dtype="<f4"):
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape_claim}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


def test_a_member_that_inflates_past_memory_is_refused_before_inflating(tmp_path):
    path = small_checkpoint(tmp_path)
    rewrite(path, "model/transformer.wte.weight.npy", npy((25_000_000,), bytes(100_000_000)))  # 100 MB of zeros
    assert os.path.getsize(path) < 1_000_000
    with pytest.raises(ValueError, match="would take 0.10 GB, more than the 0.05 GB available"):
        read_checkpoint(path, max_bytes=50_000_000)


def test_an_npy_header_that_claims_more_than_its_bytes_is_refused(tmp_path):
    path = small_checkpoint(tmp_path)
    rewrite(path, "model/transformer.wte.weight.npy", npy((10**12,), bytes(64)))
    with pytest.raises(ValueError, match=r"claims shape \(1000000000000,\)"):
        read_checkpoint(path)


@pytest.mark.parametrize("meta_change, message", [
    (lambda m: m.update(extra=[1, 2]), "'extra' is list"),
    (lambda m: m.update(config=[]), "'config' is list"),
    (lambda m: m.update(iter_num="3"), "'iter_num' is str"),
    (lambda m: m.update(deep=json.loads("[" * 50_000 + "]" * 50_000) if False else None), None),
])
def test_metadata_of_the_wrong_types_is_refused(tmp_path, meta_change, message):
    path = small_checkpoint(tmp_path)
    with zipfile.ZipFile(path) as z:
        meta = json.loads(np.load(path)["meta"].tobytes())
    meta_change(meta)
    rewrite(path, "meta.npy", npy((len(json.dumps(meta)),), json.dumps(meta).encode(), dtype="|u1"))
    if message is None:
        read_checkpoint(path)  # still a good checkpoint
    else:
        with pytest.raises(ValueError, match=message):
            read_checkpoint(path)


def test_json_nested_too_deep_is_refused(tmp_path):
    path = small_checkpoint(tmp_path)
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    rewrite(path, "meta.npy", npy((len(deep),), deep, dtype="|u1"))
    with pytest.raises(ValueError, match="nested too deeply"):
        read_checkpoint(path)


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "not a GPTConfig"),                     # an unknown key
    ({"n_embd": 10**7}, "its config says transformer.wte.weight is"),  # a size its arrays do not have
    ({"bias": "no"}, None),                                       # see test_model: GPTConfig's own check
])
def test_a_config_that_does_not_fit_its_arrays_is_refused(tmp_path, change, message):
    path = small_checkpoint(tmp_path)
    ckpt = read_checkpoint(path)
    ckpt.config["model"].update(change)
    if message:
        with pytest.raises(ValueError, match=message):
            model_config(ckpt, path)


def test_a_garbage_generator_state_is_refused(tmp_path):
    from tinygpt.checkpoint import restore
    from tinygpt.optim import AdamW
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8), seed=0)
    opt = AdamW(model.parameters(), lr=1e-3)
    path = str(tmp_path / "ckpt.npz")
    save_checkpoint(path, model, opt, rng=np.random.default_rng(0))
    ckpt = read_checkpoint(path)
    ckpt.rng_state = {"bit_generator": "PCG64", "state": {"state": "x", "inc": []}}
    with pytest.raises(ValueError, match="random generator state NumPy refuses"):
        restore(ckpt, model, opt, np.random.default_rng(1), path)


# ---- 6, 7. files: no traversal by name, one run per folder, stale temps cleaned --------------------

@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "..", "", "a/b", 3])
def test_names_read_from_files_stay_in_their_folder(tmp_path, name):
    with pytest.raises(ValueError, match="plain file name") as e:
        file_in_folder(str(tmp_path), name, "meta.json")
    assert "root:" not in str(e.value)


def test_a_checkpoint_naming_a_tokenizer_outside_its_folder_is_refused(tmp_path):
    path = small_checkpoint(tmp_path, tokenizer_file="../../../../etc/passwd")
    with pytest.raises(ValueError, match="plain file name") as e:
        load_model(path)
    assert "root:" not in str(e.value)


def test_a_second_run_in_the_same_folder_is_refused(tmp_path):
    lock = lock_folder(str(tmp_path))
    code = f"from tinygpt.fileio import lock_folder; lock_folder({str(tmp_path)!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "another run is using" in r.stderr
    lock.close()  # released: the next run may go
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_stale_temps_of_the_runs_own_files_are_removed_and_nothing_else(tmp_path):
    for name in (".ckpt.npz.abc123.tmp", ".losses.csv.x.tmp", ".notes.txt.y.tmp", "ckpt.npz", "mine.tmp"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temps(str(tmp_path), ("ckpt.npz", "losses.csv"))
    assert sorted(os.path.basename(p) for p in removed) == [".ckpt.npz.abc123.tmp", ".losses.csv.x.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".notes.txt.y.tmp", "ckpt.npz", "mine.tmp"]


# ---- 8, 9. clear errors for data, instructions and sizes -----------------------------------------

def test_a_data_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8 text \(byte 3"):
        read_text(str(path))


@pytest.mark.parametrize("content, message", [("{", "not valid JSON"), ("{}", "non-empty JSON list"),
                                              ('[{"instruction": 1, "output": "x"}]', "entry 0"),
                                              ('[{"instruction": "a", "output": "b", "input": null}]', "entry 0")])
def test_bad_instruction_files_are_named(tmp_path, content, message):
    path = tmp_path / "inst.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_instructions(str(path))


def test_a_model_too_big_for_memory_says_so_before_allocating():
    big = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=1_000_000)
    with pytest.raises(ValueError, match=r"needs about .* GB \(batch 12 x 64\) to train, but 8.0 GB"):
        check_memory(big, 12, available=8e9)
    check_memory(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128), 12, available=8e9)


def test_a_text_without_newlines_still_samples_at_the_end(tmp_path):
    path = tmp_path / "one-line.txt"
    path.write_text("the king and the queen of night " * 200)
    r = subprocess.run([sys.executable, "-m", "tinygpt.cli", "train", *TINY[:-2], "--sample-tokens", "10",
                        "--data", str(path), "--out-dir", str(tmp_path / "o"), "--max-iters", "1"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "--- sample (10 tokens) ---" in r.stdout


@pytest.mark.parametrize("example, flag, value", [
    ("finetune_classifier.py", "--learning-rate", "nan"), ("finetune_classifier.py", "--grad-clip", "-1"),
    ("finetune_instructions.py", "--learning-rate", "nan"), ("finetune_instructions.py", "--grad-clip", "nan")])
def test_the_fine_tuning_examples_refuse_settings_that_cannot_train(example, flag, value):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", example), flag, value],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and flag in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", [[sys.executable, "-m", "tinygpt.cli", "train", "--max-iters", "1"],
                                     [sys.executable, "examples/finetune_instructions.py"],
                                     [sys.executable, "examples/finetune_classifier.py"]])
def test_an_out_dir_that_is_a_file_is_a_usage_error(tmp_path, command):
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        r = subprocess.run(command + ["--out-dir", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 2 and "error: " in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "afile" in r.stderr


@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", "nan", "--temperature must be a finite number >= 0, got nan"),
    ("--temperature", "-1", "--temperature must be"), ("--top-k", "-3", "--top-k must be >= 0, got -3"),
    ("--top-p", "0", r"--top-p must be in \(0, 1\], got 0.0"), ("--top-p", "nan", "--top-p must be"),
    ("--seed", "-1", "--seed must be >= 0"), ("--num-samples", "0", "--num-samples must be >= 1")])
def test_sampling_flags_out_of_range_are_usage_errors_before_the_checkpoint_is_read(flag, value, message, capsys):
    from tinygpt.cli import sample
    with pytest.raises(SystemExit) as e:
        sample(["--out-dir", "/nonexistent", flag, value])
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)
