"""Array namespace detection: the one place that asks "what kind of array is this?".

Everything else in ms_optim receives an ``xp`` from here and never checks array
types itself. Special cases live behind the named predicates below
(``is_numpy``, ``is_cupy``, ...), as scikit-learn's ``_array_api`` does.

CuPy is never imported here: ``array_api_compat`` recognises CuPy arrays by
their type's module name, so NumPy-only users never pay for (or need) CuPy.
"""

from __future__ import annotations

import numbers

import array_api_compat
import numpy as np

__all__ = [
    "array_namespace",
    "device",
    "is_array",
    "is_cupy",
    "is_numpy",
    "is_real_floating",
    "is_writeable",
    "to_namespace",
    "to_scalar",
]

device = array_api_compat.device


def is_array(x) -> bool:
    """True for an array of any Array API namespace (NumPy scalars included)."""
    return array_api_compat.is_array_api_obj(x) and not isinstance(x, (bool, int, float, complex))


#: array type -> its namespace; an array's namespace depends on its type alone,
#: and asking array_api_compat costs microseconds per call, on every parameter
#: of every step.
_NAMESPACE_OF_TYPE: dict[type, object] = {}


def array_namespace(*arrays):
    """The Array API namespace shared by ``arrays`` (raises TypeError if mixed)."""
    if len(arrays) == 1:
        kind = type(arrays[0])
        xp = _NAMESPACE_OF_TYPE.get(kind)
        if xp is None:
            xp = _NAMESPACE_OF_TYPE[kind] = array_api_compat.array_namespace(arrays[0])
        return xp
    return array_api_compat.array_namespace(*arrays)


def is_numpy(xp) -> bool:
    return array_api_compat.is_numpy_namespace(xp)


def is_cupy(xp) -> bool:
    return array_api_compat.is_cupy_namespace(xp)


def is_real_floating(xp, dtype) -> bool:
    return xp.isdtype(dtype, "real floating")


def is_writeable(x) -> bool:
    """False for arrays whose memory we may not write (read-only NumPy views, NumPy scalars)."""
    if isinstance(x, np.generic):
        return False
    flags = getattr(x, "flags", None)
    if flags is not None and array_api_compat.is_numpy_array(x):
        return bool(flags.writeable)
    return True


def to_scalar(x) -> float:
    """A Python float from a real number or a 0-d array (one device sync on GPU)."""
    return float(x)


def is_real_number(x) -> bool:
    """A Python/NumPy real number (bools excluded: ``lr=True`` is a bug, not 1.0)."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def to_namespace(value, like):
    """A fresh copy of ``value`` as an array of ``like``'s namespace, device and dtype.

    ``value`` may come from another namespace (a NumPy checkpoint loaded into
    CuPy parameters, or the reverse); such a copy goes through host memory.
    """
    xp = array_namespace(like)
    if is_array(value):
        src_xp = array_namespace(value)
        if src_xp is not xp:
            value = _to_host(value, src_xp)
        elif device(value) != device(like):  # same namespace, another device: move it there
            value = array_api_compat.to_device(value, device(like))
    return xp.asarray(value, dtype=like.dtype, device=device(like), copy=True)


def _to_host(value, src_xp):
    if is_cupy(src_xp):
        return value.get()
    if is_numpy(src_xp):
        return np.asarray(value)
    # array-api-strict and friends implement the buffer protocol or __array__;
    # DLPack is the standard route for the rest.
    try:
        return np.asarray(value)
    except (TypeError, RuntimeError, ValueError, BufferError):
        pass
    try:
        return np.from_dlpack(value)
    except (TypeError, RuntimeError, ValueError, BufferError, AttributeError):
        pass
    # on another device (array-api-strict's 'device1', a torch CUDA tensor):
    # move it to the namespace's host device first
    host = _host_device(src_xp)
    if host is not None:
        try:
            moved = array_api_compat.to_device(value, host)
        except Exception:
            moved = None
        if moved is not None:
            return np.asarray(moved)
    raise TypeError(
        f"cannot copy an array of {getattr(src_xp, '__name__', src_xp)} on device {device(value)} to the host"
    )


def _host_device(xp):
    """The namespace's CPU device (its default device when it names none 'cpu')."""
    try:
        info = xp.__array_namespace_info__()
        devices = list(info.devices())
        default = info.default_device()
    except Exception:
        return None
    for d in devices:
        if "cpu" in str(d).lower():
            return d
    return default
