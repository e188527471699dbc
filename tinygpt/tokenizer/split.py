"""Pre-splitting: how text is cut into chunks before byte-pair encoding.

BPE never merges across chunk boundaries, so the split decides, for example, that " dog" is one
chunk (a space glued to the word after it) and that "dog." is two. This module owns the split
patterns of GPT-2 and GPT-4 (for the `regex` package, which knows Unicode classes such as
\\p{L}, letters, and \\p{N}, numbers), and `ascii_split`, the same split spelled for Python's
faster built-in `re` when the text is plain ASCII.

Example:
    regex.findall(GPT2_SPLIT_PATTERN, "Hello world's 123!!") ->
        ["Hello", " world", "'s", " 123", "!!"]
"""
import re

# The pre-split patterns, for the `regex` package. GPT-2's as published with GPT-2 (tiktoken's
# r50k pattern is an equivalent, faster spelling); GPT-4's is tiktoken's cl100k_base pattern.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
                      r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")

# On ASCII text the Unicode classes shrink to these (\s is Unicode White_Space, as in `regex`;
# the built-in `re`'s own \s would also match \x1c-\x1f).
_ASCII_CLASSES = {r"\p{L}": "A-Za-z", r"\p{N}": "0-9", r"\s": r"\t\n\x0b\x0c\r "}


def ascii_split(pattern):
    r"""`pattern` for ASCII-only text, compiled with the built-in `re`, or None if it can't be.

    `re` runs these patterns faster than `regex`, but knows no \p{L} or \p{N}. On ASCII text
    they are plain ranges, so we spell them out; any other Unicode-aware escape (\w, \d,
    \p{Lu}, ...) makes us give up and keep `regex`.

    Example:
        ascii_split(r" ?\p{L}+|\s+(?!\S)").pattern
        -> r" ?[A-Za-z]+|[\t\n\x0b\x0c\r ]+(?![^\t\n\x0b\x0c\r ])"
    """
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            esc = pattern[i:i + 5] if pattern.startswith(r"\p{", i) else pattern[i:i + 2]
            if esc in _ASCII_CLASSES:  # inside [...] the ranges go in bare
                out.append(_ASCII_CLASSES[esc] if in_class else f"[{_ASCII_CLASSES[esc]}]")
            elif esc == r"\S" and not in_class:
                out.append("[^" + _ASCII_CLASSES[r"\s"] + "]")
            elif esc[1].isalpha() and esc[1] not in "rntfvxuU":
                return None  # \w, \d, \b, \p{Lu}, ...: Unicode-aware, or unknown to `re`
            else:
                out.append(esc)
            i += len(esc)
            continue
        if c == "[" and not in_class:
            if pattern.startswith(("[]", "[^]"), i):
                return None  # a literal "]" first in a class: not worth parsing
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    try:
        return re.compile("".join(out))
    except re.error:
        return None
