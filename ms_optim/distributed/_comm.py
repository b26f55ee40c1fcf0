"""The two transports ms_optim.distributed runs on, behind one small interface.

``transport(comm)`` wraps either an mpi4py communicator (NumPy arrays, or CuPy
arrays through CUDA-aware MPI) or a ``cupy.cuda.nccl.NcclCommunicator`` (CuPy
arrays). Neither mpi4py nor CuPy is imported unless such a communicator is
actually used: ``import ms_optim.distributed`` costs neither.

Everything here is a collective: every rank calls the same methods in the same
order, with buffers of the same size and dtype, or the job hangs.
"""

from __future__ import annotations

import pickle

import numpy as np

# NCCL's ncclDataType_t / ncclRedOp_t values (nccl.h, stable across NCCL 2.x).
# Kept here rather than read from cupy.cuda.nccl, which defines them only when
# libnccl loads; the fake communicator of the CPU tests needs them too.
NCCL_DTYPES = {"int8": 0, "uint8": 1, "int32": 2, "uint32": 3, "int64": 4, "uint64": 5,
               "float16": 6, "float32": 7, "float64": 8, "bfloat16": 9}
NCCL_SUM, NCCL_MIN = 0, 3


def is_nccl(comm) -> bool:
    """A ``cupy.cuda.nccl.NcclCommunicator`` (or a stand-in with its methods), told by duck typing."""
    return all(callable(getattr(comm, name, None)) for name in ("allReduce", "bcast", "rank_id", "size"))


def transport(comm):
    """The transport for ``comm``; ``None`` means mpi4py's ``MPI.COMM_WORLD``.

    Raises:
      TypeError: ``comm`` is neither an mpi4py communicator nor an NCCL one.
    """
    if comm is None:
        try:
            from mpi4py import MPI
        except ImportError:
            raise ImportError(
                "comm=None means mpi4py's MPI.COMM_WORLD, but mpi4py is not installed "
                "(pip install 'ms-optim[distributed]', i.e. mpi4py and mpich)"
            ) from None
        return MPITransport(MPI.COMM_WORLD)
    if is_nccl(comm):
        return NCCLTransport(comm)
    if all(callable(getattr(comm, name, None)) for name in ("Allreduce", "Bcast", "Get_rank", "Get_size")):
        return MPITransport(comm)
    raise TypeError(
        f"comm must be an mpi4py communicator or a cupy.cuda.nccl.NcclCommunicator, got {type(comm).__name__}: {comm!r}"
    )


def _sync_cupy(buf) -> None:
    """Wait for CuPy's queued work on ``buf`` before MPI reads it (MPI knows nothing of CUDA streams)."""
    if type(buf).__module__.startswith("cupy"):
        import cupy

        cupy.cuda.get_current_stream().synchronize()


class MPITransport:
    """mpi4py, through its buffer methods (``Allreduce``/``Bcast``): no pickling of arrays.

    NumPy arrays go by the buffer protocol; CuPy arrays by ``__cuda_array_interface__``,
    which needs an MPI built CUDA-aware (the PyPI ``mpich`` wheel is not).
    """

    def __init__(self, comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def allreduce_sum(self, buf) -> None:
        from mpi4py import MPI

        _sync_cupy(buf)
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

    def bcast(self, buf, root: int) -> None:
        _sync_cupy(buf)
        self.comm.Bcast(buf, root=root)

    def all_true(self, flag: bool) -> bool:
        return bool(self.comm.allreduce(bool(flag), op=_mpi_land()))

    def bcast_object(self, obj, root: int):
        return self.comm.bcast(obj, root=root)

    def gather_object(self, obj, root: int):
        return self.comm.gather(obj, root=root)


def _mpi_land():
    from mpi4py import MPI

    return MPI.LAND


class NCCLTransport:
    """A ``cupy.cuda.nccl.NcclCommunicator``: device pointers, CuPy's current stream.

    NCCL moves only device buffers, so objects (a consolidated state dict) travel
    pickled, as a uint8 buffer on the device, one broadcast per rank as torch's
    ``ZeroRedundancyOptimizer.consolidate_state_dict`` does for NCCL.
    """

    def __init__(self, comm):
        self.comm = comm
        self.rank = int(comm.rank_id())
        self.size = int(comm.size())

    @staticmethod
    def _ptr_stream(buf):
        if type(buf).__module__.startswith("cupy"):
            import cupy

            return buf.data.ptr, cupy.cuda.get_current_stream().ptr
        # a host array: only the CPU tests' fake communicator takes one
        return buf.ctypes.data, 0

    @staticmethod
    def _dtype(buf) -> int:
        try:
            return NCCL_DTYPES[str(buf.dtype)]
        except KeyError:
            raise TypeError(f"NCCL cannot carry dtype {buf.dtype}") from None

    def allreduce_sum(self, buf) -> None:
        ptr, stream = self._ptr_stream(buf)
        self.comm.allReduce(ptr, ptr, buf.size, self._dtype(buf), NCCL_SUM, stream)

    def bcast(self, buf, root: int) -> None:
        ptr, stream = self._ptr_stream(buf)
        self.comm.bcast(ptr, buf.size, self._dtype(buf), root, stream)

    def _device_array(self, host: np.ndarray):
        if not type(self.comm).__module__.startswith("cupy"):
            return host  # a stand-in communicator over host memory (the CPU tests' fake)
        import cupy

        return cupy.asarray(host)

    @staticmethod
    def _host(buf) -> np.ndarray:
        return buf.get() if hasattr(buf, "get") and not isinstance(buf, np.ndarray) else buf

    def all_true(self, flag: bool) -> bool:
        buf = self._device_array(np.array([1 if flag else 0], dtype=np.int32))
        ptr, stream = self._ptr_stream(buf)
        self.comm.allReduce(ptr, ptr, 1, NCCL_DTYPES["int32"], NCCL_MIN, stream)
        return bool(self._host(buf)[0])

    def bcast_object(self, obj, root: int):
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if self.rank == root else b""
        n = self._device_array(np.array([len(data)], dtype=np.int64))
        self.bcast(n, root)
        count = int(self._host(n)[0])
        host = np.frombuffer(data, dtype=np.uint8).copy() if self.rank == root else np.zeros(count, np.uint8)
        buf = self._device_array(host)
        self.bcast(buf, root)
        return obj if self.rank == root else pickle.loads(self._host(buf).tobytes())

    def gather_object(self, obj, root: int):
        out = [self.bcast_object(obj if r == self.rank else None, r) for r in range(self.size)]
        return out if self.rank == root else None
