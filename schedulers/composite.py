r"""Schedulers made of schedulers: SequentialLR (one after another) and ChainedScheduler (all at once)."""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

from . import _groups, _state, schedules
from ._checks import check_last_epoch, check_optimizer
from .base import LRScheduler, atomic

__all__ = ["SequentialLR", "ChainedScheduler"]


def _check_schedulers(owner: str, schedulers, optimizer) -> list:
    """Non-empty, all LRSchedulers (not ReduceLROnPlateau) on ``optimizer``."""
    from .plateau import ReduceLROnPlateau

    if isinstance(schedulers, (str, bytes)) or not hasattr(schedulers, "__len__"):
        raise TypeError(f"schedulers must be a list of LRSchedulers, got {type(schedulers).__name__}")
    if len(schedulers) < 1:
        raise ValueError(f"{owner} expects at least one scheduler, got schedulers={list(schedulers)!r}")
    for i, s in enumerate(schedulers):
        if not isinstance(s, LRScheduler):
            raise TypeError(f"schedulers[{i}] must be an LRScheduler, got {type(s).__name__}: {s!r}")
        if isinstance(s, ReduceLROnPlateau):
            raise ValueError(
                f"{owner} does not support ReduceLROnPlateau (schedulers[{i}]): its step needs a metric"
            )
        if s.optimizer is not optimizer:
            raise ValueError(
                f"{owner} expects all schedulers to belong to the same optimizer, but schedulers[{i}] "
                f"({type(s).__name__}) has a different one"
            )
    return list(schedulers)


class _Composite(LRScheduler):
    """A scheduler made of others: their states travel inside its own state_dict."""

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in super().state_dict().items() if k != "_schedulers"}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    _not_in_state = ("_schedulers",)

    def _children_check(self, name: str, value) -> list:
        """Every nested state checked by its own scheduler, before any is applied."""
        items = _state.sequence(name, value)
        if len(items) != len(self._schedulers):
            raise ValueError(f"{name} must hold the states of this {type(self).__name__}'s "
                             f"{len(self._schedulers)} schedulers, got {len(items)}")
        return [s._checked_state(v, f"{name}[{i}]") for i, (s, v) in enumerate(zip(self._schedulers, items))]

    def _apply_state(self, checked: dict) -> None:
        children = checked.pop("_schedulers")
        super()._apply_state(checked)
        for s, plan in zip(self._schedulers, children):
            s._apply_state(plan)


class SequentialLR(_Composite):
    r"""Run ``schedulers[i]`` from ``milestones[i - 1]`` on, each from its own step 0.

    .. math::
        \eta_t = S_i(t - m_{i-1}) \quad\text{for}\quad m_{i-1} \le t < m_i, \qquad m_{-1} = 0

    At construction the groups' ``lr`` are reset to ``initial_lr`` and the
    construction steps of the given schedulers are undone, as torch does;
    at each milestone the next scheduler restarts from its closed form at 0.
    For a warmup before one scheduler, :class:`LinearWarmup` is simpler.

    Args:
      optimizer: an :class:`ms_optim.Optimizer`, the one every scheduler drives.
      schedulers: the LRSchedulers, in order (not ReduceLROnPlateau).
      milestones: ``len(schedulers) - 1`` strictly increasing ints.
      last_epoch: the last step taken, -1 to start. Default -1.

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import SequentialLR, ConstantLR, ExponentialLR
    >>> opt = SGD([np.zeros(3)], lr=1.0)
    >>> s1 = ConstantLR(opt, factor=0.5, total_iters=2)
    >>> s2 = ExponentialLR(opt, gamma=0.5)
    >>> sched = SequentialLR(opt, [s1, s2], milestones=[2])
    >>> lrs = [sched.get_last_lr()[0]]
    >>> for _ in range(4):
    ...     sched.step(); lrs.append(sched.get_last_lr()[0])
    >>> lrs
    [0.5, 0.5, 1.0, 0.5, 0.25]
    """

    @atomic
    def __init__(self, optimizer, schedulers: list[LRScheduler], milestones: list[int], last_epoch: int = -1) -> None:
        check_optimizer(optimizer)
        schedulers = _check_schedulers(type(self).__name__, schedulers, optimizer)
        ms = schedules._check_milestones(milestones)
        if len(ms) != len(schedulers) - 1:
            raise ValueError(
                f"{type(self).__name__} expects len(milestones) == len(schedulers) - 1, got "
                f"{len(schedulers)} schedulers and milestones={ms!r}"
            )
        last_epoch = check_last_epoch(last_epoch)
        for i, group in enumerate(optimizer.param_groups):
            if "initial_lr" not in group:
                raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}]")
            _groups.check_value(f"param_groups[{i}]['initial_lr']", group["initial_lr"], written=False)
            _groups.check_target(f"param_groups[{i}]['lr']", group.get("lr"))

        self._schedulers = schedulers
        self._milestones = ms
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            _groups.write(group, "lr", _groups.host(group["initial_lr"]))
        self.recursive_undo()
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = self._schedulers[idx].get_last_lr()

    def recursive_undo(self, sched=None) -> None:
        """Take back one step of every (nested) scheduler: the one each took when built."""
        scheds = self if sched is None else sched
        if hasattr(scheds, "_schedulers"):
            for s in scheds._schedulers:
                self.recursive_undo(s)
        elif hasattr(scheds, "last_epoch"):
            scheds.last_epoch -= 1

    def _sync_param_groups(self) -> None:
        pass  # the scheduler in charge adopts new groups itself

    @atomic
    def step(self) -> None:  # type: ignore[override]
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def _state_spec(self) -> dict:
        n = len(self.optimizer.param_groups)
        k = len(self._schedulers) - 1
        return {
            "_milestones": (lambda name, v: _state.increasing_ints(name, v, k), True),
            "last_epoch": (_state.integer(0), True),
            "_last_lr": (_state.lr_list(n), True),
            "_schedulers": (self._children_check, True),
        }



class ChainedScheduler(_Composite):
    r"""Step several schedulers together, each scaling the lr the previous ones left.

    With chainable (multiplicative) schedulers the factors multiply:

    .. math::
        \eta_t = \eta_0 \prod_k f_k(t)

    Args:
      schedulers: the LRSchedulers, stepped in order (not ReduceLROnPlateau).
      optimizer: their common optimizer; None takes ``schedulers[0].optimizer``.

    >>> import numpy as np
    >>> from ms_optim import SGD
    >>> from schedulers import ChainedScheduler, ConstantLR, ExponentialLR
    >>> opt = SGD([np.zeros(3)], lr=1.0)
    >>> sched = ChainedScheduler([ConstantLR(opt, factor=0.5, total_iters=2), ExponentialLR(opt, gamma=0.5)])
    >>> lrs = [sched.get_last_lr()[0]]
    >>> for _ in range(3):
    ...     sched.step(); lrs.append(sched.get_last_lr()[0])
    >>> lrs
    [0.5, 0.25, 0.25, 0.125]
    """

    def __init__(self, schedulers, optimizer=None) -> None:
        if not isinstance(schedulers, (str, bytes)) and hasattr(schedulers, "__len__") and len(schedulers) > 0:
            first = schedulers[0]
            optimizer = optimizer if optimizer is not None else getattr(first, "optimizer", None)
        if optimizer is not None:
            check_optimizer(optimizer)
        schedulers = _check_schedulers(type(self).__name__, schedulers, optimizer)
        self._schedulers = schedulers
        self.optimizer = optimizer
        self._last_lr = _groups.lrs(optimizer)

    def _sync_param_groups(self) -> None:
        pass  # each scheduler adopts new groups itself

    @atomic
    def step(self) -> None:  # type: ignore[override]
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = _groups.lrs(self.optimizer)

    def _state_spec(self) -> dict:
        return {
            "_last_lr": (_state.lr_list(len(self.optimizer.param_groups)), True),
            "_schedulers": (self._children_check, True),
        }

