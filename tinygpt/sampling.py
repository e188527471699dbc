"""Picking the next token from a model's logits: greedy, temperature, top-k and nucleus (top-p).

`sample_next` takes the logits of the last position (B, V) and returns one id a row; GPT.generate
calls it once a step. `check_sampling` is the one check of its settings, which generate and
`tinygpt sample` run before any work. It owns no model and no state but the random generator it is
given. What it leaves out: the model and its KV cache (model.py).
"""
import math
import numbers

import numpy as np


def check_sampling(temperature, top_k, top_p):
    """The settings of `sample_next`, checked: temperature a number >= 0, top_k a positive integer
    or None, top_p in (0, 1] or None; else ValueError or TypeError naming the value and the limit."""
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)):
            raise TypeError(f"{name} must be a number, got {value!r}")
    if not 0 <= temperature < math.inf:  # `not` also refuses NaN
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer))):
        raise TypeError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, rng=None):
    """Pick the next token of each row of `logits` (B, V) -> (B,) int64 ids.

    temperature 0 is greedy (argmax). Otherwise the probabilities are softmax(logits / temperature),
    cut to the top_k most likely tokens and/or to the smallest set of most likely tokens whose
    probabilities add up to at least top_p (nucleus sampling), then renormalised.

    A row that names no token raises ValueError: one with a NaN, or -inf everywhere. A +inf logit
    wins under greedy decoding (torch.argmax picks it too); sampling refuses it, since softmax is
    NaN there (torch.multinomial refuses that too).
    """
    check_sampling(temperature, top_k, top_p)
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must be (B, V) with V >= 1, got shape {logits.shape}")
    # one pass finds every bad row: its max is NaN if it holds a NaN, +inf if it holds +inf,
    # and -inf if it is -inf everywhere
    m = logits.max(axis=-1, keepdims=True)  # (B, 1)
    for r in np.flatnonzero(~np.isfinite(m[:, 0])):
        if np.isnan(m[r, 0]):
            raise ValueError(f"logits row {r} holds NaN: no token can be picked "
                             "(tinygpt.detect_anomaly() names the op that made it)")
        if m[r, 0] < 0:
            raise ValueError(f"logits row {r} is -inf everywhere: no token can be picked")
        if temperature != 0:
            raise ValueError(f"logits row {r} holds +inf: softmax is undefined there, so it cannot be "
                             "sampled (temperature=0 takes the argmax)")
    if temperature == 0:
        return logits.argmax(axis=-1).astype(np.int64)
    rng = np.random.default_rng(rng)
    V = logits.shape[-1]
    # float64: only (B, V) per step, and the cumulative sums below stay exact enough to reach 1.
    # Shifted by the max before the division, so that no temperature overflows a finite logit
    logits = (logits.astype(np.float64) - m) / temperature  # (B, V), each row's max now 0
    if top_k is not None and top_k < V:
        kth = np.partition(logits, -top_k, axis=-1)[:, [-top_k]]  # (B, 1): the k-th largest logit
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1)                       # most likely first
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        # keep a token while the more likely ones add up to less than top_p: the first is always kept
        keep_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs < top_p
        keep = np.empty_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
    # inverse-CDF sampling of every row at once: the first token whose cumulative probability
    # passes u ~ U[0, total); tokens of probability 0 can never be picked
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random((len(cdf), 1)) * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=-1), V - 1).astype(np.int64)
