"""Schedule-free AdamW: no learning-rate schedule, an online average of the iterates instead."""

from __future__ import annotations

import math
import numbers

from ..averaging import lerp_rule
from ..checks import check_betas, check_bool, check_lr, check_non_negative, check_real
from ..engine import backend_for
from ..engine.layout import Layout
from ..engine.namespace import array_namespace
from ..optimizer import Optimizer

__all__ = ["ScheduleFreeAdamW", "schedule_free_adamw_rule", "schedule_free_adamw_update"]


def schedule_free_adamw_rule(y, g, z, exp_avg_sq, *, beta2, bias_correction2, eps, weight_decay, ckp1,
                             lr, y_step, has_weight_decay, lerp_from_end, xp):
    """One schedule-free AdamW update of one element, in schedulefree's order of operations.

    ``y`` is the parameter (the point the gradient was taken at), ``z`` the
    base iterate. ``ckp1`` (the averaging weight), ``y_step = lr * (beta1 *
    (1 - ckp1) - 1)`` and ``bias_correction2 = 1 - beta2**(k+1)`` come from
    the host, once per group and step.
    """
    exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * g * g
    denom = xp.sqrt(exp_avg_sq / bias_correction2) + eps
    u = g / denom
    if has_weight_decay:
        u = u + weight_decay * y  # decay taken at y, as schedulefree does
    # y moves toward z (the average x follows), then along the step; x is never stored
    y = lerp_rule(y, z, weight=ckp1, lerp_from_end=lerp_from_end, xp=xp)
    y = y + y_step * u
    z = z - lr * u
    return y, z, exp_avg_sq


def _check_count(name: str, value) -> int:
    """A non-negative whole number kept as an int (warmup_steps, the step count k)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < 0:
        raise ValueError(f"Invalid {name} value: {value}")
    return int(value)


def _check_finite(name: str, value) -> float:
    v = check_real(name, value)
    if not math.isfinite(v):
        raise ValueError(f"Invalid {name} value: {v}")
    return v


class ScheduleFreeAdamW(Optimizer):
    r"""Schedule-free AdamW (Defazio et al., 2024), as ``schedulefree.AdamWScheduleFree`` computes it.

    No learning-rate schedule is needed: the method keeps a base iterate
    :math:`z` (plain AdamW-style steps), an average :math:`x` of the
    :math:`z` s (what to evaluate), and takes gradients at their interpolation
    :math:`y`. The parameter array holds :math:`y` in train mode and
    :math:`x` in eval mode; only :math:`z` and the second moment are stored.
    With :math:`k` the group's step count (0-based) and
    :math:`\gamma_k = \gamma\min(1, (k+1)/\text{warmup\_steps})`:

    .. math::
       \begin{aligned}
       v_k &\leftarrow \beta_2 v_{k-1} + (1-\beta_2)\, g_k^2, \qquad
         u_k = \frac{g_k}{\sqrt{v_k / (1-\beta_2^{k+1})} + \epsilon} + \lambda y_k \\
       \gamma^{max}_k &= \max(\gamma^{max}_{k-1}, \gamma_k), \qquad
         w_k = (k+1)^r\,(\gamma^{max}_k)^{p}, \qquad c_{k+1} = w_k \Big/ \textstyle\sum_{i\le k} w_i \\
       z_{k+1} &= z_k - \gamma_k u_k, \qquad
         x_{k+1} = (1 - c_{k+1})\, x_k + c_{k+1} z_{k+1}, \qquad
         y_{k+1} = (1-\beta_1)\, z_{k+1} + \beta_1 x_{k+1}
       \end{aligned}

    computed without storing :math:`x`: :math:`y \leftarrow \mathrm{lerp}(y, z_k, c_{k+1}) +
    \gamma_k(\beta_1(1-c_{k+1}) - 1)\,u_k`, one fused pass over
    :math:`y, g, z, v`. :meth:`eval` sets the parameter to
    :math:`x = \mathrm{lerp}(y, z, 1 - 1/\beta_1)` and :meth:`train` back to
    :math:`y = \mathrm{lerp}(x, z, 1-\beta_1)`, one fused pass each.

    Args:
      params: a list of arrays, or of dicts defining parameter groups.
      lr: learning rate :math:`\gamma` (default: 0.0025), a float or 0-d array.
      betas: :math:`(\beta_1, \beta_2)` (default: (0.9, 0.999)); :math:`\beta_1`
        interpolates between :math:`z` and :math:`x`, :math:`\beta_2` averages
        :math:`g^2`. :math:`\beta_1` in (0, 1), :math:`\beta_2` in [0, 1).
      eps: added to the denominator (default: 1e-8).
      weight_decay: :math:`\lambda`, an L2 term taken at :math:`y` (default: 0).
      warmup_steps: a linear warmup of the lr over this many steps (default: 0).
      r: the averaging weights grow as :math:`(k+1)^r` (default: 0.0).
      weight_lr_power: :math:`p`, the averaging weights scale as the largest lr
        so far to this power, so warmup steps count less (default: 2.0).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

    Call :meth:`eval` before evaluating or saving a checkpoint and
    :meth:`train` before training on, exactly as with schedulefree: a step in
    eval mode raises. A new optimizer starts in train mode (see the warning). Per group, as schedulefree keeps them: ``k`` (steps taken),
    ``train_mode``, ``weight_sum``, ``lr_max`` and ``scheduled_lr`` (the
    lr of the last step, for logging); they advance at every step, for every
    group, whether or not its parameters got a gradient. Per parameter:
    ``z`` and ``exp_avg_sq``. ``state_dict()`` carries both, and a
    schedulefree ``AdamWScheduleFree.state_dict()`` loads as it is.

    Example:
      >>> import numpy as np
      >>> from ms_optim.algorithms.schedule_free_adamw import ScheduleFreeAdamW
      >>> w = np.array([1.0, -2.0])
      >>> opt = ScheduleFreeAdamW([w], lr=0.1)
      >>> opt.train()       # a no-op on a new optimizer; needed after eval()
      >>> for _ in range(3):
      ...     opt([2 * w])
      >>> opt.eval()        # w now holds the average x, the point to evaluate
      >>> np.round(w, 3)
      array([ 0.806, -1.803])

    .. warning::
       Departures from schedulefree: a new optimizer starts in train mode
       (schedulefree's starts in eval mode and refuses a step before
       ``train()``; before the first step there is no :math:`z` and
       :math:`x = y`, so the two are the same point and only the refusal
       differs; ``train()`` first is a no-op here). Each of the others refuses
       what would go wrong there: ``betas[0] = 0`` is refused (eval would
       divide by zero);
       a step raises RuntimeError if *any* group is in eval mode (schedulefree
       checks the first group only); and a group added by
       :meth:`add_param_group` without its own ``train_mode`` joins in the
       optimizer's current mode (schedulefree's joins in eval mode, and a
       later ``train()`` then moves its parameters off their ``y``).
       Gradients are not modified (schedulefree divides ``p.grad`` in place).

    References:
      Defazio et al., 2024. The Road Less Scheduled. https://arxiv.org/abs/2405.15682
      facebookresearch/schedule_free, ``schedulefree/adamw_schedulefree.py``.
    """

    rule = staticmethod(schedule_free_adamw_rule)
    tracks_step = False  # the step count k is per group, as in schedulefree

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, warmup_steps=0,
                 r=0.0, weight_lr_power=2.0, *, backend=None):
        defaults = dict(lr=lr, betas=betas, eps=eps, r=r, k=0, warmup_steps=warmup_steps, train_mode=True,
                        weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0, weight_lr_power=weight_lr_power,
                        weight_decay=weight_decay)
        super().__init__(params, defaults, backend=backend)

    # ------------------------------------------------------------- the hooks

    def _validate(self, group):
        check_lr(group["lr"])
        check_non_negative("eps", group["eps"], "epsilon")
        beta1, _ = check_betas(group["betas"])
        if beta1 == 0.0:
            raise ValueError("Invalid beta parameter at index 0: 0.0 (schedule-free needs betas[0] > 0 "
                             "to recover x from y in eval())")
        check_non_negative("weight_decay", group["weight_decay"])
        _check_count("warmup_steps", group["warmup_steps"])
        check_non_negative("r", group["r"])
        check_non_negative("weight_lr_power", group["weight_lr_power"])
        _check_count("k", group["k"])
        check_bool("train_mode", group["train_mode"])
        check_non_negative("weight_sum", group["weight_sum"])
        _check_finite("lr_max", group["lr_max"])
        _check_finite("scheduled_lr", group["scheduled_lr"])

    def _state_keys(self, group):
        return ("z", "exp_avg_sq")

    def _init_state_array(self, key, param, group, xp):
        if key == "z":
            return xp.asarray(param, copy=True)  # z starts at y (schedulefree's clone)
        return xp.zeros_like(param)

    def _static(self, group):
        return dict(has_weight_decay=float(group["weight_decay"]) != 0)

    @staticmethod
    def _schedule(group) -> dict:
        """This step's numbers for ``group``, from its values before the step (schedulefree's order)."""
        k = int(group["k"])
        warmup = int(group["warmup_steps"])
        sched = (k + 1) / warmup if k < warmup else 1.0
        lr = float(group["lr"]) * sched
        lr_max = max(lr, float(group["lr_max"]))
        weight = ((k + 1) ** float(group["r"])) * (lr_max ** float(group["weight_lr_power"]))
        weight_sum = float(group["weight_sum"]) + weight
        ckp1 = weight / weight_sum if weight_sum != 0 else 0.0  # schedulefree's ZeroDivisionError case
        return dict(k=k, lr=lr, lr_max=lr_max, weight_sum=weight_sum, ckp1=ckp1)

    def _host_scalars(self, group, state):
        s = self._schedule(group)
        beta1, beta2 = (float(b) for b in group["betas"])
        return dict(
            beta2=beta2,
            bias_correction2=1 - beta2 ** (s["k"] + 1),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            ckp1=s["ckp1"],
            lr=s["lr"],
            y_step=s["lr"] * (beta1 * (1 - s["ckp1"]) - 1),
        )

    def _step_static(self, group, state):
        return dict(lerp_from_end=self._schedule(group)["ckp1"] >= 0.5)

    # ------------------------------------------------------------------ step

    def step(self, grads) -> None:
        """One step (see :meth:`ms_optim.Optimizer.step`); every group's ``k`` advances.

        Raises:
          RuntimeError: a group is in eval mode (call :meth:`train` first).
            Nothing is changed.
        """
        for i, group in enumerate(self.param_groups):
            if "train_mode" in group:  # a mode that is no bool is a bad value, not eval mode
                check_bool(f"param_groups[{i}]['train_mode']", group["train_mode"])
            if not group.get("train_mode"):
                raise RuntimeError(
                    f"Optimizer was not in train mode when step is called (param_groups[{i}]['train_mode'] "
                    f"is {group.get('train_mode')!r}). Please insert .train() and .eval() calls on the "
                    "optimizer: train() before training steps, eval() before evaluating or saving."
                )
        super().step(grads)  # validates everything first: on error no group value moves either
        for group in self.param_groups:
            s = self._schedule(group)
            group["k"] = s["k"] + 1
            group["lr_max"] = s["lr_max"]
            group["weight_sum"] = s["weight_sum"]
            group["scheduled_lr"] = s["lr"]

    def add_param_group(self, param_group) -> None:
        """As :meth:`ms_optim.Optimizer.add_param_group`; the group joins in the current mode."""
        if isinstance(param_group, dict) and "train_mode" not in param_group and self.param_groups:
            param_group = {**param_group, "train_mode": self.param_groups[0]["train_mode"]}
        super().add_param_group(param_group)

    # ------------------------------------------------------ train / eval swap

    def train(self) -> None:
        """Put the parameters at :math:`y`, where gradients are taken (from :math:`x`, if in eval mode)."""
        self._swap(to_train=True)

    def eval(self) -> None:
        """Put the parameters at :math:`x`, the average to evaluate (from :math:`y`, if in train mode)."""
        self._swap(to_train=False)

    def _swap(self, to_train: bool) -> None:
        for group in self.param_groups:
            self._validate(group)  # a bad beta fails before any group moves
        for group in self.param_groups:
            if bool(group["train_mode"]) == to_train:
                continue
            beta1 = float(group["betas"][0])
            weight = 1 - beta1 if to_train else 1 - 1 / beta1
            buckets: dict[tuple, list] = {}
            for p in group["params"]:
                z = self.state.get(p, {}).get("z")
                if z is not None and math.prod(p.shape):
                    xp = array_namespace(p)
                    buckets.setdefault((id(xp), str(p.dtype)), [xp]).append((p, z))
            layout = Layout(2, (0,))  # p written, z read
            for xp, *tensors in buckets.values():
                backend_for(xp, self.backend).run_stage(
                    lerp_rule, {"lerp_from_end": weight >= 0.5}, {"weight": weight}, layout, tensors, xp)
            group["train_mode"] = to_train


def schedule_free_adamw_update(y, g, z=None, exp_avg_sq=None, *, k=0, weight_sum=0.0, lr_max=-1.0,
                               lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, warmup_steps=0,
                               r=0.0, weight_lr_power=2.0, backend=None):
    """One schedule-free AdamW step of ``y`` in place, with explicit state (train mode).

    ``k``, ``weight_sum`` and ``lr_max`` are the group's running values before
    this step (schedulefree's; 0, 0.0 and -1.0 on a first step); ``z`` and
    ``exp_avg_sq`` left None are created as the optimizer creates them.

    Returns ``(y, z, exp_avg_sq, k, weight_sum, lr_max)``: the arrays updated in
    place, then the running values after the step. See
    :class:`ScheduleFreeAdamW` for the math and the hyper-parameters.

    Example:
      >>> import numpy as np
      >>> y = np.array([1.0, -2.0])
      >>> y, z, v, k, weight_sum, lr_max = schedule_free_adamw_update(y, 2 * y, lr=0.1)
      >>> k, np.round(z, 6)     # a first step moves z by lr * sign(g)
      (1, array([ 0.9, -1.9]))
    """
    opt = ScheduleFreeAdamW([y], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                            warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power, backend=backend)
    group = opt.param_groups[0]
    running = dict(k=k, weight_sum=weight_sum, lr_max=lr_max, train_mode=True)
    opt._validate({**group, **running})
    group.update(running)
    from ..ops import _checked_state  # ops imports the algorithms: import it when called

    given = {name: value for name, value in (("z", z), ("exp_avg_sq", exp_avg_sq)) if value is not None}
    if len(given) == 1:
        raise ValueError("schedule_free_adamw_update(): give both z and exp_avg_sq, or neither (a first step)")
    name = "schedule_free_adamw_update"
    opt.state[y] = {key: _checked_state(name, key, value, y) for key, value in given.items()}
    opt.step([g])
    final = opt.state[y]
    return y, final["z"], final["exp_avg_sq"], group["k"], group["weight_sum"], group["lr_max"]
