"""Adam: adaptive moment estimation, with AMSGrad and L2 or decoupled weight decay."""

from __future__ import annotations

import math

from ..checks import check_betas, check_bool, check_lr, check_non_negative
from ..optimizer import Optimizer

__all__ = ["Adam", "adam_rule"]


def adam_rule(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, lr, beta1, beta2, eps,
              weight_decay, step_size, bc2_sqrt, maximize, amsgrad, has_weight_decay,
              decoupled, xp):
    """One Adam/AdamW update of one element, in torch's order of operations.

    ``step_size = lr / (1 - beta1**t)`` and ``bc2_sqrt = sqrt(1 - beta2**t)``
    come from the host; eps is added *after* dividing by ``bc2_sqrt``.
    """
    if maximize:
        g = -g
    if has_weight_decay:
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
    exp_avg = exp_avg + (1 - beta1) * (g - exp_avg)  # torch's lerp(g, 1 - beta1)
    exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * g * g
    if amsgrad:
        # torch keeps the max of the raw (not bias-corrected) second moment
        max_exp_avg_sq = xp.maximum(max_exp_avg_sq, exp_avg_sq)
        denom = xp.sqrt(max_exp_avg_sq) / bc2_sqrt + eps
        return p - step_size * exp_avg / denom, exp_avg, exp_avg_sq, max_exp_avg_sq
    denom = xp.sqrt(exp_avg_sq) / bc2_sqrt + eps
    return p - step_size * exp_avg / denom, exp_avg, exp_avg_sq


class Adam(Optimizer):
    r"""Adam, with optional AMSGrad and L2 (or decoupled) weight decay.

    .. math::
       \begin{aligned}
       g_t &\leftarrow \pm\nabla_\theta f_t(\theta_{t-1})
            \;(+\,\lambda\theta_{t-1} \text{ unless decoupled})\\
       m_t &\leftarrow \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
       v_t &\leftarrow \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2 \\
       v^{max}_t &\leftarrow \max(v^{max}_{t-1}, v_t) \quad\text{(amsgrad; } v_t \text{ below becomes } v^{max}_t)\\
       \theta_t &\leftarrow \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}
       \end{aligned}

    with :math:`\gamma` = ``lr``, :math:`(\beta_1, \beta_2)` = ``betas``,
    :math:`\epsilon` = ``eps`` and :math:`\lambda` = ``weight_decay``. With
    ``decoupled_weight_decay=True`` the decay is applied to the parameter,
    :math:`\theta_{t-1} \leftarrow (1 - \gamma\lambda)\theta_{t-1}`, which is
    :class:`AdamW`.

    Args:
      params: a list of arrays, or of dicts defining parameter groups.
      lr: learning rate (default: 1e-3), a float or 0-d array.
      betas: coefficients of the running averages of the gradient and its
        square (default: (0.9, 0.999)), each in [0, 1).
      eps: added to the denominator for numerical stability (default: 1e-8).
      weight_decay: L2 penalty (default: 0).
      amsgrad: use the AMSGrad variant (default: False).
      maximize: ascend the objective instead of descending (default: False).
      decoupled_weight_decay: decay the weights directly, as AdamW (default: False).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq`` and, with
    amsgrad, ``max_exp_avg_sq``.

    Example:
      >>> import numpy as np
      >>> from ms_optim import Adam
      >>> w = np.array([1.0, -2.0])
      >>> opt = Adam([w], lr=0.1)
      >>> for _ in range(3):
      ...     opt([2 * w])
      >>> np.round(w, 2)    # each early Adam step moves about lr, whatever the gradient's size
      array([ 0.7, -1.7])

    .. warning::
       eps is added after dividing :math:`\sqrt{v_t}` by
       :math:`\sqrt{1-\beta_2^t}` (torch's and the paper's convention), and
       AMSGrad keeps the maximum of the raw :math:`v_t`. MindSpore's
       ``ApplyAdamWithAmsgradV2`` (see :mod:`ms_optim.ops`) places eps
       differently.

    References:
      Kingma & Ba, 2014. Adam: A Method for Stochastic Optimization. https://arxiv.org/abs/1412.6980
      Reddi et al., 2018. On the Convergence of Adam and Beyond. https://openreview.net/forum?id=ryQu7f-RZ
    """

    rule = staticmethod(adam_rule)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False, backend=None):
        defaults = dict(lr=lr, betas=betas, eps=eps,
                        weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, backend=backend)

    #: second moments and step sizes: a loaded one with a negative entry is corrupt
    non_negative_state = frozenset(('exp_avg_sq', 'max_exp_avg_sq'))

    def _validate(self, group):
        check_lr(group["lr"])
        check_non_negative("eps", group["eps"], "epsilon")
        check_betas(group["betas"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_bool("amsgrad", group["amsgrad"])
        check_bool("maximize", group["maximize"])
        check_bool("decoupled_weight_decay", group["decoupled_weight_decay"])

    def _state_keys(self, group):
        if group["amsgrad"]:
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return ("exp_avg", "exp_avg_sq")

    def _static(self, group):
        return dict(
            maximize=bool(group["maximize"]),
            amsgrad=bool(group["amsgrad"]),
            has_weight_decay=group["weight_decay"] != 0,
            decoupled=bool(group["decoupled_weight_decay"]),
        )

    def _host_scalars(self, group, state):
        step = self._next_step(state)
        lr = float(group["lr"])
        beta1, beta2 = (float(b) for b in group["betas"])
        return dict(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            step_size=lr / (1 - beta1**step),
            bc2_sqrt=math.sqrt(1 - beta2**step),
        )
