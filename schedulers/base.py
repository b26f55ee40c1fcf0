"""LRScheduler: the base every scheduler shares (torch.optim.lr_scheduler.LRScheduler's interface)."""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any

from . import _groups, _state
from ._checks import _is_real, check_last_epoch, check_optimizer, check_real, native, unbox

__all__ = ["LRScheduler"]

_INF = float("inf")
#: how far below 0, relative to the base lr, a computed lr may be and still be rounding (written as 0.0)
_ROUNDING = 1e-12


class _SchedulerSnapshot:
    """A scheduler's attributes (and its nested schedulers'), restorable in place.

    The lists and dicts a step mutates (``base_lrs.extend``, a Counter) get
    their contents back, so a caller holding ``sched.base_lrs`` sees the old
    values too.
    """

    __slots__ = ("_items",)

    def __init__(self, scheduler) -> None:
        self._items = []
        seen: set[int] = set()
        stack = [scheduler]
        while stack:
            s = stack.pop()
            if id(s) in seen or not isinstance(s, LRScheduler):
                continue
            seen.add(id(s))
            attrs = dict(s.__dict__)
            contents = [(v, list(v)) if isinstance(v, list) else (v, dict(v))
                        for v in attrs.values() if isinstance(v, (list, dict))]
            self._items.append((s, attrs, contents))
            stack.extend(attrs.get("_schedulers") or ())
            stack.append(attrs.get("after"))

    def restore(self) -> None:
        for s, attrs, contents in self._items:
            s.__dict__.clear()
            s.__dict__.update(attrs)
            for container, saved in contents:
                if isinstance(container, list):
                    container[:] = saved
                else:
                    container.clear()
                    container.update(saved)


def _involved(self, args, kwargs):
    """The schedulers and optimizers a call may change: ``self``, and those passed to a constructor."""
    from ms_optim.optimizer import Optimizer

    scheds, opts = [self], [self.__dict__.get("optimizer")]
    for a in (*args, *kwargs.values()):
        items = a if isinstance(a, (list, tuple)) else (a,)
        for item in items:
            if isinstance(item, LRScheduler):
                scheds.append(item)
                opts.append(item.__dict__.get("optimizer"))
            elif isinstance(item, Optimizer):
                opts.append(item)
    unique = []
    for o in opts:
        if o is not None and all(o is not u for u in unique):
            unique.append(o)
    return scheds, unique


def atomic(method):
    """Make ``method`` all or nothing: if it raises, the schedulers and param groups it touched are put back.

    Checks come first wherever they can, so this rarely has anything to
    undo; it is what makes the rest (a user's ``lr_lambda`` or ``scale_fn``
    raising, a read-only 0-d lr array, a KeyboardInterrupt) leave no trace
    either. A constructor also covers the optimizer and schedulers it was
    given (SequentialLR rewinds its schedulers' construction steps).
    """

    constructor = method.__name__ == "__init__"

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if constructor:
            scheds, opts = _involved(self, args, kwargs)
            groups = [_groups.GroupsSnapshot(o) for o in opts]
            states = [_SchedulerSnapshot(s) for s in scheds]
        else:
            groups = [_groups.GroupsSnapshot(self.__dict__.get("optimizer"))]
            states = [_SchedulerSnapshot(self)]
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            for g in groups:
                g.restore()
            for st in states:
                st.restore()
            raise

    return wrapper


class LRScheduler:
    r"""Base class: adjusts every param group's ``lr`` once per :meth:`step`.

    On construction with ``last_epoch=-1`` each group gets ``initial_lr``
    (``group.setdefault('initial_lr', lr)``: a value set earlier, by another
    scheduler or a checkpoint, wins) and the scheduler takes its first step,
    to ``last_epoch = 0``, writing the step-0 learning rates. With
    ``last_epoch >= 0`` (resuming) every group must already hold
    ``initial_lr`` (KeyError otherwise, as torch).

    What a user can rely on:

    * ``base_lrs``: the groups' ``initial_lr`` values; ``last_epoch``: the step count.
    * :meth:`get_last_lr`: the groups' learning rates after the last step,
      as Python floats.
    * ``group['lr']`` holding a 0-d array is updated in place (``lr[...] = v``),
      never replaced; ``initial_lr`` is then stored as a Python float (so it
      cannot alias the array that changes).
    * :meth:`state_dict` is everything but the optimizer (torch's layout);
      :meth:`load_state_dict` restores it. The groups' ``lr`` values belong to
      the optimizer's own state_dict.
    * A param group added (``optimizer.add_param_group``) after construction
      joins at the next step: its ``initial_lr`` is set from its ``lr`` if
      absent and appended to ``base_lrs``. Closed-form schedules then give it
      ``base * factor(step)``; chainable ones continue from its current
      ``lr``. A per-group argument given as a list (``lr_lambda``,
      ``max_lr``...) cannot cover a new group: stepping raises ValueError,
      before anything changes. (torch fails with a length mismatch instead.)

    Args:
      optimizer: an :class:`ms_optim.Optimizer`.
      last_epoch: the index of the last step taken; -1 to start afresh. Default -1.

    Every call is all or nothing: a constructor, :meth:`step` or
    :meth:`load_state_dict` that raises leaves the scheduler and the
    optimizer's param groups exactly as they were (nothing written, no
    ``initial_lr`` left behind). NumPy scalars and 0-d arrays are accepted
    wherever a number or flag is, and stored as Python numbers.

    .. warning::
       Unlike torch, an invalid argument (a negative ``step_size``, a gamma
       <= 0...) raises at construction, and a few argument types torch
       tolerates are rejected (see each scheduler). ``optimizer.step`` is not
       wrapped to warn about call order. Departures that refuse what torch
       lets through:

       * a step that would write a learning rate that is NaN, infinite or
         negative (a ``lr_lambda`` returning one, an ``ExponentialLR`` with
         ``gamma > 1`` run until it overflows) raises ValueError instead.
         A value below 0 by rounding alone (within 1e-12 of the base lr:
         torch's recursive ``LinearLR`` to ``end_factor=0`` ends at -3e-18)
         is written as 0.0;
       * a group whose ``lr`` is an integer (or bool) 0-d array is refused
         with TypeError: writing 0.05 into it would store 0;
       * :meth:`load_state_dict` checks the whole state first (the class,
         every key's type and domain, one value per param group) and refuses
         a state that is not this class's. torch's own state_dicts load.
    """

    _get_lr_called_within_step: bool = False
    _is_initial: bool = False

    @atomic
    def __init__(self, optimizer, last_epoch: int = -1) -> None:
        last_epoch = _prepare(optimizer, last_epoch)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", _groups.host(group["lr"]))
        self.base_lrs: list[float] = [_groups.host(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    # -------------------------------------------------------------- stepping

    def _initial_step(self) -> None:
        """The step that construction takes (and SequentialLR re-takes)."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list[float]:
        """The learning rates for ``last_epoch``, in torch's (chainable, where torch's is) form.

        Called by :meth:`step`; call :meth:`get_last_lr` to read the current rates.
        """
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        """The learning rate of every group after the last step (Python floats)."""
        return list(self._last_lr)

    @atomic
    def step(self, epoch: float | None = None) -> None:
        """Advance one step, or (with ``epoch``) jump to it, using the closed form where there is one.

        A step that fails (1cycle past its end, a bad computed lr) leaves no trace.
        """
        if epoch is not None:
            check_real("epoch", epoch, low=0.0)
            epoch = native(epoch)
        self._step_count += 1
        self._update_lr(epoch)

    def _update_lr(self, epoch=None) -> None:
        self._sync_param_groups()
        self._get_lr_called_within_step = True
        try:
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                closed = getattr(self, "_get_closed_form_lr", None)
                values = closed() if closed is not None else self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        self._write(values, self._momentum_values())

    def _momentum_values(self) -> list[float] | None:
        """The momenta this step writes (cyclic schedulers), or None."""
        return None

    def _write(self, lrs, momenta=None) -> None:
        """Check every value and target first, then write the groups' lr (and momentum) and ``_last_lr``."""
        groups = self.optimizer.param_groups
        if len(lrs) != len(groups):
            raise ValueError(
                f"{type(self).__name__} computed {len(lrs)} learning rates for {len(groups)} param groups"
            )
        values = [self._checked_lr(i, v) for i, v in enumerate(lrs)]
        for i, group in enumerate(groups):
            _groups.check_target(f"param_groups[{i}]['lr']", group.get("lr"))
        if momenta is not None:
            use_beta1 = self.use_beta1
            key = "betas[0]" if use_beta1 else "momentum"
            for i, (group, m) in enumerate(zip(groups, momenta, strict=True)):
                _groups.check_momentum_target(i, group, use_beta1)
                _checked_momentum(type(self).__name__, f"param_groups[{i}]['{key}']", m, self.last_epoch, use_beta1)
            for group, m in zip(groups, momenta):
                _groups.write_momentum(group, float(m), use_beta1)
        for group, v in zip(groups, values):
            _groups.write(group, "lr", v)
        self._last_lr = _groups.lrs(self.optimizer)

    #: the argument to blame when a computed lr is out of range
    _lr_source = "its arguments"

    def _checked_lr(self, i: int, value) -> float:
        if type(value) is float and 0.0 <= value < _INF:  # the common case, once per group per step
            return value
        u = unbox(value)
        if not _is_real(u):
            raise TypeError(
                f"{type(self).__name__} computed a learning rate of type {type(value).__name__} for "
                f"param_groups[{i}] at step {self.last_epoch}: {value!r} (check {self._lr_source})"
            )
        v = float(u)
        if v < 0.0 and v >= -_ROUNDING * max([1.0, *map(abs, getattr(self, "base_lrs", ()))]):
            # Below 0 by rounding alone: LinearLR down to end_factor=0, computed
            # recursively as torch does, ends at -3e-18. Its exact value is 0.
            v = 0.0
        if not 0.0 <= v < _INF:
            raise ValueError(
                f"{type(self).__name__} would set param_groups[{i}]['lr'] = {v!r} at step {self.last_epoch}: "
                f"a learning rate must be finite and >= 0 (check {self._lr_source}); nothing was changed"
            )
        return v

    def _warn_outside_step(self) -> None:
        if not self._get_lr_called_within_step:
            warnings.warn(
                "To get the last learning rate computed by the scheduler, please use `get_last_lr()`.",
                UserWarning,
                stacklevel=3,
            )

    # -------------------------------------------------- groups added later

    def _sync_param_groups(self) -> None:
        """Adopt param groups added since the last step (see the class docstring)."""
        groups = self.optimizer.param_groups
        n_known = len(self.base_lrs)
        if len(groups) == n_known:
            return
        if len(groups) < n_known:
            raise ValueError(
                f"the optimizer has {len(groups)} param groups, fewer than the {n_known} "
                f"this {type(self).__name__} was built with"
            )
        new = groups[n_known:]
        for i, group in enumerate(new, n_known):
            if "initial_lr" in group:
                _groups.check_value(f"param_groups[{i}]['initial_lr']", group["initial_lr"], written=False)
            _groups.check_value(f"param_groups[{i}]['lr']", group.get("lr"))
        self._check_new_groups(len(groups))
        for group in new:
            group.setdefault("initial_lr", _groups.host(group["lr"]))
        self._adopt_new_groups(new)

    def _check_new_groups(self, n_groups: int) -> None:
        """Raise (changing nothing) if this scheduler cannot cover ``n_groups`` groups."""

    def _adopt_new_groups(self, new_groups: list[dict]) -> None:
        """Extend per-group settings to groups added since the last step (after the checks passed)."""
        self.base_lrs.extend(_groups.host(g["initial_lr"]) for g in new_groups)

    # ---------------------------------------------------------- checkpoints

    #: attributes state_dict leaves out besides the optimizer (functions, sub-schedulers)
    _not_in_state: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer, as torch: restore with :meth:`load_state_dict`.

        The values are copies (unlike torch's), so a saved state does not
        change as the scheduler steps on. Functions (``lr_lambda``) are kept
        by reference in memory; pickling needs module-level functions.
        """
        skip = {"optimizer", *self._not_in_state}
        state = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k not in skip}
        # Which class wrote it, so that a load can refuse another scheduler's
        # state even where the keys agree (LambdaLR / MultiplicativeLR).
        state[_state.CLASS_KEY] = type(self).__name__
        return state

    @atomic
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, or a torch scheduler's of the same class.

        The whole state is checked first: that it is this class's (its keys,
        and the class it names, if any), each value's type and domain, one
        value per param group, nested schedulers' states. Anything wrong
        raises TypeError/ValueError naming the key, and nothing changes.
        Values that went through JSON or npz (lists for tuples, strings for
        the milestone keys, 0-d arrays for numbers) load as the originals.
        The optimizer's groups are restored by the optimizer's own
        ``load_state_dict``.
        """
        self._apply_state(self._checked_state(state_dict, "state_dict"))

    def _state_spec(self) -> dict:
        """``key -> (check, required)`` for every key of this class's state (see ``schedulers._state``)."""
        n = len(self.optimizer.param_groups)
        return {
            "base_lrs": (_state.lr_list(n), True),
            # -1: a SequentialLR's later schedulers wait there until their milestone
            "last_epoch": (_state.integer(-1), True),
            "_step_count": (_state.integer(0), False),
            "_is_initial": (_state.false_flag, False),
            "_get_lr_called_within_step": (_state.false_flag, False),
            "_last_lr": (_state.lr_list(n), True),
        }

    def _checked_state(self, state_dict, where: str) -> dict:
        """The values a load assigns, every check passed (nested schedulers' under their keys)."""
        checked = _state.check_state(self, state_dict, self._state_spec(), where)
        self._check_state_together(checked, where)
        return checked

    def _check_state_together(self, checked: dict, where: str) -> None:
        """Checks across keys (a step count within its cycle...); may add derived values."""

    def _apply_state(self, checked: dict) -> None:
        """Assign what :meth:`_checked_state` returned (nothing here can fail)."""
        self.__dict__.update(checked)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={getattr(self, 'last_epoch', None)})"


def _checked_momentum(owner: str, where: str, m, step, beta: bool) -> None:
    v = float(m)
    if not (0.0 <= v < 1.0 if beta else 0.0 <= v <= 1.0):
        raise ValueError(
            f"{owner} would set {where} = {v!r} at step {step}: a momentum must be in "
            f"[0, 1{')' if beta else ']'} (check scale_fn and the momentum bounds); nothing was changed"
        )


def _prepare(optimizer, last_epoch) -> int:
    """The checks every scheduler runs first, before changing anything; ``last_epoch`` as an int."""
    check_optimizer(optimizer)
    last_epoch = check_last_epoch(last_epoch)
    for i, group in enumerate(optimizer.param_groups):
        _groups.check_value(f"param_groups[{i}]['lr']", group.get("lr"))
        if "initial_lr" in group:
            _groups.check_value(f"param_groups[{i}]['initial_lr']", group["initial_lr"], written=False)
        elif last_epoch != -1:
            raise KeyError(
                f"param 'initial_lr' is not specified in param_groups[{i}] when resuming "
                f"a scheduler with last_epoch={last_epoch}: load the optimizer's state_dict first"
            )
    return last_epoch
