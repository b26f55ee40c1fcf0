"""Reading and writing hyper-parameters in an optimizer's param groups.

A group's ``lr`` (or ``momentum``, or ``betas[0]``) is a Python number or a
0-d array of any Array API namespace. Schedules are computed on the host in
Python floats; an array is then updated in place (``lr[...] = value``), never
replaced, so whoever holds the array (a compiled kernel, a user) sees the new
value. NumPy scalars (``np.float64``) are immutable and are replaced like
Python numbers.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


#: the types a group value most often has: none of them is an array (a fast path, checked per step)
_PLAIN = frozenset({float, int, bool, str, tuple, list, type(None)})


def _is_mutable_array(value: Any) -> bool:
    if type(value) in _PLAIN:
        return False
    return not isinstance(value, (numbers.Number, str, bytes)) and hasattr(value, "__setitem__") and hasattr(
        value, "__array_namespace__"
    )


def host(value: Any) -> float:
    """A group value as a Python float (a 0-d array is read back once)."""
    return float(value)


def _is_float_array(value: Any) -> bool:
    xp = value.__array_namespace__()
    return getattr(value, "ndim", None) == 0 and xp.isdtype(value.dtype, "real floating")


def check_target(where: str, value: Any) -> None:
    """Raise unless a schedule can write into ``value`` (a group's ``lr``, ``momentum`` or ``betas[0]``).

    A Python or NumPy real number is replaced; a 0-d real floating array is
    written in place. An integer (or bool, complex, n-d) array is refused:
    writing 0.05 into it would silently store 0.
    """
    if type(value) is float:  # the common case, once per group per step
        return
    if _is_mutable_array(value):
        if not _is_float_array(value):
            raise TypeError(
                f"{where} is a {getattr(value, 'ndim', '?')}-d array of dtype {value.dtype}: a scheduler "
                "writes fractional values into it in place and needs a 0-d real floating array "
                f"(e.g. float32 or float64), got {value!r}"
            )
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must be a real number or a 0-d real floating array, got "
                        f"{type(value).__name__}: {value!r}")


def check_value(where: str, value: Any, *, written: bool = True) -> float:
    """A group's ``lr`` (or, ``written=False``, a value only read: ``initial_lr``) as a float, finite and >= 0."""
    if written:
        check_target(where, value)
    elif isinstance(value, bool) or not (isinstance(value, numbers.Real) or (
            _is_mutable_array(value) and getattr(value, "ndim", None) == 0
            and value.__array_namespace__().isdtype(value.dtype, ("integral", "real floating")))):
        raise TypeError(f"{where} must be a real number or a 0-d real array, got {type(value).__name__}: {value!r}")
    v = host(value)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{where} must be a finite learning rate >= 0, got {value!r}")
    return v


def check_momentum_target(i: int, group: dict, use_beta1: bool) -> None:
    """The momentum a cyclic schedule will write into ``group`` can be written (see :func:`check_target`)."""
    if not use_beta1:
        check_target(f"param_groups[{i}]['momentum']", group.get("momentum"))
        return
    betas = group.get("betas")
    if not isinstance(betas, (list, tuple)) or len(betas) < 1:
        raise TypeError(f"param_groups[{i}]['betas'] must be a tuple (beta1, beta2), got {betas!r}")
    check_target(f"param_groups[{i}]['betas'][0]", betas[0])


def write(group: dict, key: str, value: float) -> None:
    """Set ``group[key]`` to ``value``, in place when it holds an array."""
    current = group.get(key)
    if _is_mutable_array(current):
        current[...] = value
    else:
        group[key] = value


def write_momentum(group: dict, value: float, use_beta1: bool) -> None:
    """Set the momentum a cyclic schedule drives: ``betas[0]`` or ``momentum``."""
    if not use_beta1:
        write(group, "momentum", value)
        return
    betas = group["betas"]
    if _is_mutable_array(betas[0]):
        betas[0][...] = value
    else:
        group["betas"] = (value, *betas[1:])


def start_momentum_cycle(optimizer, max_momentums, base_momentums, use_beta1: bool) -> None:
    """Begin a momentum cycle (CyclicLR, OneCycleLR): each group at its max, bounds recorded."""
    for m_max, m_base, group in zip(max_momentums, base_momentums, optimizer.param_groups, strict=True):
        write_momentum(group, m_max, use_beta1)
        group["max_momentum"] = m_max
        group["base_momentum"] = m_base


def lrs(optimizer) -> list[float]:
    """Every group's ``lr`` as a Python float: what ``get_last_lr()`` returns."""
    return [host(group["lr"]) for group in optimizer.param_groups]


# ------------------------------------------------------------ undo on failure


def _copy_array(value):
    # The Array API spelling of a copy; NumPy, CuPy and array-api-strict all take it.
    return value.__array_namespace__().asarray(value, copy=True)


class GroupsSnapshot:
    """The hyper-parameters of every param group, restorable bit for bit.

    A scheduler call that fails after writing into the groups puts them back
    with :meth:`restore`: the same dict objects, the same values (the very
    objects for numbers and tuples) and the same contents for 0-d arrays
    written in place. Keys added since are removed. Parameters are not copied
    (schedulers never touch them).
    """

    __slots__ = ("_groups", "_list", "_saved")

    def __init__(self, optimizer) -> None:
        groups = getattr(optimizer, "param_groups", None)
        self._list = groups
        self._groups = list(groups) if isinstance(groups, list) else []
        self._saved = []
        for group in self._groups:
            items = dict(group)
            arrays = []
            for k, v in items.items():
                t = type(v)
                if k == "params" or t is float or t is int or t is bool or t is str:
                    continue
                if t is tuple or t is list:
                    arrays.extend((e, _copy_array(e)) for e in v if _is_mutable_array(e))
                elif _is_mutable_array(v):
                    arrays.append((v, _copy_array(v)))
            self._saved.append((items, arrays))

    def restore(self) -> None:
        if isinstance(self._list, list):
            self._list[:] = self._groups
        for group, (items, arrays) in zip(self._groups, self._saved):
            group.clear()
            group.update(items)
            for array, saved in arrays:
                try:
                    array[...] = saved
                except (ValueError, TypeError, RuntimeError):
                    pass  # not writable (read-only): then no step can have written it either
