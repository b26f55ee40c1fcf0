"""ASGD: averaged stochastic gradient descent (Polyak-Ruppert averaging)."""

from __future__ import annotations

import math

from ..checks import check_bool, check_lr, check_non_negative
from ..optimizer import Optimizer

__all__ = ["ASGD", "asgd_rule"]


def asgd_rule(p, g, ax, *, eta, mu, lambd, weight_decay, maximize, has_weight_decay, average, xp):
    """One ASGD update of one element, in torch's order of operations.

    ``eta`` and ``mu`` are the parameter's values *before* this step. With
    ``average`` False (``mu == 1``) ``ax`` becomes an exact copy of the new
    parameter, as torch copies it rather than computing ``ax + (p - ax)``.
    """
    if maximize:
        g = -g
    if has_weight_decay:
        g = g + weight_decay * p
    p = p * (1 - lambd * eta)
    p = p - eta * g
    if average:
        return p, ax + (p - ax) * mu
    return p, p


class ASGD(Optimizer):
    r"""Averaged SGD: SGD with a decaying step, plus a running average of the iterates.

    .. math::
       \begin{aligned}
       g_t &\leftarrow \pm\nabla_\theta f_t(\theta_{t-1}) + w\,\theta_{t-1}
            && (-\text{ when maximize})\\
       \theta_t &\leftarrow (1 - \lambda\eta_t)\,\theta_{t-1} - \eta_t\, g_t \\
       \bar\theta_t &\leftarrow \bar\theta_{t-1} + \mu_t\,(\theta_t - \bar\theta_{t-1})
            && (\text{a copy of } \theta_t \text{ while } \mu_t = 1)\\
       \eta_{t+1} &\leftarrow \gamma / (1 + \lambda\gamma t)^{\alpha},
            \qquad \mu_{t+1} \leftarrow 1 / \max(1,\ t - t_0)
       \end{aligned}

    with :math:`\gamma` = ``lr``, :math:`\lambda` = ``lambd``, :math:`\alpha` =
    ``alpha``, :math:`t_0` = ``t0``, :math:`w` = ``weight_decay``,
    :math:`\eta_1 = \gamma` and :math:`\mu_1 = 1`; :math:`t` counts this
    parameter's updates. From step :math:`t_0 + 2` on, :math:`\bar\theta`
    (``ax``) is the mean of the iterates since that step. The parameters
    themselves are the SGD iterates: to evaluate with the average, copy
    ``ax`` into them.

    Args:
      params: a list of arrays, or of dicts defining parameter groups.
      lr: learning rate :math:`\gamma` (default: 1e-2), a float or 0-d array.
      lambd: decay term :math:`\lambda` (default: 1e-4).
      alpha: power of the step-size decay (default: 0.75).
      t0: the step after which averaging starts (default: 1e6).
      weight_decay: L2 penalty :math:`w` added to the gradient (default: 0).
      maximize: ascend the objective instead of descending (default: False).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    State per parameter: ``step``, ``eta`` and ``mu`` (numbers, kept on the
    host) and ``ax`` (the average :math:`\bar\theta`).

    Example:
      >>> import numpy as np
      >>> from ms_optim import ASGD
      >>> w = np.array([0.0])
      >>> opt = ASGD([w], lr=1.0, lambd=0.0, t0=0)
      >>> for _ in range(4):
      ...     opt([np.ones(1)])     # a constant gradient: w goes -1, -2, -3, -4
      >>> w, np.round(opt.state[w]["ax"], 6)    # ax: the mean of w since step t0 + 2
      (array([-4.]), array([-3.]))

    .. warning::
       torch keeps ``eta`` and ``mu`` in 0-d tensors of its default dtype,
       float32 unless changed; here they are Python floats. Results equal
       torch's run with ``torch.set_default_dtype(torch.float64)``; with
       torch's float32 default its ``eta`` is rounded to float32, which for
       float32 parameters is the value their update uses anyway. The update
       uses the ``eta`` from before the step, so a new ``lr`` takes effect
       one step late.

    References:
      Polyak & Juditsky, 1992. Acceleration of Stochastic Approximation by
      Averaging. SIAM J. Control Optim. 30(4). https://doi.org/10.1137/0330046
    """

    rule = staticmethod(asgd_rule)
    host_state_keys = ("eta", "mu")
    #: eta = lr / (1 + lambd lr t)^alpha >= 0; mu = 1 / max(1, t - t0) in (0, 1]
    host_state_domain = {"eta": (0.0, math.inf, True), "mu": (0.0, 1.0, False)}

    def __init__(self, params, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0, *,
                 maximize=False, backend=None):
        defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay,
                        maximize=maximize)
        super().__init__(params, defaults, backend=backend)

    def _validate(self, group):
        check_lr(group["lr"])
        # torch accepts negatives here; a negative lambd or alpha makes
        # eta = lr / (1 + lambd*lr*t)**alpha complex or unbounded mid-training
        check_non_negative("lambd", group["lambd"])
        check_non_negative("alpha", group["alpha"])
        check_non_negative("t0", group["t0"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_bool("maximize", group["maximize"])

    def _state_keys(self, group):
        return ("ax",)

    def _static(self, group):
        return dict(maximize=bool(group["maximize"]), has_weight_decay=float(group["weight_decay"]) != 0)

    def _step_static(self, group, state):
        return dict(average=float(state.get("mu", 1.0)) != 1.0)

    def _host_scalars(self, group, state):
        return dict(
            eta=float(state.get("eta", group["lr"])),
            mu=float(state.get("mu", 1.0)),
            lambd=float(group["lambd"]),
            weight_decay=float(group["weight_decay"]),
        )

    def _next_host_state(self, group, state):
        step = self._next_step(state)
        lr, lambd = float(group["lr"]), float(group["lambd"])
        alpha, t0 = float(group["alpha"]), float(group["t0"])
        return dict(
            eta=lr / ((1 + lambd * lr * step) ** alpha),
            mu=1 / max(1.0, step - t0),
        )
