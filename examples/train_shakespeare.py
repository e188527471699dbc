"""Train a baby GPT on Tiny Shakespeare, character by character, on a CPU.

    python examples/train_shakespeare.py                    # nanoGPT's CPU config: 2000 iterations
    python examples/train_shakespeare.py --max-iters 200    # a quick look
    python examples/train_shakespeare.py --tokenizer bpe    # a 512-token BPE instead of characters
    python examples/train_shakespeare.py --resume           # continue from out-shakespeare/ckpt.npz
    mpiexec -n 2 python examples/train_shakespeare.py       # data-parallel on 2 processes: the same run

The text is found via --data PATH, else $TINYGPT_DATA_DIR/tinyshakespeare.txt, else downloaded once.
Every setting is a flag (--help lists them); the loop itself is tinygpt/train.py, and under
mpiexec (`pip install -e ".[mpi]"`) --batch-size is the global batch (tinygpt/distributed.py). Afterwards,
sample from the checkpoint with examples/sample.py.
"""
import sys

from tinygpt.train import main

if __name__ == "__main__":
    sys.exit(main())
