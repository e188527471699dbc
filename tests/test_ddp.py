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

average = distributed.World.average_gradients
def counting(self, *args):
    allreduces[0] += 1
    return average(self, *args)
distributed.World.average_gradients = counting

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
            json.dump({"losses": losses, "history": run.history, "digests": digests,
                       "allreduces": allreduces[0], "size": run.world.size}, f)
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


def test_one_process_imports_no_mpi():
    code = ("import sys, tinygpt.train; from tinygpt import distributed; w = distributed.world(); "
            "assert (w.rank, w.size) == (0, 1) and 'mpi4py' not in sys.modules, sorted(sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in distributed.SIZE_VARIABLES}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr


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
