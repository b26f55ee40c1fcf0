"""Adafactor: a second moment kept as row and column factors, torch.optim's variant."""

from __future__ import annotations

import math

from ..checks import check_bool, check_real
from ..engine.eager import assign
from ..engine.namespace import array_namespace, device
from ..averaging import lerp_rule  # torch's lerp, both of its formulas
from ..optimizer import Optimizer

__all__ = ["Adafactor"]


def factored_direction_rule(g, u, row_var, col_var, row_mean, *, eps1_sq, maximize, xp):
    """The update direction of a matrix: ``g / sqrt(max(row * col / mean(row), eps1**2))``."""
    if maximize:
        g = -g
    var_estimate = xp.maximum(row_var * col_var / row_mean, eps1_sq)
    return (1 / xp.sqrt(var_estimate)) * g


def unfactored_direction_rule(g, variance, new_variance, u, *, weight, eps1_sq, maximize, lerp_from_end, xp):
    """A vector's (or scalar's) full second moment, then its update direction."""
    if maximize:
        g = -g
    variance = lerp_rule(variance, g * g, weight=weight, lerp_from_end=lerp_from_end, xp=xp)
    return variance, (1 / xp.sqrt(xp.maximum(variance, eps1_sq))) * g


def apply_rule(p, u, coef, *, decay, has_weight_decay, xp):
    """``p * (1 - lr * weight_decay) + coef * u``, the decay first, as torch rounds it."""
    if has_weight_decay:
        p = p * decay
    return p + coef * u


def apply_unfactored_rule(p, u, variance, new_variance, coef, *, decay, has_weight_decay, xp):
    """:func:`apply_rule`, and the new second moment written into the state in the same last pass."""
    return apply_rule(p, u, coef, decay=decay, has_weight_decay=has_weight_decay, xp=xp), new_variance


class Adafactor(Optimizer):
    r"""Adafactor (Shazeer & Stern, 2018) as ``torch.optim.Adafactor`` computes it.

    For a parameter of two or more dimensions the second moment is kept as a
    row factor :math:`R` (the mean of :math:`g^2` over the last axis) and a
    column factor :math:`C` (over the second-to-last), so a :math:`m\times n`
    matrix keeps :math:`m + n` numbers instead of :math:`mn`; a vector or a
    scalar keeps a full second moment :math:`V`.

    .. math::
       \begin{aligned}
       \hat\beta_{2t} &= t^{c}, \qquad \rho_t = \min(\gamma, 1/\sqrt t), \qquad
         \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t \\
       \theta_{t-1} &\leftarrow (1 - \gamma\lambda)\,\theta_{t-1} \\
       R_t &\leftarrow \mathrm{lerp}\big(R_{t-1}, \tfrac1n\lVert g_t\rVert^2_{\text{rows}}, \hat\beta_{2t}\big), \quad
       C_t \leftarrow \mathrm{lerp}\big(C_{t-1}, \tfrac1m\lVert g_t\rVert^2_{\text{cols}}, \hat\beta_{2t}\big) \\
       \hat V_t &= \frac{R_t C_t}{\max(\mathrm{mean}(R_t), \epsilon_1)}
         \quad(\text{a vector: } V_t \leftarrow \mathrm{lerp}(V_{t-1}, g_t^2, \hat\beta_{2t}),\ \hat V_t = V_t) \\
       U_t &= \frac{g_t}{\sqrt{\max(\hat V_t, \epsilon_1^2)}} \\
       \theta_t &\leftarrow \theta_{t-1} - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)}\, U_t
       \end{aligned}

    with :math:`\gamma` = ``lr``, :math:`c` = ``beta2_decay``,
    :math:`(\epsilon_1, \epsilon_2)` = ``eps`` (:math:`\epsilon_1` = the
    dtype's machine epsilon when None), :math:`d` the clipping threshold and
    :math:`\lambda` = ``weight_decay``; :math:`\mathrm{RMS}(x) =
    \lVert x\rVert_2/\sqrt{\mathrm{numel}}`.

    Args:
      params: a list of arrays, or of dicts defining parameter groups.
      lr: the relative step size's cap :math:`\gamma` (default: 1e-2), a float or 0-d array.
      beta2_decay: exponent of the second moment's decay schedule (default: -0.8), <= 0.
      eps: :math:`(\epsilon_1, \epsilon_2)` (default: (None, 1e-3)).
      d: clipping threshold of the update's RMS (default: 1.0), >= 1.
      weight_decay: decoupled weight decay (default: 0.0).
      maximize: ascend the objective instead (default: False).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    State per parameter: ``step``; ``row_var`` (shape ``(..., m, 1)``) and
    ``col_var`` (``(..., 1, n)``) for two or more dimensions, ``variance``
    otherwise, as torch keeps them.

    Cost per step, for a parameter of :math:`N` elements: the factor updates
    and the RMS of :math:`\theta` and :math:`U` are tensor-level reductions
    (four reads of :math:`N` elements: :math:`\theta`, :math:`g` twice,
    :math:`U`); the direction :math:`U` is one fused pass (read :math:`g`,
    write :math:`U`, the factors entering as broadcast operands) and the
    update another (read :math:`\theta, U`, write :math:`\theta`): nine
    element passes in all, each per-tensor value (:math:`\alpha_t`, the RMS
    clip) staying on the device.

    Example:
      >>> import numpy as np
      >>> from ms_optim import Adafactor
      >>> W = np.ones((2, 3))
      >>> opt = Adafactor([W], lr=0.1)
      >>> opt([np.full((2, 3), 0.5)])
      >>> sorted(opt.state[W]), opt.state[W]["row_var"].shape, opt.state[W]["col_var"].shape
      (['col_var', 'row_var', 'step'], (2, 1), (1, 3))
      >>> np.round(W, 6)   # the first step moves every weight by lr * RMS(W) = 0.1
      array([[0.9, 0.9, 0.9],
             [0.9, 0.9, 0.9]])

    .. warning::
       torch computes :math:`\alpha_t` and the RMS clip as Python floats (a
       host sync per parameter); here they are 0-d arrays of the parameter's
       dtype that stay on the device, so float32 results can differ from
       torch's by an ulp. A NaN :math:`\mathrm{RMS}(\theta)` gives a NaN
       :math:`\alpha_t` here, where Python's ``max`` in torch would pick
       :math:`\epsilon_2`. Like every ms_optim optimizer, ``step`` is a
       Python int.

    References:
      Shazeer & Stern, 2018. Adafactor: Adaptive Learning Rates with Sublinear Memory Cost.
      https://arxiv.org/abs/1804.04235
    """

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
                 *, maximize=False, backend=None):
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                        maximize=maximize)
        super().__init__(params, defaults, backend=backend)

    #: second moments and step sizes: a loaded one with a negative entry is corrupt
    non_negative_state = frozenset(('row_var', 'col_var', 'variance'))

    def _validate(self, group):
        lr = check_real("lr", group["lr"])
        if not 0.0 <= lr < math.inf:  # torch's words for this optimizer
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        beta2_decay = check_real("beta2_decay", group["beta2_decay"])
        if not beta2_decay <= 0.0:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        eps = group["eps"]
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise TypeError(f"eps must be a pair (eps1 or None, eps2), got {type(eps).__name__}: {eps!r}")
        if eps[0] is not None:
            eps1 = check_real("eps[0]", eps[0])
            if not 0.0 <= eps1 < math.inf:
                raise ValueError(f"epsilon1 should be >= 0 but is: {eps1}")
        eps2 = check_real("eps[1]", eps[1])
        if not 0.0 <= eps2 < math.inf:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps2}")
        d = check_real("d", group["d"])
        if not 1.0 <= d < math.inf:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        weight_decay = check_real("weight_decay", group["weight_decay"])
        if not 0.0 <= weight_decay < math.inf:
            raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
        check_bool("maximize", group["maximize"])

    # a vector's state; a matrix's is chosen per parameter below
    def _state_keys(self, group):
        return ("variance",)

    def _param_state_keys(self, group, param):
        return ("row_var", "col_var") if param.ndim > 1 else ("variance",)

    def _state_shape(self, key, param, group):
        shape = list(param.shape)
        if key == "row_var":
            shape[-1] = 1
        elif key == "col_var":
            shape[-2] = 1
        return tuple(shape)

    def _init_state_array(self, key, param, group, xp):
        return xp.zeros(self._state_shape(key, param, group), dtype=param.dtype, device=device(param))

    def _static(self, group):
        return dict(maximize=bool(group["maximize"]), has_weight_decay=float(group["weight_decay"]) != 0)

    def _step_static(self, group, state):
        weight = self._next_step(state) ** float(group["beta2_decay"])
        return dict(lerp_from_end=weight >= 0.5)  # torch's lerp switches formula at 0.5

    def _param_static(self, group, param):
        return dict(factored=param.ndim > 1)

    def _param_scalars(self, group, param):
        eps1 = group["eps"][0]
        if eps1 is None:
            eps1 = array_namespace(param).finfo(param.dtype).eps  # torch: finfo(param.dtype).eps
        # (an empty tensor divides by 1, not 0: its RMS is never used)
        return dict(eps1=float(eps1), sqrt_numel=max(1, math.prod(param.shape)) ** 0.5)

    def _host_scalars(self, group, state):
        step = self._next_step(state)
        lr = float(group["lr"])
        return dict(
            weight=step ** float(group["beta2_decay"]),
            rho=min(lr, 1 / (step**0.5)),
            eps2=float(group["eps"][1]),
            d=float(group["d"]),
            decay=1 - lr * float(group["weight_decay"]),
        )

    def update(self, t):
        xp, s = t.xp, t.scalars
        norm = xp.linalg.vector_norm
        eps1_sq = s["eps1"] * s["eps1"]
        # alpha_t = max(eps2, RMS(p)) * rho_t, from p before its decay: a 0-d array per tensor
        alphas = [xp.clip(norm(p) / s["sqrt_numel"], min=s["eps2"]) * s["rho"] for p in t.p]
        u = t.empty_like()
        if t.static["factored"]:
            row_means = []
            for g, row, col in zip(t.g, t.state["row_var"], t.state["col_var"]):
                for var, axis in ((row, -1), (col, -2)):
                    mean = norm(g, axis=axis, keepdims=True)
                    mean = mean * mean / g.shape[axis]
                    # journaled inside a step (m + n numbers), so a later failure puts it back
                    assign(var, lerp_rule(var, mean, weight=s["weight"], lerp_from_end=t.static["lerp_from_end"],
                                          xp=xp))
                row_means.append(xp.clip(xp.mean(row, axis=-2, keepdims=True), min=s["eps1"]))
            t.elementwise(factored_direction_rule, [t.g, u], writes=(1,),
                          operands=[t.state["row_var"], t.state["col_var"], row_means], eps1_sq=eps1_sq)
        else:
            # the new second moment goes to a temporary, written with p by the last pass:
            # the reductions in between may still fail, and a failed step changes nothing
            new_variance = t.empty_like()
            t.elementwise(unfactored_direction_rule, [t.g, t.state["variance"], new_variance, u], writes=(2, 3),
                          eps1_sq=eps1_sq)
        # -alpha_t / max(1, RMS(U) / d), still on the device
        coefs = [-a / xp.clip(norm(x) / (s["sqrt_numel"] * s["d"]), min=1.0) for a, x in zip(alphas, u)]
        if t.static["factored"]:
            t.elementwise(apply_rule, [t.p, u], writes=(0,), operands=[coefs])
        else:
            t.elementwise(apply_unfactored_rule, [t.p, u, t.state["variance"], new_variance], writes=(0, 2),
                          operands=[coefs])

