"""The Optimizer base: param groups, per-parameter state, ``step(grads)``, checkpoints.

An algorithm subclass supplies its element-wise *rule* and four small hooks
(see :class:`Optimizer`); this class does everything else the same way for
all of them: validating a whole call before touching anything, creating state
lazily, bucketing parameters so a backend can update many in one launch, and
the torch-layout ``state_dict``.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Callable

import numpy as np

from .checks import check_real
from .engine import BACKENDS, backend_for
from .engine.eager import EagerBackend, StepWrites
from .engine.stages import Tensors
from .flat import StateArena
from .step_plan import GRAD_MULTIPLIERS, Bucket, History, StepPlan, multiplying
from .engine.namespace import (
    _to_host,
    array_namespace,
    device,
    is_array,
    is_real_floating,
    is_writeable,
    to_namespace,
)

__all__ = ["Optimizer", "ParamState", "required"]

_NO_STATE: Mapping = {}


class _Required:
    def __repr__(self):
        return "<required parameter>"

    def __reduce__(self):  # stays a singleton through pickle/deepcopy
        return "required"


#: marks a default that every param group must supply (torch.optim.optimizer.required)
required = _Required()


class _StateDict(dict):
    """One parameter's state: a dict that counts its changes, so a cached step plan knows it is stale.

    Pickles and copies as a plain dict. The optimizer's own per-step writes
    (``'step'``) go through ``dict.__setitem__`` and are not counted.
    """

    __slots__ = ("_changes",)

    def __init__(self, changes: list, *args, **kwargs):
        dict.__init__(self, *args, **kwargs)
        self._changes = changes

    def _changed(self) -> None:
        self._changes[0] += 1

    def __setitem__(self, key, value):
        self._changes[0] += 1
        dict.__setitem__(self, key, value)

    def __delitem__(self, key):
        self._changes[0] += 1
        dict.__delitem__(self, key)

    def clear(self):
        self._changes[0] += 1
        dict.clear(self)

    def pop(self, *args):
        self._changes[0] += 1
        return dict.pop(self, *args)

    def popitem(self):
        self._changes[0] += 1
        return dict.popitem(self)

    def setdefault(self, key, default=None):
        self._changes[0] += 1
        return dict.setdefault(self, key, default)

    def update(self, *args, **kwargs):
        self._changes[0] += 1
        dict.update(self, *args, **kwargs)

    def __ior__(self, other):
        self.update(other)
        return self

    def __reduce__(self):
        return (dict, (dict(self),))

    def __copy__(self):
        return dict(self)

    def __deepcopy__(self, memo):
        import copy

        return copy.deepcopy(dict(self), memo)


class ParamState(MutableMapping):
    """``optimizer.state``: per-parameter state dicts keyed by the parameter array itself.

    Arrays are unhashable, so entries are keyed by identity. As in torch,
    reading the state of a parameter that has none gives (and stores) an
    empty dict. Every change to the mapping or to a parameter's dict is
    counted (:attr:`changes`), so a step plan cached by the optimizer is
    rebuilt after one; for that, ``state[p] = d`` stores a copy of ``d``
    (change ``state[p]`` afterwards, not ``d``).
    """

    def __init__(self):
        self._items: dict[int, tuple[Any, dict]] = {}
        self._changes = [0]

    @property
    def changes(self) -> int:
        """How many times the mapping or a parameter's state dict was changed (not counting steps)."""
        return self._changes[0]

    def __getitem__(self, param) -> dict:
        entry = self._items.get(id(param))
        if entry is None:
            entry = self._items[id(param)] = (param, _StateDict(self._changes))
        return entry[1]

    def __setitem__(self, param, value) -> None:
        if not (isinstance(value, _StateDict) and value._changes is self._changes):
            value = _StateDict(self._changes, value)
        self._changes[0] += 1
        self._items[id(param)] = (param, value)

    def __delitem__(self, param) -> None:
        self._changes[0] += 1
        del self._items[id(param)]

    def __contains__(self, param) -> bool:
        return id(param) in self._items

    def __iter__(self):
        return (p for p, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def items(self):  # type: ignore[override]
        return list(self._items.values())

    def get(self, param, default=None):
        entry = self._items.get(id(param))
        return default if entry is None else entry[1]

    def __reduce__(self):  # identity keys cannot be pickled; the pairs can
        return (_rebuild_state, (self.items(),))

    def __repr__(self):
        return f"ParamState({len(self)} parameters)"


def _rebuild_state(pairs):
    state = ParamState()
    for p, st in pairs:
        state[p] = st
    return state


class Optimizer:
    """Base class of all ms_optim optimizers (torch.optim.Optimizer's interface).

    Args:
      params: a list of arrays, or a list of dicts (param groups) each with a
        ``'params'`` list and any hyper-parameters that override ``defaults``.
      defaults: the hyper-parameters of a group that does not set its own.
      backend: keyword-only. ``None``/``'auto'`` picks the fastest backend for
        the parameters' namespace; ``'eager'`` forces the reference path.

    Subclasses set :attr:`rule` and implement:

    * ``_validate(group)``: raise TypeError/ValueError for a bad hyper-parameter;
    * ``_state_keys(group)``: names of the state arrays, in the rule's order;
    * ``_static(group)``: hashable configuration the rule branches on;
    * ``_host_scalars(group, state)``: per-step scalars for one parameter,
      given its state *before* this step (bias corrections and the like).

    and may override ``_init_state_array(key, param, group, xp)`` (zeros by
    default) and :attr:`tracks_step` (whether state holds torch's ``'step'``).

    Two optional hooks cover what depends on a parameter's own history:

    * ``_step_static(group, state)``: configuration that changes with the
      state before this step (RAdam switches to its rectified update once
      :math:`\\rho_t > 5`). It is merged over ``_static(group)`` and
      parameters are bucketed by it, so each bucket runs one specialised
      kernel and no element-wise branch ever depends on host state.
    * :attr:`host_state_keys` with ``_next_host_state(group, state)``:
      per-parameter numbers kept on the host beside ``'step'`` (NAdam's
      ``'mu_product'``). They live in ``state`` as Python floats, advance
      only when their parameter gets a gradient (as ``'step'`` does), and
      ``state_dict``/``load_state_dict`` carry and check them like ``'step'``.

    Four hooks cover what depends on a parameter's shape or dtype (never its
    values): ``_param_state_keys(group, param)`` (default ``_state_keys``:
    Adafactor keeps row and column factors for a matrix, a full second
    moment for a vector), ``_state_shape(key, param, group)`` (default the
    parameter's shape), ``_param_static(group, param)`` and
    ``_param_scalars(group, param)`` (merged into the static configuration and
    the host scalars; Muon scales its lr by the matrix's aspect ratio).
    Parameters are bucketed by all of them.

    An algorithm whose step is not one element-wise rule overrides
    :meth:`update`, which gets one bucket of tensors and runs its tensor-level
    and element-wise stages (:mod:`ms_optim.engine.stages`).

    The contract that keeps ``step`` cheap: ``_host_scalars``, ``_step_static``
    and ``_next_host_state`` read from ``state`` only its host numbers
    (``'step'`` and :attr:`host_state_keys`) and which state arrays exist,
    never the arrays' contents (that would be a device sync per parameter).
    ``step`` calls them once per distinct such history in a group and shares
    the result.
    """

    #: the element-wise update: rule(p, g, *state, **scalars, **static, xp) -> (p, *state)
    rule: Callable | None = None
    #: whether the per-parameter state holds a ``'step'`` count (torch's layout)
    tracks_step: bool = True
    #: per-parameter numbers held on the host besides ``'step'`` (see ``_next_host_state``)
    host_state_keys: tuple[str, ...] = ()
    #: state arrays that can never be negative (second moments): a loaded one with a negative entry is corrupt
    non_negative_state: frozenset = frozenset()
    #: host numbers' domains, checked on load: key -> (low, high, low included)
    host_state_domain: Mapping[str, tuple[float, float, bool]] = {}

    def __init__(self, params, defaults: Mapping[str, Any], *, backend: str | None = None):
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"backend must be a string or None, got {type(backend).__name__}: {backend!r}")
        if backend not in (None, "auto") and backend not in BACKENDS:
            raise ValueError(f"Invalid backend: {backend!r} (known: {', '.join(sorted(BACKENDS))})")
        if not any(v is required for v in defaults.values()):
            self._validate(dict(defaults))  # a bad constructor argument fails before any group is read
        self.defaults = _as_stored(defaults)
        self.state = ParamState()
        self.param_groups: list[dict] = []
        self.backend = backend
        groups = _as_group_list(params)
        # Check every group (and duplicates across them) before keeping any.
        staged: list[dict] = []
        for group in groups:
            staged.append(self._prepared_group(group, others=staged))
        self.param_groups.extend(staged)

    def __getstate__(self):
        # the kept step plan holds namespaces, backends and kernels: it is rebuilt, not pickled
        return {k: v for k, v in self.__dict__.items() if k != "_step_plan"}

    # ------------------------------------------------------------------ groups

    @property
    def parameters(self) -> list:
        """Every parameter, in group order: the order ``step(grads)`` expects."""
        return [p for group in self.param_groups for p in group["params"]]

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group of parameters, with hyper-parameters defaulting to the optimizer's.

        Raises:
          TypeError: the group is not a dict, or a param is not a floating-point array.
          ValueError: the group is empty, repeats a param, shares one with
            another group, lacks a required hyper-parameter or has a bad one.
        """
        self.param_groups.append(self._prepared_group(param_group, others=self.param_groups))

    def _prepared_group(self, param_group, others) -> dict:
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        if "params" not in group:
            raise ValueError("param_group must have a 'params' entry")
        params = group["params"]
        if is_array(params):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError("optimizer parameters need to be organized in ordered collections, not a set")
        elif isinstance(params, Iterable) and not isinstance(params, (str, bytes, Mapping)):
            params = list(params)
        else:
            raise TypeError(f"params must be a list of arrays, got {type(params).__name__}")
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        seen: set[int] = set()
        for i, p in enumerate(params):
            _check_param(f"params[{i}]", p)
            if id(p) in seen:
                raise ValueError(f"params[{i}] appears twice in one parameter group")
            seen.add(id(p))
        taken = {id(p) for g in others for p in g["params"]}
        if seen & taken:
            raise ValueError("some parameters appear in more than one parameter group")
        _check_no_overlap([(f"params[{i}]", p) for i, p in enumerate(params)]
                          + [(f"a parameter of group {gi}", p) for gi, g in enumerate(others) for p in g["params"]])
        group["params"] = params
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter {name}")
            group.setdefault(name, default)
        self._validate(group)
        if self.backend not in (None, "auto"):
            # A backend named explicitly must serve these arrays (and its optional
            # dependency must be installed): say so now, not at the first step.
            for xp in {id(ns): ns for ns in map(array_namespace, params)}.values():
                backend_for(xp, self.backend)
        return _as_stored(group)

    # -------------------------------------------------------------- the hooks

    def _validate(self, group: dict) -> None:
        raise NotImplementedError

    def _state_keys(self, group: dict) -> tuple[str, ...]:
        raise NotImplementedError

    def _static(self, group: dict) -> dict:
        raise NotImplementedError

    def _host_scalars(self, group: dict, state: dict) -> dict:
        raise NotImplementedError

    def _init_state_array(self, key: str, param, group: dict, xp):
        return xp.zeros_like(param)

    def _param_state_keys(self, group: dict, param) -> tuple[str, ...]:
        """The state arrays of one parameter (default: the group's ``_state_keys``)."""
        return self._state_keys(group)

    def _state_shape(self, key: str, param, group: dict) -> tuple[int, ...]:
        """The shape of state array ``key`` of ``param`` (default: the parameter's)."""
        return tuple(param.shape)

    def _param_static(self, group: dict, param) -> dict:
        """Static configuration that depends on the parameter's shape or dtype."""
        return {}

    def _param_scalars(self, group: dict, param) -> dict:
        """Host scalars that depend on the parameter's shape or dtype."""
        return {}

    def update(self, t) -> None:
        """One step of one bucket of tensors (:class:`~ms_optim.engine.stages.Tensors`).

        The default is the classic single fused pass: :attr:`rule` over
        ``(p, g, *state)``, writing ``p`` and the state in place. An algorithm
        that needs tensor-level stages overrides this.

        For a failed step to change nothing, an override writes parameters
        and state in its last element-wise pass only, and a tensor stage
        writes them through :func:`ms_optim.engine.eager.assign` (which the
        step can undo): the last bucket's compiled passes are not journaled,
        so nothing that can fail may come after them.
        """
        keys = tuple(t.state)
        t.elementwise(type(self).rule, [t.p, t.g, *(t.state[k] for k in keys)],
                      writes=(0, *range(2, 2 + len(keys))))

    def _step_static(self, group: dict, state: dict) -> dict:
        """Static configuration that depends on a parameter's state before this step."""
        return {}

    def _next_host_state(self, group: dict, state: dict) -> dict:
        """The values of :attr:`host_state_keys` after this step, from the state before it."""
        return {}

    @staticmethod
    def _next_step(state: Mapping) -> int:
        """The 1-based count of the update about to be made."""
        return int(state.get("step", 0)) + 1

    # ------------------------------------------------------------------- step

    def __call__(self, grads) -> None:
        """``optimizer(grads)``: MindSpore's calling convention for :meth:`step`."""
        self.step(grads)

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """Whether ``step`` takes ``grad_scale``/``found_inf``/``clip_coef`` (a classic rule: they fuse into it)."""
        cls = type(self)
        return cls.rule is not None and cls.update is Optimizer.update and cls.step is Optimizer.step

    def step(self, grads, *, grad_scale=None, found_inf=None, clip_coef=None) -> None:
        """Update every parameter in place from its gradient.

        Args:
          grads: one entry per parameter of :attr:`parameters` (all groups, in
            order): an array of the parameter's namespace, shape and device,
            or None to leave that parameter (and its step count) untouched.
            A gradient of another floating dtype is cast to the parameter's.
          grad_scale: keyword-only, for :class:`ms_optim.GradScaler`: the
            loss scale the gradients carry (a number or a 0-d array). The
            update uses ``g * (1 / grad_scale)`` (the reciprocal rounded to
            float32, as torch's unscale), computed inside the same fused pass:
            the gradients are not rewritten. Optimizers whose update is one
            element-wise rule take it (``_step_supports_amp_scaling``).
          found_inf: keyword-only, with ``grad_scale`` or alone: a 0-d array
            (or number); when non-zero the step is skipped: nothing changes,
            step counts included (read once on the host).
          clip_coef: keyword-only: a gradient-clipping factor (a number or a
            0-d array in [0, 1], e.g. :func:`ms_optim.clipping.clip_coefficient`
            of :func:`ms_optim.clipping.get_total_norm`). The update uses
            ``g * clip_coef`` (after the unscale, if any), in the same fused
            pass: what :func:`ms_optim.clip_grads_with_norm_` followed by
            ``step`` computes, without the pass that rewrites the gradients.

        Raises:
          TypeError / ValueError: a malformed call or a bad hyper-parameter.
            Nothing is changed when it raises.

        The plan of a step (buckets, state arrays, kernels and their tables)
        is kept for the next one (:class:`~ms_optim.step_plan.StepPlan`): in the steady state a
        step checks each gradient's type, shape and dtype, computes the host
        scalars once per bucket and launches once per bucket. Anything else
        (other parameters or groups, a changed static configuration, a
        gradient that is None where it was not, a cast, loaded or edited
        state) takes the full path, which checks everything and plans anew.
        """
        if grad_scale is not None or found_inf is not None or clip_coef is not None:
            self._multiplied_step(grads, grad_scale, found_inf, clip_coef)
            return
        self._grad_multipliers = None
        self._step(grads)

    def _multiplied_step(self, grads, grad_scale, found_inf, clip_coef) -> None:
        if not self._step_supports_amp_scaling:
            raise TypeError(f"{type(self).__name__}.step takes no grad_scale/found_inf/clip_coef: unscale and "
                            "clip the gradients first (GradScaler.step does, for such optimizers)")
        # on a device, one transfer brings every number this step needs to the host
        grad_scale, found_inf, clip_coef = _read_together(grad_scale, found_inf, clip_coef)
        multipliers = {}
        if grad_scale is not None:
            scale = check_real("grad_scale", grad_scale)
            if not (math.isfinite(scale) and scale > 0):
                raise ValueError(f"grad_scale must be a positive finite number, got {scale}")
            multipliers["inv_grad_scale"] = float(np.float32(1.0 / scale))  # torch: scale.double().reciprocal().float()
        skip = found_inf is not None and check_real("found_inf", found_inf) != 0
        if clip_coef is not None:
            coef = check_real("clip_coef", clip_coef)
            # a NaN or inf coefficient (from a non-finite norm) would write NaN into every parameter;
            # it is refused unless the step is skipped anyway
            if not skip and not (0.0 <= coef <= 1.0):
                raise ValueError(f"clip_coef must be a number in [0, 1], got {coef}")
            multipliers["clip_coef"] = coef
        if skip:
            # nothing changes, but a malformed call is still refused
            self._check_group_keys()
            self._checked_grads(grads)
            for group in self.param_groups:
                self._validate(group)
            return
        self._grad_multipliers = multipliers
        try:
            self._step(grads)
        finally:
            self._grad_multipliers = None

    def _step(self, grads) -> None:
        self._check_group_keys()
        if isinstance(grads, (list, tuple)):
            plan = self.__dict__.get("_step_plan")
            if plan is not None and plan.usable(self, grads):
                if self._planned_step(plan, grads):
                    return
        checked = self._checked_grads(grads)
        for group in self.param_groups:
            self._validate(group)
        self.__dict__.pop("_step_plan", None)
        cls = type(self)
        per_param = self._has_param_hooks()
        staged = cls.update is not Optimizer.update
        # Plan everything (new state arrays, scalars, buckets) before writing anything.
        buckets: dict[tuple, Bucket] = {}
        histories: dict[tuple, History] = {}
        host_keys = (("step",) if self.tracks_step else ()) + tuple(self.host_state_keys)
        group_statics, group_keys = [], []
        arena = None
        index = 0
        for gi, group in enumerate(self.param_groups):
            keys = self._state_keys(group) if not per_param else None
            group_static = self._static(group)
            group_statics.append(group_static)
            group_keys.append(keys)
            for p in group["params"]:
                g = checked[index]
                index += 1
                if g is None:
                    continue
                xp = array_namespace(p)
                state = self.state.get(p, _NO_STATE)
                p_keys = keys if not per_param else self._param_state_keys(group, p)
                missing = tuple(k for k in p_keys if k not in state)
                # The hooks see only host numbers and which arrays exist (the
                # contract in the class docstring), so parameters at the same
                # point of their history share one plan: one set of hook calls.
                plan_key = (gi, missing, *(state.get(k) for k in host_keys))
                if per_param:
                    plan_key += (p_keys, tuple(p.shape), str(p.dtype))
                history = histories.get(plan_key)
                if history is None:
                    history = histories[plan_key] = History(
                        gi, p if per_param else None, self._plan(group, group_static, state, p if per_param else None))
                scalars, static, host, signature = history.plan
                if missing and arena is None:
                    arena = StateArena(q for g_ in self.param_groups for q in g_["params"])
                new_arrays = self._new_state_arrays(missing, p, group, xp, arena) if missing else {}
                arrays = [state[k] if k in state else new_arrays[k] for k in p_keys]
                history.commits.append((p, new_arrays))
                if math.prod(p.shape):  # an empty tensor has nothing to update, but counts the step
                    key = (gi, xp, p.dtype, p_keys, signature)
                    bucket = buckets.get(key)
                    if bucket is None:
                        bucket = buckets[key] = Bucket(gi, xp, p_keys, scalars, static,
                                                       backend_for(xp, self.backend))
                    bucket.add(index - 1, p, g, arrays, history)
        self._run_buckets(list(buckets.values()), staged)
        for history in histories.values():
            host = history.plan[2]
            for p, new_arrays in history.commits:
                state = self.state[p]
                state.update(new_arrays)
                state.update(host)
        self._keep_plan(checked, group_statics, group_keys, list(buckets.values()), list(histories.values()),
                        staged)

    def _new_state_arrays(self, missing: tuple, p, group: dict, xp, arena) -> dict:
        """The state arrays ``missing`` of ``p``: NumPy ones aligned, and laid out like the parameters.

        :class:`~ms_optim.flat.StateArena` places them; an algorithm's own
        ``_init_state_array`` value is copied in when it has the parameter's
        shape and dtype (else it is kept as it is).
        """
        out = {}
        default_init = type(self)._init_state_array is Optimizer._init_state_array
        for k in missing:
            if type(p) is not np.ndarray:
                out[k] = self._init_state_array(k, p, group, xp)
                continue
            if default_init and self._state_shape(k, p, group) == tuple(p.shape):
                out[k] = arena.zeros_like(p, k)
                continue
            value = self._init_state_array(k, p, group, xp)
            if type(value) is np.ndarray and value.shape == p.shape and value.dtype == p.dtype:
                target = arena.zeros_like(p, k)
                target[...] = value
                value = target
            out[k] = value
        return out

    # --------------------------------------------------------- the kept plan

    def _keep_plan(self, checked: list, group_statics: list, group_keys: list, buckets: list, histories: list,
                   staged: bool) -> None:
        """Keep this step's plan for the next one (its histories have all advanced by one step)."""
        if not histories:
            return
        for history in histories:
            p = history.commits[0][0]
            history.state = self.state[p]
            history.members = [self.state[q] for q, _ in history.commits]
            history.commits = []
        expect = []
        for p, g in zip(self._checked_param_list, checked):
            expect.append(None if g is None else (type(p), tuple(p.shape), p.dtype))
        self._step_plan = StepPlan(self, expect, group_statics, group_keys, buckets, histories, staged)

    def _planned_step(self, plan: StepPlan, grads) -> bool:
        """The step through ``plan``; False (nothing changed) when it does not fit: the full path runs."""
        self._checked_params()
        if self._checked_param_list is not plan.params:
            return False
        per_param = plan.group_keys[0] is None
        for group, group_static, keys in zip(self.param_groups, plan.group_statics, plan.group_keys):
            self._validate(group)
            if self._static(group) != group_static or (not per_param and self._state_keys(group) != keys):
                return False
        present = plan.present_grads(grads)
        if present is None:
            return False
        groups = self.param_groups
        for history in plan.histories:
            group = groups[history.gi]
            if per_param and history.buckets and \
                    self._param_state_keys(group, history.param) != history.buckets[0].p_keys:
                return False
            history.plan = self._plan(group, plan.group_statics[history.gi], history.state, history.param)
        for bucket in plan.buckets:
            signature = None
            for history in bucket.histories:
                if signature is None:
                    signature = history.plan[3]
                    bucket.scalars, static = history.plan[0], history.plan[1]
                elif history.plan[3] != signature:
                    return False
            if static != bucket.static:
                return False
            bucket.grads = present if bucket.indices is plan.present else [grads[i] for i in bucket.indices]
        self._run_buckets(plan.buckets, plan.staged, planned=True)
        for bucket in plan.buckets:
            bucket.grads = None
        set_item = dict.__setitem__
        for history in plan.histories:
            host = history.plan[2]
            if len(host) == 1 and "step" in host:
                n = host["step"]
                for st in history.members:
                    set_item(st, "step", n)
            else:
                for st in history.members:
                    dict.update(st, host)
        return True

    def _run_buckets(self, buckets: list, staged: bool, planned: bool = False) -> None:
        """Run every bucket, all or nothing: if anything raises, every array is as it was.

        Nothing that can fail runs after a write that cannot be undone:

        * a classic rule's buckets are all *prepared* before any is launched:
          compiling, building tables, copies and eager computation (whose
          writes :class:`~ms_optim.engine.eager.StepWrites` holds back) come
          first, then the compiled launches (which cannot fail) and the held
          writes;
        * a staged algorithm's eager writes to parameters and state are
          journaled, and since a compiled pass cannot be undone, buckets run
          smallest first and the arrays every compiled bucket but the last
          writes are journaled first: a step of one bucket copies nothing;
        * NumPy's floating-point error signalling is off inside the step, so
          an overflow gives inf as the compiled kernels do, whatever
          ``np.seterr`` or ``-W error`` say.
        """
        cls = type(self)
        if staged:
            # smallest first: what is journaled below (every compiled bucket but the last) is least
            buckets = sorted(buckets, key=lambda b: b.elements)

        def persistent():  # the arrays that outlive the step: parameters and state
            for b in buckets:
                yield from b.params
                for arrays in b.arrays:
                    yield from arrays

        writes = StepWrites(defer=not staged, persistent=persistent)
        try:
            with writes, np.errstate(all="ignore"):
                if staged:
                    for i, b in enumerate(buckets):
                        if i < len(buckets) - 1 and not isinstance(b.backend, EagerBackend):
                            for p, arrays in zip(b.params, b.arrays):
                                writes.save(p)
                                for a in arrays:
                                    writes.save(a)
                        state_lists = {k: [arrays[j] for arrays in b.arrays] for j, k in enumerate(b.p_keys)}
                        self.update(Tensors(b.backend, b.xp, b.params, b.grads, state_lists, b.scalars, b.static,
                                            self.param_groups[b.gi]))
                else:
                    multipliers = self.__dict__.get("_grad_multipliers")
                    rule = cls.rule
                    if multipliers:
                        rule = multiplying(rule, tuple(k for k in GRAD_MULTIPLIERS if k in multipliers))
                    launches = [b.prepare(rule, planned, multipliers) for b in buckets]
                    for launch in launches:
                        launch()
                writes.commit()
        except BaseException:
            with np.errstate(all="ignore"):
                writes.undo()
            raise

    def _check_group_keys(self) -> None:
        """Every group still has its parameter list and every hyper-parameter (a user may edit groups)."""
        for gi, group in enumerate(self.param_groups):
            if not isinstance(group, MutableMapping):
                raise TypeError(f"param_groups[{gi}] must be a dict, got {type(group).__name__}")
            if "params" not in group:
                raise ValueError(f"param_groups[{gi}] has no 'params' entry")
            for name in self.defaults:
                if name not in group:
                    raise ValueError(
                        f"param_groups[{gi}] has no {name!r} entry: a group needs every hyper-parameter "
                        f"of {type(self).__name__} ({', '.join(self.defaults)})"
                    )
            params = group["params"]
            if not isinstance(params, (list, tuple)):
                raise TypeError(f"param_groups[{gi}]['params'] must be a list of arrays, got {type(params).__name__}")

    def _checked_params(self) -> list:
        """:attr:`parameters`, checked again: arrays appended to a group, or changed since, are caught.

        The full checks (dtype, kind, duplicates, overlapping memory) run when
        the parameter list differs from the last one checked; what can change
        on an array in place (NumPy's writeable flag, torch's requires_grad)
        is checked every step.
        """
        params = self.parameters
        last = self.__dict__.get("_checked_param_list")
        if last is None or len(last) != len(params) or not all(map(operator.is_, last, params)):
            where = _param_names(self.param_groups)
            seen: dict[int, str] = {}
            for name, p in zip(where, params):
                _check_param(name, p)
                if id(p) in seen:
                    raise ValueError(f"{name} is {seen[id(p)]} again; a parameter may appear once in an optimizer")
                seen[id(p)] = name
            _check_no_overlap(list(zip(where, params)))
            self._checked_param_list = tuple(params)  # holds them, so ids cannot be reused
        else:
            ndarray = np.ndarray
            for i, p in enumerate(params):
                if type(p) is ndarray:
                    if p.flags.writeable:
                        continue
                elif is_writeable(p) and not getattr(p, "requires_grad", False):
                    continue
                _check_param(_param_names(self.param_groups)[i], p)
        return params

    def _host_state_domain(self, group: dict) -> Mapping[str, tuple[float, float, bool]]:
        """The domains of :attr:`host_state_keys` a loaded state must respect (default: the class's)."""
        return self.host_state_domain

    def _has_param_hooks(self) -> bool:
        cls = type(self)
        return any(getattr(cls, name) is not getattr(Optimizer, name)
                   for name in ("_param_state_keys", "_param_static", "_param_scalars"))

    def _plan(self, group: dict, group_static: dict, state: dict, param=None) -> tuple:
        """(scalars, static, host numbers after the step, bucket signature) of one update."""
        scalars = {k: float(v) for k, v in self._host_scalars(group, state).items()}
        static = {**group_static, **self._step_static(group, state)}
        if param is not None:
            scalars.update({k: float(v) for k, v in self._param_scalars(group, param).items()})
            static.update(self._param_static(group, param))
        host = {k: float(v) for k, v in self._next_host_state(group, state).items()}
        if self.tracks_step:
            host = {"step": self._next_step(state), **host}
        signature = (tuple(sorted(static.items())), tuple(sorted(scalars.items())))
        return scalars, static, host, signature

    def _checked_grads(self, grads) -> list:
        if is_array(grads) or isinstance(grads, (str, bytes, Mapping)):
            raise TypeError(
                f"grads must be a sequence with one array (or None) per parameter, got {type(grads).__name__}"
            )
        try:
            grads = list(grads)
        except TypeError:
            raise TypeError(
                f"grads must be a sequence with one array (or None) per parameter, got {type(grads).__name__}"
            ) from None
        params = self._checked_params()
        if len(grads) != len(params):
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {len(params)} parameters")
        plan = self.__dict__.get("_step_plan")
        if plan is not None and self._checked_param_list is plan.params and plan.present_grads(grads) is not None:
            return grads  # laid out as the kept plan's: each check below would pass, with no cast
        checked = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is not None:
                g = _checked_grad(i, p, g)
            checked.append(g)
        return checked

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """The optimizer's state in torch's layout.

        ``{'state': {id: {'step': int, 'exp_avg': array, ...}}, 'param_groups':
        [{hyper-parameters..., 'params': [ids]}]}`` where ids number the
        parameters 0, 1, ... across groups in order. Arrays are the live state
        arrays, not copies (as in torch): pickle it or ``copy.deepcopy`` it to
        keep a snapshot.
        """
        ids: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: _detached(v) for k, v in group.items() if k != "params"}
            packed["params"] = [ids.setdefault(id(p), len(ids)) for p in group["params"]]
            groups.append(packed)
        state = {}
        for p in self.parameters:
            st = self.state.get(p)
            if st:
                state[ids[id(p)]] = dict(st)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Load a checkpoint made by :meth:`state_dict` (of this or a like optimizer).

        Everything is checked first: group count and sizes, every
        hyper-parameter, every state key and array shape. On any error
        nothing changes. State arrays are copied into the namespace, device
        and dtype of the parameter they belong to.

        Raises:
          TypeError: ``state_dict`` is not a mapping with 'state' and 'param_groups'.
          ValueError: it does not fit this optimizer's groups or has bad values.
        """
        if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
            raise TypeError("state_dict must be a dict with 'state' and 'param_groups' entries")
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, Mapping):
            raise TypeError("state_dict['param_groups'] must be a list and state_dict['state'] a dict")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has a different number of parameter groups "
                f"({len(saved_groups)}, the optimizer has {len(self.param_groups)})"
            )
        new_groups = []
        id_map: dict[Any, tuple[Any, dict]] = {}
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, Mapping) or not isinstance(saved.get("params"), (list, tuple)):
                raise TypeError(f"state_dict['param_groups'][{gi}] must be a dict with a 'params' list")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"loaded state dict contains a parameter group that doesn't match the size of "
                    f"optimizer's group (group {gi}: {len(saved['params'])} ids for {len(group['params'])} params)"
                )
            lacking = [name for name in self.defaults if name not in saved]
            if lacking:
                # torch's state dicts carry every hyper-parameter; one without ours is another optimizer's
                raise ValueError(
                    f"state_dict['param_groups'][{gi}] lacks {', '.join(map(repr, lacking))}: it is not the state "
                    f"of a {type(self).__name__} (its keys: {', '.join(sorted(map(str, saved)))})"
                )
            new = {k: _detached(v) for k, v in saved.items() if k != "params"}
            new["params"] = group["params"]
            self._validate(new)
            new = _as_stored(new)
            new_groups.append(new)
            for pid, p in zip(saved["params"], group["params"]):
                try:
                    repeated = pid in id_map
                except TypeError:
                    raise TypeError(f"state_dict['param_groups'][{gi}]['params'] holds an unhashable id: {pid!r}") \
                        from None
                if repeated:
                    raise ValueError(f"state_dict['param_groups'] lists parameter id {pid!r} twice")
                id_map[pid] = (p, new)
        new_state = []
        for pid, st in saved_state.items():
            if pid not in id_map:
                raise ValueError(f"state_dict['state'] has an entry for parameter id {pid!r}, which no group lists")
            p, group = id_map[pid]
            new_state.append((p, self._loaded_param_state(pid, st, p, group)))
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)
        self.state.clear()
        for p, st in new_state:
            self.state[p] = st

    def _loaded_param_state(self, pid, st, p, group) -> dict:
        where = f"state_dict['state'][{pid!r}]"
        if not isinstance(st, Mapping):
            raise TypeError(f"{where} must be a dict, got {type(st).__name__}")
        keys = set(self._param_state_keys(group, p))
        host_keys = set(self.host_state_keys) | ({"step"} if self.tracks_step else set())
        allowed = keys | host_keys
        unknown = set(st) - allowed
        if unknown:
            raise ValueError(f"{where} has unexpected entries {sorted(unknown)}; expected {sorted(allowed)}")
        missing = allowed - set(st)
        if st and missing:
            raise ValueError(f"{where} lacks {sorted(missing)}")
        out: dict[str, Any] = {}
        if self.tracks_step and st:
            out["step"] = _checked_step(f"{where}['step']", st["step"])
        for k in self.host_state_keys:
            if st:
                out[k] = _checked_host_value(f"{where}[{k!r}]", st[k])
        for k in self._param_state_keys(group, p):
            if k not in st:
                continue
            value = st[k]
            if not is_array(value) or isinstance(value, np.generic):
                raise TypeError(f"{where}[{k!r}] must be an array, got {type(value).__name__}")
            expected = self._state_shape(k, p, group)
            if tuple(value.shape) != expected:
                what = "its parameter" if expected == tuple(p.shape) else "expected"
                raise ValueError(f"{where}[{k!r}] has shape {tuple(value.shape)}, {what} {expected}")
            out[k] = _checked_state_array(f"{where}[{k!r}]", value, p, non_negative=k in self.non_negative_state)
        for k, (low, high, closed_low) in self._host_state_domain(group).items():
            if k in out and not ((low < out[k] if not closed_low else low <= out[k]) and out[k] <= high):
                raise ValueError(f"{where}[{k!r}] must be in {'[' if closed_low else '('}{low}, {high}], got {out[k]}")
        return out

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)


# ---------------------------------------------------------------------- helpers


def _as_stored(values: Mapping) -> dict:
    """A group's values as kept: a list-valued hyper-parameter (betas=[0.9, 0.99], or
    a pair that went through JSON) becomes a tuple, as torch keeps it."""
    return {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in values.items()}


def _as_group_list(params) -> list:
    if is_array(params):
        raise TypeError(
            "params argument given to the optimizer should be an iterable of arrays or dicts, "
            f"but got a single array of shape {tuple(params.shape)}: wrap it in a list"
        )
    if isinstance(params, (set, frozenset)):
        raise TypeError("optimizer parameters need to be organized in ordered collections, not a set")
    if isinstance(params, Mapping) or not isinstance(params, Iterable) or isinstance(params, (str, bytes)):
        raise TypeError(
            f"params argument given to the optimizer should be an iterable of arrays or dicts, "
            f"but got {type(params).__name__}"
        )
    params = list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if not isinstance(params[0], Mapping):
        return [{"params": params}]
    if not all(isinstance(g, Mapping) for g in params):
        raise TypeError("params must be all arrays or all dicts (param groups), not a mix")
    return params


def _param_names(groups) -> list[str]:
    return [f"param_groups[{gi}]['params'][{i}]" for gi, group in enumerate(groups) for i in range(len(group["params"]))]


def _check_param(where: str, p) -> None:
    if not is_array(p) or not hasattr(p, "shape") or isinstance(p, np.generic):
        raise TypeError(f"{where} must be an array, got {type(p).__name__}")
    if isinstance(p, (np.ma.MaskedArray, np.matrix)):
        # a mask the update would ignore, or matrix semantics the rules do not follow
        raise TypeError(f"{where} is a {type(p).__name__}; pass a plain array (np.asarray) instead")
    xp = array_namespace(p)
    if not is_real_floating(xp, p.dtype):
        raise TypeError(f"{where} has dtype {p.dtype}; optimizers update real floating-point arrays only")
    if not is_writeable(p):
        raise ValueError(f"{where} is read-only; the optimizer updates parameters in place")
    if getattr(p, "requires_grad", False):
        # an in-place write to a leaf that requires grad is refused by torch mid-step
        raise ValueError(
            f"{where} is a torch tensor that requires grad; pass param.detach() (it shares the memory, "
            "so the update reaches the tensor)"
        )


def _byte_bounds(p):
    interface = p.__array_interface__
    low = high = interface["data"][0]
    if interface["strides"] is None:
        return low, low + p.size * p.itemsize
    for n, stride in zip(p.shape, p.strides):
        if stride < 0:
            low += stride * (n - 1)
        else:
            high += stride * (n - 1)
    return low, high + p.itemsize


def _check_no_overlap(named: list) -> None:
    """ValueError if two NumPy parameters share memory (overlapping views get updated twice)."""
    spans = []
    for name, p in named:
        if isinstance(p, np.ndarray) and p.size:
            low, high = _byte_bounds(p)
            spans.append((low, high, name, p))
    if len(spans) < 2:
        return
    spans.sort(key=lambda s: s[0])
    open_spans: list = []
    for low, high, name, p in spans:
        open_spans = [s for s in open_spans if s[1] > low]
        for _, _, other_name, other in open_spans:
            # bounds overlap; interleaved views (x[::2], x[1::2]) do not share an element
            try:
                shared = np.shares_memory(p, other, max_work=10**6)
            except np.exceptions.TooHardError:
                shared = True
            if shared:
                a, b = sorted((name, other_name))
                raise ValueError(
                    f"{a} and {b} share memory (overlapping views of one array); each element "
                    "must belong to one parameter, or an update would be applied to it twice"
                )
        open_spans.append((low, high, name, p))


def _read_together(*values) -> tuple:
    """``values`` copied to the host in one transfer when they are all 0-d real arrays on one device.

    GradScaler's scale, found-inf flag and clip coefficient live on the
    gradients' device; reading them one by one would be a device sync each.
    None entries stay None; anything else (NumPy arrays, numbers, a malformed
    value) leaves every value as it is, for the caller's checks.
    """
    arrays = [v for v in values if v is not None]
    if len(arrays) < 2 or not all(is_array(v) and type(v) is not np.ndarray for v in arrays):
        return values
    xp = array_namespace(arrays[0])
    dev = device(arrays[0])
    for v in arrays:
        if (array_namespace(v) is not xp or getattr(v, "ndim", None) != 0 or device(v) != dev
                or not xp.isdtype(v.dtype, ("real floating", "signed integer", "unsigned integer"))):
            return values
    host = iter(np.asarray(_to_host(xp.stack([xp.astype(v, xp.float64) for v in arrays]), xp)))
    return tuple(None if v is None else next(host) for v in values)


def _checked_grad(i: int, p, g):
    if type(g) is np.ndarray and type(p) is np.ndarray and g.shape == p.shape and g.dtype == p.dtype:
        return g  # what every check below would conclude, in a few attribute reads
    if not is_array(g) or not hasattr(g, "shape"):
        raise TypeError(f"grads[{i}] must be an array or None, got {type(g).__name__}")
    xp = array_namespace(p)
    try:
        gxp = array_namespace(g)
    except TypeError:
        gxp = None
    if gxp is not xp:
        raise TypeError(
            f"grads[{i}] is a {getattr(gxp, '__name__', type(g).__name__)} array "
            f"but its parameter is a {xp.__name__} array"
        )
    if tuple(g.shape) != tuple(p.shape):
        raise ValueError(f"grads[{i}] has shape {tuple(g.shape)}, its parameter {tuple(p.shape)}")
    if device(g) != device(p):
        raise ValueError(f"grads[{i}] is on device {device(g)}, its parameter on {device(p)}")
    if type(g) is not np.ndarray and isinstance(g, (np.ma.MaskedArray, np.matrix)):
        raise TypeError(f"grads[{i}] is a {type(g).__name__}; pass a plain array (np.asarray) instead")
    if g.dtype != p.dtype:  # the param's dtype was checked when it joined its group
        if not is_real_floating(xp, g.dtype):
            raise TypeError(f"grads[{i}] has dtype {g.dtype}; a real floating-point gradient is needed")
        with np.errstate(all="ignore"):
            cast = xp.astype(g, p.dtype)
            # a finite value beyond the parameter dtype's range would silently become inf
            if xp.finfo(g.dtype).max > xp.finfo(p.dtype).max and bool(
                    xp.any(xp.isinf(cast) & xp.isfinite(g))):
                raise ValueError(
                    f"grads[{i}] has finite {g.dtype} values beyond the range of its parameter's dtype "
                    f"{p.dtype} (largest {float(xp.finfo(p.dtype).max):g}); they would become inf"
                )
        g = cast
    return g


def _detached(value):
    """A copy of an array hyper-parameter (a 0-d lr a scheduler writes in place).

    Without it a checkpoint kept in memory would follow the live lr, and a
    loaded optimizer would share its lr with the checkpoint. Other values are
    immutable or copied by the caller's dict.
    """
    if is_array(value) and not isinstance(value, np.generic):  # a NumPy scalar is immutable: kept as it is
        return array_namespace(value).asarray(value, copy=True)
    return value


def _checked_state_array(where: str, value, param, *, non_negative: bool):
    """A loaded state array, checked (real floating, finite, in its domain), as a copy like ``param``."""
    src_xp = array_namespace(value)
    dtype = value.dtype
    try:
        floating = is_real_floating(src_xp, dtype)
    except (TypeError, ValueError):
        floating = False
    if not floating:
        raise TypeError(f"{where} has dtype {dtype}; state arrays are real floating-point")
    with np.errstate(all="ignore"):  # a value beyond the param's dtype becomes inf here, refused below
        out = to_namespace(value, like=param)
        xp = array_namespace(out)
        if out.size and not bool(xp.all(xp.isfinite(out))):
            raise ValueError(f"{where} has NaN or infinite entries (or values beyond {param.dtype}'s range)")
        if non_negative and out.size and bool(xp.any(out < 0)):
            raise ValueError(f"{where} has negative entries; it is a second moment, never negative")
    return out


def _checked_host_value(where: str, value) -> float:
    number = check_real(where, value)  # a number or a 0-d array (torch keeps tensors here)
    if not math.isfinite(number):
        raise ValueError(f"{where} must be finite, got {number}")
    return number


#: the largest step count loaded: every count below it is exact in float64 (torch keeps a float step)
MAX_STEP = 2**53


def _checked_step(where: str, value) -> int:
    if is_array(value) and not isinstance(value, np.generic):
        if getattr(value, "ndim", None) != 0:
            raise ValueError(f"{where} must be a number or a 0-d array, got an array of shape {tuple(value.shape)}")
        if str(value.dtype).startswith(("complex", "bool")) or "datetime" in str(value.dtype):
            raise TypeError(f"{where} must be a whole number, got an array of dtype {value.dtype}")
    elif not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where} must be a whole number, got {type(value).__name__}: {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{where} must be a number, got {type(value).__name__}") from None
    if not (math.isfinite(number) and number >= 0 and number.is_integer()):
        raise ValueError(f"{where} must be a non-negative whole number, got {number}")
    if number > MAX_STEP:
        raise ValueError(f"{where} must be at most 2**53, got {number:g}")
    return int(number)
