"""Kernel speed: the NumPy reference, the numba kernels and PyTorch (CPU), at GPT shapes.

    python benchmarks/bench_kernels.py                         # every kernel, every config
    python benchmarks/bench_kernels.py --quick                 # fewer repeats
    python benchmarks/bench_kernels.py --kernels matmul,attention --configs baby --json out.json
    python benchmarks/bench_kernels.py --compile-check         # a new process, cached kernels: < 2 s?

Shapes come from the models of benchmarks/configs.py. Both kernel sets run as the ops run them,
behind their input checks (`kernels.checked`).

Method. All three implementations run in this one process on the same arrays; each gets two
warm-up calls, then they take turns: a block of --repeats timed calls of one, then of the next,
for --rounds rounds, and the median of all its calls is reported. Between blocks the benchmark
sleeps --pause seconds. subtle: that pause matters. After a call, OpenBLAS's and OpenMP's worker
threads spin-wait for more work, and whatever runs next shares its cores with them (BENCHMARKS.md).

Units (higher is better): GFLOP/s for matmul (2MKN flops) and attention (causal: the forward is
two T x T x hs products over the lower triangle, 2 * B * nh * T^2 * hs flops; the backward is
counted as 2.5 forwards, FlashAttention-2's convention); GB/s for the rest (bytes of the inputs
and outputs, each counted once). Ratios are time(other) / time(numba): above 1, numba is faster.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from configs import CONFIGS  # noqa: E402  (from this script's folder)
from tinygpt import kernels  # noqa: E402
from tinygpt.kernels import jit as numba_set, reference as numpy_set  # noqa: E402

ref, jit = kernels.checked(numpy_set), kernels.checked(numba_set)
# one benchmark a kernel, forward and backward together; prefer_blas is a rule, not a kernel
KERNELS = tuple(dict.fromkeys(name.removesuffix("_forward").removesuffix("_backward")
                              for name in kernels.NAMES if name != "prefer_blas"))

try:
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(2)
except ImportError:  # the benchmark runs without torch, with an empty torch column
    torch = None


def cases(kernel, cfg, rng):
    """Yield (name, shape text, unit, work, {impl: zero-argument callable}) for one config.
    work is flops (GFLOP/s) or bytes (GB/s)."""
    C, T, B, nh, V = cfg["n_embd"], cfg["block_size"], cfg["batch_size"], cfg["n_head"], cfg["vocab_size"]
    N, hs = B * T, C // nh
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    tt = (lambda *arrays: [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]) if torch else None

    if kernel == "matmul":
        x, h, dy = f32(N, C), f32(N, 4 * C), f32(N, 4 * C)
        w_qkv, w_fc, w_proj, w_head = f32(C, 3 * C), f32(C, 4 * C), f32(4 * C, C), f32(C, V)
        for name, a, b in [("x @ w_qkv", x, w_qkv), ("x @ w_fc", x, w_fc), ("h @ w_proj", h, w_proj),
                           ("dh @ w_fc.T", dy, w_fc.T), ("x.T @ dh (dW)", x.T, dy), ("x @ w_head", x, w_head)]:
            M, K = a.shape
            flag = " (prefers BLAS)" if jit.prefer_blas(M, K, b.shape[1]) else ""
            impls = {"numpy": lambda a=a, b=b: ref.matmul(a, b), "numba": lambda a=a, b=b: jit.matmul(a, b)}
            if torch:
                ta, tb = torch.from_numpy(a), torch.from_numpy(b)  # views: a transposed input stays one
                impls["torch"] = lambda ta=ta, tb=tb: torch.matmul(ta, tb)
            yield name + flag, f"{M}x{K} @ {K}x{b.shape[1]}", "GFLOP/s", 2 * M * K * b.shape[1], impls

    elif kernel == "sum_rows":
        dy = f32(N, 4 * C)   # the gradient of c_fc's output: its bias gradient
        impls = {"numpy": lambda: ref.sum_rows(dy), "numba": lambda: jit.sum_rows(dy)}
        if torch:
            tdy, = tt(dy)
            impls["torch"] = lambda: tdy.sum(0)
        yield "sum_rows", f"{N}x{4 * C}", "GB/s", dy.nbytes, impls

    elif kernel == "attention":
        q, k, v, dout = (f32(B, nh, T, hs) for _ in range(4))
        out, lse = ref.attention_forward(q, k, v)
        flops = 2 * B * nh * T * T * hs
        shape = f"B{B} nh{nh} T{T} hs{hs}"
        fwd = {"numpy": lambda: ref.attention_forward(q, k, v), "numba": lambda: jit.attention_forward(q, k, v)}
        bwd = {"numpy": lambda: ref.attention_backward(q, k, v, out, lse, dout),
               "numba": lambda: jit.attention_backward(q, k, v, out, lse, dout)}
        both = {"numpy": lambda: ref.attention_backward(q, k, v, *ref.attention_forward(q, k, v), dout),
                "numba": lambda: jit.attention_backward(q, k, v, *jit.attention_forward(q, k, v), dout)}
        if torch:
            tq, tk, tv, tdo = tt(q, k, v, dout)
            tq_, tk_, tv_ = (t.clone().requires_grad_() for t in (tq, tk, tv))
            tout = F.scaled_dot_product_attention(tq_, tk_, tv_, is_causal=True)
            fwd["torch"] = lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
            bwd["torch"] = lambda: torch.autograd.grad(tout, (tq_, tk_, tv_), tdo, retain_graph=True)
            both["torch"] = lambda: torch.autograd.grad(
                F.scaled_dot_product_attention(tq_, tk_, tv_, is_causal=True), (tq_, tk_, tv_), tdo)
        yield "attention fwd", shape, "GFLOP/s", flops, fwd
        yield "attention bwd", shape, "GFLOP/s", 2.5 * flops, bwd
        yield "attention fwd+bwd", shape, "GFLOP/s", 3.5 * flops, both

    elif kernel == "softmax":
        x, dy, scale = f32(B, nh, T, T), f32(B, nh, T, T), 1 / np.sqrt(hs)
        y = ref.softmax_forward(x, scale, causal=True)
        impls_f = {"numpy": lambda: ref.softmax_forward(x, scale, True),
                   "numba": lambda: jit.softmax_forward(x, scale, True)}
        impls_b = {"numpy": lambda: ref.softmax_backward(y, dy, scale),
                   "numba": lambda: jit.softmax_backward(y, dy, scale)}
        if torch:
            tx, ty, tdy = tt(x, y, dy)
            mask = torch.ones(T, T, dtype=torch.bool).tril()
            impls_f["torch"] = lambda: (tx * scale).masked_fill(~mask, float("-inf")).softmax(-1)
            impls_b["torch"] = lambda: torch._softmax_backward_data(tdy, ty, -1, torch.float32) * scale
        yield "softmax fwd (causal)", f"{B}x{nh}x{T}x{T}", "GB/s", 2 * x.nbytes, impls_f
        yield "softmax bwd", f"{B}x{nh}x{T}x{T}", "GB/s", 3 * x.nbytes, impls_b

    elif kernel == "layer_norm":
        x, dy, w, b = f32(N, C), f32(N, C), f32(C), f32(C)
        _, mean, rstd = ref.layer_norm_forward(x, w, b)
        impls_f = {"numpy": lambda: ref.layer_norm_forward(x, w, b),
                   "numba": lambda: jit.layer_norm_forward(x, w, b)}
        impls_b = {"numpy": lambda: ref.layer_norm_backward(dy, x, w, mean, rstd),
                   "numba": lambda: jit.layer_norm_backward(dy, x, w, mean, rstd)}
        if torch:
            tx, tdy, tw, tb = tt(x, dy, w, b)
            _, tmean, trstd = torch.ops.aten.native_layer_norm(tx, [C], tw, tb, 1e-5)
            impls_f["torch"] = lambda: torch.ops.aten.native_layer_norm(tx, [C], tw, tb, 1e-5)
            impls_b["torch"] = lambda: torch.ops.aten.native_layer_norm_backward(
                tdy, tx, [C], tmean, trstd, tw, tb, [True, True, True])
        yield "layer_norm fwd", f"{N}x{C}", "GB/s", 2 * x.nbytes, impls_f
        yield "layer_norm bwd", f"{N}x{C}", "GB/s", 3 * x.nbytes, impls_b

    elif kernel == "gelu":
        x, dy = f32(N, 4 * C), f32(N, 4 * C)
        impls_f = {"numpy": lambda: ref.gelu_forward(x), "numba": lambda: jit.gelu_forward(x)}
        impls_b = {"numpy": lambda: ref.gelu_backward(x, dy), "numba": lambda: jit.gelu_backward(x, dy)}
        if torch:
            tx, tdy = tt(x, dy)
            impls_f["torch"] = lambda: F.gelu(tx, approximate="tanh")
            impls_b["torch"] = lambda: torch.ops.aten.gelu_backward(tdy, tx, approximate="tanh")
        yield "gelu fwd", f"{N}x{4 * C}", "GB/s", 2 * x.nbytes, impls_f
        yield "gelu bwd", f"{N}x{4 * C}", "GB/s", 3 * x.nbytes, impls_b

    elif kernel == "cross_entropy":
        logits, targets, dl = f32(N, V), rng.integers(0, V, N), f32(N)
        _, lse = ref.cross_entropy_forward(logits, targets)
        impls_f = {"numpy": lambda: ref.cross_entropy_forward(logits, targets),
                   "numba": lambda: jit.cross_entropy_forward(logits, targets)}
        impls_b = {"numpy": lambda: ref.cross_entropy_backward(logits, targets, lse, dl),
                   "numba": lambda: jit.cross_entropy_backward(logits, targets, lse, dl)}
        if torch:
            tl, tdl = tt(logits, dl)
            tt_ = torch.from_numpy(targets)
            tl_ = tl.clone().requires_grad_()
            tloss = F.cross_entropy(tl_, tt_, reduction="none")
            impls_f["torch"] = lambda: F.cross_entropy(tl, tt_, reduction="none")
            impls_b["torch"] = lambda: torch.autograd.grad(tloss, tl_, tdl, retain_graph=True)
        yield "cross_entropy fwd", f"{N}x{V}", "GB/s", logits.nbytes, impls_f
        yield "cross_entropy bwd", f"{N}x{V}", "GB/s", 2 * logits.nbytes, impls_b

    elif kernel == "embedding":
        idx, dout = rng.integers(0, V, N), f32(N, C)
        dweight = {impl: np.zeros((V, C), np.float32) for impl in ("numpy", "numba", "torch")}
        impls = {"numpy": lambda: ref.embedding_backward(idx, dout, dweight["numpy"]),
                 "numba": lambda: jit.embedding_backward(idx, dout, dweight["numba"])}
        if torch:
            tidx, (tdout, tdw) = torch.from_numpy(idx), tt(dout, dweight["torch"])
            impls["torch"] = lambda: tdw.index_add_(0, tidx, tdout)
        yield "embedding bwd", f"{N} ids, {V}x{C}", "GB/s", 3 * dout.nbytes, impls

    elif kernel == "adamw_step":
        L = cfg["n_layer"]
        n = L * (12 * C * C + 13 * C) + V * C + T * C + 2 * C   # the model's parameter count
        p, g = f32(n), f32(n)
        state = {impl: (p.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)) for impl in ("numpy", "numba")}
        impls = {m: (lambda m=m, mod=mod: mod.adamw_step(state[m][0], g, state[m][1], state[m][2],
                                                          1e-3, 0.9, 0.95, 1e-8, 0.1, 10))
                 for m, mod in (("numpy", ref), ("numba", jit))}
        if torch:
            tp = torch.from_numpy(p.copy())
            tp.grad = torch.from_numpy(g)
            try:
                opt = torch.optim.AdamW([tp], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
                opt.step()
            except (RuntimeError, TypeError):
                opt = torch.optim.AdamW([tp], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
            impls["torch"] = opt.step
        yield "adamw step", f"{n} params", "GB/s", 7 * p.nbytes, impls


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def measure(impls, repeats, rounds, pause):
    """Median seconds per call of each implementation, taking turns in blocks (see the docstring)."""
    for fn in impls.values():
        fn()
        fn()
    times = {name: [] for name in impls}
    for _ in range(rounds):
        for name, fn in impls.items():
            time.sleep(pause)
            times[name] += timed(fn, repeats)
    return {name: float(np.median(t)) for name, t in times.items()}


COMPILE_CHECK = """
import time
t0 = time.perf_counter()
import numpy as np
from tinygpt import kernels as k
assert k.use("numba") == "numba"
x = np.random.default_rng(0).standard_normal((2, 2, 8, 8)).astype(np.float32)
x2, w, t = x.reshape(-1, 8), np.ones(8, np.float32), np.arange(4)
k.matmul(x2, x2.T)
k.matmul(x2, x2[:8], bias=w)
k.sum_rows(x2)
o, lse = k.attention_forward(x, x, x)
k.attention_backward(x, x, x, o, lse, x)
k.softmax_backward(k.softmax_forward(x, 0.5, True), x, 0.5)
y, mean, rstd = k.layer_norm_forward(x2, w, w)
k.layer_norm_backward(x2, x2, w, mean, rstd)
k.gelu_backward(x2, k.gelu_forward(x2))
losses, lse = k.cross_entropy_forward(x2[:4], t)
k.cross_entropy_backward(x2[:4], t, lse, losses)
k.embedding_backward(t, x2[:4], np.zeros((8, 8), np.float32))
p = np.ones(8, np.float32)
k.adamw_step(p, p.copy(), p * 0, p * 0, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1)
print(f"{time.perf_counter() - t0:.3f}")
"""


def compile_check():
    """Seconds for a new process to import the kernels and run each once, twice over: the
    first run may compile (an empty cache), the second must load everything from the cache."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    runs = []
    for _ in range(2):
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", COMPILE_CHECK], cwd=root, capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(res.stderr)
        runs.append((float(res.stdout.strip().splitlines()[-1]), time.perf_counter() - t))
    for label, (inside, total) in zip(("first run", "cached run"), runs):
        print(f"compile check, {label}: import + every kernel once {inside:.2f} s "
              f"({total:.2f} s with interpreter start-up)")
    ok = runs[1][1] < 2.0
    print(f"cached new process under 2 s: {'yes' if ok else 'NO'}")
    return {"first_s": runs[0][1], "cached_s": runs[1][1], "cached_kernels_s": runs[1][0], "under_2s": ok}


def environment():
    import numba
    return {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "torch": torch.__version__ if torch else None, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "numba_threads": numba.get_num_threads(),
            "numba_threading_layer": numba.threading_layer(),
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                                    "NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated subset of {','.join(KERNELS)}")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per block")
    p.add_argument("--rounds", type=int, default=3, help="blocks per implementation")
    p.add_argument("--pause", type=float, default=0.15, help="seconds of sleep between blocks")
    p.add_argument("--quick", action="store_true", help="--repeats 5 --rounds 2 --pause 0.1")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--compile-check", action="store_true", help="only measure the cached start-up cost")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.rounds, args.pause = 5, 2, 0.1
    if args.compile_check:
        result = compile_check()
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"compile_check": result, "environment": environment()}, f, indent=1)
        return
    kernels, configs = args.kernels.split(","), args.configs.split(",")
    for name, known in (("kernel", KERNELS), ("config", CONFIGS)):
        for x in kernels if name == "kernel" else configs:
            if x not in known:
                p.error(f"unknown {name} {x!r}: choose from {', '.join(known)}")

    rows = []
    rng = np.random.default_rng(0)
    head = (f"{'kernel':30s} {'config':8s} {'shape':24s} {'unit':8s} {'numpy':>8s} {'numba':>8s} {'torch':>8s} "
            f"{'nb/np':>6s} {'nb/pt':>6s}")
    print(head + "\n" + "-" * len(head), flush=True)
    for kernel in kernels:
        for config in configs:
            for name, shape, unit, work, impls in cases(kernel, CONFIGS[config], rng):
                t = measure(impls, args.repeats, args.rounds, args.pause)
                rate = {k: work / v / 1e9 for k, v in t.items()}
                row = dict(kernel=name, config=config, shape=shape, unit=unit, seconds=t, rate=rate,
                           numba_vs_numpy=t["numpy"] / t["numba"],
                           numba_vs_torch=t["torch"] / t["numba"] if "torch" in t else None)
                rows.append(row)
                fmt = lambda k: f"{rate[k]:8.1f}" if k in rate else f"{'-':>8s}"
                vs_torch = f"{row['numba_vs_torch']:6.2f}" if row["numba_vs_torch"] else f"{'-':>6s}"
                print(f"{name:30s} {config:8s} {shape:24s} {unit:8s} {fmt('numpy')} {fmt('numba')} {fmt('torch')} "
                      f"{row['numba_vs_numpy']:6.2f} {vs_torch}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "environment": environment(),
                       "settings": dict(repeats=args.repeats, rounds=args.rounds, pause=args.pause)}, f, indent=1)


if __name__ == "__main__":
    main()
