"""Training-step speed and memory: tinygpt against a compact PyTorch reference of the same GPT.

Both engines build the same network (nanoGPT's architecture, GPT-2's names) from the same initial
weights and run forward + backward + AdamW on identical random batches. Timed steps are
interleaved (tinygpt, torch, tinygpt, torch, ...) so drift on a shared machine hits both alike;
warm-up steps are excluded and the median is reported. Each timed step starts after a short
pause (--pause), so that one engine's worker threads, still spinning after its step, do not slow
the other engine's. `--shakespeare` runs the engines one after the other instead.

    python benchmarks/bench_train.py                      # all three configs
    python benchmarks/bench_train.py --config baby --profile
    python benchmarks/bench_train.py --json out.json

Peak memory is measured per engine in a child process (VmHWM minus the RSS before the model was
built, after a warm-up step on a tiny model so that loading either engine's code is not counted),
because one process holding both engines cannot tell their allocations apart.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np

from configs import CONFIGS  # from this script's folder (benchmarks/configs.py)

LR, BETAS, WD = 1e-3, (0.9, 0.99), 0.1
TIMED_STEPS = {"baby": 30, "char10m": 8, "gpt2s": 5}  # default --iters: fewer for the bigger models


# ---- tinygpt ------------------------------------------------------------------------------------
def build_tinygpt(cfg, seed=0, bias=True):
    from tinygpt.model import GPT, GPTConfig
    from tinygpt.optim import AdamW, clip_grad_norm
    model = GPT(GPTConfig(vocab_size=cfg["vocab_size"], block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                          n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=0.0, bias=bias), seed=seed)
    opt = AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WD)

    def step(x, y, lr=LR, clip=None):
        opt.lr = lr
        opt.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        if clip:
            clip_grad_norm(model.parameters(), clip)
        opt.step()
        return loss.item()

    def evaluate(x, y):
        from tinygpt import no_grad
        with no_grad():
            return model(x, y)[1].item()
    step.evaluate = evaluate
    return model, step


# ---- the PyTorch reference ------------------------------------------------------------------------
def build_torch(cfg, state_dict, bias=True):
    """A compact nanoGPT in PyTorch, loaded with tinygpt's initial weights (Conv1D layout: x @ W)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    torch.set_num_threads(2)
    C, nh = cfg["n_embd"], cfg["n_head"]

    class Conv1D(nn.Module):  # GPT-2's layout: weight (in, out), y = x @ W + b
        def __init__(self, n_in, n_out):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(n_in, n_out))
            self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

        def forward(self, x):
            x2 = x.view(-1, x.size(-1))
            y = torch.addmm(self.bias, x2, self.weight) if bias else x2 @ self.weight
            return y.view(*x.shape[:-1], -1)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C, bias=bias), nn.LayerNorm(C, bias=bias)
            self.attn = nn.Module()
            self.attn.c_attn, self.attn.c_proj = Conv1D(C, 3 * C), Conv1D(C, C)
            self.mlp = nn.Module()
            self.mlp.c_fc, self.mlp.c_proj = Conv1D(C, 4 * C), Conv1D(4 * C, C)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.attn.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
            return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.Module()
            self.transformer.wte = nn.Embedding(cfg["vocab_size"], C)
            self.transformer.wpe = nn.Embedding(cfg["block_size"], C)
            self.transformer.h = nn.ModuleList(Block() for _ in range(cfg["n_layer"]))
            self.transformer.ln_f = nn.LayerNorm(C, bias=bias)

        def forward(self, idx, targets):
            t = self.transformer
            x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))
            for block in t.h:
                x = block(x)
            logits = t.ln_f(x) @ t.wte.weight.T  # lm_head tied to wte
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    model = GPT()
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()
                           if k != "lm_head.weight"}, strict=True)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS)

    def step(x, y, lr=LR, clip=None):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss = model(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return loss.item()

    def evaluate(x, y):
        with torch.no_grad():
            return model(torch.from_numpy(x), torch.from_numpy(y)).item()
    step.evaluate = evaluate
    return model, step


def batches(cfg, n, seed=1):
    rng = np.random.default_rng(seed)
    shape = (cfg["batch_size"], cfg["block_size"])
    return [(rng.integers(0, cfg["vocab_size"], shape), rng.integers(0, cfg["vocab_size"], shape)) for _ in range(n)]


# ---- timing -----------------------------------------------------------------------------------------
def time_config(name, warmup, iters, with_torch, pause=0.2):
    cfg = CONFIGS[name]
    model, tg_step = build_tinygpt(cfg)
    engines = {"tinygpt": tg_step}
    if with_torch:
        engines["torch"] = build_torch(cfg, model.state_dict())[1]
    data = batches(cfg, warmup + iters)
    times, losses = defaultdict(list), defaultdict(list)
    for i, (x, y) in enumerate(data):
        for engine, step in engines.items():  # interleaved: A B A B ...
            # subtle: after a step, each engine's worker threads (OpenBLAS's, PyTorch's OpenMP)
            # spin waiting for more work and slow the *other* engine's next step (BENCHMARKS.md).
            # The pause lets them go idle, so each step is timed on a quiet machine.
            time.sleep(pause)
            t0 = time.perf_counter()
            losses[engine].append(step(x, y))
            if i >= warmup:
                times[engine].append(time.perf_counter() - t0)
    tokens = cfg["batch_size"] * cfg["block_size"]
    out = {}
    for engine in engines:
        ms = 1000 * statistics.median(times[engine])
        out[engine] = {"ms_per_iter": ms, "tokens_per_s": tokens / ms * 1000, "first_loss": losses[engine][0],
                       "last_loss": losses[engine][-1]}
    return out


def peak_memory_mb(name, engine, steps=3):
    """Run `steps` training steps of one engine in a child process; return its peak RSS growth."""
    code = f"""
import sys, json; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import bench_train as b
def rss(key):
    for line in open('/proc/self/status'):
        if line.startswith(key): return int(line.split()[1]) / 1024
cfg = b.CONFIGS[{name!r}]
import tinygpt.model, tinygpt.optim, tinygpt.runtime
tinygpt.runtime.keep_freed_memory()
{'import torch' if engine == 'torch' else ''}
data = b.batches(cfg, {steps})
# warm up on a tiny model first, so that loading the engine's code (numba's compiled kernels,
# PyTorch's CPU backends) is not counted: the figure is what training this model adds
tiny = dict(cfg, n_layer=1, n_head=1, n_embd=8, block_size=4, batch_size=2, vocab_size=7)
model, step = b.build_tinygpt(tiny)
if {engine!r} == 'torch':
    model, step = b.build_torch(tiny, model.state_dict())
for x, y in b.batches(tiny, 2): step(x, y)
del model, step
base = rss('VmRSS')
model, step = b.build_tinygpt(cfg)
if {engine!r} == 'torch':
    sd = model.state_dict(); del model, step
    model, step = b.build_torch(cfg, sd); del sd
for x, y in data: step(x, y)
print(json.dumps(rss('VmHWM') - base))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"memory run of {engine}/{name} failed:\n{res.stderr}")
    return float(res.stdout.strip().splitlines()[-1])


# ---- per-op profile of tinygpt ----------------------------------------------------------------------
def profile_tinygpt(name, iters=10):
    """Time tinygpt's step op by op: each Tensor/functional op's forward and its backward closure,
    and each kernel call. Everything not inside a kernel is graph building and Python."""
    import tinygpt.functional as F
    import tinygpt.tensor as T
    from tinygpt import kernels
    fwd, bwd, kern = defaultdict(float), defaultdict(float), defaultdict(float)
    cfg = CONFIGS[name]
    _, step = build_tinygpt(cfg)
    data = batches(cfg, iters + 2)
    step(*data[0])  # compile/warm up before patching

    def timed_op(fn, op):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            fwd[op] += time.perf_counter() - t0
            for o in (out if isinstance(out, (list, tuple)) else [out]):
                # (an op that returns its input unchanged, like dropout with p = 0, made nothing)
                if isinstance(o, T.Tensor) and o._backward is not None and not any(o is a for a in args):
                    o._backward = timed_backward(o._backward, op)
            return out
        return wrapper

    def timed_backward(fn, op):
        def wrapper():
            t0 = time.perf_counter()
            fn()
            bwd[op] += time.perf_counter() - t0
        return wrapper

    def timed_kernel(fn, kname):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            kern[kname] += time.perf_counter() - t0
            return out
        return wrapper

    patched = []
    for obj, names in ((T.Tensor, ["__add__", "__radd__", "__sub__", "__mul__", "__rmul__", "__truediv__",
                                    "__matmul__", "__getitem__", "reshape", "permute", "transpose", "split",
                                    "sum", "mean", "exp", "log", "tanh", "masked_fill"]),
                       (F, ["linear", "softmax", "log_softmax", "cross_entropy", "layer_norm", "gelu", "dropout",
                            "embedding", "scaled_dot_product_attention", "self_attention"])):
        for n in names:
            if hasattr(obj, n):
                patched.append((obj, n, getattr(obj, n)))
                setattr(obj, n, timed_op(getattr(obj, n), n))
    kernels.matmul  # resolve the kernel set before patching it
    for kname in kernels.NAMES:
        patched.append((kernels, kname, getattr(kernels, kname)))
        setattr(kernels, kname, timed_kernel(getattr(kernels, kname), kname))
    try:
        t0 = time.perf_counter()
        for x, y in data[2:]:
            step(x, y)
        total = time.perf_counter() - t0
    finally:
        for obj, n, fn in reversed(patched):
            setattr(obj, n, fn)
    # subtle: Tensor.__matmul__, and `linear` for the products kernels.prefer_blas hands to
    # OpenBLAS, call np.matmul directly: that time shows under the op, not under a kernel.
    per = 1000 / iters
    print(f"\nprofile of tinygpt, config {name}: {total * per:.1f} ms/iter over {iters} iters")
    print(f"{'op':<30}{'fwd ms':>10}{'bwd ms':>10}")
    for op in sorted(set(fwd) | set(bwd), key=lambda o: -(fwd[o] + bwd[o])):
        print(f"{op:<30}{fwd[op] * per:>10.2f}{bwd[op] * per:>10.2f}")
    print(f"{'kernel':<30}{'ms':>10}")
    for k in sorted(kern, key=lambda k: -kern[k]):
        print(f"{k:<30}{kern[k] * per:>10.2f}")
    op_time = sum(fwd.values()) + sum(bwd.values())
    print(f"time in kernels: {sum(kern.values()) * per:.1f} ms/iter; in ops (incl. kernels and np.matmul): "
          f"{op_time * per:.1f}; outside ops (graph walk, optimizer, Python): {(total - op_time) * per:.1f}")
    return {"ms_per_iter": total * per, "fwd_ms": {k: v * per for k, v in fwd.items()},
            "bwd_ms": {k: v * per for k, v in bwd.items()}, "kernel_ms": {k: v * per for k, v in kern.items()}}


# ---- the main job's config, trained for real by both engines ------------------------------------------
def shakespeare(iters, eval_batches=20, chunk=250, log=print):
    """Train examples/train_shakespeare.py's default config (char-level, bias=False, warmup + cosine,
    clip 1.0) with both engines on the same batches; report wall time and final losses.

    The engines take turns in chunks of `chunk` steps: within a chunk, back-to-back steps as in a
    real run (no other engine's threads spinning in between); across chunks, the drift of a
    shared machine hits both engines alike (BENCHMARKS.md)."""
    from tinygpt.data import TokenDataset, find_text, read_text
    from tinygpt.optim import get_lr
    from tinygpt.tokenizer import CharTokenizer
    text = read_text(find_text(None))
    tok = CharTokenizer(text)
    ds = TokenDataset.from_text(text, tok)
    cfg = dict(CONFIGS["baby"], vocab_size=tok.vocab_size)
    model, tg_step = build_tinygpt(cfg, seed=1337, bias=False)
    engines = {"tinygpt": tg_step}
    try:
        engines["torch"] = build_torch(cfg, model.state_dict(), bias=False)[1]
    except ImportError:
        pass
    rng = np.random.default_rng(1337)
    data = [ds.get_batch("train", cfg["batch_size"], cfg["block_size"], rng) for _ in range(iters)]
    wall = defaultdict(float)
    for start in range(0, iters, chunk):
        for engine, step in engines.items():
            for it in range(start, min(start + chunk, iters)):
                x, y = data[it]
                t0 = time.perf_counter()
                loss = step(x, y, lr=get_lr(it, LR, 1e-4, 100, iters), clip=1.0)
                wall[engine] += time.perf_counter() - t0
            log(f"{engine} iter {it}: {wall[engine]:.1f}s, loss {loss:.3f}")
    out = {}
    for engine, step in engines.items():
        losses = {}
        for split in ("train", "val"):
            erng = np.random.default_rng(0)  # the same evaluation batches for both engines
            losses[split] = float(np.mean([step.evaluate(*ds.get_batch(split, cfg["batch_size"], cfg["block_size"], erng))
                                           for _ in range(eval_batches)]))
        out[engine] = {"wall_s": wall[engine], "train_loss": losses["train"], "val_loss": losses["val"]}
        log(f"{engine}: {iters} iters in {wall[engine]:.1f} s ({1000 * wall[engine] / iters:.1f} ms/iter), "
            f"train loss {losses['train']:.4f}, val loss {losses['val']:.4f} ({eval_batches} batches)")
    if "torch" in out:
        log(f"wall time tinygpt/torch: {out['tinygpt']['wall_s'] / out['torch']['wall_s']:.2f}x")
    return out


def main(argv=None):
    from tinygpt.runtime import keep_freed_memory
    keep_freed_memory()  # for both engines alike: PyTorch allocates through the same malloc
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--pause", type=float, default=0.2, help="seconds of idle before each timed step (see time_config)")
    p.add_argument("--iters", type=int, default=None, help=f"timed steps (default: {TIMED_STEPS})")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--profile", action="store_true", help="per-op profile of tinygpt")
    p.add_argument("--shakespeare", type=int, metavar="ITERS",
                   help="instead: train the main job's config on Tiny Shakespeare with both engines for ITERS "
                        "steps (2000 is the default run) and compare wall time and losses")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if args.shakespeare:
        out = shakespeare(args.shakespeare)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2)
        return
    try:
        # subtle: torch is imported before tinygpt's numba kernels load: the other way round,
        # PyTorch's training step slows down many times over, likely two OpenMP runtimes
        # competing (BENCHMARKS.md).
        import torch  # noqa: F401
        with_torch = not args.no_torch
    except ImportError:
        with_torch = False
        print("torch is not installed: timing tinygpt alone")
    from tinygpt import kernels
    kernels.matmul
    import platform
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores; tinygpt kernels: {kernels.backend}")
    results = {"machine": cpu, "kernels": kernels.backend, "configs": {}}
    header = f"{'config':<9}{'engine':<9}{'ms/iter':>10}{'tokens/s':>10}{'peak MB':>9}{'loss0':>8}{'ratio':>7}"
    rows = []
    for name in args.config:
        r = time_config(name, args.warmup, args.iters or TIMED_STEPS[name], with_torch, args.pause)
        if not args.no_memory:
            for engine in r:
                r[engine]["peak_mb"] = peak_memory_mb(name, engine)
        if "torch" in r:
            r["ratio_ms"] = r["tinygpt"]["ms_per_iter"] / r["torch"]["ms_per_iter"]
            if not args.no_memory:
                r["ratio_mem"] = r["tinygpt"]["peak_mb"] / r["torch"]["peak_mb"]
        results["configs"][name] = r
        for engine in ("tinygpt", "torch"):
            if engine in r:
                e = r[engine]
                ratio = f"{r['ratio_ms']:.2f}x" if engine == "tinygpt" and "ratio_ms" in r else ""
                rows.append(f"{name:<9}{engine:<9}{e['ms_per_iter']:>10.1f}{e['tokens_per_s']:>10.0f}"
                            f"{e.get('peak_mb', float('nan')):>9.0f}{e['first_loss']:>8.3f}{ratio:>7}")
        print(rows[-1] if len(rows) == 1 else "\n".join(rows[-len([e for e in ('tinygpt', 'torch') if e in r]):]))
    print("\n" + header + "\n" + "\n".join(rows))
    for name, r in results["configs"].items():
        if "ratio_mem" in r:
            print(f"{name}: tinygpt/torch time {r['ratio_ms']:.2f}x, peak memory {r['ratio_mem']:.2f}x")
    if args.profile:
        results["profile"] = {name: profile_tinygpt(name) for name in args.config}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
