"""LAMB: Adam's direction plus decayed weights, scaled per tensor by a trust ratio (optax's update)."""

from __future__ import annotations

from ..checks import check_betas, check_bool, check_lr, check_non_negative
from ..optimizer import Optimizer

__all__ = ["LAMB", "lamb_apply_rule", "lamb_direction_rule", "lamb_u_rule", "trust_ratio_apply_rule"]


def lamb_direction_rule(g, exp_avg, exp_avg_sq, u, p=None, *, beta1, one_minus_beta1, beta2,
                        one_minus_beta2, eps, weight_decay, bc1, bc2, maximize, has_weight_decay, xp):
    """Pass 1: the moments and the update direction ``u``, in optax's order of operations.

    ``scale_by_adam`` divides each moment by its bias correction ``bc = 1 -
    beta**t`` and adds eps outside the square root (``eps_root`` = 0);
    ``add_decayed_weights`` then adds ``weight_decay * p``. ``p`` is passed
    (and read) only with weight decay: without it the pass never loads it.
    """
    if maximize:
        g = -g
    exp_avg = one_minus_beta1 * g + beta1 * exp_avg
    exp_avg_sq = one_minus_beta2 * (g * g) + beta2 * exp_avg_sq
    u = (exp_avg / bc1) / (xp.sqrt(exp_avg_sq / bc2) + eps)
    if has_weight_decay:
        u = u + weight_decay * p
    return exp_avg, exp_avg_sq, u


def trust_ratio_apply_rule(p, u, ratio, *, lr, xp):
    """Pass 2: ``p + (-lr) * (u * ratio)``, rounded as optax's chain rounds it."""
    return (p - lr * (u * ratio),)


def lamb_u_rule(g, exp_avg, exp_avg_sq, u, p=None, *, beta1, one_minus_beta1, beta2,
                one_minus_beta2, eps, weight_decay, bc1, bc2, maximize, has_weight_decay, xp):
    """Pass 1 as a step runs it: the direction ``u`` only; the moments are not written yet."""
    return lamb_direction_rule(
        g, exp_avg, exp_avg_sq, u, p, beta1=beta1, one_minus_beta1=one_minus_beta1, beta2=beta2,
        one_minus_beta2=one_minus_beta2, eps=eps, weight_decay=weight_decay, bc1=bc1, bc2=bc2,
        maximize=maximize, has_weight_decay=has_weight_decay, xp=xp)[2]


def lamb_apply_rule(p, g, exp_avg, exp_avg_sq, ratio, *, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
                    eps, weight_decay, bc1, bc2, maximize, has_weight_decay, xp):
    """Pass 2 as a step runs it: the moments and ``u`` again (the same operations, so the same
    bits as pass 1's), then ``p``. Every write of the step is in this one pass: the trust
    ratios between the passes can still fail, and a failed step must change nothing."""
    exp_avg, exp_avg_sq, u = lamb_direction_rule(
        g, exp_avg, exp_avg_sq, None, p, beta1=beta1, one_minus_beta1=one_minus_beta1, beta2=beta2,
        one_minus_beta2=one_minus_beta2, eps=eps, weight_decay=weight_decay, bc1=bc1, bc2=bc2,
        maximize=maximize, has_weight_decay=has_weight_decay, xp=xp)
    return trust_ratio_apply_rule(p, u, ratio, lr=lr, xp=xp)[0], exp_avg, exp_avg_sq


def _trust_ratios(params, updates, xp):
    """``||p|| / ||u||`` per tensor, 1 where either norm is 0: one 0-d array each, on the device.

    The norms are stacked so the ratio takes a handful of array operations per
    bucket, not per tensor (each is a kernel launch on a GPU). 16-bit
    parameters have their norms summed in float32, where a sum of squares
    cannot overflow at 65504.
    """
    norm = xp.linalg.vector_norm
    half = getattr(xp, "float16", None)
    wide = xp.float32 if params[0].dtype == half else None

    def norms(arrays):
        return xp.stack([norm(a if wide is None else xp.astype(a, wide)) for a in arrays])

    p_norm, u_norm = norms(params), norms(updates)
    zero = (p_norm == 0) | (u_norm == 0)
    one = xp.ones_like(p_norm)
    # the denominator is 1 where it would be 0, so no division by zero is ever computed
    ratios = xp.where(zero, one, p_norm / xp.where(u_norm == 0, one, u_norm))
    return [ratios[k] for k in range(len(params))]


class LAMB(Optimizer):
    r"""LAMB (layer-wise adaptive moments), the update of ``optax.lamb``.

    Adam's bias-corrected direction, plus decoupled weight decay, rescaled for
    each parameter array by the trust ratio: the ratio of the parameter's
    norm to the update's, so each tensor moves by about ``lr`` times its own
    norm, whatever its gradient's scale.

    .. math::
       \begin{aligned}
       m_t &\leftarrow \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
       v_t &\leftarrow \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2 \\
       u_t &= \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon} + \lambda\,\theta_{t-1} \\
       r_t &= \begin{cases} \lVert\theta_{t-1}\rVert_2 / \lVert u_t\rVert_2 &
              \text{if both norms are nonzero} \\ 1 & \text{otherwise} \end{cases} \\
       \theta_t &\leftarrow \theta_{t-1} - \gamma\, r_t\, u_t
       \end{aligned}

    with :math:`\gamma` = ``lr``, :math:`(\beta_1, \beta_2)` = ``betas``,
    :math:`\epsilon` = ``eps``, :math:`\lambda` = ``weight_decay``,
    :math:`g_t` the gradient (negated with ``maximize``) and the norms taken
    over each parameter array as a whole.

    Args:
      params: a list of arrays, or of dicts defining parameter groups.
      lr: learning rate (default: 1e-3), a float or 0-d array.
      betas: coefficients of the running averages of the gradient and its
        square (default: (0.9, 0.999)), each in [0, 1).
      eps: added to the denominator, outside the square root (default: 1e-6).
      weight_decay: decoupled weight decay :math:`\lambda`, added to the
        direction before the trust ratio is taken (default: 0.0).
      maximize: ascend the objective instead of descending (default: False).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq`` (optax's
    ``count``, ``mu``, ``nu``).

    Cost per step, for a parameter of :math:`N` elements: one fused pass for
    the direction (read :math:`g, m, v`, and :math:`\theta` with weight
    decay; write :math:`m, v, u`), the two norms as tensor-level reductions
    (read :math:`\theta, u`) and one fused pass for the update (read
    :math:`\theta, u`; write :math:`\theta`): eleven element passes (twelve
    with weight decay) and one temporary :math:`u` per parameter, against
    Adam's five. The trust ratio stays on the device as a
    0-d array per tensor, read by the second pass: no host sync.

    Example:
      >>> import numpy as np
      >>> from ms_optim.algorithms.lamb import LAMB
      >>> W, b = np.full((2, 2), 3.0), np.zeros(2)
      >>> opt = LAMB([W, b], lr=0.1)
      >>> opt([np.full((2, 2), 1e-3), np.full(2, 5.0)])
      >>> W   # the trust ratio ||W|| / ||u|| = 3: the step is lr * ||W||, whatever the gradient's size
      array([[2.7, 2.7],
             [2.7, 2.7]])
      >>> np.round(b, 6)   # a zero norm: the ratio is 1, a plain Adam step of about lr
      array([-0.1, -0.1])

    .. warning::
       optax's ``eps_root`` is fixed at 0 (its default). The host numbers
       (bias corrections, ``1 - beta``) are computed in float64 and rounded
       once to the parameter's dtype, so float32 results can differ from
       optax's by an ulp, and the norms are summed in the namespace's order
       (NumPy's pairwise sum), not XLA's: float64 runs agree with optax to
       about 1e-15 relative. The norms of float16 parameters are summed in
       float32. The state is torch-like: ``step`` is a per-parameter Python
       int, where optax keeps one ``count`` array for the whole tree.

    References:
      You et al., 2019. Large Batch Optimization for Deep Learning: Training BERT in 76 minutes.
      https://arxiv.org/abs/1904.00962
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, *, maximize=False,
                 backend=None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, backend=backend)

    #: second moments: a loaded one with a negative entry is corrupt
    non_negative_state = frozenset(("exp_avg_sq",))

    def _validate(self, group):
        check_lr(group["lr"])
        check_non_negative("eps", group["eps"], "epsilon")
        check_betas(group["betas"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_bool("maximize", group["maximize"])

    def _state_keys(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _static(self, group):
        return dict(maximize=bool(group["maximize"]), has_weight_decay=float(group["weight_decay"]) != 0)

    def _host_scalars(self, group, state):
        step = self._next_step(state)
        beta1, beta2 = (float(b) for b in group["betas"])
        return dict(
            lr=float(group["lr"]),
            beta1=beta1,
            one_minus_beta1=1 - beta1,
            beta2=beta2,
            one_minus_beta2=1 - beta2,
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            bc1=1 - beta1**step,
            bc2=1 - beta2**step,
        )

    def update(self, t):
        u = t.empty_like()
        arrays = [t.g, t.state["exp_avg"], t.state["exp_avg_sq"], u]
        if t.static["has_weight_decay"]:
            arrays.append(t.p)
        t.elementwise(lamb_u_rule, arrays, writes=(3,))
        ratios = _trust_ratios(t.p, u, t.xp)
        t.elementwise(lamb_apply_rule, [t.p, t.g, t.state["exp_avg"], t.state["exp_avg_sq"]], writes=(0, 2, 3),
                      operands=[ratios])
