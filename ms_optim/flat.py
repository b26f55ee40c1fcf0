r"""Parameters and gradients as views of one contiguous buffer, as apex and torch FSDP keep them.

An optimizer step over many small tensors pays per tensor: a row in the
kernel's table, a pointer, a check. When a model's parameters are views of
one buffer and its gradients views of another, laid out alike, the cpu
backend's kept table (:class:`ms_optim.engine.cpu.Program`) merges them into
one row, and the optimizer allocates each state array as the matching view of
a buffer laid out like the parameters' (so the whole step is one pass over
three or four flat arrays).

Example::

    import numpy as np
    import ms_optim

    shapes = [(512, 128), (512,), (128, 512), (128,)]
    params = ms_optim.FlatBuffer(shapes, np.float32)     # zeros; or FlatBuffer.from_arrays(arrays)
    grads = params.zeros_like()                          # the same layout
    opt = ms_optim.AdamW(params.views, lr=1e-3)
    for batch in data:
        compute_grads(params.views, out=grads.views)     # write each gradient in place
        opt.step(grads.views)

The views are ordinary arrays (reshape, index and pass them anywhere); the
flat ``buffer`` is there for one-call work such as a global norm, an
all-reduce or a checkpoint. On NumPy the buffer starts on a 64-byte boundary
(a cache line, and the width of an AVX-512 load).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from .engine.namespace import array_namespace, device, is_numpy

__all__ = ["ALIGNMENT", "FlatBuffer", "aligned_empty", "aligned_zeros"]

#: bytes: where every NumPy buffer made here starts (a cache line)
ALIGNMENT = 64


def aligned_empty(shape, dtype, alignment: int = ALIGNMENT) -> np.ndarray:
    """An uninitialised C-contiguous NumPy array whose first element is ``alignment``-byte aligned."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in (shape if isinstance(shape, Iterable) else (shape,)))
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def aligned_zeros(shape, dtype, alignment: int = ALIGNMENT) -> np.ndarray:
    """:func:`aligned_empty`, filled with zeros."""
    out = aligned_empty(shape, dtype, alignment)
    out[...] = 0
    return out


def _checked_shapes(shapes) -> list[tuple[int, ...]]:
    if isinstance(shapes, (str, bytes)) or not isinstance(shapes, Iterable):
        raise TypeError(f"shapes must be a list of shapes, got {type(shapes).__name__}")
    out = []
    for i, shape in enumerate(shapes):
        if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
            shape = (shape,)
        if not isinstance(shape, Sequence) or isinstance(shape, (str, bytes)):
            raise TypeError(f"shapes[{i}] must be a tuple of ints, got {type(shape).__name__}: {shape!r}")
        dims = []
        for n in shape:
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
                raise ValueError(f"shapes[{i}] must hold non-negative ints, got {tuple(shape)!r}")
            dims.append(int(n))
        out.append(tuple(dims))
    if not out:
        raise ValueError("shapes is empty: a flat buffer needs at least one array")
    return out


class FlatBuffer:
    """Arrays of the given shapes, as consecutive views of one flat, contiguous buffer.

    Args:
      shapes: one shape per array (a tuple of ints, or an int for a vector).
      dtype: their dtype (default float32).
      xp: the namespace to allocate in (default NumPy); ``device`` where it has devices.

    Attributes:
      buffer: the 1-D buffer (``size`` elements; on NumPy 64-byte aligned).
      views: one array per shape, in order, each the next ``prod(shape)`` elements.
      shapes, dtype, size.

    Raises:
      TypeError / ValueError: a shape that is not a tuple of non-negative ints, or no shapes.
    """

    def __init__(self, shapes, dtype=np.float32, *, xp=None, device=None):
        self.shapes = _checked_shapes(shapes)
        xp = np if xp is None else xp
        self.xp = xp
        sizes = [math.prod(s) for s in self.shapes]
        self.size = sum(sizes)
        if is_numpy(xp):
            if device not in (None, "cpu"):
                raise ValueError(f"device must be None or 'cpu' for NumPy arrays, got {device!r}")
            self.buffer = aligned_zeros((self.size,), dtype)
        else:
            kwargs = {} if device is None else {"device": device}
            self.buffer = xp.zeros((self.size,), dtype=dtype, **kwargs)
        self.dtype = self.buffer.dtype
        views, start = [], 0
        for shape, n in zip(self.shapes, sizes):
            views.append(xp.reshape(self.buffer[start:start + n], shape))
            start += n
        self.views = views

    @classmethod
    def from_arrays(cls, arrays, dtype=None) -> "FlatBuffer":
        """A flat buffer holding copies of ``arrays`` (same shapes; dtype the first array's unless given).

        Raises:
          TypeError: ``arrays`` is empty or holds arrays of different namespaces or devices.
        """
        arrays = list(arrays)
        if not arrays:
            raise ValueError("arrays is empty: a flat buffer needs at least one array")
        xp = array_namespace(*arrays)
        devices = {str(device(a)) for a in arrays}
        if len(devices) > 1:
            raise ValueError(f"arrays are on several devices ({', '.join(sorted(devices))}); a buffer lives on one")
        out = cls([tuple(a.shape) for a in arrays], arrays[0].dtype if dtype is None else dtype, xp=xp,
                  device=None if is_numpy(xp) else device(arrays[0]))
        for view, a in zip(out.views, arrays):
            view[...] = xp.astype(a, out.dtype) if a.dtype != out.dtype else a
        return out

    def zeros_like(self) -> "FlatBuffer":
        """Another buffer of the same shapes, dtype and device, zeroed (a model's gradients)."""
        return FlatBuffer(self.shapes, self.dtype, xp=self.xp,
                          device=None if is_numpy(self.xp) else device(self.buffer))

    def zero_(self) -> None:
        """Set every element to zero (one pass over the buffer)."""
        self.buffer[...] = 0

    def __len__(self) -> int:
        return len(self.views)

    def __iter__(self):
        return iter(self.views)

    def __getitem__(self, i):
        return self.views[i]

    def __repr__(self) -> str:
        return f"FlatBuffer({len(self.views)} arrays, {self.size} elements of {self.dtype})"


class StateArena:
    """Where one optimizer step allocates new NumPy state arrays: aligned, and laid out like the parameters.

    Parameters that tile a span of one buffer end to end (the views of a
    :class:`FlatBuffer`, or any such views) get each state array as the view
    at the same offset of a buffer shaped like that span, so parameters,
    gradients and state stay adjacent alike and the kernel's table merges
    them into one row. Any other parameter gets its own 64-byte-aligned array.
    """

    def __init__(self, params: Iterable):
        spans: dict[int, list] = {}
        for p in params:
            base = getattr(p, "base", None)
            if type(p) is np.ndarray and base is not None and p.size and p.flags.c_contiguous:
                spans.setdefault(id(base), []).append(p)
        self._tiles: dict[int, tuple[int, int, np.dtype]] = {}  # id(base) -> (first address, bytes, dtype)
        for key, members in spans.items():
            if len(members) < 2 or len({m.dtype for m in members}) != 1:
                continue
            members.sort(key=lambda m: m.ctypes.data)
            start = members[0].ctypes.data
            end = start
            for m in members:
                if m.ctypes.data != end:
                    break
                end += m.nbytes
            else:
                self._tiles[key] = (start, end - start, members[0].dtype)
        self._buffers: dict[tuple, np.ndarray] = {}

    def zeros_like(self, p, key: str) -> np.ndarray:
        """A zeroed state array ``key`` for NumPy parameter ``p`` (its shape and dtype)."""
        base = p.base
        tile = self._tiles.get(id(base)) if base is not None else None
        if tile is None:
            return aligned_zeros(p.shape, p.dtype)
        start, nbytes, dtype = tile
        buffer = self._buffers.get((id(base), key))
        if buffer is None:
            buffer = self._buffers[(id(base), key)] = aligned_zeros((nbytes // dtype.itemsize,), dtype)
        first = (p.ctypes.data - start) // dtype.itemsize
        return buffer[first:first + p.size].reshape(p.shape)
