"""Data-parallel training over MPI: the same run on 1, 2 or N processes and machines.

Launch with the MPI convention; the same command without `mpiexec` is the one-process run:

    mpiexec -n 2 python examples/train_shakespeare.py --batch-size 12

Every rank holds the whole model and draws the same global batch from the same generator, then
keeps its own contiguous slice of rows (`shard`). After backward, the gradients are summed across
ranks by MPI's Allreduce over AdamW's flat gradient buffers (optim.py) and divided by the number
of ranks: every rank then holds the gradient of the global batch's mean loss, so clipping and the
AdamW step run identically everywhere and the parameters never diverge.

    rank 0: rows 0..5  -> backward -> grad0 \\
                                              Allreduce(sum) / 2 -> the same grad on both -> step
    rank 1: rows 6..11 -> backward -> grad1 /

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

    def average_gradients(self, optimizer, loss):
        """Replace each rank's gradients (and its mean `loss`) with their mean over the ranks.
        One Allreduce a flat buffer (two groups: decay, no_decay) and one for the loss, all in
        flight at once. Returns the global mean loss."""
        if self.comm is None:
            return loss
        from mpi4py import MPI
        loss = np.array([loss], dtype=np.float64)
        buffers = [g.grad for g in optimizer.groups if len(g)] + [loss]
        for g in optimizer.groups:
            g.sync()  # a replaced p.grad rejoins its flat buffer before we reduce that buffer
        MPI.Request.Waitall([self.comm.Iallreduce(MPI.IN_PLACE, b, op=MPI.SUM) for b in buffers])
        for b in buffers:
            b *= b.dtype.type(1.0 / self.size)  # the sum of the ranks' means -> the global mean
        return float(loss[0])

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
