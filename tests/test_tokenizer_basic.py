"""Tests for naive BPE (tinygpt/tokenizer/basic.py) against the fast versions: the fast trainer
(training.py) must learn exactly the naive trainer's merges, in the same order, and the heap
encoder (encoding.py) and its numba version (fast.py) must give exactly the naive encoder's ids,
on trained vocabularies, GPT-2's, and random ones whose ranks break every habit of training.
"""
import os

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from test_tokenizer import (CORPUS, DATA_DIR, gpt2, needs_data, small_trained,  # noqa: F401
                            texts)
from tinygpt.tokenizer import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, BPETokenizer
from tinygpt.tokenizer.basic import encode_naive, get_stats, merge, train_naive
from tinygpt.tokenizer.encoding import encode_heap
from tinygpt.tokenizer.training import train_fast


def test_docstring_examples():
    assert get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert merge([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]
    assert merge([5, 5, 5], (5, 5), 6) == [6, 5]
    chunks = ["hello", " hell", " hell"]
    assert train_naive(chunks, 2) == train_fast(chunks, 2) == {(101, 108): 256, (104, 256): 257}
    assert encode_naive(b"hello", {b"ll": 0, b"he": 1, b"hell": 2}) == [b"hell", b"o"]
    assert encode_heap(b"hello", {b"ll": 0, b"he": 1, b"hell": 2}) == [b"hell", b"o"]


# --- the fast trainer against the naive one -----------------------------------------------------

@settings(max_examples=300)
@given(text=st.one_of(st.text(alphabet="aab c\n'", min_size=1, max_size=300),
                      texts.filter(bool)),
       vocab_size=st.integers(256, 300), gpt4=st.booleans())
def test_fast_trainer_matches_naive(text, vocab_size, gpt4):
    pattern = GPT4_SPLIT_PATTERN if gpt4 else GPT2_SPLIT_PATTERN
    tok = BPETokenizer(pattern)
    tok.train(text, vocab_size)  # the tokenizer's own split (ascii_split on ASCII text)
    naive = train_naive(regex.findall(pattern, text), vocab_size - 256)
    assert list(tok.merges.items()) == list(naive.items())


@needs_data
def test_fast_trainer_matches_naive_on_real_text():
    with open(os.path.join(DATA_DIR, "the-verdict.txt"), encoding="utf-8") as f:
        text = f.read()
    tok = BPETokenizer()
    tok.train(text, 300)
    naive = train_naive(regex.findall(GPT4_SPLIT_PATTERN, text), 300 - 256)
    assert list(tok.merges.items()) == list(naive.items())


def test_train_reports_progress(capsys):
    BPETokenizer().train(CORPUS, 300, verbose=True)
    assert "merge 44/44" in capsys.readouterr().out


# --- the heap encoder and the numba encoder against the naive one -------------------------------

def assert_encoders_match_naive(ranks, encoder, datas, tables=None):
    """encode_heap and fast.encode_batch give encode_naive's tokens on each chunk of `datas`;
    `tables` are fast.py's, built from ranks and encoder (byte value = id) if not given."""
    naive = [encode_naive(d, ranks) for d in datas]
    assert [encode_heap(d, ranks) for d in datas] == naive
    fast = pytest.importorskip("tinygpt.tokenizer.fast")
    tables = tables or fast.make_tables(list(range(256)), ranks, encoder)
    assert fast.encode_batch(datas, tables) == [tuple(encoder[t] for t in ts) for ts in naive]


def tables_of(tok):
    """fast.py's tables of `tok`, built once per tokenizer (GPT-2's take a while to build)."""
    fast = pytest.importorskip("tinygpt.tokenizer.fast")
    if tok._fast is None:
        tok._fast = fast.make_tables(tok.byte_ids, tok._ranks, tok._encoder)
    return tok._fast


def assert_fast_encoder_matches_naive(tok, text):
    datas = [c.encode("utf-8") for c in regex.findall(tok.pattern, text)]
    assert_encoders_match_naive(tok._ranks, tok._encoder, datas, tables_of(tok))


@settings(max_examples=100)
@given(text=texts)
def test_fast_encoder_matches_naive_gpt2(gpt2, text):  # noqa: F811 (the fixture)
    assert_fast_encoder_matches_naive(gpt2, text)


@settings(max_examples=100)
@given(corpus_tok=small_trained(), text=texts)
def test_fast_encoder_matches_naive_trained(corpus_tok, text):
    corpus, tok = corpus_tok
    assert_fast_encoder_matches_naive(tok, corpus + text)


def few_bytes(min_size=0, max_size=60):
    """Byte strings over b"b", b"c", b"d" only, so that the same pairs recur everywhere."""
    strings = st.binary(min_size=min_size, max_size=max_size)
    return strings.map(lambda b: bytes(98 + x % 3 for x in b))


@st.composite
def random_vocab(draw):
    """(ranks, encoder) of random tokens in a random rank order: unlike in a trained vocabulary,
    a token may outrank its parts, or be unreachable, and a pair may occur at many places."""
    tokens = draw(st.lists(few_bytes(2, 5), unique=True, max_size=40))  # in rank order
    ranks = {t: r for r, t in enumerate(tokens)}
    encoder = {bytes([b]): b for b in range(256)}
    encoder.update({t: 256 + r for t, r in ranks.items()})
    return ranks, encoder


@settings(max_examples=300)
@given(vocab=random_vocab(), datas=st.lists(few_bytes(), max_size=8))
def test_encoders_match_naive_on_random_vocab(vocab, datas):
    assert_encoders_match_naive(*vocab, datas)


def test_encoders_match_naive_on_long_chunks(gpt2):  # noqa: F811 (the fixture)
    rng = np.random.default_rng(0)
    datas = [b"a" * 3000, b"ab" * 1500, b" " * 3000, bytes(rng.integers(0, 256, 3000, np.uint8)),
             bytes(rng.choice(list(b"abcdefghijklmnopqrstuvwxyz"), 3000).astype(np.uint8)),
             "".join(map(chr, rng.integers(0x4E00, 0xA000, 1000))).encode("utf-8")]
    assert_encoders_match_naive(gpt2._ranks, gpt2._encoder, datas, tables_of(gpt2))


def test_ties_go_to_the_leftmost_pair_and_neighbours_are_re_ranked():
    for ranks, data, tokens in [
            ({b"aa": 0, b"ab": 1}, b"aaa", [b"aa", b"a"]),         # aa ties at 0 and 1: 0 wins
            ({b"aa": 0, b"ab": 1}, b"aaab", [b"aa", b"ab"]),       # then a+b is ranked anew
            ({b"aa": 0, b"aaa": 1}, b"aaaaa", [b"aa", b"aaa"])]:   # a+a (0) before aa+a (1)
        encoder = {bytes([b]): b for b in range(256)} | {t: 256 + r for t, r in ranks.items()}
        assert encode_naive(data, ranks) == tokens
        assert_encoders_match_naive(ranks, encoder, [data])


def test_numba_encoder_refuses_a_chunk_past_its_limit(monkeypatch):
    fast = pytest.importorskip("tinygpt.tokenizer.fast")
    monkeypatch.setattr(fast, "_MAX_CHUNK", 10)  # stands for 2**31 - 1, too big to allocate here
    tables = fast.make_tables(list(range(256)), {b"xx": 0}, {bytes([b]): b for b in range(256)}
                              | {b"xx": 256})
    assert fast.encode_batch([b"x" * 10], tables) == [(256,) * 5]
    with pytest.raises(ValueError, match="chunk of 11 bytes.*limit is 10 bytes"):
        fast.encode_batch([b"x" * 11], tables)
