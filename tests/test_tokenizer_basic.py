"""Tests for naive BPE (tinygpt/tokenizer/basic.py) against the fast versions: the fast trainer
(training.py) must learn exactly the naive trainer's merges, in the same order, and the numba
encoder (fast.py) must give exactly the naive encoder's ids.
"""
import os

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from test_tokenizer import (CORPUS, DATA_DIR, gpt2, needs_data, small_trained,  # noqa: F401
                            texts)
from tinygpt.tokenizer import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, BPETokenizer
from tinygpt.tokenizer.basic import encode_naive, get_stats, merge, train_naive
from tinygpt.tokenizer.training import train_fast


def test_docstring_examples():
    assert get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert merge([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]
    assert merge([5, 5, 5], (5, 5), 6) == [6, 5]
    chunks = ["hello", " hell", " hell"]
    assert train_naive(chunks, 2) == train_fast(chunks, 2) == {(101, 108): 256, (104, 256): 257}
    assert encode_naive(b"hello", {b"ll": 0, b"he": 1, b"hell": 2}) == [b"hell", b"o"]


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


# --- the numba encoder against the naive one ----------------------------------------------------

def assert_fast_encoder_matches_naive(tok, text):
    fast = pytest.importorskip("tinygpt.tokenizer.fast")
    tables = fast.make_tables(tok.byte_ids, tok._ranks, tok._encoder)
    datas = [c.encode("utf-8") for c in regex.findall(tok.pattern, text)]
    naive = [tuple(tok._encoder[t] for t in encode_naive(d, tok._ranks)) for d in datas]
    assert fast.encode_batch(datas, tables) == naive


@settings(max_examples=100)
@given(text=texts)
def test_fast_encoder_matches_naive_gpt2(gpt2, text):  # noqa: F811 (the fixture)
    assert_fast_encoder_matches_naive(gpt2, text)


@settings(max_examples=100)
@given(corpus_tok=small_trained(), text=texts)
def test_fast_encoder_matches_naive_trained(corpus_tok, text):
    corpus, tok = corpus_tok
    assert_fast_encoder_matches_naive(tok, corpus + text)
