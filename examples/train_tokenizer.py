"""Train a byte-level BPE tokenizer on a text file, save it, and show how it cuts a sample.

    python examples/train_tokenizer.py                       # Tiny Shakespeare, vocab 512
    python examples/train_tokenizer.py --data my.txt --vocab-size 1024 --pattern gpt2 \\
        --out out/my.bpe --sample "To be, or not to be"

The sample is printed with each token between | bars; bytes that are only part of a character
show as \\xNN, and spaces as ␣ so that the boundaries around them stay visible.
"""
import argparse
import os
import time

from tinygpt.data import read_text
from tinygpt.fileio import make_folder
from tinygpt.tokenizer import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, BPETokenizer


def show_tokens(tok, text):
    """The text of each token of `text`, between bars.

    Example:
        show_tokens(gpt2, "Hello world") -> "|Hello|␣world|"
    """
    pieces = []
    for i in tok.encode(text, allowed_special="all"):
        piece = tok.decode_bytes([i]).decode("utf-8", errors="backslashreplace")
        pieces.append(piece.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥"))
    return "|" + "|".join(pieces) + "|"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = os.path.join(os.environ.get("TINYGPT_DATA_DIR", "."), "tinyshakespeare.txt")
    parser.add_argument("--data", default=default_data, help="a UTF-8 text file to train on "
                        "(default $TINYGPT_DATA_DIR/tinyshakespeare.txt)")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--pattern", choices=["gpt2", "gpt4"], default="gpt4",
                        help="the regex that cuts text into chunks before merging")
    parser.add_argument("--out", default="out/tokenizer.bpe", help="where to save the tokenizer")
    parser.add_argument("--sample", default=None, help="text to show encoded (default: the "
                        "first 200 characters of the training text)")
    parser.add_argument("--verbose", action="store_true", help="report merges while training")
    args = parser.parse_args()

    if not os.path.isfile(args.data):
        parser.error(f"{args.data} not found: pass --data or set TINYGPT_DATA_DIR")
    if args.vocab_size < 256:
        parser.error(f"--vocab-size must be >= 256 (the byte tokens), got {args.vocab_size}")
    try:  # what would only fail after training: a bad --out
        text = read_text(args.data)
        if os.path.isdir(args.out):
            raise ValueError(f"--out {args.out} is a directory, not a file name")
        make_folder(os.path.dirname(os.path.abspath(args.out)))
    except ValueError as e:
        parser.error(str(e))
    pattern = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN}[args.pattern]
    tok = BPETokenizer(pattern)
    t0 = time.perf_counter()
    tok.train(text, args.vocab_size, verbose=args.verbose)
    print(f"trained {len(tok.merges)} merges on {len(text):,} characters of {args.data} "
          f"in {time.perf_counter() - t0:.2f} s")

    tok.save(args.out)
    print(f"saved to {args.out} (reload: tinygpt.tokenizer.load_tokenizer or BPETokenizer.load)")

    longest = sorted(tok.merges.values(), key=lambda i: len(tok.vocab[i]))[-5:]
    print("longest tokens:", ", ".join(repr(tok.decode([i])) for i in reversed(longest)))
    sample = args.sample if args.sample is not None else text[:200]
    ids = tok.encode(sample, allowed_special="all")
    print(f"\n{len(sample)} characters -> {len(ids)} tokens:")
    print(show_tokens(tok, sample))
    print(ids)


if __name__ == "__main__":
    main()
