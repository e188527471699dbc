"""Checkpoints: everything needed to stop training and pick it up again as if it never stopped.

This module owns the checkpoint file. It saves and loads:
- the model's weights (`model.state_dict()`),
- the optimizer's state (AdamW's m, v and step count),
- the config (any JSON-able dict; train.py stores the model and training settings),
- the iteration number and the state of the random generators: the one that samples batches,
  and dropout's (`functional._rng`, plus any generator a module holds as `.generator`, which is
  how `GPT(config, seed=...)` seeds its Dropout layers), so a resumed run draws the very same
  batches and masks,
- any `extra` JSON-able facts (best val loss, loss history, the tokenizer's file name).

`load_model` is the one loader for a trained model, to sample from it or fine-tune it: a
checkpoint with its tokenizer, or a Hugging Face GPT-2 folder with GPT-2's tokenizer.

The format is a plain `.npz` (a zip of `.npy` arrays), written and read with pickling off, so
loading a checkpoint can never run code:

    model/<param name>   one array per weight
    optim/<buffer name>  decay.m, decay.v, no_decay.m, no_decay.v, step
    meta                 uint8 array: UTF-8 JSON {"format": "tinygpt-checkpoint", "version": 1, ...}

What it leaves out: the tokenizer (saved next to the checkpoint by its own `save`) and choosing
when to save (train.py).
"""
import dataclasses
import json
import math
import os
import zipfile

import numpy as np

from . import functional
from .fileio import atomic_write, file_in_folder
from .model import GPT, GPTConfig
from .runtime import available_memory, check_memory
from .tokenizer import BPETokenizer, load_tokenizer

FORMAT, VERSION = "tinygpt-checkpoint", 1
META_MAX_BYTES = 16 << 20  # the JSON metadata: configs, RNG states, a loss history of 100k evaluations
CKPT_FILE, TOKENIZER_FILE = "ckpt.npz", "tokenizer.tok"  # a training run's files in its --out-dir


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint: arrays by name, and the JSON metadata unpacked."""
    model: dict              # param name -> ndarray
    optimizer: dict          # buffer name -> ndarray (empty if none was saved)
    config: dict
    iter_num: int
    rng_state: dict = None           # np.random.Generator.bit_generator.state of the batch sampler
    dropout_rng_states: list = None  # the same for each of `dropout_generators(model)`
    extra: dict = dataclasses.field(default_factory=dict)


def dropout_generators(model):
    """The distinct np.random.Generators the model's dropout draws from: functional's default,
    then each module's own `.generator`, in module order (the same order on every build)."""
    gens, seen = [functional._rng], {id(functional._rng)}
    for _, m in model.named_modules():
        g = getattr(m, "generator", None)
        if isinstance(g, np.random.Generator) and id(g) not in seen:
            seen.add(id(g))
            gens.append(g)
    return gens


def save_checkpoint(path, model, optimizer=None, config=None, iter_num=0, rng=None, extra=None):
    """Write a checkpoint atomically (`fileio.atomic_write`), so a crash mid-write or a full disk
    leaves the previous checkpoint intact."""
    arrays = {f"model/{k}": np.asarray(v) for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    meta = {
        "format": FORMAT, "version": VERSION,
        "config": config or {}, "iter_num": int(iter_num),
        # a PCG64 state is a dict of (128-bit) ints: JSON carries them exactly
        "rng_state": rng.bit_generator.state if rng is not None else None,
        "dropout_rng_states": [g.bit_generator.state for g in dropout_generators(model)],
        "extra": extra or {},
    }
    for k, v in arrays.items():
        if v.dtype.kind not in "biuf":
            raise TypeError(f"checkpoint entry {k!r} has dtype {v.dtype}: only numeric arrays are "
                            "saved (the format allows no pickled objects)")
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)

    atomic_write(path, lambda f: np.savez(f, allow_pickle=False, **arrays))


def _member_limits(meta, path):
    """{member: most numbers it may hold} as a function, from the meta's model config (None
    without one, for a plain Module's checkpoint): each of GPT's weights its shape's size, a weight
    a model adds to GPT (a classifier's head) at most the largest of them, each optimizer buffer
    (one flat array over the trainable weights) at most all of them."""
    if "model" not in meta["config"]:
        return None
    config = _gpt_config(meta["config"]["model"], path)
    check_memory(config)  # a config no machine could hold: its shapes are not even listed
    sizes = {f"model/{name}.npy": math.prod(shape) for name, shape in config.parameter_shapes().items()}
    largest, total = max(sizes.values()), sum(sizes.values())

    def limit(member):
        if member in sizes:
            return sizes[member]
        if member.startswith("model/"):
            return largest  # a weight the model adds to GPT's
        return 1 if member == "optim/step.npy" else total
    return limit


def _check_members(zf, max_bytes, path):
    """Check every member's sizes before inflating any: the meta first, at most META_MAX_BYTES;
    then each array against the shapes the meta's model config implies (`_member_limits`), and
    their total against `max_bytes`; each .npy header must describe exactly its member's bytes.
    A small file can hold a member that inflates to GBs, or a header that claims 10^12 numbers.
    Returns the meta, parsed and checked."""
    infos = zf.infolist()
    for n, info in enumerate(infos, start=1):
        if not (info.filename == "meta.npy" or info.filename.startswith(("model/", "optim/"))) \
                or not info.filename.endswith(".npy"):
            raise ValueError(f"member {n} is not one of a checkpoint's (meta, model/*, optim/*)")
    meta_info = next((i for i in infos if i.filename == "meta.npy"), None)
    if meta_info is None:
        raise ValueError("it has no 'meta' entry")
    if meta_info.file_size > META_MAX_BYTES:
        raise ValueError(f"its meta would take {meta_info.file_size:,} bytes, more than the {META_MAX_BYTES:,} allowed")
    with zf.open(meta_info) as f:
        meta = _checked_meta(json.loads(np.lib.format.read_array(f, allow_pickle=False).tobytes().decode("utf-8")))
    total = sum(i.file_size for i in infos)
    if max_bytes is not None and total > max_bytes:
        raise ValueError(f"its arrays would take {total / 1e9:.2f} GB, more than the {max_bytes / 1e9:.2f} GB available")
    limit = _member_limits(meta, path)
    for info in infos:
        name = repr(info.filename[:80])
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"member {name} is .npy version {version}")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)  # the header only: nothing is inflated past it
            header = f.tell()
        if dtype.hasobject:
            raise ValueError(f"member {name} holds Python objects, which are never unpickled")
        nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if header + nbytes != info.file_size:
            raise ValueError(f"member {name} claims shape {shape[:8]} of {dtype} ({nbytes:,} bytes) "
                             f"but holds {info.file_size - header:,}")
        if limit is not None and info is not meta_info and (dtype.itemsize > 8 or math.prod(shape) > limit(info.filename)):
            raise ValueError(f"member {name} holds {math.prod(shape):,} numbers of {dtype}, more than the "
                             f"{limit(info.filename):,} its model config allows")
    return meta


def _checked_meta(meta):
    """The meta dict, its fields of the types the rest of tinygpt relies on."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"its meta has no format marker {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ValueError(f"it is version {str(meta.get('version'))[:20]}; this tinygpt reads version {VERSION}")
    types = {"config": dict, "iter_num": int, "rng_state": (dict, type(None)), "dropout_rng_states": list,
             "extra": dict}
    for key, kind in types.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ValueError(f"its meta field {key!r} is {type(meta.get(key)).__name__}, not {kind}")
    if not 0 <= meta["iter_num"] < 2**63:
        raise ValueError(f"its meta field 'iter_num' must be in [0, 2**63), got {meta['iter_num']}")
    if not all(isinstance(state, dict) for state in meta["dropout_rng_states"]):
        raise ValueError("its meta field 'dropout_rng_states' must be a list of generator states (dicts)")
    return meta


def read_checkpoint(path, max_bytes="available"):
    """Read and check a checkpoint file into a `Checkpoint`. Anything that is not a complete
    tinygpt checkpoint (truncated, corrupt, crafted, another program's .npz) raises ValueError
    naming it, before more memory is taken than the arrays its model config implies, and at most
    `max_bytes` (by default the memory available)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist" if not os.path.exists(path) else
                                f"checkpoint {path!r} is not a regular file")
    if max_bytes == "available":
        max_bytes = available_memory()
    try:
        with zipfile.ZipFile(path) as zf:
            meta = _check_members(zf, max_bytes, path)
        with np.load(path, allow_pickle=False) as z:
            # read every array now: a corrupt member fails its CRC check here, not later
            model = {k[len("model/"):]: z[k] for k in z.files if k.startswith("model/")}
            optim = {k[len("optim/"):]: z[k] for k in z.files if k.startswith("optim/")}
            return Checkpoint(model, optim, meta["config"], meta["iter_num"], meta["rng_state"],
                              meta["dropout_rng_states"], meta["extra"])
    except RecursionError:  # JSON nested thousands deep
        raise ValueError(f"{path} is not a readable tinygpt checkpoint: its meta is nested too deeply") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError, TypeError) as e:
        # ValueError also covers bad JSON, bad UTF-8, and np.load refusing to unpickle
        raise ValueError(f"{path} is not a readable tinygpt checkpoint: {e}") from None


def _gpt_config(settings, path):
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: its model config is {type(settings).__name__}, not a dict of GPTConfig's fields")
    try:
        return GPTConfig(**settings)
    except (TypeError, ValueError) as e:  # unknown keys, wrong types or values
        raise ValueError(f"{path}: its model config is not a GPTConfig ({e})") from None


def model_config(ckpt, path="checkpoint"):
    """The GPTConfig a checkpoint's model was built with, checked against its arrays, so that a
    crafted config (n_embd 10^7) can never make the model allocate more than the file held."""
    if "model" not in ckpt.config:
        raise ValueError(f"{path} has no model config: was it written by tinygpt train?")
    config = _gpt_config(ckpt.config["model"], path)
    expect = {"transformer.wte.weight": (config.vocab_size, config.n_embd),
              "transformer.wpe.weight": (config.block_size, config.n_embd),
              f"transformer.h.{config.n_layer - 1}.attn.c_attn.weight": (config.n_embd, 3 * config.n_embd)}
    for name, shape in expect.items():
        got = ckpt.model.get(name)
        if got is None or got.shape != shape:
            raise ValueError(f"{path}: its config says {name} is {shape}, but it holds "
                             f"{None if got is None else got.shape}")
    return config


def check_vocab(config, tokenizer, source, tokenizer_source, extra_ids=0):
    """A model's vocab_size must be its tokenizer's (plus `extra_ids` that only the model has,
    such as a fine-tuning end-of-text), or ids would be out of range or decode to garbage."""
    if config.vocab_size != tokenizer.vocab_size + extra_ids:
        raise ValueError(f"{source} has a vocabulary of {config.vocab_size} tokens but the tokenizer "
                         f"{tokenizer_source} has {tokenizer.vocab_size}" +
                         (f" (+{extra_ids} of the model's own)" if extra_ids else "") + ": they were not made together")


def load_checkpoint(path, model=None, optimizer=None, rng=None):
    """Read a checkpoint and restore it into whatever is passed (see `restore`). Returns the
    `Checkpoint` (for its config, iter_num and extra)."""
    ckpt = read_checkpoint(path)
    restore(ckpt, model, optimizer, rng, path)
    return ckpt


def restore(ckpt, model=None, optimizer=None, rng=None, path="checkpoint"):
    """Put a read `Checkpoint` back: the model's weights (in place), the optimizer's state, the
    batch generator `rng`. With both a model and an optimizer (resuming training) the model's
    dropout generators are restored too; weights alone (to sample, or to fine-tune afresh) leave
    them be, so the model may be built differently (e.g. without a seed)."""
    try:
        _restore(ckpt, model, optimizer, rng, path)
    except (ValueError, TypeError) as e:  # shapes or names that do not fit: name the file once
        raise ValueError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None


def _restore(ckpt, model, optimizer, rng, path):
    if model is not None:
        model.load_state_dict(ckpt.model)
    if model is not None and optimizer is not None:
        gens = dropout_generators(model)
        if len(gens) != len(ckpt.dropout_rng_states):
            raise ValueError(f"{path} holds {len(ckpt.dropout_rng_states)} dropout generator states "
                             f"but the model has {len(gens)} generators: was it built the same way?")
        for g, state in zip(gens, ckpt.dropout_rng_states):
            # subtle: set the state of each generator in place rather than rebinding it, since
            # Dropout layers (or functional._rng's users) hold references to these objects
            _set_state(g, state, path)
    if optimizer is not None:
        if not ckpt.optimizer:
            raise ValueError(f"{path} holds no optimizer state, so training cannot resume from it")
        optimizer.load_state_dict(ckpt.optimizer)
    if rng is not None and ckpt.rng_state is not None:
        _set_state(rng, ckpt.rng_state, path)


def _set_state(generator, state, path):
    try:
        generator.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as e:  # NumPy checks the state it is given
        raise ValueError(f"{path} holds a random generator state NumPy refuses ({type(e).__name__}: "
                         f"{str(e)[:100]})") from None


def load_model(path, tokenizer_path=None):
    """(model in eval mode, tokenizer), to sample from or to fine-tune. `path` is either
    - a folder: a Hugging Face GPT-2 checkpoint (config.json + model.safetensors), read with
      GPT-2's own tokenizer; or
    - a checkpoint file written by training, read with the tokenizer saved beside it (the name
      the checkpoint records, else tokenizer.tok).
    `tokenizer_path` overrides the tokenizer either way."""
    if os.path.isdir(path):
        model = GPT.from_pretrained(path)
        tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else BPETokenizer.from_gpt2()
        check_vocab(model.config, tokenizer, path, tokenizer_path or "GPT-2's")
        return model.eval(), tokenizer
    ckpt = read_checkpoint(path)
    model = GPT(model_config(ckpt, path))
    restore(ckpt, model, path=path)
    if tokenizer_path is None:
        tokenizer_path = file_in_folder(os.path.dirname(path), ckpt.extra.get("tokenizer_file", TOKENIZER_FILE), path)
    if not os.path.exists(tokenizer_path):  # anything else there, load_tokenizer names
        raise FileNotFoundError(f"tokenizer file {tokenizer_path!r} not found; pass --tokenizer PATH")
    tokenizer = load_tokenizer(tokenizer_path)
    # a fine-tuned model may have one id more than its tokenizer: the end-of-text it learned
    check_vocab(model.config, tokenizer, path, tokenizer_path, extra_ids=int("eot_id" in ckpt.extra))
    return model.eval(), tokenizer
