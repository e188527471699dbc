"""Pre-splitting: how text is cut into chunks before byte-pair encoding.

BPE never merges across chunk boundaries, so the split decides, for example, that " dog" is one
chunk (a space glued to the word after it) and that "dog." is two. This module owns the split
patterns of GPT-2 and GPT-4 (for the `regex` package, which knows Unicode classes such as
\\p{L}, letters, and \\p{N}, numbers), and `ascii_split`, the same split spelled for Python's
faster built-in `re` when the text is plain ASCII. It also owns `Splitter`, which runs a pattern
on a text and refuses a pattern that would lose text or hang (catastrophic backtracking).

Example:
    regex.findall(GPT2_SPLIT_PATTERN, "Hello world's 123!!") ->
        ["Hello", " world", "'s", " 123", "!!"]
"""
import re

import regex

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


# `re` has no timeout, and these two have no nested quantifier to backtrack in, so only they run
# on `re` (on ASCII text) and without a time limit
TRUSTED_PATTERNS = (GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN)
SPLIT_SECONDS = 1.0            # any other pattern gets this long for a split, plus...
SPLIT_SECONDS_PER_CHAR = 1e-5  # ...this per character, so a long text is no false alarm
# Runs of each kind of character: where nested quantifiers such as (?:a|a)+$ blow up.
_PROBE = "Hello world's 123!!\r\n" + "".join(c * 32 for c in "a1!' \n\t\u00e9\u65e5") + "end"


class Splitter:
    r"""Cuts text into chunks with a split pattern, after checking that the pattern is sane.

    Refused with ValueError: a pattern that does not compile; one with a capturing group
    (findall would return the group, not the whole chunk); one whose chunks of a probe text
    skip characters (decoding would not give the text back); one that takes over SPLIT_SECONDS
    on that probe. A pattern other than TRUSTED_PATTERNS keeps a time limit on every text.

    Example:
        Splitter(GPT2_SPLIT_PATTERN)("Hello world") -> ["Hello", " world"]
        Splitter(r"(?:a|a)+$|[\s\S]") -> ValueError: ... took over 1.0 s ...
    """

    def __init__(self, pattern):
        if not isinstance(pattern, str):
            raise TypeError(f"pattern must be str, got {type(pattern).__name__}")
        try:
            self.regex = regex.compile(pattern)
        except regex.error as e:
            raise ValueError(f"invalid split pattern {pattern!r}: {e}") from None
        if self.regex.groups:
            raise ValueError(f"split pattern {pattern!r} has {self.regex.groups} capturing "
                             f"group(s); write them as (?:...), since a chunk is the whole match")
        self.pattern = pattern
        self.trusted = pattern in TRUSTED_PATTERNS
        self.ascii = ascii_split(pattern) if self.trusted else None  # the same split, faster
        chunks = self._findall(_PROBE, SPLIT_SECONDS)
        covered = 0  # how much of the probe the chunks cut without a gap
        for c in chunks:
            if not _PROBE.startswith(c, covered):
                break
            covered += len(c)
        if covered < len(_PROBE):
            raise ValueError(f"split pattern {pattern!r} loses characters: its chunks of a "
                             f"probe text skip {_PROBE[covered:covered + 10]!r} (index "
                             f"{covered}); every character must be in a chunk, or decoding "
                             f"would not give the text back")

    def __call__(self, text):
        """The chunks of `text`, in order; joined, they give `text` back."""
        if self.trusted:
            if self.ascii is not None and text.isascii():
                return self.ascii.findall(text)
            return self.regex.findall(text)
        return self._findall(text, SPLIT_SECONDS + SPLIT_SECONDS_PER_CHAR * len(text))

    def _findall(self, text, seconds):
        try:
            return self.regex.findall(text, timeout=None if self.trusted else seconds)
        except TimeoutError:
            raise ValueError(f"split pattern {self.pattern!r} took over {seconds:.1f} s on a "
                             f"text of {len(text)} characters (catastrophic backtracking, "
                             f"from a repetition such as (?:a|a)+); the limit is "
                             f"{SPLIT_SECONDS} s plus {SPLIT_SECONDS_PER_CHAR * 1e6:g} s per "
                             f"million characters"
                             ) from None
