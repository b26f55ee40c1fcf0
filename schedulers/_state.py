"""Checks for a scheduler's state_dict: each key's type and domain, before anything is applied.

``load_state_dict`` first runs every check of a class's spec (a dict
``key -> (check, required)``) over the whole state, nested schedulers
included, and only then assigns. A check is ``check(name, value) -> value``:
it raises TypeError/ValueError naming ``name`` (``state_dict['base_lrs'][1]``)
or returns the value in the form the scheduler keeps (Python numbers, lists,
a Counter), so a state that went through JSON (tuples as lists, dict keys as
strings) or npz (0-d arrays for numbers, arrays for lists) loads as the
original did.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any, Callable

from ._checks import (
    _is_int,
    _is_real,
    check_bool,
    check_choice,
    check_int,
    check_lr,
    check_momentum,
    check_real,
    is_sequence,
    native,
    unbox,
)

Check = Callable[[str, Any], Any]

#: keys older torch versions wrote that mean nothing today: accepted and dropped
IGNORED = frozenset({"verbose"})
#: the key naming the class that wrote a state (torch writes none)
CLASS_KEY = "_class"


def integer(minimum: int | None = None) -> Check:
    return lambda name, v: check_int(name, v, minimum=minimum)


def real(**bounds) -> Check:
    """A finite real in the given bounds, kept as the Python int or float it was (torch keeps it raw)."""

    def check(name, v):
        check_real(name, v, **bounds)
        return native(v)

    return check


def extended_real(name: str, v: Any) -> float:
    """A real number that may be infinite but not NaN (ReduceLROnPlateau's ``best``)."""
    u = unbox(v)
    if not _is_real(u):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}: {v!r}")
    if math.isnan(float(u)):
        raise ValueError(f"{name} must not be NaN, got {name}={v!r}")
    return native(u) if _is_int(u) else float(u)


def lr(name: str, v: Any) -> float:
    return check_lr(name, v)


def boolean(name: str, v: Any) -> bool:
    return check_bool(name, v)


def false_flag(name: str, v: Any) -> bool:
    """A flag that is True only inside a step: a saved state always holds False."""
    if check_bool(name, v):
        raise ValueError(f"{name} must be False in a saved state (it is True only during a step), got {v!r}")
    return False


def choice(*options: str) -> Check:
    return lambda name, v: check_choice(name, v, options)


def optional(check: Check) -> Check:
    """``None`` or what ``check`` accepts."""
    return lambda name, v: None if v is None else check(name, v)


def sequence(name: str, v: Any, length: int | None = None) -> list:
    if not is_sequence(v):
        raise TypeError(f"{name} must be a list, got {type(v).__name__}: {v!r}")
    items = list(v)
    if length is not None and len(items) != length:
        raise ValueError(
            f"{name} must have one value per param group ({length}), got {len(items)}: {name}={items!r}"
        )
    return items


def per_group(n_groups: int, check: Check) -> Check:
    """A list of ``n_groups`` values, each passing ``check``."""

    def check_list(name, v):
        return [check(f"{name}[{i}]", e) for i, e in enumerate(sequence(name, v, n_groups))]

    return check_list


def lr_list(n_groups: int) -> Check:
    return per_group(n_groups, lr)


def momentum_list(n_groups: int) -> Check:
    # beta1 < 1 is checked once use_beta1 is known (see CyclicLR, OneCycleLR).
    return per_group(n_groups, lambda name, v: check_momentum(name, v))


def milestone_counter(name: str, v: Any) -> Counter:
    """MultiStepLR's milestones: torch's Counter, the dict JSON makes of it (keys as strings), or a list."""
    if isinstance(v, Mapping):
        out: Counter = Counter()
        for key, count in v.items():
            k = unbox(key)
            if isinstance(k, str) and k.strip().lstrip("-").isdigit():
                k = int(k)
            m = check_int(f"{name} key {key!r}", k, minimum=0)
            out[m] = check_int(f"{name}[{key!r}]", count, minimum=1)
        return out
    if is_sequence(v):
        return Counter(check_int(f"{name}[{i}]", m, minimum=0) for i, m in enumerate(v))
    raise TypeError(f"{name} must be a Counter (dict of milestone -> count) or a list, got {type(v).__name__}: {v!r}")


def increasing_ints(name: str, v: Any, length: int) -> list[int]:
    items = sequence(name, v)
    if len(items) != length:
        raise ValueError(f"{name} must hold {length} milestones, got {len(items)}: {name}={items!r}")
    ms = [check_int(f"{name}[{i}]", m, minimum=0) for i, m in enumerate(items)]
    if any(b <= a for a, b in zip(ms, ms[1:])):
        raise ValueError(f"{name} must be strictly increasing, got {name}={ms!r}")
    return ms


def callable_state(name: str, v: Any) -> dict | None:
    """A callable object's ``__dict__`` as torch saves it (None for a plain function)."""
    if v is None:
        return None
    if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
        raise TypeError(f"{name} must be None or a dict of attributes with str keys, got {type(v).__name__}: {v!r}")
    return {k: native(e) for k, e in v.items()}  # 0-d arrays from npz back to numbers


def check_state(owner, state_dict: Any, spec: dict[str, tuple[Check, bool]], where: str) -> dict:
    """``state_dict`` checked whole against ``spec``: the values to assign, keyed as the spec."""
    cls = type(owner).__name__
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{where} must be a dict (a {cls}.state_dict()), got {type(state_dict).__name__}: "
                        f"{state_dict!r}")
    mark = state_dict.get(CLASS_KEY)
    if mark is not None:
        mark = unbox(mark)
        if mark not in {c.__name__ for c in type(owner).__mro__}:
            raise ValueError(f"{where} is the state of a {mark!r}, not of a {cls}: load it into a {mark}")
    unknown = [k for k in state_dict if k not in spec and k != CLASS_KEY and k not in IGNORED]
    missing = [k for k, (_, required) in spec.items() if required and k not in state_dict]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"keys a {cls} state does not have: {sorted(map(repr, unknown))}")
        if missing:
            parts.append(f"missing keys: {missing}")
        raise ValueError(f"{where} is not the state of a {cls} ({'; '.join(parts)}): "
                         "is it another scheduler's state_dict?")
    return {k: check(f"{where}[{k!r}]", state_dict[k]) for k, (check, _) in spec.items() if k in state_dict}
