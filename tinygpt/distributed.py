"""Data-parallel training over MPI: the same run on 1, 2 or N processes and machines.

Launch with the MPI convention; the same command without `mpiexec` is the one-process run:

    mpiexec -n 2 python examples/train_shakespeare.py --batch-size 12

Every rank holds the whole model and draws the same global batch from the same generator, then
keeps its own contiguous slice of rows (`shard`). Its loss is scaled by 1 / ranks, and the
gradients are summed across ranks by MPI's Iallreduce over AdamW's flat gradient buffers
(optim.py), bucket by bucket while backward still runs (`GradientBuckets`): every rank then
holds the gradient of the global batch's mean loss, so clipping and the AdamW step run
identically everywhere and the parameters never diverge.

    rank 0: rows 0..5  -> loss / 2 -> backward -> grad0 \\
                                                          Iallreduce(sum) -> the same grad on both -> step
    rank 1: rows 6..11 -> loss / 2 -> backward -> grad1 /

`world()` returns a `World`: rank 0 of 1 when this process was not started by mpiexec (mpi4py is
then never imported, so a one-process run pays nothing for it), else this rank of MPI_COMM_WORLD.
Only rank 0 prints and writes files (train.py).

What it leaves out: the transport (MPI's: shared memory on one machine, TCP or InfiniBand
between machines), the training loop (train.py) and the update rule (optim.py).
"""
import os
import sys
import traceback

import numpy as np

# What mpiexec puts in each rank's environment: Open MPI's, then MPICH's (its PMI) names
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def launched_size():
    """How many processes mpiexec started (1 when it did not start this one)."""
    for name in SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


class World:
    """The processes of one training job: `rank` of `size`, and the few collectives training
    needs. `comm` is mpi4py's MPI_COMM_WORLD, or None for a one-process run (then every
    collective is the identity)."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank, self.size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)

    def check_batch_size(self, batch_size):
        """The global batch must split into equal slices, one a rank (every rank checks, so every
        rank refuses a bad size at once, and none waits in a collective for the others)."""
        if batch_size % self.size:
            raise ValueError(f"--batch-size {batch_size} is the global batch and must divide evenly by the "
                             f"{self.size} processes; use a multiple of {self.size}, e.g. "
                             f"{max(self.size, batch_size - batch_size % self.size)}")

    def shard(self, batch):
        """This rank's contiguous slice of rows of a global batch (a dict of arrays, rows first)."""
        if self.size == 1:
            return batch
        rows = len(next(iter(batch.values()))) // self.size
        return {k: v[self.rank * rows:(self.rank + 1) * rows] for k, v in batch.items()}

    def reduce_gradients(self, optimizer):
        """A GradientBuckets that sums `optimizer`'s gradients over the ranks as the next backward
        makes them (pass its `ready` as backward's `on_leaf`), or None for a one-process run."""
        return GradientBuckets(self.comm, optimizer) if self.comm is not None else None

    def sum(self, value):
        """The sum of a float over the ranks, the same on every rank."""
        return value if self.comm is None else self.comm.allreduce(value)

    def broadcast(self, make):
        """Rank 0 calls `make()` and every rank gets its result, or rank 0's exception raised on
        every rank (so a user's mistake on rank 0 stops all ranks, none left waiting here)."""
        if self.comm is None:
            return make()
        result, error = None, None
        if self.rank == 0:
            try:
                result = make()
            except (FileNotFoundError, ValueError) as e:
                error = e
        result, error = self.comm.bcast((result, error), root=0)
        if error is not None:
            raise error
        return result

    def first_error(self, error):
        """Collective: every rank learns the first rank's error of a setup step (None if none
        failed), so all ranks stop together; the message names the rank that had it."""
        if self.comm is None:
            return error
        messages = self.comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
        for rank, message in enumerate(messages):
            if message is not None:
                return error or ValueError(f"rank {rank} failed: {message}")
        return None

    def abort(self, code):
        """End every rank of the job now (MPI_Abort): the others may be waiting in a collective
        for this one, and would otherwise hang."""
        if self.comm is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            self.comm.Abort(code)


class GradientBuckets:
    """The sum over the ranks of AdamW's flat gradient buffers, sent while backward still runs,
    as torch DDP does. Each flat buffer (optim.py) is cut into buckets of whole parameters, about
    BUCKET_BYTES each, walking from its end (backward makes the last layers' gradients first):

        decay grad  [ wte | wpe | h.0 ...... | h.1 ...... | ... | h.5 ...... ]
                      bucket 0  | bucket 1   ...                | bucket k     <- sent first

    Backward calls `ready(p)` as each parameter's gradient becomes final (Tensor.backward's
    `on_leaf`); once every parameter of a bucket is ready, a nonblocking Iallreduce sends it,
    and each later `ready` lets MPI move the buckets in flight along (Testall), so the transfer
    runs between the ops of the rest of backward. `finish` waits for the last of them.

    The caller scales each rank's loss by 1 / size before backward, so the sum is the global
    mean's gradient (train.train_step), without another pass over the buffers here.
    """
    BUCKET_BYTES = 4 << 20  # big enough that each Iallreduce is bandwidth-bound, small enough to start early

    def __init__(self, comm, optimizer):
        from mpi4py import MPI
        self.MPI, self.comm, self.requests = MPI, comm, []
        self.buckets = []    # [flat grad slice, parameters not ready yet]
        self.bucket_of = {}  # id(parameter) -> its bucket
        for g in optimizer.groups:
            g.sync()  # a replaced p.grad rejoins its flat buffer before backward adds to it
            hi = len(g.params)
            for i in reversed(range(len(g.params))):
                if (g.offsets[hi] - g.offsets[i]) * g.grad.itemsize >= self.BUCKET_BYTES or i == 0:
                    bucket = [g.grad[g.offsets[i]:g.offsets[hi]], hi - i]
                    self.buckets.append(bucket)
                    self.bucket_of.update((id(p), bucket) for p in g.params[i:hi])
                    hi = i

    def ready(self, p):
        """Backward's hook: p.grad is final. subtle: every rank runs the same graph in the same
        order, so the buckets start in the same order everywhere, as MPI's collectives must."""
        bucket = self.bucket_of.get(id(p))
        if bucket is not None:
            bucket[1] -= 1
            if bucket[1] == 0:
                self._start(bucket)
        if self.requests:
            self.MPI.Request.Testall(self.requests)

    def finish(self, loss):
        """Send the buckets backward never completed (parameters it did not reach, in the same
        order on every rank) and the loss; wait for all. Returns the mean `loss` over the ranks."""
        for bucket in self.buckets:
            if bucket[1] > 0:
                bucket[1] = 0
                self._start(bucket)
        loss = np.array([loss], dtype=np.float64)
        self._start([loss])
        self.MPI.Request.Waitall(self.requests)
        return float(loss[0]) / self.comm.Get_size()

    def _start(self, bucket):
        self.requests.append(self.comm.Iallreduce(self.MPI.IN_PLACE, bucket[0], op=self.MPI.SUM))


def world():
    """The World this process belongs to (see the module docstring). Raises ValueError when
    mpiexec started several processes but mpi4py is not installed: each would otherwise train
    alone and fight the others for the out-dir."""
    size = launched_size()
    if size == 1:
        return World()
    try:
        from mpi4py import MPI
    except ImportError:
        raise ValueError(f"mpiexec started {size} processes, but mpi4py is not installed: "
                         'pip install -e ".[mpi]"') from None
    _abort_on_uncaught_exception(MPI.COMM_WORLD)
    return World(MPI.COMM_WORLD)


def _abort_on_uncaught_exception(comm):
    """What `python -m mpi4py` does: an exception nobody catches prints its traceback and then
    aborts the whole job, instead of leaving the other ranks waiting in a collective forever."""
    def hook(kind, value, tb):
        sys.stderr.write(f"rank {comm.Get_rank()}: " + "".join(traceback.format_exception(kind, value, tb)))
        sys.stderr.flush()
        comm.Abort(1)
    sys.excepthook = hook
