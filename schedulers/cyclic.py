r"""Cyclical schedules that also cycle momentum: CyclicLR and OneCycleLR."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, Callable

from . import _groups, _state, schedules
from ._checks import check_bool, check_lr, check_momentum, native, per_group
from .base import LRScheduler, _prepare, atomic

__all__ = ["CyclicLR", "OneCycleLR"]


def _momentum_key(optimizer) -> bool:
    """Whether momentum lives in ``betas[0]`` (True) or ``momentum`` (False); ValueError if neither."""
    keys = getattr(optimizer, "defaults", None)
    if keys is None:
        keys = optimizer.param_groups[0]
    if "momentum" not in keys and "betas" not in keys:
        raise ValueError(
            f"cycle_momentum=True needs an optimizer with 'momentum' or 'betas', got "
            f"{type(optimizer).__name__} (hyper-parameters: {sorted(k for k in keys if k != 'params')}); "
            "pass cycle_momentum=False"
        )
    return "betas" in keys


def _uniform(name: str, values: list) -> None:
    """A per-group list can grow to a new group only if it came from one scalar."""
    if any(v != values[0] for v in values):
        raise ValueError(
            f"{name} was given per param group ({values!r}) and a param group was added since: "
            f"there is no {name} for it"
        )


def _momenta(optimizer, base_momentum, max_momentum):
    """Checked per-group momentum bounds and where they go (``betas[0]`` or ``momentum``)."""
    use_beta1 = _momentum_key(optimizer)
    n = len(optimizer.param_groups)

    def check(name, v):
        return check_momentum(name, v, beta=use_beta1)

    bases = per_group("base_momentum", base_momentum, n, check)
    maxes = per_group("max_momentum", max_momentum, n, check)
    for i, group in enumerate(optimizer.param_groups):
        _groups.check_momentum_target(i, group, use_beta1)
    return use_beta1, bases, maxes


def _momentum_state(owner, checked: dict, where: str, lists: tuple[str, ...], required: tuple[str, ...]) -> None:
    """A loaded state that cycles momentum must fit this optimizer: same key, beta1 < 1, the bounds present."""
    if not checked.get("cycle_momentum", owner.cycle_momentum):
        return
    missing = [k for k in ("use_beta1", *required) if k not in checked and not hasattr(owner, k)]
    if missing:
        raise ValueError(f"{where} has cycle_momentum=True but lacks {missing}")
    use_beta1 = _momentum_key(owner.optimizer)
    saved = checked.get("use_beta1", getattr(owner, "use_beta1", None))
    if saved != use_beta1:
        raise ValueError(
            f"{where}['use_beta1']={saved!r} disagrees with this optimizer, whose momentum is "
            f"{'betas[0]' if use_beta1 else 'momentum'}: the state of a scheduler on another optimizer?"
        )
    if use_beta1:
        for k in lists:
            for i, m in enumerate(checked.get(k, ())):
                check_momentum(f"{where}[{k!r}][{i}]", m, beta=True)
    for i, group in enumerate(owner.optimizer.param_groups):
        _groups.check_momentum_target(i, group, use_beta1)


def _no_custom_dict(name: str, fn) -> None:
    if not hasattr(fn, "__dict__"):
        raise TypeError(f"{name} holds attributes to restore but the function here ({fn!r}) has no __dict__")


class CyclicLR(LRScheduler):
    r"""Cycle every group's learning rate between ``base_lr`` and ``max_lr`` (and momentum the other way).

    .. math::
        \eta_t = \eta_{base} + (\eta_{max} - \eta_{base})\, h(t)\, s(\cdot), \qquad
        m_t = m_{max} - (m_{max} - m_{base})\, h(t)\, s(\cdot)

    with :math:`h(t) \in [0, 1]` a triangle rising for ``step_size_up`` steps
    and falling for ``step_size_down``, and the scale :math:`s`:
    ``triangular`` :math:`1`; ``triangular2`` :math:`2^{1-c}` in cycle
    :math:`c`; ``exp_range`` :math:`\gamma^t`; or a custom ``scale_fn`` of
    the cycle or of the step (``scale_mode``). Call :meth:`step` after every
    batch. The schedule overwrites the groups' ``lr`` at construction.

    Momentum (``momentum``, or ``betas[0]`` for Adam-style optimizers) is
    cycled when ``cycle_momentum`` is True; an optimizer with neither raises.

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      base_lr: lower bound, >= 0, a float or one per group.
      max_lr: upper bound, >= 0, a float or one per group.
      step_size_up: steps in the rising half, > 0. Default 2000.
      step_size_down: steps in the falling half, >= 0; None: ``step_size_up``.
      mode: ``'triangular'``, ``'triangular2'`` or ``'exp_range'`` (ignored with ``scale_fn``).
      gamma: ``exp_range``'s base, > 0. Default 1.
      scale_fn: custom scale function of one argument, or None.
      scale_mode: ``'cycle'`` or ``'iterations'``: what ``scale_fn`` reads. Default ``'cycle'``.
      cycle_momentum: cycle momentum inversely to the learning rate. Default True.
      base_momentum: lower momentum bound, a float or one per group. Default 0.8.
      max_momentum: upper momentum bound, a float or one per group. Default 0.9.
      last_epoch: the last step taken, -1 to start. Default -1.

    .. warning::
       torch accepts any learning rate and momentum bounds. Here a negative
       ``base_lr``/``max_lr`` (gradient ascent), a momentum outside [0, 1]
       (the buffer grows without bound) or a ``betas[0]`` bound of 1 or more
       (Adam divides by a zero bias correction) raises ValueError; so does a
       step where a custom ``scale_fn`` drives the lr below 0 or the
       momentum out of that range, changing nothing.

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import CyclicLR
    >>> opt = SGD([np.zeros(3)], lr=0.1, momentum=0.9)
    >>> sched = CyclicLR(opt, base_lr=0.1, max_lr=0.5, step_size_up=2)
    >>> sched.step(); [round(sched.get_last_lr()[0], 6), round(opt.param_groups[0]["momentum"], 6)]
    [0.3, 0.85]

    References:
      Smith, `Cyclical Learning Rates for Training Neural Networks
      <https://arxiv.org/abs/1506.01186>`_, 2017.
    """

    _not_in_state = ("_scale_fn_custom",)
    _lr_source = "scale_fn and the lr bounds"

    @atomic
    def __init__(
        self,
        optimizer,
        base_lr: float | list[float],
        max_lr: float | list[float],
        step_size_up: float = 2000,
        step_size_down: float | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.8,
        max_momentum: float | list[float] = 0.9,
        last_epoch: int = -1,
    ) -> None:
        # Every check first: nothing in the groups changes if one fails.
        last_epoch = _prepare(optimizer, last_epoch)
        n = len(optimizer.param_groups)
        base_lrs = per_group("base_lr", base_lr, n, check_lr)
        max_lrs = per_group("max_lr", max_lr, n, check_lr)
        up, down = schedules._check_cyclic(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)
        cycle_momentum = check_bool("cycle_momentum", cycle_momentum)
        if cycle_momentum:
            use_beta1, base_momentums, max_momentums = _momenta(optimizer, base_momentum, max_momentum)
        mode, gamma, scale_mode = native(mode), native(gamma), native(scale_mode)

        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups, strict=True):
                _groups.write(group, "lr", lr)
        self.max_lrs = max_lrs
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_custom = scale_fn
        self.scale_mode = schedules._cyclic_scale(mode, gamma, scale_fn, scale_mode)[1]
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = use_beta1
            self.base_momentums = base_momentums
            self.max_momentums = max_momentums
            if last_epoch == -1:
                _groups.start_momentum_cycle(optimizer, max_momentums, base_momentums, use_beta1)
        # As torch, the initial step runs with base_lrs = the groups'
        # initial_lr (equal to base_lr unless an earlier scheduler set it).
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def scale_fn(self, x: float) -> float:
        """The scale applied at cycle (or step) ``x``."""
        fn, _ = schedules._cyclic_scale(self.mode, self.gamma, self._scale_fn_custom, self.scale_mode)
        return fn(x)

    def _cyclic(self, base_value, max_value):
        return schedules._cyclic(
            self.last_epoch,
            base_value=base_value,
            max_value=max_value,
            total_size=self.total_size,
            step_ratio=self.step_ratio,
            scale_fn=self.scale_fn,
            scale_mode=self.scale_mode,
        )

    def get_lr(self) -> list[float]:
        """The learning rates at ``last_epoch``; called directly, also writes the cycled momentum (as torch)."""
        self._warn_outside_step()
        lrs = [self._cyclic(b, m) for b, m in zip(self.base_lrs, self.max_lrs, strict=True)]
        if not self._get_lr_called_within_step and self.cycle_momentum:
            for group, momentum in zip(self.optimizer.param_groups, self._momentum_values(), strict=True):
                _groups.write_momentum(group, momentum, self.use_beta1)
        return lrs

    def _momentum_values(self) -> list[float] | None:
        if not self.cycle_momentum:
            return None
        # Momentum runs from max to base as the lr runs from base to max.
        return [self._cyclic(m_max, m_base) for m_base, m_max in zip(
            self.base_momentums, self.max_momentums, strict=True)]

    def _check_new_groups(self, n_groups: int) -> None:
        _uniform("base_lr", self.base_lrs)
        _uniform("max_lr", self.max_lrs)
        if self.cycle_momentum:
            _uniform("base_momentum", self.base_momentums)
            _uniform("max_momentum", self.max_momentums)

    def _adopt_new_groups(self, new_groups: list[dict]) -> None:
        k = len(new_groups)
        self.base_lrs.extend([self.base_lrs[0]] * k)
        self.max_lrs.extend([self.max_lrs[0]] * k)
        if self.cycle_momentum:
            self.base_momentums.extend([self.base_momentums[0]] * k)
            self.max_momentums.extend([self.max_momentums[0]] * k)
            for group in new_groups:
                group["max_momentum"] = self.max_momentums[0]
                group["base_momentum"] = self.base_momentums[0]

    def state_dict(self) -> dict[str, Any]:
        """As torch: a custom ``scale_fn`` is saved only as a callable object's ``__dict__``."""
        state = super().state_dict()
        fn = self._scale_fn_custom
        state["_scale_fn_custom"] = (
            dict(fn.__dict__) if fn is not None and not isinstance(fn, types.FunctionType) else None
        )
        return state

    def _state_spec(self) -> dict:
        n = len(self.optimizer.param_groups)
        return {
            **super()._state_spec(),
            "max_lrs": (_state.lr_list(n), True),
            "total_size": (_state.real(low=0.0, low_open=True), True),
            "step_ratio": (_state.real(low=0.0, high=1.0, low_open=True), True),
            "mode": (_state.choice(*schedules._CYCLIC_MODES), True),
            "gamma": (_state.real(low=0.0, low_open=True), True),
            "scale_mode": (_state.choice("cycle", "iterations"), True),
            "cycle_momentum": (_state.boolean, True),
            "use_beta1": (_state.boolean, False),
            "base_momentums": (_state.momentum_list(n), False),
            "max_momentums": (_state.momentum_list(n), False),
            "_scale_fn_custom": (_state.callable_state, False),
        }

    def _check_state_together(self, checked: dict, where: str) -> None:
        lists = ("base_momentums", "max_momentums")
        _momentum_state(self, checked, where, lists, lists)
        if checked.get("_scale_fn_custom") is not None and self._scale_fn_custom is not None:
            _no_custom_dict(f"{where}['_scale_fn_custom']", self._scale_fn_custom)

    def _apply_state(self, checked: dict) -> None:
        saved = checked.pop("_scale_fn_custom", None)
        super()._apply_state(checked)
        if saved is not None and self._scale_fn_custom is not None:
            self._scale_fn_custom.__dict__.update(saved)


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy: warm up to ``max_lr``, then anneal far below the start (momentum the other way).

    Each phase anneals (cosine or linear) between its end points:

    .. math::
        \frac{\eta_{max}}{d} \to \eta_{max} \to \frac{\eta_{max}}{d\,f}
        \qquad\text{or, with three\_phase,}\qquad
        \frac{\eta_{max}}{d} \to \eta_{max} \to \frac{\eta_{max}}{d} \to \frac{\eta_{max}}{d\,f}

    with :math:`d` = ``div_factor``, :math:`f` = ``final_div_factor``; the
    first phase ends at step ``pct_start * total_steps - 1``, the last at
    ``total_steps - 1``. Momentum runs ``max_momentum -> base_momentum ->
    max_momentum``. As torch, the groups get ``initial_lr``, ``max_lr`` and
    ``min_lr`` (and ``max_momentum``/``base_momentum``), read at every step.
    Call :meth:`step` after every batch; stepping past ``total_steps``
    raises ValueError (leaving the scheduler as it was).

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      max_lr: the peak, a float or one per group.
      total_steps: a positive int; or None and give ``epochs`` and ``steps_per_epoch``.
      epochs: positive int, with ``steps_per_epoch``.
      steps_per_epoch: positive int, with ``epochs``.
      pct_start: fraction of the steps spent rising, in [0, 1]. Default 0.3.
      anneal_strategy: ``'cos'`` or ``'linear'``. Default ``'cos'``.
      cycle_momentum: cycle momentum inversely to the learning rate. Default True.
      base_momentum: lower momentum bound, a float or one per group. Default 0.85.
      max_momentum: upper momentum bound, a float or one per group. Default 0.95.
      div_factor: ``max_lr / initial_lr``, > 0. Default 25.
      final_div_factor: ``initial_lr / min_lr``, > 0. Default 1e4.
      three_phase: descend back to ``initial_lr`` before the final anneal. Default False.
      last_epoch: the last step taken, -1 to start. Default -1.

    .. warning::
       torch raises after having advanced ``last_epoch``; here the failed
       step changes nothing. A ``pct_start`` that gives a phase of zero length
       (torch's ZeroDivisionError) is rejected at construction. A negative
       ``max_lr`` or a momentum bound outside [0, 1] (``betas[0]``: [0, 1))
       raises ValueError (torch lets them through, to a diverging run). At
       ``step == total_steps`` (one past the last, which torch allows) the
       linear anneal holds its end value, where torch extrapolates past
       ``min_lr``, to a negative lr when the last phase is steep.

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import OneCycleLR
    >>> opt = SGD([np.zeros(3)], lr=0.1, momentum=0.9)
    >>> sched = OneCycleLR(opt, max_lr=1.0, total_steps=10, pct_start=0.5, anneal_strategy="linear")
    >>> sched.get_last_lr()
    [0.04]

    References:
      Smith & Topin, `Super-Convergence: Very Fast Training of Neural Networks
      Using Large Learning Rates <https://arxiv.org/abs/1708.07120>`_, 2018.
    """

    @atomic
    def __init__(
        self,
        optimizer,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        last_epoch = _prepare(optimizer, last_epoch)
        total = schedules._check_one_cycle(
            total_steps, epochs, steps_per_epoch, pct_start, anneal_strategy, div_factor, final_div_factor,
            three_phase,
        )
        three_phase = check_bool("three_phase", three_phase)
        n = len(optimizer.param_groups)
        max_lrs = per_group("max_lr", max_lr, n, check_lr)
        cycle_momentum = check_bool("cycle_momentum", cycle_momentum)
        if cycle_momentum:
            use_beta1, base_momentums, max_momentums = _momenta(optimizer, base_momentum, max_momentum)

        self.total_steps = total
        self.three_phase = three_phase
        self._phase_ends = schedules._one_cycle_ends(total, native(pct_start), three_phase)
        self._anneal_func_type = str(native(anneal_strategy))
        self.div_factor = native(div_factor)
        self.final_div_factor = native(final_div_factor)
        # Kept to extend to groups added later (only when given as one scalar).
        self._max_lrs = max_lrs
        if last_epoch == -1:
            for m, group in zip(max_lrs, optimizer.param_groups, strict=True):
                self._set_group_lrs(group, m)
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = use_beta1
            self._max_momentums = max_momentums
            self._base_momentums = base_momentums
            if last_epoch == -1:
                _groups.start_momentum_cycle(optimizer, max_momentums, base_momentums, use_beta1)
        super().__init__(optimizer, last_epoch)

    def _set_group_lrs(self, group: dict, max_lr: float) -> None:
        group["initial_lr"] = max_lr / self.div_factor
        group["max_lr"] = max_lr
        group["min_lr"] = group["initial_lr"] / self.final_div_factor

    def get_lr(self) -> list[float]:
        """The learning rates at ``last_epoch``; also writes the cycled momentum into the groups (as torch)."""
        self._warn_outside_step()
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(
                f"Tried to step {step} times. The specified number of total steps is {self.total_steps}"
            )
        anneal = schedules._ANNEAL[self._anneal_func_type]
        lrs = []
        for group in self.optimizer.param_groups:
            points = schedules._one_cycle_lr_points(
                group["initial_lr"], group["max_lr"], group["min_lr"], self.three_phase
            )
            lrs.append(schedules._piecewise_anneal(step, ends=self._phase_ends, values=points, anneal=anneal))
        if not self._get_lr_called_within_step and self.cycle_momentum:
            for group, momentum in zip(self.optimizer.param_groups, self._momentum_values(), strict=True):
                _groups.write_momentum(group, momentum, self.use_beta1)
        return lrs

    def _momentum_values(self) -> list[float] | None:
        if not self.cycle_momentum:
            return None
        anneal = schedules._ANNEAL[self._anneal_func_type]
        out = []
        for group in self.optimizer.param_groups:
            points = schedules._one_cycle_momentum_points(
                group["base_momentum"], group["max_momentum"], self.three_phase
            )
            out.append(schedules._piecewise_anneal(self.last_epoch, ends=self._phase_ends, values=points,
                                                   anneal=anneal))
        return out

    def _check_new_groups(self, n_groups: int) -> None:
        _uniform("max_lr", self._max_lrs)
        if self.cycle_momentum:
            _uniform("max_momentum", self._max_momentums)
            _uniform("base_momentum", self._base_momentums)

    def _adopt_new_groups(self, new_groups: list[dict]) -> None:
        k = len(new_groups)
        self._max_lrs.extend([self._max_lrs[0]] * k)
        for group in new_groups:
            self._set_group_lrs(group, self._max_lrs[0])
        if self.cycle_momentum:
            self._max_momentums.extend([self._max_momentums[0]] * k)
            self._base_momentums.extend([self._base_momentums[0]] * k)
            for group in new_groups:
                group["max_momentum"] = self._max_momentums[0]
                group["base_momentum"] = self._base_momentums[0]
        super()._adopt_new_groups(new_groups)

    # ---------------------------------------------------------- checkpoints

    _GROUP_KEYS = ("initial_lr", "max_lr", "min_lr")

    def _state_spec(self) -> dict:
        n = len(self.optimizer.param_groups)
        return {
            **super()._state_spec(),
            "total_steps": (_state.integer(1), True),
            "_anneal_func_type": (_state.choice(*schedules._ANNEAL), True),
            "cycle_momentum": (_state.boolean, True),
            "use_beta1": (_state.boolean, False),
            # torch writes its phases as _schedule_phases; ms_optim as
            # _phase_ends and three_phase (and what new groups need).
            "_schedule_phases": (_torch_phases, False),
            "_phase_ends": (_phase_ends, False),
            "three_phase": (_state.boolean, False),
            "div_factor": (_state.real(low=0.0, low_open=True), False),
            "final_div_factor": (_state.real(low=0.0, low_open=True), False),
            "_max_lrs": (_state.lr_list(n), False),
            "_max_momentums": (_state.momentum_list(n), False),
            "_base_momentums": (_state.momentum_list(n), False),
        }

    def _check_state_together(self, checked: dict, where: str) -> None:
        phases = checked.pop("_schedule_phases", None)
        if phases is not None:
            ends = [p["end_step"] for p in phases]
            if "_phase_ends" in checked and checked["_phase_ends"] != ends:
                raise ValueError(f"{where}: _phase_ends {checked['_phase_ends']} and _schedule_phases "
                                 f"(ending at {ends}) disagree")
            checked["_phase_ends"] = ends
        if "_phase_ends" not in checked:
            raise ValueError(f"{where} is not the state of a OneCycleLR (missing keys: ['_phase_ends'] or "
                             "torch's ['_schedule_phases'])")
        ends = checked["_phase_ends"]
        three = len(ends) == 3
        if checked.setdefault("three_phase", three) != three:
            raise ValueError(f"{where}['three_phase']={checked['three_phase']!r} but {where}['_phase_ends'] "
                             f"has {len(ends)} phases: {ends!r}")
        total = checked["total_steps"]
        if ends[-1] != total - 1:
            raise ValueError(f"{where}['_phase_ends']: the last phase must end at total_steps - 1 = {total - 1}, "
                             f"got {ends!r}")
        if checked["last_epoch"] > total:
            raise ValueError(f"{where}['last_epoch']={checked['last_epoch']} is past total_steps={total}")
        _momentum_state(self, checked, where, ("_max_momentums", "_base_momentums"), ())
        # The phases' end points live in the groups (the optimizer's state).
        keys = self._GROUP_KEYS + (("max_momentum", "base_momentum") if checked["cycle_momentum"] else ())
        for i, group in enumerate(self.optimizer.param_groups):
            for k in keys:
                if k not in group:
                    raise ValueError(f"param_groups[{i}] has no {k!r}, which a OneCycleLR state reads: "
                                     "load the optimizer's state_dict first")
                if k in ("max_momentum", "base_momentum"):
                    check_momentum(f"param_groups[{i}][{k!r}]", group[k], beta=checked.get("use_beta1", False))
                else:
                    _groups.check_value(f"param_groups[{i}][{k!r}]", group[k], written=False)


def _phase_ends(name: str, v) -> list:
    items = _state.sequence(name, v)
    if len(items) not in (2, 3):
        raise ValueError(f"{name} must hold 2 or 3 phase ends, got {len(items)}: {items!r}")
    ends = [_state.real()(f"{name}[{i}]", e) for i, e in enumerate(items)]
    starts = [0.0, *ends[:-1]]
    # The constructor's own rule (pct_start=0 gives ends [-1, -2, T-1]: odd, but torch's and loadable).
    if any(e == s for s, e in zip(starts, ends)):
        raise ValueError(f"{name} must give phases of non-zero length (a division by zero otherwise), got {ends!r}")
    return ends


_TORCH_PHASES = {
    2: [("initial_lr", "max_lr", "max_momentum", "base_momentum"),
        ("max_lr", "min_lr", "base_momentum", "max_momentum")],
    3: [("initial_lr", "max_lr", "max_momentum", "base_momentum"),
        ("max_lr", "initial_lr", "base_momentum", "max_momentum"),
        ("initial_lr", "min_lr", "max_momentum", "max_momentum")],
}


def _torch_phases(name: str, v) -> list[dict]:
    """torch's ``_schedule_phases``: the phase layout its constructor writes, nothing else."""
    items = _state.sequence(name, v)
    layout = _TORCH_PHASES.get(len(items))
    if layout is None:
        raise ValueError(f"{name} must hold 2 or 3 phases, got {len(items)}")
    out = []
    for i, (phase, want) in enumerate(zip(items, layout)):
        if not isinstance(phase, Mapping):
            raise TypeError(f"{name}[{i}] must be a dict, got {type(phase).__name__}: {phase!r}")
        got = tuple(_state.unbox(phase.get(k)) for k in ("start_lr", "end_lr", "start_momentum", "end_momentum"))
        if got != want or set(phase) != {"end_step", "start_lr", "end_lr", "start_momentum", "end_momentum"}:
            raise ValueError(f"{name}[{i}] is not a phase torch's OneCycleLR writes: {dict(phase)!r}")
        out.append({"end_step": _state.real()(f"{name}[{i}]['end_step']", phase["end_step"])})
    _phase_ends(name, [p["end_step"] for p in out])
    return out
