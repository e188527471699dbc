"""GPT-2, the model: a stack of pre-LayerNorm transformer blocks over token + position embeddings.

Read top to bottom: `GPTConfig` (the sizes), `KVCache` (generation's memory of past keys and
values), the model from its parts up (`CausalSelfAttention`, which keeps the fused attention call
and the manual implementation of attention side by side; `MLP`, `Block`, `Transformer`), and
`GPT`: forward and generation (sampling.py picks each token, quantize.py stores the weights in
fewer bytes for `GPT.quantize`). Names are GPT-2's own (`wte`, `wpe`, `h`, `ln_1`, `attn.c_attn`,
`c_proj`, `mlp.c_fc`, `ln_f`), so Hugging Face `GPT2LMHeadModel` checkpoints map one to one
(`GPT.from_pretrained`, `GPT.save_pretrained`).

Choices that differ from nanoGPT, on purpose:
- No dropout on the attention probabilities (the fused kernel never forms them); there is dropout
  on the embeddings and on each residual branch, as in GPT-2.
- `forward(idx)` without targets returns logits for every position; `generate` takes what it needs.
- The output head is tied to the token embedding (logits = x @ wte.weight^T): no `lm_head` parameter.

What it leaves out: Hugging Face files (hf.py), training (train.py, optim.py), tokenization.
"""
import math
import numbers
from dataclasses import dataclass, replace

import numpy as np

from . import functional as F
from .nn import Dropout, Embedding, LayerNorm, Linear, Module, evaluating
from .runtime import available_memory, check_memory
from .quantize import QUANTIZED, QuantizedEmbedding, quantize_parameter
from .sampling import check_sampling, sample_next
from .tensor import Tensor


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2's BPE vocabulary
    block_size: int = 1024   # longest context, in tokens
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True        # biases in Linear and LayerNorm (False: nanoGPT's faster option)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not isinstance(self.bias, (bool, np.bool_)):  # "no" would be truthy: biases on
            raise TypeError(f"GPTConfig.bias must be True or False, got {self.bias!r}")
        if isinstance(self.dropout, (bool, np.bool_)) or not isinstance(self.dropout, numbers.Real):
            raise TypeError(f"GPTConfig.dropout must be a real number, got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")

    def parameter_shapes(self):
        """{name: shape} of every parameter of `GPT(self)`, without building it: what a file must
        hold for this config, and what it costs in memory (runtime.check_memory)."""
        C, bias = self.n_embd, self.bias
        shapes = {"transformer.wte.weight": (self.vocab_size, C), "transformer.wpe.weight": (self.block_size, C)}
        norms = [f"transformer.h.{i}.{ln}" for i in range(self.n_layer) for ln in ("ln_1", "ln_2")] + ["transformer.ln_f"]
        linears = {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}
        for i in range(self.n_layer):
            for name, shape in linears.items():
                shapes[f"transformer.h.{i}.{name}.weight"] = shape
                if bias:
                    shapes[f"transformer.h.{i}.{name}.bias"] = shape[1:]
        for name in norms:
            shapes[f"{name}.weight"] = (C,)
            if bias:
                shapes[f"{name}.bias"] = (C,)
        return shapes


class KVCache:
    """One layer's keys and values for the positions seen so far, so that generating a token runs
    the model over that one position only. Buffers are allocated once, for block_size positions,
    and filled in place: no concatenation per step."""

    def __init__(self, batch_size, n_head, block_size, head_size, dtype=np.float32):
        # np.zeros, not zeros_like: calloc'd pages cost nothing until the positions are filled
        self.k = np.zeros((batch_size, n_head, block_size, head_size), dtype=dtype)  # (B, nh, block_size, hs)
        self.v = np.zeros(self.k.shape, dtype=dtype)
        self.length = 0  # positions filled

    def append(self, k, v):
        """Store arrays k, v (B, nh, T, hs) after the cached positions; return keys and values of
        every position so far, (B, nh, length, hs), as views of the buffers."""
        start, end = self.length, self.length + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(Module):
    """Multi-head self-attention in which each position sees only itself and earlier positions."""

    def __init__(self, config, dtype=np.float32, rng=None):
        C = config.n_embd
        self.c_attn = Linear(C, 3 * C, bias=config.bias, dtype=dtype, rng=rng)  # q, k, v in one product
        self.c_proj = Linear(C, C, bias=config.bias, dtype=dtype, rng=rng)
        self.resid_dropout = Dropout(config.dropout)
        self.n_head = config.n_head
        # True: the fused attention op (F.self_attention); False: the manual implementation of
        # attention in forward, as Tensor ops (same numbers)
        self.fused = True

    def forward(self, x, kv_cache=None):
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        qkv = self.c_attn(x)  # (B, T, 3C): columns laid out as [q | k | v], each C = nh * hs wide
        if self.fused:
            # the split into heads, the cache, the attention and the merge as one op that copies
            # nothing (F.self_attention); its causal mask is aligned bottom-right, as below
            y = F.self_attention(qkv, nh, causal=True, kv_cache=kv_cache)  # (B, T, C)
            return self.resid_dropout(self.c_proj(y))
        # manual implementation of attention
        q, k, v = [t.reshape(B, T, nh, hs).permute(0, 2, 1, 3)  # (B, nh, T, hs)
                   for t in qkv.split(3, axis=-1)]              # 3 x (B, T, C)
        if kv_cache is not None:  # the cache holds plain arrays: constants, no gradient
            k, v = (Tensor(a) for a in kv_cache.append(k.data, v.data))  # (B, nh, T_past + T, hs)
        T_past = k.shape[2] - T  # positions already in the cache
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, T_past + T)
        # causal mask, bottom-right aligned: query i (position T_past + i) sees key j <= T_past + i
        future = np.triu(np.ones((T, T_past + T), dtype=bool), k=T_past + 1)  # (T, T_past + T)
        att = att.masked_fill(future, -np.inf)
        att = F.softmax(att, axis=-1)
        y = att @ v  # (B, nh, T, T_past + T) x (B, nh, T_past + T, hs) -> (B, nh, T, hs)
        y = y.permute(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C): re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(Module):
    """The position-wise feed-forward network: expand 4x, GELU, project back."""

    def __init__(self, config, dtype=np.float32, rng=None):
        C = config.n_embd
        self.c_fc = Linear(C, 4 * C, bias=config.bias, dtype=dtype, rng=rng)
        self.c_proj = Linear(4 * C, C, bias=config.bias, dtype=dtype, rng=rng)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(Module):
    """A transformer block, pre-LayerNorm: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config, dtype=np.float32, rng=None):
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias, dtype=dtype)
        self.attn = CausalSelfAttention(config, dtype, rng)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias, dtype=dtype)
        self.mlp = MLP(config, dtype, rng)

    def forward(self, x, kv_cache=None):
        x = x + self.attn(self.ln_1(x), kv_cache)
        return x + self.mlp(self.ln_2(x))


class Transformer(Module):
    """The container that gives GPT-2's names their `transformer.` prefix; GPT.forward runs it."""

    def __init__(self, config, dtype=np.float32, rng=None):
        self.wte = Embedding(config.vocab_size, config.n_embd, dtype, rng)  # token embeddings
        self.wpe = Embedding(config.block_size, config.n_embd, dtype, rng)  # position embeddings
        self.drop = Dropout(config.dropout)
        self.h = [Block(config, dtype, rng) for _ in range(config.n_layer)]
        self.ln_f = LayerNorm(config.n_embd, bias=config.bias, dtype=dtype)


class GPT(Module):
    """The language model: token ids (B, T) -> next-token logits (B, T, vocab_size)."""

    def __init__(self, config, seed=None, dtype=np.float32):
        """`seed` (an int or an np.random.Generator) makes the initial weights, and the dropout
        masks, reproducible. `dtype=np.float64` builds a float64 model for gradient checks."""
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT takes a GPTConfig, got {type(config).__name__}: build one with GPTConfig(**settings)")
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"GPT dtype must be np.float32 or np.float64, got {dtype!r}")
        check_memory(config, bytes_per_param=np.dtype(dtype).itemsize)  # before any weight is allocated
        self.config = config
        rng = np.random.default_rng(seed)
        self.transformer = Transformer(config, dtype, rng)
        # GPT-2's init: each block adds two residual projections (attn.c_proj, mlp.c_proj) to the
        # residual stream; std 0.02 / sqrt(2 n_layer) keeps its variance from growing with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                p.data *= 1.0 / math.sqrt(2 * config.n_layer)
        if seed is not None:
            dropout_rng = np.random.default_rng(rng.integers(2**63))
            for _, m in self.named_modules():
                if isinstance(m, Dropout):
                    m.generator = dropout_rng

    # ---- the forward pass ------------------------------------------------------------------------
    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) int token ids -> (logits (B, T, vocab_size), loss).

        loss is the mean cross-entropy against `targets` (B, T) (entries equal to -100 are
        ignored), or None without targets. `kv_cache` (from `new_kv_cache`) continues a sequence:
        idx then holds the positions after the cached ones, and the cache is extended. It is for
        inference: the cache stores plain arrays, so no gradient flows into earlier positions.
        """
        x = self._hidden(idx, kv_cache)  # (B, T, C)
        logits = self._logits(x)         # (B, T, V)
        loss = None
        if targets is not None:
            targets = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
            if targets.shape != logits.shape[:2] or targets.dtype.kind not in "iu":
                raise ValueError(f"targets must be integers of shape {logits.shape[:2]} like idx, "
                                 f"got {targets.dtype} of shape {targets.shape}")
            loss = F.cross_entropy(logits, targets, ignore_index=-100)
        return logits, loss

    def _hidden(self, idx, kv_cache=None):
        """The final hidden states (B, T, C), after ln_f."""
        past = 0 if kv_cache is None else kv_cache[0].length
        idx = self._check_idx(idx, self.config.block_size - past)
        tr = self.transformer
        pos = np.arange(past, past + idx.shape[1])     # (T,): positions continue after the cache
        x = tr.drop(tr.wte(idx) + tr.wpe(pos))         # (B, T, C) + (T, C)
        for i, block in enumerate(tr.h):
            x = block(x, None if kv_cache is None else kv_cache[i])
        return tr.ln_f(x)

    def _logits(self, x):
        """The output head, tied to the token embedding: x (B, T, C) @ wte^T (C, V) -> (B, T, V)."""
        return F.linear(x, self.transformer.wte.weight, transpose_weight=True)  # (B, T, V)

    def _check_idx(self, idx, max_len):
        """Token ids as an integer (B, T) array, 0 < T <= max_len, each in [0, vocab_size)."""
        idx = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
        if idx.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers, got dtype {idx.dtype}")
        if idx.ndim != 2 or idx.size == 0:
            raise ValueError(f"token ids must be a non-empty (batch, time) array, got shape {idx.shape}")
        if idx.shape[1] > max_len:
            raise ValueError(f"sequence of length {idx.shape[1]} is longer than the {max_len} positions "
                             f"left (block_size {self.config.block_size})")
        V = self.config.vocab_size
        lo, hi = idx.min(), idx.max()
        if lo < 0 or hi >= V:
            raise ValueError(f"token id {lo if lo < 0 else hi} is out of range [0, {V}) (vocab_size {V})")
        return idx

    # ---- bookkeeping ---------------------------------------------------------------------------------
    def num_params(self, non_embedding=True):
        """Number of parameters. The position embeddings are left out by default (they do no
        compute); the token embeddings are counted, since they are also the output head."""
        n = sum(p.size for p in self.parameters())
        return n - self.transformer.wpe.weight.size if non_embedding else n

    def crop_block_size(self, block_size):
        """Shrink the context to `block_size` positions, e.g. to fine-tune a 1024-context
        checkpoint on shorter sequences. subtle: this replaces wpe's array, so call it before
        creating the optimizer, which keeps views into the parameters' arrays."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"block_size must be in [1, {self.config.block_size}], got {block_size}")
        self.config = replace(self.config, block_size=block_size)
        wpe = self.transformer.wpe.weight
        wpe.data, wpe.grad = wpe.data[:block_size].copy(), None

    # ---- generation ------------------------------------------------------------------------------------
    def new_kv_cache(self, batch_size):
        """An empty cache, one KVCache per block, for `forward(..., kv_cache=...)`."""
        c = self.config
        dtype = self.transformer.ln_f.weight.dtype  # not wte's: int8 once quantized
        return [KVCache(batch_size, c.n_head, c.block_size, c.n_embd // c.n_head, dtype)
                for _ in range(c.n_layer)]

    def _next_logits(self, idx, kv_cache, modules=None):
        """Logits (B, V) for the token after idx (which continues kv_cache), in eval mode and
        without a graph; the modules' training flags are restored afterwards (`evaluating`)."""
        with evaluating(self, modules):
            x = self._hidden(idx, kv_cache)              # (B, T, C)
            return self._logits(x[:, -1:]).data[:, -1]   # (B, V): the head on the last position only

    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None):
        """Continue each row of idx (B, T) by max_new_tokens tokens, yielding one (B,) array of
        token ids per step. Prompts longer than block_size are cropped to their last block_size
        tokens. See `sample_next` for temperature, top_k and top_p; `seed` makes sampling
        reproducible.

        Each step runs the model over one new position, reusing the cached keys and values of the
        earlier ones. Once the cache is full, the window slides: the positions of every kept token
        shift down by one, so their cached keys are stale and the cache is rebuilt from the last
        block_size tokens (positions 0.. again, exactly what a model without a cache would see).
        """
        idx = self._check_idx(idx, max_len=np.inf)  # checked now, not at the first next()
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
        check_sampling(temperature, top_k, top_p)
        need, available = 8 * idx.shape[0] * (idx.shape[1] + max_new_tokens), available_memory()
        if available is not None and need > available:  # _stream keeps every token id, int64
            raise ValueError(f"max_new_tokens={max_new_tokens} would take {need / 1e9:,.1f} GB for the token ids, "
                             f"but {available / 1e9:.1f} GB of memory is available")
        return self._stream(idx, max_new_tokens, temperature, top_k, top_p, np.random.default_rng(seed))

    def _stream(self, idx, max_new_tokens, temperature, top_k, top_p, rng):
        B, T0 = idx.shape
        block_size = self.config.block_size
        tokens = np.empty((B, T0 + max_new_tokens), dtype=np.int64)  # the prompt, then the output
        tokens[:, :T0] = idx
        kv_cache = self.new_kv_cache(B)
        modules = [m for _, m in self.named_modules()]  # walked once, for evaluating at each step
        for n in range(T0, T0 + max_new_tokens):  # n: tokens so far
            if kv_cache[0].length in (0, block_size):  # first step, or the window slides: (re)fill
                for cache in kv_cache:
                    cache.length = 0
                logits = self._next_logits(tokens[:, max(0, n - block_size):n], kv_cache, modules)
            else:                                      # one new position
                logits = self._next_logits(tokens[:, n - 1:n], kv_cache, modules)
            tokens[:, n] = sample_next(logits, temperature, top_k, top_p, rng)
            yield tokens[:, n].copy()

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None):
        """idx (B, T) -> (B, T + max_new_tokens): the prompt followed by the generated tokens."""
        idx = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
        steps = list(self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, seed))
        new = np.stack(steps, axis=1) if steps else np.zeros((idx.shape[0], 0), dtype=np.int64)
        return np.concatenate([idx.astype(np.int64), new], axis=1)

    def quantize(self, kind="int8"):
        """Store every weight matrix (each Linear's, and wte, which is also the output head) in
        fewer bytes, in place, for inference only (a forward that records a graph raises). Returns self.

        "int8": int8 with one float32 scale per output channel, symmetric: scale = max|w| / 127,
        w ~ scale * q (a quarter of the bytes). "bf16": bfloat16, the upper 16 bits of each float32
        (half the bytes, float32's range, 8 significant bits).

        Generation reads every weight once per token, so fewer bytes is more speed; kernels.gemv
        widens the weights as it reads. Biases, layer norms and wpe stay float32.
        """
        if kind not in QUANTIZED:
            raise ValueError(f"quantize supports {sorted(QUANTIZED)}, got {kind!r}")
        if any(p.dtype.kind in "iu" for p in self.parameters()):  # int8 or bf16 bits
            raise ValueError(f"quantize({kind!r}): this model is already quantized")
        for _, m in list(self.named_modules()):
            if isinstance(m, Linear):
                quantize_parameter(m.weight, kind, axis=0)  # (in, out): one int8 scale a column
        wte = self.transformer.wte
        quantize_parameter(wte.weight, kind, axis=1)      # (V, C): one int8 scale a row, an output of the head
        self.transformer.wte = QuantizedEmbedding(wte.weight)
        return self

    # ---- Hugging Face GPT-2 checkpoints (hf.py) -----------------------------------------------------
    @staticmethod
    def from_pretrained(path, dropout=0.0, dtype=np.float32):
        """Load a Hugging Face GPT-2 checkpoint folder (config.json + model.safetensors)."""
        from . import hf  # here, not at the top: hf.py imports this module
        return hf.from_pretrained(path, dropout, dtype)

    def save_pretrained(self, path):
        """Write this model as a Hugging Face GPT-2 checkpoint folder that transformers loads."""
        from . import hf
        hf.save_pretrained(self, path)
