"""Flat buffers: many arrays into few collective calls, and back.

A collective call costs a latency (microseconds in shared memory, tens of them
over a network, a kernel launch with NCCL) whatever its size, so a step that
made one call per tensor would pay it hundreds of times. Arrays are packed, per
dtype and namespace, into buffers of about ``bucket_bytes`` (25 MB by default,
torch DDP's bucket size), one call per buffer.
"""

from __future__ import annotations

import math

import array_api_compat

#: torch.nn.parallel.DistributedDataParallel's default bucket_cap_mb
BUCKET_BYTES = 25 * 2**20


def group_by_kind(arrays):
    """Indices of ``arrays`` grouped by (namespace, dtype, device), in first-seen order."""
    kinds: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrays):
        xp = array_api_compat.array_namespace(a)
        kinds.setdefault((xp, str(a.dtype), str(array_api_compat.device(a))), []).append(i)
    return list(kinds.values())


def buckets(arrays, indices, bucket_bytes: int = BUCKET_BYTES):
    """Split ``indices`` (arrays of one kind) into runs of about ``bucket_bytes`` each.

    A single array larger than ``bucket_bytes`` is a bucket of its own: it is
    sent whole, never split.
    """
    out, run, size = [], [], 0
    for i in indices:
        nbytes = math.prod(arrays[i].shape) * arrays[i].dtype.itemsize
        if run and size + nbytes > bucket_bytes:
            out.append(run)
            run, size = [], 0
        run.append(i)
        size += nbytes
    if run:
        out.append(run)
    return out


class Scratch:
    """Flat buffers kept between calls, one per (array type, dtype, device), grown to the largest run.

    A fresh 25 MB buffer per call costs more than the copy into it (the kernel maps and
    zeroes new pages on first touch: a 40 MB copy into fresh memory took 86 ms here, into
    reused memory a few), so the buffers are reused, as torch DDP keeps its buckets. Runs
    of one kind reuse one buffer in turn: each call is finished (MPI) or queued on the
    same stream (NCCL) before the next run is packed.
    """

    def __init__(self):
        self._buffers: dict[tuple, object] = {}

    def get(self, like, n: int):
        key = (type(like), str(like.dtype), str(array_api_compat.device(like)))
        buf = self._buffers.get(key)
        if buf is None or buf.shape[0] < n:
            xp = array_api_compat.array_namespace(like)
            buf = self._buffers[key] = xp.empty((n,), dtype=like.dtype, device=array_api_compat.device(like))
        return buf[:n]


def run_size(arrays, run) -> int:
    return sum(math.prod(arrays[i].shape) for i in run)


def pack(arrays, run, scratch: Scratch):
    """A flat buffer (from ``scratch``) holding ``arrays[i]`` for ``i`` in ``run``, in order."""
    first = arrays[run[0]]
    xp = array_api_compat.array_namespace(first)
    buf = scratch.get(first, run_size(arrays, run))
    offset = 0
    for i in run:
        n = math.prod(arrays[i].shape)
        buf[offset:offset + n] = xp.reshape(arrays[i], (-1,))
        offset += n
    return buf


def empty_like_run(arrays, run, scratch: Scratch):
    return scratch.get(arrays[run[0]], run_size(arrays, run))


def unpack(buf, arrays, run) -> None:
    """Write the flat ``buf`` back into ``arrays[i]`` for ``i`` in ``run``, in place."""
    xp = array_api_compat.array_namespace(buf)
    offset = 0
    for i in run:
        a = arrays[i]
        n = math.prod(a.shape)
        a[...] = xp.reshape(buf[offset:offset + n], a.shape)
        offset += n
