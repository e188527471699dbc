"""Tests for tinygpt.tokenizer: GPT-2 exactness against tiktoken, round trips, the fast trainer
against a slow reference trainer written here, and bad input of every kind.

GPT-2's files and Tiny Shakespeare come from $TINYGPT_DATA_DIR; tiktoken is built here from
those same files, so no test needs the network.
"""
import json
import os

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt.bpe_split import ascii_split
from tinygpt.tokenizer import (GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, BPETokenizer,
                               CharTokenizer, load_tokenizer)

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


@settings(max_examples=100)
@given(text=texts)
def test_numba_kernel_matches_python_loop(gpt2, text):
    bpe_fast = pytest.importorskip("tinygpt.bpe_fast")
    tables = bpe_fast.make_tables(gpt2.byte_ids, gpt2._pair_ranks, gpt2._rank_ids)
    datas = [c.encode("utf-8") for c in regex.findall(GPT2_SPLIT_PATTERN, text)]
    assert bpe_fast.encode_batch(datas, tables) == [gpt2._bpe_python(d) for d in datas]


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
@given(corpus=st.text(alphabet="ab c\n'é1", min_size=1, max_size=300), text=texts,
       extra=st.integers(0, 60))
def test_tiktoken_agrees_on_hypothesis_trained_vocab(corpus, text, extra):
    tok = BPETokenizer(GPT2_SPLIT_PATTERN)
    tok.train(corpus, 256 + extra)
    enc = tiktoken_from(tok, GPT2_SPLIT_PATTERN)  # also asserts the token bytes are distinct
    for s in (corpus, text, corpus + text):
        assert tok.encode_ordinary(s) == enc.encode_ordinary(s)
        assert tok.decode(tok.encode_ordinary(s)) == s


# --- the fast trainer against a slow, obviously correct one -------------------------------------

def reference_train(text, pattern, vocab_size):
    """minbpe-style: recount every pair of every chunk for each merge; highest count wins,
    ties go to the smallest (id0, id1)."""
    chunks = [list(c.encode("utf-8")) for c in regex.findall(pattern, text)]
    merges = {}
    for idx in range(256, vocab_size):
        stats = {}
        for ids in chunks:
            for pair in zip(ids, ids[1:]):
                stats[pair] = stats.get(pair, 0) + 1
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))
        new_chunks = []
        for ids in chunks:
            out, i = [], 0
            while i < len(ids):
                if ids[i:i + 2] == list(pair):
                    out.append(idx)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            new_chunks.append(out)
        chunks = new_chunks
        merges[pair] = idx
    return merges


@settings(max_examples=300)
@given(text=st.one_of(st.text(alphabet="aab c\n'", min_size=1, max_size=300),
                      texts.filter(bool)),
       vocab_size=st.integers(256, 300), gpt4=st.booleans())
def test_fast_trainer_matches_reference(text, vocab_size, gpt4):
    pattern = GPT4_SPLIT_PATTERN if gpt4 else GPT2_SPLIT_PATTERN
    tok = BPETokenizer(pattern)
    tok.train(text, vocab_size)
    assert list(tok.merges.items()) == list(reference_train(text, pattern, vocab_size).items())


@needs_data
def test_fast_trainer_matches_reference_on_real_text():
    with open(os.path.join(DATA_DIR, "the-verdict.txt"), encoding="utf-8") as f:
        text = f.read()
    tok = BPETokenizer()
    tok.train(text, 300)
    assert list(tok.merges.items()) == list(reference_train(text, GPT4_SPLIT_PATTERN, 300).items())


def test_train_reports_progress(capsys):
    BPETokenizer().train(CORPUS, 300, verbose=True)
    assert "merge 44/44" in capsys.readouterr().out


# --- files --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def with_special(trained):
    tok = BPETokenizer(trained.pattern)
    tok.train(CORPUS, 300)
    tok.register_special_tokens({"<|endoftext|>": 1000, "<|end|>": 1001})
    return tok


@settings(max_examples=20)
@given(text=texts)
def test_save_load_round_trip(with_special, tmp_path_factory, text):
    path = tmp_path_factory.mktemp("tok") / "t.bpe"
    with_special.save(path)
    loaded = load_tokenizer(path)
    assert isinstance(loaded, BPETokenizer) and loaded.pattern == with_special.pattern
    assert list(loaded.merges.items()) == list(with_special.merges.items())
    assert loaded.special_tokens == with_special.special_tokens
    assert loaded.vocab == with_special.vocab
    assert loaded.encode(text, allowed_special="all") == \
        with_special.encode(text, allowed_special="all")
    assert os.listdir(path.parent) == ["t.bpe"]  # no temporary file left behind


def test_longest_special_token_wins(with_special):
    assert with_special.encode("<|endoftext|>", allowed_special="all") == [1000]
    assert with_special.encode("<|end|>", allowed_special="all") == [1001]


def test_chunk_cache_is_bounded(trained, monkeypatch):
    import tinygpt.tokenizer as tokenizer_module
    monkeypatch.setattr(tokenizer_module, "_CACHE_LIMIT", 5)
    small = BPETokenizer(trained.pattern)
    small.train(CORPUS, 400)
    for text in (CORPUS, CORPUS[::-1], " ".join(PIECES)):
        assert small.encode_ordinary(text) == trained.encode_ordinary(text)
        assert len(small._cache) <= max(5, len(set(regex.findall(trained.pattern, text))))


def test_gpt2_save_load_round_trip(gpt2, tmp_path):
    gpt2.save(tmp_path / "gpt2.bpe")
    loaded = BPETokenizer.load(tmp_path / "gpt2.bpe")
    assert loaded.merges == gpt2.merges and loaded.byte_ids == gpt2.byte_ids
    assert loaded.encode("Hello<|endoftext|>", allowed_special="all") == [15496, 50256]


@pytest.fixture
def saved(tmp_path):
    tok = BPETokenizer()
    tok.train(CORPUS, 300)
    tok.register_special_tokens({"<|endoftext|>": 300})
    tok.save(tmp_path / "t.bpe")
    return tmp_path / "t.bpe"


def corrupt(path, edit):
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    path.write_text("\n".join(edit(lines)) + "\n", encoding="utf-8")


@pytest.mark.parametrize("edit, line", [
    (lambda ls: ls[:-5], 46),                                  # truncated between lines
    (lambda ls: ls + ["1 2 999 \"x\""], 51),                   # one line too many
    (lambda ls: ls[:10] + ["garbage line"] + ls[11:], 11),     # garbage merge line
    (lambda ls: ls[:10] + ["104 101 256 \"XY\""] + ls[11:], 11),  # text does not match bytes
    (lambda ls: ls[:10] + ["104 9999 256 \"h?\""] + ls[11:], 11),  # undefined id
    (lambda ls: ls[:10] + [ls[9]] + ls[11:], 11),              # a repeated merge
    (lambda ls: ["tinygpt-bpe 2"] + ls[1:], 1),                # unknown version
    (lambda ls: ls[:1] + ["pattern \"(\""] + ls[2:], 2),       # pattern does not compile
    (lambda ls: ls[:2] + ["specials x"] + ls[3:], 3),          # bad count
    (lambda ls: ls[:3] + ["65 \"<|endoftext|>\""] + ls[4:], 4),  # special id taken by a byte
    (lambda ls: ls[:4] + ["bytes 1 2 3"] + ls[5:], 5),          # bytes line too short
])
def test_corrupt_bpe_file_names_the_line(saved, edit, line):
    corrupt(saved, edit)
    with pytest.raises(ValueError, match=rf"t\.bpe:{line}:"):
        BPETokenizer.load(saved)


def test_cut_file_and_foreign_files(saved, tmp_path):
    data = saved.read_bytes()
    saved.write_bytes(data[:len(data) // 2])  # cut mid-line
    with pytest.raises(ValueError, match="truncated"):
        BPETokenizer.load(saved)
    foreign = tmp_path / "foreign"
    for content in [b'{"hello": 1}\n', bytes(range(256)), b"", "tinygpt-char 1\n".encode()]:
        foreign.write_bytes(content)
        with pytest.raises(ValueError, match=r"foreign:1:"):
            BPETokenizer.load(foreign)
    foreign.write_bytes(b'{"hello": 1}\n')
    with pytest.raises(ValueError, match=r"foreign:1: not a tinygpt tokenizer"):
        load_tokenizer(foreign)


def test_failed_save_keeps_the_old_file(saved, monkeypatch):
    before = saved.read_bytes()

    def fail(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail)
    tok = BPETokenizer()
    tok.train(CORPUS, 280)
    with pytest.raises(OSError):
        tok.save(saved)
    assert saved.read_bytes() == before and os.listdir(saved.parent) == ["t.bpe"]


def test_from_gpt2_needs_the_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("TINYGPT_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="TINYGPT_DATA_DIR"):
        BPETokenizer.from_gpt2()
    monkeypatch.setenv("TINYGPT_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="TINYGPT_DATA_DIR"):
        BPETokenizer.from_gpt2()


# --- bad input ----------------------------------------------------------------------------------

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


# --- CharTokenizer ------------------------------------------------------------------------------

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
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("hz")
    with pytest.raises(ValueError):
        CharTokenizer("")
    with pytest.raises(ValueError, match="5"):
        tok.decode([5])
    tok.save(tmp_path / "c.tok")
    loaded = load_tokenizer(tmp_path / "c.tok")
    assert isinstance(loaded, CharTokenizer) and loaded.chars == tok.chars
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
