r"""Multi-tensor reduction passes: norms, the finite check and scaling, one pass over a list of arrays.

What clipping (:mod:`ms_optim.clipping`) and loss scaling
(:mod:`ms_optim.amp`) need from a compiled backend, for a list of gradients of
one namespace, device and dtype (a bucket):

* :func:`norm_partials`: each tensor's :math:`\sum |x|^p` (``p`` finite, not
  0), its count of non-zeros (``p = 0``), its :math:`\max |x|` (``inf``) or
  :math:`\min |x|` (``-inf``), read once; :func:`finish_norms` turns them into
  torch's per-tensor norms and :func:`total_norm` into the norm of norms;
* :func:`non_finite_check_and_unscale_`: ``g *= inv_scale`` in place and
  ``found_inf = 1`` if any entry was NaN or inf *before* the multiply, reading
  each gradient once (torch's ``_amp_foreach_non_finite_check_and_unscale_``);
  :func:`non_finite_check_` the same check with no writes (what the fused
  optimizer path asks for: torch passes ``inv_scale = 1``);
* :func:`scale_`: ``g *= c`` for the clip coefficient.

**NumPy** (this file, kernels in :mod:`.reductions_numba`): a bucket becomes
an int64 table of ``(n, address)`` rows, each tensor cut into rows of
:data:`CHUNK` elements, and one compiled call walks the table writing one
partial per row; the rows of a tensor are then combined on the host in row
order. The rows do not depend on the thread count, so neither does the
result: a bucket of at least :data:`PARALLEL_MIN_ELEMENTS` splits its rows
into one contiguous range per thread (each thread writes only its own rows'
partials), smaller ones run on the calling thread. numba is imported on the
first compiled call, never at ``import ms_optim``. :func:`supports` says when
the compiled pass is taken: numba importable, every array a C-contiguous
NumPy float16/32/64 array of one dtype, and the bucket at least
:data:`MIN_ELEMENTS` elements (below that the import and the first compile
would not pay back; the NumPy code in clipping.py/amp.py runs instead).

**CuPy** (:mod:`.reductions_cuda`): one RawKernel per (operation, dtype) over
a pointer/size table, per-block partials and a second one-block-per-tensor
pass; the results are CuPy arrays, so nothing waits for the GPU unless the
caller reads them.

Numerics, and how they compare with torch 2.13 (checked by
``tests/test_clipping.py`` and ``tests/test_reduction_kernels.py``):

* The sums are accumulated in float64 for every storage dtype, so each
  float16/float32 per-tensor norm is within one ulp of the exactly rounded
  value (float64 ones within 1e-12 relative, a few ulps). torch's CPU
  kernel accumulates float32 (and float16, via float32) in float32 vector
  lanes: on one tensor of 1e7 normal float32 values its 2-norm is about
  4,700 ulps (3e-4 relative) from the exact one, on 5e4 values a few ulps, so
  the documented tolerance against torch is torch's own rounding: float64
  1e-12 relative, float32 and float16 a few ulps plus torch's accumulation
  error (``n * 2**-24`` relative for ``n`` elements, which the tests allow).
* Overflow is torch's: a float16/float32 sum above float32's largest value is
  inf, as torch's float32 accumulator would be. (An *underflowing* square,
  below about 1e-45, still counts here; torch's float32 accumulator drops it.)
* NaN propagates through every norm; max/min and the finite check are exact.
* The unscale multiply is one IEEE multiply in the compute dtype (float32 for
  float16, rounded back): bit for bit torch's. ``inv_scale == 1`` skips the
  writes, as torch's kernel does.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from .addresses import AddressCache
from .cpu_threads import ThreadPool, row_spans, run_parts

__all__ = [
    "CHUNK",
    "MIN_ELEMENTS",
    "PARALLEL_MIN_ELEMENTS",
    "finish_norms",
    "non_finite_check_",
    "non_finite_check_and_unscale_",
    "norm_partials",
    "scale_",
    "supports",
    "total_norm",
]

#: elements per table row: the unit of work for a thread, and of the partials
CHUNK = 1 << 16

#: a bucket this large splits its rows over threads (the cpu backend's threshold,
#: measured there: below it handing work to a second thread cost what it saved)
PARALLEL_MIN_ELEMENTS = 1 << 20

#: the smallest bucket that takes the compiled pass (the cpu backend's AUTO_MIN_ELEMENTS:
#: below it, NumPy's own loops are about as fast and numba is never imported)
MIN_ELEMENTS = 1 << 18

#: threads for a large bucket (None: numba's NUMBA_NUM_THREADS)
num_threads: int | None = None

#: storage dtype -> (the view the kernels read, the unsigned view of its bits,
#: sign-cleared mask, exponent mask (== the bits of inf))
_BITS = {
    "float16": (np.uint16, np.uint16, 0x7FFF, 0x7C00),
    "float32": (np.float32, np.uint32, 0x7FFFFFFF, 0x7F800000),
    "float64": (np.float64, np.uint64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000),
}

_FLOAT32_MAX = float(np.finfo(np.float32).max)

def is_cupy(a) -> bool:
    """Whether ``a`` is a CuPy array, without importing CuPy."""
    return type(a).__module__.split(".", 1)[0] == "cupy"


_kernels = None
_kernels_error: BaseException | None = None
_lock = threading.Lock()
_pool = ThreadPool("ms_optim-reduce")  # rebuilt in a forked child, as the cpu backend's


# ------------------------------------------------------------------ when


def _numba_kernels():
    """The kernel module (numba imported on first use), or None when numba is missing or broken."""
    global _kernels, _kernels_error
    if _kernels is not None or _kernels_error is not None:
        return _kernels
    with _lock:
        if _kernels is None and _kernels_error is None:
            try:
                from .cpu_numba import import_numba as _import_numba

                _import_numba()  # CpuBackendUnavailable (an ImportError) when missing or broken
                from . import reductions_numba
            except ImportError as exc:
                _kernels_error = exc
            else:
                _kernels = reductions_numba
    return _kernels


#: whether CuPy gradients take the multi-tensor RawKernels (off until a GPU has checked them)
GPU_PASSES = False


def supports(grads: list, min_elements: int | None = None) -> bool:
    """Whether the compiled pass takes this bucket (see the module docstring).

    ``grads``: arrays of one namespace and dtype. CuPy arrays: True when they
    are all C-contiguous float16/32/64 (the GPU always pays for one launch
    over many). NumPy arrays: also numba importable and at least
    ``min_elements`` (default :data:`MIN_ELEMENTS`) elements in all.
    """
    if not grads:
        return False
    first = grads[0]
    dtype = first.dtype
    if is_cupy(first):
        # The CuPy kernels compile with NVRTC and run on the host in CI, but no GPU has run them
        # yet: until one has, CuPy gradients keep the Array API path (reductions_cuda.py is ready).
        return GPU_PASSES and str(dtype) in _BITS and all(g.dtype == dtype and g.flags.c_contiguous for g in grads)
    ndarray = np.ndarray
    if type(first) is not ndarray or dtype.name not in _BITS:
        return False
    total = 0
    for g in grads:
        if type(g) is not ndarray or g.dtype != dtype or not g.flags.c_contiguous:
            return False
        total += g.size
    if total < (MIN_ELEMENTS if min_elements is None else min_elements):
        return False
    return _numba_kernels() is not None


# ------------------------------------------------------------------ tables and threads


def _table(grads: list):
    """(rows, first row of each tensor, the non-empty tensors' indices): the chunked (n, address) table."""
    sizes = np.fromiter((g.size for g in grads), dtype=np.int64, count=len(grads))
    present = np.flatnonzero(sizes)
    if present.size == 0:
        return None, None, present
    sizes = sizes[present]
    addresses = np.fromiter((_address(grads[i]) for i in present), dtype=np.int64, count=present.size)
    counts = (sizes + CHUNK - 1) // CHUNK
    first = np.cumsum(counts) - counts
    offsets = (np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first, counts)) * CHUNK
    rows = np.empty((offsets.size, 2), dtype=np.int64)
    rows[:, 0] = np.minimum(np.repeat(sizes, counts) - offsets, CHUNK)
    rows[:, 1] = np.repeat(addresses, counts) + offsets * grads[present[0]].itemsize
    return rows, first, present


_address = AddressCache()  # a gradient buffer is usually the same array step after step


def _threads() -> int:
    if num_threads is not None:
        return max(1, int(num_threads))
    from .cpu_numba import import_numba as _import_numba

    return int(_import_numba().config.NUMBA_NUM_THREADS)


def _run(kernel, rows, outs: tuple, *args) -> None:
    """``kernel(rows, *outs, *args)``, its rows split over threads when the bucket is large.

    Each thread gets a contiguous span of rows and the matching slices of
    ``outs`` (one result per row), so no two threads write the same entry.
    """
    total = int(rows[:, 0].sum())
    threads = _threads() if total >= PARALLEL_MIN_ELEMENTS else 1
    if threads <= 1 or len(rows) < 2:
        kernel(rows, *outs, *args)
        return
    spans = row_spans(rows, threads)
    parts = [(rows[a:b], *(o[a:b] for o in outs)) for a, b in spans]
    run_parts(lambda part, extra: kernel(*part, *extra), parts, args, _pool.get(len(parts) - 1))


# ------------------------------------------------------------------ norms


def _order(norm_type) -> float:
    p = float(norm_type)
    if math.isnan(p):
        raise ValueError(f"norm_type must not be NaN, got {norm_type!r}")
    return p


def norm_partials(grads: list, norm_type, multiplier=None):
    """One pass over ``grads`` (one namespace, device and dtype): a float64 partial per tensor.

    The partial is :math:`\\sum |x|^p` for a finite ``p`` other than 0 (the
    2-norm's sum of squares...), the number of non-zero entries for ``p = 0``,
    :math:`\\max |x|` for ``inf`` and :math:`\\min |x|` for ``-inf`` (NaN where
    the tensor holds a NaN). An empty tensor gives 0 (the caller refuses
    ``inf``/``-inf``/negative orders on one, as torch does). NumPy arrays:
    a NumPy array; CuPy arrays: a CuPy array, computed without a host sync.

    ``multiplier`` (NumPy only; a positive number): the partials of
    ``x * multiplier``, each product one IEEE multiply in the compute dtype
    (float32 for float16), as a loss scale's unscale would write it; nothing
    is written. For ``inf``/``-inf`` the extreme ``|x|`` is multiplied once
    (rounding is monotone, so that is the extreme of the products).

    Raises:
      ValueError: ``norm_type`` is NaN.
      TypeError: the arrays are not what :func:`supports` accepts (with a
        zero threshold): the caller takes its NumPy path for them instead.
    """
    p = _order(norm_type)
    _check_bucket(grads)
    if is_cupy(grads[0]):
        if multiplier is not None:
            raise TypeError("norm_partials takes a multiplier for NumPy arrays only")
        from . import reductions_cuda

        return reductions_cuda.norm_partials(grads, p)
    k = _require_kernels()
    storage = grads[0].dtype.name
    view, bits, abs_mask, inf_bits = _BITS[storage]
    compute = np.float32 if storage == "float16" else np.dtype(storage).type
    c = compute(1 if multiplier is None else np.asarray(multiplier))
    out = np.zeros(len(grads), dtype=np.float64)
    rows, first, present = _table(grads)
    if rows is None:
        return out
    if p == math.inf or p == -math.inf:
        hi = np.empty(len(rows), dtype=bits)
        lo = np.empty(len(rows), dtype=bits)
        _run(k.abs_bits_range, rows, (hi, lo), np.empty(0, bits), bits(abs_mask))
        hi = np.maximum.reduceat(hi, first)
        lo = np.minimum.reduceat(lo, first)
        value = (hi if p > 0 else lo).view(_float_of(storage))
        if multiplier is not None:
            with np.errstate(over="ignore"):
                value = value.astype(compute) * c
        value = value.astype(np.float64)
        value[hi > inf_bits] = np.nan
        out[present] = value
        return out
    partial = np.empty(len(rows), dtype=np.float64)
    proto = np.empty(0, view)
    if p == 2:
        _run(k.sum_squares, rows, (partial,), proto, c)
    elif p == 1:
        _run(k.sum_abs, rows, (partial,), proto, c)
    elif p == 0:
        _run(k.count_nonzero, rows, (partial,), proto, c)
    else:
        with np.errstate(all="ignore"):
            _run(k.sum_powers, rows, (partial,), proto, c, p)
    out[present] = np.add.reduceat(partial, first)
    return out


def finish_norms(partials, norm_type, dtype):
    """Per-tensor norms in ``dtype`` from :func:`norm_partials` (torch's per-tensor results).

    :math:`s^{1/p}` of each sum (``p = 1``, ``0``, ``inf``, ``-inf``: the
    partial itself), rounded once to ``dtype``; for float16/float32 a sum past
    float32's range is inf first, as torch's float32 accumulator overflows.
    ``partials`` is NumPy or CuPy; the result is of its namespace.
    """
    p = _order(norm_type)
    if is_cupy(partials):
        import cupy as xp
    else:
        xp = np
    s = partials
    with np.errstate(all="ignore"):
        if str(dtype) != "float64" and p not in (math.inf, -math.inf):
            s = xp.where(s > _FLOAT32_MAX, xp.inf, s)
        if p == 2:
            s = xp.sqrt(s)
        elif p not in (1, 0, math.inf, -math.inf):
            s = s ** (1.0 / p)
        return s.astype(dtype)


def total_norm(grads: list, norm_type):
    """torch's total norm of one bucket: the ``p``-norm of its per-tensor norms, a 0-d array of its dtype.

    The norms are those of :func:`finish_norms`; their own norm is taken in
    float64 and rounded once (torch's float32 sum of 200 or so numbers is
    within an ulp of that).
    """
    p = _order(norm_type)
    dtype = grads[0].dtype
    norms = finish_norms(norm_partials(grads, p), p, dtype)
    return norm_of_norms(norms, p)


def norm_of_norms(norms, norm_type):
    """The ``p``-norm of a vector of per-tensor norms (NumPy or CuPy), as a 0-d array of its dtype."""
    p = _order(norm_type)
    xp = _namespace_of(norms)
    dtype = norms.dtype
    a = xp.abs(norms.astype(xp.float64))
    with np.errstate(all="ignore"):
        if p == math.inf:
            r = xp.max(a)
        elif p == -math.inf:
            r = xp.min(a)
        elif p == 0:
            r = xp.sum((a != 0).astype(xp.float64))
        elif p == 1:
            r = xp.sum(a)
        elif p == 2:
            r = xp.sum(a * a)
        else:
            r = xp.sum(a ** p)
        if str(dtype) != "float64" and p not in (math.inf, -math.inf):
            r = xp.where(r > _FLOAT32_MAX, xp.inf, r)
        if p == 2:
            r = xp.sqrt(r)
        elif p not in (1, 0, math.inf, -math.inf):
            r = r ** (1.0 / p)
        return xp.asarray(r).astype(dtype)


def _float_of(storage: str):
    return np.dtype(storage).type


def _namespace_of(a):
    if is_cupy(a):
        import cupy

        return cupy
    return np


# ------------------------------------------------------------------ finite check and scaling


def non_finite_check_and_unscale_(grads: list, found_inf, inv_scale) -> None:
    """``torch._amp_foreach_non_finite_check_and_unscale_`` in one pass over ``grads``.

    Each gradient is read once: its entries are multiplied in place by
    ``inv_scale`` (in float32 for float16 gradients, rounded back) and
    ``found_inf`` (a float32 0-d array, not cleared first) is set to 1.0 if
    any entry was NaN or inf before the multiply. ``inv_scale == 1`` skips the
    writes (torch's kernel does too): the check alone. NumPy: ``inv_scale``
    is read on the host (free); CuPy: on the device, nothing waits.
    """
    _check_bucket(grads)
    if is_cupy(grads[0]):
        from . import reductions_cuda

        reductions_cuda.check_and_scale(grads, found_inf, inv_scale)
        return
    storage = grads[0].dtype.name
    compute = np.float32 if storage == "float16" else np.dtype(storage).type
    inv = compute(np.asarray(inv_scale))
    if inv == 1:
        non_finite_check_(grads, found_inf)
        return
    k = _require_kernels()
    rows, _, _ = _table(grads)
    if rows is None:
        return
    view, bits, _, exp_mask = _BITS[storage]
    hi = np.empty(len(rows), dtype=bits)
    _run(k.check_and_scale, rows, (hi,), np.empty(0, view), np.empty(0, bits), bits(exp_mask), inv)
    if (hi == exp_mask).any():
        found_inf[...] = 1.0


def non_finite_check_(grads: list, found_inf) -> None:
    """Set ``found_inf`` (a float32 0-d array) to 1.0 if any entry of ``grads`` is NaN or inf; no writes."""
    _check_bucket(grads)
    if is_cupy(grads[0]):
        from . import reductions_cuda

        reductions_cuda.check_and_scale(grads, found_inf, None)
        return
    k = _require_kernels()
    rows, _, _ = _table(grads)
    if rows is None:
        return
    _, bits, _, exp_mask = _BITS[grads[0].dtype.name]
    hi = np.empty(len(rows), dtype=bits)
    _run(k.exponent_max, rows, (hi,), np.empty(0, bits), bits(exp_mask))
    if (hi == exp_mask).any():
        found_inf[...] = 1.0


def scale_(grads: list, c) -> None:
    """``g *= c`` for every gradient, in the compute dtype (float32 for float16), in one pass.

    ``c``: a number or a 0-d array (NumPy: read on the host; CuPy: a device
    array, read by the kernel, no sync).
    """
    _check_bucket(grads)
    if is_cupy(grads[0]):
        from . import reductions_cuda

        reductions_cuda.scale(grads, c)
        return
    k = _require_kernels()
    rows, _, _ = _table(grads)
    if rows is None:
        return
    storage = grads[0].dtype.name
    compute = np.float32 if storage == "float16" else np.dtype(storage).type
    with np.errstate(all="ignore"):
        cv = compute(np.asarray(c))
    _run(k.scale, rows, (), np.empty(0, _BITS[storage][0]), cv)


# ------------------------------------------------------------------ checks


def _check_bucket(grads: list) -> None:
    if not isinstance(grads, list) or not grads:
        raise TypeError(f"grads must be a non-empty list of arrays, got {type(grads).__name__}")
    if not supports(grads, min_elements=0):
        first = grads[0]
        raise TypeError(
            "the compiled reduction takes C-contiguous float16/float32/float64 arrays of one dtype "
            f"(with numba for NumPy arrays); got {type(first).__name__} of dtype {first.dtype} "
            "among others: use the NumPy path for them"
        )


def _require_kernels():
    k = _numba_kernels()
    if k is None:
        raise TypeError(f"the compiled reduction needs numba ({_kernels_error})")
    return k
