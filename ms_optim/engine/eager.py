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

A step is all-or-nothing (:class:`StepWrites`): inside an optimizer step,
eager writes of a classic rule are held back until every tensor of every
bucket is computed, and other writes to persistent arrays (a staged
algorithm's, or an array a compiled kernel is about to overwrite) are
journaled, so a step that raises half-way puts back what it wrote.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable, Iterable, Mapping, Sequence

from .layout import Layout
from .namespace import array_namespace, is_array
from .tracer import _PY_OPS, SYMBOLIC_XP_FUNCTIONS

__all__ = ["EagerBackend", "RuleNamespace", "StepWrites", "assign", "compute_dtype", "run_eager"]


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


#: the :class:`StepWrites` of the optimizer step running in this thread (or task), if any
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("ms_optim_step_writes", default=None)


class StepWrites:
    """The writes one optimizer step makes outside compiled kernels, so that a failed step changes nothing.

    A step is active (``with writes:``) while its buckets run. Then:

    * ``defer=True`` (a classic rule: no array is read after it is written in
      the same step): :func:`run_eager` and :func:`assign` only record
      ``(target, value)``; :meth:`commit` writes them all once every tensor is
      computed. Nothing is copied: the values were computed anyway.
    * ``defer=False`` (a staged algorithm reads what an earlier stage wrote):
      a write to a *persistent* array (a parameter or a state array, as
      ``persistent()`` lists them; not a stage's temporary) first saves a copy
      of its old contents, once per array per step.

    :meth:`save` journals an array explicitly: the optimizer calls it for the
    arrays a compiled kernel will overwrite, when something that may still
    fail comes after that kernel in the step. :meth:`undo` puts every saved
    array back, newest first. Setting an array's elements to same-dtype,
    same-shape values (``commit``, ``undo``) cannot fail, so neither can
    leave the step half-done.
    """

    def __init__(self, *, defer: bool, persistent: Callable[[], Iterable] | None = None):
        self.defer = defer
        self._persistent = persistent
        self._persistent_ids: set[int] | None = None
        self._deferred: list[tuple[Any, Any]] = []
        self._saved: list[tuple[Any, Any]] = []
        self._saved_ids: set[int] = set()
        self._token = None

    def __enter__(self):
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc):
        _ACTIVE.reset(self._token)
        return False

    def _is_persistent(self, target) -> bool:
        if self._persistent is None:
            return True
        if self._persistent_ids is None:  # built on the first eager write: compiled steps never pay
            self._persistent_ids = {id(a) for a in self._persistent()}
        return id(target) in self._persistent_ids

    def write(self, target, value) -> None:
        """``target[...] = value``, deferred or journaled as the step needs."""
        if self.defer:
            self._deferred.append((target, value))
            return
        if self._is_persistent(target):
            self.save(target)
        target[...] = value

    def save(self, target) -> None:
        """Keep a copy of ``target``'s contents (once per step) for :meth:`undo`."""
        key = id(target)
        if key in self._saved_ids:
            return
        old = array_namespace(target).asarray(target, copy=True)
        self._saved.append((target, old))
        self._saved_ids.add(key)

    def commit(self) -> None:
        """Make the deferred writes (after every tensor of the step was computed)."""
        deferred, self._deferred = self._deferred, []
        for target, value in deferred:
            target[...] = value

    def undo(self) -> None:
        """Put back every journaled array and drop the deferred writes."""
        self._deferred = []
        saved, self._saved = self._saved, []
        for target, old in reversed(saved):
            target[...] = old
        self._saved_ids.clear()


def assign(target, value) -> None:
    """``target[...] = value`` for a tensor stage's write into a parameter or state array.

    Inside an optimizer step the write is journaled (or deferred), so the step
    stays all-or-nothing; outside one it is a plain assignment.
    """
    writes = _ACTIVE.get()
    if writes is None:
        target[...] = value
    else:
        writes.write(target, value)


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
    # every output is cast before the first is written: a cast that fails
    # (MemoryError) must not leave this tensor's first outputs written
    values = [xp.astype(v, t.dtype) if is_array(v) and v.dtype != t.dtype else v
              for t, v in zip(targets, results)]
    writes = _ACTIVE.get()
    for target, value in zip(targets, values):
        if writes is None:
            target[...] = value
        else:
            writes.write(target, value)


def noop() -> None:
    """A launch with nothing left to do (the work was done when it was prepared)."""
    return None


class EagerBackend:
    """Runs each parameter through :func:`run_eager`; one call per (group, step) bucket."""

    name = "eager"

    def run_stage(self, rule, static, scalars, layout: Layout, tensors, xp) -> None:
        """One element-wise stage: ``tensors[t]`` holds tensor ``t``'s positional arrays."""
        for arrays in tensors:
            run_eager(rule, arrays, len(layout.writes), scalars, static, xp, layout)

    def prepare(self, rule, static, scalars, layout: Layout, tensors, xp) -> Callable[[], None]:
        """:meth:`run_stage` now (inside a step its writes are held back until the step commits)."""
        self.run_stage(rule, static, scalars, layout, tensors, xp)
        return noop

    def run(self, rule, static, scalars, params, grads, states, xp) -> None:
        n_outputs = 1 + (len(states[0]) if states else 0)
        for p, g, st in zip(params, grads, states):
            run_eager(rule, (p, g, *st), n_outputs, scalars, static, xp)
