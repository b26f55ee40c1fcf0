"""Tensor-level stages: what an algorithm does between fused element-wise passes.

An algorithm whose update is one element-wise rule (SGD, Adam...) needs none of
this: the optimizer runs its rule over each bucket in one fused pass. An
algorithm that needs a reduction, a norm or a matrix product over a whole
tensor (Adafactor's row and column means, Muon's Newton–Schulz iteration,
LAMB's trust ratio) overrides :meth:`ms_optim.Optimizer.update`, which receives
one bucket of tensors as :class:`Tensors` and states its update as *stages*:

* **tensor stages** are plain Array API code on the bucket's arrays
  (``t.xp.linalg.vector_norm(g, axis=-1, keepdims=True)``, ``a @ b``), run by
  the arrays' own namespace: NumPy/BLAS on the CPU, CuPy/cuBLAS on the GPU.
  Their results stay arrays, on the device: a stage never calls ``float()``
  on one, so a GPU step never waits for the device;
* **element-wise stages** are rules, exactly like a classic algorithm's, run
  through :meth:`Tensors.elementwise`: traced once, fused into one kernel
  launch (one numba loop, one CUDA multi-tensor launch) for every tensor of
  the bucket, and checked without a GPU as every rule is (NVRTC compile and a
  host run against eager). A tensor stage's results enter them as
  *operands*: a 0-d array per tensor (read from device memory once per
  tensor), or an array that broadcasts along one run of axes (a row or column
  factor); see :mod:`ms_optim.engine.layout`.

Everything in a bucket shares one group, dtype and static configuration, so
one kernel serves all of its tensors; the per-tensor Python cost of a tensor
stage is one namespace call per tensor per operation.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping, Sequence

from .layout import Layout
from .namespace import is_array

__all__ = ["Tensors"]

_KEYWORDS: dict[Any, frozenset | None] = {}


def _keywords(rule: Callable) -> frozenset | None:
    """The keyword-only parameters of ``rule`` (None when it takes ``**kwargs``)."""
    found = _KEYWORDS.get(rule, False)
    if found is False:
        params = inspect.signature(rule).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            found = None
        else:
            found = frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY) - {"xp"}
        _KEYWORDS[rule] = found
    return found


class Tensors:
    """One bucket of tensors, as :meth:`ms_optim.Optimizer.update` sees it.

    Attributes:
      p: the parameters (a list of arrays).
      g: their gradients, in the parameters' dtype (a list of arrays).
      state: state key -> list of state arrays, one per tensor.
      scalars: the host scalars of this step (``_host_scalars`` and
        ``_param_scalars``), shared by every tensor of the bucket.
      static: the static configuration (``_static``, ``_step_static``,
        ``_param_static``), shared likewise.
      xp: the arrays' namespace, for tensor stages.
      group: the param group the tensors belong to (read it; the optimizer
        validated it before the step).
    """

    def __init__(self, backend, xp, params: list, grads: list, state: Mapping[str, list],
                 scalars: Mapping[str, float], static: Mapping[str, Any], group: Mapping | None = None):
        self._backend = backend
        self.group = group
        self.xp = xp
        self.p = params
        self.g = grads
        self.state = dict(state)
        self.scalars = dict(scalars)
        self.static = dict(static)

    def __len__(self) -> int:
        return len(self.p)

    def empty_like(self) -> list:
        """A fresh array per parameter, for a stage's temporary (its contents undefined)."""
        return [self.xp.empty_like(p) for p in self.p]

    def elementwise(self, rule: Callable, arrays: Sequence[list], writes: Sequence[int],
                    operands: Sequence = (), **scalars: float) -> None:
        """One fused element-wise pass over every tensor of the bucket.

        Args:
          rule: ``rule(*arrays, *operands, **scalars, **static, xp)`` returning
            one value per entry of ``writes``; it receives only the scalars and
            static values its keyword parameters name.
          arrays: lists of full arrays, each with one array per tensor of the
            parameter's shape (``t.p``, ``t.g``, a state list, a temporary).
          writes: for each value the rule returns, the index in ``arrays`` of
            the list it is written into, in place.
          operands: per-tensor values a tensor stage computed: each a list with
            one array per tensor (or one array for all tensors) that is 0-d or
            broadcasts against the parameter along one run of axes. They are
            cast to the parameter's dtype; they stay on the device.
          scalars: host numbers for this stage only, beside :attr:`scalars`.
        """
        n = len(self.p)
        columns = [list(a) for a in arrays]
        for k, column in enumerate(columns):
            if len(column) != n:
                raise ValueError(f"arrays[{k}] has {len(column)} entries for {n} tensors")
        xp = self.xp
        op_columns = []
        for j, op in enumerate(operands):
            column = [op] * n if is_array(op) else list(op)
            if len(column) != n:
                raise ValueError(f"operands[{j}] has {len(column)} entries for {n} tensors")
            # NumPy's 0-d arithmetic gives scalars (np.float32), not arrays: asarray makes them arrays again
            cast = [xp.asarray(o, dtype=p.dtype) for o, p in zip(column, self.p)]
            # one value per tensor however it is shaped ((1, 1) row means): read once, not per element
            op_columns.append([xp.reshape(o, ()) if o.ndim and math.prod(o.shape) == 1 else o for o in cast])
        kinds = tuple("scalar" if all(o.ndim == 0 for o in col) else "bcast" for col in op_columns)
        layout = Layout(len(columns), tuple(writes), kinds)
        tensors = [tuple(c[t] for c in columns) + tuple(c[t] for c in op_columns) for t in range(n)]
        all_scalars = {**self.scalars, **scalars}
        names = _keywords(rule)
        if names is not None:
            all_scalars = {k: v for k, v in all_scalars.items() if k in names}
            static = {k: v for k, v in self.static.items() if k in names}
        else:
            static = self.static
        self._backend.run_stage(rule, static, all_scalars, layout, tensors, xp)
