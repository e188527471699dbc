"""tinygpt: a small, readable, fast GPT stack in pure Python on NumPy.

Reading order: tensor.py (autograd, with autograd.py) -> functional.py (fused ops) -> kernels/ (the array math) ->
nn.py -> model.py (+ hf.py) -> optim.py -> tokenizer/ -> data.py -> checkpoint.py -> train.py.
"""
from . import functional
from .autograd import detect_anomaly, is_grad_enabled, no_grad
from .functional import concatenate, stack, where
from .model import GPT, GPTConfig
from .nn import evaluating
from .optim import AdamW
from .tensor import Tensor
from .tokenizer import BPETokenizer, CharTokenizer

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "Tensor", "no_grad", "is_grad_enabled", "detect_anomaly", "evaluating",
           "BPETokenizer", "CharTokenizer", "AdamW", "concatenate", "stack", "where", "functional"]
