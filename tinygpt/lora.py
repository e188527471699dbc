"""LoRA: fine-tune a few low-rank matrices instead of every weight (Hu et al., 2021).

A frozen Linear computes y = x W + b with W (in, out). LoRA learns a change of W that has rank r:

    y = x W + b + (alpha / r) * (x A) B,      A (in, r), B (r, out), r << min(in, out)

so a (768, 2304) projection trains r * (768 + 2304) numbers instead of 768 * 2304. B starts at
zero, so a freshly wrapped model computes exactly what the base model did; A starts random, so
B's first gradient, (alpha/r) (x A)^T dy, is not zero. For inference `merge()` adds
(alpha/r) A B into W once, and the layer costs what a plain Linear does.

subtle: tinygpt's Linear stores W as (in, out), GPT-2's layout, the transpose of PyTorch's. So
the update is A @ B here; PyTorch and the paper write it B @ A with A (r, in), B (out, r).

Parameter names: `LoRALinear` keeps the wrapped layer's own `weight` and `bias` Parameters, under
those names, and adds `lora_A` and `lora_B` next to them. A state dict of the base model loads
into the wrapped one with `strict=False` (only the lora_* keys are missing), and once merged the
wrapped model's `weight`/`bias` entries are a plain model's.

This module owns the layer and the helpers that swap it into a model (`apply_lora`) and fold it
in (`merge_lora`, `unmerge_lora`). Choosing which other parameters train is finetune.py's
`set_trainable` (LoRA's own are matched by `LORA_PATTERNS`).
"""
import fnmatch
import math

import numpy as np

from . import functional as F
from .nn import Linear, Module, Parameter

DEFAULT_TARGETS = ("*.attn.c_attn", "*.attn.c_proj", "*.mlp.c_fc", "*.mlp.c_proj")  # every projection
LORA_PATTERNS = ("*.lora_A", "*.lora_B")  # for finetune.set_trainable: the LoRA parameters


class LoRALinear(Module):
    """A Linear plus a trainable rank-`rank` update scaled by alpha/rank. The base weight and
    bias are frozen here (requires_grad=False)."""

    def __init__(self, base, rank, alpha, rng=None):
        if not isinstance(base, Linear):
            raise TypeError(f"LoRALinear wraps a Linear, got {type(base).__name__}")
        in_features, out_features = base.weight.shape
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be an integer in [1, {min(in_features, out_features)}] for a "
                             f"({in_features}, {out_features}) weight, got {rank!r}")
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: names stay as they were
        self.weight.requires_grad = False
        if self.bias is not None:
            self.bias.requires_grad = False
        dtype = base.weight.dtype.type
        # A ~ U(-1/sqrt(in), 1/sqrt(in)), the reference implementation's (PyTorch's kaiming_uniform
        # with a = sqrt(5)): x A then has about the variance of x. B = 0: no change at the start.
        bound = 1.0 / math.sqrt(in_features)
        self.lora_A = Parameter(np.random.default_rng(rng).uniform(-bound, bound, (in_features, rank)).astype(dtype))
        self.lora_B = Parameter(np.zeros((rank, out_features), dtype=dtype))
        self.rank, self.alpha, self.scale = int(rank), alpha, alpha / rank
        self.merged = False  # True while W holds W + scale * A B

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)  # (..., out): the frozen layer, as Linear runs it
        if not self.merged:
            # (x A) B: two thin products, (..., r) then (..., out); never the (in, out) matrix A B.
            # The scale goes on the thin (..., r) middle, the cheaper place for it.
            y = y + F.linear(F.linear(x, self.lora_A) * self.scale, self.lora_B)
        return y

    def delta(self):
        """The weight update scale * A @ B, (in, out), as an array."""
        return (self.lora_A.data @ self.lora_B.data) * self.weight.dtype.type(self.scale)

    def merge(self):
        """W <- W + scale * A B, in place: the layer now runs as a plain Linear. For inference:
        while merged, A and B are not used, so they receive no gradient."""
        if not self.merged:
            self.weight.data += self.delta()  # in place: the optimizer may hold a view of W
            self.merged = True

    def unmerge(self):
        """Undo `merge` (equal up to float rounding), e.g. to go on training A and B."""
        if self.merged:
            self.weight.data -= self.delta()
            self.merged = False

    def __repr__(self):
        return f"LoRALinear({self.weight.shape[0]}, {self.weight.shape[1]}, rank={self.rank}, alpha={self.alpha})"


def block_targets(n_layer, n_blocks, projections):
    """Names of the `projections` of the last `n_blocks` of a GPT's n_layer blocks, for
    `apply_lora`'s targets (or, with projections ["*"], `set_trainable`'s patterns).

    Example:
        block_targets(4, 1, ["attn.c_attn", "mlp.c_fc"])
        -> ['transformer.h.3.attn.c_attn', 'transformer.h.3.mlp.c_fc']
    """
    if not 0 <= n_blocks <= n_layer:
        raise ValueError(f"the number of blocks must be in [0, {n_layer}] for a {n_layer}-block model, got {n_blocks}")
    return [f"transformer.h.{i}.{p.strip()}" for i in range(n_layer - n_blocks, n_layer) for p in projections]


def apply_lora(model, rank, alpha, targets=DEFAULT_TARGETS, seed=None):
    """Replace, in place, every Linear of `model` whose dotted module name matches one of the glob
    `targets` by a LoRALinear around it. Returns the names wrapped (none matching is an error).

    Example, on a 4-layer GPT:
        apply_lora(model, 8, 16, targets=["transformer.h.3.*"])
        -> ['transformer.h.3.attn.c_attn', 'transformer.h.3.attn.c_proj',
            'transformer.h.3.mlp.c_fc', 'transformer.h.3.mlp.c_proj']
    subtle: swap before building the optimizer, which only knows the parameters it was given.
    """
    rng = np.random.default_rng(seed)
    wrapped = []
    for prefix, module in list(model.named_modules()):
        for attr, child in list(vars(module).items()):
            name = f"{prefix}.{attr}" if prefix else attr
            if isinstance(child, Linear) and any(fnmatch.fnmatchcase(name, t) for t in targets):
                setattr(module, attr, LoRALinear(child, rank, alpha, rng))
                wrapped.append(name)
    if not wrapped:
        raise ValueError(f"no Linear layer of {type(model).__name__} matches {list(targets)}; "
                         f"names look like 'transformer.h.0.attn.c_attn'")
    return wrapped


def merged_state_dict(model):
    """The state dict of the model with every LoRA update folded in and no lora_* entries: what
    the plain (unwrapped) model would hold. Copies; the model itself is not changed.

    Example:
        GPTClassifier(config, 2).load_state_dict(merged_state_dict(lora_model))   # strict: fits
    """
    sd = {name: p.data.copy() for name, p in model.named_parameters()
          if not name.endswith((".lora_A", ".lora_B"))}
    for prefix, m in model.named_modules():
        if isinstance(m, LoRALinear) and not m.merged:
            sd[f"{prefix}.weight"] += m.delta()
    return sd


def lora_layers(model):
    """Every LoRALinear in the model, in module order."""
    return [m for _, m in model.named_modules() if isinstance(m, LoRALinear)]


def merge_lora(model):
    """Merge every LoRA layer (see `LoRALinear.merge`); returns the model."""
    for m in lora_layers(model):
        m.merge()
    return model


def unmerge_lora(model):
    """Undo `merge_lora`; returns the model."""
    for m in lora_layers(model):
        m.unmerge()
    return model
