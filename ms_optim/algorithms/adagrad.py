"""Adagrad: per-coordinate step sizes from the running sum of squared gradients."""

from __future__ import annotations

from ..checks import check_bool, check_lr, check_non_negative
from ..optimizer import Optimizer

__all__ = ["Adagrad", "adagrad_rule"]


def adagrad_rule(p, g, state_sum, *, clr, eps, weight_decay, maximize, has_weight_decay, xp):
    """One Adagrad update of one element, in torch's order of operations.

    ``clr = lr / (1 + (step - 1) * lr_decay)`` comes from the host; eps is
    added *after* the square root.
    """
    if maximize:
        g = -g
    if has_weight_decay:
        g = g + weight_decay * p
    state_sum = state_sum + g * g
    std = xp.sqrt(state_sum) + eps
    return p - clr * g / std, state_sum


class Adagrad(Optimizer):
    r"""Adagrad: each coordinate's step shrinks with its accumulated squared gradients.

    .. math::
       \begin{aligned}
       g_t &\leftarrow \pm\nabla_\theta f_t(\theta_{t-1}) + \lambda\,\theta_{t-1}
            && (-\text{ when maximize})\\
       \tilde\gamma_t &\leftarrow \gamma / (1 + (t-1)\,\eta) \\
       s_t &\leftarrow s_{t-1} + g_t^2, \qquad s_0 = \tau \\
       \theta_t &\leftarrow \theta_{t-1} - \tilde\gamma_t\, \frac{g_t}{\sqrt{s_t} + \epsilon}
       \end{aligned}

    with :math:`\gamma` = ``lr``, :math:`\eta` = ``lr_decay``, :math:`\lambda` =
    ``weight_decay``, :math:`\tau` = ``initial_accumulator_value`` and
    :math:`\epsilon` = ``eps``; :math:`t` counts this parameter's updates.

    Args:
      params: a list of arrays, or of dicts defining parameter groups.
      lr: learning rate :math:`\gamma` (default: 1e-2), a float or 0-d array.
      lr_decay: learning-rate decay :math:`\eta` per step (default: 0).
      weight_decay: L2 penalty :math:`\lambda` added to the gradient (default: 0).
      initial_accumulator_value: starting value :math:`\tau` of the sum of
        squares (default: 0).
      eps: added to the denominator for numerical stability (default: 1e-10).
      maximize: ascend the objective instead of descending (default: False).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    State per parameter: ``step`` and ``sum`` (the accumulator :math:`s_t`).

    Example:
      >>> import numpy as np
      >>> from ms_optim import Adagrad
      >>> w = np.array([1.0, -2.0])
      >>> opt = Adagrad([w], lr=0.1)
      >>> opt([2 * w])          # s = g**2, so the first step is lr * sign(g)
      >>> np.round(w, 6)
      array([ 0.9, -1.9])

    .. warning::
       torch creates every parameter's state in the constructor, filled with
       the constructor's ``initial_accumulator_value`` even for a param group
       that sets its own. Here the state is created at a parameter's first
       gradient and filled with *its group's* value; with no per-group value
       the two agree.

    References:
      Duchi, Hazan & Singer, 2011. Adaptive Subgradient Methods for Online
      Learning and Stochastic Optimization. JMLR 12. http://jmlr.org/papers/v12/duchi11a.html
    """

    rule = staticmethod(adagrad_rule)

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, *, maximize=False, backend=None):
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, maximize=maximize)
        super().__init__(params, defaults, backend=backend)

    #: second moments and step sizes: a loaded one with a negative entry is corrupt
    non_negative_state = frozenset(('sum',))

    def _validate(self, group):
        check_lr(group["lr"])
        check_non_negative("lr_decay", group["lr_decay"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_non_negative("initial_accumulator_value", group["initial_accumulator_value"])
        check_non_negative("eps", group["eps"], "epsilon")
        check_bool("maximize", group["maximize"])

    def _state_keys(self, group):
        return ("sum",)

    def _init_state_array(self, key, param, group, xp):
        return xp.full_like(param, float(group["initial_accumulator_value"]))

    def _static(self, group):
        return dict(maximize=bool(group["maximize"]), has_weight_decay=float(group["weight_decay"]) != 0)

    def _host_scalars(self, group, state):
        step = self._next_step(state)
        return dict(
            clr=float(group["lr"]) / (1 + (step - 1) * float(group["lr_decay"])),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
        )
