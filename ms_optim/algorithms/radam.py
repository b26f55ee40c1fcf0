"""RAdam: Adam with the variance of its adaptive learning rate rectified."""

from __future__ import annotations

import math

from ..checks import check_betas, check_bool, check_lr, check_non_negative
from ..optimizer import Optimizer

__all__ = ["RAdam", "radam_rule"]

#: the approximated SMA length above which the adaptive step is used (the paper's threshold)
RHO_THRESHOLD = 5.0


def radam_rule(p, g, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, bc1,
               bc2_sqrt, rect, maximize, has_weight_decay, decoupled, rectified, xp):
    """One RAdam update of one element, in torch's order of operations.

    ``rectified`` (static, chosen per step on the host) selects the adaptive
    step scaled by ``rect`` or plain bias-corrected momentum; ``bc1 = 1 -
    beta1**t`` and ``bc2_sqrt = sqrt(1 - beta2**t)`` come from the host.
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
    m_hat = exp_avg / bc1
    if rectified:
        adaptive = bc2_sqrt / (xp.sqrt(exp_avg_sq) + eps)
        return p - m_hat * lr * adaptive * rect, exp_avg, exp_avg_sq
    return p - m_hat * lr, exp_avg, exp_avg_sq


def rectification(beta2: float, step: int) -> float | None:
    """RAdam's variance rectification term :math:`r_t`, or None while :math:`\\rho_t \\le 5`."""
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2**step / (1 - beta2**step)
    if not rho_t > RHO_THRESHOLD:
        return None
    return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5


class RAdam(Optimizer):
    r"""RAdam: Adam that falls back to momentum while its variance estimate is unreliable.

    .. math::
       \begin{aligned}
       g_t &\leftarrow \pm\nabla_\theta f_t(\theta_{t-1})
            \;(+\,\lambda\theta_{t-1} \text{ unless decoupled})\\
       m_t &\leftarrow \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
       v_t &\leftarrow \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2 \\
       \widehat{m_t} &\leftarrow m_t / (1-\beta_1^t) \\
       \rho_\infty &= \frac{2}{1-\beta_2} - 1, \qquad
       \rho_t = \rho_\infty - \frac{2t\,\beta_2^t}{1-\beta_2^t} \\
       \theta_t &\leftarrow \begin{cases}
          \theta_{t-1} - \gamma\,\widehat{m_t}\; r_t\,
              \dfrac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon} & \rho_t > 5 \\[1ex]
          \theta_{t-1} - \gamma\,\widehat{m_t} & \text{otherwise}
       \end{cases} \\
       r_t &= \sqrt{\frac{(\rho_t-4)(\rho_t-2)\,\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\,\rho_t}}
       \end{aligned}

    with :math:`\gamma` = ``lr``, :math:`(\beta_1, \beta_2)` = ``betas``,
    :math:`\epsilon` = ``eps`` and :math:`\lambda` = ``weight_decay``. With
    ``decoupled_weight_decay=True`` the decay is applied to the parameter,
    :math:`\theta_{t-1} \leftarrow (1 - \gamma\lambda)\theta_{t-1}`, as in
    AdamW. :math:`\rho_t` depends only on the step, so the branch is chosen
    on the host, per parameter (a parameter that got its first gradient late
    warms up late).

    Args:
      params: a list of arrays, or of dicts defining parameter groups.
      lr: learning rate :math:`\gamma` (default: 1e-3), a float or 0-d array.
      betas: coefficients of the running averages of the gradient and its
        square (default: (0.9, 0.999)), each in [0, 1).
      eps: added to the denominator for numerical stability (default: 1e-8).
      weight_decay: L2 penalty, or decoupled decay (default: 0).
      decoupled_weight_decay: decay the weights directly, as AdamW (default: False).
      maximize: ascend the objective instead of descending (default: False).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    State per parameter: ``step``, ``exp_avg`` and ``exp_avg_sq``.

    Example:
      >>> import numpy as np
      >>> from ms_optim import RAdam
      >>> w = np.array([1.0, -2.0])
      >>> opt = RAdam([w], lr=0.1)
      >>> opt([2 * w])      # rho_1 = 1 <= 5: a momentum step, and the bias-corrected m_1 is g
      >>> w
      array([ 0.8, -1.6])

    With the default :math:`\beta_2 = 0.999` the first five steps are momentum
    steps and the adaptive step starts at step 6.

    .. warning::
       eps is added to :math:`\sqrt{v_t}` *before* the bias correction, as in
       torch and MindSpore (the paper has no eps), so it weighs
       :math:`1/\sqrt{1-\beta_2^t}` times as much as the eps of
       :class:`Adam`, which is added to :math:`\sqrt{v_t/(1-\beta_2^t)}`.

    References:
      Liu et al., 2020. On the Variance of the Adaptive Learning Rate and Beyond.
      https://arxiv.org/abs/1908.03265
    """

    rule = staticmethod(radam_rule)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 decoupled_weight_decay=False, *, maximize=False, backend=None):
        defaults = dict(lr=lr, betas=betas, eps=eps,
                        weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
                        maximize=maximize)
        super().__init__(params, defaults, backend=backend)

    #: second moments and step sizes: a loaded one with a negative entry is corrupt
    non_negative_state = frozenset(('exp_avg_sq',))

    def _validate(self, group):
        check_lr(group["lr"])
        check_non_negative("eps", group["eps"], "epsilon")
        check_betas(group["betas"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_bool("decoupled_weight_decay", group["decoupled_weight_decay"])
        check_bool("maximize", group["maximize"])

    def _state_keys(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _static(self, group):
        return dict(
            maximize=bool(group["maximize"]),
            has_weight_decay=group["weight_decay"] != 0,
            decoupled=bool(group["decoupled_weight_decay"]),
        )

    def _step_static(self, group, state):
        beta2 = float(group["betas"][1])
        return dict(rectified=rectification(beta2, self._next_step(state)) is not None)

    def _host_scalars(self, group, state):
        step = self._next_step(state)
        beta1, beta2 = (float(b) for b in group["betas"])
        rect = rectification(beta2, step)
        return dict(
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            bc1=1 - beta1**step,
            bc2_sqrt=math.sqrt(1 - beta2**step),
            rect=0.0 if rect is None else rect,  # read only by the rectified rule
        )
