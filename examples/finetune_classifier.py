"""Fine-tune a Shakespeare GPT into a classifier: is a line Shakespeare's, or Edith Wharton's?

    python examples/train_shakespeare.py                       # first: the base model, out-shakespeare/
    python examples/finetune_classifier.py                     # last block + ln_f + a new head train
    python examples/finetune_classifier.py --lora-rank 8       # LoRA on the last block instead
    python examples/finetune_classifier.py --trainable-blocks 4 --learning-rate 6e-4   # every block
    python examples/finetune_classifier.py --trainable-blocks 4 --learning-rate 6e-4 --lm-weight 0.5
                                                               # every block, with GPT-1's LM loss

Start: train_shakespeare.py's checkpoint (--init-from; its tokenizer is read next to it). Its
vocabulary head is replaced by a 2-class head read at each line's last token (tinygpt/finetune.py:
GPTClassifier). Only the last --trainable-blocks blocks, ln_f and the head train; with
--lora-rank R, only the LoRA matrices on the chosen projections (--lora-blocks, --lora-targets)
and the head. --lm-weight W adds GPT-1's auxiliary loss (Radford et al. 2018, section 3.2): W
times the next-token loss on the line, through the tied embedding as in pretraining. The
learning rate warms up over half an epoch, then falls along a cosine to a tenth of its peak.
Accuracy on each split is printed every epoch; the final weights are kept (no early stopping:
~70 val lines are too few to pick an epoch by), their test accuracy is reported, and they are
saved (LoRA merged in) to --out-dir/classifier.npz, the tokenizer beside it.

The data, from $TINYGPT_DATA_DIR (or --data-dir): class 0 is tinyshakespeare.txt, class 1 is
the-verdict.txt, prepared so that the task is about style and not about formatting:
- Shakespeare's speaker-name lines ("ROMEO:", "First Citizen:") are dropped: a giveaway.
- The Verdict's paragraphs (one a line) are re-wrapped at word boundaries to --wrap-width
  characters, as long as the 64-token context allows: like a line of verse or of prose.
- Characters Shakespeare never uses ('"', '(', ')', '_') are cut from Wharton's: a giveaway,
  and a character tokenizer could not encode them.
- Lines shorter than --min-chars (too little to judge) are dropped, then duplicates. Verse's
  leading capitals stay on purpose: that is style.
- The split is 70/10/20 and balanced, cut between Wharton's paragraphs, so that no val or test
  line shares a paragraph with a training line. Each epoch draws fresh Shakespeare lines (there
  is far more of it, and a new sample keeps the classifier from learning lines by heart) and
  re-wraps Wharton's paragraphs after dropping their first 0-7 words, so hers are new too.
- Each line is given with a newline in front, as every line was in pretraining.

--seed draws the split (~120 test lines): compare options over several seeds (BENCHMARKS.md).
"""
import dataclasses
import os
import re
import sys
import textwrap
import time
from dataclasses import dataclass

import numpy as np

from tinygpt import functional
from tinygpt.checkpoint import load_model, save_checkpoint
from tinygpt.config import check_range, option, parse_config
from tinygpt.data import batches
from tinygpt.fileio import make_folder
from tinygpt.finetune import GPTClassifier, accuracy, count_params, encode_known, pad_batch, set_trainable, split
from tinygpt.lora import LORA_PATTERNS, apply_lora, block_targets, merged_state_dict
from tinygpt.nn import Dropout
from tinygpt.optim import AdamW, get_lr
from tinygpt.runtime import keep_freed_memory
from tinygpt.train import train_step

CLASSES = ("Shakespeare", "Wharton")
SPEAKER = re.compile(r"([A-Z][\w']*\s?){1,4}:")  # "ROMEO:", "First Citizen:", "KING RICHARD III:"


@dataclass
class ClassifierConfig:
    init_from: str = option("out-shakespeare/ckpt.npz", "checkpoint of train_shakespeare.py to start from")
    out_dir: str = option("out-classifier", "folder for classifier.npz and the tokenizer")
    data_dir: str = option(None, "folder with tinyshakespeare.txt and the-verdict.txt "
                                 "(default: $TINYGPT_DATA_DIR)", type=str)
    min_chars: int = option(45, "drop lines shorter than this")
    wrap_width: int = option(63, "re-wrap The Verdict's paragraphs into lines of at most this many characters")
    epochs: int = option(30, "passes over the training split")
    max_steps: int = option(0, "stop after this many optimizer steps in all (0: no limit; for smoke tests)")
    batch_size: int = option(16, "lines per optimizer step")
    learning_rate: float = option(None, "AdamW peak learning rate (default: 3e-4; 3e-3 with LoRA, "
                                        "whose B starts at zero)", type=float)
    weight_decay: float = option(0.1, "AdamW weight decay (on matrices only)")
    dropout: float = option(0.2, "dropout on the embeddings and residual branches while fine-tuning "
                                 "(replaces the base model's; the data set is small)")
    decay_lr: bool = option(True, "warm up over the first half epoch, then let the learning rate fall "
                                  "along a cosine to a tenth of it by the last step (else constant)")
    lm_weight: float = option(0.0, "weight of GPT-1's auxiliary language-modelling loss on the training lines "
                                   "(0: the class loss alone)")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0: no clipping)")
    trainable_blocks: int = option(1, "without LoRA: how many of the last blocks train (with ln_f and the head)")
    lora_rank: int = option(0, "LoRA rank (0: no LoRA, fine-tune --trainable-blocks instead)")
    lora_alpha: float = option(16.0, "LoRA scale numerator: the update is (alpha / rank) x A B")
    lora_blocks: int = option(1, "LoRA goes into this many of the last blocks")
    lora_targets: str = option("attn.c_attn,mlp.c_fc,mlp.c_proj",
                               "comma-separated projections of a block that get LoRA "
                               "(of attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)")
    seed: int = option(1337, "seed for the data shuffles and the new weights")

    def __post_init__(self):
        check_range(self, ("min_chars", "wrap_width", "epochs", "batch_size"), 1)
        check_range(self, ("max_steps", "trainable_blocks", "lora_rank", "lora_blocks", "lm_weight",
                           "weight_decay", "grad_clip", "lora_alpha"), 0)
        check_range(self, ("dropout",), 0, 1)
        if self.learning_rate is not None:
            check_range(self, ("learning_rate",), 0)
        if self.learning_rate is None:
            self.learning_rate = 3e-3 if self.lora_rank else 3e-4


def load_data(cfg):
    """The data, split as the module docstring says. Returns (sets, pool):
    sets = {"train": prose lines, "val": (texts, labels), "test": (texts, labels)}, val and test
    balanced and shuffled; pool = the Shakespeare lines training samples from (training_lines)."""
    data_dir = cfg.data_dir or os.environ.get("TINYGPT_DATA_DIR")
    if not data_dir:
        raise FileNotFoundError("set $TINYGPT_DATA_DIR (or pass --data-dir) to the folder holding "
                                "tinyshakespeare.txt and the-verdict.txt")
    with open(os.path.join(data_dir, "tinyshakespeare.txt"), encoding="utf-8") as f:
        shakespeare = f.read()
    with open(os.path.join(data_dir, "the-verdict.txt"), encoding="utf-8") as f:
        verdict = f.read()
    known = set(shakespeare)
    paragraphs = [p for p in "".join(c for c in verdict if c in known).split("\n") if p.strip()]
    # dict.fromkeys: drop duplicates, keep the first of each, in order
    verse = [line.strip() for line in shakespeare.split("\n")]
    verse = [line for line in dict.fromkeys(verse) if len(line) >= cfg.min_chars and not SPEAKER.fullmatch(line)]
    verse = split(verse, (1.0,), cfg.seed)[0]

    # Wharton: whole paragraphs go to one split; cut the shuffled list at 70% and 80% of the text
    paragraphs = split(paragraphs, (1.0,), cfg.seed + 1)[0]
    lengths = np.array([len(p) for p in paragraphs])
    starts = np.cumsum(lengths) - lengths  # characters before each paragraph
    part = np.searchsorted([0.7 * lengths.sum(), 0.8 * lengths.sum()], starts, side="right")  # 0, 1, 2
    prose = {name: wrap([p for p, k in zip(paragraphs, part) if k == i], cfg)
             for i, name in enumerate(("train", "val", "test"))}

    sets, used = {"train": [p for p, k in zip(paragraphs, part) if k == 0]}, 0  # wrapped each epoch
    for name in ("val", "test"):  # as many Shakespeare lines as Wharton lines, then shuffled together
        n = len(prose[name])
        pairs = [(t, 1) for t in prose[name]] + [(t, 0) for t in verse[used:used + n]]
        pairs = split(pairs, (1.0,), cfg.seed + 2)[0]
        sets[name] = ([t for t, _ in pairs], np.array([y for _, y in pairs], dtype=np.int64))
        used += n
    return sets, verse[used:]


def wrap(paragraphs, cfg, rng=None):
    """Wharton's paragraphs as lines of at most cfg.wrap_width characters and at least
    cfg.min_chars, duplicates dropped. With `rng` (training), each paragraph first loses its
    first 0-7 words, so that its lines break after other words: every epoch sees new lines."""
    if rng is not None:
        paragraphs = [" ".join(p.split()[rng.integers(8):]) for p in paragraphs]
    lines = [line for p in paragraphs for line in textwrap.wrap(p, cfg.wrap_width, break_on_hyphens=False)
             if len(line) >= cfg.min_chars]
    return list(dict.fromkeys(lines))


def training_lines(prose, pool, rng):
    """One epoch's training lines: all Wharton training lines and as many Shakespeare lines drawn
    afresh from `pool`. Returns (texts, labels), in no particular order (batches shuffles)."""
    if len(pool) < len(prose):
        raise ValueError(f"{len(pool)} Shakespeare lines cannot balance {len(prose)} Wharton lines")
    verse = [pool[i] for i in rng.choice(len(pool), len(prose), replace=False)]
    return prose + verse, np.array([1] * len(prose) + [0] * len(verse), dtype=np.int64)


def build_model(cfg, log=print):
    """(classifier, tokenizer): the base checkpoint with a new head, frozen as cfg says."""
    base, tokenizer = load_model(cfg.init_from)
    model = GPTClassifier.from_gpt(base, len(CLASSES), seed=cfg.seed).train()
    for _, module in model.named_modules():
        if isinstance(module, Dropout):
            module.p = cfg.dropout
    n_layer = model.config.n_layer
    if cfg.lora_rank:
        targets = block_targets(n_layer, cfg.lora_blocks, cfg.lora_targets.split(","))
        wrapped = apply_lora(model, cfg.lora_rank, cfg.lora_alpha, targets, seed=cfg.seed)
        set_trainable(model, LORA_PATTERNS + ("out_head.*",))
        log(f"LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha} on {', '.join(wrapped)}")
    else:
        blocks = block_targets(n_layer, cfg.trainable_blocks, ["*"])
        set_trainable(model, blocks + ["transformer.ln_f.*", "out_head.*"])
        log(f"training the last {cfg.trainable_blocks} of {n_layer} blocks, ln_f and the head")
    return model, tokenizer


def main(argv=None):
    cfg = parse_config(ClassifierConfig, argv, description=__doc__.split("\n")[0])
    keep_freed_memory()  # reuse freed activation memory step after step (tinygpt/runtime.py)
    functional.manual_seed(cfg.seed)
    try:
        make_folder(cfg.out_dir)  # a file in its place is refused now, not after training
        data, pool = load_data(cfg)
        model, tokenizer = build_model(cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    encode = lambda texts: [encode_known(tokenizer, "\n" + t)[0] for t in texts]  # noqa: E731
    prose = data.pop("train")  # Wharton's training paragraphs, wrapped anew each epoch
    sets = {name: (encode(texts), labels) for name, (texts, labels) in data.items()}
    n_prose = len(wrap(prose, cfg))  # Wharton lines an epoch (give or take a few, after the shift)
    print(f"data: train ~{2 * n_prose} lines an epoch (~{n_prose} Wharton, as many Shakespeare drawn from "
          f"{len(pool):,}), " + ", ".join(f"{k} {len(v[0])}" for k, v in sets.items())
          + f"; mean length {np.mean([len(s) for s in sets['test'][0]]):.0f} tokens (block_size {model.config.block_size})")
    trainable, total = count_params(model)
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")

    # subtle: the optimizer is built after freezing and after the LoRA swap: it takes only the
    # parameters that require a gradient at this moment (see tinygpt/finetune.py)
    optimizer = AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, 3])  # each epoch's Shakespeare lines and their order
    steps_per_epoch = -(-2 * n_prose // cfg.batch_size)  # ceil: the last batch may be short
    warmup, total_steps = steps_per_epoch // 2, cfg.epochs * steps_per_epoch  # for the schedule
    step, t0 = 0, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        train_texts, train_labels = training_lines(wrap(prose, cfg, rng), pool, rng)
        train_seqs = encode(train_texts)
        sets["train"] = (train_seqs, train_labels)
        losses = []
        for b in batches(len(train_seqs), cfg.batch_size, rng):
            if cfg.decay_lr:
                optimizer.lr = get_lr(step, cfg.learning_rate, cfg.learning_rate / 10, warmup, total_steps)
            idx, lengths = pad_batch([train_seqs[i] for i in b], 0, model.config.block_size)
            batch = {"idx": idx, "targets": train_labels[b], "lengths": lengths, "lm_weight": cfg.lm_weight}
            try:
                losses.append(train_step(model, optimizer, [batch], cfg.grad_clip)[0])
            except FloatingPointError as e:  # diverged: nothing is saved
                print(f"error: step {step}: {e}; stopped without saving", file=sys.stderr)
                return 1
            step += 1
            if step == cfg.max_steps:
                break
        accs = {k: accuracy(model, s, y) for k, (s, y) in sets.items()}
        print(f"epoch {epoch}: loss {np.mean(losses):.4f} | accuracy train {accs['train']:.1%}, "
              f"val {accs['val']:.1%}, test {accs['test']:.1%} | {time.perf_counter() - t0:.0f}s")
        if step == cfg.max_steps:
            break
    n_test = len(sets["test"][0])
    print(f"test accuracy: {accs['test']:.1%} ({round(accs['test'] * n_test)}/{n_test}), "
          f"val {accs['val']:.1%}, after {epoch} epochs")

    # saved as a plain classifier, LoRA merged in: it loads into GPTClassifier(config, 2) as is
    plain = GPTClassifier(model.config, len(CLASSES))
    plain.load_state_dict(merged_state_dict(model))
    tokenizer.save(os.path.join(cfg.out_dir, "tokenizer.tok"))
    path = os.path.join(cfg.out_dir, "classifier.npz")
    save_checkpoint(path, plain, config={"model": dataclasses.asdict(model.config), "classes": list(CLASSES),
                                         "finetune": dataclasses.asdict(cfg)},
                    iter_num=step, extra={"tokenizer_file": "tokenizer.tok", "accuracy": accs, "epoch": epoch})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
