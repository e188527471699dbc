"""Fine-tuning a pretrained GPT: as a classifier, and to follow instructions.

This module owns the pieces both fine-tuning examples share:
- choosing what trains (`set_trainable`, `count_params`): freezing is `requires_grad=False`;
- classification: `GPTClassifier` (the language-model head replaced by a small `out_head`
  Linear(n_embd, num_classes), the course's name, read at the last real token of each
  sequence), `pad_batch`, `accuracy`;
- instruction tuning: the data (`read_instructions`), the Alpaca prompt (`format_prompt`), the
  `collate` function that turns token lists into (inputs, targets) with padding masked out,
  and `generate_response`;
- small helpers: a seeded `split`, `encode_known` for a character vocabulary, `ensure_eot`.

What it leaves out: LoRA (lora.py), the training step (train.py: `train_step`, `mean_loss`),
the data sets and loops of a particular task (the examples `finetune_classifier.py` and
`finetune_instructions.py`), and the model itself (model.py).

subtle: freeze BEFORE building the optimizer. AdamW keeps only the parameters that require a
gradient when it is built; a parameter frozen afterwards stays in its flat buffer and is still
moved by weight decay and momentum (a missing gradient counts as zero there), and one unfrozen
afterwards is never updated.
"""
import dataclasses
import fnmatch
import json

import numpy as np

from . import functional as F
from .data import batches
from .fileio import read_file
from .model import GPT
from .nn import Linear, evaluating

IGNORE_INDEX = -100  # cross_entropy's default: targets equal to this count for nothing


# ---- what trains -------------------------------------------------------------------------------

def set_trainable(model, patterns):
    """Freeze every parameter except those whose dotted name matches one of the glob `patterns`
    (fnmatch: `*` matches any run of characters, dots included). Returns the trainable names.

    Example:
        set_trainable(model, ["transformer.h.3.*", "transformer.ln_f.*", "out_head.*"])
        -> ['transformer.h.3.ln_1.weight', ..., 'out_head.weight', 'out_head.bias']
    """
    patterns = list(patterns)
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad = any(fnmatch.fnmatchcase(name, pat) for pat in patterns)
        p.grad = None  # a frozen parameter keeps no gradient
        if p.requires_grad:
            trainable.append(name)
    if not trainable:
        raise ValueError(f"no parameter name matches {patterns}; names look like "
                         f"{next(iter(dict(model.named_parameters())))!r}")
    return trainable


def count_params(model):
    """(trainable, total) parameter counts; a shared (tied) parameter is counted once."""
    params = model.parameters()
    return sum(p.size for p in params if p.requires_grad), sum(p.size for p in params)


# ---- classification ------------------------------------------------------------------------------

class GPTClassifier(GPT):
    """A GPT whose output head is `out_head = Linear(n_embd, num_classes)` instead of the tied
    token embedding. It reads the hidden state of the LAST REAL token of each sequence: with
    causal attention that is the only position that has seen the whole text.

    Parameter names are GPT's (`transformer.*`) plus `out_head.weight` (n_embd, num_classes) and
    `out_head.bias`, so a GPT checkpoint loads into it with only the head missing.
    """

    def __init__(self, config, num_classes, seed=None, dtype=np.float32):
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        super().__init__(config, seed=seed, dtype=dtype)
        self.num_classes = int(num_classes)
        self.out_head = Linear(config.n_embd, self.num_classes, dtype=dtype,
                               rng=np.random.default_rng(None if seed is None else [seed, 7]))

    @classmethod
    def from_gpt(cls, gpt, num_classes, seed=None):
        """A classifier holding a copy of `gpt`'s weights and a fresh head."""
        model = cls(gpt.config, num_classes, seed=seed, dtype=gpt.transformer.wte.weight.dtype)
        missing, unexpected = model.load_state_dict(gpt.state_dict(), strict=False)
        head = {f"out_head.{n}" for n, _ in model.out_head.named_parameters()}
        if unexpected or set(missing) != head:  # e.g. a GPT that already carries LoRA layers
            raise ValueError(f"cannot copy {type(gpt).__name__} into a classifier: missing {missing}, "
                             f"unexpected {unexpected}")
        return model

    def _logits(self, x):
        """The class head instead of the tied embedding: x (..., C) -> (..., num_classes)."""
        return self.out_head(x)

    def forward(self, idx, targets=None, lengths=None, lm_weight=0.0):
        """idx (B, T) token ids, right-padded; lengths (B,) real tokens per row (default: all T)
        -> (logits (B, num_classes), mean cross-entropy against class ids `targets` (B,) or None).

        Padding needs no mask: position lengths-1 attends only to positions 0..lengths-1, so the
        pad tokens to its right, whatever their id, change nothing.

        With `lm_weight` > 0 (and targets), the loss also has GPT-1's auxiliary language-modelling
        term (Radford et al. 2018, section 3.2): loss = class loss + lm_weight * the mean
        next-token cross-entropy over each row's real tokens, read through the tied token
        embedding as in pretraining. GPT-1 found that it helps the fine-tuned model generalise.
        """
        idx = self._check_idx(idx, self.config.block_size)
        B, T = idx.shape
        lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
        if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"lengths must be {B} integers in [1, {T}], got {lengths}")
        # no position after the longest sequence is ever read: do not compute it
        x = self._hidden(idx[:, :lengths.max()])        # (B, T', C)
        last = x[np.arange(B), lengths - 1]             # (B, C): each row's last real token
        logits = self._logits(last)                     # (B, num_classes)
        loss = None
        if targets is not None:
            targets = np.asarray(targets)
            if targets.shape != (B,) or targets.dtype.kind not in "iu" or targets.min() < 0 \
                    or targets.max() >= self.num_classes:
                raise ValueError(f"targets must be {B} class ids in [0, {self.num_classes}), got {targets}")
            loss = F.cross_entropy(logits, targets)
            if lm_weight < 0:
                raise ValueError(f"lm_weight must be >= 0, got {lm_weight}")
            if lm_weight:
                loss = loss + lm_weight * self._lm_loss(x, idx, lengths)
        return logits, loss

    def _lm_loss(self, x, idx, lengths):
        """Mean next-token cross-entropy of hidden states x (B, T', C) against idx (B, T),
        counting only targets that are real tokens (position j predicts token j + 1 < length)."""
        T = x.shape[1]
        targets = idx[:, 1:T].copy()                                     # (B, T'-1)
        targets[np.arange(1, T)[None, :] >= lengths[:, None]] = IGNORE_INDEX
        logits = super()._logits(x[:, :-1])  # GPT's head, the tied embedding: (B, T'-1, V)
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)


def pad_batch(seqs, pad_id, block_size):
    """Right-pad token lists into one (B, T) int64 array, T = the longest (cut to block_size).
    Returns (idx, lengths), lengths (B,) the real tokens kept per row.

    Example:
        pad_batch([[5, 6, 7], [8]], pad_id=0, block_size=2) -> ([[5, 6], [8, 0]], [2, 1])
    """
    lengths = np.array([min(len(s), block_size) for s in seqs], dtype=np.int64)
    if len(seqs) == 0 or lengths.min() < 1:
        raise ValueError("pad_batch needs at least one sequence and no empty ones")
    idx = np.full((len(seqs), lengths.max()), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):  # one slice assignment a row
        idx[i, :lengths[i]] = s[:lengths[i]]
    return idx, lengths


def accuracy(model, seqs, labels, batch_size=64, pad_id=0):
    """Fraction of `seqs` (token lists) that the classifier labels right, in eval mode."""
    labels, correct = np.asarray(labels), 0
    with evaluating(model):
        for b in batches(len(seqs), batch_size):
            idx, lengths = pad_batch([seqs[i] for i in b], pad_id, model.config.block_size)
            logits, _ = model(idx, lengths=lengths)
            correct += int((logits.data.argmax(-1) == labels[b]).sum())
    return correct / max(len(seqs), 1)


# ---- instruction tuning ------------------------------------------------------------------------------

ALPACA_HEADER = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")


def read_instructions(path):
    """The entries of an instruction JSON file: a list of {"instruction", "input" (optional),
    "output"} objects of strings. Anything else raises ValueError naming the file and entry."""
    data = read_file(path, 1 << 30, "an instruction JSON file")  # a regular file: never /dev/zero or a FIFO
    try:
        entries = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, nesting too deep
        raise ValueError(f"{path} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path} must hold a non-empty JSON list of entries, got {type(entries).__name__}")
    for i, e in enumerate(entries):
        if not (isinstance(e, dict) and isinstance(e.get("instruction"), str) and isinstance(e.get("output"), str)
                and isinstance(e.get("input", ""), str)):
            raise ValueError(f"{path}: entry {i} is not an object with string 'instruction' and 'output' "
                             "(and an optional string 'input')")
    return entries


def format_prompt(entry):
    """The Alpaca prompt for {"instruction", "input", "output"}: everything the model is given,
    up to and including the response header. The target text is `entry["output"]`.

    Example:
        format_prompt({"instruction": "Add 2 and 3.", "input": ""})
        -> 'Below is an instruction ... request.\\n\\n### Instruction:\\nAdd 2 and 3.\\n\\n### Response:\\n'
    """
    text = f"{ALPACA_HEADER}\n\n### Instruction:\n{entry['instruction']}"
    if entry.get("input"):  # the Input section is left out when there is none
        text += f"\n\n### Input:\n{entry['input']}"
    return text + "\n\n### Response:\n"


def collate(seqs, pad_id, ignore_index=IGNORE_INDEX, block_size=None, prompt_lengths=None):
    """Token lists -> (inputs, targets), two (B, T) int64 arrays for next-token training.

    Each sequence gets one end-of-text token (`pad_id`) appended, then all are right-padded with
    `pad_id` to the longest; inputs are tokens 0..n-1, targets tokens 1..n. In the targets the
    first end-of-text of each row is kept (the model must learn to stop) and the padding after
    it becomes `ignore_index`. With `prompt_lengths` (prompt tokens per row), the targets that
    are prompt tokens are masked too, so only the response is learned. Rows are cut to
    `block_size` tokens last.

    Example (pad_id 9; tests/test_finetune.py runs it):
    >>> inputs, targets = collate([[1, 2, 3], [4, 5]], pad_id=9)
    >>> inputs.tolist(), targets.tolist()
    ([[1, 2, 3], [4, 5, 9]], [[2, 3, 9], [5, 9, -100]])

    Row 1's second pad is masked; its first (the end-of-text after 5) is kept. If the first two
    tokens of row 0 are its prompt, predicting token 2 is masked too:
    >>> collate([[1, 2, 3], [4, 5]], pad_id=9, prompt_lengths=[2, 0])[1].tolist()
    [[-100, 3, 9], [5, 9, -100]]
    >>> collate([[1, 2, 3], [4, 5]], pad_id=9, block_size=2)[1].tolist()
    [[2, 3], [5, 9]]

    subtle: the padding is found by position, not by value, so an end-of-text id inside a text
    is still a target.
    """
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)  # real tokens per row
    T = int(lengths.max()) + 1                                  # + the end-of-text
    padded = np.full((len(seqs), T), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):  # one slice assignment a row
        padded[i, :lengths[i]] = s
    inputs, targets = padded[:, :-1], padded[:, 1:].copy()      # (B, T-1) each
    pos = np.arange(T - 1)[None, :]                             # target j is token j+1
    targets[pos + 1 > lengths[:, None]] = ignore_index          # token `length` is the end-of-text
    if prompt_lengths is not None:
        # token j+1 belongs to the prompt when j+1 < prompt length
        targets[pos + 1 < np.asarray(prompt_lengths)[:, None]] = ignore_index
    if block_size is not None:
        inputs, targets = inputs[:, :block_size], targets[:, :block_size]
    return np.ascontiguousarray(inputs), np.ascontiguousarray(targets)


def generate_response(model, prompt_ids, eot_id, max_new_tokens=256):
    """Greedy continuation of one prompt (a token list), stopped at the first end-of-text (left
    out) or after max_new_tokens. Returns the new token ids."""
    out = []
    for tok in model.generate_stream(np.array([prompt_ids], dtype=np.int64), max_new_tokens, temperature=0):
        if tok[0] == eot_id:
            break
        out.append(int(tok[0]))
    return out


# ---- data and training helpers ------------------------------------------------------------------------

def split(items, fractions, seed):
    """Shuffle a copy of `items` with `seed`, then cut it into len(fractions) consecutive parts.
    The last part takes the rounding remainder.

    Example:
        [len(p) for p in split(range(10), (0.7, 0.1, 0.2), seed=0)] -> [7, 1, 2]
    """
    if not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"fractions must be >= 0 and add up to 1, got {fractions}")
    items = list(items)
    order = np.random.default_rng(seed).permutation(len(items))
    bounds = [0] + [int(round(len(items) * f)) for f in np.cumsum(fractions)[:-1]] + [len(items)]
    return [[items[k] for k in order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]


def encode_known(tokenizer, text):
    """Encode `text`; with a character tokenizer, characters outside its vocabulary are dropped
    first (a byte-level BPE encodes everything). Returns (ids, number of characters dropped).

    Example, with a CharTokenizer built from "ab c":
        encode_known(tok, "a 2b") -> ([1, 0, 2], 1)        # "2" is unknown
    """
    stoi = getattr(tokenizer, "stoi", None)
    if stoi is None:
        return tokenizer.encode(text), 0
    kept = "".join(c for c in text if c in stoi)
    return tokenizer.encode(kept), len(text) - len(kept)


def ensure_eot(model, tokenizer):
    """The end-of-text id: the tokenizer's own (`eot_token`, 50256 for GPT-2) when it has one.
    Otherwise (a character or self-trained BPE tokenizer) a NEW id = the model's vocab_size: the
    token embedding grows by one row, started at the mean of the others (so its logit starts
    at the average logit), and config.vocab_size by one. The tokenizer cannot decode that id;
    `generate_response` stops at it and never returns it.

    subtle: this replaces wte's array, so call it before building the optimizer.
    """
    eot, V = getattr(tokenizer, "eot_token", None), model.config.vocab_size
    if eot is not None and eot < V:
        return eot
    if eot is not None and eot > V:
        raise ValueError(f"the tokenizer's end-of-text id {eot} is beyond the model's vocab_size {V}")
    wte = model.transformer.wte.weight
    wte.data = np.concatenate([wte.data, wte.data.mean(axis=0, keepdims=True)])  # (V + 1, C)
    wte.grad = None
    model.config = dataclasses.replace(model.config, vocab_size=wte.shape[0])
    return wte.shape[0] - 1
