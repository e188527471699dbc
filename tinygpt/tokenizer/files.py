"""Tokenizer files: tinygpt's two formats, and GPT-2's published encoder.json + vocab.bpe.

Files become plain data (strings, ints, dicts) and back; the tokenizer classes call these from
save/load. tinygpt's formats are UTF-8 text, one record a line, every count stated up front so
that a truncated file is caught. A BPE file (ids are ints; `"..."` is a JSON string):

    tinygpt-bpe 1
    pattern "'(?:[sdmt]|ll|ve|re)| ?\\p{L}+|..."    the regex pre-split pattern
    specials 1
    50256 "<|endoftext|>"                            id and text of each special token
    bytes 0 1 2 ... 255                              the id of each byte value
    merges 3840
    101 32 256 "e "                                  id0 id1 new_id, in merge order; the last
    ...                                              field is the new token's text, checked on load

A char file is `tinygpt-char 1`, `chars <n>`, then one JSON string per character, in id order.
Every parse error is a ValueError that starts with `path:line:`. A message quotes a file's fields
only once its first line has shown it is a tokenizer file (tinygpt's version line, vocab.bpe's
"#version"); before that, and in encoder.json, which has no such line, it gives positions and
types, never content, so that a path mistaken or planted (../../etc/passwd) cannot leak what it
holds. Only regular files of at most MAX_FILE_BYTES are read (`fileio.read_file`).
"""
import json
import os

from ..fileio import read_file

CHAR_VERSION = "tinygpt-char 1"
BPE_VERSION = "tinygpt-bpe 1"
MAX_ID = 2**31 - 1  # ids are int32 in the numba kernel
MAX_FILE_BYTES = 64 << 20  # GPT-2's 50,257 tokens take 1 MB: room for vocabularies 40x as big


def read_lines(path, version=None):
    """The lines of a text file, without their newlines; anything not UTF-8 raises ValueError.

    With `version`, the first line must be exactly that: checked before anything else, so a
    foreign file is named as such. subtle: every line must end with "\\n", so a file cut in the
    middle of a line is caught here.
    """
    lines = read_bytes(path).split(b"\n")
    if version is not None and lines[0] != version.encode():
        raise ValueError(f"{path}:1: not a {version!r} file (its first line is not {version!r})")
    if lines[-1] != b"":
        raise ValueError(f"{path}:{len(lines)}: truncated file (last line has no newline)")
    out = []
    for n, line in enumerate(lines[:-1], start=1):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{n}: not UTF-8 text (byte {e.start + 1} of the line)") from None
    return out


def read_version(path):
    """The first line of a file, as bytes."""
    return read_bytes(path).split(b"\n", 1)[0]


def read_bytes(path):
    """The whole file as bytes; anything but a regular file of at most MAX_FILE_BYTES raises
    ValueError, a missing file FileNotFoundError."""
    return read_file(path, MAX_FILE_BYTES, "a tokenizer file")


def bytes_to_unicode():
    """GPT-2's byte -> printable character table, used to write bytes in encoder.json/vocab.bpe.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are moved to chr(256 + n),
    in byte order, so that no token string contains whitespace or control characters.

    Example:
        bytes_to_unicode()[ord("A")] -> "A";  bytes_to_unicode()[ord(" ")] -> "Ġ"  (chr(288))
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) \
        | set(range(ord("®"), ord("ÿ") + 1))
    table, moved = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + moved)
            moved += 1
    return table


def render_token(t):
    """A token's bytes as one readable JSON string; invalid UTF-8 shows as a \\xNN escape.

    Example:
        render_token(b"hi\\n") -> '"hi\\\\n"'   render_token(b"\\xe2") -> '"\\\\xe2"'
    """
    return json.dumps(t.decode("utf-8", errors="backslashreplace"), ensure_ascii=False)


def _int(field, path, lineno, what):
    """`field` as a non-negative int no larger than MAX_ID, or a ValueError naming the line."""
    if not (field.isascii() and field.isdigit()) or int(field) > MAX_ID:
        raise ValueError(f"{path}:{lineno}: {what} must be an integer in [0, {MAX_ID}], "
                         f"got {field[:40]!r}")
    return int(field)


def _json_str(field, path, lineno, what):
    try:
        value = json.loads(field)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, str):
        raise ValueError(f"{path}:{lineno}: {what} must be a JSON string, got {field[:40]!r}")
    return value


def _utf8_ok(s):
    """Can UTF-8 encode `s`? Not if it holds a lone surrogate, which JSON can write as \\ud800."""
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _header(lines, i, key, path):
    """The count in line i, which must read `<key> <count>`."""
    parts = lines[i].split(" ") if i < len(lines) else []
    if len(parts) != 2 or parts[0] != key:
        got = lines[i][:40] if i < len(lines) else "end of file"
        raise ValueError(f"{path}:{i + 1}: expected '{key} <count>', got {got!r}")
    return _int(parts[1], path, i + 1, f"the {key} count")


# -----------------------------------------------------------------------------------------------
# tinygpt's formats

def format_chars(chars):
    lines = [CHAR_VERSION, f"chars {len(chars)}"] + [json.dumps(c) for c in chars]
    return "\n".join(lines) + "\n"


def parse_chars(path):
    """The characters of a saved CharTokenizer, in id order (sorted, unique, checked)."""
    lines = read_lines(path, CHAR_VERSION)
    n = _header(lines, 1, "chars", path)
    if len(lines) != n + 2:
        raise ValueError(f"{path}:{min(len(lines), n + 2) + 1}: expected {n} characters after "
                         f"line 2, found {len(lines) - 2} (truncated or extended file)")
    chars = []
    for lineno, line in enumerate(lines[2:], start=3):
        c = _json_str(line, path, lineno, "a character")
        if len(c) != 1:
            raise ValueError(f"{path}:{lineno}: expected one character, got {c[:40]!r}")
        if chars and c <= chars[-1]:
            raise ValueError(f"{path}:{lineno}: characters must be sorted and unique, "
                             f"{c!r} follows {chars[-1]!r}")
        chars.append(c)
    if not chars:
        raise ValueError(f"{path}:2: a char tokenizer needs at least one character")
    return chars


def format_bpe(pattern, special_tokens, byte_ids, merges, vocab):
    lines = [BPE_VERSION, f"pattern {json.dumps(pattern)}", f"specials {len(special_tokens)}"]
    lines += [f"{i} {json.dumps(s)}" for s, i in special_tokens.items()]
    lines.append("bytes " + " ".join(map(str, byte_ids)))
    lines.append(f"merges {len(merges)}")
    lines += [f"{a} {b} {i} {render_token(vocab[i])}" for (a, b), i in merges.items()]
    return "\n".join(lines) + "\n"


def parse_bpe(path):
    """(pattern, special_tokens, byte_ids, merges) of a saved BPETokenizer, fully validated.

    Checks, each with its line number: the version line; a JSON pattern; specials with distinct
    ids; 256 distinct byte ids; each merge names ids defined above it, creates a new id, and its
    text matches the bytes it builds; nothing after the last merge.
    """
    lines = read_lines(path, BPE_VERSION)
    if len(lines) < 2 or not lines[1].startswith("pattern "):
        raise ValueError(f"{path}:2: expected 'pattern <json string>'")
    pattern = _json_str(lines[1][len("pattern "):], path, 2, "the pattern")
    n_special = _header(lines, 2, "specials", path)
    special_tokens, special_lines = {}, {}
    for i in range(3, 3 + n_special):
        fields = lines[i].split(" ", 1) if i < len(lines) else []
        if len(fields) != 2:
            raise ValueError(f"{path}:{i + 1}: expected '<id> <json string>' for a special token")
        idx = _int(fields[0], path, i + 1, "a special token id")
        s = _json_str(fields[1], path, i + 1, "a special token")
        if not s or not _utf8_ok(s):
            raise ValueError(f"{path}:{i + 1}: a special token must be a non-empty string that "
                             f"UTF-8 can encode, got {fields[1][:40]}")
        if s in special_tokens or idx in special_tokens.values():
            raise ValueError(f"{path}:{i + 1}: special token {s!r} or id {idx} repeats")
        special_tokens[s], special_lines[idx] = idx, i + 1
    i = 3 + n_special
    fields = lines[i].split(" ") if i < len(lines) else []
    if len(fields) != 257 or fields[0] != "bytes":
        raise ValueError(f"{path}:{i + 1}: expected 'bytes' and 256 ids")
    byte_ids = [_int(f, path, i + 1, "a byte id") for f in fields[1:]]
    vocab = {idx: bytes([b]) for b, idx in enumerate(byte_ids)}  # id -> bytes
    if len(vocab) < 256:
        raise ValueError(f"{path}:{i + 1}: the 256 byte ids must be distinct")
    n_merges = _header(lines, i + 1, "merges", path)
    first = i + 2
    if len(lines) != first + n_merges:
        raise ValueError(f"{path}:{min(len(lines), first + n_merges) + 1}: expected {n_merges} "
                         f"merges from line {first + 1}, found {len(lines) - first} lines "
                         f"(truncated or extended file)")
    merges = {}
    for lineno, line in enumerate(lines[first:], start=first + 1):
        fields = line.split(" ", 3)
        if len(fields) != 4:
            raise ValueError(f"{path}:{lineno}: expected '<id0> <id1> <new id> <json text>', "
                             f"got {line[:40]!r}")
        a, b, idx = (_int(f, path, lineno, "a merge id") for f in fields[:3])
        if a not in vocab or b not in vocab:
            raise ValueError(f"{path}:{lineno}: merge ({a}, {b}) uses an id not defined above")
        if idx in vocab or (a, b) in merges:
            raise ValueError(f"{path}:{lineno}: merge ({a}, {b}) -> {idx} repeats an id or pair")
        vocab[idx] = vocab[a] + vocab[b]
        if render_token(vocab[idx]) != fields[3]:
            raise ValueError(f"{path}:{lineno}: text {fields[3][:40]} does not match the merged "
                             f"bytes {render_token(vocab[idx])}")
        merges[(a, b)] = idx
    for idx, lineno in special_lines.items():
        if idx in vocab:
            raise ValueError(f"{path}:{lineno}: special token id {idx} is also a regular token id")
    return pattern, special_tokens, byte_ids, merges


# -----------------------------------------------------------------------------------------------
# GPT-2's files

def gpt2_paths():
    """$TINYGPT_DATA_DIR/gpt2/{encoder.json, vocab.bpe}, with a clear error if not there."""
    data_dir = os.environ.get("TINYGPT_DATA_DIR")
    if not data_dir:
        raise ValueError("from_gpt2() without paths needs TINYGPT_DATA_DIR set to the shared data "
                         "directory (holding gpt2/encoder.json and gpt2/vocab.bpe), or pass "
                         "from_gpt2(encoder_json, vocab_bpe)")
    paths = [os.path.join(data_dir, "gpt2", name) for name in ("encoder.json", "vocab.bpe")]
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} not found: set TINYGPT_DATA_DIR to the directory that "
                                    f"holds gpt2/encoder.json and gpt2/vocab.bpe, or pass paths")
    return paths


def parse_gpt2(encoder_json, vocab_bpe):
    """(special_tokens, byte_ids, merges) from GPT-2's encoder.json and vocab.bpe.

    encoder.json maps token strings (bytes written with `bytes_to_unicode`) to ids; vocab.bpe
    lists the merges, rank = line order. subtle: the merged token's id is looked up in
    encoder.json, never assumed to be 256 + rank; byte tokens have ids 0..255 but not in byte order.
    """
    data = read_bytes(encoder_json)
    try:
        encoder = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        lineno = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{encoder_json}:{lineno}: not UTF-8 text (byte {e.start + 1} of the file)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{encoder_json}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(encoder, dict):
        raise ValueError(f"{encoder_json}:1: expected a JSON object of token string -> id")
    tokens = {}  # id -> entry number, to find an id given twice
    for n, i in enumerate(encoder.values(), start=1):
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= MAX_ID:
            got = "one out of range" if isinstance(i, int) and not isinstance(i, bool) else "a " + type(i).__name__
            raise ValueError(f"{encoder_json}: entry {n}: the id must be an integer in [0, {MAX_ID}], got {got}")
        if i in tokens:
            raise ValueError(f"{encoder_json}: entries {tokens[i]} and {n} have the same id {i}")
        tokens[i] = n
    byte_char = bytes_to_unicode()
    if any(c not in encoder for c in byte_char.values()):
        raise ValueError(f"{encoder_json}:1: some of the 256 byte tokens are missing")
    byte_ids = [encoder[byte_char[b]] for b in range(256)]
    lines = read_lines(vocab_bpe)
    if not lines or not lines[0].startswith("#version"):
        raise ValueError(f"{vocab_bpe}:1: expected a '#version' header")
    merges = {}
    defined = set(byte_char.values())  # the tokens that a merge may join: bytes, earlier merges
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split(" ")
        if len(fields) != 2 or fields[0] + fields[1] not in encoder:
            raise ValueError(f"{vocab_bpe}:{lineno}: expected two tokens of encoder.json whose "
                             f"concatenation is one too, got {line[:40]!r}")
        a, b = fields
        if a not in defined or b not in defined:
            raise ValueError(f"{vocab_bpe}:{lineno}: merge {line[:40]!r} joins a token that no "
                             f"line above it makes")
        if a + b in defined:
            raise ValueError(f"{vocab_bpe}:{lineno}: merge {line[:40]!r} makes {(a + b)[:40]!r}, "
                             f"which a line above it (or a byte) already makes")
        defined.add(a + b)
        merges[(encoder[a], encoder[b])] = encoder[a + b]
    special_tokens = {"<|endoftext|>": encoder.get("<|endoftext|>", 50256)}
    if len(encoder) != 256 + len(merges) + (1 if "<|endoftext|>" in encoder else 0):
        raise ValueError(f"{encoder_json}:1: {len(encoder)} tokens, but 256 bytes and "
                         f"{len(merges)} merges in {vocab_bpe} account for {256 + len(merges)}")
    return special_tokens, byte_ids, merges
