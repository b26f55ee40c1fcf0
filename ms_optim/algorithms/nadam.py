"""NAdam: Adam with Nesterov momentum and a momentum schedule."""

from __future__ import annotations

from ..checks import check_betas, check_bool, check_lr, check_non_negative
from ..optimizer import Optimizer

__all__ = ["NAdam", "nadam_rule"]


def nadam_rule(p, g, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, weight_decay, bc2,
               grad_coef, avg_coef, maximize, has_weight_decay, decoupled, xp):
    """One NAdam update of one element, in torch's order of operations.

    The momentum schedule lives on the host: ``grad_coef = -lr (1 - mu_t) /
    (1 - prod_{i<=t} mu_i)``, ``avg_coef = -lr mu_{t+1} / (1 - prod_{i<=t+1}
    mu_i)`` and ``bc2 = 1 - beta2**t``.
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
    denom = xp.sqrt(exp_avg_sq / bc2) + eps
    p = p + grad_coef * g / denom
    p = p + avg_coef * exp_avg / denom
    return p, exp_avg, exp_avg_sq


def momentum_at(beta1: float, momentum_decay: float, step: int) -> float:
    """The scheduled momentum :math:`\\mu_t = \\beta_1 (1 - 0.96^{t\\psi} / 2)`."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


class NAdam(Optimizer):
    r"""NAdam: Adam with Nesterov momentum, its momentum warmed up by a schedule.

    .. math::
       \begin{aligned}
       g_t &\leftarrow \pm\nabla_\theta f_t(\theta_{t-1})
            \;(+\,\lambda\theta_{t-1} \text{ unless decoupled})\\
       \mu_t &= \beta_1 \big(1 - \tfrac12\, 0.96^{t\psi}\big), \qquad
       \mu_{t+1} = \beta_1 \big(1 - \tfrac12\, 0.96^{(t+1)\psi}\big) \\
       m_t &\leftarrow \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
       v_t &\leftarrow \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2 \\
       \widehat{m_t} &= \frac{\mu_{t+1}\, m_t}{1 - \prod_{i=1}^{t+1}\mu_i}
            + \frac{(1-\mu_t)\, g_t}{1 - \prod_{i=1}^{t}\mu_i}, \qquad
       \widehat{v_t} = \frac{v_t}{1-\beta_2^t} \\
       \theta_t &\leftarrow \theta_{t-1} - \gamma\,\frac{\widehat{m_t}}{\sqrt{\widehat{v_t}} + \epsilon}
       \end{aligned}

    with :math:`\gamma` = ``lr``, :math:`(\beta_1, \beta_2)` = ``betas``,
    :math:`\epsilon` = ``eps``, :math:`\lambda` = ``weight_decay`` and
    :math:`\psi` = ``momentum_decay``. With ``decoupled_weight_decay=True``
    the decay is applied to the parameter, :math:`\theta_{t-1} \leftarrow (1 -
    \gamma\lambda)\theta_{t-1}` (NAdamW). The product
    :math:`\prod_{i=1}^{t}\mu_i` is kept per parameter, on the host, as
    ``state['mu_product']``; the scalars above are computed there once per
    step.

    Args:
      params: a list of arrays, or of dicts defining parameter groups.
      lr: learning rate :math:`\gamma` (default: 2e-3), a float or 0-d array.
      betas: coefficients of the running averages of the gradient and its
        square (default: (0.9, 0.999)), each in [0, 1).
      eps: added to the denominator for numerical stability (default: 1e-8).
      weight_decay: L2 penalty, or decoupled decay (default: 0).
      momentum_decay: :math:`\psi`, how fast :math:`\mu_t` rises from
        :math:`\beta_1/2` towards :math:`\beta_1` (default: 4e-3).
      decoupled_weight_decay: decay the weights directly, as AdamW (default: False).
      maximize: ascend the objective instead of descending (default: False).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    State per parameter: ``step``, ``mu_product`` (a float), ``exp_avg`` and
    ``exp_avg_sq``.

    Example:
      >>> import numpy as np
      >>> from ms_optim import NAdam
      >>> w = np.array([1.0, -2.0])
      >>> opt = NAdam([w], lr=0.1)
      >>> opt([2 * w])
      >>> np.round(w, 3)
      array([ 0.894, -1.894])

    On the first step :math:`\widehat{v_1} = g_1^2`, the gradient term is
    :math:`g_1` and the look-ahead adds
    :math:`\mu_2 (1-\beta_1) g_1 / (1 - \mu_1\mu_2) \approx 0.45 \cdot 0.1 /
    (1 - 0.45^2)\, g_1 = 0.056\, g_1`: a step of :math:`1.056\,\gamma`.

    .. warning::
       torch keeps ``mu_product`` as a tensor of its default dtype (float32
       unless changed); here it is a Python float, so float64 training
       matches torch run with ``torch.set_default_dtype(torch.float64)``
       and differs from torch's default by float32 rounding of that product
       (about 1e-8 of a step).

    References:
      Dozat, 2016. Incorporating Nesterov Momentum into Adam. ICLR workshop.
      https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ
    """

    rule = staticmethod(nadam_rule)
    host_state_keys = ("mu_product",)

    def _host_state_domain(self, group):
        # a product of mu_t = beta1 (1 - 0.5 * 0.96**(t psi)) in (0, 1); exactly 0 only when beta1 == 0
        return {"mu_product": (0.0, 1.0, float(group["betas"][0]) == 0.0)}

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, maximize=False, backend=None):
        defaults = dict(lr=lr, betas=betas, eps=eps,
                        weight_decay=weight_decay, momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        super().__init__(params, defaults, backend=backend)

    #: second moments and step sizes: a loaded one with a negative entry is corrupt
    non_negative_state = frozenset(('exp_avg_sq',))

    def _validate(self, group):
        check_lr(group["lr"])
        check_non_negative("eps", group["eps"], "epsilon")
        check_betas(group["betas"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_non_negative("momentum_decay", group["momentum_decay"])
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

    def _next_host_state(self, group, state):
        step = self._next_step(state)
        mu = momentum_at(float(group["betas"][0]), float(group["momentum_decay"]), step)
        return dict(mu_product=state.get("mu_product", 1.0) * mu)

    def _host_scalars(self, group, state):
        step = self._next_step(state)
        lr = float(group["lr"])
        beta1, beta2 = (float(b) for b in group["betas"])
        momentum_decay = float(group["momentum_decay"])
        mu = momentum_at(beta1, momentum_decay, step)
        mu_next = momentum_at(beta1, momentum_decay, step + 1)
        mu_product = self._next_host_state(group, state)["mu_product"]
        mu_product_next = mu_product * mu_next
        return dict(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            bc2=1 - beta2**step,
            grad_coef=-lr * (1.0 - mu) / (1.0 - mu_product),
            avg_coef=(-lr * mu_next) / (1.0 - mu_product_next),
        )
