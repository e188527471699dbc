"""Weights in fewer bytes, for inference: int8 with one scale per output channel, or bfloat16.

Generation reads every weight once per token, so fewer bytes is more speed. These functions turn a
float32 weight into its stored form; `GPT.quantize` applies them to a model in place, and
kernels.gemv widens the stored weights back to float32 as it reads them (never a float32 copy).
What it leaves out: the kernels (kernels/jit_gemv.py, and the reference in kernels/reference.py).
"""
import numpy as np

from .kernels.reference import bf16_to_float32
from .nn import Module
from .tensor import Tensor

QUANTIZED = {"int8": np.int8, "bf16": np.uint16}  # the kinds GPT.quantize offers: name -> stored dtype


def quantize_int8(w, axis):
    """Symmetric int8 with one scale per output channel: w (float) -> (q int8, scale float32), with
    scale = max|w| / 127 over `axis` (the input axis), q = round(w / scale); w ~ q * scale.

    Example: quantize_int8([[0.5, -2.0], [1.0, 1.0]], axis=0) -> q [[64, -127], [127, 64]], scale
    [1/127, 2/127]: each column's largest |w| maps to 127.
    """
    w = np.asarray(w, dtype=np.float32)
    scale = np.abs(w).max(axis=axis, keepdims=True) / 127
    scale[scale == 0] = 1  # an all-zero channel: any scale gives q = 0
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale.reshape(-1).astype(np.float32)


def quantize_bf16(w):
    """bfloat16 as uint16: the upper 16 bits of each float32, rounded to nearest even on the lower
    16 (8 significant bits, float32's range); bf16_to_float32 widens them back exactly.

    Example: 1 + 2**-8 (halfway between two bfloat16s) -> 0x3F80, which is 1.0 (the even one).
    """
    bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def quantize_parameter(p, kind, axis):
    """Quantize Parameter p in place (GPT.quantize): p.data becomes int8 with p.scale its scales,
    or bfloat16 bits (uint16) with no scale."""
    if kind == "int8":
        p.data, p.scale = quantize_int8(p.data, axis)
    else:
        p.data, p.scale = quantize_bf16(p.data), None
    p.grad, p.requires_grad = None, False


class QuantizedEmbedding(Module):
    """The token embedding of a quantized model: the lookup dequantizes only the rows it picks,
    from weight.data (V, C) int8 with weight.scale (V,), or (V, C) bfloat16 bits."""

    def __init__(self, weight):
        self.weight = weight

    def forward(self, idx):
        rows = self.weight.data[np.asarray(idx)]  # idx.shape + (C,)
        if self.weight.scale is None:
            return Tensor(bf16_to_float32(rows))
        return Tensor(rows * self.weight.scale[np.asarray(idx)][..., None])
