"""Sampling speed: tinygpt's generate against Hugging Face's, on the same random GPT-2 weights (issue 16).

For each model, Hugging Face's GPT2LMHeadModel is built with random weights, saved, and loaded
into tinygpt (GPT.from_pretrained), so both run the same numbers. Timed runs alternate (tinygpt,
HF, tinygpt, HF, ...) so drift on a shared machine hits both alike; the median is reported.

- prefill: one forward over a PROMPT-token prompt that fills the KV cache (logits of the last
  position only, as generate needs), in prompt tokens/s;
- decode: greedy generate of NEW tokens after a 16-token prompt with the KV cache, in new
  tokens/s (the 16-token prefill included, as a user sees it);
- the bandwidth limit: a parallel numba sum over a BW_MB array (larger than the last-level
  cache), measured in every round between the engines' runs (this machine's bandwidth drifts
  from minute to minute); decode at the median of a model's readings would read the weights once
  per token, so `% limit` is decode tok/s * weight bytes / bandwidth;
- int8 and bf16: tinygpt after model.quantize("int8") / ("bf16"), against HF in float32, with
  their token agreement with tinygpt's float32.

With --quality CKPT it measures int8's and bf16's quality instead, on a checkpoint written by
training: the val loss of the float32 and the quantized models on the same QUALITY_BATCHES val
batches, and how many of 200 greedy tokens (after a newline) each picks as float32 does.

    python benchmarks/bench_generate.py
    python benchmarks/bench_generate.py --config small --rounds 5 --json out.json
    python benchmarks/bench_generate.py --quality out-shakespeare/ckpt.npz

It exits non-zero if tinygpt's greedy tokens (float32) differ from HF's.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch  # subtle: before tinygpt's kernels; PyTorch slows down many times over otherwise (bench_train.py)
import numpy as np
from numba import njit, prange

from configs import CONFIGS  # from this script's folder (benchmarks/configs.py)

GPT2S = {k: CONFIGS["gpt2s"][k] for k in ("n_layer", "n_head", "n_embd", "vocab_size")}
MODELS = {
    "gpt2": GPT2S,                                                        # GPT-2 124M
    "small": dict(n_layer=4, n_head=4, n_embd=256, vocab_size=50257),     # the issue's small model
}
PROMPT, NEW, SHORT = 256, 64, 16
BW_MB = 512
QUALITY_BATCHES, QUALITY_TOKENS = 50, 200


@njit(parallel=True, fastmath=True)
def _total(a):
    s = 0.0
    for i in prange(a.size):
        s += a[i]
    return s


def bandwidth_gbs(repeats=5):
    """Parallel read bandwidth: a numba prange sum over a BW_MB float32 array, best of `repeats`."""
    a = np.ones(BW_MB * 2**20 // 4, np.float32)
    _total(a)
    best = min(_timed(lambda: _total(a)) for _ in range(repeats))
    return a.nbytes / best / 1e9


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def weight_bytes(model):
    """Bytes generation reads per token: every parameter but wpe (one row of it is read)."""
    scales = (getattr(p, "scale", None) for _, p in model.named_parameters())  # int8's, or None
    return sum(p.data.nbytes + (0 if s is None else s.nbytes)
               for (n, p), s in zip(model.named_parameters(), scales) if n != "transformer.wpe.weight")


def build(cfg, folder):
    """HF's model, tinygpt's float32 copy of it, and a bf16 one."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from tinygpt import GPT
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                                    vocab_size=cfg["vocab_size"], n_positions=1024)).eval()
    hf.save_pretrained(folder)
    return hf, GPT.from_pretrained(folder), GPT.from_pretrained(folder).quantize("bf16")


def run_model(name, cfg, rounds):
    from tinygpt.nn import evaluating
    rng = np.random.default_rng(0)
    long_prompt = rng.integers(0, cfg["vocab_size"], (1, PROMPT))
    prompt = rng.integers(0, cfg["vocab_size"], (1, SHORT))
    with tempfile.TemporaryDirectory() as folder:
        hf, model, bmodel = build(cfg, folder)
    qmodel = None

    def tiny_prefill():
        with evaluating(model):
            model._next_logits(long_prompt, model.new_kv_cache(1))

    def hf_prefill():
        with torch.no_grad():
            hf(torch.from_numpy(long_prompt), use_cache=True, logits_to_keep=1)

    def tiny_decode(m=None):
        return (m or model).generate(prompt, NEW, temperature=0)[:, SHORT:]

    def hf_decode():
        with torch.no_grad():
            out = hf.generate(torch.from_numpy(prompt), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                              use_cache=True, pad_token_id=0)
        return out[:, SHORT:].numpy()

    ours, theirs = tiny_decode(), hf_decode()  # warm-up, and the check
    if not np.array_equal(ours, theirs):
        first = int(np.argmax(ours[0] != theirs[0]))
        sys.exit(f"FAIL {name}: tinygpt's greedy tokens differ from HF's from new token {first}: "
                 f"{ours[0, first:first + 8]} vs {theirs[0, first:first + 8]}")
    tiny_prefill(), hf_prefill()
    times = {k: [] for k in ("tiny_prefill", "hf_prefill", "tiny_decode", "hf_decode", "int8_decode", "bf16_decode")}
    readings = []  # bandwidth, GB/s
    for _ in range(rounds):
        readings.append(bandwidth_gbs())
        times["tiny_prefill"].append(_timed(tiny_prefill))
        times["hf_prefill"].append(_timed(hf_prefill))
        times["tiny_decode"].append(_timed(tiny_decode))
        times["hf_decode"].append(_timed(hf_decode))
    fbytes = weight_bytes(model)
    btokens = tiny_decode(bmodel)
    for _ in range(rounds):
        readings.append(bandwidth_gbs())
        times["bf16_decode"].append(_timed(lambda: tiny_decode(bmodel)))
        times["hf_decode"].append(_timed(hf_decode))
    qmodel = model.quantize("int8")  # in place: the float32 runs are done
    qtokens = tiny_decode(qmodel)
    for _ in range(rounds):
        readings.append(bandwidth_gbs())
        times["int8_decode"].append(_timed(lambda: tiny_decode(qmodel)))
        times["hf_decode"].append(_timed(hf_decode))
    med = {k: statistics.median(v) for k, v in times.items()}
    bw = statistics.median(readings)
    r = dict(model=name, **cfg, prompt=PROMPT, new_tokens=NEW,
             tiny_prefill=PROMPT / med["tiny_prefill"], hf_prefill=PROMPT / med["hf_prefill"],
             tiny_decode=NEW / med["tiny_decode"], hf_decode=NEW / med["hf_decode"],
             int8_decode=NEW / med["int8_decode"], int8_agreement=float((qtokens == ours).mean()),
             bf16_decode=NEW / med["bf16_decode"], bf16_agreement=float((btokens == ours).mean()),
             weight_mb=fbytes / 1e6, int8_weight_mb=weight_bytes(qmodel) / 1e6,
             bf16_weight_mb=weight_bytes(bmodel) / 1e6, bandwidth_gbs=bw, bandwidth_readings=readings)
    for kind in ("", "int8_", "bf16_"):
        r[f"{kind}limit_decode"] = bw * 1e9 / (r[f"{kind}weight_mb"] * 1e6)
    return r


def quality(path):
    """float32 against bf16 and int8 on a training checkpoint: val loss on the same batches, greedy agreement."""
    from tinygpt.checkpoint import load_model
    from tinygpt.data import TokenDataset, find_text
    from tinygpt.nn import evaluating
    model, tokenizer = load_model(path)
    with open(find_text(None), encoding="utf-8") as f:  # --data's default: $TINYGPT_DATA_DIR, or downloaded
        data = TokenDataset.from_text(f.read(), tokenizer)
    rng = np.random.default_rng(0)
    T = model.config.block_size
    batches = [data.get_batch("val", 12, T, rng) for _ in range(QUALITY_BATCHES)]
    prompt = np.array([tokenizer.encode("\n")])

    def measure():
        with evaluating(model):
            loss = float(np.mean([model(x, y)[1].item() for x, y in batches]))
        return loss, model.generate(prompt, QUALITY_TOKENS, temperature=0)[0, prompt.shape[1]:]
    loss32, tokens32 = measure()
    for kind in ("bf16", "int8"):
        model = load_model(path)[0].quantize(kind)
        loss, tokens = measure()
        agree = float((tokens == tokens32).mean())
        first = int(np.argmax(tokens != tokens32)) if agree < 1 else QUALITY_TOKENS
        print(f"{path}: val loss float32 {loss32:.4f}, {kind} {loss:.4f} ({loss - loss32:+.4f} nats; "
              f"{QUALITY_BATCHES} batches of 12 x {T}); greedy tokens equal: {100 * agree:.0f}% of "
              f"{QUALITY_TOKENS} (first difference at token {first})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(MODELS), action="append", help="model (default: both)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of each engine (default: %(default)s)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--quality", metavar="CKPT", help="instead: int8 and bf16 against float32 on this training checkpoint")
    args = p.parse_args(argv)
    if args.quality:
        return quality(args.quality)
    torch.set_num_threads(int(os.environ.get("TINYGPT_NUM_THREADS", 2)))
    from tinygpt.runtime import keep_freed_memory
    keep_freed_memory()  # as `tinygpt sample` does, for both engines alike: PyTorch allocates through the same malloc
    results = [run_model(n, MODELS[n], args.rounds) for n in (args.config or ["gpt2", "small"])]
    for r in results:
        print(f"{r['model']}: read bandwidth (numba prange sum of {BW_MB} MB, once a round) median "
              f"{r['bandwidth_gbs']:.1f} GB/s, from {min(r['bandwidth_readings']):.1f} to "
              f"{max(r['bandwidth_readings']):.1f}; torch threads {torch.get_num_threads()}")
    head = (f"{'model':<7}{'prefill tok/s':>15}{'HF':>8}{'ratio':>7}{'decode tok/s':>14}{'HF':>7}{'ratio':>7}"
            f"{'% limit':>9}{'int8 tok/s':>12}{'vs HF':>7}{'% limit':>9}{'agree':>7}"
            f"{'bf16 tok/s':>12}{'vs HF':>7}{'% limit':>9}{'agree':>7}")
    print(head)
    for r in results:
        print(f"{r['model']:<7}{r['tiny_prefill']:>15.0f}{r['hf_prefill']:>8.0f}{r['tiny_prefill'] / r['hf_prefill']:>6.2f}x"
              f"{r['tiny_decode']:>14.1f}{r['hf_decode']:>7.1f}{r['tiny_decode'] / r['hf_decode']:>6.2f}x"
              f"{100 * r['tiny_decode'] / r['limit_decode']:>8.0f}%"
              f"{r['int8_decode']:>12.1f}{r['int8_decode'] / r['hf_decode']:>6.2f}x"
              f"{100 * r['int8_decode'] / r['int8_limit_decode']:>8.0f}%{100 * r['int8_agreement']:>6.0f}%"
              f"{r['bf16_decode']:>12.1f}{r['bf16_decode'] / r['hf_decode']:>6.2f}x"
              f"{100 * r['bf16_decode'] / r['bf16_limit_decode']:>8.0f}%{100 * r['bf16_agreement']:>6.0f}%")
    sizes = ", ".join(f"{r['model']} {r['weight_mb']:.0f} MB, int8 {r['int8_weight_mb']:.0f} MB, "
                      f"bf16 {r['bf16_weight_mb']:.0f} MB" for r in results)
    print(f"greedy tokens equal HF's (float32): yes; limit = bandwidth / weight bytes ({sizes})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results}, f, indent=2)


if __name__ == "__main__":
    main()
