"""Naive byte-pair encoding: the textbook algorithm, short and plainly right, as in minbpe.

This module owns the reference version of both halves of BPE. `train_naive` recounts every pair
of every chunk before each merge; `encode_naive` rescans one chunk's pairs before each merge,
O(n^2) for n bytes. `training.py` (the fast trainer), `encoding.py` (the heap encoder) and
`fast.py` (its numba version) compute the same merges and the same tokens, and the tests check
that they do. Cutting text into chunks, special tokens and files are left to `bpe.py`; a chunk
is one piece of the cut, and no merge crosses two of them.

Training: start from the 256 byte tokens; each step merges the adjacent pair that occurs most
often (overlapping occurrences count, as in `get_stats`) into a new token with the next id, 256,
257, ...; on equal counts the smallest pair (id0, id1) wins. A token's rank is its merge's place
in that order.
Encoding, tiktoken's rule: while some adjacent pair of pieces joins into a token, merge the pair
whose token has the lowest rank, the leftmost one on ties.
"""
from math import inf


def get_stats(ids, counts=None, weight=1):
    """Add `weight` to the count of every adjacent pair in `ids` (overlapping pairs count).

    Example:
        get_stats([1, 2, 3, 1, 2]) -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids, pair, idx):
    """Replace every occurrence of `pair` in `ids` by `idx`, scanning left to right.

    Example:
        merge([1, 2, 3, 1, 2], (1, 2), 4) -> [4, 3, 4]
        merge([5, 5, 5], (5, 5), 6) -> [6, 5]      # overlapping: the leftmost pair wins
    """
    out, i, n = [], 0, len(ids)
    while i < n:
        if i < n - 1 and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_naive(chunks, n_merges):
    """Learn up to `n_merges` merges {(id0, id1): new_id} from `chunks`, the pieces of a text.

    Fewer merges come back if every chunk becomes a single token first.

    Example:
        train_naive(["hello", " hell", " hell"], 2) -> {(101, 108): 256, (104, 256): 257}
        # "he", "el", "ll" all occur 3 times: (101, 108) = "e"+"l" is the smallest pair;
        # then "h"+"el" and "el"+"l" tie at 3, and (104, 256) < (256, 108)
    """
    chunk_ids = [list(c.encode("utf-8")) for c in chunks]  # each chunk as its byte values 0..255
    merges = {}
    for k in range(n_merges):
        # count how often each adjacent pair occurs, over all the chunks
        stats = {}
        for ids in chunk_ids:
            get_stats(ids, stats)
        if not stats:
            break  # every chunk is a single token: nothing is left to merge
        # find the pair with the highest count; on equal counts, the smallest pair
        pair = min(stats, key=lambda p: (-stats[p], p))
        # mint a new token: assign it the next available id
        idx = 256 + k
        # replace all occurrences of pair with idx, in every chunk
        chunk_ids = [merge(ids, pair, idx) for ids in chunk_ids]
        merges[pair] = idx
    return merges


def encode_naive(data, ranks):
    """The tokens, as bytes, of one chunk's bytes `data`; `ranks` maps token bytes -> rank.

    `ranks` holds the merged tokens only: single bytes are always tokens. subtle: minbpe's
    `encode` looks a pair up in the merges, which sees only the merge that built a token; this
    rule (tiktoken's, which tinygpt matches) asks whether the two pieces join into any token.

    Example:
        encode_naive(b"hello", {b"ll": 0, b"he": 1, b"hell": 2}) -> [b"hell", b"o"]
        # "l"+"l" first (rank 0), then "h"+"e" (1), then "he"+"ll" (2); "hell"+"o" is no token
    """
    parts = [bytes([b]) for b in data]  # start from single bytes
    while len(parts) > 1:
        # the rank of the token each adjacent pair would join into (inf: into no token)
        pair_ranks = [ranks.get(a + b, inf) for a, b in zip(parts, parts[1:])]
        best = min(pair_ranks)
        if best == inf:
            break  # no pair joins into a token: the chunk is done
        # merge the leftmost pair of lowest rank into one piece
        i = pair_ranks.index(best)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts
