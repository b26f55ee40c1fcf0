r"""Cosine annealing, without and with warm restarts (SGDR)."""

from __future__ import annotations

import math

from . import _groups, _state, schedules
from ._checks import check_real, native
from .base import LRScheduler, _prepare, atomic

__all__ = ["CosineAnnealingLR", "CosineAnnealingWarmRestarts"]


class CosineAnnealingLR(LRScheduler):
    r"""Anneal every group's learning rate from its base to ``eta_min`` along a cosine.

    .. math::
        \eta_t = \eta_{min} + (\eta_0 - \eta_{min})\,\frac{1 + \cos(\pi t / T_{max})}{2}

    :meth:`step` computes this recursively, as torch does (which is what lets
    it chain with other schedulers):

    .. math::
        \eta_t = \eta_{min} + (\eta_{t-1} - \eta_{min})\,
                 \frac{1 + \cos(\pi t / T_{max})}{1 + \cos(\pi (t-1) / T_{max})}

    and, past the trough, where that ratio is 0/0, climbs by
    :math:`(\eta_0 - \eta_{min})(1 - \cos(\pi / T_{max}))/2`. Like torch's, the
    schedule does not stop at :math:`T_{max}`: it rises again with period
    :math:`2 T_{max}`. For annealing followed by restarts use
    :class:`CosineAnnealingWarmRestarts`; to warm up first, :class:`LinearWarmup`.

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      T_max: half period in steps, > 0.
      eta_min: the floor, >= 0. Default 0.
      last_epoch: the last step taken, -1 to start. Default -1.

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import CosineAnnealingLR
    >>> opt = SGD([np.zeros(3)], lr=1.0)
    >>> sched = CosineAnnealingLR(opt, T_max=2)
    >>> sched.step(); sched.get_last_lr()
    [0.5]

    References:
      Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
      <https://arxiv.org/abs/1608.03983>`_, 2017.
    """

    @atomic
    def __init__(self, optimizer, T_max: float, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        last_epoch = _prepare(optimizer, last_epoch)
        schedules._check_cosine(T_max, eta_min)
        self.T_max = native(T_max)
        self.eta_min = native(eta_min)
        super().__init__(optimizer, last_epoch)

    def _state_spec(self) -> dict:
        return {**super()._state_spec(), "T_max": (_state.real(low=0.0, low_open=True), True),
                "eta_min": (_state.real(low=0.0), True)}

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        t = self.last_epoch
        if self._is_initial:
            return _groups.lrs(self.optimizer)
        if self._step_count == 1 and t > 0:
            return self._get_closed_form_lr()
        if (t - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [
                _groups.host(g["lr"])
                + schedules._cosine_restart_increment(init_value=b, T_max=self.T_max, eta_min=self.eta_min)
                for b, g in zip(self.base_lrs, self.optimizer.param_groups, strict=True)
            ]
        ratio = schedules._cosine_ratio(t, T_max=self.T_max)
        return [ratio * (_groups.host(g["lr"]) - self.eta_min) + self.eta_min for g in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [
            schedules._cosine(self.last_epoch, init_value=b, T_max=self.T_max, eta_min=self.eta_min)
            for b in self.base_lrs
        ]


class CosineAnnealingWarmRestarts(LRScheduler):
    r"""Cosine annealing restarted every period, each period ``T_mult`` times the last (SGDR).

    .. math::
        \eta_t = \eta_{min} + (\eta_0 - \eta_{min})\,\frac{1 + \cos(\pi T_{cur} / T_i)}{2}

    :math:`T_i = T_0 T_{mult}^i` is the length of the current period and
    :math:`T_{cur}` the steps since it began. ``step(epoch)`` accepts a
    fractional epoch (e.g. ``epoch + batch / n_batches``) and jumps there.

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      T_0: length of the first period, a positive int.
      T_mult: growth factor of the period, an int >= 1. Default 1.
      eta_min: the floor, >= 0. Default 0.
      last_epoch: the last step taken, -1 to start. Default -1.

    .. warning::
       torch finds the period of ``step(epoch)`` with a floating-point
       logarithm and, exactly at some restarts (``T_0=1, T_mult=3,
       epoch=121``), lands one period short: at the trough instead of the
       peak. Here periods are counted exactly, so ``step(epoch)`` agrees with
       stepping one by one.

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import CosineAnnealingWarmRestarts
    >>> opt = SGD([np.zeros(3)], lr=1.0)
    >>> sched = CosineAnnealingWarmRestarts(opt, T_0=2)
    >>> sched.step(0.5); round(sched.get_last_lr()[0], 6)
    0.853553
    >>> sched.step(2); sched.get_last_lr()
    [1.0]

    References:
      Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
      <https://arxiv.org/abs/1608.03983>`_, 2017.
    """

    @atomic
    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        last_epoch = _prepare(optimizer, last_epoch)
        schedules._check_warm_restarts(T_0, T_mult, eta_min)
        self.T_0 = native(T_0)
        self.T_i = self.T_0
        self.T_mult = native(T_mult)
        self.eta_min = native(eta_min)
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def _state_spec(self) -> dict:
        return {**super()._state_spec(), "T_0": (_state.integer(1), True), "T_i": (_state.integer(1), True),
                "T_mult": (_state.integer(1), True), "eta_min": (_state.real(low=0.0), True),
                "T_cur": (_state.real(low=0.0), True)}

    def _check_state_together(self, checked: dict, where: str) -> None:
        T_0, T_i, T_mult, T_cur = (checked[k] for k in ("T_0", "T_i", "T_mult", "T_cur"))
        if not T_cur < T_i:
            raise ValueError(f"{where}['T_cur']={T_cur!r} must be < T_i={T_i!r} (the steps into the current period)")
        period = T_0
        while period < T_i and T_mult > 1:
            period *= T_mult
        if period != T_i:
            raise ValueError(f"{where}['T_i']={T_i!r} is not a period of this schedule (T_0 * T_mult**k with "
                             f"T_0={T_0}, T_mult={T_mult})")

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        return [
            schedules._cosine(self.T_cur, init_value=b, T_max=self.T_i, eta_min=self.eta_min) for b in self.base_lrs
        ]

    @atomic
    def step(self, epoch: float | None = None) -> None:
        """Advance one step, or jump to ``epoch`` (a float is fine: a fraction of a period)."""
        if epoch is not None:
            check_real("epoch", epoch, low=0.0)
            epoch = native(epoch)
        self._sync_param_groups()
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            self.T_cur, self.T_i = schedules._warm_restart_position(epoch, T_0=self.T_0, T_mult=self.T_mult)
        self.last_epoch = math.floor(epoch)
        self._get_lr_called_within_step = True
        try:
            values = self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        self._write(values)
