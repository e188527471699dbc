"""Modules: objects that own parameters and know how to run forward.

This module owns `Parameter` (a Tensor that a Module learns), `Module` (finds its parameters by
walking its attributes, saves and loads them, switches between training and evaluation), and the
four layers a GPT is built from: `Linear`, `Embedding`, `LayerNorm`, `Dropout`. The math of each
layer lives in `tensor.py` / `functional.py`; a layer only holds the weights and calls it.

What it leaves out: hooks, buffers, devices, and a `ModuleList`: a plain Python list of modules
(such as GPT's `h`) is found too, and its items are named `h.0`, `h.1`, ...

Conventions:
- Parameters are float32 unless a layer is built with `dtype=np.float64` (gradient checks do).
- Weights start as GPT-2 starts them: N(0, 0.02) for Linear and Embedding weights, zero biases,
  LayerNorm weight 1 and bias 0. `GPT` then scales its residual projections down.
- `Linear.weight` is (in_features, out_features), GPT-2's "Conv1D" layout, so forward is
  `x @ weight + bias` with no transpose and Hugging Face GPT-2 weights load one to one.
"""
import contextlib

import numpy as np

from . import functional as F
from .autograd import no_grad
from .tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module learns. `requires_grad=False` freezes it; it is still a parameter
    (listed, saved and loaded), the optimizer just skips it."""

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)


class Module:
    """Base class of every layer and model. Subclasses set attributes in `__init__` and define
    `forward`; parameters are found by walking the attributes (see `named_parameters`)."""

    training = True  # a class default, so subclasses need not call super().__init__()

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def _children(self):
        """(name, value) for each attribute that is a Parameter or a Module, in the order they were
        set; a list or tuple of them yields `name.0`, `name.1`, ..."""
        for name, value in vars(self).items():
            if isinstance(value, (Parameter, Module)):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, (Parameter, Module)):
                        yield f"{name}.{i}", item

    def named_modules(self, prefix=""):
        """(dotted name, module) for this module ('' for itself) and every submodule, each once."""
        seen, stack = set(), [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            subs = [(f"{name}.{n}" if name else n, m) for n, m in module._children() if isinstance(m, Module)]
            stack.extend(reversed(subs))  # reversed: pop them in attribute order (depth first)

    def named_parameters(self):
        """(dotted name, Parameter) for every parameter, e.g. 'transformer.h.0.attn.c_attn.weight'.

        subtle: a parameter shared by two modules (tied weights) is listed once, under the first
        name met, so an optimizer never updates it twice.
        """
        seen = set()
        for prefix, module in self.named_modules():
            for name, p in module._children():
                if isinstance(p, Parameter) and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        """Set `training` on this module and every submodule (Dropout reads it). Returns self."""
        for _, m in self.named_modules():
            m.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        """name -> np.ndarray for every parameter (frozen ones too).

        subtle: these are the parameters' own arrays, not copies (as in PyTorch): training goes
        on changing them. Copy them if you need a snapshot.
        """
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy values into the parameters, in place. Returns (missing, unexpected) key lists.

        Every problem is reported at once, in one ValueError: keys missing from `state_dict` and
        keys the model does not have (both only when `strict`), and values of the wrong shape
        (always). Nothing is written unless every check passes.

        subtle: values go into the existing arrays (`p.data[...] = value`), never `p.data = value`:
        the optimizer keeps each parameter as a view into one flat buffer, and rebinding `p.data`
        would cut the parameter loose from it. Values are cast to the parameter's dtype.
        """
        params = dict(self.named_parameters())
        values = {k: np.asarray(v.data if isinstance(v, Tensor) else v) for k, v in state_dict.items()}
        missing = [k for k in params if k not in values]
        unexpected = [k for k in values if k not in params]
        misshaped = [f"{k}: expected {params[k].shape}, got {values[k].shape}"
                     for k in params if k in values and values[k].shape != params[k].shape]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        if misshaped:
            problems.append(f"wrong shapes: {misshaped}")
        if problems:
            raise ValueError(f"cannot load state dict into {type(self).__name__}: " + "; ".join(problems))
        for k, p in params.items():
            if k in values:
                p.data[...] = values[k]
        return missing, unexpected


@contextlib.contextmanager
def evaluating(model, modules=None):
    """Inside the block: eval mode (no dropout) and no graph. Afterwards every module is back in
    the mode it was in, mixed modes included. The one way tinygpt evaluates or generates:

        with evaluating(model):
            logits, loss = model(x, y)

    `modules`: the model's modules (named_modules), if the caller has them already: generation
    enters once a token, and walking the modules each time costs more than a layer norm.
    """
    modes = [(m, m.training) for m in (modules or [m for _, m in model.named_modules()])]
    for m, _ in modes:
        m.training = False  # model.eval(), without walking the modules again
    try:
        with no_grad():
            yield model
    finally:
        for m, mode in modes:
            m.training = mode


def _check_sizes(layer, **sizes):
    for name, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{layer}: {name} must be a positive integer, got {n!r}")


def _normal(shape, std, dtype, rng):
    """N(0, std^2) samples drawn directly in `dtype` (no float64 detour for float32)."""
    rng = np.random.default_rng(rng)  # accepts None, an int seed, or a Generator (used as is)
    return rng.standard_normal(shape, dtype=dtype) * dtype(std)


class Linear(Module):
    """y = x @ weight + bias, with weight (in_features, out_features): GPT-2's Conv1D layout."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        _check_sizes("Linear", in_features=in_features, out_features=out_features)
        dtype = np.dtype(dtype).type
        self.weight = Parameter(_normal((in_features, out_features), 0.02, dtype, rng))
        self.bias = Parameter(np.zeros(out_features, dtype=dtype)) if bias else None

    def forward(self, x):
        # one fused op (functional.linear): a single (rows, in) @ (in, out) product over all
        # leading axes, faster than a loop over a batch of (T, in) @ (in, out) products
        return F.linear(x, self.weight, self.bias)  # (..., out)


class Embedding(Module):
    """A lookup table: integer ids of any shape -> rows of weight (num_embeddings, embedding_dim)."""

    def __init__(self, num_embeddings, embedding_dim, dtype=np.float32, rng=None):
        _check_sizes("Embedding", num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        self.weight = Parameter(_normal((num_embeddings, embedding_dim), 0.02, np.dtype(dtype).type, rng))

    def forward(self, idx):
        return F.embedding(self.weight, idx)  # idx.shape + (embedding_dim,)


class LayerNorm(Module):
    """Normalise the last axis to mean 0, variance 1, then scale by weight and shift by bias.
    `bias=False` drops the shift (nanoGPT's option; slightly faster, no worse)."""

    def __init__(self, ndim, bias=True, eps=1e-5, dtype=np.float32):
        _check_sizes("LayerNorm", ndim=ndim)
        self.weight = Parameter(np.ones(ndim, dtype=dtype))
        self.bias = Parameter(np.zeros(ndim, dtype=dtype)) if bias else None
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)


class Dropout(Module):
    """Zero activations with probability p while training (scaling the rest by 1/(1-p)); the
    identity in eval mode. `generator` (an np.random.Generator) makes the masks reproducible;
    without one, functional's default generator is used."""

    def __init__(self, p=0.0, generator=None):
        F._check_dropout_p(p)  # here, not at the first forward: that may be far into a run
        self.p = p
        self.generator = generator

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.generator)
