"""Lion: the sign of an interpolated momentum, with decoupled weight decay (optax's update)."""

from __future__ import annotations

from ..checks import check_betas, check_bool, check_lr, check_non_negative
from ..optimizer import Optimizer

__all__ = ["Lion", "lion_rule"]


def lion_rule(p, g, exp_avg, *, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, weight_decay,
              maximize, has_weight_decay, xp):
    """One Lion update of one element, in optax's order of operations.

    optax chains ``scale_by_lion``, ``add_decayed_weights`` and
    ``scale_by_learning_rate``: ``p + (-lr) * (sign(c) + weight_decay * p)``,
    which rounds exactly as ``p - lr * (...)``. The momentum is updated with
    ``beta2`` after the direction is taken with ``beta1``.
    """
    if maximize:
        g = -g
    direction = xp.sign(one_minus_beta1 * g + beta1 * exp_avg)
    if has_weight_decay:
        direction = direction + weight_decay * p
    exp_avg = one_minus_beta2 * g + beta2 * exp_avg
    return p - lr * direction, exp_avg


class Lion(Optimizer):
    r"""Lion (EvoLved Sign Momentum), the update of ``optax.lion``.

    Lion keeps one moment and moves every weight by the same amount, the
    learning rate, in the direction of the sign of a blend of that moment and
    the gradient; the moment then decays at a slower rate.

    .. math::
       \begin{aligned}
       c_t &\leftarrow \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
       \theta_t &\leftarrow \theta_{t-1} - \gamma\,\big(\mathrm{sign}(c_t) + \lambda\,\theta_{t-1}\big) \\
       m_t &\leftarrow \beta_2 m_{t-1} + (1-\beta_2)\, g_t
       \end{aligned}

    with :math:`\gamma` = ``lr``, :math:`(\beta_1, \beta_2)` = ``betas``,
    :math:`\lambda` = ``weight_decay`` and :math:`g_t` the gradient (negated
    with ``maximize``). The weight decay is decoupled and scaled by the
    learning rate, as in optax and torch's AdamW. Since every step has the
    size of ``lr`` per element, Lion's learning rate is typically 3-10x
    smaller than AdamW's, and its weight decay 3-10x larger.

    Args:
      params: a list of arrays, or of dicts defining parameter groups.
      lr: learning rate (default: 1e-4), a float or 0-d array.
      betas: :math:`(\beta_1, \beta_2)`, the blend of the moment taken for
        the direction and the moment's decay rate (default: (0.9, 0.99)),
        each in [0, 1).
      weight_decay: decoupled weight decay :math:`\lambda`, multiplied by the
        learning rate (default: 0.0).
      maximize: ascend the objective instead of descending (default: False).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    State per parameter: ``exp_avg`` (optax's ``mu``). Each step is one fused
    pass (read :math:`\theta, g, m`, write :math:`\theta, m`).

    Example:
      >>> import numpy as np
      >>> from ms_optim.algorithms.lion import Lion
      >>> w = np.array([1.0, -2.0, 0.5])
      >>> opt = Lion([w], lr=0.1)
      >>> for _ in range(3):
      ...     opt([np.array([4.0, -0.01, 0.0])])
      >>> w    # every step moves lr * sign, whatever the gradient's size; a zero gradient stays put
      array([ 0.7, -1.7,  0.5])

    .. warning::
       The default ``weight_decay`` is 0.0, where ``optax.lion``'s is 1e-3:
       pass ``weight_decay=1e-3`` for optax's default update.
       The state holds no step count (optax's ``count``: Lion does not use
       it), and the moment has the parameter's dtype (optax's ``mu_dtype=None``).

    References:
      Chen et al., 2023. Symbolic Discovery of Optimization Algorithms. https://arxiv.org/abs/2302.06675
    """

    rule = staticmethod(lion_rule)
    tracks_step = False

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False,
                 backend=None):
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, backend=backend)

    def _validate(self, group):
        check_lr(group["lr"])
        check_betas(group["betas"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_bool("maximize", group["maximize"])

    def _state_keys(self, group):
        return ("exp_avg",)

    def _static(self, group):
        return dict(maximize=bool(group["maximize"]), has_weight_decay=float(group["weight_decay"]) != 0)

    def _host_scalars(self, group, state):
        beta1, beta2 = (float(b) for b in group["betas"])
        # 1 - beta on the host, in float64, as optax forms it from Python floats
        return dict(lr=float(group["lr"]), beta1=beta1, one_minus_beta1=1 - beta1, beta2=beta2,
                    one_minus_beta2=1 - beta2, weight_decay=float(group["weight_decay"]))
