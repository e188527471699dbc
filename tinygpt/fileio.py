"""Writing files so that a crash never leaves half of one: the one atomic writer every file of
tinygpt goes through (checkpoints, tokenizers, token files, Hugging Face folders, results).

`atomic_write(path, write)`: `write(f)` fills a new temp file in the same folder, which is
fsynced and then renamed over `path` (os.replace), so a reader, a crash or a full disk sees
either the old file or the new one, never a mix. `lock_folder` keeps two runs out of one
folder, and `remove_stale_temps` clears what a killed write left behind. `file_in_folder` keeps
a file name read from a file inside its folder, and `read_file` reads a small file only if it is
one: a regular file under a size cap (never /dev/zero, a FIFO or a 10 GB file).

What it leaves out: reading files (each format's own module) and deciding when to save.
"""
import os
import stat
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
    make_folder(folder)
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


def remove_stale_temps(folder, names):
    """Remove the temp files that an atomic write of one of `names` left in `folder` when its
    process was killed mid-write. Call it only while holding the folder's lock (`lock_folder`),
    so that no live writer owns them. Returns the paths removed."""
    removed = []
    for entry in os.listdir(folder) if os.path.isdir(folder) else []:
        if entry.endswith(".tmp") and any(entry.startswith(f".{name}.") for name in names):
            path = os.path.join(folder, entry)
            if os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
                removed.append(path)
    return removed


def lock_folder(folder, name=".lock"):
    """Take an exclusive lock on `folder` for this process's lifetime (the OS drops it when the
    process ends, even on kill -9). A second process gets a ValueError at once instead of two
    runs overwriting each other's files. Returns the open lock file: keep a reference to it."""
    make_folder(folder)
    f = open(os.path.join(folder, name), "a+")
    try:
        import fcntl  # POSIX only; elsewhere the folder is not locked
    except ImportError:
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise ValueError(f"another run is using {folder} (it holds {os.path.join(folder, name)}); "
                         "wait for it to finish or pass another --out-dir") from None
    return f


def file_in_folder(folder, name, source):
    """The path of the file `name` inside `folder`, where `name` was read from the file `source`
    (a checkpoint's tokenizer_file, a meta.json's tokenizer). Only a plain file name is allowed,
    so a crafted file cannot point a reader at another folder (../../etc/passwd, /etc/passwd)."""
    if not isinstance(name, str) or name in ("", ".", "..") or os.path.basename(name) != name or "\0" in name:
        raise ValueError(f"{source}: the file it names must be a plain file name in {folder}, "
                         f"got {str(name)[:80]!r}")
    return os.path.join(folder, name)


def make_folder(folder):
    """Create `folder` (and its parents) unless it exists; a file in its place, or a folder that
    cannot be made, raises ValueError naming it."""
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"{folder} exists and is not a folder") from None
    except OSError as e:  # a file in the way higher up, no permission, a read-only disk
        raise ValueError(f"cannot create the folder {folder}: {e.strerror}") from None


def read_file(path, max_bytes, what):
    """The bytes of the file `path`, which should be `what` ("a tokenizer file"). Anything but a
    regular file (a folder, /dev/zero, a FIFO that would block) or a file over `max_bytes` raises
    ValueError naming it and the limit, before anything is read; a missing file FileNotFoundError."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: expected {what}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read {what}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ValueError(f"{path} is {kind}, but should be {what}")
    if info.st_size > max_bytes:
        raise ValueError(f"{path} is {info.st_size:,} bytes, more than the {max_bytes:,} that {what} may hold")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # subtle: the file may have grown since stat
    except OSError as e:
        raise ValueError(f"{path}: cannot read {what}: {e.strerror}") from None
    if len(data) > max_bytes:
        raise ValueError(f"{path} holds more than the {max_bytes:,} bytes that {what} may hold")
    return data
