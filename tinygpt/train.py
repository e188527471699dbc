"""The training loop: a GPT on a text file, from random weights to samples, on a CPU.

This module owns one run: read the text, build (or reload) the tokenizer, split and encode the
data, build the model and AdamW, then loop: set the learning rate, forward, backward, clip,
step; log every `log_interval` iterations; every `eval_interval` estimate train and val loss and
keep the best checkpoint. At the end it prints a sample and writes the loss history.

Defaults are nanoGPT's "baby GPT" for a CPU on character-level Tiny Shakespeare: 4 layers,
4 heads, 128 channels, context 64, batch 12, 2000 iterations. Every setting is a flag:

    python -m tinygpt.train --max-iters 500 --tokenizer bpe --out-dir out-bpe
    python -m tinygpt.train --resume            # pick up from out-shakespeare/ckpt.npz

Files in --out-dir: `ckpt.npz` (checkpoint.py), `tokenizer.tok` (tokenizer/), `losses.csv`
(iter, train_loss, val_loss, lr at each evaluation) and `losses.png` if matplotlib is installed.

One choice differs from nanoGPT, on purpose: evaluation draws its batches from a generator of
its own, reseeded for every evaluation, so (1) all evaluations score the model on the same
batches, and differences between them are the model's, not sampling noise, and (2) evaluating
never moves the training batch generator, so a resumed run continues exactly as an
uninterrupted one would.

Under `mpiexec -n N` the same loop trains data-parallel (distributed.py): --batch-size is the
global batch, every rank draws it from the same generator and trains on its slice of rows, the
gradients are averaged across ranks before clipping and the step, evaluation shares its batches
out, and only rank 0 prints and writes files. So N processes run the very same training as one.

What it leaves out: the model (model.py), the update rule (optim.py), the file formats
(checkpoint.py, data.py, tokenizer/), the transport (distributed.py) and sampling from a saved
checkpoint (cli.py).
"""
import csv
import dataclasses
import io
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import functional
from . import distributed
from .checkpoint import (CKPT_FILE, TOKENIZER_FILE, check_vocab, dropout_generators, model_config,
                         read_checkpoint, restore, save_checkpoint)
from .config import check_range, option, parse_config
from .data import TokenDataset, find_text, read_text, split_text
from .fileio import atomic_write, lock_folder, remove_stale_temps
from .model import GPT, GPTConfig
from .nn import evaluating
from .optim import AdamW, clip_grad_norm, get_lr
from .runtime import check_memory, keep_freed_memory
from .tokenizer import BPETokenizer, CharTokenizer, load_tokenizer

CSV_FILE, PNG_FILE = "losses.csv", "losses.png"


@dataclass
class TrainConfig:
    # data and files
    data: str = option(None, "text file to train on (default: $TINYGPT_DATA_DIR/tinyshakespeare.txt, else "
                             "a download), or a folder from data.prepare_token_files", type=str)
    tokenizer: str = option("char", "char: one id per character; bpe: train a byte-level BPE on the "
                                    "train split; gpt2: GPT-2's 50257 tokens", choices=("char", "bpe", "gpt2"))
    bpe_vocab_size: int = option(512, "vocabulary size for --tokenizer bpe")
    out_dir: str = option("out-shakespeare", "folder for the checkpoint, tokenizer and loss history")
    resume: bool = option(False, "continue from the checkpoint in --out-dir")
    seed: int = option(1337, "seed for the weights, the batches and dropout")
    # model (ignored with --resume: the checkpoint's model is used)
    n_layer: int = option(4, "transformer blocks")
    n_head: int = option(4, "attention heads per block")
    n_embd: int = option(128, "channels of the residual stream")
    block_size: int = option(64, "context length in tokens")
    dropout: float = option(0.0, "dropout probability")
    bias: bool = option(False, "biases in Linear and LayerNorm layers")
    # optimization
    batch_size: int = option(12, "sequences per micro-batch, over all processes when run under mpiexec")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    max_iters: int = option(2000, "optimizer steps in total")
    learning_rate: float = option(1e-3, "peak learning rate")
    min_lr: float = option(1e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = option(100, "steps of linear warmup")
    lr_decay_iters: int = option(None, "step where the cosine decay ends (default: --max-iters)", type=int)
    decay_lr: bool = option(True, "use the warmup + cosine schedule (else a constant learning rate)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.99, "AdamW beta2")
    weight_decay: float = option(0.1, "AdamW weight decay (on matrices and embeddings only)")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0: no clipping)")
    # evaluation, logging, sampling
    eval_interval: int = option(250, "evaluate (and maybe save) every this many steps")
    eval_iters: int = option(20, "batches per split in each evaluation")
    log_interval: int = option(10, "print a progress line every this many steps")
    always_save: bool = option(False, "save a checkpoint at every evaluation, not only on a new best val loss")
    sample_tokens: int = option(300, "tokens to sample at the end (0: none)")

    def __post_init__(self):
        check_range(self, ("n_layer", "n_head", "n_embd", "block_size", "batch_size",
                           "grad_accum", "eval_interval", "eval_iters", "log_interval"), 1)
        check_range(self, ("seed", "max_iters", "warmup_iters", "sample_tokens", "learning_rate", "min_lr",
                           "weight_decay", "grad_clip"), 0)
        check_range(self, ("bpe_vocab_size",), 256)  # the 256 byte tokens come first
        check_range(self, ("beta1", "beta2", "dropout"), 0, 1)
        if self.learning_rate == 0:
            raise ValueError("--learning-rate must be > 0, got 0")
        if self.lr_decay_iters is None:
            self.lr_decay_iters = self.max_iters
        check_range(self, ("lr_decay_iters",), 0)


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
    rng: np.random.Generator       # draws the training batches (the global ones, on every rank)
    lock: object = None            # the out_dir's lock file (fileio.lock_folder), held by rank 0 while the run lives
    world: distributed.World = field(default_factory=distributed.World)  # this process's rank of the job
    start_iter: int = 0
    best_val: float = math.inf
    history: list = field(default_factory=list)  # [iter, train_loss, val_loss, lr] per evaluation


def setup(cfg, log=print, world=None):
    """Read the data, build or reload the tokenizer and model. User mistakes (missing data, a bad
    checkpoint, a tokenizer of another vocabulary, sizes the data or the memory cannot hold)
    raise FileNotFoundError or ValueError here, before any training step.

    With several ranks (`world`), rank 0 alone takes the out-dir's lock and reads and writes its
    files; it sends the text, tokenizer and checkpoint to the others, so they need no files but a
    token folder's."""
    world = world or distributed.World()
    world.check_batch_size(cfg.batch_size)
    folder = cfg.data if cfg.data is not None and os.path.isdir(cfg.data) else None
    data = lock = None

    def read_files():  # rank 0's part
        nonlocal data, lock
        # one run per folder, held until this process ends; taken first, so that a bad --out-dir
        # is refused before the data is read
        lock = lock_folder(cfg.out_dir)
        if folder:  # ids tokenized once, memmapped (data.prepare_token_files)
            data, text, source = TokenDataset.from_dir(folder), None, folder
        else:
            source = find_text(cfg.data)
            text = read_text(source)
        remove_stale_temps(cfg.out_dir, (CKPT_FILE, TOKENIZER_FILE, CSV_FILE, PNG_FILE))
        ckpt_path, tok_path = (os.path.join(cfg.out_dir, f) for f in (CKPT_FILE, TOKENIZER_FILE))
        ckpt = None
        if cfg.resume:
            ckpt = read_checkpoint(ckpt_path)
            tokenizer = load_tokenizer(tok_path)
            check_vocab(model_config(ckpt, ckpt_path), tokenizer, ckpt_path, tok_path)
        else:
            t0 = time.perf_counter()
            tokenizer = load_tokenizer(data.tokenizer_path(folder)) if folder else build_tokenizer(cfg, text)
            tokenizer.save(tok_path)  # next to the checkpoint, for sampling
            if cfg.tokenizer == "bpe" and not folder:
                log(f"trained a BPE tokenizer of {tokenizer.vocab_size} tokens in {time.perf_counter() - t0:.1f}s")
        return source, text, ckpt, tokenizer

    source, text, ckpt, tokenizer = world.broadcast(read_files)
    ckpt_path = os.path.join(cfg.out_dir, CKPT_FILE)
    if ckpt is not None:
        model_cfg = model_config(ckpt, ckpt_path)
    else:
        model_cfg = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias)
    if folder and data is None:  # ranks > 0 open the token folder themselves: it is not sent
        data = TokenDataset.from_dir(folder)
    if folder and data.meta["vocab_size"] != tokenizer.vocab_size:
        raise ValueError(f"{os.path.join(folder, 'meta.json')} says its ids are from a vocabulary of "
                         f"{data.meta['vocab_size']} tokens, but the tokenizer has {tokenizer.vocab_size}")
    if not folder:
        data = TokenDataset.from_text(text, tokenizer)
    for split, ids in data.splits.items():
        if len(ids) <= model_cfg.block_size:
            raise ValueError(f"{source}: the {split} split has {len(ids)} tokens, too few for "
                             f"block_size {model_cfg.block_size}; use a smaller --block-size or more text")
    log(f"data: {source} -> {len(data.splits['train']):,} train and {len(data.splits['val']):,} val tokens "
        f"({type(tokenizer).__name__}, vocab {tokenizer.vocab_size})")
    check_memory(model_cfg, cfg.batch_size // world.size)

    keep_freed_memory()  # reuse freed activation memory step after step (runtime.py says why)
    functional.manual_seed(cfg.seed)
    model = GPT(model_cfg, seed=cfg.seed)
    optimizer = AdamW(model.parameters(), lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                      weight_decay=cfg.weight_decay)
    # subtle: a seed sequence [seed, 1] gives a stream independent of the weights' (seeded `seed`)
    run = Run(model, optimizer, data, tokenizer, np.random.default_rng([cfg.seed, 1]), lock, world=world)
    if ckpt is not None:
        restore(ckpt, model, optimizer, run.rng, ckpt_path)
        history, best = ckpt.extra.get("history"), ckpt.extra.get("best_val_loss")
        if not (isinstance(history, list) and all(isinstance(h, list) and len(h) == 4 for h in history)
                and isinstance(best, (int, float))):
            raise ValueError(f"{ckpt_path} has no loss history: was it written by tinygpt train?")
        run.start_iter, run.history, run.best_val = ckpt.iter_num, history, best
        log(f"resuming from {ckpt_path} at iteration {run.start_iter} (best val loss {run.best_val:.4f})")
    if world.rank > 0 and model_cfg.dropout > 0:
        # subtle: the same seed on every rank would drop the same units on every slice of the
        # batch; so ranks > 0 draw their own masks, and a run with dropout matches one process
        # in distribution only (and resumes exactly only on rank 0, whose states are saved)
        for i, g in enumerate(dropout_generators(model)):
            g.bit_generator.state = np.random.default_rng([cfg.seed, 3, world.rank, run.start_iter, i]).bit_generator.state
    c = model_cfg
    log(f"model: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} channels, context {c.block_size}: "
        f"{model.num_params() / 1e6:.2f}M parameters" +
        (f"; {world.size} processes, {cfg.batch_size // world.size} sequences each" if world.size > 1 else ""))
    return run


# ---------------------------------------------------------------------------------------- the loop

def model_batch(run, split, batch_size, rng):
    """A random batch of `split` as the keyword arguments of a model call."""
    x, y = run.data.get_batch(split, batch_size, run.model.config.block_size, rng)
    return {"idx": x, "targets": y}


def mean_loss(model, batch_list):
    """Mean of model(**batch)'s loss over a list of batches (dicts of its keyword arguments), in
    eval mode and without a graph; NaN for no batches."""
    with evaluating(model):
        losses = [model(**batch)[1].item() for batch in batch_list]
    return float(np.mean(losses)) if losses else float("nan")


def estimate_loss(run, cfg):
    """Mean loss over `eval_iters` batches of each split, on the same batches every time (see
    the module docstring). With several ranks, rank r scores batches r, r + size, ... whole, and
    the sum is shared: the same batches and numbers as one process."""
    out, world = {}, run.world
    for i, split in enumerate(("train", "val")):
        rng = np.random.default_rng([cfg.seed, 2, i])
        batch_list = [model_batch(run, split, cfg.batch_size, rng) for _ in range(cfg.eval_iters)]
        mine = batch_list[world.rank::world.size]
        out[split] = world.sum(mean_loss(run.model, mine) * len(mine) if mine else 0.0) / cfg.eval_iters
    return out


def train_step(model, optimizer, micro_batches, grad_clip=0.0, world=None):
    """One optimizer step: zero the gradients, forward and backward each micro-batch (a dict of
    `model(...)`'s keyword arguments), clip the global gradient norm to `grad_clip` (0: no
    clipping), step. Returns (mean loss, gradient norm before clipping, NaN when not clipping).

    A non-finite loss or gradient norm raises FloatingPointError before the step, so the weights
    stay as they were. Every trainer runs this: train.py's loop and both fine-tuning examples.
    With a `world` of several ranks (distributed.py), each holds its slice of every micro-batch,
    and the last micro-batch's backward sums the gradients over the ranks as it makes them.
    """
    parallel = world is not None and world.size > 1
    optimizer.zero_grad()
    n, total = len(micro_batches), 0.0
    # gradients add up over micro-batches and ranks, so scale each loss by 1 / (n x ranks) to get
    # the gradient of the global mean
    scale = 1.0 / (n * (world.size if parallel else 1))
    for i, batch in enumerate(micro_batches):
        _, loss = model(**batch)
        # subtle: one rank alone must not stop, or the others wait for it in the allreduce; in
        # parallel the global loss is checked below, on every rank alike
        if not parallel and not math.isfinite(loss.item()):
            raise FloatingPointError(f"the loss is {loss.item()}")
        buckets = world.reduce_gradients(optimizer) if parallel and i == n - 1 else None  # once a step
        (loss * scale if scale != 1 else loss).backward(on_leaf=buckets.ready if buckets else None)
        total += loss.item()
    if parallel:
        total = buckets.finish(total / n) * n
        if not math.isfinite(total):
            raise FloatingPointError(f"the loss is {total / n}")
    norm = clip_grad_norm(model.parameters(), grad_clip) if grad_clip > 0 else float("nan")
    if grad_clip > 0 and not math.isfinite(norm):
        raise FloatingPointError(f"the gradient norm is {norm}")
    optimizer.step()
    return total / n, norm


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
            if not all(math.isfinite(v) for v in losses.values()):  # never save such weights
                raise FloatingPointError(f"iteration {it}: the eval losses are {losses}")
            run.history.append([it, losses["train"], losses["val"], lr_at(it)])
            saved = ""
            if losses["val"] < run.best_val or cfg.always_save:
                run.best_val = min(run.best_val, losses["val"])
                if run.world.rank == 0:
                    save(run, cfg, it)
                saved = f" -> saved {CKPT_FILE}"
            log(f"eval {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{saved}")
            if run.world.rank == 0:
                write_history(run.history, cfg.out_dir)
        if it == cfg.max_iters:
            break
        t0 = time.perf_counter()
        run.optimizer.lr = lr_at(it)
        # every rank draws the global batch, then keeps its rows (so 1 and N ranks see the same data)
        micro_batches = [run.world.shard(model_batch(run, "train", cfg.batch_size, run.rng))
                         for _ in range(cfg.grad_accum)]
        try:
            loss, norm = train_step(run.model, run.optimizer, micro_batches, cfg.grad_clip, run.world)
        except FloatingPointError as e:
            raise FloatingPointError(f"iteration {it}: {e}") from None
        window_time += time.perf_counter() - t0
        window_iters += 1
        if it % cfg.log_interval == 0 or it == cfg.max_iters - 1:
            per_iter = window_time / window_iters
            ranks = f"{run.world.size} ranks | " if run.world.size > 1 else ""  # tok/s: the whole job's
            log(f"iter {it}/{cfg.max_iters}: loss {loss:.4f} | lr {lr_at(it):.2e} | norm {norm:.2f} | "
                f"{per_iter * 1e3:.1f} ms/iter | {ranks}{tokens_per_iter / per_iter:,.0f} tok/s | "
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
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow(["iter", "train_loss", "val_loss", "lr"])
    w.writerows([int(i), f"{tr:.6f}", f"{va:.6f}", f"{lr:.6g}"] for i, tr, va, lr in history)
    atomic_write(os.path.join(out_dir, CSV_FILE), lambda f: f.write(rows.getvalue().encode()))
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
    atomic_write(os.path.join(out_dir, PNG_FILE), lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def sample_text(model, tokenizer, prompt="\n", max_new_tokens=300, temperature=0.8, top_k=200, top_p=None, seed=None):
    """Decode `max_new_tokens` tokens sampled after `prompt` (the prompt included)."""
    ids = tokenizer.encode(prompt) if prompt else []
    ids = np.array([ids or [0]], dtype=np.int64)  # an empty prompt starts from token 0
    out = model.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    return tokenizer.decode(out[0].tolist())


def main(argv=None):
    cfg = parse_config(TrainConfig, argv, prog="tinygpt train", description="Train a GPT on a text file.")
    try:
        world = distributed.world()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log = print if world.rank == 0 else (lambda *args, **kwargs: None)  # only rank 0 speaks
    run, error = None, None
    try:
        run = setup(cfg, log, world)
    except (FileNotFoundError, ValueError) as e:
        error = e
    error = world.first_error(error)  # every rank stops if any rank could not set up
    if error is not None:
        if world.rank == 0:
            print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        train(cfg, run, log)
    except KeyboardInterrupt:
        if world.rank == 0:
            print(f"\ninterrupted; the best checkpoint so far is in {cfg.out_dir}/, continue with --resume",
                  file=sys.stderr)
        world.abort(130)  # a rank may be inside an allreduce, waiting for this one
        return 130
    except FloatingPointError as e:  # diverged: try a lower --learning-rate, or --grad-clip
        # (on every rank alike: the losses and the norm it checks are the global ones)
        if world.rank == 0:
            print(f"error: training diverged at {e}; stopped without saving (the last good checkpoint in "
                  f"{cfg.out_dir}/ is unchanged). tinygpt.detect_anomaly() names the op that made it.",
                  file=sys.stderr)
        return 1
    if world.rank > 0:
        return 0
    print(f"best val loss {run.best_val:.4f}; checkpoint, tokenizer and {CSV_FILE} in {cfg.out_dir}/")
    if cfg.sample_tokens:
        print(f"--- sample ({cfg.sample_tokens} tokens) ---")
        # after a newline, like a line of the text; a vocabulary without one starts from token 0
        prompt = "\n" if "\n" in run.tokenizer.decode(range(run.tokenizer.vocab_size)) else ""
        print(sample_text(run.model, run.tokenizer, prompt, cfg.sample_tokens, seed=cfg.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
