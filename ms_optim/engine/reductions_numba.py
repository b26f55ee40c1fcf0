"""The numba kernels of :mod:`ms_optim.engine.reductions` (imported only when a compiled pass runs).

Each kernel walks a table of int64 rows ``(n, address)``: ``n`` elements of
one tensor (or of one chunk of it) starting at ``address``, and writes one
result per row. A kernel is generic over the storage: the ``proto`` argument
is an empty array whose dtype says how to read the memory (float32, float64,
or uint16 for float16 bit patterns, numba having no float16 on the CPU), so
numba compiles one specialisation per dtype, on first use, and keeps it in its
disk cache beside this file (``cache=True``).

Why each loop is written the way it is (all measured to vectorise on the CI
machine's AVX-512):

* sums accumulate in float64 with ``fastmath={'reassoc'}`` only: the vector
  lanes may reorder the additions, nothing else (no ``contract``: no FMA; no
  ``nnan``/``ninf``: a NaN or inf still propagates). A float64 accumulator of
  float32 squares is exact enough that the result is the correctly rounded
  norm to within an ulp, and memory-bound, so it costs nothing over float32;
* max/min of ``|x|`` are integer max/min over the bit patterns with the sign
  cleared: they order as ``|x|`` does, a NaN's pattern is above inf's, and an
  integer reduction vectorises without any fast-math flag;
* the finite check is an integer max of the exponent bits: it equals the
  all-ones exponent iff some element is inf or NaN;
* the sums read ``x * c`` (one multiply in the compute dtype, float32 for
  float16): the norm of the gradients a loss scale's unscale would write,
  without writing them (``c = 1`` is exactly ``x``).
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic, overload

from ms_optim.engine.cpu_numba import numba_support as _numba_support

_s = _numba_support()
_h2f = _s.half_to_float
_f2h = _s.float_to_half

_OPTS = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)
_SUM_OPTS = dict(_OPTS, fastmath={"reassoc"})


@intrinsic
def _address_as(typingctx, address, proto):
    """``address`` (an int64) as a pointer to ``proto``'s element type."""
    if not isinstance(address, types.Integer) or not isinstance(proto, types.Array):
        return None
    ptr = types.CPointer(proto.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))

    return ptr(address, proto), codegen


def _load(x, i):
    """Element ``i`` of a view as a float (float16 bit patterns decoded)."""


@overload(_load, jit_options={"nogil": True})
def _load_impl(x, i):
    if x.dtype == types.uint16:
        return lambda x, i: _h2f(x[i])
    return lambda x, i: x[i]


def _store(x, i, v):
    """Store float ``v`` into element ``i`` (float16: rounded to nearest even)."""


@overload(_store, jit_options={"nogil": True})
def _store_impl(x, i, v):
    if x.dtype == types.uint16:
        def impl(x, i, v):
            x[i] = _f2h(v)
        return impl

    def impl(x, i, v):
        x[i] = v
    return impl


# ------------------------------------------------------------------ norms


@njit(**_SUM_OPTS)
def sum_squares(table, out, proto, c):
    for r in range(table.shape[0]):
        x = carray(_address_as(table[r, 1], proto), table[r, 0])
        acc = 0.0
        for i in range(x.shape[0]):
            v = np.float64(_load(x, i) * c)
            acc += v * v
        out[r] = acc


@njit(**_SUM_OPTS)
def sum_abs(table, out, proto, c):
    for r in range(table.shape[0]):
        x = carray(_address_as(table[r, 1], proto), table[r, 0])
        acc = 0.0
        for i in range(x.shape[0]):
            acc += abs(np.float64(_load(x, i) * c))
        out[r] = acc


@njit(**_SUM_OPTS)
def sum_powers(table, out, proto, c, p):
    for r in range(table.shape[0]):
        x = carray(_address_as(table[r, 1], proto), table[r, 0])
        acc = 0.0
        for i in range(x.shape[0]):
            acc += abs(np.float64(_load(x, i) * c)) ** p
        out[r] = acc


@njit(**_SUM_OPTS)
def count_nonzero(table, out, proto, c):
    for r in range(table.shape[0]):
        x = carray(_address_as(table[r, 1], proto), table[r, 0])
        acc = 0.0
        for i in range(x.shape[0]):
            # NaN != 0: counted, as torch's vector_norm(ord=0) counts it
            acc += 1.0 if _load(x, i) * c != 0 else 0.0
        out[r] = acc


@njit(**_OPTS)
def abs_bits_range(table, out_max, out_min, bits, abs_mask):
    """Per row, the largest and smallest ``bits & abs_mask`` (``bits``: the unsigned view's proto)."""
    for r in range(table.shape[0]):
        x = carray(_address_as(table[r, 1], bits), table[r, 0])
        hi = abs_mask ^ abs_mask  # 0 in the mask's type
        lo = abs_mask
        for i in range(x.shape[0]):
            b = x[i] & abs_mask
            hi = max(hi, b)
            lo = min(lo, b)
        out_max[r] = hi
        out_min[r] = lo


# ------------------------------------------------------------------ finite check and scaling


@njit(**_OPTS)
def exponent_max(table, out, bits, exp_mask):
    """Per row, the largest ``bits & exp_mask``: ``exp_mask`` itself iff some element is inf or NaN."""
    for r in range(table.shape[0]):
        x = carray(_address_as(table[r, 1], bits), table[r, 0])
        hi = exp_mask ^ exp_mask
        for i in range(x.shape[0]):
            hi = max(hi, x[i] & exp_mask)
        out[r] = hi


@njit(**_OPTS)
def check_and_scale(table, out, proto, bits, exp_mask, c):
    """``x *= c`` in the compute dtype, and per row the exponent max of the values *before* it."""
    for r in range(table.shape[0]):
        x = carray(_address_as(table[r, 1], proto), table[r, 0])
        xb = carray(_address_as(table[r, 1], bits), table[r, 0])
        hi = exp_mask ^ exp_mask
        for i in range(x.shape[0]):
            hi = max(hi, xb[i] & exp_mask)
            _store(x, i, _load(x, i) * c)
        out[r] = hi


@njit(**_OPTS)
def scale(table, proto, c):
    """``x *= c`` in the compute dtype (the clip coefficient's multiply)."""
    for r in range(table.shape[0]):
        x = carray(_address_as(table[r, 1], proto), table[r, 0])
        for i in range(x.shape[0]):
            _store(x, i, _load(x, i) * c)
