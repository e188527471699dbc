"""Checkpoints: round trips, exact resumption, and clear errors for bad files."""
import json
import os
import zipfile

import numpy as np
import pytest

from tinygpt import functional as F
from tinygpt.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from tinygpt.data import TokenDataset
from tinygpt.nn import Dropout, Embedding, LayerNorm, Linear, Module
from tinygpt.optim import AdamW, clip_grad_norm


class TinyLM(Module):
    """A small stand-in language model: embedding -> layer norm -> dropout -> linear."""

    def __init__(self, vocab=17, dim=8, seed=0):
        rng = np.random.default_rng(seed)
        self.wte = Embedding(vocab, dim, rng=rng)
        self.ln = LayerNorm(dim)
        self.drop = Dropout(0.2)
        self.head = Linear(dim, vocab, rng=rng)

    def forward(self, idx, targets):
        logits = self.head(self.drop(self.ln(self.wte(idx))))
        return logits, F.cross_entropy(logits, targets)


def make_model(kind, seed=0):
    if kind == "tiny":
        return TinyLM(seed=seed)
    from tinygpt.model import GPT, GPTConfig  # the real thing, with dropout on its own generator
    return GPT(GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.1, bias=True),
               seed=seed)


DATA = TokenDataset(np.arange(400) * 7 % 17, np.arange(100) * 5 % 17)


def train_steps(model, opt, rng, start, stop):
    losses = []
    model.train()
    for it in range(start, stop):
        opt.lr = 1e-2 * (1 - it / 20)  # a schedule, so the iteration number matters
        x, y = DATA.get_batch("train", 4, 8, rng)
        opt.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["tiny", "gpt"])
def test_resume_reproduces_uninterrupted_run(tmp_path, kind):
    N = 8
    F.manual_seed(123)
    model = make_model(kind)
    straight = train_steps(model, AdamW(model.parameters(), lr=1e-2, weight_decay=0.1),
                           np.random.default_rng(1), 0, N)

    F.manual_seed(123)
    model = make_model(kind)
    opt, rng = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1), np.random.default_rng(1)
    first = train_steps(model, opt, rng, 0, N // 2)
    save_checkpoint(tmp_path / "ckpt.npz", model, opt, config={"n": 1}, iter_num=N // 2, rng=rng)

    # fresh objects, as a new process would build them; dropout's generator is scrambled too
    F.manual_seed(999)
    model = make_model(kind, seed=5)
    opt, rng = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1), np.random.default_rng(77)
    ckpt = load_checkpoint(tmp_path / "ckpt.npz", model, opt, rng)
    assert ckpt.iter_num == N // 2 and ckpt.config == {"n": 1}
    second = train_steps(model, opt, rng, ckpt.iter_num, N)
    assert first + second == straight  # bit-identical floats


def test_round_trip_contents(tmp_path):
    model = TinyLM()
    opt = AdamW(model.parameters(), lr=1e-3)
    train_steps(model, opt, np.random.default_rng(0), 0, 2)
    rng = np.random.default_rng(5)
    save_checkpoint(tmp_path / "c.npz", model, opt, config={"model": {"n_layer": 4}}, iter_num=2,
                    rng=rng, extra={"best_val_loss": 1.5, "history": [[0, 2.0, 2.1, 1e-3]]})
    ckpt = read_checkpoint(tmp_path / "c.npz")
    assert ckpt.config == {"model": {"n_layer": 4}} and ckpt.iter_num == 2
    assert ckpt.extra == {"best_val_loss": 1.5, "history": [[0, 2.0, 2.1, 1e-3]]}
    assert ckpt.rng_state == rng.bit_generator.state
    assert ckpt.dropout_rng_states == [F._rng.bit_generator.state]
    for name, arr in model.state_dict().items():
        assert ckpt.model[name].dtype == np.float32 and ckpt.model[name].tobytes() == arr.tobytes()
    assert int(ckpt.optimizer["step"]) == 2
    np.testing.assert_array_equal(ckpt.optimizer["decay.m"], opt.m[0])
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:  # a plain npz, no pickles
        meta = json.loads(z["meta"].tobytes())
        assert (meta["format"], meta["version"]) == ("tinygpt-checkpoint", 1)
    assert os.listdir(tmp_path) == ["c.npz"]  # the temp file was renamed, none left behind


def test_model_only_checkpoint_cannot_resume_optimizer(tmp_path):
    model = TinyLM()
    save_checkpoint(tmp_path / "m.npz", model)
    load_checkpoint(tmp_path / "m.npz", TinyLM(seed=1))  # weights alone load fine
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(tmp_path / "m.npz", TinyLM(), AdamW(TinyLM().parameters(), lr=1e-3))


def test_failed_write_keeps_old_checkpoint(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, TinyLM(), iter_num=7)

    class Broken(TinyLM):
        def state_dict(self):
            return {"w": object()}  # np.savez refuses object arrays without pickling
    with pytest.raises(TypeError, match="'model/w' has dtype object"):
        save_checkpoint(path, Broken())
    assert read_checkpoint(path).iter_num == 7 and os.listdir(tmp_path) == ["c.npz"]


def bad_files(tmp_path):
    good = tmp_path / "good.npz"
    save_checkpoint(good, TinyLM())
    raw = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    with zipfile.ZipFile(good) as z:
        end_of_first = z.infolist()[1].header_offset  # the first member's data ends just before
    flipped[end_of_first - 5] ^= 0xFF  # inside a weight: only the zip's CRC-32 can tell
    (tmp_path / "corrupt.npz").write_bytes(bytes(flipped))
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_text("hello, not a checkpoint")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    np.save(tmp_path / "single.npy", np.zeros(3))
    np.savez(tmp_path / "nomarker.npz", meta=np.frombuffer(b'{"format": "other"}', np.uint8))
    np.savez(tmp_path / "badjson.npz", meta=np.frombuffer(b"{not json", np.uint8))
    with zipfile.ZipFile(tmp_path / "pickled.npz", "w") as z:  # an object array: needs pickle
        with z.open("meta.npy", "w") as f:
            np.save(f, np.array([{"format": "tinygpt-checkpoint"}], dtype=object), allow_pickle=True)
    return ["truncated.npz", "corrupt.npz", "empty.npz", "text.npz", "foreign.npz", "single.npy",
            "nomarker.npz", "badjson.npz", "pickled.npz"]


def test_bad_files_raise_value_error_naming_the_file(tmp_path):
    for name in bad_files(tmp_path):
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            read_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        read_checkpoint(tmp_path / "missing.npz")


def test_wrong_model_shape_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "c.npz", TinyLM(vocab=17))
    with pytest.raises(ValueError, match="wrong shapes"):
        load_checkpoint(tmp_path / "c.npz", TinyLM(vocab=20))
