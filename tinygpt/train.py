"""The training loop: a GPT on a text file, from random weights to samples, on a CPU.

This module owns one run: read the text, build (or reload) the tokenizer, split and encode the
data, build the model and AdamW, then loop: set the learning rate, forward, backward, clip,
step; log every `log_interval` iterations; every `eval_interval` estimate train and val loss and
keep the best checkpoint. At the end it prints a sample and writes the loss history.

Defaults are nanoGPT's "baby GPT" for a CPU on character-level Tiny Shakespeare: 4 layers,
4 heads, 128 channels, context 64, batch 12, 2000 iterations. Every setting is a flag:

    python -m tinygpt.train --max-iters 500 --tokenizer bpe --out-dir out-bpe
    python -m tinygpt.train --resume            # pick up from out-shakespeare/ckpt.npz

Files in --out-dir: `ckpt.npz` (checkpoint.py), `tokenizer.tok` (tokenizer.py), `losses.csv`
(iter, train_loss, val_loss, lr at each evaluation) and `losses.png` if matplotlib is installed.

One choice differs from nanoGPT, on purpose: evaluation draws its batches from a generator of
its own, reseeded for every evaluation, so (1) all evaluations score the model on the same
batches, and differences between them are the model's, not sampling noise, and (2) evaluating
never moves the training batch generator, so a resumed run continues exactly as an
uninterrupted one would.

What it leaves out: the model (model.py), the update rule (optim.py), the file formats
(checkpoint.py, data.py, tokenizer.py), and sampling from a saved checkpoint (cli.py).
"""
import argparse
import csv
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import functional
from .checkpoint import read_checkpoint, restore, save_checkpoint
from .data import TokenDataset, find_text, read_text, split_text
from .model import GPT, GPTConfig
from .optim import AdamW, clip_grad_norm, get_lr
from .runtime import keep_freed_memory
from .tensor import no_grad
from .tokenizer import BPETokenizer, CharTokenizer, load_tokenizer

CKPT_FILE, TOKENIZER_FILE, CSV_FILE, PNG_FILE = "ckpt.npz", "tokenizer.tok", "losses.csv", "losses.png"


def _opt(default, help, type=None, choices=None):
    """A TrainConfig field whose metadata becomes its command-line flag."""
    return field(default=default, metadata={"help": help, "type": type, "choices": choices})


@dataclass
class TrainConfig:
    # data and files
    data: str = _opt(None, "text file to train on (default: $TINYGPT_DATA_DIR/tinyshakespeare.txt, else "
                           "a download), or a folder from data.prepare_token_files", type=str)
    tokenizer: str = _opt("char", "char: one id per character; bpe: train a byte-level BPE on the "
                                  "train split; gpt2: GPT-2's 50257 tokens", choices=("char", "bpe", "gpt2"))
    bpe_vocab_size: int = _opt(512, "vocabulary size for --tokenizer bpe")
    out_dir: str = _opt("out-shakespeare", "folder for the checkpoint, tokenizer and loss history")
    resume: bool = _opt(False, "continue from the checkpoint in --out-dir")
    seed: int = _opt(1337, "seed for the weights, the batches and dropout")
    # model (ignored with --resume: the checkpoint's model is used)
    n_layer: int = _opt(4, "transformer blocks")
    n_head: int = _opt(4, "attention heads per block")
    n_embd: int = _opt(128, "channels of the residual stream")
    block_size: int = _opt(64, "context length in tokens")
    dropout: float = _opt(0.0, "dropout probability")
    bias: bool = _opt(False, "biases in Linear and LayerNorm layers")
    # optimization
    batch_size: int = _opt(12, "sequences per micro-batch")
    grad_accum: int = _opt(1, "micro-batches per optimizer step")
    max_iters: int = _opt(2000, "optimizer steps in total")
    learning_rate: float = _opt(1e-3, "peak learning rate")
    min_lr: float = _opt(1e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = _opt(100, "steps of linear warmup")
    lr_decay_iters: int = _opt(None, "step where the cosine decay ends (default: --max-iters)", type=int)
    decay_lr: bool = _opt(True, "use the warmup + cosine schedule (else a constant learning rate)")
    beta1: float = _opt(0.9, "AdamW beta1")
    beta2: float = _opt(0.99, "AdamW beta2")
    weight_decay: float = _opt(0.1, "AdamW weight decay (on matrices and embeddings only)")
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this (0: no clipping)")
    # evaluation, logging, sampling
    eval_interval: int = _opt(250, "evaluate (and maybe save) every this many steps")
    eval_iters: int = _opt(20, "batches per split in each evaluation")
    log_interval: int = _opt(10, "print a progress line every this many steps")
    always_save: bool = _opt(False, "save a checkpoint at every evaluation, not only on a new best val loss")
    sample_tokens: int = _opt(300, "tokens to sample at the end (0: none)")

    def __post_init__(self):
        for name in ("bpe_vocab_size", "n_layer", "n_head", "n_embd", "block_size", "batch_size",
                     "grad_accum", "eval_interval", "eval_iters", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("max_iters", "warmup_iters", "sample_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.lr_decay_iters is None:
            self.lr_decay_iters = self.max_iters


def build_parser():
    """One flag per TrainConfig field: --max-iters for max_iters, --bias/--no-bias for booleans."""
    parser = argparse.ArgumentParser(prog="tinygpt train", description="Train a GPT on a text file.")
    for f in dataclasses.fields(TrainConfig):
        flag, meta = "--" + f.name.replace("_", "-"), f.metadata
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=meta["help"] + " (default: %(default)s)")
        else:
            parser.add_argument(flag, type=meta["type"] or type(f.default), default=f.default,
                                choices=meta["choices"], help=meta["help"] + " (default: %(default)s)")
    return parser


# ---------------------------------------------------------------------------------------- setup

def build_tokenizer(cfg, text):
    """A fresh tokenizer of the kind `cfg.tokenizer` names."""
    if cfg.tokenizer == "char":
        return CharTokenizer(text)  # every character of the whole text, as nanoGPT does
    if cfg.tokenizer == "gpt2":
        return BPETokenizer.from_gpt2()
    tok = BPETokenizer()
    tok.train(split_text(text)[0], cfg.bpe_vocab_size)  # the train split only: val stays unseen
    return tok


@dataclass
class Run:
    """Everything a run holds between iterations."""
    model: GPT
    optimizer: AdamW
    data: TokenDataset
    tokenizer: object
    rng: np.random.Generator       # draws the training batches
    params: list = None            # model.parameters(), listed once (walking the modules costs)
    start_iter: int = 0
    best_val: float = math.inf
    history: list = field(default_factory=list)  # [iter, train_loss, val_loss, lr] per evaluation


def setup(cfg, log=print):
    """Read the data, build or reload the tokenizer and model. User mistakes (missing data, a bad
    checkpoint, sizes the data cannot fill) raise FileNotFoundError or ValueError."""
    folder = cfg.data if cfg.data is not None and os.path.isdir(cfg.data) else None
    if folder:  # ids tokenized once, memmapped (data.prepare_token_files)
        data, text, source = TokenDataset.from_dir(folder), None, folder
    else:
        source = find_text(cfg.data)
        text = read_text(source)
    ckpt_path, tok_path = (os.path.join(cfg.out_dir, f) for f in (CKPT_FILE, TOKENIZER_FILE))
    ckpt = None
    if cfg.resume:
        ckpt = read_checkpoint(ckpt_path)
        tokenizer = load_tokenizer(tok_path)
        model_cfg = GPTConfig(**ckpt.config["model"])
    else:
        t0 = time.perf_counter()
        tokenizer = (load_tokenizer(os.path.join(folder, data.meta["tokenizer"])) if folder
                     else build_tokenizer(cfg, text))
        os.makedirs(cfg.out_dir, exist_ok=True)
        tokenizer.save(tok_path)  # next to the checkpoint, for sampling
        if cfg.tokenizer == "bpe" and not folder:
            log(f"trained a BPE tokenizer of {tokenizer.vocab_size} tokens in {time.perf_counter() - t0:.1f}s")
        model_cfg = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias)
    if not folder:
        data = TokenDataset.from_text(text, tokenizer)
    for split, ids in data.splits.items():
        if len(ids) <= model_cfg.block_size:
            raise ValueError(f"{source}: the {split} split has {len(ids)} tokens, too few for "
                             f"block_size {model_cfg.block_size}; use a smaller --block-size or more text")
    log(f"data: {source} -> {len(data.splits['train']):,} train and {len(data.splits['val']):,} val tokens "
        f"({type(tokenizer).__name__}, vocab {tokenizer.vocab_size})")

    keep_freed_memory()  # reuse freed activation memory step after step (runtime.py says why)
    functional.manual_seed(cfg.seed)
    model = GPT(model_cfg, seed=cfg.seed)
    optimizer = AdamW(model.parameters(), lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                      weight_decay=cfg.weight_decay)
    # subtle: a seed sequence [seed, 1] gives a stream independent of the weights' (seeded `seed`)
    run = Run(model, optimizer, data, tokenizer, np.random.default_rng([cfg.seed, 1]), model.parameters())
    if ckpt is not None:
        restore(ckpt, model, optimizer, run.rng, ckpt_path)
        run.start_iter, run.history = ckpt.iter_num, ckpt.extra["history"]
        run.best_val = ckpt.extra["best_val_loss"]
        log(f"resuming from {ckpt_path} at iteration {run.start_iter} (best val loss {run.best_val:.4f})")
    c = model_cfg
    log(f"model: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} channels, context {c.block_size}: "
        f"{model.num_params() / 1e6:.2f}M parameters")
    return run


# ---------------------------------------------------------------------------------------- the loop

@no_grad()
def estimate_loss(run, cfg):
    """Mean loss over `eval_iters` batches of each split, in eval mode (no dropout), on the same
    batches every time (see the module docstring)."""
    run.model.eval()
    out = {}
    for i, split in enumerate(("train", "val")):
        rng = np.random.default_rng([cfg.seed, 2, i])
        losses = [run.model(*run.data.get_batch(split, cfg.batch_size, run.model.config.block_size, rng))[1].item()
                  for _ in range(cfg.eval_iters)]
        out[split] = float(np.mean(losses))
    run.model.train()
    return out


def train_step(run, cfg, lr):
    """One optimizer step over `grad_accum` micro-batches. Returns (mean loss, grad norm)."""
    run.optimizer.lr = lr
    run.optimizer.zero_grad()
    total = 0.0
    for _ in range(cfg.grad_accum):
        x, y = run.data.get_batch("train", cfg.batch_size, run.model.config.block_size, run.rng)
        _, loss = run.model(x, y)
        # gradients add up over micro-batches, so scale each by 1/n to get the mean's gradient
        (loss * (1.0 / cfg.grad_accum) if cfg.grad_accum > 1 else loss).backward()
        total += loss.item()
    norm = clip_grad_norm(run.params, cfg.grad_clip) if cfg.grad_clip > 0 else float("nan")
    run.optimizer.step()
    return total / cfg.grad_accum, norm


def train(cfg, run, log=print):
    """Run iterations run.start_iter .. cfg.max_iters - 1, evaluating at multiples of
    eval_interval and at the end. Returns the run."""
    def lr_at(it):
        if not cfg.decay_lr:
            return cfg.learning_rate
        return get_lr(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)

    tokens_per_iter = cfg.batch_size * cfg.grad_accum * run.model.config.block_size
    window_time, window_iters = 0.0, 0  # time spent in steps since the last log line
    run.model.train()
    for it in range(run.start_iter, cfg.max_iters + 1):
        just_resumed = it == run.start_iter and cfg.resume  # the checkpoint was saved after this eval
        if (it % cfg.eval_interval == 0 or it == cfg.max_iters) and not just_resumed:
            losses = estimate_loss(run, cfg)
            run.history.append([it, losses["train"], losses["val"], lr_at(it)])
            saved = ""
            if losses["val"] < run.best_val or cfg.always_save:
                run.best_val = min(run.best_val, losses["val"])
                save(run, cfg, it)
                saved = f" -> saved {CKPT_FILE}"
            log(f"eval {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{saved}")
            write_history(run.history, cfg.out_dir)
        if it == cfg.max_iters:
            break
        t0 = time.perf_counter()
        loss, norm = train_step(run, cfg, lr_at(it))
        window_time += time.perf_counter() - t0
        window_iters += 1
        if it % cfg.log_interval == 0 or it == cfg.max_iters - 1:
            per_iter = window_time / window_iters
            log(f"iter {it}/{cfg.max_iters}: loss {loss:.4f} | lr {lr_at(it):.2e} | norm {norm:.2f} | "
                f"{per_iter * 1e3:.1f} ms/iter | {tokens_per_iter / per_iter:,.0f} tok/s | "
                f"eta {format_seconds(per_iter * (cfg.max_iters - it - 1))}")
            window_time, window_iters = 0.0, 0
    return run


def save(run, cfg, it):
    config = {"model": dataclasses.asdict(run.model.config), "train": dataclasses.asdict(cfg)}
    extra = {"best_val_loss": run.best_val, "history": run.history, "tokenizer_file": TOKENIZER_FILE}
    save_checkpoint(os.path.join(cfg.out_dir, CKPT_FILE), run.model, run.optimizer, config, it, run.rng, extra)


def format_seconds(s):
    """Example: 95.2 -> '1m35s'; 4000 -> '1h06m40s'; 7.5 -> '8s'."""
    s = int(round(s))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m{s % 60:02d}s" if h else (f"{m}m{s % 60:02d}s" if m else f"{s}s")


# ---------------------------------------------------------------------------------------- results

def write_history(history, out_dir):
    """losses.csv (iter, train_loss, val_loss, lr), and losses.png when matplotlib is installed."""
    with open(os.path.join(out_dir, CSV_FILE), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iter", "train_loss", "val_loss", "lr"])
        w.writerows([int(i), f"{tr:.6f}", f"{va:.6f}", f"{lr:.6g}"] for i, tr, va, lr in history)
    try:  # optional: the object API with the Agg canvas, so no GUI and no global pyplot state
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    its = [h[0] for h in history]
    ax.plot(its, [h[1] for h in history], "o-", label="train")
    ax.plot(its, [h[2] for h in history], "o-", label="val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(os.path.join(out_dir, PNG_FILE), dpi=100, bbox_inches="tight")


def sample_text(model, tokenizer, prompt="\n", max_new_tokens=300, temperature=0.8, top_k=200, top_p=None, seed=None):
    """Decode `max_new_tokens` tokens sampled after `prompt` (the prompt included)."""
    ids = tokenizer.encode(prompt) if prompt else []
    ids = np.array([ids or [0]], dtype=np.int64)  # an empty prompt starts from token 0
    out = model.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    return tokenizer.decode(out[0].tolist())


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = TrainConfig(**vars(args))
    except ValueError as e:
        parser.error(str(e))
    try:
        run = setup(cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        train(cfg, run)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the best checkpoint so far is in {cfg.out_dir}/, continue with --resume",
              file=sys.stderr)
        return 130
    print(f"best val loss {run.best_val:.4f}; checkpoint, tokenizer and {CSV_FILE} in {cfg.out_dir}/")
    if cfg.sample_tokens:
        print(f"--- sample ({cfg.sample_tokens} tokens) ---")
        print(sample_text(run.model, run.tokenizer, "\n", cfg.sample_tokens, seed=cfg.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
