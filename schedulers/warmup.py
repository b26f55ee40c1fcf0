r"""LinearWarmup: a linear ramp, then hold, or hand over to any other scheduler."""

from __future__ import annotations

from typing import Any

from . import _groups, _state, schedules
from ._checks import check_int, check_metric, check_optimizer, native
from .base import LRScheduler, atomic

__all__ = ["LinearWarmup"]


class LinearWarmup(LRScheduler):
    r"""Warm the learning rate up linearly, then hold it or follow another scheduler.

    .. math::
        \eta_t = \begin{cases}
            \eta_0 \left(s + (1 - s)\,\dfrac{t}{W}\right) & t < W \\
            S(t - W) & t \ge W \text{, with } S \text{ the scheduler } \texttt{after} \\
            \eta_0 & t \ge W \text{, without one}
        \end{cases}

    :math:`\eta_0` is each group's ``initial_lr`` (its ``lr`` when no
    scheduler was built on the optimizer before), :math:`s` =
    ``start_factor``, :math:`W` = ``warmup_steps``, and :math:`S(k)` the
    learning rate ``after`` gives at its own step :math:`k`: warmup 5 then
    ``CosineAnnealingLR(T_max=10)`` gives the cosine's step-:math:`k` value at
    step :math:`5 + k`, the very value (bit for bit) that scheduler gives
    alone at its step :math:`k`.

    Build ``after`` first, on the same optimizer, then the warmup around it;
    from then on step only the warmup. The order of construction is
    harmless: the ramp reads ``initial_lr`` (which ``after`` set, or kept),
    not the ``lr`` that ``after``'s constructor wrote; and at step :math:`W`
    the groups get back the learning rates ``after`` had left, so that its
    recursive (chainable) form continues exactly as if it had run alone.
    Schedulers that set ``initial_lr`` themselves (:class:`OneCycleLR`) or
    overwrite ``lr`` (:class:`CyclicLR`) are warmed up to their own starting
    point. Momentum set by ``after``'s constructor (cyclic schedulers) is left
    as it set it during the warmup.

    With ``after`` a :class:`ReduceLROnPlateau`, pass the metric to
    :meth:`step`: it is ignored up to step :math:`W` and fed to ``after`` from
    step :math:`W + 1` on.

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      warmup_steps: :math:`W`, an int >= 0 (0: ``after`` from the start).
      start_factor: :math:`s`, in [0, 1]: the first step's fraction of the base. Default 0.
      after: an LRScheduler on the same optimizer to follow from step :math:`W`, or None to hold.

    :meth:`state_dict` holds ``after``'s state under ``'after'``; loading
    restores both.

    Example: warmup for 5 steps, then cosine annealing over 10.

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import CosineAnnealingLR, LinearWarmup
    >>> opt = SGD([np.zeros(3)], lr=0.1)
    >>> sched = LinearWarmup(opt, warmup_steps=5, after=CosineAnnealingLR(opt, T_max=10))
    >>> lrs = [sched.get_last_lr()[0]]
    >>> for _ in range(15):
    ...     sched.step(); lrs.append(sched.get_last_lr()[0])
    >>> [round(lr, 4) for lr in lrs[::5]]
    [0.0, 0.1, 0.05, 0.0]

    References:
      Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
      <https://arxiv.org/abs/1706.02677>`_, 2017.
    """

    _not_in_state = ("after",)

    @atomic
    def __init__(self, optimizer, warmup_steps: int, start_factor: float = 0.0, after: LRScheduler | None = None):
        check_optimizer(optimizer)
        schedules._check_warmup(warmup_steps, start_factor)
        if after is not None:
            if not isinstance(after, LRScheduler):
                raise TypeError(f"after must be an LRScheduler or None, got {type(after).__name__}: {after!r}")
            if after.optimizer is not optimizer:
                raise ValueError(
                    f"after must schedule the same optimizer as the warmup; after={type(after).__name__} "
                    "was built on a different one"
                )
        self.warmup_steps = native(warmup_steps)
        self.start_factor = native(start_factor)
        self.after = after
        super().__init__(optimizer, -1)

    def _ramp(self, t: int) -> list[float]:
        return [
            schedules._linear_warmup(t, init_value=b, warmup_steps=self.warmup_steps, start_factor=self.start_factor)
            for b in self.base_lrs
        ]

    def get_lr(self) -> list[float]:
        """The warmup's own learning rates at ``last_epoch`` (the base lrs from step ``warmup_steps`` on)."""
        self._warn_outside_step()
        return self._ramp(self.last_epoch)

    def _is_plateau(self) -> bool:
        from .plateau import ReduceLROnPlateau

        return isinstance(self.after, ReduceLROnPlateau)

    @atomic
    def step(self, metrics=None) -> None:  # type: ignore[override]
        """Advance one step; ``metrics`` is for an ``after`` that is a ReduceLROnPlateau."""
        t = self.last_epoch + 1
        if metrics is not None and not self._is_plateau():
            raise TypeError(
                f"metrics is only taken when after is a ReduceLROnPlateau, got metrics={metrics!r} "
                f"with after={type(self.after).__name__}"
            )
        if self._is_plateau() and t > self.warmup_steps and metrics is None:
            raise TypeError("step() missing metrics: after is a ReduceLROnPlateau and the warmup is over")
        if metrics is not None:
            check_metric(metrics)  # during the warmup too: a string is a bug whenever it comes
        self._step_count += 1
        self._advance(t, metrics)

    def _update_lr(self, epoch=None) -> None:
        # SequentialLR restarts a scheduler at its milestone with _update_lr(0).
        t = self.last_epoch + 1 if epoch is None else check_int("epoch", epoch, minimum=0)
        if self.after is not None and t > self.warmup_steps and epoch is not None:
            raise ValueError(
                f"LinearWarmup cannot jump to epoch={epoch} past warmup_steps={self.warmup_steps}: "
                "after is stepped one step at a time"
            )
        self._advance(t, None)

    def _advance(self, t: int, metrics) -> None:
        self._sync_param_groups()
        groups = self.optimizer.param_groups
        if self.after is None or t < self.warmup_steps:
            values = self._ramp(t)
        elif t == self.warmup_steps:
            # Hand over: give the groups back the lrs `after` left, so that its
            # recursive form continues from its own last value. Groups it has
            # never seen start from their base.
            handed = self.after.get_last_lr()
            values = handed + self.base_lrs[len(handed):]
        else:
            values = None
            if metrics is not None:
                self.after.step(metrics)
            else:
                self.after.step()
        self.last_epoch = t
        if values is not None:
            self._write(values)
        else:
            self._last_lr = _groups.lrs(self.optimizer)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["after"] = None if self.after is None else self.after.state_dict()
        return state

    def _state_spec(self) -> dict:
        return {
            **super()._state_spec(),
            "warmup_steps": (_state.integer(0), True),
            "start_factor": (_state.real(low=0.0, high=1.0), True),
            "after": (self._after_check, False),
        }

    def _after_check(self, name: str, saved):
        if (saved is None) != (self.after is None):
            raise ValueError(
                f"{name}: state_dict and this LinearWarmup disagree on after: "
                f"saved {'none' if saved is None else 'one'}, here "
                f"{'none' if self.after is None else type(self.after).__name__}"
            )
        return None if saved is None else self.after._checked_state(saved, name)

    def _check_state_together(self, checked: dict, where: str) -> None:
        if "after" not in checked:
            self._after_check(f"{where}['after']", None)
        checked.setdefault("after", None)

    def _apply_state(self, checked: dict) -> None:
        plan = checked.pop("after", None)
        super()._apply_state(checked)
        if plan is not None:
            self.after._apply_state(plan)
