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
import os
import zipfile

import numpy as np

from . import functional
from .fileio import atomic_write
from .model import GPT, GPTConfig
from .tokenizer import BPETokenizer, load_tokenizer

FORMAT, VERSION = "tinygpt-checkpoint", 1
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


def read_checkpoint(path):
    """Read and check a checkpoint file into a `Checkpoint`. Anything that is not a complete
    tinygpt checkpoint (truncated, corrupt, another program's .npz) raises ValueError naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        z = np.load(path, allow_pickle=False)
        if not hasattr(z, "files"):  # a bare .npy array, not an .npz
            raise ValueError("it is a single .npy array")
        with z:
            if "meta" not in z.files:
                raise ValueError("it has no 'meta' entry")
            meta = json.loads(z["meta"].tobytes().decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"its meta has no format marker {FORMAT!r}")
            if meta.get("version") != VERSION:
                raise ValueError(f"it is version {meta.get('version')!r}; this tinygpt reads version {VERSION}")
            # read every array now: a corrupt member fails its CRC check here, not later
            model = {k[len("model/"):]: z[k] for k in z.files if k.startswith("model/")}
            optim = {k[len("optim/"):]: z[k] for k in z.files if k.startswith("optim/")}
            return Checkpoint(model, optim, meta["config"], meta["iter_num"], meta["rng_state"],
                              meta["dropout_rng_states"], meta["extra"])
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError) as e:
        # ValueError also covers bad JSON, bad UTF-8, and np.load refusing to unpickle
        raise ValueError(f"{path} is not a readable tinygpt checkpoint: {e}") from None


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
            g.bit_generator.state = state
    if optimizer is not None:
        if not ckpt.optimizer:
            raise ValueError(f"{path} holds no optimizer state, so training cannot resume from it")
        optimizer.load_state_dict(ckpt.optimizer)
    if rng is not None and ckpt.rng_state is not None:
        rng.bit_generator.state = ckpt.rng_state


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
        return model.eval(), tokenizer
    ckpt = read_checkpoint(path)
    if "model" not in ckpt.config:
        raise ValueError(f"{path} has no model config: was it written by tinygpt train?")
    model = GPT(GPTConfig(**ckpt.config["model"]))
    restore(ckpt, model, path=path)
    if tokenizer_path is None:
        tokenizer_path = os.path.join(os.path.dirname(path), ckpt.extra.get("tokenizer_file", TOKENIZER_FILE))
    if not os.path.isfile(tokenizer_path):
        raise FileNotFoundError(f"tokenizer file {tokenizer_path!r} not found; pass --tokenizer PATH")
    return model.eval(), load_tokenizer(tokenizer_path)
