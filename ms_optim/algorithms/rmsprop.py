"""RMSprop: divide the gradient by a running RMS of its recent values."""

from __future__ import annotations

from ..checks import check_bool, check_lr, check_momentum, check_non_negative
from ..optimizer import Optimizer

__all__ = ["RMSprop", "rmsprop_rule"]


def rmsprop_rule(p, g, square_avg, *buffers, lr, alpha, eps, weight_decay, momentum, maximize,
                 has_weight_decay, has_momentum, centered, xp):
    """One RMSprop update of one element, in torch's order of operations.

    ``buffers`` are ``momentum_buffer`` (when ``has_momentum``) then
    ``grad_avg`` (when ``centered``), as :meth:`RMSprop._state_keys` lists
    them; they come back in the same order after the parameter and
    ``square_avg``. eps is added *after* the square root.
    """
    buffers = list(buffers)
    buf = buffers.pop(0) if has_momentum else None
    grad_avg = buffers.pop(0) if centered else None
    if maximize:
        g = -g
    if has_weight_decay:
        g = g + weight_decay * p
    square_avg = square_avg * alpha + (1 - alpha) * g * g
    if centered:
        grad_avg = grad_avg + (1 - alpha) * (g - grad_avg)  # torch's lerp(g, 1 - alpha)
        avg = xp.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = xp.sqrt(square_avg) + eps
    if has_momentum:
        buf = buf * momentum + g / avg
        p = p - lr * buf
    else:
        p = p - lr * g / avg
    return (p, square_avg) + ((buf,) if has_momentum else ()) + ((grad_avg,) if centered else ())


class RMSprop(Optimizer):
    r"""RMSprop, optionally centered and with momentum.

    .. math::
       \begin{aligned}
       g_t &\leftarrow \pm\nabla_\theta f_t(\theta_{t-1}) + \lambda\,\theta_{t-1}
            && (-\text{ when maximize})\\
       v_t &\leftarrow \alpha\, v_{t-1} + (1-\alpha)\, g_t^2 \\
       \tilde v_t &\leftarrow \begin{cases} v_t - \bar g_t^2, \quad
            \bar g_t \leftarrow \alpha\, \bar g_{t-1} + (1-\alpha)\, g_t & \text{centered} \\
            v_t & \text{otherwise} \end{cases}\\
       b_t &\leftarrow \mu\, b_{t-1} + g_t / (\sqrt{\tilde v_t} + \epsilon),
            \quad \theta_t \leftarrow \theta_{t-1} - \gamma\, b_t
            && (\mu > 0)\\
       \theta_t &\leftarrow \theta_{t-1} - \gamma\, g_t / (\sqrt{\tilde v_t} + \epsilon)
            && (\mu = 0)
       \end{aligned}

    with :math:`\gamma` = ``lr``, :math:`\alpha` = ``alpha``, :math:`\epsilon` =
    ``eps``, :math:`\mu` = ``momentum`` and :math:`\lambda` = ``weight_decay``;
    :math:`v_0 = \bar g_0 = b_0 = 0`.

    Args:
      params: a list of arrays, or of dicts defining parameter groups.
      lr: learning rate :math:`\gamma` (default: 1e-2), a float or 0-d array.
      alpha: smoothing constant of the running averages (default: 0.99).
      eps: added to the denominator for numerical stability (default: 1e-8).
      weight_decay: L2 penalty :math:`\lambda` added to the gradient (default: 0).
      momentum: momentum factor :math:`\mu` (default: 0).
      centered: normalise by an estimate of the gradient's variance rather
        than its second moment (default: False).
      maximize: ascend the objective instead of descending (default: False).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    State per parameter: ``step``, ``square_avg``, ``momentum_buffer`` (when
    ``momentum > 0``) and ``grad_avg`` (when ``centered``).

    Example:
      >>> import numpy as np
      >>> from ms_optim import RMSprop
      >>> w = np.array([1.0, -2.0])
      >>> opt = RMSprop([w], lr=0.01)
      >>> opt([2 * w])      # v = (1 - alpha) g**2: a first step of lr / sqrt(0.01) = 10 lr
      >>> np.round(w, 6)
      array([ 0.9, -1.9])

    .. warning::
       eps is added after the square root (TensorFlow adds it inside), and
       the running average starts at zero with no bias correction, so the
       first steps are up to :math:`1/\sqrt{1-\alpha}` times ``lr`` (above).

    References:
      Hinton, Srivastava & Swersky, 2012. Neural Networks for Machine Learning,
      lecture 6e. https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf
      Graves, 2013. Generating Sequences With Recurrent Neural Networks
      (the centered form). https://arxiv.org/abs/1308.0850
    """

    rule = staticmethod(rmsprop_rule)

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, *, maximize=False, backend=None):
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, backend=backend)

    #: second moments and step sizes: a loaded one with a negative entry is corrupt
    non_negative_state = frozenset(('square_avg',))

    def _validate(self, group):
        check_lr(group["lr"])
        check_non_negative("eps", group["eps"], "epsilon")
        check_momentum("momentum", group["momentum"])
        check_non_negative("weight_decay", group["weight_decay"])
        alpha = check_non_negative("alpha", group["alpha"])
        if alpha > 1.0:  # torch takes it; 1 - alpha < 0 then weighs g*g negatively: square_avg < 0, sqrt NaN
            raise ValueError(f"Invalid alpha value: {alpha} (must be at most 1: above it the square "
                             "average goes negative and its square root NaN)")
        check_bool("centered", group["centered"])
        check_bool("maximize", group["maximize"])

    def _state_keys(self, group):
        keys = ("square_avg",)
        if float(group["momentum"]) > 0:
            keys += ("momentum_buffer",)
        if group["centered"]:
            keys += ("grad_avg",)
        return keys

    def _static(self, group):
        return dict(
            maximize=bool(group["maximize"]),
            has_weight_decay=float(group["weight_decay"]) != 0,
            has_momentum=float(group["momentum"]) > 0,
            centered=bool(group["centered"]),
        )

    def _host_scalars(self, group, state):
        return dict(
            lr=float(group["lr"]),
            alpha=float(group["alpha"]),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            momentum=float(group["momentum"]),
        )
