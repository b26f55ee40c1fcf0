"""Muon: momentum orthogonalised by a Newton–Schulz iteration, for 2-D parameters."""

from __future__ import annotations

import math

from ..checks import check_bool, check_real
from ..averaging import lerp_rule  # torch's lerp, both of its formulas
from ..optimizer import Optimizer

__all__ = ["Muon", "newton_schulz"]

#: torch.optim.Muon's defaults (Keller Jordan's quintic coefficients)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
EPS = 1e-7
NS_STEPS = 5
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def momentum_rule(buf, g, *, one_minus_momentum, buf_from_end, xp):
    """``buf.lerp_(g, 1 - momentum)``: the buffer is the direction."""
    return lerp_rule(buf, g, weight=one_minus_momentum, lerp_from_end=buf_from_end, xp=xp)


def _momentum_into_rule(buf, g, new_buf, *, one_minus_momentum, buf_from_end, xp):
    """:func:`momentum_rule` written into a temporary (``new_buf``)."""
    return momentum_rule(buf, g, one_minus_momentum=one_minus_momentum, buf_from_end=buf_from_end, xp=xp)


def nesterov_rule(buf, g, new_buf, u, *, one_minus_momentum, momentum, buf_from_end, nesterov_from_end, xp):
    """The buffer as :func:`momentum_rule`, and the direction ``u = g.lerp(buf, momentum)``."""
    buf = lerp_rule(buf, g, weight=one_minus_momentum, lerp_from_end=buf_from_end, xp=xp)
    return buf, lerp_rule(g, buf, weight=momentum, lerp_from_end=nesterov_from_end, xp=xp)


def apply_rule(p, buf, new_buf, o, *, decay, neg_adjusted_lr, xp):
    """``p.mul_(1 - lr * weight_decay).add_(o, alpha=-adjusted_lr)``, rounded as torch rounds it.

    The new momentum buffer is written here, in the step's last pass, not in
    the first: the Newton–Schulz products between them can still fail
    (MemoryError), and a step that fails must leave the buffer as it was.
    """
    return p * decay + neg_adjusted_lr * o, new_buf


def newton_schulz(x, coefficients, steps, eps, xp):
    """The orthogonalised ``x`` (a 2-D array) after ``steps`` quintic Newton–Schulz iterations.

    With :math:`X_0 = x / \\max(\\lVert x\\rVert_F, \\epsilon)` (transposed so
    that it is wide), each iteration is :math:`A = XX^\\top`, :math:`X
    \\leftarrow aX + (bA + cA^2)X`: torch's ``_zeropower_via_newtonschulz``,
    computed in ``x``'s dtype.
    """
    a, b, c = coefficients
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / xp.clip(xp.linalg.vector_norm(x), min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.T if tall else x


class Muon(Optimizer):
    r"""Muon (Jordan et al., 2024) as ``torch.optim.Muon`` computes it: 2-D parameters only.

    .. math::
       \begin{aligned}
       B_t &\leftarrow \mu B_{t-1} + (1-\mu)\, g_t \\
       \tilde B_t &\leftarrow \begin{cases} (1-\mu)\, g_t + \mu B_t & \text{nesterov} \\
                                            B_t & \text{otherwise} \end{cases} \\
       O_t &\leftarrow \mathrm{NS}^{(a,b,c)}_k(\tilde B_t;\ \epsilon) \\
       \theta_t &\leftarrow (1 - \gamma\lambda)\,\theta_{t-1} - \gamma\, s(A, B)\, O_t
       \end{aligned}

    with :math:`\gamma` = ``lr``, :math:`\mu` = ``momentum``, :math:`\lambda` =
    ``weight_decay``, :math:`k` = ``ns_steps``, :math:`(a, b, c)` =
    ``ns_coefficients`` (see :func:`newton_schulz`) and, for an
    :math:`A\times B` parameter, :math:`s = \sqrt{\max(1, A/B)}`
    (``adjust_lr_fn`` None or ``'original'``) or :math:`0.2\sqrt{\max(A, B)}`
    (``'match_rms_adamw'``).

    Args:
      params: a list of 2-D arrays, or of dicts defining parameter groups.
        Biases, embeddings and other parameters belong to another optimizer
        (AdamW, say), as torch's documentation advises.
      lr: learning rate (default: 1e-3), a float or 0-d array.
      weight_decay: decoupled weight decay (default: 0.1).
      momentum: momentum factor (default: 0.95).
      nesterov: use Nesterov momentum (default: True).
      ns_coefficients: the iteration's :math:`(a, b, c)` (default: (3.4445, -4.7750, 2.0315)).
      eps: lower bound of the norm the iteration divides by (default: 1e-7).
      ns_steps: Newton–Schulz iterations (default: 5), fewer than 100.
      adjust_lr_fn: None, ``'original'`` or ``'match_rms_adamw'`` (default: None).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    State per parameter: ``momentum_buffer`` (torch keeps no step count for Muon).

    Cost per step, for an :math:`A\times B` parameter with :math:`A \le B`:
    one fused pass for the momentum (read :math:`B_{t-1}, g`, write
    :math:`B_t` and, with nesterov, :math:`\tilde B_t`), the iteration's
    :math:`k` rounds of three matrix products (:math:`4A^2B + 2A^3`
    multiply-adds each) through the namespace's BLAS or cuBLAS, and one fused
    pass for the update (read :math:`\theta, O`, write :math:`\theta`).

    Example:
      >>> import numpy as np
      >>> from ms_optim import Muon
      >>> W = np.zeros((2, 2))
      >>> opt = Muon([W], lr=0.1, weight_decay=0.0)
      >>> opt([np.diag([2.0, 0.5])])
      >>> np.round(W, 2)   # a 4x larger gradient, about the same step: the update is orthogonalised
      array([[-0.07,  0.  ],
             [ 0.  , -0.07]])

    .. warning::
       torch runs the Newton–Schulz iteration in bfloat16 whatever the
       parameter's dtype; here it runs in the parameter's dtype (float32 for
       float16 parameters). The result is the same map, computed more
       precisely, so it differs from torch's by bfloat16's rounding
       (about 1e-2 relative). ``ns_steps`` of 100 or more is refused when
       the optimizer is built; torch refuses it at the first step.

    References:
      Jordan et al., 2024. Muon: An optimizer for hidden layers in neural networks.
      https://kellerjordan.github.io/posts/muon/
      Liu et al., 2025. Muon is Scalable for LLM Training. https://arxiv.org/abs/2502.16982
    """

    tracks_step = False

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=NS_COEFFICIENTS, eps=EPS, ns_steps=NS_STEPS, adjust_lr_fn=None,
                 *, backend=None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults, backend=backend)

    def _validate(self, group):
        lr = check_real("lr", group["lr"])
        if not 0.0 <= lr < math.inf:  # torch's words for this optimizer
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        momentum = check_real("momentum", group["momentum"])
        if not 0.0 <= momentum < math.inf:
            raise ValueError(f"momentum should be >= 0 but is: {momentum}")
        if momentum > 1.0:  # torch takes it; the buffer's lerp then extrapolates and diverges
            raise ValueError(f"momentum should be <= 1 but is: {momentum} (above 1 the momentum buffer "
                             "grows every step and the update diverges)")
        weight_decay = check_real("weight_decay", group["weight_decay"])
        if not 0.0 <= weight_decay < math.inf:
            raise ValueError(f"weight decay should be >= 0 but is: {weight_decay}")
        check_bool("nesterov", group["nesterov"])
        coefficients = group["ns_coefficients"]
        if not isinstance(coefficients, (tuple, list)):
            raise TypeError(f"ns_coefficients must be a tuple of 3 numbers, got {type(coefficients).__name__}: "
                            f"{coefficients!r}")
        if len(coefficients) != 3:  # torch's words, and the argument's name
            raise ValueError(f"Coefficients must be a tuple of exactly 3 values: ns_coefficients={coefficients!r}")
        for i, c in enumerate(coefficients):
            if not math.isfinite(check_real(f"ns_coefficients[{i}]", c)):
                raise ValueError(f"ns_coefficients[{i}] must be finite, got {c}")
        eps = check_real("eps", group["eps"])
        if not 0.0 <= eps < math.inf:
            raise ValueError(f"Invalid epsilon value: {eps}")
        steps = group["ns_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) and type(steps).__module__ != "numpy":
            raise TypeError(f"ns_steps must be an int, got {type(steps).__name__}: {steps!r}")
        if int(steps) != steps or steps < 0:
            raise ValueError(f"ns_steps must be a non-negative whole number, got {steps}")
        if steps >= 100:
            raise ValueError(f"Number of steps must be less than 100 for computational efficiency: ns_steps={steps}")
        fn = group["adjust_lr_fn"]
        if fn is not None and not isinstance(fn, str):
            raise TypeError(f"adjust_lr_fn must be None or a string, got {type(fn).__name__}: {fn!r}")
        if group["adjust_lr_fn"] not in ADJUST_LR_FNS:
            raise ValueError(f"Adjust learning rate function {group['adjust_lr_fn']} is not supported")
        for i, p in enumerate(group.get("params", ())):
            if p.ndim != 2:
                raise ValueError(
                    f"Muon only supports 2D parameters whereas we found a parameter with size: {tuple(p.shape)}"
                )

    def _state_keys(self, group):
        return ("momentum_buffer",)

    def _static(self, group):
        momentum = float(group["momentum"])
        return dict(
            nesterov=bool(group["nesterov"]),
            buf_from_end=abs(1 - momentum) >= 0.5,  # torch's lerp switches formula at 0.5
            nesterov_from_end=abs(momentum) >= 0.5,
        )

    def _host_scalars(self, group, state):
        momentum = float(group["momentum"])
        lr = float(group["lr"])
        return dict(one_minus_momentum=1 - momentum, momentum=momentum, lr=lr,
                    decay=1 - lr * float(group["weight_decay"]))

    def _param_scalars(self, group, param):
        rows, cols = param.shape[:2]
        if group["adjust_lr_fn"] == "match_rms_adamw":
            ratio = 0.2 * math.sqrt(max(rows, cols))
        else:
            ratio = math.sqrt(max(1, rows / cols)) if cols else 1.0
        return dict(neg_adjusted_lr=-(float(group["lr"]) * ratio))

    def update(self, t):
        xp, group = t.xp, t.group
        buf = t.state["momentum_buffer"]
        # the new buffer goes to a temporary, written into the state by the last pass
        new_buf = t.empty_like()
        if t.static["nesterov"]:
            direction = t.empty_like()
            t.elementwise(nesterov_rule, [buf, t.g, new_buf, direction], writes=(2, 3))
        else:
            direction = new_buf
            t.elementwise(_momentum_into_rule, [buf, t.g, new_buf], writes=(2,))
        coefficients = tuple(float(c) for c in group["ns_coefficients"])
        steps, eps = int(group["ns_steps"]), float(group["eps"])
        ortho = []
        for p, x in zip(t.p, direction):
            work = xp.float32 if p.dtype == getattr(xp, "float16", None) else p.dtype
            o = newton_schulz(xp.astype(x, work), coefficients, steps, eps, xp)
            ortho.append(o if o.dtype == p.dtype else xp.astype(o, p.dtype))
        t.elementwise(apply_rule, [t.p, buf, new_buf, ortho], writes=(0, 1))
