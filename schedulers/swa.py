"""SWALR: anneal every group's learning rate to a fixed SWA value (torch.optim.swa_utils.SWALR)."""

from __future__ import annotations

import math

from . import _groups, _state
from ._checks import check_choice, check_int, check_lr, is_sequence, native, per_group
from .base import LRScheduler, _prepare, atomic

__all__ = ["SWALR"]


def _linear_anneal(t: float) -> float:
    return t


def _cosine_anneal(t: float) -> float:
    return (1 - math.cos(math.pi * t)) / 2


_ANNEAL = {"cos": _cosine_anneal, "linear": _linear_anneal}


class SWALR(LRScheduler):
    r"""Anneal each group's learning rate to its ``swa_lr`` over ``anneal_epochs`` steps, then hold it.

    torch's recursive form: with :math:`\alpha_t = a(\min(1, t / \max(1, T)))`,
    :math:`a(s) = (1 - \cos\pi s)/2` (``"cos"``) or :math:`s` (``"linear"``),
    each step recovers the lr the annealing started from out of the current one
    and moves on from it,

    .. math::
       \eta_0' = \frac{\eta_{t-1} - \alpha_{t-1}\,\eta_{swa}}{1 - \alpha_{t-1}}, \qquad
       \eta_t = \alpha_t\, \eta_{swa} + (1 - \alpha_t)\, \eta_0'

    (:math:`\eta_0' = \eta_{swa}` once :math:`\alpha_{t-1} = 1`), so from a
    constant lr it is :math:`\eta_t = \alpha_t\eta_{swa} + (1-\alpha_t)\eta_0`.
    Each group's target is kept in the group as ``group['swa_lr']``, as torch
    keeps it (and saves it with the optimizer's state).

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      swa_lr: the target learning rate, >= 0: one for all groups, or a list of one per group.
      anneal_epochs: steps of the annealing, an int >= 0 (default: 10); 0 jumps to ``swa_lr`` at once.
      anneal_strategy: ``"cos"`` or ``"linear"`` (default: ``"cos"``).
      last_epoch: the last step taken, -1 to start. Default -1.

    Typical use: train with the usual schedule, then from ``swa_start`` on
    step this one and fold the parameters into an
    :class:`ms_optim.averaging.AveragedParams` after each epoch.

    Example:

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import SWALR
    >>> opt = SGD([np.zeros(3)], lr=0.1)
    >>> sched = SWALR(opt, swa_lr=0.05, anneal_epochs=2, anneal_strategy="linear")
    >>> for _ in range(3):
    ...     sched.step()
    ...     print(round(sched.get_last_lr()[0], 6))
    0.075
    0.05
    0.05

    .. warning::
       torch writes ``swa_lr`` into the groups before checking the other
       arguments and accepts any ``swa_lr``; here a negative or non-finite
       ``swa_lr`` raises ValueError and nothing is written until every
       argument passed. A group added later takes the scalar ``swa_lr`` given
       here (torch: KeyError at the next step); with a per-group list it must
       set its own ``swa_lr`` first.
    """

    _not_in_state = ("anneal_func",)

    @atomic
    def __init__(self, optimizer, swa_lr, anneal_epochs: int = 10, anneal_strategy: str = "cos",
                 last_epoch: int = -1) -> None:
        last_epoch = _prepare(optimizer, last_epoch)
        swa_lrs = per_group("swa_lr", swa_lr, len(optimizer.param_groups), check_lr)
        check_choice("anneal_strategy", anneal_strategy, tuple(_ANNEAL))
        anneal_epochs = check_int("anneal_epochs", anneal_epochs, minimum=0)
        for value, group in zip(swa_lrs, optimizer.param_groups):
            group["swa_lr"] = value
        #: the swa_lr a group added later gets (None when it was given per group)
        self.default_swa_lr = None if is_sequence(swa_lr) else native(swa_lr)
        self._anneal_strategy = native(anneal_strategy)
        self.anneal_func = _ANNEAL[self._anneal_strategy]
        self.anneal_epochs = anneal_epochs
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _get_initial_lr(lr: float, swa_lr: float, alpha: float) -> float:
        if alpha == 1:
            return swa_lr
        return (lr - alpha * swa_lr) / (1 - alpha)

    def get_lr(self) -> list[float]:
        self._warn_outside_step()
        step = self._step_count - 1  # torch counts SWALR's steps, not last_epoch
        if self.anneal_epochs == 0:
            step = max(1, step)
        prev_alpha = self.anneal_func(max(0, min(1, (step - 1) / max(1, self.anneal_epochs))))
        groups = self.optimizer.param_groups
        swa_lrs = [self._swa_lr(i, g) for i, g in enumerate(groups)]
        prev_lrs = [self._get_initial_lr(_groups.host(g["lr"]), s, prev_alpha) for g, s in zip(groups, swa_lrs)]
        alpha = self.anneal_func(max(0, min(1, step / max(1, self.anneal_epochs))))
        return [s * alpha + lr * (1 - alpha) for s, lr in zip(swa_lrs, prev_lrs)]

    @staticmethod
    def _swa_lr(i: int, group: dict) -> float:
        if "swa_lr" not in group:
            raise KeyError(f"param_groups[{i}] has no 'swa_lr': set it, or build SWALR after adding the group")
        return check_lr(f"param_groups[{i}]['swa_lr']", group["swa_lr"])

    # -------------------------------------------------- groups added later

    def _check_new_groups(self, n_groups: int) -> None:
        new = self.optimizer.param_groups[len(self.base_lrs):]
        for i, group in enumerate(new, len(self.base_lrs)):
            if "swa_lr" in group:
                check_lr(f"param_groups[{i}]['swa_lr']", group["swa_lr"])
            elif self.default_swa_lr is None:
                raise ValueError(
                    f"swa_lr was given per param group and param_groups[{i}] (added since) has no 'swa_lr': "
                    "set group['swa_lr'] for the new group"
                )

    def _adopt_new_groups(self, new_groups: list[dict]) -> None:
        for group in new_groups:
            group.setdefault("swa_lr", self.default_swa_lr)
        super()._adopt_new_groups(new_groups)

    # ---------------------------------------------------------- checkpoints

    def _state_spec(self) -> dict:
        return {
            **super()._state_spec(),
            "anneal_epochs": (_state.integer(0), True),
            "_anneal_strategy": (_state.choice(*_ANNEAL), True),
            "default_swa_lr": (_state.optional(_state.lr), False),  # torch keeps none
        }

    def _apply_state(self, checked: dict) -> None:
        super()._apply_state(checked)
        self.anneal_func = _ANNEAL[self._anneal_strategy]
