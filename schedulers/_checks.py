"""Argument checks shared by the pure schedules and the scheduler classes.

Every check raises before anything is changed, with the argument's name and
value in the message: ``TypeError`` for a wrong type, ``ValueError`` for a bad
value of the right type.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


_BUILTIN = frozenset({bool, int, float, str, type(None)})


def unbox(value: Any) -> Any:
    """A NumPy scalar or a 0-d array of any namespace as the Python number (or bool, str) it holds.

    A JSON or npz round trip of a state_dict, and plain NumPy code, hand us
    ``np.float32(0.1)``, ``np.int64(3)``, ``np.bool_(True)`` or ``array(3)``
    where a Python number was meant; every check reads them through this.
    Anything else is returned as it is.
    """
    if type(value) in _BUILTIN:  # exact types: np.float64 subclasses float, np.str_ str
        return value
    if getattr(value, "ndim", None) == 0:  # NumPy scalars have ndim 0 too
        item = getattr(value, "item", None)
        if item is not None:
            try:
                return item()
            except Exception:  # not a scalar after all
                return value
        xp = value.__array_namespace__() if hasattr(value, "__array_namespace__") else None
        if xp is not None:
            # Array API arrays without .item() convert with the builtins.
            if xp.isdtype(value.dtype, "bool"):
                return bool(value)
            if xp.isdtype(value.dtype, "integral"):
                return int(value)
            if xp.isdtype(value.dtype, "real floating"):
                return float(value)
    return value


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but step_size=True is a bug, not a request for 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def native(value: Any) -> Any:
    """``value`` as a Python number when it is a NumPy scalar or 0-d array, else unchanged.

    Stored hyper-parameters are Python numbers: a ``np.float32`` gamma would
    turn every later lr into float32 arithmetic (NumPy 2's promotion rules).
    """
    v = unbox(value)
    return v if type(v) in _BUILTIN else value


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """``value`` as an int, at least ``minimum`` when given."""
    value = unbox(value)
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {name}={value!r}")
    return int(value)


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float in the interval given by ``low``/``high``.

    ``low_open``/``high_open`` exclude the end point. NaN and infinities are
    rejected: no schedule is defined by them.
    """
    value = unbox(value)
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad = bad or (v <= low if low_open else v < low)
    if high is not None:
        bad = bad or (v >= high if high_open else v > high)
    if bad:
        lo = "" if low is None else ("(" if low_open else "[") + repr(low)
        hi = "" if high is None else repr(high) + (")" if high_open else "]")
        where = f"in {lo or '(-inf'}, {hi or 'inf)'}" if (low is not None or high is not None) else "finite"
        raise ValueError(f"{name} must be {where}, got {name}={value!r}")
    return v


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    value = unbox(value)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {name}={value!r}")
    return str(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool: ``True``/``False``, ``np.bool_`` or a 0-d bool array (not 0/1, not a string)."""
    v = unbox(value)
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}: {value!r}")
    return v


def check_lr(name: str, value: Any) -> float:
    """A learning rate: a finite real >= 0 (an optimizer refuses anything else)."""
    return check_real(name, value, low=0.0)


def check_momentum(name: str, value: Any, *, beta: bool = False) -> float:
    """A momentum in [0, 1], or Adam's beta1 in [0, 1).

    torch's cyclic schedulers write any value; outside that range the
    momentum buffer grows without bound, and beta1 = 1 divides by a zero bias
    correction (NaN from the first step).
    """
    v = unbox(value)
    if not _is_real(v):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    v = float(v)
    if not (0.0 <= v < 1.0 if beta else 0.0 <= v <= 1.0):
        why = (
            "betas[0] = 1 divides by a zero bias correction (NaN)" if beta and v == 1.0
            else "outside it the momentum buffer grows without bound and training diverges"
        )
        raise ValueError(f"{name} must be in [0, 1{')' if beta else ']'}: {why}; got {name}={value!r}")
    return v


def is_sequence(value: Any) -> bool:
    """A list, tuple or 1-d array: what a per-group value may arrive as (an npz round trip gives arrays)."""
    if isinstance(value, (list, tuple)):
        return True
    return getattr(value, "ndim", None) == 1 and hasattr(value, "__len__")


def per_group(name: str, value: Any, n_groups: int, check) -> list:
    """A scalar broadcast to ``n_groups`` values, or a list/tuple of exactly that many.

    Each value goes through ``check(name, v)``.
    """
    if is_sequence(value):
        value = list(value)
        if len(value) != n_groups:
            raise ValueError(
                f"{name} must have one value per param group ({n_groups}), "
                f"got {len(value)} values: {name}={list(value)!r}"
            )
        return [check(f"{name}[{i}]", v) for i, v in enumerate(value)]
    v = check(name, value)
    return [v] * n_groups


def check_optimizer(optimizer: Any) -> None:
    """Schedulers drive ``ms_optim`` optimizers only (TypeError otherwise)."""
    # Imported here, not at module level: ms_optim.lr_scheduler imports this
    # package, so a top-level import of ms_optim would be circular. This is the
    # class ms_optim re-exports as ms_optim.Optimizer.
    from ms_optim.optimizer import Optimizer

    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be an ms_optim.Optimizer, got {type(optimizer).__name__}: {optimizer!r}"
        )


def check_last_epoch(last_epoch: Any) -> int:
    return check_int("last_epoch", last_epoch, minimum=-1)


def check_metric(metrics: Any) -> float:
    """ReduceLROnPlateau's metric: a real number or a 0-d real array, as a float.

    A string (``float("0.5")`` would parse it), a bool, a complex number or
    an array of several values is refused. NaN and infinities pass, as in
    torch: a NaN never compares as an improvement, so it counts as a bad step.
    """
    v = unbox(metrics)
    if not _is_real(v):
        shape = getattr(metrics, "shape", None)
        what = f"an array of shape {tuple(shape)}" if shape is not None else type(metrics).__name__
        raise TypeError(f"metrics must be a real number or a 0-d real array, got {what}: {metrics!r}")
    return float(v)
