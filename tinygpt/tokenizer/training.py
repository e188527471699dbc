"""Fast byte-pair training: the merges of `basic.train_naive`, without recounting the text.

This module owns `train_fast`. It takes the same chunks and returns the same merges in the same
order as the naive trainer, which recounts every pair of every chunk for each merge (the tests
check that the two agree). What changes is the bookkeeping:
- each distinct chunk is stored once, with its frequency;
- `where` indexes the chunks that hold each pair, so a merge rewrites only those chunks and
  changes only the counts they touch;
- the best pair comes off a heap of (-count, pair), in which an entry whose count changed after
  it was pushed is stale and skipped.
Cutting the text into chunks, and everything after training, are `bpe.py`'s.
"""
from collections import Counter, defaultdict
from heapq import heapify, heappop, heappush

from .basic import get_stats, merge


def train_fast(chunks, n_merges, verbose=False):
    """Learn up to `n_merges` merges {(id0, id1): new_id} from `chunks`, the pieces of a text.

    Fewer merges come back if every chunk becomes a single token first.

    Example:
        train_fast(["hello", " hell", " hell"], 2) -> {(101, 108): 256, (104, 256): 257}
    """
    chunk_counts = Counter(chunks)
    chunk_ids = [list(c.encode("utf-8")) for c in chunk_counts]  # each distinct chunk, as ids
    freqs = list(chunk_counts.values())                            # and how often it occurs
    stats = defaultdict(int)  # (int, int) -> occurrences in the whole text
    where = defaultdict(set)  # (int, int) -> indices of the chunks that contain the pair
    for c, ids in enumerate(chunk_ids):
        for pair in zip(ids, ids[1:]):
            stats[pair] += freqs[c]
            where[pair].add(c)
    # a min-heap of (-count, pair) pops the highest count first, the smallest pair among equals:
    # the naive trainer's tie rule
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
            ids = chunk_ids[c]
            new = merge(ids, pair, idx)
            if len(new) == len(ids):
                continue  # the index is lazy: this chunk lost the pair to an earlier merge
            get_stats(ids, delta, -freqs[c])  # the chunk's old pairs go...
            get_stats(new, delta, freqs[c])   # ...and its new pairs come
            for p in zip(new, new[1:]):
                if idx in p:  # only pairs holding the new token can be new to this chunk
                    where[p].add(c)
            chunk_ids[c] = new
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
