"""Rprop: resilient backpropagation, steps driven by the gradient's sign alone."""

from __future__ import annotations

import math

from ..checks import check_bool, check_lr, check_real
from ..optimizer import Optimizer

__all__ = ["Rprop", "rprop_rule"]


def rprop_rule(p, g, prev, step_size, *, etaminus, etaplus, step_size_min, step_size_max,
               maximize, xp):
    """One Rprop update of one element, torch's single-tensor branches as ``xp.where``.

    Where the gradient keeps its sign the step grows by ``etaplus``, where it
    flips the step shrinks by ``etaminus`` and that gradient counts as zero
    (no move now, no sign comparison next time). torch's ``sign`` is 0 for
    NaN, so a NaN gradient element moves nothing and keeps its step size
    (it is remembered in ``prev``); the branches below keep that.
    """
    if maximize:
        g = -g
    # torch compares sign(g * prev) with 0: the same test as comparing the product,
    # NaN included (torch's sign(NaN) is 0, where NumPy's xp.sign gives NaN).
    same = g * prev
    step_size = xp.where(same > 0, step_size * etaplus, xp.where(same < 0, step_size * etaminus, step_size))
    step_size = xp.minimum(xp.maximum(step_size, step_size_min), step_size_max)
    g = xp.where(same < 0, 0.0, g)
    move = xp.where(g > 0, step_size, xp.where(g < 0, -step_size, 0.0))  # torch's sign(g) * step_size
    return p - move, g, step_size


class Rprop(Optimizer):
    r"""Rprop: per-coordinate step sizes that grow while the gradient's sign holds.

    .. math::
       \begin{aligned}
       g_t &\leftarrow \pm\nabla_\theta f_t(\theta_{t-1}) && (-\text{ when maximize})\\
       \eta_t &\leftarrow \begin{cases}
            \min(\eta_{t-1}\,\eta_+,\ \Gamma_{max}) & g_{t-1}\, g_t > 0 \\
            \max(\eta_{t-1}\,\eta_-,\ \Gamma_{min}),\quad g_t \leftarrow 0 & g_{t-1}\, g_t < 0 \\
            \eta_{t-1} & \text{otherwise} \end{cases}\\
       \theta_t &\leftarrow \theta_{t-1} - \eta_t\, \mathrm{sign}(g_t) \\
       g_{prev} &\leftarrow g_t
       \end{aligned}

    element-wise, with :math:`(\eta_-, \eta_+)` = ``etas``,
    :math:`(\Gamma_{min}, \Gamma_{max})` = ``step_sizes``, :math:`\eta_0` =
    ``lr`` and :math:`g_0 = 0`.

    Args:
      params: a list of arrays, or of dicts defining parameter groups.
      lr: the initial step size :math:`\eta_0` (default: 1e-2), a float or 0-d array.
      etas: ``(etaminus, etaplus)``, the factors that shrink and grow a step
        (default: (0.5, 1.2)); ``0 < etaminus < 1 < etaplus``.
      step_sizes: ``(min, max)`` bounds of a step (default: (1e-6, 50)).
      maximize: ascend the objective instead of descending (default: False).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    State per parameter: ``step``, ``prev`` (the last gradient, zero where it
    flipped sign) and ``step_size`` (:math:`\eta_t`).

    Example:
      >>> import numpy as np
      >>> from ms_optim import Rprop
      >>> w = np.array([1.0, -2.0])
      >>> opt = Rprop([w], lr=0.1)
      >>> for _ in range(3):
      ...     opt([2 * w])    # steps 0.1, 0.12, 0.144: the sign holds, the step grows 1.2x
      >>> np.round(w, 6)
      array([ 0.636, -1.636])

    .. warning::
       ``lr`` is read only when a parameter gets its first gradient, to fill
       its ``step_size``; changing ``lr`` later (a scheduler) changes
       nothing, as in torch. Rprop ignores gradient magnitudes, so it suits
       full-batch training; on noisy mini-batch gradients the sign flips
       keep shrinking the steps.

    References:
      Riedmiller & Braun, 1993. A Direct Adaptive Method for Faster
      Backpropagation Learning: The RPROP Algorithm. IEEE ICNN.
      https://doi.org/10.1109/ICNN.1993.298623
    """

    rule = staticmethod(rprop_rule)

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *,
                 maximize=False, backend=None):
        defaults = dict(lr=lr, etas=etas,
                        step_sizes=step_sizes,
                        maximize=maximize)
        super().__init__(params, defaults, backend=backend)

    #: second moments and step sizes: a loaded one with a negative entry is corrupt
    non_negative_state = frozenset(('step_size',))

    def _validate(self, group):
        check_lr(group["lr"])
        etaminus, etaplus = _pair("etas", group["etas"])
        if not 0.0 < etaminus < 1.0 < etaplus:
            raise ValueError(f"Invalid eta values: {etaminus}, {etaplus}")
        # torch takes any pair; a negative or inverted one clamps every step size
        # to nonsense, so say it here
        min_step, max_step = _pair("step_sizes", group["step_sizes"])
        if not 0.0 <= min_step <= max_step < math.inf:
            raise ValueError(f"Invalid step_sizes: ({min_step}, {max_step}); need 0 <= min <= max")
        check_bool("maximize", group["maximize"])

    def _state_keys(self, group):
        return ("prev", "step_size")

    def _init_state_array(self, key, param, group, xp):
        if key == "step_size":
            return xp.full_like(param, float(group["lr"]))
        return xp.zeros_like(param)

    def _static(self, group):
        return dict(maximize=bool(group["maximize"]))

    def _host_scalars(self, group, state):
        etaminus, etaplus = _pair("etas", group["etas"])
        step_size_min, step_size_max = _pair("step_sizes", group["step_sizes"])
        return dict(etaminus=etaminus, etaplus=etaplus, step_size_min=step_size_min,
                    step_size_max=step_size_max)


def _pair(name: str, value) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair of floats, got {type(value).__name__}: {value!r}")
    return tuple(check_real(f"{name}[{i}]", v) for i, v in enumerate(value))  # type: ignore[return-value]
