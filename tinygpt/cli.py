"""The `tinygpt` command: `tinygpt train ...` and `tinygpt sample ...`.

`train` is `tinygpt.train.main` (every TrainConfig field is a flag). `sample` lives here: it loads
a checkpoint written by training and the tokenizer saved next to it (checkpoint.load_model), and
prints a continuation of `--prompt`, token by token as it is generated.

    tinygpt train --max-iters 500
    tinygpt sample --out-dir out-shakespeare --prompt "ROMEO:" --max-new-tokens 200 --top-k 40

What it leaves out: the training loop (train.py) and the sampling math (model.py).
"""
import argparse
import os
import sys

import numpy as np

from .checkpoint import CKPT_FILE, load_model
from .config import check_range
from .runtime import keep_freed_memory
from .train import main as train_main

USAGE = """usage: tinygpt {train,sample} [flags]

  tinygpt train   train a GPT on a text file (see `tinygpt train --help`)
  tinygpt sample  generate text from a trained checkpoint (see `tinygpt sample --help`)
"""


def build_sample_parser():
    p = argparse.ArgumentParser(prog="tinygpt sample", description="Generate text from a checkpoint.")
    p.add_argument("--out-dir", default="out-shakespeare", help="folder holding ckpt.npz and tokenizer.tok "
                   "(default: %(default)s)")
    p.add_argument("--ckpt", default=None, help="checkpoint file (default: OUT_DIR/ckpt.npz)")
    p.add_argument("--tokenizer", default=None, help="tokenizer file (default: the one saved with the checkpoint)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate (default: %(default)s)")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="<1 sharper, >1 more random, 0 greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=200, help="keep the k likeliest tokens; 0: all (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=None, help="keep the smallest set of tokens with this much "
                   "probability (nucleus sampling; default: off)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible samples (default: random)")
    p.add_argument("--quantize", choices=("none", "int8", "bf16"), default="none",
                   help="int8: weights as int8 with a scale per output channel, ~4x fewer bytes read a "
                        "token; bf16: bfloat16 weights, 2x fewer (default: %(default)s)")
    return p


def stream_sample(model, tokenizer, prompt_ids, args, out=sys.stdout):
    """Print the prompt, then each new piece of text as soon as it decodes cleanly.

    subtle: a byte-level BPE token can hold part of a multi-byte UTF-8 character, which decodes to
    U+FFFD until the rest arrives; so we decode everything so far and hold back a trailing U+FFFD.
    """
    ids = list(prompt_ids)
    shown = tokenizer.decode(ids)
    out.write(shown)
    steps = model.generate_stream(np.array([ids], dtype=np.int64), args.max_new_tokens, args.temperature,
                                  args.top_k or None, args.top_p, args.seed)
    for new in steps:
        ids.append(int(new[0]))
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd") and text.startswith(shown):
            out.write(text[len(shown):])
            out.flush()
            shown = text
    out.write(tokenizer.decode(ids)[len(shown):] + "\n")


def sample(argv=None):
    parser = build_sample_parser()
    args = parser.parse_args(argv)
    try:  # every setting, before the checkpoint is read
        check_range(args, ("max_new_tokens", "top_k", "temperature") + (("seed",) if args.seed is not None else ()), 0)
        check_range(args, ("num_samples",), 1)
        if args.top_p is not None and not 0 < args.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    except ValueError as e:
        parser.error(str(e))
    try:
        model, tokenizer = load_model(args.ckpt or os.path.join(args.out_dir, CKPT_FILE), args.tokenizer)
        prompt_ids = tokenizer.encode(args.prompt) if args.prompt else [0]
        if args.quantize != "none":
            model.quantize(args.quantize)
    except (FileNotFoundError, ValueError) as e:  # a missing checkpoint, a character not in the vocabulary, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    keep_freed_memory()  # each prefill's arrays, reused by the next layer and the next sample (runtime.py)
    for i in range(args.num_samples):
        if i:
            print("---------------")
        if args.seed is not None and i:
            args.seed += 1  # each sample its own, still reproducible, stream
        try:
            stream_sample(model, tokenizer, prompt_ids, args)
        except ValueError as e:  # bad --temperature / --top-k / --top-p values
            print(f"\nerror: {e}", file=sys.stderr)
            return 2
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train_main(rest)
    if command == "sample":
        return sample(rest)
    print(f"tinygpt: unknown command {command!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
