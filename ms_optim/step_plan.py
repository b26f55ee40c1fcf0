"""What one optimizer step plans, and what of it is kept for the next step.

:meth:`ms_optim.Optimizer.step` sorts the parameters that got a gradient into
*histories* (parameters at the same point of their history: same group, same
host numbers such as ``'step'``, so one call of the algorithm's hooks serves
them all) and *buckets* (same group, namespace, dtype, state keys, static
configuration and host scalars: one fused launch each).

After a step that went through the full path, the optimizer keeps its plan
(:class:`StepPlan`): the buckets with their parameters and state arrays, each
bucket's backend program (for the cpu backend, the table of addresses), and
each history's members. The next step reuses it when nothing it was built
from has changed (:meth:`StepPlan.usable` and the checks in
``Optimizer._planned_step``), so its Python cost per parameter is a few
attribute reads: the gradient's type, shape and dtype, and the write of the
new ``'step'``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .engine.eager import noop as _noop
from .engine.layout import Layout
from .engine.namespace import device

__all__ = ["GRAD_MULTIPLIERS", "Bucket", "History", "StepPlan", "multiplying"]

#: a bucket whose backend program has not been asked for yet
_UNBUILT = object()


class History:
    """Parameters of one group at the same point of their history: one call of the hooks per step."""

    __slots__ = ("gi", "param", "plan", "commits", "buckets", "state", "members")

    def __init__(self, gi: int, param, plan: tuple):
        self.gi = gi
        self.param = param  # the parameter the per-parameter hooks see (None: the algorithm has none)
        self.plan = plan  # (scalars, static, host numbers after the step, bucket signature)
        self.commits: list = []  # (param, new state arrays) of the full path's step
        self.buckets: list = []
        self.state: dict | None = None  # a member's live state dict: what the hooks read next step
        self.members: list = []  # every member's state dict, zero-size parameters included


class Bucket:
    """The tensors one launch updates, with what the launch needs."""

    __slots__ = ("gi", "xp", "p_keys", "scalars", "static", "backend", "indices", "params", "grads", "arrays",
                 "histories", "program", "elements")

    def __init__(self, gi: int, xp, p_keys: tuple, scalars: dict, static: dict, backend):
        self.gi = gi
        self.xp = xp
        self.p_keys = p_keys
        self.scalars = scalars
        self.static = static
        self.backend = backend
        self.indices: list[int] = []  # each tensor's place in the step's gradient list
        self.params: list = []
        self.grads: list | None = []
        self.arrays: list[list] = []  # each tensor's state arrays, in p_keys order
        self.histories: list[History] = []
        self.program: Any = _UNBUILT
        self.elements = 0

    def add(self, index: int, p, g, arrays: list, history: History) -> None:
        self.indices.append(index)
        self.params.append(p)
        self.grads.append(g)
        self.arrays.append(arrays)
        self.elements += math.prod(p.shape)
        if not history.buckets or history.buckets[-1] is not self:
            if self not in history.buckets:
                history.buckets.append(self)
                self.histories.append(history)

    def prepare(self, rule: Callable, planned: bool, multipliers: dict | None = None) -> Callable[[], None]:
        """All of this bucket's step that can fail; returns the launch, which cannot.

        ``rule`` is the algorithm's, or its :func:`multiplying` form for the
        gradient multipliers given (``{'inv_grad_scale': ..., 'clip_coef':
        ...}``, host numbers). A backend without ``prepare`` (one registered
        from outside) runs here.
        """
        backend = self.backend
        scalars = {**self.scalars, **multipliers} if multipliers else self.scalars
        if planned:
            if self.program is _UNBUILT:
                self.program = {}
            program = self.program.get(rule, _UNBUILT)
            if program is _UNBUILT:
                make = getattr(backend, "program", None)
                program = self.program[rule] = None if make is None else make(
                    rule, self.static, tuple(scalars), self.params, self.arrays)
            if program is not None:
                launch = program.bind(scalars, self.grads)
                if launch is not None:
                    return launch
        layout = Layout.of_state(len(self.p_keys))
        tensors = [(p, g, *arrays) for p, g, arrays in zip(self.params, self.grads, self.arrays)]
        prepare = getattr(backend, "prepare", None)
        if prepare is None:
            backend.run_stage(rule, self.static, scalars, layout, tensors, self.xp)
            return _noop
        return prepare(rule, self.static, scalars, layout, tensors, self.xp)


#: the scalars a step may multiply every gradient by, in the order torch applies them:
#: GradScaler's unscale (``g * inv_scale``), then the clip coefficient (``g * clip_coef``)
GRAD_MULTIPLIERS = ("inv_grad_scale", "clip_coef")

_multiplied: dict = {}


def multiplying(rule: Callable, names: tuple) -> Callable:
    """``rule`` reading ``g * s1 * s2 ...`` for ``g``, the scalars ``names`` taken in order.

    This is how an unscale (``'inv_grad_scale'``) and a clip
    (``'clip_coef'``) fold into the update: each is one IEEE multiply in the
    compute dtype, in the order torch's separate in-place passes make them, so
    the update sees the gradient those passes would have written (for 16-bit
    gradients, before its rounding to storage: what torch's fused optimizers
    compute). One wrapper per (rule, names), since kernels are cached by the
    rule they trace.
    """
    if not names:
        return rule
    key = (rule, names)
    wrapped = _multiplied.get(key)
    if wrapped is None:
        def wrapped(p, g, *state, xp, **kwargs):
            for name in names:
                g = g * kwargs.pop(name)
            return rule(p, g, *state, xp=xp, **kwargs)

        suffix = "_times_" + "_".join(names)
        wrapped.__name__ = f"{getattr(rule, '__name__', 'rule')}{suffix}"
        wrapped.__qualname__ = f"{getattr(rule, '__qualname__', wrapped.__name__)}{suffix}"
        _multiplied[key] = wrapped
    return wrapped


class StepPlan:
    """A step's buckets and histories, kept for the next step while nothing they depend on changes."""

    def __init__(self, optimizer, expect: list, group_statics: list, group_keys: list, buckets: list,
                 histories: list, staged: bool):
        self.params = optimizer._checked_param_list  # identity: the checked parameter list
        self.changes = optimizer.state.changes
        self.backend = optimizer.backend
        self.n_groups = len(optimizer.param_groups)
        self.group_statics = group_statics
        self.group_keys = group_keys
        self.buckets = buckets
        self.histories = histories
        self.staged = staged
        self.present = [i for i, e in enumerate(expect) if e is not None]
        self.absent = [i for i, e in enumerate(expect) if e is None]
        self.types = [expect[i][0] for i in self.present]
        self.shapes = [expect[i][1] for i in self.present]
        self.dtypes = [expect[i][2] for i in self.present]
        params = list(self.params)
        # NumPy arrays are all on the CPU; any other namespace's gradients are checked for their device
        self.devices = None if all(t is np.ndarray for t in self.types) else [
            device(params[i]) for i in self.present]
        for bucket in buckets:
            bucket.grads = None  # the step's gradients are not kept
            if bucket.indices == self.present:
                bucket.indices = self.present  # one bucket takes every gradient, in order: no copy per step

    def usable(self, optimizer, grads) -> bool:
        """Cheap checks first: the state, the backend and the groups are as the plan left them."""
        return (optimizer.state.changes == self.changes and optimizer.backend == self.backend
                and len(optimizer.param_groups) == self.n_groups and len(grads) == len(self.params))

    def present_grads(self, grads: list) -> list | None:
        """The gradients of the planned parameters when ``grads`` is laid out as the plan's were, else None.

        Laid out alike: None exactly where it was, and each array of the same
        type, shape and dtype (and device) as its parameter: then every check
        of the full path (``Optimizer._checked_grads``) passes, with no cast.
        The caller has checked the length and the parameter list.
        """
        for i in self.absent:
            if grads[i] is not None:
                return None
        present = grads if not self.absent else [grads[i] for i in self.present]
        for g, t, shape, dtype in zip(present, self.types, self.shapes, self.dtypes):
            if type(g) is not t or g.shape != shape or (g.dtype is not dtype and g.dtype != dtype):
                return None
        if self.devices is not None:
            for g, dev in zip(present, self.devices):
                if device(g) != dev:
                    return None
        return present
