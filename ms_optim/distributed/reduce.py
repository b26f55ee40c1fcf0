"""``all_reduce_mean``: data-parallel gradient averaging in a few large collective calls."""

from __future__ import annotations

from collections.abc import Mapping

import array_api_compat

from . import _buckets
from ._comm import transport

__all__ = ["all_reduce_mean"]

#: the buckets' memory, kept between calls (see _buckets.Scratch)
_SCRATCH = _buckets.Scratch()


def all_reduce_mean(grads, comm=None, *, bucket_bytes: int = _buckets.BUCKET_BYTES) -> None:
    r"""Average a list of gradients over all ranks, in place.

    Each rank passes its own gradients (same list length, shapes and dtypes on
    every rank); afterwards every rank holds the mean

    .. math::

      g_i \leftarrow \frac{1}{W} \sum_{r=0}^{W-1} g_i^{(r)}

    for every non-None :math:`g_i`, where :math:`W` is the number of ranks.
    The sum is one collective call per bucket: arrays are flattened, per dtype,
    into buffers of about ``bucket_bytes``, summed by the transport
    (``MPI_Allreduce`` or ``ncclAllReduce``), divided by :math:`W` and written
    back. ``None`` entries are skipped; they must be None on every rank.
    One bucket-sized buffer per dtype is kept between calls (as torch DDP
    keeps its buckets): fresh memory per call cost more than the copy.

    Args:
      grads: a list of arrays (NumPy, or CuPy with an NCCL or CUDA-aware MPI
        communicator) or None; updated in place.
      comm: an mpi4py communicator (default ``MPI.COMM_WORLD``) or a
        ``cupy.cuda.nccl.NcclCommunicator``.
      bucket_bytes: the size a bucket is filled to (default 25 MiB, torch
        DDP's ``bucket_cap_mb``). A larger array is sent alone.

    Example (run under ``mpiexec -n 2``)::

      >>> import numpy as np                                      # doctest: +SKIP
      >>> from ms_optim.distributed import all_reduce_mean
      >>> from mpi4py import MPI
      >>> g = [np.full(3, float(MPI.COMM_WORLD.rank))]
      >>> all_reduce_mean(g)
      >>> g[0]                                                    # mean of 0 and 1
      array([0.5, 0.5, 0.5])

    Raises:
      TypeError: ``grads`` is not a list of arrays and Nones, or ``comm`` is not a communicator.
      ValueError: ``bucket_bytes`` is not positive.

    .. warning::
      The mean is computed as torch DDP's default hook does (a sum, then a
      division), in the gradient's own dtype: float16 sums can overflow where
      a pre-division would not. The order of the sum is the transport's, so
      results match torch DDP's only up to rounding.
    """
    if isinstance(grads, (str, bytes, Mapping)) or not hasattr(grads, "__iter__") or hasattr(grads, "shape"):
        raise TypeError(f"grads must be a list of arrays (or None), got {type(grads).__name__}")
    grads = list(grads)
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be a positive int, got {bucket_bytes!r}")
    for i, g in enumerate(grads):
        if g is not None and not (hasattr(g, "shape") and hasattr(g, "dtype") and hasattr(g, "__setitem__")):
            raise TypeError(f"grads[{i}] must be an array or None, got {type(g).__name__}")
        if g is not None and not array_api_compat.array_namespace(g).isdtype(g.dtype, "real floating"):
            raise TypeError(f"grads[{i}] has dtype {g.dtype}; a real floating-point gradient is needed")
    t = transport(comm)
    present = [i for i, g in enumerate(grads) if g is not None]
    arrays = [grads[i] for i in present]
    if t.size == 1 or not arrays:
        return
    for kind in _buckets.group_by_kind(arrays):
        for run in _buckets.buckets(arrays, kind, bucket_bytes):
            buf = _buckets.pack(arrays, run, _SCRATCH)
            t.allreduce_sum(buf)
            buf /= t.size
            _buckets.unpack(buf, arrays, run)
