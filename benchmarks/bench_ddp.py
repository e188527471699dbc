"""Data-parallel training speed (issue 17): one process against two ranks, and against torch DDP.

For each config it times the same global batch (benchmarks/configs.py) trained three ways:

    tinygpt 1 x 2    one process, 2 numba threads
    tinygpt 2 x 1    mpiexec -n 2 (TCP between the ranks, `--mca btl tcp,self`), 1 thread each:
                     tinygpt.train.train_step with distributed.World, each rank on half the rows
    torch DDP 2 x 1  torch.distributed (gloo, CPU), 2 ranks of 1 thread, bench_train.py's
                     PyTorch reference model wrapped in DistributedDataParallel

and reports global tokens/s, and for tinygpt 2 x 1 the share of each step spent in the allreduce:
in distributed.GradientBuckets, whose buckets are sent during backward, so it counts the calls
that start and move them and the wait at the end (including any wait for the slower rank), not
the transfer hidden behind backward. Then the allreduce bandwidth over TCP for a buffer of
each config's gradient size. Each variant runs in its own processes, in rounds that alternate the
variants so the drift of a shared machine hits them alike; the median step of each run, and the
median over the rounds, is reported.

    python benchmarks/bench_ddp.py                       # baby and char10m, 2 rounds
    python benchmarks/bench_ddp.py --config baby --rounds 3 --json out.json

Needs mpi4py and mpiexec (`pip install -e ".[mpi]"`) and torch.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

from configs import CONFIGS  # from this script's folder (benchmarks/configs.py)

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = {"baby": (3, 20), "char10m": (2, 6)}  # (warm-up, timed) steps a run
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}


# ---- the children: each times one variant and prints one JSON line (rank 0) ---------------------
def child_tinygpt(name, warmup, iters):
    import bench_train
    from tinygpt import distributed
    from tinygpt.train import train_step
    world = distributed.world()
    cfg = CONFIGS[name]
    model, _ = bench_train.build_tinygpt(cfg)
    from tinygpt.optim import AdamW
    opt = AdamW(model.parameters(), lr=bench_train.LR, betas=bench_train.BETAS, weight_decay=bench_train.WD)
    in_allreduce = [0.0]

    def timed(method):  # the time a rank spends in MPI: starting and moving buckets, and the last wait
        def wrapper(self, *args):
            t0 = time.perf_counter()
            out = method(self, *args)
            in_allreduce[0] += time.perf_counter() - t0
            return out
        return wrapper
    distributed.GradientBuckets.ready = timed(distributed.GradientBuckets.ready)
    distributed.GradientBuckets.finish = timed(distributed.GradientBuckets.finish)
    times, shares = [], []
    for i, (x, y) in enumerate(bench_train.batches(cfg, warmup + iters)):
        in_allreduce[0] = 0.0
        t0 = time.perf_counter()
        train_step(model, opt, [world.shard({"idx": x, "targets": y})], 0.0, world)
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
            shares.append(in_allreduce[0] / dt)
    import numba
    if world.rank == 0:
        print(json.dumps({"ms": 1000 * statistics.median(times), "allreduce_share": statistics.median(shares),
                          "ranks": world.size, "threads": numba.get_num_threads()}))


def child_torch(name, warmup, iters):
    import torch  # first: see bench_train.main
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    import bench_train
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    cfg = CONFIGS[name]
    tg_model, _ = bench_train.build_tinygpt(cfg)
    model, _ = bench_train.build_torch(cfg, tg_model.state_dict())
    del tg_model
    torch.set_num_threads(1)  # build_torch sets 2; each rank gets one core here
    ddp = DistributedDataParallel(model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": bench_train.WD},
                             {"params": no_decay, "weight_decay": 0.0}], lr=bench_train.LR, betas=bench_train.BETAS)
    rows = cfg["batch_size"] // size
    times = []
    for i, (x, y) in enumerate(bench_train.batches(cfg, warmup + iters)):
        x, y = (torch.from_numpy(np.ascontiguousarray(a[rank * rows:(rank + 1) * rows])) for a in (x, y))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        ddp(x, y).backward()  # DDP averages the gradients over the ranks during backward
        opt.step()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    if rank == 0:
        print(json.dumps({"ms": 1000 * statistics.median(times), "ranks": size, "threads": torch.get_num_threads()}))
    dist.destroy_process_group()


def child_bandwidth(n_floats, repeats=10):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    buf = np.ones(n_floats, dtype=np.float32)
    comm.Allreduce(MPI.IN_PLACE, buf)  # warm-up: connections set up
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buf)
        times.append(time.perf_counter() - t0)
    if comm.rank == 0:
        t, n = statistics.median(times), comm.size
        # ring allreduce moves 2(N-1)/N of the buffer through each link: the "bus" bandwidth
        print(json.dumps({"ms": 1000 * t, "bytes": buf.nbytes, "algbw_gbs": buf.nbytes / t / 1e9,
                          "busbw_gbs": buf.nbytes * 2 * (n - 1) / n / t / 1e9}))


# ---- the parent: launch the variants in alternating rounds ---------------------------------------------
def run_child(cmd, env=None):
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **MPI_ENV, **(env or {})},
                         cwd=HERE, timeout=1200)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
    return json.loads([line for line in res.stdout.splitlines() if line.startswith("{")][-1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torch_ddp(name, warmup, iters, size=2):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(size),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--child", "torch", "--config", name, "--steps",
                               str(warmup), str(iters)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(r)}, cwd=HERE) for r in range(size)]
    outs = [p.communicate(timeout=1200) for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("torch DDP failed:\n" + "\n".join(o[1] for o in outs))
    return json.loads([line for line in outs[0][0].splitlines() if line.startswith("{")][-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", choices=list(STEPS), default=list(STEPS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--btl", default="tcp,self", help="Open MPI's transports between the ranks (default: %(default)s)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--child", choices=("tinygpt", "torch", "bandwidth"), help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--floats", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from tinygpt.runtime import keep_freed_memory
    keep_freed_memory()  # as a training run does (train.setup), for both engines alike
    if args.child == "tinygpt":
        return child_tinygpt(args.config[0], *args.steps)
    if args.child == "torch":
        return child_torch(args.config[0], *args.steps)
    if args.child == "bandwidth":
        return child_bandwidth(args.floats)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; ranks talk over btl {args.btl}")
    me = [sys.executable, __file__]
    mpiexec = ["mpiexec", "-n", "2", "--mca", "btl", args.btl]
    results = {"machine": cpu, "btl": args.btl, "configs": {}}
    for name in args.config:
        warmup, iters = STEPS[name]
        steps = ["--config", name, "--steps", str(warmup), str(iters)]
        variants = {
            "tinygpt 1 x 2": lambda: run_child(me + ["--child", "tinygpt"] + steps, {"TINYGPT_NUM_THREADS": "2"}),
            "tinygpt 2 x 1": lambda: run_child(mpiexec + me + ["--child", "tinygpt"] + steps),
            "torch DDP 2 x 1": lambda: run_torch_ddp(name, warmup, iters),
        }
        runs = {v: [] for v in variants}
        for r in range(args.rounds):
            for v, launch in (variants.items() if r % 2 == 0 else reversed(variants.items())):  # alternate the order
                runs[v].append(launch())
                print(f"{name} round {r}: {v}: {runs[v][-1]['ms']:.1f} ms/step", flush=True)
        tokens = CONFIGS[name]["batch_size"] * CONFIGS[name]["block_size"]
        out = {}
        for v, rs in runs.items():
            ms = statistics.median(x["ms"] for x in rs)
            out[v] = {"ms": ms, "tokens_per_s": tokens / ms * 1000, "rounds_ms": [x["ms"] for x in rs]}
            if "allreduce_share" in rs[0]:
                out[v]["allreduce_share"] = statistics.median(x["allreduce_share"] for x in rs)
        from tinygpt.model import GPT, GPTConfig
        c = CONFIGS[name]
        n_params = GPT(GPTConfig(**{k: c[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")},
                                 bias=True)).num_params(non_embedding=False)  # every gradient the ranks sum
        out["bandwidth"] = run_child(mpiexec + me + ["--child", "bandwidth", "--floats", str(n_params)])
        out["n_params"] = n_params
        results["configs"][name] = out

    print(f"\n{'config':<9}{'variant':<17}{'ms/step':>9}{'tokens/s':>10}{'vs 1x2':>8}{'allreduce':>10}")
    for name, out in results["configs"].items():
        base = out["tinygpt 1 x 2"]["tokens_per_s"]
        for v in ("tinygpt 1 x 2", "tinygpt 2 x 1", "torch DDP 2 x 1"):
            e = out[v]
            share = f"{100 * e['allreduce_share']:.1f}%" if "allreduce_share" in e else ""
            print(f"{name:<9}{v:<17}{e['ms']:>9.1f}{e['tokens_per_s']:>10.0f}{e['tokens_per_s'] / base:>7.2f}x{share:>10}")
    for name, out in results["configs"].items():
        b = out["bandwidth"]
        print(f"{name}: tinygpt 2x1 / torch DDP 2x1 step time "
              f"{out['tinygpt 2 x 1']['ms'] / out['torch DDP 2 x 1']['ms']:.2f}x; allreduce of "
              f"{b['bytes'] / 1e6:.1f} MB ({out['n_params']:,} float32) over {args.btl}: {b['ms']:.1f} ms, "
              f"{b['algbw_gbs']:.2f} GB/s (bus {b['busbw_gbs']:.2f} GB/s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
