"""Byte-level BPE training: which pairs of tokens to merge, in which order.

This module owns the training algorithm and its two small helpers, `get_stats` and `merge`.
It works on chunks (the pieces a regex cut the text into) and returns merges; splitting the text,
special tokens and encoding live in `tokenizer.py`.

The rule: start from the 256 byte tokens; each step merges the adjacent pair that occurs most
often in the text (overlapping occurrences count, as in `get_stats`) into a new token with the
next id, 256, 257, ...; on equal counts the smallest pair (id0, id1) wins. Within a chunk, a
merge replaces the occurrences left to right (`merge`). A naive trainer that recounts every pair
for each step, `pair = min(stats, key=lambda p: (-stats[p], p))`, yields the same merges in the
same order; tests/test_tokenizer.py holds such a trainer and checks that it does.
"""
from collections import defaultdict
from heapq import heapify, heappop, heappush


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


def train_bpe(chunk_counts, n_merges, verbose=False):
    """Learn up to `n_merges` merges from chunks and their frequencies: {(id0, id1): new_id}.

    Fewer merges come back if every chunk becomes a single token first.

    Speed: the naive trainer recounts the whole text for every merge. Here each distinct chunk
    is stored once with its frequency; `where` indexes the chunks that hold each pair, so a merge
    rewrites only those chunks and changes only the counts they touch; and the best pair comes
    off a heap of (-count, pair), in which an entry whose count changed after it was pushed is
    stale and skipped. Tiny Shakespeare, 3840 merges: under a second.

    Example:
        train_bpe({"hello": 1, " hell": 2}, 2) -> {(101, 108): 256, (104, 256): 257}
        # "he", "el", "ll" all occur 3 times: (101, 108) = "e"+"l" is the smallest pair;
        # then "h"+"el" and "el"+"l" tie at 3, and (104, 256) < (256, 108)
    """
    chunks = [list(c.encode("utf-8")) for c in chunk_counts]  # each distinct chunk, as ids
    freqs = list(chunk_counts.values())                         # and how often it occurs
    stats = defaultdict(int)  # (int, int) -> occurrences in the whole text
    where = defaultdict(set)  # (int, int) -> indices of the chunks that contain the pair
    for c, ids in enumerate(chunks):
        for pair in zip(ids, ids[1:]):
            stats[pair] += freqs[c]
            where[pair].add(c)
    heap = [(-n, pair) for pair, n in stats.items()]
    heapify(heap)

    vocab = {i: bytes([i]) for i in range(256)}  # only for the progress report
    merges = {}
    for k in range(n_merges):
        while heap and stats.get(heap[0][1], 0) != -heap[0][0]:
            heappop(heap)  # stale: the pair's count changed after this entry was pushed
        if not heap:
            if verbose:
                print(f"stopping after {k} merges: every chunk is a single token")
            break
        count, pair = -heap[0][0], heap[0][1]
        idx = 256 + k
        merges[pair] = idx
        vocab[idx] = vocab[pair[0]] + vocab[pair[1]]
        delta = {}  # pair -> change of its count, summed over the rewritten chunks
        for c in where.pop(pair):
            ids = chunks[c]
            new = merge(ids, pair, idx)
            if len(new) == len(ids):
                continue  # the index is lazy: this chunk lost the pair to an earlier merge
            get_stats(ids, delta, -freqs[c])  # the chunk's old pairs go...
            get_stats(new, delta, freqs[c])   # ...and its new pairs come
            for p in zip(new, new[1:]):
                if idx in p:  # only pairs holding the new token can be new to this chunk
                    where[p].add(c)
            chunks[c] = new
        # subtle: `merge` leaves no occurrence of `pair`, so its count drops to 0 here and its
        # entry on top of the heap goes stale.
        for p, d in delta.items():
            if d:
                stats[p] += d
                if stats[p]:
                    heappush(heap, (-stats[p], p))
                else:
                    del stats[p]
        if verbose and ((k + 1) % max(1, n_merges // 20) == 0 or k + 1 == n_merges):
            print(f"merge {k + 1}/{n_merges}: {pair} -> {idx} {vocab[idx]!r} "
                  f"had {count} occurrences")
    return merges
