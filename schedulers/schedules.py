r"""Pure learning-rate schedules: ``step -> lr`` functions, validated when built.

This is the math under the scheduler classes, kept apart from them in the
manner of optax's ``schedules``: each builder checks its arguments once and
returns a function of the step count alone, with no state and no optimizer.
The classes (torch's interface: :class:`~schedulers.StepLR` and the rest)
evaluate the very same private functions, so a closed form and the class
that steps through it cannot drift apart.

Two kinds of pure function live here:

* the *value* of a schedule at a step (``_cosine(step, ...)``), written with
  torch's closed-form arithmetic, operation for operation;
* where torch computes recursively (its "chainable" ``get_lr``), the one-step
  *ratio* ``value(step) / value(step - 1)`` written as torch writes it, so that
  the classes reproduce torch's values, which differ from the closed form in
  the last bits (``_cosine_ratio`` is literally ``_cosine_unit(step) /
  _cosine_unit(step - 1)``, ``_polynomial_ratio`` shares ``_poly_base``).

Builders take ``init_value`` (the base learning rate) first; with
``init_value=1.0`` a schedule gives the multiplicative factor instead.

Example: warmup then cosine, two schedules joined (see also
:class:`~schedulers.LinearWarmup`, which does this for any scheduler).

>>> from schedulers import schedules
>>> warmup = schedules.linear_warmup(0.1, warmup_steps=5)
>>> cosine = schedules.cosine_annealing_lr(0.1, T_max=10)
>>> lr = schedules.join_schedules([warmup, cosine], boundaries=[5])
>>> [round(lr(t), 4) for t in (0, 1, 4, 5, 10, 15)]
[0.0, 0.02, 0.08, 0.1, 0.05, 0.0]
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_right
from collections.abc import Callable, Sequence

from ._checks import check_bool, check_choice, check_int, check_real

__all__ = [
    "Schedule",
    "step_lr",
    "multistep_lr",
    "constant_lr",
    "linear_lr",
    "exponential_lr",
    "polynomial_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "cyclic_lr",
    "one_cycle_lr",
    "linear_warmup",
    "join_schedules",
]

#: A schedule: the learning rate (or factor) at a step count.
Schedule = Callable[[float], float]


def _check_init_value(init_value) -> float:
    return check_real("init_value", init_value)


def _check_gamma(gamma) -> float:
    # A multiplicative decay of 0 ends training for good; a negative one flips
    # the sign of the learning rate. Neither is a schedule.
    return check_real("gamma", gamma, low=0.0, low_open=True)


# --------------------------------------------------------------------- StepLR


def _check_step(step_size, gamma) -> None:
    check_int("step_size", step_size, minimum=1)
    _check_gamma(gamma)


def _step(step, *, init_value, step_size, gamma):
    return init_value * gamma ** (step // step_size)


def step_lr(init_value: float, step_size: int, gamma: float = 0.1) -> Schedule:
    r"""Decay by ``gamma`` every ``step_size`` steps.

    .. math::
        \eta_t = \eta_0 \, \gamma^{\lfloor t / \text{step\_size} \rfloor}

    Args:
      init_value: :math:`\eta_0`, the value at step 0.
      step_size: period of the decay, a positive int.
      gamma: multiplicative factor, > 0. Default 0.1.

    >>> f = step_lr(0.1, step_size=2, gamma=0.5)
    >>> [f(t) for t in range(5)]
    [0.1, 0.1, 0.05, 0.05, 0.025]
    """
    init_value = _check_init_value(init_value)
    _check_step(step_size, gamma)
    return functools.partial(_step, init_value=init_value, step_size=step_size, gamma=gamma)


# ---------------------------------------------------------------- MultiStepLR


def _check_milestones(milestones, name="milestones") -> list[int]:
    if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
        raise TypeError(f"{name} must be a sequence of ints, got {type(milestones).__name__}: {milestones!r}")
    ms = [check_int(f"{name}[{i}]", m, minimum=0) for i, m in enumerate(milestones)]
    for i in range(1, len(ms)):
        if ms[i] <= ms[i - 1]:
            raise ValueError(f"{name} must be strictly increasing, got {name}={ms!r}")
    return ms


def _multistep(step, *, init_value, milestones, gamma):
    return init_value * gamma ** bisect_right(milestones, step)


def multistep_lr(init_value: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    r"""Decay by ``gamma`` at each milestone.

    .. math::
        \eta_t = \eta_0 \, \gamma^{\#\{m \in \text{milestones} : m \le t\}}

    Args:
      init_value: :math:`\eta_0`, the value at step 0.
      milestones: strictly increasing non-negative ints.
      gamma: multiplicative factor, > 0. Default 0.1.

    >>> f = multistep_lr(1.0, milestones=[2, 4], gamma=0.5)
    >>> [f(t) for t in range(6)]
    [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """
    init_value = _check_init_value(init_value)
    ms = _check_milestones(milestones)
    _check_gamma(gamma)
    return functools.partial(_multistep, init_value=init_value, milestones=ms, gamma=gamma)


# ----------------------------------------------------------------- ConstantLR


def _check_constant(factor, total_iters) -> None:
    # torch accepts factor=0 and then divides by it at total_iters.
    check_real("factor", factor, low=0.0, high=1.0, low_open=True)
    check_int("total_iters", total_iters, minimum=1)


def _constant(step, *, init_value, factor, total_iters):
    return init_value * (factor + (step >= total_iters) * (1 - factor))


def _constant_ratio(step, *, factor, total_iters):
    if step == 0:
        return factor
    if step == total_iters:
        return 1.0 / factor
    return 1.0


def constant_lr(init_value: float, factor: float = 1.0 / 3, total_iters: int = 5) -> Schedule:
    r"""A constant factor for the first ``total_iters`` steps, then the full value.

    .. math::
        \eta_t = \eta_0 \cdot \begin{cases} \text{factor} & t < \text{total\_iters} \\
                 1 & \text{otherwise} \end{cases}

    Args:
      init_value: :math:`\eta_0`.
      factor: in (0, 1]. Default 1/3.
      total_iters: a positive int. Default 5.

    >>> f = constant_lr(0.3, factor=0.5, total_iters=2)
    >>> [f(t) for t in range(4)]
    [0.15, 0.15, 0.3, 0.3]
    """
    init_value = _check_init_value(init_value)
    _check_constant(factor, total_iters)
    return functools.partial(_constant, init_value=init_value, factor=factor, total_iters=total_iters)


# ------------------------------------------------------------------- LinearLR


def _check_linear(start_factor, end_factor, total_iters) -> None:
    check_real("start_factor", start_factor, low=0.0, high=1.0, low_open=True)
    check_real("end_factor", end_factor, low=0.0, high=1.0)
    check_int("total_iters", total_iters, minimum=1)


def _linear(step, *, init_value, start_factor, end_factor, total_iters):
    return init_value * (start_factor + (end_factor - start_factor) * min(total_iters, step) / total_iters)


def _linear_ratio(step, *, start_factor, end_factor, total_iters):
    # _linear(step) / _linear(step - 1) for 1 <= step <= total_iters, in torch's algebra.
    return 1.0 + (end_factor - start_factor) / (
        total_iters * start_factor + (step - 1) * (end_factor - start_factor)
    )


def linear_lr(
    init_value: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5
) -> Schedule:
    r"""A factor going linearly from ``start_factor`` to ``end_factor``, then held.

    .. math::
        \eta_t = \eta_0 \left(s + (e - s)\,\frac{\min(t, T)}{T}\right)

    Args:
      init_value: :math:`\eta_0`.
      start_factor: :math:`s`, in (0, 1]. Default 1/3.
      end_factor: :math:`e`, in [0, 1]. Default 1.
      total_iters: :math:`T`, a positive int. Default 5.

    >>> f = linear_lr(1.0, start_factor=0.5, end_factor=1.0, total_iters=2)
    >>> [f(t) for t in range(4)]
    [0.5, 0.75, 1.0, 1.0]
    """
    init_value = _check_init_value(init_value)
    _check_linear(start_factor, end_factor, total_iters)
    return functools.partial(
        _linear, init_value=init_value, start_factor=start_factor, end_factor=end_factor, total_iters=total_iters
    )


# -------------------------------------------------------------- ExponentialLR


def _exponential(step, *, init_value, gamma):
    return init_value * gamma**step


def exponential_lr(init_value: float, gamma: float) -> Schedule:
    r"""Decay by ``gamma`` every step.

    .. math::
        \eta_t = \eta_0 \, \gamma^t

    Args:
      init_value: :math:`\eta_0`.
      gamma: multiplicative factor, > 0.

    >>> f = exponential_lr(1.0, gamma=0.5)
    >>> [f(t) for t in range(4)]
    [1.0, 0.5, 0.25, 0.125]
    """
    init_value = _check_init_value(init_value)
    _check_gamma(gamma)
    return functools.partial(_exponential, init_value=init_value, gamma=gamma)


# --------------------------------------------------------------- PolynomialLR


def _check_polynomial(total_iters, power) -> None:
    check_int("total_iters", total_iters, minimum=1)
    check_real("power", power, low=0.0)


def _poly_base(step, total_iters):
    return 1.0 - min(total_iters, step) / total_iters


def _polynomial(step, *, init_value, total_iters, power):
    return init_value * _poly_base(step, total_iters) ** power


def _polynomial_ratio(step, *, total_iters, power):
    # For 1 <= step <= total_iters, where min() in _poly_base is a no-op.
    return (_poly_base(step, total_iters) / _poly_base(step - 1, total_iters)) ** power


def polynomial_lr(init_value: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    r"""Polynomial decay to zero over ``total_iters`` steps, then zero.

    .. math::
        \eta_t = \eta_0 \left(1 - \frac{\min(t, T)}{T}\right)^{p}

    Args:
      init_value: :math:`\eta_0`.
      total_iters: :math:`T`, a positive int. Default 5.
      power: :math:`p`, >= 0. Default 1.

    >>> f = polynomial_lr(1.0, total_iters=4, power=2.0)
    >>> [f(t) for t in range(6)]
    [1.0, 0.5625, 0.25, 0.0625, 0.0, 0.0]
    """
    init_value = _check_init_value(init_value)
    _check_polynomial(total_iters, power)
    return functools.partial(_polynomial, init_value=init_value, total_iters=total_iters, power=power)


# ---------------------------------------------------------- CosineAnnealingLR


def _check_cosine(T_max, eta_min) -> None:
    check_real("T_max", T_max, low=0.0, low_open=True)
    check_real("eta_min", eta_min, low=0.0)


def _cosine_unit(step, T_max):
    return (1 + math.cos(math.pi * step / T_max)) / 2


def _cosine(step, *, init_value, T_max, eta_min):
    return eta_min + (init_value - eta_min) * _cosine_unit(step, T_max)


def _cosine_ratio(step, *, T_max):
    # Halving is exact, so this is bit for bit torch's
    # (1 + cos(pi t / T)) / (1 + cos(pi (t - 1) / T)).
    return _cosine_unit(step, T_max) / _cosine_unit(step - 1, T_max)


def _cosine_restart_increment(*, init_value, T_max, eta_min):
    # torch's chainable form climbs out of the trough (where the ratio above
    # would divide by zero) by this increment.
    return (init_value - eta_min) * (1 - math.cos(math.pi / T_max)) / 2


def cosine_annealing_lr(init_value: float, T_max: float, eta_min: float = 0.0) -> Schedule:
    r"""Cosine annealing from ``init_value`` to ``eta_min`` over ``T_max`` steps (SGDR without restarts).

    .. math::
        \eta_t = \eta_{min} + (\eta_0 - \eta_{min})\,\frac{1 + \cos(\pi t / T_{max})}{2}

    The value is periodic with period :math:`2 T_{max}`, as torch's is.

    Args:
      init_value: :math:`\eta_0`.
      T_max: half period, > 0.
      eta_min: floor, >= 0. Default 0.

    >>> f = cosine_annealing_lr(1.0, T_max=2)
    >>> [round(f(t), 12) for t in range(5)]
    [1.0, 0.5, 0.0, 0.5, 1.0]

    References:
      Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
      <https://arxiv.org/abs/1608.03983>`_, 2017.
    """
    init_value = _check_init_value(init_value)
    _check_cosine(T_max, eta_min)
    return functools.partial(_cosine, init_value=init_value, T_max=T_max, eta_min=eta_min)


# ------------------------------------------------ CosineAnnealingWarmRestarts


def _check_warm_restarts(T_0, T_mult, eta_min) -> None:
    check_int("T_0", T_0, minimum=1)
    check_int("T_mult", T_mult, minimum=1)
    check_real("eta_min", eta_min, low=0.0)


def _warm_restart_position(epoch, *, T_0, T_mult):
    """``(T_cur, T_i)``: the position inside the current restart period and its length.

    torch finds the period index ``n`` with a floating-point logarithm, which
    lands one period short exactly at some restarts (``math.log(243, 3)`` is
    ``4.999...``); counting periods in integers is exact and otherwise gives
    torch's values (the same ``T_cur`` expression follows).
    """
    if epoch < T_0:
        return epoch, T_0
    if T_mult == 1:
        return epoch % T_0, T_0
    n = 0
    while T_0 * (T_mult ** (n + 1) - 1) // (T_mult - 1) <= epoch:
        n += 1
    return epoch - T_0 * (T_mult**n - 1) / (T_mult - 1), T_0 * T_mult**n


def _warm_restarts(epoch, *, init_value, T_0, T_mult, eta_min):
    T_cur, T_i = _warm_restart_position(epoch, T_0=T_0, T_mult=T_mult)
    return _cosine(T_cur, init_value=init_value, T_max=T_i, eta_min=eta_min)


def cosine_annealing_warm_restarts(
    init_value: float, T_0: int, T_mult: int = 1, eta_min: float = 0.0
) -> Schedule:
    r"""Cosine annealing restarted every period, periods growing by ``T_mult`` (SGDR).

    .. math::
        \eta_t = \eta_{min} + (\eta_0 - \eta_{min})\,\frac{1 + \cos(\pi T_{cur} / T_i)}{2}

    where :math:`T_i = T_0 T_{mult}^i` is the length of the current period and
    :math:`T_{cur}` the (possibly fractional) time since its start.

    Args:
      init_value: :math:`\eta_0`.
      T_0: length of the first period, a positive int.
      T_mult: growth of the period, an int >= 1. Default 1.
      eta_min: floor, >= 0. Default 0.

    >>> f = cosine_annealing_warm_restarts(1.0, T_0=2, T_mult=2)
    >>> [round(f(t), 12) for t in (0, 1, 2, 3, 4, 5, 6)]
    [1.0, 0.5, 1.0, 0.853553390593, 0.5, 0.146446609407, 1.0]

    References:
      Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
      <https://arxiv.org/abs/1608.03983>`_, 2017.
    """
    init_value = _check_init_value(init_value)
    _check_warm_restarts(T_0, T_mult, eta_min)
    return functools.partial(_warm_restarts, init_value=init_value, T_0=T_0, T_mult=T_mult, eta_min=eta_min)


# ------------------------------------------------------------------- CyclicLR

_CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


def _triangular_scale(x):
    return 1.0


def _triangular2_scale(x):
    return 1 / (2.0 ** (x - 1))


def _exp_range_scale(x, *, gamma):
    return gamma**x


def _check_cyclic(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode) -> tuple[float, float]:
    up = check_real("step_size_up", step_size_up, low=0.0, low_open=True)
    down = up if step_size_down is None else check_real("step_size_down", step_size_down, low=0.0)
    if scale_fn is None:
        check_choice("mode", mode, _CYCLIC_MODES)
    elif not callable(scale_fn):
        raise TypeError(f"scale_fn must be callable or None, got {type(scale_fn).__name__}: {scale_fn!r}")
    _check_gamma(gamma)
    check_choice("scale_mode", scale_mode, ("cycle", "iterations"))
    return up, down


def _cyclic_scale(mode, gamma, scale_fn, scale_mode):
    """The scale function and the variable it reads (torch's rules: a mode fixes its scale_mode)."""
    if scale_fn is not None:
        return scale_fn, scale_mode
    if mode == "triangular":
        return _triangular_scale, "cycle"
    if mode == "triangular2":
        return _triangular2_scale, "cycle"
    return functools.partial(_exp_range_scale, gamma=gamma), "iterations"


def _cycle_position(step, *, total_size, step_ratio):
    """``(cycle, height)``: the 1-based cycle number and the triangle's height in [0, 1]."""
    cycle = math.floor(1 + step / total_size)
    x = 1.0 + step / total_size - cycle
    if x <= step_ratio:
        return cycle, x / step_ratio
    return cycle, (x - 1) / (step_ratio - 1)


def _cyclic(step, *, base_value, max_value, total_size, step_ratio, scale_fn, scale_mode):
    # Momentum cycles the other way: it is this with base_value and max_value
    # swapped (negation is exact, so that is bit for bit torch's
    # max_momentum - (max_momentum - base_momentum) * ...).
    cycle, height = _cycle_position(step, total_size=total_size, step_ratio=step_ratio)
    base_height = (max_value - base_value) * height
    return base_value + base_height * scale_fn(cycle if scale_mode == "cycle" else step)


def cyclic_lr(
    base_value: float,
    max_value: float,
    step_size_up: float = 2000,
    step_size_down: float | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    scale_fn: Callable[[float], float] | None = None,
    scale_mode: str = "cycle",
) -> Schedule:
    r"""Cyclical learning rate: a triangle between ``base_value`` and ``max_value``, scaled per cycle.

    .. math::
        \eta_t = \eta_{base} + (\eta_{max} - \eta_{base})\, h(t)\, s(\cdot)

    with :math:`h(t) \in [0, 1]` the triangle (up for ``step_size_up`` steps,
    down for ``step_size_down``) and :math:`s` the scale function:
    ``triangular`` :math:`s = 1`; ``triangular2`` :math:`s(c) = 2^{1-c}` for
    cycle :math:`c`; ``exp_range`` :math:`s(t) = \gamma^t`; or ``scale_fn``
    read per ``scale_mode`` (``'cycle'`` or ``'iterations'``).

    Args:
      base_value: the lower bound.
      max_value: the upper bound of the cycle.
      step_size_up: steps in the rising half, > 0. Default 2000.
      step_size_down: steps in the falling half, >= 0; None means ``step_size_up``.
      mode: ``'triangular'``, ``'triangular2'`` or ``'exp_range'``; ignored when ``scale_fn`` is given.
      gamma: ``exp_range``'s base, > 0. Default 1.
      scale_fn: a custom scale function of one argument, or None.
      scale_mode: what ``scale_fn`` reads: ``'cycle'`` or ``'iterations'``. Default ``'cycle'``.

    >>> f = cyclic_lr(0.1, 0.5, step_size_up=2, mode="triangular2")
    >>> [round(f(t), 12) for t in range(9)]
    [0.1, 0.3, 0.5, 0.3, 0.1, 0.2, 0.3, 0.2, 0.1]

    References:
      Smith, `Cyclical Learning Rates for Training Neural Networks
      <https://arxiv.org/abs/1506.01186>`_, 2017.
    """
    base_value = check_real("base_value", base_value)
    max_value = check_real("max_value", max_value)
    up, down = _check_cyclic(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)
    fn, reads = _cyclic_scale(mode, gamma, scale_fn, scale_mode)
    total = up + down
    return functools.partial(
        _cyclic,
        base_value=base_value,
        max_value=max_value,
        total_size=total,
        step_ratio=up / total,
        scale_fn=fn,
        scale_mode=reads,
    )


# ----------------------------------------------------------------- OneCycleLR


def _anneal_cos(start, end, pct):
    cos_out = math.cos(math.pi * pct) + 1
    return end + (start - end) / 2.0 * cos_out


def _anneal_linear(start, end, pct):
    # torch lets 1cycle take one step past its last (step == total_steps), where
    # pct > 1: extrapolated, the line runs past min_lr, to a negative lr when the
    # last phase is steep. The schedule holds its end value there instead.
    # (The cosine turns back by itself and is left as torch computes it.)
    return (end - start) * min(pct, 1.0) + start


_ANNEAL = {"cos": _anneal_cos, "linear": _anneal_linear}


def _one_cycle_ends(total_steps, pct_start, three_phase) -> list[float]:
    """Last step of each phase, as torch places them."""
    if three_phase:
        return [float(pct_start * total_steps) - 1, float(2 * pct_start * total_steps) - 2, total_steps - 1]
    return [float(pct_start * total_steps) - 1, total_steps - 1]


def _check_one_cycle(total_steps, epochs, steps_per_epoch, pct_start, anneal_strategy, div_factor,
                     final_div_factor, three_phase) -> int:
    """Validate; return the total step count."""
    if total_steps is not None:
        total = check_int("total_steps", total_steps, minimum=1)
    elif epochs is not None and steps_per_epoch is not None:
        total = check_int("epochs", epochs, minimum=1) * check_int("steps_per_epoch", steps_per_epoch, minimum=1)
    else:
        raise ValueError(
            "You must define either total_steps OR (epochs AND steps_per_epoch), "
            f"got total_steps={total_steps!r}, epochs={epochs!r}, steps_per_epoch={steps_per_epoch!r}"
        )
    check_real("pct_start", pct_start, low=0.0, high=1.0)
    check_choice("anneal_strategy", anneal_strategy, tuple(_ANNEAL))
    check_real("div_factor", div_factor, low=0.0, low_open=True)
    check_real("final_div_factor", final_div_factor, low=0.0, low_open=True)
    three_phase = check_bool("three_phase", three_phase)
    ends = _one_cycle_ends(total, float(pct_start), three_phase)
    starts = [0.0, *ends[:-1]]
    if any(e == s for s, e in zip(starts, ends)):
        # torch divides by the phase length and fails with ZeroDivisionError there.
        raise ValueError(
            f"pct_start={pct_start!r} with total_steps={total} gives a phase of zero length "
            f"(phase ends {ends}); choose another pct_start"
        )
    return total


def _piecewise_anneal(step, *, ends, values, anneal):
    """Phase ``i`` anneals from ``values[i]`` to ``values[i + 1]``, ending at step ``ends[i]``."""
    start_step = 0.0
    last = len(ends) - 1
    for i, end_step in enumerate(ends):
        if step <= end_step or i == last:
            pct = (step - start_step) / (end_step - start_step)
            return anneal(values[i], values[i + 1], pct)
        start_step = end_step
    raise AssertionError("unreachable")


def _one_cycle_lr_points(initial_lr, max_lr, min_lr, three_phase):
    return (initial_lr, max_lr, initial_lr, min_lr) if three_phase else (initial_lr, max_lr, min_lr)


def _one_cycle_momentum_points(base_momentum, max_momentum, three_phase):
    if three_phase:
        return (max_momentum, base_momentum, max_momentum, max_momentum)
    return (max_momentum, base_momentum, max_momentum)


def one_cycle_lr(
    max_value: float,
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    r"""The 1cycle policy: up from ``max_value / div_factor`` to ``max_value``, then far below.

    Phases (each a cosine or linear anneal between its end points):

    .. math::
        \frac{\eta_{max}}{d} \to \eta_{max} \to \frac{\eta_{max}}{d\,f}
        \qquad\text{or, with three\_phase,}\qquad
        \frac{\eta_{max}}{d} \to \eta_{max} \to \frac{\eta_{max}}{d} \to \frac{\eta_{max}}{d\,f}

    with :math:`d` = ``div_factor`` and :math:`f` = ``final_div_factor``; the
    first phase ends at step ``pct_start * total_steps - 1``, the last at
    ``total_steps - 1``.

    Args:
      max_value: the peak.
      total_steps: a positive int.
      pct_start: fraction of the steps spent rising, in [0, 1]. Default 0.3.
      anneal_strategy: ``'cos'`` or ``'linear'``. Default ``'cos'``.
      div_factor: ``max_value / initial value``, > 0. Default 25.
      final_div_factor: ``initial value / final value``, > 0. Default 1e4.
      three_phase: add a symmetric descent back to the initial value before the final anneal.

    >>> f = one_cycle_lr(1.0, total_steps=10, pct_start=0.5, anneal_strategy="linear", div_factor=10.0)
    >>> [round(f(t), 6) for t in (0, 2, 4, 9)]
    [0.1, 0.55, 1.0, 1e-05]

    References:
      Smith & Topin, `Super-Convergence: Very Fast Training of Neural Networks
      Using Large Learning Rates <https://arxiv.org/abs/1708.07120>`_, 2018.
    """
    max_value = check_real("max_value", max_value)
    total = _check_one_cycle(total_steps, None, None, pct_start, anneal_strategy, div_factor,
                             final_div_factor, three_phase)
    initial = max_value / div_factor
    points = _one_cycle_lr_points(initial, max_value, initial / final_div_factor, three_phase)
    return functools.partial(
        _piecewise_anneal,
        ends=_one_cycle_ends(total, pct_start, three_phase),
        values=points,
        anneal=_ANNEAL[anneal_strategy],
    )


# ------------------------------------------------------------- Linear warmup


def _check_warmup(warmup_steps, start_factor) -> None:
    check_int("warmup_steps", warmup_steps, minimum=0)
    check_real("start_factor", start_factor, low=0.0, high=1.0)


def _linear_warmup(step, *, init_value, warmup_steps, start_factor):
    if step >= warmup_steps:
        # Exactly init_value, not start_factor + (1 - start_factor) rounded.
        return init_value
    return init_value * (start_factor + (1.0 - start_factor) * step / warmup_steps)


def linear_warmup(init_value: float, warmup_steps: int, start_factor: float = 0.0) -> Schedule:
    r"""Rise linearly from ``start_factor * init_value`` to ``init_value`` in ``warmup_steps``, then hold.

    .. math::
        \eta_t = \eta_0 \left(s + (1 - s)\,\frac{\min(t, W)}{W}\right)

    Args:
      init_value: :math:`\eta_0`, reached at step :math:`W`.
      warmup_steps: :math:`W`, an int >= 0 (0: no warmup).
      start_factor: :math:`s`, in [0, 1]. Default 0.

    >>> f = linear_warmup(1.0, warmup_steps=4)
    >>> [f(t) for t in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]

    References:
      Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
      <https://arxiv.org/abs/1706.02677>`_, 2017.
    """
    init_value = _check_init_value(init_value)
    _check_warmup(warmup_steps, start_factor)
    return functools.partial(
        _linear_warmup, init_value=init_value, warmup_steps=warmup_steps, start_factor=start_factor
    )


# ---------------------------------------------------------------------- join


def _join(step, *, schedules, boundaries):
    i = bisect_right(boundaries, step)
    return schedules[i](step - (boundaries[i - 1] if i else 0))


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    r"""Run ``schedules[i]`` from ``boundaries[i - 1]`` on, each counting its own steps from 0.

    .. math::
        \eta_t = f_i(t - b_{i-1}) \quad\text{for}\quad b_{i-1} \le t < b_i, \qquad b_{-1} = 0

    Args:
      schedules: ``len(boundaries) + 1`` callables of the step.
      boundaries: strictly increasing non-negative ints.

    >>> f = join_schedules([lambda t: 0.0, lambda t: float(t)], boundaries=[2])
    >>> [f(t) for t in range(5)]
    [0.0, 0.0, 0.0, 1.0, 2.0]
    """
    schedules = list(schedules)
    bounds = _check_milestones(boundaries, "boundaries")
    if len(schedules) != len(bounds) + 1:
        raise ValueError(
            f"join_schedules needs len(boundaries) + 1 schedules, got {len(schedules)} schedules "
            f"and boundaries={bounds!r}"
        )
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(f"schedules[{i}] must be callable, got {type(s).__name__}: {s!r}")
    return functools.partial(_join, schedules=tuple(schedules), boundaries=tuple(bounds))

