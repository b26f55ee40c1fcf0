"""Argument checks shared by every optimizer, with torch.optim's messages.

A wrong *type* raises TypeError naming the argument and what it got; a value
out of range raises ValueError in torch's words (``Invalid learning rate:
-1.0``), so code and habits carried over from torch keep working. The checks
run when an optimizer is built, when a group is added or loaded, and before
every step (a scheduler or a user may have written a group's values since).
"""

from __future__ import annotations

import math

import numpy as np

from .engine.namespace import is_array, is_real_number, to_scalar

__all__ = [
    "check_betas",
    "check_bool",
    "check_finite",
    "check_momentum",
    "check_lr",
    "check_non_negative",
    "check_real",
    "check_unit_interval",
]


def check_real(name: str, value) -> float:
    """``value`` as a float; TypeError unless it is a real number or a 0-d real array."""
    if is_array(value):
        if getattr(value, "ndim", None) != 0:
            raise ValueError(f"{name} must be a number or a 0-d array, got an array of shape {tuple(value.shape)}")
        if str(value.dtype).startswith(("complex", "bool")):
            raise TypeError(f"{name} must be a real number, got an array of dtype {value.dtype}")
        return to_scalar(value)
    if not is_real_number(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    return float(value)


def check_lr(lr) -> float:
    value = check_real("lr", lr)
    if not (0.0 <= value < math.inf):
        raise ValueError(f"Invalid learning rate: {value}")
    return value


def check_non_negative(name: str, value, label: str | None = None) -> float:
    """``0 <= value < inf``, else ``Invalid {label} value: {value}`` (torch's wording)."""
    v = check_real(name, value)
    if not (0.0 <= v < math.inf):
        raise ValueError(f"Invalid {label or name} value: {v}")
    return v


def check_unit_interval(name: str, value, label: str | None = None, *, closed: bool = False) -> float:
    """``0 <= value < 1`` (or ``<= 1`` when ``closed``)."""
    v = check_real(name, value)
    if not (0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0):
        raise ValueError(f"Invalid {label or name} value: {v}")
    return v


def check_betas(betas, name: str = "betas") -> tuple[float, float]:
    """A pair of coefficients, each in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{name} must be a pair of floats, got {type(betas).__name__}: {betas!r}")
    values = tuple(check_real(f"{name}[{i}]", b) for i, b in enumerate(betas))
    for i, b in enumerate(values):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b}")
    return values  # type: ignore[return-value]


def check_bool(name: str, value) -> bool:
    """A Python bool, a NumPy bool (``np.bool_``, what a JSON/npz round trip can give) or a 0-d bool array."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if is_array(value) and getattr(value, "ndim", None) == 0 and str(value.dtype) == "bool":
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__}: {value!r}")


def check_finite(name: str, value) -> float:
    """A finite real number (or 0-d array), else ValueError naming ``name``."""
    v = check_real(name, value)
    if not math.isfinite(v):
        raise ValueError(f"Invalid {name} value: {v} (must be finite)")
    return v


def check_momentum(name: str, value, label: str | None = None) -> float:
    """A momentum-like coefficient in ``[0, 1]``.

    torch takes any non-negative value, but above 1 the buffer grows by that
    factor every step, so the update can only diverge: refused with that reason.
    """
    v = check_non_negative(name, value, label)
    if v > 1.0:
        raise ValueError(
            f"Invalid {label or name} value: {v} (must be at most 1: above it the buffer grows by "
            f"that factor every step and the update diverges)"
        )
    return v
