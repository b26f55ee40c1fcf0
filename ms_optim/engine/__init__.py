"""The rule engine: namespace detection, the tracer, and the backends that run rules.

Backends are chosen per array namespace by :func:`backend_for`. Only the eager
backend is imported eagerly; a compiled backend registers a loader here and is
imported the first time an optimizer asks for it, so ``import ms_optim`` never
imports CuPy or numba.

The contract between an algorithm and a backend:

* a *rule* is an element-wise function over array math (:mod:`.tracer` says
  what it may do). A backend runs it over a bucket of tensors in one pass:
  ``run(rule, static, scalars, params, grads, states, xp)`` for the classic
  ``rule(p, g, *state) -> (p, *state)``, and
  ``run_stage(rule, static, scalars, layout, tensors, xp)`` for any
  :class:`~.layout.Layout`: which full arrays are read and written in place,
  and which operands (0-d per-tensor values, or arrays broadcasting along one
  run of axes) are read from device memory. eager calls the rule on real
  arrays; cpu (numba) and cuda (CuPy) trace it once into one fused loop or
  multi-tensor kernel per (rule, static configuration, layout, dtype).
* *tensor-level stages* (:mod:`.stages`) are what an algorithm does between
  element-wise passes: Array API code over whole tensors (reductions, norms,
  matrix products) run by the arrays' own namespace, whose results stay
  arrays on the device and enter the next pass as operands. An algorithm that
  needs them overrides ``Optimizer.update(t)``; the rest keep one rule and one
  pass. Backends never name an algorithm.
"""

from __future__ import annotations

import importlib
from typing import Callable

from .eager import EagerBackend
from .namespace import is_cupy, is_numpy

__all__ = ["BACKENDS", "backend_for", "register_backend"]

#: name -> (predicate on xp saying whether it can serve that namespace, loader)
BACKENDS: dict[str, tuple[Callable, Callable]] = {
    "eager": (lambda xp: True, EagerBackend),
}

#: the order "auto" tries, per namespace kind
_AUTO_ORDER = ("cuda", "cpu", "eager")

_instances: dict[str, object] = {}


def register_backend(name: str, serves: Callable, loader: Callable | str) -> None:
    """Make backend ``name`` available. ``loader`` is a class or 'module:Class' path."""
    BACKENDS[name] = (serves, loader)
    _instances.pop(name, None)


def _load(name: str):
    if name not in _instances:
        loader = BACKENDS[name][1]
        if isinstance(loader, str):
            module, _, attr = loader.partition(":")
            loader = getattr(importlib.import_module(module), attr)
        _instances[name] = loader()
    return _instances[name]


def backend_for(xp, name: str | None = None):
    """The backend instance that runs rules on arrays of ``xp``.

    Args:
      xp: the parameters' namespace.
      name: 'eager', a registered compiled backend, or None / 'auto' for the
        fastest available one that serves ``xp`` (falling back to eager when a
        compiled backend's optional dependency is missing).
    Raises:
      ValueError: ``name`` is unknown or does not serve ``xp``.
    """
    if name not in (None, "auto"):
        if name not in BACKENDS:
            raise ValueError(f"Invalid backend: {name!r} (known: {', '.join(sorted(BACKENDS))})")
        if not BACKENDS[name][0](xp):
            raise ValueError(f"Invalid backend: {name!r} cannot run arrays of {xp.__name__}")
        return _load(name)
    for candidate in _AUTO_ORDER:
        if candidate in BACKENDS and BACKENDS[candidate][0](xp):
            try:
                backend = _load(candidate)
            except ImportError:
                continue
            # a backend may serve 'auto' through a variant of itself (the cpu
            # backend's compiles only buckets large enough to repay the JIT)
            return getattr(backend, "auto_variant", backend)
    return _load("eager")


# CuPy arrays: fused kernels; imports CuPy the first time an optimizer meets its arrays.
register_backend("cuda", is_cupy, "ms_optim.engine.cuda:CudaBackend")

# NumPy arrays: one fused numba loop per bucket; numba is optional and imported
# only by the first compile, which 'auto' makes only for large buckets.
register_backend("cpu", is_numpy, "ms_optim.engine.cpu:CpuBackend")
