"""Hugging Face GPT-2 checkpoint folders: config.json + model.safetensors, read into a `GPT` and
written from one, so that `transformers.GPT2LMHeadModel.from_pretrained(path)` loads what
`save_pretrained` writes and tinygpt loads what transformers saves.

Parameter names are GPT-2's own on both sides, so weights map one to one; the config maps
`n_positions` to `block_size`. Files are written through `fileio.atomic_write`. safetensors is
an optional dependency, imported only when a checkpoint is read or written.

What it leaves out: the model (model.py), tinygpt's own training checkpoints (checkpoint.py),
the tokenizer files, and the GPT-2 options tinygpt does not implement (refused with a ValueError
that names the option).
"""
import json
import os

import numpy as np

from .fileio import atomic_write, read_file
from .model import GPT, GPTConfig
from .nn import LayerNorm, Linear
from .runtime import check_memory

REQUIRED = ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd")
FLOAT_DTYPES = ("F16", "F32", "F64")  # safetensors' names of the dtypes NumPy can cast from
MAX_CONFIG_BYTES = 1 << 20  # a GPT-2 config.json is a few hundred bytes


def _safetensors():
    """The safetensors package (with safetensors.numpy), or an ImportError that says how to install it."""
    try:
        import safetensors.numpy
    except ImportError:
        raise ImportError("reading and writing Hugging Face checkpoints needs the safetensors package: "
                          "pip install safetensors") from None
    return safetensors


def _read_config(config_file, dropout):
    """GPTConfig from a GPT-2 config.json; anything else (not JSON, not an object, wrong types, the
    options tinygpt does not implement) raises ValueError naming the file."""
    try:
        hf = json.loads(read_file(config_file, MAX_CONFIG_BYTES, "a GPT-2 config").decode("utf-8"))
    except RecursionError:  # JSON nested thousands deep
        raise ValueError(f"{config_file} is not a GPT-2 config: it is nested too deeply") from None
    except ValueError as e:  # not UTF-8, not JSON
        raise ValueError(f"{config_file} is not a GPT-2 config: {e}") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{config_file} is not a GPT-2 config: it holds a {type(hf).__name__}, not an object")
    missing = [k for k in REQUIRED if k not in hf]
    if missing:
        raise ValueError(f"{config_file} lacks {missing}")
    try:
        config = GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                           n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=dropout, bias=True)
    except (TypeError, ValueError) as e:  # sizes that are not positive integers, a bad dropout
        raise ValueError(f"{config_file}: {e}") from None
    unsupported = {  # the GPT-2 options this model does not implement, and their standard values
        "activation_function": (hf.get("activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh")),
        "layer_norm_epsilon": (hf.get("layer_norm_epsilon", 1e-5), (1e-5,)),
        "n_inner": (hf.get("n_inner"), (None, 4 * config.n_embd)),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), (False,)),
        "scale_attn_weights": (hf.get("scale_attn_weights", True), (True,)),
    }
    for key, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise ValueError(f"{config_file}: {key}={value!r} is not supported (expected one of {allowed})")
    return config


def _read_weights(weights_file, config, config_file):
    """name -> array of every weight in model.safetensors. A file that is not safetensors (corrupt
    header, truncated), holds a weight that is not float, lacks one of the config's weights, holds
    one it does not have, or of another shape, raises ValueError naming the file, before any
    array is read: the model's size comes from `config_file`, so a lying config must not allocate."""
    st = _safetensors()
    expect = config.parameter_shapes()
    expect["lm_head.weight"] = expect["transformer.wte.weight"]  # optional: tied to wte
    try:
        with st.safe_open(weights_file, framework="numpy") as f:
            # causal-mask buffers saved by older transformers, not weights
            keys = [k for k in f.keys() if not k.endswith((".attn.bias", ".attn.masked_bias"))]
            names = {k: k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k for k in keys}
            missing = sorted(set(expect) - set(names.values()) - {"lm_head.weight"})
            unknown = sorted(k for k, name in names.items() if name not in expect)
            if missing or unknown:
                raise ValueError(f"{weights_file} does not hold the weights {config_file} describes: "
                                 f"{len(missing)} missing {missing[:3]}, {len(unknown)} unknown {unknown[:3]}")
            for key in keys:
                header = f.get_slice(key)  # dtype and shape from the header, no data read yet
                if header.get_dtype() not in FLOAT_DTYPES:
                    raise ValueError(f"{weights_file}: {key} is {header.get_dtype()}, but weights must be "
                                     f"one of {FLOAT_DTYPES}")
                if tuple(header.get_shape()) != expect[names[key]]:
                    raise ValueError(f"{weights_file}: {key} has shape {tuple(header.get_shape())}, but "
                                     f"{config_file} says {expect[names[key]]}")
            return {key: f.get_tensor(key) for key in keys}
    except (st.SafetensorError, OSError) as e:  # safetensors' own error names no file
        raise ValueError(f"{weights_file} is not a readable safetensors file: {e}") from None


def from_pretrained(path, dropout=0.0, dtype=np.float32):
    """A GPT from a Hugging Face GPT-2 checkpoint folder: config.json + model.safetensors, as
    written by `GPT2LMHeadModel.save_pretrained` (or by `save_pretrained` below)."""
    config_file, weights_file = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
    for f in (config_file, weights_file):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{f} not found: a GPT-2 checkpoint directory needs config.json and "
                                    "model.safetensors (save it with safe_serialization=True)")
    config = _read_config(config_file, dropout)
    # the file's arrays and the model's are held at once while loading
    try:
        check_memory(config, bytes_per_param=2 * np.dtype(dtype).itemsize)
    except ValueError as e:
        raise ValueError(f"{config_file}: {e}") from None
    weights = _read_weights(weights_file, config, config_file)
    model = GPT(config, seed=0, dtype=dtype)
    state_dict, lm_head = {}, None
    for key, value in weights.items():
        if key == "lm_head.weight":
            lm_head = value
            continue
        # GPT2LMHeadModel's keys start with "transformer.", GPT2Model's do not
        state_dict[key if key.startswith("transformer.") else "transformer." + key] = value
    wte = state_dict.get("transformer.wte.weight")
    if lm_head is not None and wte is not None and not np.array_equal(lm_head, wte):
        raise ValueError(f"{weights_file}: lm_head.weight differs from transformer.wte.weight, but "
                         "tinygpt ties the output head to the token embedding")
    try:
        model.load_state_dict(state_dict)
    except ValueError as e:
        raise ValueError(f"{weights_file}: {e}") from None
    return model


def save_pretrained(model, path):
    """Write config.json + model.safetensors into the folder `path` in Hugging Face's GPT-2 format,
    each file atomically. Only the transformer.* weights are written: the tied lm_head is rebuilt
    from wte on load."""
    c = model.config
    tensors = {name: np.ascontiguousarray(p.data) for name, p in model.named_parameters()}
    for name, m in model.named_modules():
        if isinstance(m, (Linear, LayerNorm)) and m.bias is None:  # bias=False: GPT-2 always has
            tensors[f"{name}.bias"] = np.zeros(m.weight.shape[-1], m.weight.dtype)  # biases; 0 is the same
    hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": c.vocab_size,
          "n_positions": c.block_size, "n_ctx": c.block_size, "n_layer": c.n_layer, "n_head": c.n_head,
          "n_embd": c.n_embd, "n_inner": None, "activation_function": "gelu_new",
          "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
          "attn_pdrop": 0.0,  # tinygpt has no dropout on the attention probabilities (model.py)
          "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "tie_word_embeddings": True,
          # GPT-2's <|endoftext|> is id 50256; a smaller vocabulary (e.g. characters) has none
          "bos_token_id": 50256 if c.vocab_size > 50256 else None,
          "eos_token_id": 50256 if c.vocab_size > 50256 else None}
    # transformers refuses a safetensors file whose metadata lacks "format"
    weights = _safetensors().numpy.save(tensors, metadata={"format": "pt"})  # the file's bytes
    atomic_write(os.path.join(path, "model.safetensors"), lambda f: f.write(weights))
    atomic_write(os.path.join(path, "config.json"), lambda f: f.write((json.dumps(hf, indent=2) + "\n").encode()))
