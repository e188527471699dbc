"""Character-level tokenization: one id per distinct character of a text.

This module owns `CharTokenizer`, laid out as nanoGPT's data/shakespeare_char/prepare.py does it:
a `stoi` dictionary for encoding and an `itos` one for decoding. It also owns `check_ids`, the
check of ids that both tokenizers run before decoding. The file format is `files.py`'s.
"""
import numpy as np

from ..fileio import atomic_write
from .files import format_chars, parse_chars


def check_ids(ids, vocab_size):
    """`ids` as a 1-D int64 array, after checking that each is an int in [0, vocab_size).

    Example:
        check_ids([3, 1], 5) -> array([3, 1]);  check_ids([7], 5) -> ValueError naming 7 and 5
    """
    if isinstance(ids, (str, bytes, dict, set)) or np.ndim(ids) != 1:
        raise TypeError(f"ids must be a 1-D sequence of ints, got {type(ids).__name__}")
    arr = np.asarray(ids)
    if arr.dtype == object:  # ints too big for int64, or a mix of types: find the culprit
        for i in arr:
            if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
                raise TypeError(f"ids must be ints, got {i!r} of type {type(i).__name__}")
            if not 0 <= i < vocab_size:
                raise ValueError(f"token id {i} is out of range for vocab_size {vocab_size}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"ids must be ints, got an array of {arr.dtype}")
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        raise ValueError(f"token id {arr[np.argmax(bad)]} is out of range for vocab_size "
                         f"{vocab_size}")
    return arr.astype(np.int64)


class CharTokenizer:
    """One id per distinct character of a text, ids in sorted character order.

    Example:
        tok = CharTokenizer("hello")    # stoi: "e" 0, "h" 1, "l" 2, "o" 3
        tok.encode("hole") -> [1, 3, 2, 0];  tok.decode([1, 0]) -> "he";  tok.vocab_size -> 4
    """

    def __init__(self, text):
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        if not text:
            raise ValueError("cannot build a CharTokenizer from an empty text")
        chars = sorted(set(text))                          # every distinct character, once
        self.stoi = {ch: i for i, ch in enumerate(chars)}  # character -> id
        self.itos = {i: ch for i, ch in enumerate(chars)}  # id -> character

    @property
    def vocab_size(self):
        return len(self.stoi)

    def encode(self, text):
        """A string in, a list of ids out."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            i = next(i for i, c in enumerate(text) if c not in self.stoi)
            raise ValueError(f"character {text[i]!r} (U+{ord(text[i]):04X}) at index {i} is not "
                             f"in this tokenizer's vocabulary of {self.vocab_size} characters"
                             ) from None

    def decode(self, ids):
        """A list of ids in, a string out."""
        ids = check_ids(ids, self.vocab_size)
        return "".join(self.itos[i] for i in ids.tolist())

    def save(self, path):
        text = format_chars(list(self.stoi))  # the characters in id order
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))

    @classmethod
    def load(cls, path):
        return cls("".join(parse_chars(path)))
