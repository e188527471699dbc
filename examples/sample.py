"""Generate text from a checkpoint written by examples/train_shakespeare.py.

    python examples/sample.py --prompt "ROMEO:" --max-new-tokens 300
    python examples/sample.py --out-dir out-bpe --temperature 1.0 --top-p 0.9 --seed 0
    python examples/sample.py --quantize int8          # int8 weights: faster, nearly the same text
    python examples/sample.py --quantize bf16          # bfloat16 weights: half the bytes of float32

It loads out-shakespeare/ckpt.npz (or --ckpt) and the tokenizer saved next to it, and prints the
text as it is generated. Same as `tinygpt sample`; the code is in tinygpt/cli.py.
"""
import sys

from tinygpt.cli import sample

if __name__ == "__main__":
    sys.exit(sample())
