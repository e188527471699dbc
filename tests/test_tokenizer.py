"""Tests for BPETokenizer (tinygpt/tokenizer/bpe.py, split.py): GPT-2 exactness against
tiktoken (on long chunks too, which must encode in near-linear time), round trips, tiktoken
agreement of trained tokenizers, split patterns that are refused, and bad input of every kind.

This file also holds what the other tokenizer tests share: texts, the corpus, the fixtures.
test_tokenizer_basic.py checks the fast trainer and encoder against the naive ones,
test_tokenizer_files.py the files, test_tokenizer_char.py the CharTokenizer.

GPT-2's files and Tiny Shakespeare come from $TINYGPT_DATA_DIR; tiktoken is built here from
those same files, so no test needs the network.
"""
import json
import os
import time

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt.tokenizer import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, BPETokenizer
from tinygpt.tokenizer.split import Splitter, ascii_split

DATA_DIR = os.environ.get("TINYGPT_DATA_DIR")
NO_DATA = ("TINYGPT_DATA_DIR is not set (it holds gpt2/encoder.json, gpt2/vocab.bpe and "
           "tinyshakespeare.txt)")
needs_data = pytest.mark.skipif(not DATA_DIR, reason=NO_DATA)

# tiktoken's cl100k_base pattern, as written in tiktoken_ext/openai_public.py
CL100K_PAT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
              r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")

# Pieces that stress a byte-level tokenizer; hypothesis strings them together with random text.
PIECES = ["😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "日本語", "中文字符", "한국어", "e\u0301", "a\u0308\u0304",
          "Привет", "مرحبا", "Ελληνικά", "हिन्दी", " ", "  ", "   ", "\n", "\n\n", "\r\n", " \n ",
          "\t", "\u00a0", "\u3000", "\u200b", "123", "4567890", "3.14", "x²", "Ⅻ", "'s", "'t",
          "'ll", "'VE", "don't", "I'm", "hello", " world", "HELLO", "<|endoftext|>", "<|end",
          "!!", "...", "$$", "~", "é", "ß", "\ufffd", "\x00", "\x7f"]
# subtle: no unassigned code points (category Cn in this Python's Unicode 14 tables). The `regex`
# package and tiktoken's Rust regex ship different Unicode versions, so a code point assigned
# since (U+3D000 is a letter to `regex` 2026.11 and unassigned to tiktoken) makes \p{L} disagree
# and the two split the text differently, though both are right for their Unicode version.
chars = st.characters(exclude_categories=("Cn", "Cs"))
texts = st.lists(st.one_of(st.sampled_from(PIECES), st.text(chars, max_size=10)), max_size=20).map("".join)

CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
          "I'm sure you'll see it's 1234 times better, don't you?  It's 3.14!\n" * 3
          + " ".join(PIECES) * 2)


@st.composite
def small_trained(draw):
    """(corpus, tokenizer trained on it): few letters and little text, so counts tie often."""
    corpus = draw(st.text(alphabet="ab c\n'é1", min_size=1, max_size=300))
    tok = BPETokenizer(GPT2_SPLIT_PATTERN)
    tok.train(corpus, 256 + draw(st.integers(0, 60)))
    return corpus, tok


def gpt2_byte_decoder():
    """GPT-2's printable character -> byte table, written independently of tinygpt."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    moved = [b for b in range(256) if b not in keep]
    table = {chr(b): b for b in keep}
    table.update({chr(256 + n): b for n, b in enumerate(moved)})
    return table


def tiktoken_from(tok, pat_str):
    """A tiktoken Encoding with `tok`'s tokens as ranks: bytes -> id, which is the merge order."""
    tiktoken = pytest.importorskip("tiktoken")
    specials = set(tok.special_tokens.values())
    ranks = {t: i for i, t in tok.vocab.items() if i not in specials}
    assert len(ranks) == len(tok.vocab) - len(specials), "two tokens have the same bytes"
    return tiktoken.Encoding(name="test", pat_str=pat_str, mergeable_ranks=ranks,
                             special_tokens=dict(tok.special_tokens))


@pytest.fixture(scope="module")
def gpt2():
    if not DATA_DIR:
        pytest.skip(NO_DATA)
    return BPETokenizer.from_gpt2()


@pytest.fixture(scope="module")
def tt_gpt2():
    """tiktoken's gpt2 encoding, built from the shared files the way tiktoken itself does."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken_ext.openai_public import r50k_pat_str
    if not DATA_DIR:
        pytest.skip(NO_DATA)
    with open(os.path.join(DATA_DIR, "gpt2", "encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    decoder = gpt2_byte_decoder()
    ranks = {bytes(decoder[c] for c in s): i for s, i in encoder.items() if s != "<|endoftext|>"}
    return tiktoken.Encoding(name="gpt2-test", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def trained(request):
    pattern = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN}[request.param]
    tok = BPETokenizer(pattern)
    tok.train(CORPUS, 400)
    return tok


@pytest.fixture(scope="module")
def with_special(trained):
    tok = BPETokenizer(trained.pattern)
    tok.train(CORPUS, 300)
    tok.register_special_tokens({"<|endoftext|>": 1000, "<|end|>": 1001})
    return tok


def corrupt(path, edit):
    """Rewrite the text file `path` with `edit(lines)`, a list of its lines without newlines."""
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    path.write_text("\n".join(edit(lines)) + "\n", encoding="utf-8")


# --- GPT-2 exactness ---------------------------------------------------------------------------

@needs_data
def test_gpt2_shakespeare_matches_tiktoken(tt_gpt2):
    with open(os.path.join(DATA_DIR, "tinyshakespeare.txt"), encoding="utf-8") as f:
        text = f.read()
    tok = BPETokenizer.from_gpt2()  # fresh: a cold cache, so the numba kernel does the merging
    ids = tok.encode_ordinary(text)
    assert len(ids) == 338_025  # known facts about these files, see the data README
    assert ids[:10] == [5962, 22307, 25, 198, 8421, 356, 5120, 597, 2252, 11]
    assert ids == tt_gpt2.encode_ordinary(text)
    assert tok.encode_ordinary(text) == ids  # again, from the warm cache
    assert tok.decode(ids) == text


@settings(max_examples=500)
@given(text=texts)
def test_gpt2_matches_tiktoken_on_unicode(gpt2, tt_gpt2, text):
    assert gpt2.encode_ordinary(text) == tt_gpt2.encode_ordinary(text)


ascii_texts = st.lists(st.one_of(st.sampled_from([p for p in PIECES if p.isascii()]),
                                 st.text(alphabet=st.characters(max_codepoint=127))),
                       max_size=20).map("".join)


@settings(max_examples=300)
@given(text=ascii_texts)
def test_ascii_split_equals_the_regex_split(text):
    for pattern in (GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN):
        assert ascii_split(pattern).findall(text) == regex.findall(pattern, text)


@settings(max_examples=200)
@given(text=ascii_texts)
def test_gpt2_matches_tiktoken_on_ascii(gpt2, tt_gpt2, text):
    assert gpt2.encode_ordinary(text) == tt_gpt2.encode_ordinary(text)


@settings(max_examples=100)
@given(ids=st.lists(st.integers(0, 50256), max_size=20))
def test_gpt2_decode_matches_tiktoken(gpt2, tt_gpt2, ids):
    assert gpt2.decode_bytes(ids) == tt_gpt2.decode_bytes(ids)
    assert gpt2.decode(ids) == tt_gpt2.decode(ids)  # invalid UTF-8 -> U+FFFD in both


@pytest.mark.parametrize("text", ["hello<|endoftext|>world", "<|endoftext|><|endoftext|>",
                                  "a <|endoftext|>\n\n<|endoftext|> b", "no special here"])
def test_gpt2_special_tokens_match_tiktoken(gpt2, tt_gpt2, text):
    assert gpt2.eot_token == 50256 and gpt2.vocab_size == 50257
    assert gpt2.encode(text, allowed_special="all") == tt_gpt2.encode(text, allowed_special="all")
    assert gpt2.encode(text, allowed_special={"<|endoftext|>"}) == \
        tt_gpt2.encode(text, allowed_special={"<|endoftext|>"})
    assert gpt2.encode(text, allowed_special="none") == tt_gpt2.encode(text, disallowed_special=())
    if "<|endoftext|>" in text:
        with pytest.raises(ValueError, match=r"<\|endoftext\|>"):
            gpt2.encode(text)
    else:
        assert gpt2.encode(text) == tt_gpt2.encode(text)


def test_lone_surrogates_are_replaced_like_tiktoken(gpt2, tt_gpt2):
    text = "a\ud800b \udfff"
    assert gpt2.encode(text) == tt_gpt2.encode(text)


def long_chunks(n):
    """Texts of n characters that GPT-2's split leaves as one long chunk, as it leaves CJK text
    and minified code, and random bytes, which it cuts into many short ones."""
    rng = np.random.default_rng(n)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return {"a": "a" * n, "ab": "ab" * (n // 2), "letters": "".join(rng.choice(letters, n)),
            "cjk": "".join(map(chr, rng.integers(0x4E00, 0xA000, n))),
            "bytes": bytes(rng.integers(0, 256, n, np.uint8)).decode("latin-1"),
            "spaces": " " * n, "whitespace": "".join(rng.choice(list(" \t\n"), n))}


@pytest.mark.parametrize("kind", list(long_chunks(1)))
def test_gpt2_long_chunks_match_tiktoken(gpt2, tt_gpt2, kind):
    text = long_chunks(100_000)[kind]  # chunks new to the cache: they are merged
    assert gpt2.encode_ordinary(text) == tt_gpt2.encode_ordinary(text)


def test_gpt2_long_chunks_python_path_matches_tiktoken(tt_gpt2, monkeypatch):
    import tinygpt.tokenizer.bpe as bpe_module
    monkeypatch.setattr(bpe_module, "_NUMBA_MIN_BYTES", 10**9)  # encoding.encode_heap does it all
    tok = BPETokenizer.from_gpt2()
    for text in long_chunks(20_000).values():
        assert tok.encode_ordinary(text) == tt_gpt2.encode_ordinary(text)


def test_gpt2_million_character_chunk_is_not_quadratic(tt_gpt2):
    tok = BPETokenizer.from_gpt2()
    tok.encode_ordinary("x" * 5000)  # a chunk to merge: numba's kernel loads outside the clock
    text = long_chunks(1_000_000)["letters"]
    t0 = time.perf_counter()
    ids = tok.encode_ordinary(text)
    seconds = time.perf_counter() - t0
    assert ids == tt_gpt2.encode_ordinary(text)
    assert seconds < 10, f"{seconds:.1f} s: the merge loop looks quadratic again"  # generous: CI


# --- round trips and tiktoken agreement of trained tokenizers ----------------------------------

@settings(max_examples=100)
@given(text=texts)
def test_round_trip_trained(trained, text):
    assert trained.decode(trained.encode(text)) == text


@settings(max_examples=100)
@given(text=texts)
def test_round_trip_gpt2(gpt2, text):
    assert gpt2.decode(gpt2.encode(text, allowed_special="none")) == text
    assert gpt2.decode(gpt2.encode(text, allowed_special="all")) == text


@settings(max_examples=100)
@given(text=texts)
def test_trained_tokenizer_matches_tiktoken(trained, text):
    pat = CL100K_PAT if trained.pattern == GPT4_SPLIT_PATTERN else GPT2_SPLIT_PATTERN
    enc = tiktoken_from(trained, pat)
    assert trained.encode_ordinary(text) == enc.encode_ordinary(text)


@settings(max_examples=200)
@given(corpus_tok=small_trained(), text=texts)
def test_tiktoken_agrees_on_hypothesis_trained_vocab(corpus_tok, text):
    corpus, tok = corpus_tok
    enc = tiktoken_from(tok, GPT2_SPLIT_PATTERN)  # also asserts the token bytes are distinct
    for s in (corpus, text, corpus + text):
        assert tok.encode_ordinary(s) == enc.encode_ordinary(s)
        assert tok.decode(tok.encode_ordinary(s)) == s


# --- special tokens and the chunk cache --------------------------------------------------------

def test_longest_special_token_wins(with_special):
    assert with_special.encode("<|endoftext|>", allowed_special="all") == [1000]
    assert with_special.encode("<|end|>", allowed_special="all") == [1001]


def test_chunk_cache_is_bounded(trained, monkeypatch):
    import tinygpt.tokenizer.bpe as bpe_module
    monkeypatch.setattr(bpe_module, "_CACHE_LIMIT", 5)
    small = BPETokenizer(trained.pattern)
    small.train(CORPUS, 400)
    for text in (CORPUS, CORPUS[::-1], " ".join(PIECES)):
        assert small.encode_ordinary(text) == trained.encode_ordinary(text)
        assert len(small._cache) <= max(5, len(set(regex.findall(trained.pattern, text))))


# --- bad input ---------------------------------------------------------------------------------

def test_bad_input_raises(trained):
    tok = trained
    for bad in (123, b"bytes", None, ["a"]):
        with pytest.raises(TypeError):
            tok.encode(bad)
        with pytest.raises(TypeError):
            tok.encode_ordinary(bad)
    for bad in ("abc", [1.5], [[1, 2]], 7, [True], [1, None]):
        with pytest.raises(TypeError):
            tok.decode(bad)
    n = tok.vocab_size
    for bad in ([-1], [n], [0, 2**70]):
        with pytest.raises(ValueError, match=rf"{bad[-1]}.*{n}"):
            tok.decode(bad)
    assert tok.decode(np.array([104, 105], dtype=np.int16)) == "hi" and tok.decode([]) == ""
    with pytest.raises(ValueError, match="255"):
        BPETokenizer().train("text", 255)
    with pytest.raises(ValueError, match="empty"):
        BPETokenizer().train("", 300)
    with pytest.raises(TypeError):
        BPETokenizer().train("text", "300")
    with pytest.raises(ValueError, match="pattern"):
        BPETokenizer("(")


def test_patterns_that_lose_text_or_have_groups_are_refused():
    for bad, match in [(r"(a+)+$", "capturing group"), (r"\p{L}+", "loses characters"),
                       ("", "loses characters"), (r"(?<=a)", "loses characters"),
                       (r"\p{Zzz}", "invalid split pattern")]:
        with pytest.raises(ValueError, match=match):
            BPETokenizer(bad)
    with pytest.raises(TypeError):
        BPETokenizer(None)


def test_catastrophic_pattern_is_refused_within_seconds():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"took over 1\.0 s.*backtracking"):
        BPETokenizer(r"(?:a|a)+$|[\s\S]")  # exponential on the probe's run of a's
    assert time.perf_counter() - t0 < 5


def test_catastrophic_pattern_times_out_on_encode():
    tok = BPETokenizer(r"(?:q|q)+$|[\s\S]")  # the probe has no run of q's, so this loads
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"took over 1\.0 s on a text of 41 characters"):
        tok.encode("q" * 40 + "!")
    assert time.perf_counter() - t0 < 5


def test_nested_quantifier_runs_on_regex_not_re():
    # (a+)+$ backtracks exponentially in the built-in `re` (which has no timeout) but not in
    # `regex`: only the trusted GPT-2/GPT-4 patterns may take the `re` path on ASCII text
    tok = BPETokenizer(r"(?:a+)+$|[\s\S]")
    t0 = time.perf_counter()
    text = "a" * 28 + "b"
    assert tok.decode(tok.encode(text)) == text
    assert time.perf_counter() - t0 < 5


@settings(max_examples=100)
@given(text=texts)
def test_untrusted_pattern_splits_as_regex(text):
    pattern = pytest.importorskip("tiktoken_ext.openai_public").r50k_pat_str  # GPT-2's, respelled
    assert Splitter(pattern)(text) == regex.findall(pattern, text)


def test_special_token_errors():
    tok = BPETokenizer()
    tok.train(CORPUS, 300)
    with pytest.raises(ValueError, match="260"):
        tok.register_special_tokens({"<|x|>": 260})  # a merged token's id
    tok.register_special_tokens({"<|x|>": 400, "<|y|>": 401})
    with pytest.raises(ValueError, match="400"):
        tok.register_special_tokens({"<|z|>": 400})
    with pytest.raises(ValueError):
        tok.register_special_tokens({"": 402})
    with pytest.raises(ValueError, match="<\\|y\\|>"):
        tok.encode("a<|y|>", allowed_special={"<|x|>"})
    assert tok.encode("<|x|>", allowed_special={"<|x|>"}) == [400]
    with pytest.raises(ValueError, match="<\\|w\\|>"):
        tok.encode("a", allowed_special={"<|w|>"})
    with pytest.raises(ValueError, match="sometimes"):
        tok.encode("a", allowed_special="sometimes")
    with pytest.raises(TypeError):
        tok.encode("a", allowed_special=["<|x|>"])
    with pytest.raises(ValueError, match=r"350.*unassigned"):
        tok.decode([350])  # below vocab_size, but no token has this id
