"""Tests for tokenizer files (tinygpt/tokenizer/files.py): save/load round trips, the permissions
and atomicity of a save, every kind of corrupt or foreign file named with its line, and finding
GPT-2's files. CharTokenizer's file is tested in test_tokenizer_char.py.
"""
import os

import pytest
from hypothesis import given, settings

from test_tokenizer import CORPUS, corrupt, gpt2, texts, trained, with_special  # noqa: F401
from tinygpt.tokenizer import BPETokenizer, load_tokenizer


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
