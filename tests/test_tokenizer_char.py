"""Tests for CharTokenizer (tinygpt/tokenizer/char.py): round trips, errors that name the
character or id, its file, and nanoGPT's 65-character Shakespeare vocabulary.
"""
import os

import pytest
from hypothesis import given, settings

from test_tokenizer import DATA_DIR, corrupt, needs_data, texts
from tinygpt.tokenizer import CharTokenizer, load_tokenizer


@settings(max_examples=100)
@given(text=texts.filter(bool))
def test_char_round_trip(text):
    tok = CharTokenizer(text)
    ids = tok.encode(text)
    assert len(ids) == len(text) and max(ids) < tok.vocab_size == len(set(text))
    assert tok.decode(ids) == text


def test_char_tokenizer(tmp_path):
    tok = CharTokenizer("hello\n")
    assert tok.encode("hole") == [2, 4, 3, 1]  # sorted: "\n" "e" "h" "l" "o"
    assert tok.itos[tok.stoi["h"]] == "h" and tok.decode([2, 1]) == "he"
    with pytest.raises(ValueError, match=r"'z' \(U\+007A\) at index 1 .* 5 characters"):
        tok.encode("hz")
    with pytest.raises(ValueError):
        CharTokenizer("")
    with pytest.raises(ValueError, match="token id 5 is out of range for vocab_size 5"):
        tok.decode([5])
    tok.save(tmp_path / "c.tok")
    loaded = load_tokenizer(tmp_path / "c.tok")
    assert isinstance(loaded, CharTokenizer) and loaded.stoi == tok.stoi
    corrupt(tmp_path / "c.tok", lambda ls: ls[:3] + [ls[2]] + ls[4:])  # a repeated character
    with pytest.raises(ValueError, match=r"c\.tok:4:"):
        CharTokenizer.load(tmp_path / "c.tok")
    corrupt(tmp_path / "c.tok", lambda ls: ls[:-1])
    with pytest.raises(ValueError, match=r"c\.tok:\d+:"):
        CharTokenizer.load(tmp_path / "c.tok")


@needs_data
def test_char_tokenizer_on_shakespeare():
    with open(os.path.join(DATA_DIR, "tinyshakespeare.txt"), encoding="utf-8") as f:
        text = f.read()
    tok = CharTokenizer(text)
    assert tok.vocab_size == 65  # nanoGPT's shakespeare_char vocabulary
    assert tok.decode(tok.encode(text)) == text
