"""The eager backend: call the rule on real arrays, write the results back in place.

It works on any Array API namespace that supports ``x[...] = y`` and is the
reference the compiled backends are tested against.

Two details keep it identical to a traced rule:

* the rule sees :class:`RuleNamespace`, not the raw ``xp``: the same short
  list of functions the tracer offers (so a rule that runs eagerly also
  traces), and a function applied to Python numbers only is computed with
  Python floats, exactly as the tracer hoists it to the host. Without that,
  ``xp.sqrt(bc2)`` would return a float64 NumPy scalar and silently promote
  float32 math to float64.
* float16 (and bfloat16) storage is computed in float32, the compute dtype a
  CUDA kernel uses, and rounded once when written back.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from .layout import Layout
from .namespace import is_array
from .tracer import _PY_OPS, SYMBOLIC_XP_FUNCTIONS

__all__ = ["RuleNamespace", "compute_dtype", "run_eager", "EagerBackend"]


_PY_NUMBER_TYPES = (int, float, bool)


class RuleNamespace:
    """``xp`` as a rule sees it on real arrays (see module docstring)."""

    def __init__(self, xp):
        self._xp = xp
        for name in SYMBOLIC_XP_FUNCTIONS:
            setattr(self, name, self._wrap(name))

    def _wrap(self, name: str) -> Callable:
        fn = getattr(self._xp, name)
        py = _PY_OPS.get(name)
        if name == "square":
            fn = lambda x: x * x  # noqa: E731  (the tracer records x * x too)
            py = lambda x: x * x  # noqa: E731

        def call(*args):
            # Exactly Python numbers: NumPy's 0-d arithmetic yields np.float64,
            # a float subclass, which must stay on the array path (xp.sign of
            # it is an array op; the Python-number sign would fail on it).
            if py is not None and all(type(a) in _PY_NUMBER_TYPES for a in args):
                return py(*args)
            return fn(*args)

        call.__name__ = name
        return call

    def __getattr__(self, name):
        raise AttributeError(
            f"xp.{name} is not available to a rule; it may use {', '.join(SYMBOLIC_XP_FUNCTIONS)}"
        )


def compute_dtype(xp, dtype):
    """The dtype a rule computes in for storage ``dtype``: float32 for half types."""
    if dtype == getattr(xp, "float16", None) or str(dtype).endswith("bfloat16"):
        return xp.float32
    return dtype


def run_eager(
    rule: Callable,
    arrays: Sequence[Any],
    n_outputs: int,
    scalars: Mapping[str, float],
    static: Mapping[str, Any],
    xp,
    layout: Layout | None = None,
) -> None:
    """Apply ``rule`` to one tensor's arrays and write its outputs back in place.

    ``arrays`` are the rule's positional arguments. With no ``layout`` they are
    ``(p, g, *state)``, the rule returns ``(p, *state)`` and output ``k`` is
    written into input ``0`` (p) or ``k + 1`` (state); otherwise output ``k``
    is written into ``arrays[layout.writes[k]]`` and the operands after the
    full arrays broadcast as arrays do. The outputs are the in-place targets,
    as in a CUDA kernel's output list.
    """
    storage = arrays[0].dtype
    work = compute_dtype(xp, storage)
    if work != storage:
        inputs = [xp.astype(a, work) for a in arrays]
    else:
        inputs = list(arrays)
    results = rule(*inputs, **scalars, **static, xp=RuleNamespace(xp))
    if not isinstance(results, tuple):
        results = (results,)
    if len(results) != n_outputs:
        raise TypeError(f"rule {rule.__name__} returned {len(results)} values, expected {n_outputs}")
    targets = [arrays[0], *arrays[2:]] if layout is None else [arrays[w] for w in layout.writes]
    for target, value in zip(targets, results):
        if is_array(value) and value.dtype != target.dtype:
            value = xp.astype(value, target.dtype)
        target[...] = value


class EagerBackend:
    """Runs each parameter through :func:`run_eager`; one call per (group, step) bucket."""

    name = "eager"

    def run_stage(self, rule, static, scalars, layout: Layout, tensors, xp) -> None:
        """One element-wise stage: ``tensors[t]`` holds tensor ``t``'s positional arrays."""
        for arrays in tensors:
            run_eager(rule, arrays, len(layout.writes), scalars, static, xp, layout)

    def run(self, rule, static, scalars, params, grads, states, xp) -> None:
        n_outputs = 1 + (len(states[0]) if states else 0)
        for p, g, st in zip(params, grads, states):
            run_eager(rule, (p, g, *st), n_outputs, scalars, static, xp)
