"""Data: from a text file to batches of token ids.

This module owns the path from text to training batches:

- `find_text`: locate the corpus (a given path, `$TINYGPT_DATA_DIR`, or a one-time download).
- `split_text`: the 90/10 train/val split, done on the text so a tokenizer can be trained on the
  train part only.
- `TokenDataset`: train and val ids (in memory, or uint16 `.bin` files opened with np.memmap for
  corpora larger than memory), and `get_batch`: random (B, T) windows, targets shifted by one.
- `write_token_files` / `TokenDataset.from_dir`: the `.bin` + `meta.json` format, as in nanoGPT;
  `prepare_token_files` tokenizes a text into that format once.
- `SlidingWindowDataset` + `batch_iterator`: every window of `max_length` tokens, `stride` apart,
  as in the "LLMs from scratch" course material, for epoch-style training; `batches`: the index
  batches of one epoch, shuffled or not (the fine-tuning examples use it too).

What it leaves out: tokenization itself (tokenizer/) and the model.

The one idea behind every batch: a window of T+1 tokens gives T training examples at once.

    ids:      [ 5, 9, 2, 7, 3 ]      window of T+1 = 5 tokens
    x (in):   [ 5, 9, 2, 7 ]         position t sees x[:t+1] ...
    y (out):  [ 9, 2, 7, 3 ]         ... and must predict y[t] = x[t+1]
"""
import http.client
import json
import os
import urllib.error
import urllib.request

import numpy as np

from .fileio import atomic_write, file_in_folder, read_file

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
MAX_UINT16_VOCAB = 65536  # ids must fit in uint16 for the .bin files


# ---------------------------------------------------------------------------------------- finding the text

def default_cache_dir():
    """Where downloads go: $TINYGPT_CACHE_DIR, else $XDG_CACHE_HOME/tinygpt, else ~/.cache/tinygpt."""
    if os.environ.get("TINYGPT_CACHE_DIR"):
        return os.environ["TINYGPT_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tinygpt")


def find_text(path=None, name="tinyshakespeare.txt", url=SHAKESPEARE_URL, cache_dir=None, timeout=20):
    """The path of a text corpus, found in this order:

    1. `path`, if given (it must exist: a typo should not silently fall through to a download);
    2. `$TINYGPT_DATA_DIR/<name>`;
    3. `<cache_dir>/<name>`, downloading it from `url` first if needed (pass url=None to never
       download).

    Raises FileNotFoundError with a message that says what to pass instead.
    """
    hint = "pass --data PATH (a text file) or set TINYGPT_DATA_DIR to a folder that holds " + name
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file {path!r} does not exist; {hint}")
        return path
    data_dir = os.environ.get("TINYGPT_DATA_DIR")
    if data_dir and os.path.isfile(os.path.join(data_dir, name)):
        return os.path.join(data_dir, name)
    cache_dir = cache_dir or default_cache_dir()
    cached = os.path.join(cache_dir, name)
    if os.path.isfile(cached):
        return cached
    where = f"TINYGPT_DATA_DIR={data_dir!r} has no {name}" if data_dir else "TINYGPT_DATA_DIR is not set"
    if url is None:
        raise FileNotFoundError(f"cannot find {name}: no --data given and {where}; {hint}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read()  # a body cut short raises IncompleteRead: nothing half-downloaded is kept
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # offline, timeout, HTTP error
        raise FileNotFoundError(f"cannot find {name}: no --data given, {where}, and downloading "
                                f"{url} failed ({e}); {hint}") from None
    atomic_write(cached, lambda f: f.write(body))
    return cached


def read_text(path):
    """The whole file as a str. A file that is not UTF-8 text raises ValueError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start} cannot be decoded): "
                         "pass a UTF-8 text file, or a folder of token files") from None
    if not text:
        raise ValueError(f"{path} is empty: there is no text to train on")
    return text


def split_text(text, val_fraction=0.1):
    """(train, val): the first 90% of the characters and the last 10%, as nanoGPT splits."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = int(len(text) * (1.0 - val_fraction))
    return text[:n], text[n:]


# ---------------------------------------------------------------------------------------- random batches

class TokenDataset:
    """Train and val token ids, and random batches from them.

    The ids may be any 1-D integer arrays: in memory (from `from_text`) or read-only np.memmap
    views of uint16 `.bin` files (from `from_dir`), which the OS pages in as batches touch them.
    """

    def __init__(self, train_ids, val_ids):
        self.splits = {"train": train_ids, "val": val_ids}
        self.meta = {}  # meta.json's contents when read from .bin files

    @classmethod
    def from_text(cls, text, tokenizer, val_fraction=0.1):
        """Split the text 90/10, then encode each part (a token never straddles the split)."""
        train, val = split_text(text, val_fraction)
        # a BPE tokenizer's encode_ordinary treats "<|endoftext|>" in a corpus as plain text
        encode = getattr(tokenizer, "encode_ordinary", tokenizer.encode)
        return cls(_as_ids(encode(train)), _as_ids(encode(val)))

    @classmethod
    def from_dir(cls, folder):
        """Open `train.bin` and `val.bin` (written by `write_token_files`) as memmaps. Every id
        must be below meta.json's vocab_size (one pass over the ids, at setup, not mid-run)."""
        meta = read_meta(folder)
        ds = cls(*(open_bin(os.path.join(folder, f"{s}.bin")) for s in ("train", "val")))
        for split, ids in ds.splits.items():
            if ids.size and int(ids.max()) >= meta["vocab_size"]:
                raise ValueError(f"{os.path.join(folder, split + '.bin')} holds id {int(ids.max())}, outside "
                                 f"the vocabulary of {meta['vocab_size']} that {os.path.join(folder, 'meta.json')} gives")
        ds.meta = meta
        return ds

    def tokenizer_path(self, folder):
        """The tokenizer file that meta.json names, confined to the folder."""
        return file_in_folder(folder, self.meta.get("tokenizer"), os.path.join(folder, "meta.json"))

    def get_batch(self, split, batch_size, block_size, rng):
        """x, y: int64 arrays of shape (batch_size, block_size), windows at random offsets drawn
        from the np.random.Generator `rng`; y is x shifted left by one token."""
        if split not in self.splits:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        data = self.splits[split]
        if len(data) <= block_size:
            raise ValueError(f"the {split} split has {len(data)} tokens, too few for block_size "
                             f"{block_size} (needs at least {block_size + 1}); use a smaller "
                             "--block-size or more text")
        starts = rng.integers(0, len(data) - block_size, size=batch_size)  # last start: len - T - 1
        window = starts[:, None] + np.arange(block_size + 1)               # (B, T+1) positions
        chunk = np.asarray(data[window], dtype=np.int64)                   # (B, T+1): one gather
        return np.ascontiguousarray(chunk[:, :-1]), np.ascontiguousarray(chunk[:, 1:])


def _as_ids(ids):
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"token ids must be a 1-D integer sequence, got shape {ids.shape} dtype {ids.dtype}")
    return ids.astype(np.int64 if ids.size and ids.max() >= MAX_UINT16_VOCAB else np.uint16)


# ---------------------------------------------------------------------------------------- .bin files

def write_token_files(folder, train_ids, val_ids, vocab_size, **meta):
    """Write `train.bin`, `val.bin` (raw uint16 ids) and `meta.json` (vocab_size, counts, and any
    extra `meta` such as the tokenizer's file name) into `folder`, each atomically."""
    if vocab_size > MAX_UINT16_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} does not fit the uint16 .bin format "
                         f"(at most {MAX_UINT16_VOCAB} ids)")
    counts = {}
    for split, ids in (("train", train_ids), ("val", val_ids)):
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"{split} ids must be in [0, {vocab_size}), got range "
                             f"[{ids.min()}, {ids.max()}]")
        atomic_write(os.path.join(folder, f"{split}.bin"), ids.astype(np.uint16).tofile)
        counts[f"{split}_tokens"] = int(ids.size)
    meta = {"format": "tinygpt-tokens", "version": 1, "dtype": "uint16", "vocab_size": int(vocab_size),
            **counts, **meta}
    text = json.dumps(meta, indent=1).encode()
    atomic_write(os.path.join(folder, "meta.json"), lambda f: f.write(text))


def prepare_token_files(text, tokenizer, folder, tokenizer_file="tokenizer.tok", val_fraction=0.1):
    """Tokenize a text once into `folder`: train.bin, val.bin, the tokenizer, and meta.json naming
    it. `tinygpt train --data FOLDER` then trains from the memmapped ids, without the text."""
    ds = TokenDataset.from_text(text, tokenizer, val_fraction)
    os.makedirs(folder, exist_ok=True)
    tokenizer.save(os.path.join(folder, tokenizer_file))
    write_token_files(folder, ds.splits["train"], ds.splits["val"], tokenizer.vocab_size, tokenizer=tokenizer_file)


def open_bin(path):
    """A read-only uint16 memmap of a `.bin` file (an empty array for an empty file, which mmap
    cannot map)."""
    size = os.path.getsize(path)
    if size % 2:
        raise ValueError(f"{path} has {size} bytes, not a whole number of uint16 ids: truncated?")
    return np.memmap(path, dtype=np.uint16, mode="r") if size else np.zeros(0, np.uint16)


def read_meta(folder):
    path = os.path.join(folder, "meta.json")
    try:  # a regular file of a few lines: never /dev/zero or a FIFO
        text = read_file(path, 1 << 20, "a token-file meta.json")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: write it with data.write_token_files") from None
    try:
        meta = json.loads(text.decode("utf-8"))
    except ValueError as e:  # not UTF-8, not JSON
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON (nested too deeply)") from None
    if not isinstance(meta, dict) or meta.get("format") != "tinygpt-tokens":
        raise ValueError(f"{path} is not a tinygpt token-file meta.json (no 'format': 'tinygpt-tokens')")
    vocab = meta.get("vocab_size")
    if isinstance(vocab, bool) or not isinstance(vocab, int) or not 0 < vocab <= MAX_UINT16_VOCAB:
        raise ValueError(f"{path}: vocab_size must be an integer in [1, {MAX_UINT16_VOCAB}], got {str(vocab)[:40]}")
    return meta


# ---------------------------------------------------------------------------------------- sliding windows

class SlidingWindowDataset:
    """Every window of `max_length` ids, starting every `stride` ids, with its shifted targets.

    Example: ids = [0, 1, ..., 9], max_length = 4, stride = 3 gives starts 0 and 3 (a window at 6
    would need a target at index 10), so len = 2 and
        ds[0] = ([0, 1, 2, 3], [1, 2, 3, 4]),   ds[1] = ([3, 4, 5, 6], [4, 5, 6, 7]).
    stride = max_length tiles the text without overlap; stride = 1 takes every window.
    """

    def __init__(self, ids, max_length, stride):
        if max_length < 1 or stride < 1:
            raise ValueError(f"max_length and stride must be >= 1, got {max_length} and {stride}")
        self.ids = np.asarray(ids, dtype=np.int64)
        if self.ids.ndim != 1 or len(self.ids) <= max_length:
            raise ValueError(f"need a 1-D sequence of more than max_length={max_length} ids, got "
                             f"shape {self.ids.shape}")
        self.max_length, self.stride = max_length, stride
        self.starts = np.arange(0, len(self.ids) - max_length, stride)  # window + 1 target must fit

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for a dataset of {len(self)} windows")
        s = self.starts[i]
        return self.ids[s:s + self.max_length], self.ids[s + 1:s + self.max_length + 1]


def batches(n, batch_size, rng=None, drop_last=False):
    """Index arrays that cover range(n) once, batch_size at a time; shuffled when `rng` (an
    np.random.Generator) is given; with drop_last, a final smaller batch is left out.

    Example:
        list(batches(5, 2)) -> [array([0, 1]), array([2, 3]), array([4])]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = rng.permutation(n) if rng is not None else np.arange(n)
    end = n - n % batch_size if drop_last else n
    return [order[i:i + batch_size] for i in range(0, end, batch_size)]


def batch_iterator(dataset, batch_size, shuffle=True, drop_last=True, rng=None):
    """Yield (x, y) batches of a SlidingWindowDataset, each (batch_size, max_length) int64,
    covering it once. shuffle draws a fresh order from `rng` (default: a new unseeded
    generator); drop_last skips a final, smaller batch so every batch has the same shape."""
    rng = (rng if rng is not None else np.random.default_rng()) if shuffle else None
    for b in batches(len(dataset), batch_size, rng, drop_last):
        pairs = [dataset[int(i)] for i in b]
        yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
