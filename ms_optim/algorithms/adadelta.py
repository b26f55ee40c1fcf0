"""Adadelta: steps scaled by the ratio of running RMS of past updates and of gradients."""

from __future__ import annotations

from ..checks import check_bool, check_lr, check_non_negative, check_unit_interval
from ..optimizer import Optimizer

__all__ = ["Adadelta", "adadelta_rule"]


def adadelta_rule(p, g, square_avg, acc_delta, *, lr, rho, eps, weight_decay, maximize,
                  has_weight_decay, xp):
    """One Adadelta update of one element, in torch's order of operations.

    eps is added *inside* both square roots.
    """
    if maximize:
        g = -g
    if has_weight_decay:
        g = g + weight_decay * p
    square_avg = square_avg * rho + (1 - rho) * g * g
    std = xp.sqrt(square_avg + eps)
    delta = xp.sqrt(acc_delta + eps) / std * g
    acc_delta = acc_delta * rho + (1 - rho) * delta * delta
    return p - lr * delta, square_avg, acc_delta


class Adadelta(Optimizer):
    r"""Adadelta: a step whose units match the parameter's, from two running averages.

    .. math::
       \begin{aligned}
       g_t &\leftarrow \pm\nabla_\theta f_t(\theta_{t-1}) + \lambda\,\theta_{t-1}
            && (-\text{ when maximize})\\
       v_t &\leftarrow \rho\, v_{t-1} + (1-\rho)\, g_t^2 \\
       \Delta x_t &\leftarrow \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t \\
       u_t &\leftarrow \rho\, u_{t-1} + (1-\rho)\, \Delta x_t^2 \\
       \theta_t &\leftarrow \theta_{t-1} - \gamma\, \Delta x_t
       \end{aligned}

    with :math:`\gamma` = ``lr``, :math:`\rho` = ``rho``, :math:`\epsilon` =
    ``eps`` and :math:`\lambda` = ``weight_decay``; :math:`v_0 = u_0 = 0`.

    Args:
      params: a list of arrays, or of dicts defining parameter groups.
      lr: scale :math:`\gamma` applied to the update (default: 1.0), a float or 0-d array.
      rho: coefficient of both running averages (default: 0.9), in [0, 1].
      eps: added inside both square roots (default: 1e-6).
      weight_decay: L2 penalty :math:`\lambda` added to the gradient (default: 0).
      maximize: ascend the objective instead of descending (default: False).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    State per parameter: ``step``, ``square_avg`` (:math:`v_t`) and
    ``acc_delta`` (:math:`u_t`).

    Example:
      >>> import numpy as np
      >>> from ms_optim import Adadelta
      >>> w = np.array([1.0, -2.0])
      >>> opt = Adadelta([w])
      >>> opt([2 * w])      # u = 0: a first step of lr * sqrt(eps / (1 - rho)) = 0.00316
      >>> np.round(w, 5)
      array([ 0.99684, -1.99684])

    .. warning::
       eps sits inside both square roots, so it also sets the size of the
       first steps (above): they grow only as :math:`u_t` accumulates. A
       larger ``eps`` or ``lr`` gets Adadelta moving sooner; ``lr`` is not a
       step size in the parameter's units, as it is for SGD.

    References:
      Zeiler, 2012. ADADELTA: An Adaptive Learning Rate Method. https://arxiv.org/abs/1212.5701
    """

    rule = staticmethod(adadelta_rule)

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, *, maximize=False,
                 backend=None):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, backend=backend)

    #: second moments and step sizes: a loaded one with a negative entry is corrupt
    non_negative_state = frozenset(('square_avg', 'acc_delta'))

    def _validate(self, group):
        check_lr(group["lr"])
        check_unit_interval("rho", group["rho"], closed=True)
        check_non_negative("eps", group["eps"], "epsilon")
        check_non_negative("weight_decay", group["weight_decay"])
        check_bool("maximize", group["maximize"])

    def _state_keys(self, group):
        return ("square_avg", "acc_delta")

    def _static(self, group):
        return dict(maximize=bool(group["maximize"]), has_weight_decay=float(group["weight_decay"]) != 0)

    def _host_scalars(self, group, state):
        return dict(
            lr=float(group["lr"]),
            rho=float(group["rho"]),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
        )
