"""Byte-level BPE: `BPETokenizer`, the tokenizer of GPT-2 and GPT-4.

Text is cut into chunks by a regex (`split.py`) and each chunk's UTF-8 bytes are merged into
tokens. A tokenizer trains its own merges (`train`, which runs `training.train_fast`) or reads
GPT-2's files (`from_gpt2`), and encodes exactly as tiktoken does: by `basic.encode_naive`'s
rule, run by `encoding.py`'s heap loop on a few bytes and by `fast.py`'s numba version of it on
big batches; a chunk that is itself a token is that token.
Text is not normalized: it is encoded byte for byte as given. File formats are `files.py`'s.

subtle: a rank belongs to bytes, so two tokens with the same bytes would be ambiguous. Training
keeps such a merge (it is plain BPE); encoding then emits only the first of the two ids and
decoding accepts both. We have never seen training produce one (the tests check for it).
"""
import os
import warnings
from itertools import chain

import regex

from ..fileio import atomic_write
from .char import check_ids
from .encoding import encode_heap
from .files import MAX_ID, format_bpe, gpt2_paths, parse_bpe, parse_gpt2
from .split import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, Splitter
from .training import train_fast

_CACHE_LIMIT = 200_000      # chunk -> ids entries kept before the cache starts over
_NUMBA_MIN_BYTES = 2048     # fewer uncached bytes: merge in Python, no numba import needed


def check_text(text):
    """`text`, with lone surrogates (not encodable as UTF-8) replaced by U+FFFD, as tiktoken does.

    Example:
        check_text("a\\ud800b") -> "a\\ufffdb";  check_text(b"ab") -> TypeError
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _numba_ok():
    """May the numba merge loop be used? Not with TINYGPT_KERNELS=numpy, nor without numba."""
    global _NUMBA
    if _NUMBA is None:
        _NUMBA = os.environ.get("TINYGPT_KERNELS", "numba") != "numpy"
        try:
            if _NUMBA:
                from . import fast  # noqa: F401  (compiles, or loads its cache, on first use)
        except ImportError as e:
            warnings.warn(f"numba unavailable ({e}); BPE encoding uses the naive loop")
            _NUMBA = False
    return _NUMBA


_NUMBA = None  # decided on first use


class BPETokenizer:
    """Byte-level BPE: text is cut into chunks by a regex, each chunk's UTF-8 bytes are merged.

    Example:
        tok = BPETokenizer(GPT2_SPLIT_PATTERN)
        tok.train("hello hello", 257) ;  tok.merges -> {(101, 108): 256}   # "e" "l", see `train`
        tok.encode("hello") -> [104, 256, 108, 111]
    """

    def __init__(self, pattern=GPT4_SPLIT_PATTERN):
        self._split = Splitter(pattern)  # refuses a pattern that loses text or backtracks
        self.pattern = pattern
        self.byte_ids = list(range(256))  # byte value -> token id (GPT-2 permutes them)
        self.merges = {}                  # (int, int) -> int, in merge order: the rank order
        self.special_tokens = {}          # str -> int
        self._build()

    def _build(self):
        """Derive every lookup table from byte_ids, merges and special_tokens."""
        self.vocab = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}  # int -> bytes
        for (a, b), i in self.merges.items():
            self.vocab[i] = self.vocab[a] + self.vocab[b]
        self._encoder = {}  # bytes -> id; on duplicate bytes the lowest rank wins
        for i, t in self.vocab.items():
            self._encoder.setdefault(t, i)
        self._ranks = {}  # merged token's bytes -> rank, its merge's place in the merge order
        for rank, i in enumerate(self.merges.values()):
            self._ranks.setdefault(self.vocab[i], rank)
        for s, i in self.special_tokens.items():
            self.vocab[i] = s.encode("utf-8")
        self._vocab_size = max(self.vocab) + 1
        self._cache = {}   # chunk (str) -> tuple of ids
        self._fast = None  # fast.py's tables, built on first use

    @property
    def vocab_size(self):
        """One more than the largest id (regular or special)."""
        return self._vocab_size

    @property
    def eot_token(self):
        """The id of <|endoftext|>, or None if that special token is not registered."""
        return self.special_tokens.get("<|endoftext|>")

    def _chunks(self, text):
        """The pieces the split pattern cuts `text` into."""
        return self._split(text)

    # --- training ------------------------------------------------------------------------------

    def train(self, text, vocab_size, verbose=False):
        """Learn vocab_size - 256 merges from `text`; this replaces merges and special tokens.

        See `basic.py` for the algorithm and its tie rule. If every chunk becomes a single
        token before that, training stops early and the vocabulary is smaller.

        Example:
            tok.train(open("tinyshakespeare.txt").read(), 512)  -> 256 merges, ids 256..511
        """
        text = check_text(text)
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        if vocab_size < 256:
            raise ValueError(f"vocab_size must be at least 256 (one token per byte), "
                             f"got {vocab_size}")
        if not text:
            raise ValueError("cannot train on an empty text")
        self.merges = train_fast(self._chunks(text), vocab_size - 256, verbose)
        self.byte_ids = list(range(256))
        self.special_tokens = {}
        self._build()

    # --- encoding ------------------------------------------------------------------------------

    def _encode_chunks(self, chunks):
        """Encode chunks (str) into the cache. A chunk that is a token is that token: tiktoken's
        shortcut (for GPT-2 merging reaches the same token, the shortcut saves the work)."""
        chunks = list(chunks)
        datas = [c.encode("utf-8") for c in chunks]
        encoded = [(i,) if i is not None else None for i in map(self._encoder.get, datas)]
        todo = [k for k, ids in enumerate(encoded) if ids is None]  # chunks that need merging
        if sum(len(datas[k]) for k in todo) >= _NUMBA_MIN_BYTES and _numba_ok():
            from . import fast
            if self._fast is None:
                self._fast = fast.make_tables(self.byte_ids, self._ranks, self._encoder)
            merged = fast.encode_batch([datas[k] for k in todo], self._fast)
        else:  # a few bytes, or no numba: the same loop in Python
            merged = [tuple(map(self._encoder.__getitem__, encode_heap(datas[k], self._ranks)))
                      for k in todo]
        for k, ids in zip(todo, merged):
            encoded[k] = ids
        self._cache.update(zip(chunks, encoded))

    def encode_ordinary(self, text):
        """Encode `text`, treating special-token strings as plain text.

        Example (GPT-2):
            encode_ordinary("First Citizen:") -> [5962, 22307, 25]
        """
        chunks = self._chunks(check_text(text))
        try:  # optimistic: on familiar text every chunk is cached already
            return list(chain.from_iterable(map(self._cache.__getitem__, chunks)))
        except KeyError:
            pass
        missing = set(chunks).difference(self._cache)
        if len(self._cache) + len(missing) > _CACHE_LIMIT:  # bound the memory on endless text
            self._cache.clear()
            missing = set(chunks)
        self._encode_chunks(missing)
        return list(chain.from_iterable(map(self._cache.__getitem__, chunks)))

    def encode(self, text, allowed_special="none_raise"):
        """Encode `text`; special tokens as tiktoken's `encode` treats them.

        allowed_special: "all" (every special token's text becomes its id), "none" (special
        texts are plain text), "none_raise" (the default: a special text in `text` raises
        ValueError), or a set of special tokens to allow (the others raise).
        subtle: where two allowed special tokens match at one place, the longer one wins.
        """
        text = check_text(text)
        if isinstance(allowed_special, str):
            if allowed_special not in ("all", "none", "none_raise"):
                raise ValueError(f"allowed_special must be 'all', 'none', 'none_raise' or a set, "
                                 f"got {allowed_special!r}")
            allowed = set(self.special_tokens) if allowed_special == "all" else set()
            disallowed = set(self.special_tokens) if allowed_special == "none_raise" else set()
        elif isinstance(allowed_special, (set, frozenset)):
            unknown = set(allowed_special) - set(self.special_tokens)
            if unknown:
                raise ValueError(f"allowed_special names unregistered special tokens: "
                                 f"{', '.join(sorted(map(repr, unknown)))}")
            allowed, disallowed = set(allowed_special), set(self.special_tokens) - allowed_special
        else:
            raise TypeError(f"allowed_special must be a str or a set, "
                            f"got {type(allowed_special).__name__}")
        for s in sorted(disallowed):
            if s in text:
                raise ValueError(f"text contains the special token {s!r}, which is not allowed; "
                                 f"pass allowed_special={{{s!r}}} or 'all' to encode it as a "
                                 f"special token, or 'none' to encode it as plain text")
        if not allowed:
            return self.encode_ordinary(text)
        alternatives = "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True))
        parts = regex.split(f"({alternatives})", text)
        ids = []
        for k, part in enumerate(parts):  # split with a group: odd parts are the special tokens
            if k % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    # --- decoding ------------------------------------------------------------------------------

    def decode_bytes(self, ids):
        """The raw bytes of `ids`, which may cut a character in two."""
        ids = check_ids(ids, self._vocab_size)
        try:
            return b"".join(map(self.vocab.__getitem__, ids.tolist()))
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is unassigned (ids run to vocab_size "
                             f"{self._vocab_size}, but this one has no token)") from None

    def decode(self, ids):
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD, as in tiktoken."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # --- special tokens and files --------------------------------------------------------------

    def register_special_tokens(self, special_tokens):
        """Add special tokens {str: id}; an id may not be taken by any other token.

        Example:
            tok.register_special_tokens({"<|endoftext|>": 50256})
        """
        if not isinstance(special_tokens, dict):
            raise TypeError(f"special_tokens must be a dict of str -> int, "
                            f"got {type(special_tokens).__name__}")
        taken = {i: repr(t) for i, t in self.vocab.items()}
        for s, i in special_tokens.items():
            if not isinstance(s, str) or not s or check_text(s) != s:  # != : a lone surrogate
                raise ValueError(f"a special token must be a non-empty str that UTF-8 can "
                                 f"encode, got {s!r}")
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= MAX_ID:
                raise ValueError(f"special token {s!r}: id must be an int in [0, {MAX_ID}], "
                                 f"got {i!r}")
            if self.special_tokens.get(s, i) != i:
                raise ValueError(f"special token {s!r} already has id {self.special_tokens[s]}")
            if i in taken and self.special_tokens.get(s) != i:
                raise ValueError(f"special token {s!r}: id {i} is already token {taken[i]}")
            taken[i] = repr(s)
        for s, i in special_tokens.items():
            self.special_tokens[s] = i
            self.vocab[i] = s.encode("utf-8")
        self._vocab_size = max(self.vocab) + 1

    def save(self, path):
        """Write the tokenizer in tinygpt's text format (see files.py), atomically."""
        text = format_bpe(self.pattern, self.special_tokens, self.byte_ids, self.merges,
                          self.vocab)
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))

    @classmethod
    def _from_parts(cls, pattern, special_tokens, byte_ids, merges):
        tok = cls(pattern)
        tok.byte_ids, tok.merges = byte_ids, merges
        tok._build()
        tok.register_special_tokens(special_tokens)
        return tok

    @classmethod
    def load(cls, path):
        """Read a file written by `save`. Anything wrong raises ValueError with its line number."""
        pattern, special_tokens, byte_ids, merges = parse_bpe(path)
        try:
            return cls._from_parts(pattern, special_tokens, byte_ids, merges)
        except (ValueError, TypeError) as e:  # e.g. a pattern that does not compile
            raise ValueError(f"{path}:2: {e}") from None

    @classmethod
    def from_gpt2(cls, encoder_json=None, vocab_bpe=None):
        """GPT-2's tokenizer from its published encoder.json and vocab.bpe.

        With no arguments the files are looked for in $TINYGPT_DATA_DIR/gpt2/.
        """
        if encoder_json is None and vocab_bpe is None:
            encoder_json, vocab_bpe = gpt2_paths()
        elif encoder_json is None or vocab_bpe is None:
            raise ValueError("from_gpt2 needs both encoder_json and vocab_bpe, or neither")
        special_tokens, byte_ids, merges = parse_gpt2(encoder_json, vocab_bpe)
        try:
            return cls._from_parts(GPT2_SPLIT_PATTERN, special_tokens, byte_ids, merges)
        except ValueError as e:  # <|endoftext|>'s id is taken by a merge
            raise ValueError(f"{encoder_json}: {e}") from None
