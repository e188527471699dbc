"""Numba kernels for BPE encoding: the merge loop over many chunks in one call.

This module owns the fast path of `BPETokenizer`: tiktoken's rule restated on ids (which pair of
ids merges, at which rank), held as a hash table in two NumPy arrays, and a kernel that
byte-pair-encodes a whole batch of chunks with `encoding.encode_heap`'s loop (a linked list of
pieces, a heap of pair ranks). The readable specification is `basic.encode_naive`; the tests
check that the two agree.

What it leaves out: splitting text into chunks, caching, special tokens (all in `bpe.py`).

subtle: this module imports numba at the top, so `bpe.py` imports it lazily, on the first batch
big enough to pay for it. `import tinygpt` never compiles anything.
"""
from itertools import chain

import numpy as np
from numba import njit

_EMPTY = -1                         # key of a free slot in the hash table
_NO_MERGE = np.iinfo(np.int32).max  # the "rank" of a pair that is not in the table
_SHIFT = 31                         # pair key = left << 31 | right; ids are below 2**31
_MAX_CHUNK = 2**31 - 1              # positions in a chunk are int32


@njit(cache=True, inline="always")
def _slot(keys, key):
    """Index of `key` in the open-addressing table `keys`, or of the free slot where it would go."""
    mask = keys.size - 1
    # multiplicative hashing; the constant is odd and below 2**63 so int64 arithmetic just wraps
    h = ((key * 0x2545F4914F6CDD1D) >> 29) & mask
    while keys[h] != _EMPTY and keys[h] != key:
        h = (h + 1) & mask         # linear probing
    return h


@njit(cache=True)
def build_pair_table(left, right, ranks):
    """Hash table (keys, vals) mapping the pair (left[i], right[i]) to ranks[i].

    A pair is stored as the single int64 key `left << 31 | right`. The table is at least twice
    as large as the number of pairs, so probes stay short.

    Example:
        keys, vals = build_pair_table(np.array([104]), np.array([105]), np.array([0]))
        lookup(keys, vals, 104, 105) -> 0             # "h" + "i" is the first merge
    """
    size = 16
    while size < 2 * left.size:
        size *= 2
    keys = np.full(size, _EMPTY, dtype=np.int64)
    vals = np.zeros(size, dtype=np.int32)
    for i in range(left.size):
        key = np.int64(left[i]) << _SHIFT | right[i]
        h = _slot(keys, key)
        keys[h] = key
        vals[h] = ranks[i]
    return keys, vals


@njit(cache=True, inline="always")
def lookup(keys, vals, left, right):
    """Rank stored for the pair (left, right), or _NO_MERGE if the pair does not merge."""
    key = np.int64(left) << _SHIFT | right
    h = _slot(keys, key)
    return vals[h] if keys[h] == key else _NO_MERGE


@njit(cache=True, inline="always")
def _sift_down(heap, size, i):
    """Move heap[i] down to its place in the min-heap heap[:size]."""
    item = heap[i]
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and heap[child + 1] < heap[child]:
            child += 1  # the smaller child
        if item <= heap[child]:
            break
        heap[i] = heap[child]
        i = child
    heap[i] = item


@njit(cache=True, inline="always")
def _push(heap, size, item):
    """Add `item` to the min-heap heap[:size]; return the new size."""
    i = size
    while i > 0 and heap[(i - 1) >> 1] > item:
        heap[i] = heap[(i - 1) >> 1]  # move the larger parent down
        i = (i - 1) >> 1
    heap[i] = item
    return size + 1


@njit(cache=True, inline="always")
def _rank_of_pair(parts, nxt, n, i, keys, vals):
    """Rank of the pair (piece i, the next piece), or _NO_MERGE if i is the last piece."""
    return lookup(keys, vals, parts[i], parts[nxt[i]]) if nxt[i] < n else _NO_MERGE


@njit(cache=True)
def _bpe_one(parts, n, keys, vals, rank_ids, nxt, prv, pair_rank, heap):
    """Merge `parts[:n]` in place, tiktoken's way; return the new length.

    `encoding.encode_heap`'s loop, on ids: the pieces are a linked list (nxt, prv) named by the
    position of their first byte, and the heap holds `rank << 32 | position` as one int64, so
    the smallest entry is the lowest rank and, on ties, the leftmost pair. nxt, prv, pair_rank
    hold at least n slots and heap 2n: it starts with at most n - 1 entries, and each of the at
    most n - 1 merges pops one and pushes at most two.
    """
    size = 0
    for i in range(n):
        nxt[i] = i + 1
        prv[i] = i - 1
        pair_rank[i] = _rank_of_pair(parts, nxt, n, i, keys, vals)
        if pair_rank[i] != _NO_MERGE:
            heap[size] = np.int64(pair_rank[i]) << 32 | i
            size += 1
    for i in range(size // 2 - 1, -1, -1):  # heapify: sift down every parent, the last first
        _sift_down(heap, size, i)
    while size > 0:
        top = heap[0]
        size -= 1
        heap[0] = heap[size]
        _sift_down(heap, size, 0)
        rank, i = top >> 32, top & 0xFFFFFFFF
        if pair_rank[i] != rank:
            continue  # stale (see encode_heap)
        # merge piece i with the next piece j, and unlink j
        j = nxt[i]
        parts[i] = rank_ids[rank]
        nxt[i] = nxt[j]
        if nxt[j] < n:
            prv[nxt[j]] = i
        pair_rank[j] = _NO_MERGE
        # re-rank the two pairs that hold the new piece
        k = prv[i]
        if k >= 0:
            pair_rank[k] = _rank_of_pair(parts, nxt, n, k, keys, vals)
            if pair_rank[k] != _NO_MERGE:
                size = _push(heap, size, np.int64(pair_rank[k]) << 32 | k)
        pair_rank[i] = _rank_of_pair(parts, nxt, n, i, keys, vals)
        if pair_rank[i] != _NO_MERGE:
            size = _push(heap, size, np.int64(pair_rank[i]) << 32 | i)
    out, i = 0, 0
    while i < n:  # walk the list and pack the pieces to the front; out <= i, so in place is safe
        parts[out] = parts[i]
        out += 1
        i = nxt[i]
    return out


@njit(cache=True)
def encode_chunks(data, offsets, byte_ids, keys, vals, rank_ids):
    """Byte-pair-encode every chunk data[offsets[c]:offsets[c+1]] of a batch.

    Returns (ids, out_offsets): the tokens of chunk c are ids[out_offsets[c]:out_offsets[c+1]].
    A chunk never has more tokens than bytes, so `ids` is allocated once at len(data).

    Example (a tokenizer whose only merge is "h" + "i" -> 256):
        encode_chunks(np.frombuffer(b"hihi!", np.uint8), np.array([0, 2, 5]), ...)
        -> ids [256, 256, 33], out_offsets [0, 1, 3]      # "hi" | "hi" "!"
    """
    n_chunks = offsets.size - 1
    ids = np.empty(data.size, dtype=np.int32)
    out_offsets = np.zeros(n_chunks + 1, dtype=np.int64)
    longest = 0
    for c in range(n_chunks):
        longest = max(longest, offsets[c + 1] - offsets[c])
    # _bpe_one's work arrays, allocated once for the longest chunk and reused for every chunk
    nxt = np.empty(longest, dtype=np.int32)  # int32: half the memory traffic of int64
    prv = np.empty(longest, dtype=np.int32)
    pair_rank = np.empty(longest, dtype=np.int32)
    heap = np.empty(2 * longest, dtype=np.int64)
    pos = 0
    for c in range(n_chunks):
        start = offsets[c]
        n = offsets[c + 1] - start
        parts = ids[pos:pos + n]  # a view: the chunk is merged right where its output goes
        for i in range(n):
            parts[i] = byte_ids[data[start + i]]
        pos += _bpe_one(parts, n, keys, vals, rank_ids, nxt, prv, pair_rank, heap)
        out_offsets[c + 1] = pos
    return ids, out_offsets


def make_tables(byte_ids, ranks, encoder):
    """The arrays `encode_chunks` needs, from a tokenizer's Python tables.

    byte_ids: byte value -> id; ranks: {merged token's bytes: rank}, in rank order;
    encoder: {token's bytes: id}.

    Example (a tokenizer whose only merge is "h" + "i" -> 256):
        byte_ids, keys, vals, rank_ids = make_tables(list(range(256)), {b"hi": 0}, encoder)
        lookup(keys, vals, 104, 105) -> 0;  rank_ids -> array([256])
    """
    # tiktoken's rule on ids: (left, right) -> the rank of the token made of their bytes, for
    # every way to cut a token into two tokens, not only the merge that built it
    pair_ranks = {}
    rank_ids = np.zeros(max(ranks.values(), default=-1) + 1, dtype=np.int32)  # rank -> token id
    for t, rank in ranks.items():  # in rank order, so setdefault keeps the lowest rank
        rank_ids[rank] = encoder[t]
        for k in range(1, len(t)):
            left, right = encoder.get(t[:k]), encoder.get(t[k:])
            if left is not None and right is not None:
                pair_ranks.setdefault((left, right), rank)
    n = len(pair_ranks)
    pairs = np.fromiter(chain.from_iterable(pair_ranks), dtype=np.int64, count=2 * n)
    pair_rank_values = np.fromiter(pair_ranks.values(), dtype=np.int32, count=n)
    keys, vals = build_pair_table(pairs[0::2], pairs[1::2], pair_rank_values)  # lefts, rights
    return np.array(byte_ids, dtype=np.int32), keys, vals, rank_ids


def encode_batch(datas, tables):
    """Token ids (a tuple per chunk) of the byte strings `datas`, in one call of the kernel.

    Example (GPT-2's tables):
        encode_batch([b" tokenizer", b"!!"], tables) -> [(11241, 7509), (3228,)]
    """
    lengths = np.fromiter(map(len, datas), dtype=np.int64, count=len(datas))
    if lengths.size and lengths.max() > _MAX_CHUNK:
        raise ValueError(f"a chunk of {lengths.max()} bytes is too long for the numba encoder, "
                         f"whose limit is {_MAX_CHUNK} bytes")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    data = np.frombuffer(b"".join(datas), dtype=np.uint8)
    ids, out_offsets = encode_chunks(data, offsets, *tables)
    ids, out_offsets = ids.tolist(), out_offsets.tolist()
    return [tuple(ids[out_offsets[c]:out_offsets[c + 1]]) for c in range(len(datas))]
