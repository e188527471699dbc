"""The training example and the `tinygpt` command, run end to end on a tiny model.

The runs go through subprocesses, as a user would start them; the model is tiny (1 layer, 16
channels) and the text small, so the whole file takes seconds, not minutes.
"""
import csv
import os
import random
import subprocess
import sys

import pytest

from tinygpt.config import parse_config
from tinygpt.train import TrainConfig, format_seconds, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-interval", "3", "--eval-iters", "2", "--log-interval", "2", "--warmup-iters", "2",
        "--lr-decay-iters", "12", "--dropout", "0.1", "--always-save"]


CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "tinygpt")  # installed by pip install -e .


def run(args, env=None, script="examples/train_shakespeare.py"):
    """Run an example script, a module (`-m`), or the console script, from the repository root."""
    if script == CONSOLE_SCRIPT:
        cmd = [script]
    elif script.endswith(".py"):
        cmd = [sys.executable, os.path.join(ROOT, script)]
    else:
        cmd = [sys.executable, "-m", script]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=120, env=full_env, cwd=ROOT)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = random.Random(0)
    words = "the king and queen of night shall speak to thee my lord what is love but a sweet fire".split()
    lines = [" ".join(rng.choice(words) for _ in range(8)).capitalize() + "." for _ in range(600)]
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text("\n".join(lines))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_file):
    """A 6-iteration run, then resumed to 12 (the out dir is shared by the tests below)."""
    out = str(tmp_path_factory.mktemp("run") / "out")
    first = run(["--data", text_file, "--out-dir", out, "--max-iters", "6", "--sample-tokens", "20"] + TINY)
    resumed = run(["--data", text_file, "--out-dir", out, "--max-iters", "12", "--resume", "--sample-tokens", "0"] + TINY)
    return out, first, resumed


def test_example_trains_logs_saves_and_samples(trained):
    out, first, _ = trained
    assert first.returncode == 0, first.stderr
    for word in ("iter 4/6", "ms/iter", "tok/s", "eta", "eval 3: train loss", "--- sample (20 tokens) ---"):
        assert word in first.stdout
    for f in ("ckpt.npz", "tokenizer.tok", "losses.csv"):
        assert os.path.isfile(os.path.join(out, f))
    sample = first.stdout.split("--- sample (20 tokens) ---\n", 1)[1]
    assert len(sample.strip()) > 0


def test_resume_continues_exactly(trained, text_file, tmp_path):
    out, _, resumed = trained
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "at iteration 6" in resumed.stdout
    rows = read_csv(os.path.join(out, "losses.csv"))
    assert [int(r["iter"]) for r in rows] == [0, 3, 6, 9, 12]
    # an uninterrupted 12-iteration run (dropout on) gives the very same evaluations
    straight = run(["--data", text_file, "--out-dir", str(tmp_path), "--max-iters", "12", "--sample-tokens", "0"] + TINY)
    assert straight.returncode == 0, straight.stderr
    assert read_csv(os.path.join(tmp_path, "losses.csv")) == rows


@pytest.mark.parametrize("how", ["examples/sample.py", CONSOLE_SCRIPT])
def test_sample_from_checkpoint(trained, how):
    if how == CONSOLE_SCRIPT and not os.path.isfile(how):
        pytest.skip("the tinygpt console script is not installed next to this python")
    out = trained[0]
    args = (["sample"] if how == CONSOLE_SCRIPT else []) + [
        "--out-dir", out, "--prompt", "The king", "--max-new-tokens", "30", "--seed", "3"]
    a, b = run(args, script=how), run(args, script=how)
    assert a.returncode == 0, a.stderr
    assert a.stdout.startswith("The king") and len(a.stdout) > len("The king") + 5
    assert a.stdout == b.stdout  # --seed makes it reproducible


def test_sample_errors_are_messages(trained, tmp_path):
    r = run(["sample", "--out-dir", str(tmp_path)], script="tinygpt.cli")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run(["sample", "--out-dir", trained[0], "--prompt", "Zebra \u00e9"], script="tinygpt.cli")
    assert r.returncode == 2 and "not in this tokenizer" in r.stderr and "Traceback" not in r.stderr


def test_missing_data_gives_a_clear_message(tmp_path):
    r = run(["--data", str(tmp_path / "nope.txt"), "--out-dir", str(tmp_path / "o")])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "nope.txt" in r.stderr and "--data PATH" in r.stderr and "TINYGPT_DATA_DIR" in r.stderr


def test_offline_without_data_gives_a_clear_message(tmp_path):
    # no --data, an empty TINYGPT_DATA_DIR and cache, and a proxy that refuses: as if offline
    (tmp_path / "empty").mkdir()
    env = {"TINYGPT_DATA_DIR": str(tmp_path / "empty"), "TINYGPT_CACHE_DIR": str(tmp_path / "cache"),
           "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": ""}
    r = run(["--out-dir", str(tmp_path / "o")], env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "downloading" in r.stderr and "--data PATH" in r.stderr


def test_tinygpt_command_dispatch(trained):
    r = run([], script="tinygpt.cli")
    assert r.returncode == 2 and "tinygpt train" in r.stdout
    r = run(["train", "--help"], script="tinygpt.cli")
    assert r.returncode == 0 and "--max-iters" in r.stdout and "--tokenizer" in r.stdout
    r = run(["frobnicate"], script="tinygpt.cli")
    assert r.returncode == 2 and "unknown command" in r.stderr


def test_every_setting_is_a_flag_with_nanogpt_defaults():
    cfg = parse_config(TrainConfig, [])
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.batch_size) == (4, 4, 128, 64, 12)
    assert (cfg.learning_rate, cfg.min_lr, cfg.max_iters, cfg.warmup_iters, cfg.lr_decay_iters) == (1e-3, 1e-4, 2000, 100, 2000)
    assert (cfg.beta2, cfg.weight_decay, cfg.grad_clip, cfg.dropout) == (0.99, 0.1, 1.0, 0.0)
    assert (cfg.eval_interval, cfg.eval_iters, cfg.log_interval, cfg.out_dir) == (250, 20, 10, "out-shakespeare")
    cfg = parse_config(TrainConfig, ["--max-iters", "50", "--no-decay-lr", "--tokenizer", "bpe"])
    assert (cfg.max_iters, cfg.lr_decay_iters, cfg.decay_lr, cfg.tokenizer) == (50, 50, False, "bpe")


def test_bad_settings_are_rejected(tmp_path, capsys, text_file):
    with pytest.raises(SystemExit):
        main(["--n-layer", "0"])
    assert "--n-layer must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--tokenizer", "words"])
    assert main(["--data", text_file, "--resume", "--out-dir", str(tmp_path)]) == 2
    assert "ckpt.npz' does not exist" in capsys.readouterr().err


def test_format_seconds():
    assert [format_seconds(s) for s in (7.5, 95.2, 4000)] == ["8s", "1m35s", "1h06m40s"]


def test_trains_from_prepared_token_files(tmp_path, text_file, capsys):
    from tinygpt.data import prepare_token_files, split_text
    from tinygpt.tokenizer import CharTokenizer
    text = open(text_file).read()
    prepare_token_files(text, CharTokenizer(text), str(tmp_path / "bins"))
    args = ["--data", str(tmp_path / "bins"), "--out-dir", str(tmp_path / "o"), "--max-iters", "2",
            "--sample-tokens", "5"] + TINY
    assert main(args) == 0
    out = capsys.readouterr().out
    n_train, n_val = (len(part) for part in split_text(text))  # one token a character
    assert f"bins -> {n_train:,} train and {n_val:,} val tokens (CharTokenizer, vocab" in out
    assert os.path.isfile(tmp_path / "o" / "ckpt.npz") and os.path.isfile(tmp_path / "o" / "tokenizer.tok")
