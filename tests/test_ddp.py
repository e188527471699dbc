"""Data-parallel training over MPI (distributed.py, issue 17): N processes run the same training as one.

It checks, on a tiny model (1 layer, 16 channels) so each run takes seconds:
- exactness: 2 ranks x global batch 12 give the per-step losses and eval losses of 1 process x 12
  over 30 steps (to 1e-5 relative), with --grad-accum too (one allreduce a step), and the
  parameters are identical across ranks at the end;
- resume across world sizes: 2 ranks for 15 steps, then 1 process for the next 15 (and the other
  way round), give the losses of 1 process for 30;
- faults: a rank that raises, or is killed, ends the whole job quickly and non-zero;
- bad input: a batch the world size does not divide is refused once, by rank 0, and every rank exits;
- the `tinygpt train` command over TCP (Open MPI's `--mca btl tcp,self`), writing its files once;
- two ranks on two hosts: network namespaces joined by a veth pair, launched as over ssh (as root);
- and, without mpiexec, that nothing of MPI is imported.

The MPI runs need mpi4py and an `mpiexec` (`pip install -e ".[mpi]"`); without them they skip.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from tinygpt import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = shutil.which("mpiexec")
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
needs_mpi = pytest.mark.skipif(MPIEXEC is None or not HAVE_MPI4PY, reason='needs mpi4py and mpiexec: pip install -e ".[mpi]"')

# Open MPI refuses root and more ranks than cores unless told; MPICH ignores these
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1", "PYTHONUNBUFFERED": "1"}
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "12",
        "--eval-interval", "10", "--eval-iters", "3", "--log-interval", "5", "--warmup-iters", "5",
        "--lr-decay-iters", "30", "--learning-rate", "3e-3", "--always-save", "--sample-tokens", "0"]

# Runs tinygpt.train.main as the command line does, recording what the test compares: each
# step's loss at full precision, the number of allreduces, and a digest of each rank's weights.
WORKER = r'''
import hashlib, json, os, sys, time
sys.modules["matplotlib"] = None  # no losses.png: its drawing would take most of these tiny runs
import tinygpt.train as T
from tinygpt import distributed

out_path, argv = sys.argv[1], sys.argv[2:]
fail_at, fail_rank, how = int(os.environ.get("FAIL_AT", -1)), int(os.environ.get("FAIL_RANK", 1)), os.environ.get("FAIL_HOW")
losses, runs, allreduces = [], [], [0]

step = T.train_step
def recording_step(model, optimizer, micro_batches, grad_clip=0.0, world=None):
    if len(losses) == fail_at and (0 if world is None else world.rank) == fail_rank:
        print(f"FAULT {time.time()}", flush=True)
        if how == "kill":
            os.kill(os.getpid(), 9)
        raise RuntimeError("an injected fault")
    loss, norm = step(model, optimizer, micro_batches, grad_clip, world)
    losses.append(loss)
    return loss, norm
T.train_step = recording_step

finish = distributed.GradientBuckets.finish
def counting(self, *args):
    allreduces[0] += 1
    return finish(self, *args)
distributed.GradientBuckets.finish = counting

train = T.train
def capturing(cfg, run, log=print):
    runs.append(run)
    return train(cfg, run, log)
T.train = capturing

code = T.main(argv)
if runs:
    run = runs[0]
    digest = hashlib.sha256(b"".join(g.data.tobytes() for g in run.optimizer.groups)).hexdigest()
    digests = run.world.comm.allgather(digest) if run.world.comm is not None else [digest]
    if run.world.rank == 0:
        with open(out_path, "w") as f:
            json.dump({"losses": losses, "history": run.history, "digests": digests, "allreduces": allreduces[0],
                       "size": run.world.size, "grad_bytes": sum(g.grad.nbytes for g in run.optimizer.groups)}, f)
sys.exit(code)
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    rng = random.Random(0)
    words = "the king and queen of night shall speak to thee my lord what is love but a sweet fire".split()
    lines = [" ".join(rng.choice(words) for _ in range(8)).capitalize() + "." for _ in range(400)]
    (folder / "small.txt").write_text("\n".join(lines))
    (folder / "worker.py").write_text(WORKER)
    return folder


def launch(n, args, env=None, mca=(), script=None, timeout=120):
    """Run the worker (or `script`) on n ranks under mpiexec, or as one plain process for n=0."""
    cmd = [sys.executable, script] if script and script.endswith(".py") else [script] if script else None
    prefix = [MPIEXEC, "-n", str(n), *mca] if n else []
    full_env = {**os.environ, **MPI_ENV, **(env or {})}
    t0 = time.time()
    res = subprocess.run(prefix + cmd + args, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)
    res.elapsed, res.end = time.time() - t0, time.time()
    return res


def train(files, n, out, extra=(), env=None, resume=False):
    """Train the tiny model on n ranks (0: without mpiexec); return the worker's record."""
    record = files / f"record-{os.path.basename(out)}-{n}-{int(resume)}.json"
    args = [str(record), "--data", str(files / "small.txt"), "--out-dir", str(out), *TINY, *extra]
    res = launch(n, args + (["--resume"] if resume else []), env=env, script=str(files / "worker.py"))
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(record.read_text()), res


def assert_close(a, b, rtol=1e-5):
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=rtol, atol=0)


@pytest.fixture(scope="module")
def one_process(files, tmp_path_factory):
    return train(files, 0, tmp_path_factory.mktemp("one") / "out", ["--max-iters", "30"])[0]


@needs_mpi
def test_two_ranks_train_as_one_process(files, tmp_path, one_process):
    two, res = train(files, 2, tmp_path / "out", ["--max-iters", "30"])
    assert two["size"] == 2 and len(two["losses"]) == 30 == two["allreduces"]
    assert_close(two["losses"], one_process["losses"])  # not bitwise: the sums run in another order
    assert [h[0] for h in two["history"]] == [0, 10, 20, 30]
    assert_close([h[1:3] for h in two["history"]], [h[1:3] for h in one_process["history"]])
    assert len(set(two["digests"])) == 1  # the parameters never diverge across ranks
    assert "2 ranks" in res.stdout and res.stdout.count("iter 5/30") == 1  # rank 0 alone prints


@needs_mpi
def test_grad_accum_allreduces_once_a_step(files, tmp_path):
    extra = ["--max-iters", "10", "--grad-accum", "2", "--batch-size", "6"]
    one = train(files, 0, tmp_path / "one", extra)[0]
    two = train(files, 2, tmp_path / "two", extra)[0]
    assert two["allreduces"] == 10 and len(set(two["digests"])) == 1
    assert_close(two["losses"], one["losses"])


@needs_mpi
@pytest.mark.parametrize("first,then", [(2, 0), (0, 2)])
def test_resume_across_world_sizes(files, tmp_path, one_process, first, then):
    out = tmp_path / "out"
    head = train(files, first, out, ["--max-iters", "15"])[0]
    tail = train(files, then, out, ["--max-iters", "30"], resume=True)[0]
    assert len(head["losses"]) == 15 and len(tail["losses"]) == 15
    assert_close(head["losses"] + tail["losses"], one_process["losses"])
    assert [h[0] for h in tail["history"]] == [0, 10, 15, 20, 30]


@needs_mpi
@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_rank_ends_the_job(files, tmp_path, how):
    record = tmp_path / "record.json"
    args = [str(record), "--data", str(files / "small.txt"), "--out-dir", str(tmp_path / "out"), *TINY,
            "--max-iters", "1000", "--eval-interval", "1000"]
    res = launch(2, args, env={"FAIL_AT": "3", "FAIL_RANK": "1", "FAIL_HOW": how}, script=str(files / "worker.py"),
                 timeout=60)
    assert res.returncode != 0 and not record.exists()
    if how == "raise":
        assert "RuntimeError: an injected fault" in res.stderr
    fault = float(next(line.split()[1] for line in res.stdout.splitlines() if line.startswith("FAULT")))
    assert res.end - fault < 10, f"the job took {res.end - fault:.1f} s to end after the fault"
    leftovers = [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]
    assert not leftovers  # no checkpoint half written


@needs_mpi
def test_batch_size_the_world_does_not_divide(files, tmp_path):
    args = ["--data", str(files / "small.txt"), "--out-dir", str(tmp_path / "out"), *TINY, "--batch-size", "5"]
    res = launch(2, args, script=os.path.join(ROOT, "examples", "train_shakespeare.py"), timeout=60)
    assert res.returncode != 0
    assert res.stderr.count("--batch-size 5 is the global batch and must divide evenly by the 2 processes") == 1
    assert not (tmp_path / "out").exists()  # refused before anything was written


@needs_mpi
def test_tinygpt_train_over_tcp(files, tmp_path):
    out = tmp_path / "out"
    cli = os.path.join(os.path.dirname(sys.executable), "tinygpt")
    if not os.path.exists(cli):
        pytest.skip("the tinygpt command is not installed (pip install -e .)")
    args = ["train", "--data", str(files / "small.txt"), "--out-dir", str(out), *TINY, "--max-iters", "6",
            "--sample-tokens", "10"]
    res = launch(2, args, mca=("--mca", "btl", "tcp,self"), script=cli)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 processes, 6 sequences each" in res.stdout and "2 ranks |" in res.stdout
    assert res.stdout.count("--- sample") == 1 and res.stdout.count("eval 6:") == 1
    names = os.listdir(out)
    assert {"ckpt.npz", "losses.csv", "tokenizer.tok"} <= set(names) and not [f for f in names if f.endswith(".tmp")]


# ssh's stand-in for Open MPI's launcher: `agent HOST COMMAND` runs the command line in HOST's network
# namespace, under a hostname of its own (Open MPI tells its hosts apart by name)
AGENT = """#!/bin/sh
host=$1; shift
case "$host" in
{cases}
  *) echo "agent: unknown host $host" >&2; exit 255 ;;
esac
exec ip netns exec "$ns" unshare --uts sh -c "hostname $ns; $*"
"""


def rx_bytes(ns, dev):
    return int(subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/rx_bytes"],
                              capture_output=True, text=True, check=True).stdout)


@needs_mpi
def test_two_hosts_joined_by_a_veth_pair(files, tmp_path, one_process):
    """Two ranks on two "machines": network namespaces joined by a veth pair, the second one
    reached through Open MPI's rsh launcher, as a cluster's are through ssh."""
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("unshare")):
        pytest.skip("needs root, `ip` (iproute2) and `unshare` to make network namespaces")
    tag = f"tg{os.getpid() % 100000}"
    hosts = {f"{tag}a": "10.77.0.1", f"{tag}b": "10.77.0.2"}  # namespace -> address (each pair is isolated)
    (a, addr_a), (b, addr_b) = hosts.items()

    def ip(*args):
        return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    try:
        for command in (["netns", "add", a], ["netns", "add", b],
                        ["link", "add", f"{a}v", "type", "veth", "peer", "name", f"{b}v"],
                        ["link", "set", f"{a}v", "netns", a], ["link", "set", f"{b}v", "netns", b],
                        ["-n", a, "addr", "add", f"{addr_a}/24", "dev", f"{a}v"],
                        ["-n", b, "addr", "add", f"{addr_b}/24", "dev", f"{b}v"],
                        ["-n", a, "link", "set", f"{a}v", "up"], ["-n", b, "link", "set", f"{b}v", "up"],
                        ["-n", a, "link", "set", "lo", "up"], ["-n", b, "link", "set", "lo", "up"]):
            res = ip(*command)
            if res.returncode != 0:
                pytest.skip(f"cannot make network namespaces: ip {' '.join(command)}: {res.stderr.strip()}")
        agent = tmp_path / "agent.sh"
        agent.write_text(AGENT.format(cases="\n".join(f"  {addr}) ns={ns} ;;" for ns, addr in hosts.items())))
        agent.chmod(0o755)
        hostfile = tmp_path / "hosts"
        hostfile.write_text("".join(f"{addr} slots=1\n" for addr in hosts.values()))
        record, subnet = tmp_path / "record.json", "10.77.0.0/24"
        mpiexec = [MPIEXEC, "-n", "2", "--hostfile", str(hostfile), "--mca", "plm_rsh_agent", str(agent),
                   "--prtemca", "oob_tcp_if_include", subnet, "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", subnet]
        worker = [sys.executable, str(files / "worker.py"), str(record), "--data", str(files / "small.txt"),
                  "--out-dir", str(tmp_path / "out"), *TINY, "--max-iters", "6"]
        before = rx_bytes(b, f"{b}v")
        res = subprocess.run(["ip", "netns", "exec", a, "unshare", "--uts", "sh", "-c", f'hostname {a} && exec "$@"',
                              "sh", *mpiexec, *worker], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **MPI_ENV}, cwd=ROOT)
        assert res.returncode == 0, res.stdout + res.stderr
        two = json.loads(record.read_text())
        assert two["size"] == 2 and len(set(two["digests"])) == 1
        assert_close(two["losses"], one_process["losses"][:6])  # the schedule does not depend on --max-iters
        # the second host got every step's gradients through the veth pair
        assert rx_bytes(b, f"{b}v") - before > 6 * two["grad_bytes"]
    finally:
        for ns in hosts:  # the veth pair goes with its namespaces
            ip("netns", "del", ns)


def test_one_process_imports_no_mpi():
    code = ("import sys, tinygpt.train; from tinygpt import distributed; w = distributed.world(); "
            "assert (w.rank, w.size) == (0, 1) and 'mpi4py' not in sys.modules, sorted(sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in distributed.SIZE_VARIABLES}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr


def test_backward_hands_each_leaf_over_once_its_gradient_is_final():
    from tinygpt.tensor import Tensor
    rng = np.random.default_rng(0)
    w = Tensor(rng.standard_normal((3, 3)), requires_grad=True)
    b = Tensor(rng.standard_normal(3), requires_grad=True)
    x = Tensor(rng.standard_normal((2, 3)))  # needs no gradient: never handed over
    h = (x @ w + b) @ w  # w is read twice, b once, by an op that runs in the middle of backward
    handed = []
    (h * h).sum().backward(on_leaf=lambda p: handed.append((p, p.grad.copy())))
    assert [p for p, _ in handed] == [b, w]  # b as soon as its op ran, w after both of its ops
    for p, grad in handed:
        np.testing.assert_array_equal(grad, p.grad)  # nothing was added after the hand-over


@needs_mpi
def test_gradient_buckets_tile_the_flat_buffers(monkeypatch):
    from tinygpt.model import GPT, GPTConfig
    from tinygpt.optim import AdamW
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32), seed=0)
    optimizer = AdamW(model.parameters(), lr=1e-3)
    monkeypatch.setattr(distributed.GradientBuckets, "BUCKET_BYTES", 20_000)
    buckets = distributed.GradientBuckets(None, optimizer)
    for g in optimizer.groups:
        spans = [((grad.ctypes.data - g.grad.ctypes.data) // grad.itemsize, grad.size)  # (offset, length)
                 for grad, _ in buckets.buckets if np.shares_memory(grad, g.grad)]
        # from the end of the flat buffer to its start, with no gap and no overlap
        assert [lo + n for lo, n in spans] == [g.grad.size] + [lo for lo, _ in spans[:-1]] and spans[-1][0] == 0
        assert all(n * g.grad.itemsize >= 20_000 for _, n in spans[:-1])  # only the front one may be smaller
        assert len(spans) > 1 or g.grad.nbytes < 2 * 20_000
    assert sum(n for _, n in buckets.buckets) == len(buckets.bucket_of) == sum(len(g.params) for g in optimizer.groups)


def test_one_process_world():
    w = distributed.World()
    batch = {"idx": np.arange(12).reshape(6, 2)}
    assert w.shard(batch) is batch
    assert w.sum(1.5) == 1.5 and w.first_error(None) is None


def test_mpiexec_without_mpi4py_is_refused(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if not installed
    with pytest.raises(ValueError, match="mpiexec started 2 processes, but mpi4py is not installed"):
        distributed.world()
