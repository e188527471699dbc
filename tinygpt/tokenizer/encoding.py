"""Fast byte-pair encoding in Python: the tokens of `basic.encode_naive`, in O(n log n).

This module owns `encode_heap`. It takes the same chunk and ranks and returns the same tokens as
the naive encoder, which rescans every pair of the chunk for each merge: O(n^2) for a chunk of
n bytes, and CJK text or minified code come out of the split as very long chunks (the tests
check that the two agree). What changes is the bookkeeping:
- the pieces form a linked list, so a merge unlinks its right piece in O(1);
- each piece is named by the position of its first byte, which never changes and keeps the
  pieces' left-to-right order;
- the next pair to merge comes off a heap of (rank, position): the lowest rank first and, on
  ties, the leftmost, the naive encoder's rule. A merge changes only the pairs with the two
  neighbours of the new piece, so those are re-ranked and pushed; an entry whose pair has
  changed since it was pushed is stale and skipped.

    ranks {b"ll": 0, b"he": 1, b"hell": 2}; "-" is a pair that joins into no token
    start    h e l l o   heap (1, 0) (0, 2)    pairs he 1, el -, ll 0, lo -
    pop ll   h e ll  o   unlink piece 3        re-rank e+ll -, ll+o -
    pop he   he  ll  o   unlink piece 1        re-rank he+ll 2: push (2, 0)
    pop hell hell    o   unlink piece 2        re-rank hell+o -: the heap is empty, done

`fast.py` runs the same loop in numba, on ids; `bpe.py` calls this one for a few bytes, or when
numba is off.
"""
from heapq import heapify, heappop, heappush
from math import inf


def encode_heap(data, ranks):
    """The tokens, as bytes, of one chunk's bytes `data`; `ranks` maps token bytes -> rank.

    Example:
        encode_heap(b"hello", {b"ll": 0, b"he": 1, b"hell": 2}) -> [b"hell", b"o"]
    """
    n = len(data)
    parts = [bytes([b]) for b in data]  # parts[i]: the piece that starts at byte i, if one does
    nxt = list(range(1, n + 1))         # nxt[i]: where the piece after piece i starts; n: none
    prv = list(range(-1, n - 1))        # prv[i]: where the piece before it starts; -1: none

    def rank_of_pair(i):
        """Rank of the token that piece i and the next piece join into (inf: into no token)."""
        return ranks.get(parts[i] + parts[nxt[i]], inf) if nxt[i] < n else inf

    pair_rank = [rank_of_pair(i) for i in range(n)]  # the current rank of the pair at each piece
    heap = [(r, i) for i, r in enumerate(pair_rank) if r != inf]
    heapify(heap)
    while heap:
        rank, i = heappop(heap)
        # subtle: equal ranks mean the same pair, since a rank names one token's bytes and the
        # piece at i only grows, so its pair never comes back to a rank it had
        if pair_rank[i] != rank:
            continue  # stale: piece i was merged away, or its pair changed after this push
        # merge piece i with the next piece j, and unlink j
        j = nxt[i]
        parts[i] += parts[j]
        nxt[i] = nxt[j]
        if nxt[j] < n:
            prv[nxt[j]] = i
        pair_rank[j] = inf  # j no longer starts a piece, so its entries are stale
        # re-rank the two pairs that hold the new piece: with the piece before, and the one after
        for k in (prv[i], i):
            if k >= 0:
                pair_rank[k] = rank_of_pair(k)
                if pair_rank[k] != inf:
                    heappush(heap, (pair_rank[k], k))
    out, i = [], 0
    while i < n:  # walk the list from the first piece
        out.append(parts[i])
        i = nxt[i]
    return out
