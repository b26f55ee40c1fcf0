"""numba, imported on first use, and the intrinsics the generated cpu kernels use.

numba is optional (``pip install 'ms-optim[cpu]'``): this module imports
without it. :func:`check_numba_installed` raises
:class:`CpuBackendUnavailable` (an ImportError) when it is missing, and
:func:`import_numba` when it is present but broken (built for another NumPy,
say); the ``auto`` backend choice treats that as "fall back to eager" and an
explicit ``backend='cpu'`` shows it to the user. A failed import is
remembered, not retried on every step.

:func:`numba_support` builds, once, what every generated module needs:
``ptr_<dtype>(address)`` (an int64 address as a typed pointer, for
``numba.carray``) and exact float16 <-> float32 conversions on uint16 bit
patterns (numba has no float16 on the CPU).
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["CpuBackendUnavailable", "check_numba_installed", "default_threads", "import_numba", "numba_support"]

_INSTALL_HINT = "pip install 'ms-optim[cpu]' (or pip install numba)"


class CpuBackendUnavailable(ImportError):
    """The cpu backend's optional dependency, numba, is missing or does not import."""




@dataclass(frozen=True)
class _Support:
    ptr_uint16: Callable
    ptr_float32: Callable
    ptr_float64: Callable
    half_to_float: Callable
    float_to_half: Callable


_support: _Support | None = None
_support_lock = threading.Lock()


_numba_error: CpuBackendUnavailable | None = None


def check_numba_installed() -> None:
    """Raise CpuBackendUnavailable when numba is not installed, without importing it."""
    if _numba_error is not None:
        raise _numba_error
    if importlib.util.find_spec("numba") is None:
        raise CpuBackendUnavailable(f"the 'cpu' backend needs numba, which is not installed; {_INSTALL_HINT}, "
                                    "or use backend='eager'")


def import_numba():
    global _numba_error
    if _numba_error is not None:
        raise _numba_error  # remembered: a failed import is not retried on every step
    try:
        import numba
    except ImportError as exc:  # missing, or present but broken (e.g. built for another NumPy)
        _numba_error = CpuBackendUnavailable(
            f"the 'cpu' backend needs numba, which could not be imported ({exc}); {_INSTALL_HINT}, "
            "or use backend='eager'"
        )
        raise _numba_error from exc
    return numba


def numba_support() -> _Support:
    """The numba intrinsics and helpers the generated modules use (built once)."""
    global _support
    if _support is not None:
        return _support
    with _support_lock:
        if _support is None:
            _support = build_support()
    return _support


def build_support() -> _Support:
    numba = import_numba()
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    def pointer_intrinsic(dtype):
        @intrinsic
        def address_to_pointer(typingctx, address):
            if not isinstance(address, types.Integer):
                return None
            ptr = types.CPointer(dtype)
            sig = ptr(address)

            def codegen(context, builder, signature, args):
                return builder.inttoptr(args[0], context.get_value_type(ptr))

            return sig, codegen

        return address_to_pointer

    @intrinsic
    def bits_as_float32(typingctx, bits):
        if bits != types.uint32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.uint32), codegen

    @intrinsic
    def float32_as_bits(typingctx, x):
        if x != types.float32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))

        return types.uint32(types.float32), codegen

    jit = numba.njit(error_model="numpy", nogil=True)

    @jit
    def half_to_float(hbits):
        # exact: every half is a float32 (NumPy's npy_halfbits_to_floatbits)
        h = np.int64(hbits)
        sign = (h & 0x8000) << 16
        exponent = h & 0x7C00
        mantissa = h & 0x03FF
        if exponent == 0x7C00:  # inf or NaN (payload kept)
            bits = sign | 0x7F800000 | (mantissa << 13)
        elif exponent == 0:
            if mantissa == 0:
                bits = sign
            else:  # subnormal: mantissa * 2**-24 is exact in float32
                value = np.float32(mantissa) * np.float32(5.960464477539063e-08)
                return -value if sign else value
        else:
            bits = sign | (((exponent >> 10) + 112) << 23) | (mantissa << 13)
        return bits_as_float32(np.uint32(bits))

    @jit
    def float_to_half(x):
        # round to nearest even (NumPy's npy_floatbits_to_halfbits)
        f = np.int64(float32_as_bits(x))
        f_exp = f & 0x7F800000
        h_sgn = (f & 0x80000000) >> 16
        if f_exp >= 0x47800000:  # overflow, inf or NaN
            if f_exp == 0x7F800000:
                f_sig = f & 0x007FFFFF
                if f_sig != 0:
                    ret = 0x7C00 + (f_sig >> 13)
                    if ret == 0x7C00:  # keep a NaN a NaN when the payload shifts out
                        ret += 1
                    return np.uint16(h_sgn + ret)
            return np.uint16(h_sgn + 0x7C00)
        if f_exp <= 0x38000000:  # a half subnormal or zero
            if f_exp < 0x33000000:
                return np.uint16(h_sgn)
            e = f_exp >> 23
            f_sig = 0x00800000 + (f & 0x007FFFFF)
            f_sig >>= 113 - e
            if ((f_sig & 0x00003FFF) != 0x00001000) or (f & 0x000007FF) != 0:
                f_sig += 0x00001000
            return np.uint16(h_sgn + (f_sig >> 13))
        h_exp = (f_exp - 0x38000000) >> 13
        f_sig = f & 0x007FFFFF
        if (f_sig & 0x00003FFF) != 0x00001000:
            f_sig += 0x00001000
        return np.uint16(h_sgn + h_exp + (f_sig >> 13))

    return _Support(
        ptr_uint16=pointer_intrinsic(types.uint16),
        ptr_float32=pointer_intrinsic(types.float32),
        ptr_float64=pointer_intrinsic(types.float64),
        half_to_float=half_to_float,
        float_to_half=float_to_half,
    )


def default_threads() -> int:
    """numba's ``NUMBA_NUM_THREADS``: the usable cores, or that environment variable."""
    return int(import_numba().config.NUMBA_NUM_THREADS)
