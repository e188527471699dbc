"""Tests for tokenizer files (tinygpt/tokenizer/files.py): save/load round trips, the permissions
and atomicity of a save, every kind of corrupt or foreign file named with its line (tinygpt's and
GPT-2's), ids up to the largest allowed, and finding GPT-2's files. CharTokenizer's file is
tested in test_tokenizer_char.py.
"""
import json
import os

import pytest
from hypothesis import given, settings

from test_tokenizer import (CORPUS, DATA_DIR, corrupt, gpt2, needs_data, texts,  # noqa: F401
                            trained, with_special)
from tinygpt.tokenizer import BPETokenizer, load_tokenizer
from tinygpt.tokenizer.files import MAX_ID


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


def test_saved_file_has_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    BPETokenizer().save(tmp_path / "t.bpe")
    assert os.stat(tmp_path / "t.bpe").st_mode & 0o777 == 0o666 & ~umask


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
    (lambda ls: ls[:3] + ['300 ""'] + ls[4:], 4),              # empty special token
    (lambda ls: ls[:3] + ['300 "\\ud800"'] + ls[4:], 4),       # not encodable as UTF-8
    (lambda ls: ls[:3] + ['-1 "<|endoftext|>"'] + ls[4:], 4),  # negative id
    (lambda ls: ls[:2] + ["specials 2147483647"] + ls[3:], 5),  # huge count: line 5 is no special
    (lambda ls: ls[:5] + ["merges 2147483647"] + ls[6:], 51),  # huge count: the file ends first
    (lambda ls: ls[:6] + ["32 32 2147483648 \"  \""] + ls[7:], 7),  # id past int32
    (lambda ls: ls[:1] + ['pattern "(a+)+$"'] + ls[2:], 2),    # a capturing group
    (lambda ls: ls[:1] + ['pattern "\\\\p{L}+"'] + ls[2:], 2),  # drops all but letters
    (lambda ls: ls[:1] + ['pattern "(?:a|a)+$|[\\\\s\\\\S]"'] + ls[2:], 2),  # backtracks: 1 s
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


def test_a_directory_is_no_tokenizer_file(tmp_path):
    for load in (load_tokenizer, BPETokenizer.load):
        with pytest.raises(ValueError, match="is a directory"):
            load(tmp_path)


@pytest.mark.parametrize("numba_min_bytes", [0, 10**9])  # the numba kernel, then encode_heap
def test_ids_up_to_the_largest_allowed(saved, monkeypatch, numba_min_bytes):
    import tinygpt.tokenizer.bpe as bpe_module
    monkeypatch.setattr(bpe_module, "_NUMBA_MIN_BYTES", numba_min_bytes)
    tok = BPETokenizer.load(saved)
    big = {i: MAX_ID - i for i in range(256, 301)}  # merged and special ids, from the top down

    def move_ids(lines):  # the merge lines: id0 id1 new_id text; the special's line: id text
        out = []
        for n, line in enumerate(lines):
            f = line.split(" ")
            if n == 3 or (n > 5 and len(f) >= 4):
                k = 3 if n > 5 else 1
                f[:k] = [str(big.get(int(x), int(x))) for x in f[:k]]
            out.append(" ".join(f))
        return out
    corrupt(saved, move_ids)
    moved = BPETokenizer.load(saved)
    assert moved.vocab_size == MAX_ID + 1 - 256 and moved.eot_token == MAX_ID - 300
    text = CORPUS + "<|endoftext|>"
    ids = tok.encode(text, allowed_special="all")
    assert moved.encode(text, allowed_special="all") == [big.get(i, i) for i in ids]
    assert moved.decode([big.get(i, i) for i in ids]) == text


# --- GPT-2's files -------------------------------------------------------------------------------

@pytest.fixture
def small_gpt2(tmp_path):
    """(encoder.json, vocab.bpe) of GPT-2's first 300 merges, whose ids are 256 + line number."""
    if not DATA_DIR:
        pytest.skip("TINYGPT_DATA_DIR is not set")
    with open(os.path.join(DATA_DIR, "gpt2", "encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    with open(os.path.join(DATA_DIR, "gpt2", "vocab.bpe"), encoding="utf-8") as f:
        merges = f.read().split("\n")[:301]
    encoder = {t: i for t, i in encoder.items() if i < 256 + 300 or t == "<|endoftext|>"}
    paths = tmp_path / "encoder.json", tmp_path / "vocab.bpe"
    paths[0].write_text(json.dumps(encoder), encoding="utf-8")
    paths[1].write_text("\n".join(merges) + "\n", encoding="utf-8")
    return paths, encoder, merges


def test_small_gpt2_files_load(small_gpt2):
    (enc_path, bpe_path), _, _ = small_gpt2
    tok = BPETokenizer.from_gpt2(enc_path, bpe_path)
    assert tok.decode(tok.encode("hello world")) == "hello world" and tok.eot_token == 50256


def _first_merge_of_merged_tokens(merges):
    return next(n for n, line in enumerate(merges[1:], 1) if min(map(len, line.split(" "))) > 1)


@pytest.mark.parametrize("edit, name, match", [
    (lambda e, m: (json.dumps(e).replace('"!"', '"\udcff"'), m), "encoder.json",
     r"encoder\.json:1: not UTF-8"),  # \udcff: the byte 0xff, by surrogateescape below
    (lambda e, m: ({**e, "!": -1}, m), "encoder.json", r"entry 1: the id must be an integer in \[0, 2147483647\]"),
    (lambda e, m: ({**e, "!": True}, m), "encoder.json", r"entry 1: .*, got a bool"),
    (lambda e, m: ({**e, "!": 2**40}, m), "encoder.json", r"entry 1: .*, got one out of range"),
    (lambda e, m: ({**e, "!": 1.5}, m), "encoder.json", r"entry 1: .*, got a float"),
    (lambda e, m: ({**e, "!": e['"']}, m), "encoder.json", "the same id 1"),
    (lambda e, m: ({**e, "<|endoftext|>": -1}, m), "encoder.json", "got one out of range"),
    (lambda e, m: ({t: (50256 if i == 555 else i) for t, i in e.items() if i != 50256}, m),
     "encoder.json", "50256 is already token"),  # <|endoftext|>'s default id taken by a merge
    (lambda e, m: (e, [m[0], m[_first_merge_of_merged_tokens(m)]] + m[1:]), "vocab.bpe",
     "no line above it makes"),                  # a merge of tokens made by later lines
    (lambda e, m: (e, m[:2] + m[1:]), "vocab.bpe", "already makes"),  # a repeated merge
    (lambda e, m: (e, m[:5] + ["\udcff \udcfe"] + m[6:]), "vocab.bpe", r"vocab\.bpe:6: not UTF-8"),
    (lambda e, m: (e, m[:150]), "encoder.json", "account for"),  # fewer merges than tokens
])
def test_corrupt_gpt2_files_name_the_file(small_gpt2, edit, name, match):
    (enc_path, bpe_path), encoder, merges = small_gpt2
    encoder, merges = edit(encoder, merges)
    enc_path.write_bytes((encoder if isinstance(encoder, str) else json.dumps(encoder))
                         .encode("utf-8", "surrogateescape"))
    bpe_path.write_bytes(("\n".join(merges) + "\n").encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match=match) as e:
        BPETokenizer.from_gpt2(enc_path, bpe_path)
    assert name in str(e.value)


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
