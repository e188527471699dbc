"""Data: the split, batches with shifted targets, .bin round trips, sliding windows, finding text."""
import json
import os

import numpy as np
import pytest

from tinygpt.data import (SlidingWindowDataset, TokenDataset, batch_iterator, batches, find_text, split_text,
                          write_token_files)


class ByteTokenizer:
    """A stand-in tokenizer: one id per byte."""
    vocab_size = 256

    def encode(self, text):
        return list(text.encode())


def test_split_sizes():
    text = "abcdefghij" * 10  # 100 characters
    train, val = split_text(text)
    assert (len(train), len(val)) == (90, 10) and train + val == text
    ds = TokenDataset.from_text(text, ByteTokenizer())
    assert (len(ds.splits["train"]), len(ds.splits["val"])) == (90, 10)
    with pytest.raises(ValueError, match="val_fraction"):
        split_text(text, 1.0)


def test_batches_are_windows_with_targets_shifted_by_one():
    ids = np.arange(1000) % 251  # each window is a run of consecutive values mod 251
    ds = TokenDataset(ids[:900], ids[900:])
    x, y = ds.get_batch("train", 8, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(y, (x + 1) % 251)
    for row in x:  # each row is a real window of the train split
        s = int(np.flatnonzero(ids[:900] == row[0])[0])
        np.testing.assert_array_equal(row, ids[s:s + 16])
    # the same generator state gives the same batch (resuming relies on this)
    a = ds.get_batch("val", 4, 8, np.random.default_rng(5))
    b = ds.get_batch("val", 4, 8, np.random.default_rng(5))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_batch_covers_last_window():
    ds = TokenDataset(np.arange(5), np.arange(5))
    starts = {int(ds.get_batch("train", 64, 4, np.random.default_rng(1))[0][i, 0]) for i in range(64)}
    assert starts == {0}  # 5 tokens, T=4: exactly one window (x=0..3, y=1..4)


def test_batch_errors():
    ds = TokenDataset(np.arange(10), np.arange(3))
    with pytest.raises(ValueError, match=r"val split has 3 tokens.*block_size 8"):
        ds.get_batch("val", 2, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="split must be"):
        ds.get_batch("test", 2, 2, np.random.default_rng(0))


def test_memmap_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 50257, 5000), rng.integers(0, 50257, 700)
    write_token_files(tmp_path, train, val, vocab_size=50257, tokenizer="tokenizer.json")
    assert os.path.getsize(tmp_path / "train.bin") == 2 * 5000  # uint16
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["vocab_size"] == 50257 and meta["tokenizer"] == "tokenizer.json"
    assert (meta["train_tokens"], meta["val_tokens"]) == (5000, 700)
    ds = TokenDataset.from_dir(tmp_path)
    assert isinstance(ds.splits["train"], np.memmap)
    np.testing.assert_array_equal(ds.splits["train"], train)
    np.testing.assert_array_equal(ds.splits["val"], val)
    x, y = ds.get_batch("train", 3, 32, np.random.default_rng(0))
    assert x.dtype == np.int64 and x.max() < 50257


def test_token_file_errors(tmp_path):
    with pytest.raises(ValueError, match="vocab_size 70000"):
        write_token_files(tmp_path, [1], [1], vocab_size=70000)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        write_token_files(tmp_path, [1, 12], [1], vocab_size=10)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        TokenDataset.from_dir(tmp_path)
    (tmp_path / "meta.json").write_text('{"something": "else"}')
    with pytest.raises(ValueError, match="not a tinygpt"):
        TokenDataset.from_dir(tmp_path)


def test_sliding_window_worked_example():
    ds = SlidingWindowDataset(list(range(10)), max_length=4, stride=3)
    assert len(ds) == 2
    x, y = ds[0]
    assert x.tolist() == [0, 1, 2, 3] and y.tolist() == [1, 2, 3, 4]
    x, y = ds[1]
    assert x.tolist() == [3, 4, 5, 6] and y.tolist() == [4, 5, 6, 7]
    with pytest.raises(IndexError):
        ds[2]


@pytest.mark.parametrize("n,max_length,stride", [(10, 4, 1), (10, 4, 4), (11, 4, 4), (100, 7, 5), (5, 4, 9)])
def test_sliding_window_counts(n, max_length, stride):
    ds = SlidingWindowDataset(np.arange(n), max_length, stride)
    # every start s with s + max_length < n (the last target must exist), stride apart
    assert len(ds) == len(range(0, n - max_length, stride))
    for i in range(len(ds)):
        x, y = ds[i]
        assert len(x) == len(y) == max_length and (y == x + 1).all()


def test_sliding_window_errors():
    with pytest.raises(ValueError, match="max_length=8"):
        SlidingWindowDataset(np.arange(8), 8, 1)
    with pytest.raises(ValueError, match="stride"):
        SlidingWindowDataset(np.arange(8), 2, 0)


def test_batch_iterator_shuffle_and_drop_last():
    ds = SlidingWindowDataset(np.arange(50), max_length=4, stride=4)  # starts 0, 4, ..., 44: 12 windows
    batches = list(batch_iterator(ds, 5, shuffle=False, drop_last=True))
    assert len(batches) == 2 and all(x.shape == (5, 4) for x, _ in batches)
    assert batches[0][0][:, 0].tolist() == [0, 4, 8, 12, 16]
    batches = list(batch_iterator(ds, 5, shuffle=False, drop_last=False))
    assert [len(x) for x, _ in batches] == [5, 5, 2]
    shuffled = list(batch_iterator(ds, 12, shuffle=True, rng=np.random.default_rng(0)))
    firsts = shuffled[0][0][:, 0].tolist()
    assert sorted(firsts) == list(range(0, 48, 4)) and firsts != sorted(firsts)
    np.testing.assert_array_equal(shuffled[0][1], shuffled[0][0] + 1)


def test_batches_cover_every_index_once():
    assert [b.tolist() for b in batches(5, 2)] == [[0, 1], [2, 3], [4]]
    assert [b.tolist() for b in batches(5, 2, drop_last=True)] == [[0, 1], [2, 3]]
    shuffled = batches(10, 4, np.random.default_rng(0))
    assert sorted(np.concatenate(shuffled).tolist()) == list(range(10)) and [len(b) for b in shuffled] == [4, 4, 2]
    assert np.concatenate(shuffled).tolist() != list(range(10))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        batches(5, 0)


def test_find_text_order(tmp_path, monkeypatch):
    given = tmp_path / "mine.txt"
    given.write_text("hello")
    assert find_text(str(given)) == str(given)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "tinyshakespeare.txt").write_text("to be")
    monkeypatch.setenv("TINYGPT_DATA_DIR", str(data_dir))
    assert find_text(None) == str(data_dir / "tinyshakespeare.txt")


def test_find_text_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.txt.*--data PATH.*TINYGPT_DATA_DIR"):
        find_text(str(tmp_path / "nope.txt"))


def test_find_text_offline_says_what_to_do(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TINYGPT_DATA_DIR", str(empty))
    # port 9 on localhost refuses at once: a download that fails as it would offline
    with pytest.raises(FileNotFoundError, match=r"downloading .* failed.*--data PATH"):
        find_text(None, url="http://127.0.0.1:9/input.txt", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="TINYGPT_DATA_DIR"):
        find_text(None, url=None, cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "tinyshakespeare.txt").exists()


def test_find_text_downloads_once_into_cache(tmp_path, monkeypatch):
    import functools
    import http.server
    import threading
    served = tmp_path / "served"
    served.mkdir()
    (served / "input.txt").write_text("First Citizen:\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("TINYGPT_DATA_DIR", raising=False)
        url = f"http://127.0.0.1:{server.server_address[1]}/input.txt"
        path = find_text(None, url=url, cache_dir=str(tmp_path / "cache"))
        assert open(path).read() == "First Citizen:\n"
        assert os.listdir(tmp_path / "cache") == ["tinyshakespeare.txt"]  # no temp file left
        (served / "input.txt").unlink()
        assert find_text(None, url=url, cache_dir=str(tmp_path / "cache")) == path  # cached now
    finally:
        server.shutdown()
