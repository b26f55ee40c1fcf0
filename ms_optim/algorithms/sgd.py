"""SGD: stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from ..checks import check_bool, check_finite, check_lr, check_momentum, check_non_negative
from ..optimizer import Optimizer

__all__ = ["SGD", "sgd_rule"]


def sgd_rule(p, g, momentum_buffer=None, *, lr, weight_decay, momentum, keep, blend,
             maximize, has_weight_decay, has_momentum, nesterov, xp):
    """One SGD update of one element; ``keep, blend`` mix the momentum buffer.

    On a buffer's first step ``keep, blend = 0, 1`` (the buffer starts as the
    gradient, as in torch), afterwards ``momentum, 1 - dampening``.
    """
    if maximize:
        g = -g
    if has_weight_decay:
        g = g + weight_decay * p
    if not has_momentum:
        return (p - lr * g,)
    buf = momentum_buffer * keep + blend * g
    step = g + momentum * buf if nesterov else buf
    return p - lr * step, buf


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with (Nesterov) momentum.

    .. math::
       \begin{aligned}
       g_t &\leftarrow \pm\nabla_\theta f_t(\theta_{t-1}) + \lambda\,\theta_{t-1}
            && (-\text{ when maximize})\\
       b_t &\leftarrow \begin{cases} g_t & t = 1 \\
                         \mu\, b_{t-1} + (1-\tau)\, g_t & t > 1 \end{cases}\\
       g_t &\leftarrow \begin{cases} g_t + \mu\, b_t & \text{nesterov} \\
                         b_t & \text{otherwise} \end{cases}
            \quad(\text{when } \mu \neq 0)\\
       \theta_t &\leftarrow \theta_{t-1} - \gamma\, g_t
       \end{aligned}

    with :math:`\gamma` = ``lr``, :math:`\mu` = ``momentum``, :math:`\tau` =
    ``dampening``, :math:`\lambda` = ``weight_decay``.

    Args:
      params: a list of arrays, or of dicts defining parameter groups.
      lr: learning rate :math:`\gamma` (default: 1e-3), a float or 0-d array.
      momentum: momentum factor :math:`\mu` (default: 0).
      dampening: dampening :math:`\tau` for momentum (default: 0).
      weight_decay: L2 penalty :math:`\lambda` added to the gradient (default: 0).
      nesterov: use Nesterov momentum (default: False); needs ``momentum > 0``
        and ``dampening == 0``.
      maximize: ascend the objective instead of descending (default: False).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    State per parameter: ``momentum_buffer`` (only when ``momentum != 0``).

    Example:
      >>> import numpy as np
      >>> from ms_optim import SGD
      >>> w = np.array([1.0, -2.0])
      >>> opt = SGD([w], lr=0.1, momentum=0.9)
      >>> opt([2 * w])          # gradient of sum(w**2)
      >>> w
      array([ 0.8, -1.6])

    .. warning::
       Like torch and unlike Sutskever et al., the learning rate multiplies the
       buffer (:math:`\theta \leftarrow \theta - \gamma b`) rather than being
       folded into it; the two differ when ``lr`` changes during training.

    References:
      Sutskever et al., 2013. On the importance of initialization and momentum
      in deep learning. ICML. http://proceedings.mlr.press/v28/sutskever13.html
    """

    rule = staticmethod(sgd_rule)
    tracks_step = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, backend=None):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults, backend=backend)

    def _validate(self, group):
        check_lr(group["lr"])
        momentum = check_momentum("momentum", group["momentum"])
        dampening = check_finite("dampening", group["dampening"])
        check_non_negative("weight_decay", group["weight_decay"])
        nesterov = check_bool("nesterov", group["nesterov"])
        check_bool("maximize", group["maximize"])
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _state_keys(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _static(self, group):
        return dict(
            maximize=bool(group["maximize"]),
            has_weight_decay=group["weight_decay"] != 0,
            has_momentum=group["momentum"] != 0,
            nesterov=bool(group["nesterov"]),
        )

    def _host_scalars(self, group, state):
        momentum = float(group["momentum"])
        first = "momentum_buffer" not in state
        return dict(
            lr=float(group["lr"]),
            weight_decay=float(group["weight_decay"]),
            momentum=momentum,
            keep=0.0 if first else momentum,
            blend=1.0 if first else 1.0 - float(group["dampening"]),
        )
