r"""Schedulers that scale the base learning rate by a factor of the step.

Each reproduces torch's values: the recursive ("chainable") form in
:meth:`get_lr`, used by :meth:`step`, and the closed form used by
``step(epoch)``. Both take their math from :mod:`schedulers.schedules`.
"""

from __future__ import annotations

import types
from collections import Counter
from typing import Any, Callable

from . import _groups, _state, schedules
from ._checks import _is_real, native, unbox
from .base import LRScheduler, _prepare, atomic

__all__ = [
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
]


_GAMMA = _state.real(low=0.0, low_open=True)


def _scaled(optimizer, ratio: float) -> list[float]:
    return [_groups.host(g["lr"]) * ratio for g in optimizer.param_groups]


# ---------------------------------------------------------------- lambdas


class _LambdaScheduler(LRScheduler):
    """Shared by LambdaLR and MultiplicativeLR: one function per group."""

    _not_in_state = ("lr_lambdas",)
    _lr_source = "lr_lambda"

    @atomic
    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1) -> None:
        last_epoch = _prepare(optimizer, last_epoch)
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            # (torch reports this length mismatch the same way)
            if len(lr_lambda) != n:
                raise ValueError(
                    f"lr_lambda must be one function or one per param group: expected {n} lr_lambdas, "
                    f"got {len(lr_lambda)}"
                )
            lambdas = list(lr_lambda)
        else:
            lambdas = [lr_lambda] * n
        for i, fn in enumerate(lambdas):
            if not callable(fn):
                where = f"lr_lambda[{i}]" if isinstance(lr_lambda, (list, tuple)) else "lr_lambda"
                raise TypeError(f"{where} must be a function, got {type(fn).__name__}: {fn!r}")
        self.lr_lambdas: list[Callable[[int], float]] = lambdas
        super().__init__(optimizer, last_epoch)

    def _check_new_groups(self, n_groups: int) -> None:
        if any(fn is not self.lr_lambdas[0] for fn in self.lr_lambdas):
            raise ValueError(
                f"lr_lambda was given per param group ({len(self.lr_lambdas)} functions) and the optimizer "
                f"now has {n_groups} groups: set scheduler.lr_lambdas for the new groups"
            )

    def _adopt_new_groups(self, new_groups: list[dict]) -> None:
        self.lr_lambdas.extend([self.lr_lambdas[0]] * len(new_groups))
        super()._adopt_new_groups(new_groups)

    def state_dict(self) -> dict[str, Any]:
        """As torch: functions are not saved; a callable object's ``__dict__`` is."""
        state = super().state_dict()
        state["lr_lambdas"] = [
            None if isinstance(fn, types.FunctionType) else dict(fn.__dict__) for fn in self.lr_lambdas
        ]
        return state

    def _state_spec(self) -> dict:
        n = len(self.optimizer.param_groups)
        return {**super()._state_spec(), "lr_lambdas": (_state.per_group(n, _state.callable_state), False)}

    def _check_state_together(self, checked: dict, where: str) -> None:
        for i, (fn, saved) in enumerate(zip(self.lr_lambdas, checked.get("lr_lambdas", ()))):
            if saved is not None and not hasattr(fn, "__dict__"):
                raise TypeError(f"{where}['lr_lambdas'][{i}] holds attributes but lr_lambda[{i}] here "
                                f"({fn!r}) has no __dict__ to take them")

    def _apply_state(self, checked: dict) -> None:
        saved = checked.pop("lr_lambdas", ())
        super()._apply_state(checked)
        for fn, attrs in zip(self.lr_lambdas, saved):
            if attrs is not None:
                fn.__dict__.update(attrs)

    def _factor(self, i: int, fn) -> float:
        """``fn(last_epoch)``, checked: a real number (TypeError naming lr_lambda otherwise)."""
        value = unbox(fn(self.last_epoch))
        if not _is_real(value):
            raise TypeError(
                f"lr_lambda for param_groups[{i}] returned {type(value).__name__} at step {self.last_epoch}: "
                f"{value!r}; it must return a real number"
            )
        return float(value)


class LambdaLR(_LambdaScheduler):
    r"""Each group's learning rate is its base times a function of the step.

    .. math::
        \eta_t = \eta_0 \cdot \lambda(t)

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      lr_lambda: a function of the step, or a list of them, one per param group.
      last_epoch: the last step taken, -1 to start. Default -1.

    .. warning::
       torch writes whatever ``base * lr_lambda(t)`` gives. Here a lambda
       that returns something other than a real number raises TypeError,
       and one whose lr would be NaN, infinite or negative raises
       ValueError, before anything is written (a lambda that raises during
       construction leaves no ``initial_lr`` behind either).

    Example:

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import LambdaLR
    >>> opt = SGD([np.zeros(3)], lr=0.1)
    >>> sched = LambdaLR(opt, lambda t: 0.5 ** t)
    >>> sched.step(); sched.get_last_lr()
    [0.05]
    """

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        return [base * self._factor(i, fn) for i, (fn, base) in enumerate(zip(self.lr_lambdas, self.base_lrs,
                                                                                 strict=True))]


class MultiplicativeLR(_LambdaScheduler):
    r"""Each step multiplies every group's learning rate by a function of the step.

    .. math::
        \eta_t = \eta_{t-1} \cdot \lambda(t), \qquad \eta_0 = \text{the group's lr}

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      lr_lambda: a function of the step, or a list of them, one per param group.
      last_epoch: the last step taken, -1 to start. Default -1.

    As :class:`LambdaLR`, a lambda returning a non-number, or a factor that
    makes the lr NaN, infinite or negative, raises before anything changes.

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import MultiplicativeLR
    >>> opt = SGD([np.zeros(3)], lr=1.0)
    >>> sched = MultiplicativeLR(opt, lambda t: 0.5)
    >>> sched.step(); sched.step(); sched.get_last_lr()
    [0.25]
    """

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        if self._is_initial:
            return _groups.lrs(self.optimizer)
        return [
            _groups.host(g["lr"]) * self._factor(i, fn)
            for i, (fn, g) in enumerate(zip(self.lr_lambdas, self.optimizer.param_groups, strict=True))
        ]


# ------------------------------------------------------------ step decays


class StepLR(LRScheduler):
    r"""Decay every group's learning rate by ``gamma`` every ``step_size`` steps.

    .. math::
        \eta_t = \eta_0 \, \gamma^{\lfloor t / \text{step\_size} \rfloor}

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      step_size: period of the decay, a positive int.
      gamma: multiplicative factor, > 0. Default 0.1.
      last_epoch: the last step taken, -1 to start. Default -1.

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import StepLR
    >>> opt = SGD([np.zeros(3)], lr=0.1)
    >>> sched = StepLR(opt, step_size=2, gamma=0.5)
    >>> lrs = []
    >>> for _ in range(4):
    ...     sched.step(); lrs.append(sched.get_last_lr()[0])
    >>> lrs
    [0.1, 0.05, 0.05, 0.025]
    """

    @atomic
    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        last_epoch = _prepare(optimizer, last_epoch)
        schedules._check_step(step_size, gamma)
        self.step_size = native(step_size)
        self.gamma = native(gamma)
        super().__init__(optimizer, last_epoch)

    def _state_spec(self) -> dict:
        return {**super()._state_spec(), "step_size": (_state.integer(1), True), "gamma": (_GAMMA, True)}

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return _groups.lrs(self.optimizer)
        return _scaled(self.optimizer, self.gamma)

    def _get_closed_form_lr(self) -> list[float]:
        return [
            schedules._step(self.last_epoch, init_value=b, step_size=self.step_size, gamma=self.gamma)
            for b in self.base_lrs
        ]


class MultiStepLR(LRScheduler):
    r"""Decay every group's learning rate by ``gamma`` at each milestone.

    .. math::
        \eta_t = \eta_0 \, \gamma^{\#\{m \in \text{milestones} : m \le t\}}

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      milestones: strictly increasing non-negative ints.
      gamma: multiplicative factor, > 0. Default 0.1.
      last_epoch: the last step taken, -1 to start. Default -1.

    .. warning::
       torch counts a repeated milestone twice; here milestones must be
       strictly increasing (a repeat is rejected as the likely typo it is).

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import MultiStepLR
    >>> opt = SGD([np.zeros(3)], lr=1.0)
    >>> sched = MultiStepLR(opt, milestones=[1, 3], gamma=0.5)
    >>> lrs = []
    >>> for _ in range(4):
    ...     sched.step(); lrs.append(sched.get_last_lr()[0])
    >>> lrs
    [0.5, 0.5, 0.25, 0.25]
    """

    @atomic
    def __init__(self, optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1) -> None:
        last_epoch = _prepare(optimizer, last_epoch)
        ms = schedules._check_milestones(milestones)
        schedules._check_gamma(gamma)
        self.milestones = Counter(ms)
        self.gamma = native(gamma)
        super().__init__(optimizer, last_epoch)

    def _state_spec(self) -> dict:
        # torch's repeated milestones (a count of 2) load too.
        return {**super()._state_spec(), "milestones": (_state.milestone_counter, True), "gamma": (_GAMMA, True)}

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        if self.last_epoch not in self.milestones:
            return _groups.lrs(self.optimizer)
        return _scaled(self.optimizer, self.gamma ** self.milestones[self.last_epoch])

    def _get_closed_form_lr(self) -> list[float]:
        ms = sorted(self.milestones.elements())
        return [
            schedules._multistep(self.last_epoch, init_value=b, milestones=ms, gamma=self.gamma)
            for b in self.base_lrs
        ]


class ConstantLR(LRScheduler):
    r"""Scale every group's learning rate by ``factor`` for the first ``total_iters`` steps.

    .. math::
        \eta_t = \eta_0 \cdot \begin{cases} \text{factor} & t < \text{total\_iters} \\
                 1 & \text{otherwise} \end{cases}

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      factor: in (0, 1]. Default 1/3.
      total_iters: a positive int. Default 5.
      last_epoch: the last step taken, -1 to start. Default -1.

    .. warning::
       torch accepts ``factor=0`` and then fails dividing by it at
       ``total_iters``; here it is rejected up front.

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import ConstantLR
    >>> opt = SGD([np.zeros(3)], lr=0.3)
    >>> sched = ConstantLR(opt, factor=0.5, total_iters=2)
    >>> sched.get_last_lr()
    [0.15]
    >>> sched.step(); sched.step(); sched.get_last_lr()
    [0.3]
    """

    @atomic
    def __init__(self, optimizer, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1) -> None:
        last_epoch = _prepare(optimizer, last_epoch)
        schedules._check_constant(factor, total_iters)
        self.factor = native(factor)
        self.total_iters = native(total_iters)
        super().__init__(optimizer, last_epoch)

    def _state_spec(self) -> dict:
        return {**super()._state_spec(), "factor": (_state.real(low=0.0, high=1.0, low_open=True), True),
                "total_iters": (_state.integer(1), True)}

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        return _scaled(
            self.optimizer,
            schedules._constant_ratio(self.last_epoch, factor=self.factor, total_iters=self.total_iters),
        )

    def _get_closed_form_lr(self) -> list[float]:
        return [
            schedules._constant(self.last_epoch, init_value=b, factor=self.factor, total_iters=self.total_iters)
            for b in self.base_lrs
        ]


class LinearLR(LRScheduler):
    r"""Scale every group's learning rate by a factor going linearly from ``start_factor`` to ``end_factor``.

    .. math::
        \eta_t = \eta_0 \left(s + (e - s)\,\frac{\min(t, T)}{T}\right)

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      start_factor: :math:`s`, in (0, 1]. Default 1/3.
      end_factor: :math:`e`, in [0, 1]. Default 1.
      total_iters: :math:`T`, a positive int. Default 5.
      last_epoch: the last step taken, -1 to start. Default -1.

    See :class:`LinearWarmup` for a warmup that starts from 0 and hands over to
    another scheduler.

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import LinearLR
    >>> opt = SGD([np.zeros(3)], lr=1.0)
    >>> sched = LinearLR(opt, start_factor=0.5, total_iters=2)
    >>> sched.step(); sched.get_last_lr()
    [0.75]
    """

    @atomic
    def __init__(
        self,
        optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        last_epoch = _prepare(optimizer, last_epoch)
        schedules._check_linear(start_factor, end_factor, total_iters)
        self.start_factor = native(start_factor)
        self.end_factor = native(end_factor)
        self.total_iters = native(total_iters)
        super().__init__(optimizer, last_epoch)

    def _state_spec(self) -> dict:
        return {**super()._state_spec(),
                "start_factor": (_state.real(low=0.0, high=1.0, low_open=True), True),
                "end_factor": (_state.real(low=0.0, high=1.0), True),
                "total_iters": (_state.integer(1), True)}

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        if self.last_epoch == 0:
            return _scaled(self.optimizer, self.start_factor)
        if self._is_initial or self.last_epoch > self.total_iters:
            return _groups.lrs(self.optimizer)
        return _scaled(
            self.optimizer,
            schedules._linear_ratio(
                self.last_epoch,
                start_factor=self.start_factor,
                end_factor=self.end_factor,
                total_iters=self.total_iters,
            ),
        )

    def _get_closed_form_lr(self) -> list[float]:
        return [
            schedules._linear(
                self.last_epoch,
                init_value=b,
                start_factor=self.start_factor,
                end_factor=self.end_factor,
                total_iters=self.total_iters,
            )
            for b in self.base_lrs
        ]


class ExponentialLR(LRScheduler):
    r"""Decay every group's learning rate by ``gamma`` every step.

    .. math::
        \eta_t = \eta_0 \, \gamma^t

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      gamma: multiplicative factor, > 0.
      last_epoch: the last step taken, -1 to start. Default -1.

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import ExponentialLR
    >>> opt = SGD([np.zeros(3)], lr=1.0)
    >>> sched = ExponentialLR(opt, gamma=0.5)
    >>> sched.step(); sched.step(); sched.get_last_lr()
    [0.25]
    """

    @atomic
    def __init__(self, optimizer, gamma: float, last_epoch: int = -1) -> None:
        last_epoch = _prepare(optimizer, last_epoch)
        schedules._check_gamma(gamma)
        self.gamma = native(gamma)
        super().__init__(optimizer, last_epoch)

    def _state_spec(self) -> dict:
        return {**super()._state_spec(), "gamma": (_GAMMA, True)}

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        if self._is_initial:
            return _groups.lrs(self.optimizer)
        return _scaled(self.optimizer, self.gamma)

    def _get_closed_form_lr(self) -> list[float]:
        return [schedules._exponential(self.last_epoch, init_value=b, gamma=self.gamma) for b in self.base_lrs]


class PolynomialLR(LRScheduler):
    r"""Decay every group's learning rate polynomially to zero over ``total_iters`` steps.

    .. math::
        \eta_t = \eta_0 \left(1 - \frac{\min(t, T)}{T}\right)^{p}

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      total_iters: :math:`T`, a positive int. Default 5.
      power: :math:`p`, >= 0. Default 1.
      last_epoch: the last step taken, -1 to start. Default -1.

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import PolynomialLR
    >>> opt = SGD([np.zeros(3)], lr=1.0)
    >>> sched = PolynomialLR(opt, total_iters=4, power=2.0)
    >>> sched.step(); sched.get_last_lr()
    [0.5625]
    """

    @atomic
    def __init__(self, optimizer, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1) -> None:
        last_epoch = _prepare(optimizer, last_epoch)
        schedules._check_polynomial(total_iters, power)
        self.total_iters = native(total_iters)
        self.power = native(power)
        super().__init__(optimizer, last_epoch)

    def _state_spec(self) -> dict:
        return {**super()._state_spec(), "total_iters": (_state.integer(1), True),
                "power": (_state.real(low=0.0), True)}

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        if self._is_initial or self.last_epoch > self.total_iters:
            return _groups.lrs(self.optimizer)
        return _scaled(
            self.optimizer,
            schedules._polynomial_ratio(self.last_epoch, total_iters=self.total_iters, power=self.power),
        )

    def _get_closed_form_lr(self) -> list[float]:
        return [
            schedules._polynomial(self.last_epoch, init_value=b, total_iters=self.total_iters, power=self.power)
            for b in self.base_lrs
        ]
