r"""Data-parallel training: gradient averaging and sharded optimizer state (ZeRO stage 1).

Two pieces, over two transports (mpi4py, the standard MPI binding, for NumPy
arrays, or CuPy arrays over a CUDA-aware MPI; NCCL through
``cupy.cuda.nccl.NcclCommunicator`` for CuPy arrays). Neither is imported by
``import ms_optim`` nor by ``import ms_optim.distributed``: only when a
communicator is used (``comm=None`` means ``mpi4py.MPI.COMM_WORLD``).

* :func:`all_reduce_mean` averages each rank's gradients in place, in one
  collective call per ~25 MiB bucket of each dtype.
* :class:`ZeroRedundancyOptimizer` wraps any ms_optim optimizer class. The
  parameters are partitioned over the :math:`W` ranks as torch's
  ``ZeroRedundancyOptimizer`` does; each rank keeps the optimizer state
  (Adam's ``exp_avg`` and ``exp_avg_sq``, ...) of its shard only, updates that
  shard, then broadcasts it to the others.

What is sharded: the optimizer state, about :math:`1/W` of a single process's
on each rank. What is not: parameters and gradients (every rank holds them
all, as in ZeRO stage 1 and torch's ``ZeroRedundancyOptimizer``).

What travels per step, with :math:`P` the bytes of the parameters (and of
their gradients): :func:`all_reduce_mean` sends the gradients, about
:math:`2P(W-1)/W` bytes per rank with a ring or pairwise all-reduce; the step
then broadcasts each rank's updated shard, so each rank receives about
:math:`P(W-1)/W` bytes (parameters whose gradient is None are not sent). Plus
one 1-element all-reduce per step, with which the ranks agree that every local
step succeeded before any parameter is sent.

Typical use, under ``mpiexec -n 2 python train.py``::

    from ms_optim import AdamW
    from ms_optim.distributed import ZeroRedundancyOptimizer, all_reduce_mean

    opt = ZeroRedundancyOptimizer(params, AdamW, lr=1e-3)   # every rank, same params
    for batch in my_slice_of_each_batch:
        grads = compute_grads(params, batch)                # this rank's slice
        all_reduce_mean(grads)                               # the batch's mean gradient
        opt.step(grads)                                      # identical params everywhere
    opt.consolidate_state_dict(to=0)                         # every rank
    if rank == 0:
        full = opt.state_dict()                              # what AdamW(params).load_state_dict takes

CuPy: pass ``comm=cupy.cuda.nccl.NcclCommunicator(world_size, unique_id, rank)``
(the unique id sent from rank 0 to the others, e.g. with mpi4py's ``bcast``);
gradients, parameters and state stay on the device, on CuPy's current stream.
With an MPI built CUDA-aware (Open MPI or MPICH with CUDA support, not the
PyPI ``mpich`` wheel), an mpi4py communicator takes CuPy arrays too: mpi4py
reads their ``__cuda_array_interface__``, and the current stream is
synchronised before each MPI call.

Torch semantics followed: the partition (largest first, to the least-loaded
rank, group by group), ``optim`` as the local optimizer, ``param_groups`` as
the full groups whose hyper-parameters reach the shards at each step,
``consolidate_state_dict(to)`` then ``state_dict()`` on that rank only,
``load_state_dict`` of a full dict keeping each rank's shard, and
``add_param_group`` keeping earlier parameters on their ranks. Departures are
listed in :class:`ZeroRedundancyOptimizer`'s warning.
"""

from .reduce import all_reduce_mean
from .zero import ZeroRedundancyOptimizer, partition_sizes

__all__ = ["ZeroRedundancyOptimizer", "all_reduce_mean", "partition_sizes"]
