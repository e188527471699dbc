"""tinygpt: a small, readable, fast GPT stack in pure Python on NumPy.

Reading order: tensor.py (autograd) -> functional.py (fused ops) -> kernels/ (the array math) ->
nn.py -> model.py -> optim.py -> tokenizer.py -> data.py -> checkpoint.py -> train.py.
"""
from .tensor import Tensor, concatenate, is_grad_enabled, no_grad, stack, where
from . import functional

__version__ = "0.1.0"
__all__ = ["Tensor", "no_grad", "is_grad_enabled", "concatenate", "stack", "where", "functional"]
