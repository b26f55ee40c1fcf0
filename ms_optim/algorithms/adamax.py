"""Adamax: Adam with the second moment replaced by an exponentially weighted infinity norm."""

from __future__ import annotations

from ..checks import check_betas, check_bool, check_lr, check_non_negative
from ..optimizer import Optimizer

__all__ = ["Adamax", "adamax_rule"]


def adamax_rule(p, g, exp_avg, exp_inf, *, beta1, beta2, eps, weight_decay, clr,
                maximize, has_weight_decay, xp):
    """One Adamax update of one element, in torch's order of operations.

    ``clr = lr / (1 - beta1**t)`` comes from the host: only the first moment
    is bias-corrected. eps sits *inside* the max, so ``exp_inf >= eps`` and
    the division never meets a zero.
    """
    if maximize:
        g = -g
    if has_weight_decay:
        g = g + weight_decay * p
    exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)  # torch's lerp(g, 1 - beta1)
    exp_inf = xp.maximum(exp_inf * beta2, xp.abs(g) + eps)
    return p - clr * exp_avg / exp_inf, exp_avg, exp_inf


class Adamax(Optimizer):
    r"""Adamax: Adam whose step is scaled by an infinity norm of past gradients.

    .. math::
       \begin{aligned}
       g_t &\leftarrow \pm\nabla_\theta f_t(\theta_{t-1}) + \lambda\,\theta_{t-1}
            && (-\text{ when maximize})\\
       m_t &\leftarrow \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
       u_t &\leftarrow \max(\beta_2 u_{t-1},\; |g_t| + \epsilon) \\
       \theta_t &\leftarrow \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,\frac{m_t}{u_t}
       \end{aligned}

    with :math:`\gamma` = ``lr``, :math:`(\beta_1, \beta_2)` = ``betas``,
    :math:`\epsilon` = ``eps``, :math:`\lambda` = ``weight_decay`` and
    :math:`m_0 = u_0 = 0`. Only :math:`m_t` is bias-corrected: a maximum
    has no bias towards zero to correct.

    Args:
      params: a list of arrays, or of dicts defining parameter groups.
      lr: learning rate :math:`\gamma` (default: 2e-3), a float or 0-d array.
      betas: decay rates of the first moment and of the infinity norm
        (default: (0.9, 0.999)), each in [0, 1).
      eps: added to :math:`|g_t|` inside the maximum (default: 1e-8).
      weight_decay: L2 penalty :math:`\lambda` added to the gradient (default: 0).
      maximize: ascend the objective instead of descending (default: False).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    State per parameter: ``step``, ``exp_avg`` (:math:`m_t`) and ``exp_inf``
    (:math:`u_t`).

    Example:
      >>> import numpy as np
      >>> from ms_optim import Adamax
      >>> w = np.array([1.0, -2.0])
      >>> opt = Adamax([w], lr=0.1)
      >>> opt([2 * w])      # m = 0.1 g and u = |g|, so the first step is lr * m / (0.1 u) = lr * sign(g)
      >>> np.round(w, 6)
      array([ 0.9, -1.9])

    .. warning::
       eps is added to :math:`|g_t|` inside the maximum, as in torch and
       MindSpore (the paper's AdaMax has no eps). So :math:`u_t \ge
       \epsilon`, and a large eps caps the step of weights with small
       gradients instead of merely guarding a division.

    References:
      Kingma & Ba, 2014. Adam: A Method for Stochastic Optimization, section 7.1.
      https://arxiv.org/abs/1412.6980
    """

    rule = staticmethod(adamax_rule)

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, *,
                 maximize=False, backend=None):
        defaults = dict(lr=lr, betas=betas, eps=eps,
                        weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, backend=backend)

    #: second moments and step sizes: a loaded one with a negative entry is corrupt
    non_negative_state = frozenset(('exp_inf',))

    def _validate(self, group):
        check_lr(group["lr"])
        check_non_negative("eps", group["eps"], "epsilon")
        check_betas(group["betas"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_bool("maximize", group["maximize"])

    def _state_keys(self, group):
        return ("exp_avg", "exp_inf")

    def _static(self, group):
        return dict(maximize=bool(group["maximize"]), has_weight_decay=group["weight_decay"] != 0)

    def _host_scalars(self, group, state):
        step = self._next_step(state)
        beta1, beta2 = (float(b) for b in group["betas"])
        return dict(
            beta1=beta1,
            beta2=beta2,
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            clr=float(group["lr"]) / (1 - beta1**step),
        )
