"""Tokenizers: text <-> lists of integer ids. In reading order:

char.py      `CharTokenizer`: one id per distinct character (char-level Shakespeare)
basic.py     naive byte-pair encoding: `get_stats`, `merge`, the textbook trainer and encoder
split.py     the regexes of GPT-2 and GPT-4 that cut text into chunks, and the checks that
             refuse a pattern that loses text or backtracks without end
bpe.py       `BPETokenizer`: byte-level BPE, trained or GPT-2's, exactly as tiktoken encodes
training.py  the fast trainer: basic.py's merges, without recounting the text for each merge
encoding.py  the fast encoder: basic.py's tokens in O(n log n), a linked list and a heap
fast.py      the numba encoder: encoding.py's loop, for a whole batch of chunks in one call
files.py     the file formats, and GPT-2's encoder.json and vocab.bpe
"""
from .bpe import BPETokenizer
from .char import CharTokenizer
from .files import BPE_VERSION, CHAR_VERSION, read_version
from .split import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN


def load_tokenizer(path):
    """Load a CharTokenizer or a BPETokenizer, whichever the file's version line names.

    Example:
        load_tokenizer("out/shakespeare.tok") -> CharTokenizer    # first line "tinygpt-char 1"
    """
    first = read_version(path)
    if first == CHAR_VERSION.encode():
        return CharTokenizer.load(path)
    if first == BPE_VERSION.encode():
        return BPETokenizer.load(path)
    raise ValueError(f"{path}:1: not a tinygpt tokenizer file: its first line is neither {CHAR_VERSION!r} "
                     f"nor {BPE_VERSION!r}")  # not quoted: never echo a file that is not ours


__all__ = ["CharTokenizer", "BPETokenizer", "load_tokenizer", "GPT2_SPLIT_PATTERN",
           "GPT4_SPLIT_PATTERN"]
