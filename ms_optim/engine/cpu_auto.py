"""What ``backend='auto'`` runs NumPy arrays with: the cpu backend where a compile pays.

With numba installed, a bucket runs compiled when its kernel already exists
in the process or when it has at least ``AUTO_MIN_ELEMENTS`` (262,144)
elements; smaller buckets run eagerly and never import numba. The threshold
is where the one-time cost (importing numba, its start-up and the compile, or
the disk-cache load) is repaid within a few hundred steps by the fused loop;
``benchmarks/bench_cpu.py`` measures both sides (its first-step and
per-step columns). So the demo's MLP (10K parameters) and the test suite's
tiny arrays stay eager and pay nothing, while any model large enough to care
gets the fused loop. A kernel that fails to build under ``auto`` warns once
and that rule runs eagerly from then on.

A stage with a broadcast operand (Adafactor's factored second moment) runs
eagerly under ``auto``: its index arithmetic keeps the loop from vectorising,
and NumPy's broadcasting loops came out ahead in ``benchmarks/bench_stages.py``.
``backend='cpu'`` still compiles it.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from .cpu_codegen import DTYPES
from .layout import Layout, classic_stage
from .eager import noop as _noop

__all__ = ["AUTO_MIN_ELEMENTS", "AutoCpuBackend"]

#: under backend='auto', the smallest bucket that triggers a compile (see the module docstring)
AUTO_MIN_ELEMENTS = 1 << 18


class AutoCpuBackend:
    """The cpu backend as ``backend='auto'`` uses it: compile only where it pays (module docstring)."""

    name = "cpu"

    def __init__(self, cpu):
        self.cpu = cpu
        self.min_elements = AUTO_MIN_ELEMENTS
        self._failed: set = set()

    def run(self, rule, static, scalars, params, grads, states, xp) -> None:
        if params:
            self.run_stage(rule, static, scalars, *classic_stage(params, grads, states), xp)

    def run_stage(self, rule, static, scalars, layout: Layout, tensors, xp) -> None:
        self.prepare(rule, static, scalars, layout, tensors, xp)()

    def _kernel(self, rule, static, scalar_names, layout: Layout, storage: str, elements: int):
        """The kernel to use, or None to run eagerly (building it when the bucket is large enough)."""
        cpu = self.cpu
        # A broadcast operand's index keeps the loop from vectorising (module docstring).
        if "bcast" in layout.operands or storage not in DTYPES:
            return None
        key = cpu.kernel_key(rule, static, scalar_names, layout, storage)
        kernel = cpu._kernels.get(key)
        if kernel is None and key not in self._failed and elements >= self.min_elements:
            try:
                kernel = cpu.kernel(rule, static, scalar_names, layout, storage)
            except Exception as exc:  # an optimisation failed: the eager result is still right
                self._failed.add(key)
                warnings.warn(
                    f"ms_optim cpu backend: running {getattr(rule, '__name__', rule)} eagerly "
                    f"({type(exc).__name__}: {exc})",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return kernel

    def prepare(self, rule, static, scalars, layout: Layout, tensors, xp) -> Callable[[], None]:
        if not tensors:
            return _noop
        storage = np.dtype(tensors[0][0].dtype).name
        kernel = self._kernel(rule, static, scalars.keys(), layout, storage,
                              sum(arrays[0].size for arrays in tensors))
        if kernel is not None:
            return self.cpu.prepare_kernel(kernel, rule, static, scalars, tensors, xp)
        self.cpu._eager(rule, static, scalars, layout, tensors, xp)
        return _noop

    def program(self, rule, static, scalar_names, params, states):
        """:meth:`CpuBackend.program` for a bucket large enough (or already compiled), else None."""
        if not params:
            return None
        storage = np.dtype(params[0].dtype).name
        layout = Layout.of_state(len(states[0]))
        if self._kernel(rule, static, scalar_names, layout, storage, sum(p.size for p in params)) is None:
            return None
        return self.cpu.program(rule, static, scalar_names, params, states)
