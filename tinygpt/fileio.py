"""Writing files so that a crash never leaves half of one: the one atomic writer every file of
tinygpt goes through (checkpoints, tokenizers, token files, Hugging Face folders, results).

`atomic_write(path, write)`: `write(f)` fills a new temp file in the same folder, which is
fsynced and then renamed over `path` (os.replace), so a reader, a crash or a full disk sees
either the old file or the new one, never a mix.

What it leaves out: reading files (each format's own module) and deciding when to save.
"""
import os
import tempfile


def _umask():
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Create or replace the file `path` atomically; `write(f)` writes its bytes to `f`, a binary
    file object. The file gets the usual permissions (0666 less the umask, e.g. 0644)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # mkstemp creates a fresh name exclusively (O_EXCL), so it never writes through a symlink
    # someone planted at a predictable name; it makes the file 0600, hence the chmod
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a link at `path` itself, never the file it points to
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
