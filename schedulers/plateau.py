r"""ReduceLROnPlateau: cut the learning rate when a metric stops improving."""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

from . import _groups, _state
from ._checks import check_choice, check_int, check_metric, check_optimizer, check_real, is_sequence, native, per_group
from .base import LRScheduler, atomic

__all__ = ["ReduceLROnPlateau"]


def _min_lr(name, v):
    return check_real(name, v, low=0.0)


class ReduceLROnPlateau(LRScheduler):
    r"""Multiply every group's learning rate by ``factor`` once a metric has not improved for ``patience`` steps.

    A metric :math:`a` improves on the best so far :math:`b` when, for
    ``mode='min'``, :math:`a < b (1 - \text{threshold})` (``threshold_mode='rel'``)
    or :math:`a < b - \text{threshold}` (``'abs'``); for ``mode='max'``,
    :math:`a > b (1 + \text{threshold})` or :math:`a > b + \text{threshold}`.
    After more than ``patience`` steps without improvement:

    .. math::
        \eta \leftarrow \max(\eta \cdot \text{factor}, \eta_{min})
        \quad\text{unless the change is at most eps,}

    then ``cooldown`` steps pass before bad steps count again.

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      mode: ``'min'`` or ``'max'``. Default ``'min'``.
      factor: in [0, 1). Default 0.1.
      patience: bad steps tolerated, an int >= 0. Default 10.
      threshold: >= 0. Default 1e-4.
      threshold_mode: ``'rel'`` or ``'abs'``. Default ``'rel'``.
      cooldown: an int >= 0. Default 0.
      min_lr: floor, >= 0, a float or one per group. Default 0.
      eps: smallest change applied, >= 0. Default 1e-8.

    ``step(metrics)`` takes the metric: a real number or a 0-d real array
    (a NumPy scalar, a CuPy or torch 0-d value). A string, a bool or an
    array of several values raises TypeError, changing nothing. A NaN (or
    infinite) metric is taken, as torch takes it: NaN compares as no
    improvement, so a run whose loss has become NaN counts bad steps and has
    its learning rate reduced, rather than stopping at the scheduler; check
    the loss yourself to stop such a run. A group added later takes a
    scalar ``min_lr``; a per-group list cannot cover it (ValueError at the
    next step, changing nothing).

    .. warning::
       torch takes ``step("0.5")`` (it calls ``float`` on the metric) and
       ``step(True)``; here both raise TypeError.

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import ReduceLROnPlateau
    >>> opt = SGD([np.zeros(3)], lr=1.0)
    >>> sched = ReduceLROnPlateau(opt, patience=1, factor=0.5)
    >>> for loss in [1.0, 1.0, 1.0, 0.5]:
    ...     sched.step(loss)
    >>> sched.get_last_lr()
    [0.5]
    """

    @atomic
    def __init__(
        self,
        optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | list[float] = 0,
        eps: float = 1e-8,
    ) -> None:
        check_optimizer(optimizer)
        check_real("factor", factor, low=0.0, high=1.0, high_open=True)
        check_choice("mode", mode, ("min", "max"))
        check_int("patience", patience, minimum=0)
        check_real("threshold", threshold, low=0.0)
        check_choice("threshold_mode", threshold_mode, ("rel", "abs"))
        check_int("cooldown", cooldown, minimum=0)
        min_lrs = per_group("min_lr", min_lr, len(optimizer.param_groups), _min_lr)
        check_real("eps", eps, low=0.0)
        for i, group in enumerate(optimizer.param_groups):
            _groups.check_value(f"param_groups[{i}]['lr']", group.get("lr"))

        self.factor = native(factor)
        self.optimizer = optimizer
        self.default_min_lr = None if is_sequence(min_lr) else native(min_lr)
        self.min_lrs = min_lrs
        self.patience = native(patience)
        self.cooldown = native(cooldown)
        self.eps = native(eps)
        self.last_epoch = 0
        self._last_lr = _groups.lrs(optimizer)
        self._init_is_better(mode=native(mode), threshold=native(threshold), threshold_mode=native(threshold_mode))
        self._reset()

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def _sync_param_groups(self) -> None:
        n = len(self.optimizer.param_groups)
        if n == len(self.min_lrs):
            return
        if self.default_min_lr is None:
            raise ValueError(
                f"min_lr was given per param group ({self.min_lrs!r}) and the optimizer now has {n} groups: "
                "set scheduler.min_lrs to one value per group"
            )
        self.min_lrs = [self.default_min_lr] * n

    @atomic
    def step(self, metrics: SupportsFloat, epoch: int | None = None) -> None:  # type: ignore[override]
        """Record ``metrics`` and reduce the learning rates if it has stopped improving."""
        current = check_metric(metrics)
        if epoch is not None:
            epoch = check_int("epoch", epoch, minimum=0)
        self._sync_param_groups()
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = _groups.lrs(self.optimizer)

    def _reduce_lr(self) -> None:
        groups = self.optimizer.param_groups
        writes = []
        for i, group in enumerate(groups):
            old_lr = _groups.check_value(f"param_groups[{i}]['lr']", group.get("lr"))
            new_lr = max(old_lr * self.factor, self.min_lrs[i])
            if old_lr - new_lr > self.eps:
                writes.append((group, new_lr))
        for group, new_lr in writes:
            _groups.write(group, "lr", new_lr)

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def _init_is_better(self, mode: str, threshold: float, threshold_mode: str) -> None:
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def get_lr(self) -> list[float]:
        """The current learning rates (this scheduler has no formula of the step)."""
        return _groups.lrs(self.optimizer)

    def _state_spec(self) -> dict:
        n = len(self.optimizer.param_groups)
        floor = _state.real(low=0.0)
        return {
            "factor": (_state.real(low=0.0, high=1.0, high_open=True), True),
            "default_min_lr": (_state.optional(floor), True),
            "min_lrs": (_state.per_group(n, floor), True),
            "patience": (_state.integer(0), True),
            "cooldown": (_state.integer(0), True),
            "eps": (floor, True),
            "last_epoch": (_state.integer(0), True),
            "_last_lr": (_state.lr_list(n), True),
            "mode_worse": (_state.extended_real, True),
            "mode": (_state.choice("min", "max"), True),
            "threshold": (floor, True),
            "threshold_mode": (_state.choice("rel", "abs"), True),
            "best": (_state.extended_real, True),
            "cooldown_counter": (_state.integer(0), True),
            "num_bad_epochs": (_state.integer(0), True),
            "_step_count": (_state.integer(0), False),
        }

    def _check_state_together(self, checked: dict, where: str) -> None:
        worse = math.inf if checked["mode"] == "min" else -math.inf
        if checked["mode_worse"] != worse:
            raise ValueError(f"{where}['mode_worse']={checked['mode_worse']!r} must be {worse} for "
                             f"mode={checked['mode']!r}")
        if checked["cooldown_counter"] > checked["cooldown"]:
            raise ValueError(f"{where}['cooldown_counter']={checked['cooldown_counter']} exceeds "
                             f"cooldown={checked['cooldown']}")
        if checked["num_bad_epochs"] > checked["patience"]:
            raise ValueError(f"{where}['num_bad_epochs']={checked['num_bad_epochs']} exceeds "
                             f"patience={checked['patience']} (it is reset when it does)")
