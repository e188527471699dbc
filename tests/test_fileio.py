"""The one atomic writer: what a reader sees after a write, a failed write, and a planted link."""
import os
import stat

import pytest

from tinygpt.fileio import atomic_write


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_and_replaces_with_the_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "f.bin"  # the folder is made too
    old = os.umask(0o022)
    try:
        atomic_write(str(path), lambda f: f.write(b"one"))
        assert path.read_bytes() == b"one" and mode(path) == 0o644
        atomic_write(str(path), lambda f: f.write(b"two"))
        assert path.read_bytes() == b"two"
        os.umask(0o077)
        atomic_write(str(path), lambda f: f.write(b"three"))
        assert mode(path) == 0o600  # the umask is honoured, as open() would
    finally:
        os.umask(old)
    assert os.listdir(path.parent) == ["f.bin"]  # no temp file left behind


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"good")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(str(path), fail)
    assert path.read_bytes() == b"good" and os.listdir(tmp_path) == ["f.bin"]


def test_a_link_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    path = tmp_path / "ckpt.npz"
    os.symlink(victim, path)
    atomic_write(str(path), lambda f: f.write(b"new"))
    assert victim.read_bytes() == b"keep me"
    assert not path.is_symlink() and path.read_bytes() == b"new"


def test_a_link_planted_at_the_temp_name_is_not_followed(tmp_path, monkeypatch):
    """The temp file is created exclusively: a symlink waiting at the name it would take (the old
    predictable `.f.<pid>.tmp`, or the first name mkstemp tries) is skipped, never written through."""
    import tempfile
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    path = tmp_path / "ckpt.npz"
    os.symlink(victim, tmp_path / f".ckpt.npz.{os.getpid()}.tmp")   # the old scheme's name
    os.symlink(victim, tmp_path / ".ckpt.npz.planted.tmp")          # the name mkstemp tries first
    names = iter(["planted", "fresh"])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    atomic_write(str(path), lambda f: f.write(b"new"))
    assert victim.read_bytes() == b"keep me" and path.read_bytes() == b"new" and not path.is_symlink()
