r"""Dynamic loss scaling: ``torch.amp.GradScaler`` for plain arrays.

A float16 forward/backward pass loses small gradients to underflow. Scaling
the loss by a large factor :math:`S` before the backward pass scales every
gradient by :math:`S` too; :class:`GradScaler` divides it back out before the
optimizer step, skips the step when a scaled gradient overflowed (NaN or
inf), and adapts :math:`S`: halved after an overflow, doubled after
``growth_interval`` clean steps in a row.

The arithmetic is that of torch's CPU kernels, ported as plain Array API code
(:func:`non_finite_check_and_unscale_` and :func:`update_scale_`), so the
scale trajectory matches torch's exactly. The scale, the growth tracker and
the found-inf flags are 0-d arrays in the namespace and on the device of the
arrays being scaled; one step reads one number on the host: the skip decision
in :meth:`GradScaler.step`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

import numpy as np

from .checks import check_bool, check_real
from .clipping import (_check_empty_norm, _check_grad, _checked_bound, _checked_norm_type, _clip_coefficient,
                       _clip_with_norm, _compute_dtype, _groups, _move, _numpy_all_finite, _total_norm,
                       clip_grad_norm_)
from .engine import reductions
from .engine.namespace import array_namespace, device, is_array, is_numpy, is_real_number

__all__ = ["GradScaler", "OptState", "non_finite_check_and_unscale_", "update_scale_"]

_INT32_MAX = 2**31 - 1


class OptState(Enum):
    """Where one optimizer is in the current iteration (torch.amp.grad_scaler.OptState)."""

    READY = 0
    UNSCALED = 1
    STEPPED = 2


def _fresh_state() -> dict:
    # deferred: (clip coefficient, the gradients' ids) when clip_grad_norm_ left the
    # unscale and the clip to a fused optimizer's step
    return {"stage": OptState.READY, "found_inf_per_device": {}, "deferred": None}


class _InvalidFactor(ValueError, AssertionError):
    """A bad growth or backoff factor: a ValueError, and the AssertionError torch raises."""


# --------------------------------------------------------------- the kernels


def non_finite_check_and_unscale_(grads, found_inf, inv_scale) -> None:
    """``torch._amp_foreach_non_finite_check_and_unscale_`` for arrays of one namespace, device and dtype.

    Multiplies every gradient in place by ``inv_scale`` and writes 1.0 into
    ``found_inf`` if any entry of any gradient was NaN or infinite *before*
    the multiplication (``found_inf`` is not cleared first: the caller zeroes
    it). The product is taken in the compute dtype (float32 for 16-bit
    gradients, rounded back), as torch's kernel does.

    Args:
      grads: a list of arrays sharing one namespace, device and dtype.
      found_inf: a float32 0-d array on the same device, updated in place.
      inv_scale: a float32 0-d array on the same device.
    """
    if not grads:
        return
    if reductions.supports(grads):
        # one compiled pass: each gradient read once, checked and multiplied
        reductions.non_finite_check_and_unscale_(grads, found_inf, inv_scale)
        return
    xp = array_namespace(grads[0])
    compute = _compute_dtype(xp, grads[0].dtype)
    if is_numpy(xp):
        _numpy_check_and_unscale_(grads, found_inf, inv_scale, compute)
        return
    inv = xp.astype(inv_scale, compute)
    bad = None
    for g in grads:
        b = xp.any(xp.logical_not(xp.isfinite(g)))
        bad = b if bad is None else xp.logical_or(bad, b)
        if g.dtype == compute:
            g *= inv
        else:
            g[...] = xp.astype(xp.astype(g, compute) * inv, g.dtype)
    one = xp.asarray(1.0, dtype=found_inf.dtype, device=device(found_inf))
    found_inf[...] = xp.where(bad, one, found_inf)


def _numpy_check_and_unscale_(grads, found_inf, inv_scale, compute) -> None:
    inv = np.asarray(inv_scale).astype(compute)
    identity = float(inv) == 1.0  # host memory: reading it costs nothing
    found = False
    with np.errstate(over="ignore", invalid="ignore"):
        for g in grads:
            if not found and g.size and not _numpy_all_finite(g):
                found = True
            if not identity:  # x * 1 is x: torch's kernel skips it too
                np.multiply(g, inv, out=g, casting="unsafe")
    if found:
        found_inf[...] = 1.0


def update_scale_(scale, growth_tracker, found_inf, growth_factor: float, backoff_factor: float,
                  growth_interval: int) -> None:
    """``torch._amp_update_scale_``: the scale and growth tracker after one iteration, in place.

    .. math::
       (S, n) \\leftarrow \\begin{cases}
         (\\mathrm{f32}(S \\cdot b),\\; 0) & \\text{found\\_inf} \\neq 0 \\\\
         (\\mathrm{f32}(S \\cdot g),\\; 0) & n + 1 = \\text{growth\\_interval}
             \\text{ (}S\\text{ kept if that overflows float32)} \\\\
         (S,\\; n + 1) & \\text{otherwise}
       \\end{cases}

    with the products taken in float64 and rounded to float32, as in torch's
    CPU kernel. Everything stays on the device: no host sync.

    Args:
      scale: float32 0-d array, updated in place.
      growth_tracker: int32 0-d array (consecutive clean steps), updated in place.
      found_inf: a float 0-d array, non-zero when this iteration overflowed.
      growth_factor, backoff_factor, growth_interval: as :class:`GradScaler`'s.
    """
    xp = array_namespace(scale)
    dev = device(scale)
    s64 = xp.astype(scale, xp.float64)
    found = found_inf != 0
    with np.errstate(over="ignore"):  # a grown scale past float32 is expected, and discarded below
        backed = xp.astype(s64 * float(backoff_factor), xp.float32)
        grown = xp.astype(s64 * float(growth_factor), xp.float32)
    successful = growth_tracker + 1
    if growth_interval <= _INT32_MAX:
        grows = successful == int(growth_interval)
    else:  # an int32 count never reaches it
        grows = xp.asarray(False, device=dev)
    new_scale = xp.where(found, backed, xp.where(xp.logical_and(grows, xp.isfinite(grown)), grown, scale))
    zero = xp.zeros((), dtype=growth_tracker.dtype, device=dev)
    new_tracker = xp.where(xp.logical_or(found, grows), zero, successful)
    scale[...] = new_scale
    growth_tracker[...] = new_tracker


# --------------------------------------------------------------- the scaler


class _Replicator:
    """One array served in any namespace and device, each copy made once (torch's _MultiDeviceReplicator)."""

    def __init__(self, master):
        self.master = master
        self._copies: dict = {}

    def get(self, xp, dev):
        key = (id(xp), str(dev))
        out = self._copies.get(key)
        if out is None:
            m = self.master
            if array_namespace(m) is xp and str(device(m)) == str(dev):
                out = m
            else:
                out = _move(m, xp, dev)
            self._copies[key] = out
        return out


class GradScaler:
    r"""Dynamic loss scaling for float16 training (``torch.amp.GradScaler``).

    Each iteration: scale the loss (or its gradient seed) by :math:`S`, back-
    propagate, then ``step`` divides the gradients by :math:`S` and runs the
    optimizer unless a gradient is NaN or infinite, and ``update`` adapts
    :math:`S`:

    .. math::
       g \leftarrow g / S, \qquad
       S \leftarrow \begin{cases}
          S \cdot \text{backoff\_factor} & \text{some } g \text{ not finite (step skipped)} \\
          S \cdot \text{growth\_factor} & \text{growth\_interval clean steps in a row} \\
          S & \text{otherwise}
       \end{cases}

    A skipped step changes nothing: no parameter, no state array, no step count.
    The scale lives in the namespace and on the device of the first array
    :meth:`scale` gets, as a float32 0-d array (torch's ``_scale``); with it
    the growth tracker (int32) and one found-inf flag per optimizer and
    device. ``scale``, ``unscale_`` and ``update`` never wait for a GPU;
    ``step`` reads one number (whether to skip), as torch's does.

    Args:
      init_scale: the first scale :math:`S` (default: 2**16).
      growth_factor: multiplies :math:`S` after ``growth_interval`` clean
        steps in a row; must be > 1 (default: 2.0).
      backoff_factor: multiplies :math:`S` after a step with a non-finite
        gradient; must be in (0, 1) (default: 0.5).
      growth_interval: clean steps in a row before :math:`S` grows, a
        positive int (default: 2000).
      enabled: False makes every method a no-op and ``step`` a plain
        ``optimizer.step(grads)`` (default: True).

    Example:
      >>> import numpy as np
      >>> import ms_optim
      >>> w = np.zeros(3)
      >>> opt = ms_optim.SGD([w], lr=0.1)
      >>> scaler = ms_optim.GradScaler(init_scale=1024.0)
      >>> seed = scaler.scale(1.0)                 # d(scaled loss)/d(loss)
      >>> grads = [np.ones(3) * seed]               # your backward pass, scaled
      >>> scaler.step(opt, grads)                  # unscales, then opt.step(grads)
      >>> scaler.update()
      >>> w.tolist(), scaler.get_scale()
      ([-0.1, -0.1, -0.1], 1024.0)

    References:
      Micikevicius et al., *Mixed Precision Training*, ICLR 2018,
      https://arxiv.org/abs/1710.03740

    .. warning::
       Departures from torch: there is no ``device`` argument (the scale lives
       with the arrays it scales); the gradients are passed explicitly to
       :meth:`unscale_` and :meth:`step` (one per ``optimizer.parameters``
       entry, as to ``optimizer.step``); a bad constructor or setter value
       raises ValueError (a bad factor is also an ``AssertionError``, what
       torch raises); :meth:`scale` also takes a Python number.

    .. note::
       An optimizer whose update is one element-wise rule (every built-in
       one but LBFGS, SparseAdam and the tensor-level ones:
       ``_step_supports_amp_scaling``) takes ``grad_scale``/``found_inf``, as
       torch's fused optimizers do: ``step`` then checks the gradients without
       writing them and the optimizer divides by the scale inside its own
       update pass. :meth:`clip_grad_norm_` goes one further and folds the
       clip into that pass too.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True) -> None:
        if isinstance(init_scale, str):
            raise TypeError(
                f"init_scale must be a positive number, got the string {init_scale!r}: ms_optim's "
                "GradScaler takes no device argument (the scale lives with the arrays it scales)"
            )
        self._enabled = check_bool("enabled", enabled)
        if self._enabled:
            init_scale = _checked_scale("init_scale", init_scale)
            growth_factor = _checked_growth_factor(growth_factor)
            backoff_factor = _checked_backoff_factor(backoff_factor)
            growth_interval = _checked_interval(growth_interval)
            self._init_scale = init_scale
            self._scale = None  # made by the first scale(), in the namespace of its array
            self._growth_factor = growth_factor
            self._backoff_factor = backoff_factor
            self._growth_interval = growth_interval
            self._init_growth_tracker = 0
            self._growth_tracker = None
            self._per_optimizer_states: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------ internals

    def _opt_state(self, optimizer) -> dict:
        return self._per_optimizer_states.setdefault(id(optimizer), _fresh_state())

    def _check_scale_growth_tracker(self, funcname: str):
        fix = "This may indicate your script did not use scaler.scale(loss or outputs) earlier in the iteration."
        if self._scale is None:
            raise AssertionError(f"Attempted {funcname} but _scale is None.  " + fix)
        if self._growth_tracker is None:
            raise AssertionError(f"Attempted {funcname} but _growth_tracker is None.  " + fix)
        return self._scale, self._growth_tracker

    def _lazy_init_scale_growth_tracker(self, xp, dev) -> None:
        self._scale = xp.full((), self._init_scale, dtype=xp.float32, device=dev)
        self._growth_tracker = xp.full((), self._init_growth_tracker, dtype=xp.int32, device=dev)

    # ---------------------------------------------------------------- scale

    def scale(self, outputs):
        """``outputs`` times the current scale: an array, a number, or (nested) lists/tuples of them.

        An array keeps torch's result dtype: its own, or for a 0-d array the
        promotion of its dtype with float32 (so a 0-d float16 loss scales to
        float32, as in torch); the product is taken in float32 for 16-bit
        arrays. A Python number is taken as a 0-d float64 array of the
        scale's namespace. Lists and tuples keep their type, other iterables
        come back as iterators. Disabled: ``outputs`` itself.

        The first array seen fixes the namespace and device of the scale.
        """
        if not self._enabled:
            return outputs
        self._check_scalable(outputs, "outputs")
        if self._scale is None:
            first = _first_array(outputs)
            if first is None:
                self._lazy_init_scale_growth_tracker(array_namespace(np.zeros(())), "cpu")
            else:
                self._lazy_init_scale_growth_tracker(array_namespace(first), device(first))
        rep = _Replicator(self._scale)
        return self._apply_scale(outputs, rep)

    def _check_scalable(self, value, where: str) -> None:
        if is_array(value):
            if not array_namespace(value).isdtype(value.dtype, "real floating"):
                raise TypeError(f"{where} has dtype {value.dtype}; scale() takes real floating arrays")
        elif is_real_number(value):
            return
        elif isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise TypeError(f"{where} must be an array, a number or an iterable of them, got {type(value).__name__}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                self._check_scalable(v, f"{where}[{i}]")

    def _apply_scale(self, value, rep: _Replicator):
        if is_array(value):
            xp = array_namespace(value)
            s = rep.get(xp, device(value))
            out_dtype = value.dtype if value.ndim else xp.result_type(value.dtype, xp.float32)
            compute = xp.result_type(value.dtype, xp.float32)
            prod = xp.astype(value, compute) * xp.astype(s, compute)
            return xp.astype(prod, out_dtype)
        if is_real_number(value):
            xp = array_namespace(self._scale)
            dev = device(self._scale)
            return xp.asarray(float(value), dtype=xp.float64, device=dev) * xp.astype(self._scale, xp.float64)
        if isinstance(value, (list, tuple)):
            return type(value)(self._apply_scale(v, rep) for v in value)
        return (self._apply_scale(v, rep) for v in value)

    # ------------------------------------------------------------- unscale

    def _checked_grads(self, optimizer, grads) -> list:
        """``grads`` as a list, checked against ``optimizer`` before anything changes."""
        if callable(grads) and not is_array(grads):
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        if not callable(getattr(optimizer, "step", None)):
            raise TypeError(f"optimizer must have a step(grads) method, got {type(optimizer).__name__}")
        if is_array(grads) or isinstance(grads, (str, bytes, Mapping)) or not isinstance(grads, Iterable):
            raise TypeError(
                f"grads must be a sequence with one array (or None) per parameter, got {type(grads).__name__}"
            )
        grads = list(grads)
        checker = getattr(optimizer, "_checked_grads", None)
        if checker is not None:
            checker(grads)  # ms_optim's own checks: count, namespace, shape, device, dtype
        for i, g in enumerate(grads):
            if g is not None:
                _check_grad("grads", i, g)
        return grads

    def _unscale_grads_(self, grads: list, inv_scale, found_inf, allow_fp16: bool) -> dict:
        present = [g for g in grads if g is not None]
        if not allow_fp16:
            _refuse_fp16(grads)
        per_dtype = _groups(present)
        inv_rep = _Replicator(inv_scale)
        found_rep = _Replicator(found_inf)
        found_per_device: dict = {}
        for xp, dev, members in per_dtype.values():
            key = (id(xp), str(dev))
            flag = found_per_device.get(key)
            if flag is None:
                # every device gets its own zeroed flag, as torch's replicator copies one
                flag = found_per_device[key] = xp.asarray(found_rep.get(xp, dev), copy=True)
            non_finite_check_and_unscale_(members, flag, inv_rep.get(xp, dev))
        return found_per_device

    def _ready_to_unscale(self, optimizer, funcname: str) -> dict:
        """``optimizer``'s record for this iteration, if its gradients may still be unscaled (torch's messages)."""
        self._check_scale_growth_tracker(funcname)
        state = self._opt_state(optimizer)
        if state["stage"] is OptState.UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError(f"{funcname}() is being called after step().")
        return state

    def unscale_(self, optimizer, grads) -> None:
        """Divide ``grads`` by the scale, in place, and record whether any is NaN or infinite.

        Optional: :meth:`step` unscales when this was not called. Call it to
        work on the true gradients between backward and step (e.g. to clip
        them), at most once per optimizer per iteration.

        Args:
          optimizer: the optimizer these gradients are for.
          grads: one array (or None) per ``optimizer.parameters`` entry, as
            ``optimizer.step`` takes them; changed in place.

        Raises:
          RuntimeError: already called for this optimizer since the last
            :meth:`update`, or called after :meth:`step` (torch's messages).
          ValueError: a float16 gradient (torch's message: unscaling one would
            lose what scaling kept), or a gradient that does not fit.
          TypeError: a gradient that is not a real floating array.
        """
        if not self._enabled:
            return
        state = self._ready_to_unscale(optimizer, "unscale_")
        grads = self._checked_grads(optimizer, grads)
        xp = array_namespace(self._scale)
        # FP32 division can be imprecise for some compile options, so torch takes the reciprocal in FP64.
        inv_scale = xp.astype(1.0 / xp.astype(self._scale, xp.float64), xp.float32)
        found_inf = xp.zeros((), dtype=xp.float32, device=device(self._scale))
        state["found_inf_per_device"] = self._unscale_grads_(grads, inv_scale, found_inf, False)
        state["stage"] = OptState.UNSCALED

    def clip_grad_norm_(self, optimizer, grads, max_norm: float, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False):
        r"""``unscale_`` then :func:`ms_optim.clip_grad_norm_`, fused: one read of the gradients, no writes.

        Returns the total norm of the unscaled gradients and records, for
        :meth:`step`, whether any gradient is NaN or inf and the clip
        coefficient :math:`\min(\text{max\_norm} / (\|g / S\| + 10^{-6}), 1)`.
        For an optimizer that takes them (``_step_supports_amp_scaling``),
        the gradients are left as they are and :meth:`step` passes the scale
        and the coefficient to its update, which reads ``(g * (1/S)) * coef``:
        the values ``unscale_`` and ``clip_grad_norm_`` would have written,
        bit for bit, without the two passes that write them. For any other
        optimizer the gradients are unscaled and clipped here, in place.

        Use it in place of the pair::

            scaler.unscale_(opt, grads); norm = ms_optim.clip_grad_norm_(grads, 1.0)   # separate passes
            norm = scaler.clip_grad_norm_(opt, grads, 1.0)                              # fused
            scaler.step(opt, grads)                                                     # either way
            scaler.update()

        Args:
          optimizer: the optimizer these gradients are for.
          grads: one array (or None) per ``optimizer.parameters`` entry;
            :meth:`step` must get the same arrays.
          max_norm, norm_type, error_if_nonfinite: as for
            :func:`ms_optim.clip_grad_norm_` (the norm is that of the unscaled
            gradients; a NaN/inf gradient makes it non-finite and the step is
            skipped, so ``error_if_nonfinite`` is rarely wanted here).

        Raises:
          RuntimeError: :meth:`unscale_` or this was already called for this
            optimizer since the last :meth:`update`, or :meth:`step` was.
          ValueError: a float16 gradient (as :meth:`unscale_`), or a bad
            argument. Nothing changes when it raises.

        Disabled: plain :func:`ms_optim.clip_grad_norm_` of ``grads``.
        """
        if not self._enabled:
            return clip_grad_norm_(grads, max_norm, norm_type, error_if_nonfinite)
        state = self._ready_to_unscale(optimizer, "clip_grad_norm_")
        grads = self._checked_grads(optimizer, grads)
        max_norm = _checked_bound("max_norm", max_norm)
        p = _checked_norm_type(norm_type)
        error_if_nonfinite = check_bool("error_if_nonfinite", error_if_nonfinite)
        present = [g for g in grads if g is not None]
        _refuse_fp16(grads)
        _check_empty_norm(present, p)
        xp = array_namespace(self._scale)
        inv_scale = xp.astype(1.0 / xp.astype(self._scale, xp.float64), xp.float32)
        flags: dict = {}
        total = _total_norm(present, p, error_if_nonfinite, multiplier=inv_scale, found=flags)
        if not flags:  # every gradient None: torch's check records one zero flag
            flags[(id(xp), str(device(self._scale)))] = xp.zeros((), dtype=xp.float32, device=device(self._scale))
        coef = _clip_coefficient(max_norm, total)
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            state["deferred"] = (coef, [id(g) for g in grads])
        elif present:
            # the optimizer reads the gradients as they are: write what unscale_ and the clip would
            self._unscale_grads_(present, inv_scale, xp.zeros((), dtype=xp.float32, device=device(self._scale)),
                                 False)  # its flags are those found above
            _clip_with_norm(present, max_norm, total)
        state["found_inf_per_device"] = flags
        state["stage"] = OptState.UNSCALED
        return total

    def _check_inf_per_device(self, optimizer, grads: list) -> dict:
        """The found-inf flags of ``grads`` without unscaling them (a fused optimizer unscales)."""
        scale, _ = self._check_scale_growth_tracker("_check_inf_per_device")
        xp = array_namespace(scale)
        dummy_inv_scale = xp.ones((), dtype=xp.float32, device=device(scale))
        found_inf = xp.zeros((), dtype=xp.float32, device=device(scale))
        flags = self._unscale_grads_(grads, dummy_inv_scale, found_inf, True)
        self._opt_state(optimizer)["found_inf_per_device"] = flags
        return flags

    def _found_inf_per_device(self, optimizer) -> dict:
        return self._opt_state(optimizer)["found_inf_per_device"]

    # ---------------------------------------------------------------- step

    def step(self, optimizer, grads, *args, **kwargs):
        """Unscale ``grads`` (unless :meth:`unscale_` did) and step ``optimizer`` if they are all finite.

        When any gradient is NaN or infinite the optimizer is not called: its
        parameters, state and step counts stay exactly as they were, and
        ``None`` is returned. Otherwise returns ``optimizer.step(grads, *args,
        **kwargs)``. Reads one number on the host (the skip decision).

        Raises:
          RuntimeError: ``step`` was already called since the last
            :meth:`update`, or a closure was given (torch's messages).
          AssertionError: :meth:`scale` was never called, or no gradient was
            checked (every gradient None), as in torch.
        """
        if not self._enabled:
            return optimizer.step(grads, *args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        self._check_scale_growth_tracker("step")
        state = self._opt_state(optimizer)
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            return self._fused_step(optimizer, state, grads, *args, **kwargs)
        if state["stage"] is OptState.READY:
            self.unscale_(optimizer, grads)
        flags = state["found_inf_per_device"]
        if len(flags) == 0:
            raise AssertionError("No inf checks were recorded for this optimizer.")
        retval = None
        if not _any_found(flags.values(), self._scale):
            retval = optimizer.step(grads, *args, **kwargs)
        state["stage"] = OptState.STEPPED
        return retval

    def _fused_step(self, optimizer, state: dict, grads, *args, **kwargs):
        # The contract of torch's fused optimizers, with keywords instead of
        # attributes: the optimizer unscales by grad_scale (None: already done)
        # and leaves everything as it was where found_inf is non-zero, on the
        # device, so this path reads nothing on the host.
        grads = self._checked_grads(optimizer, grads)
        deferred = state["deferred"]
        if deferred is not None and [id(g) for g in grads] != deferred[1]:
            raise ValueError("grads must be the arrays given to clip_grad_norm_ (their unscale and clip are "
                             "left to this step)")
        if state["stage"] is OptState.READY:
            self._check_inf_per_device(optimizer, grads)
        flags = list(state["found_inf_per_device"].values())
        if not flags:
            raise AssertionError("No inf checks were recorded for this optimizer.")
        xp = array_namespace(self._scale)
        dev = device(self._scale)
        found_inf = flags[0] if len(flags) == 1 else sum(_move(f, xp, dev) for f in flags)
        if deferred is not None:  # clip_grad_norm_ wrote nothing: the step unscales and clips
            kwargs = {**kwargs, "grad_scale": self._scale, "clip_coef": deferred[0]}
        else:
            kwargs = {**kwargs, "grad_scale": None if state["stage"] is OptState.UNSCALED else self._scale}
        retval = optimizer.step(grads, *args, found_inf=found_inf, **kwargs)
        state["stage"] = OptState.STEPPED
        return retval

    # -------------------------------------------------------------- update

    def update(self, new_scale=None) -> None:
        """Adapt the scale after every optimizer's :meth:`step` of this iteration.

        Backs off by ``backoff_factor`` if any step of the iteration was
        skipped; grows by ``growth_factor`` after ``growth_interval`` clean
        iterations in a row (not past float32's largest value), as torch's
        ``_amp_update_scale_`` does. Or sets ``new_scale`` (a positive
        number, or a 1-element real array, copied) instead. Either way the
        per-optimizer records of the iteration are cleared. No host sync.

        Raises:
          AssertionError: no gradient was checked since the last update (torch's).
          TypeError / ValueError: a bad ``new_scale``; nothing changes then.
        """
        if not self._enabled:
            return
        scale, tracker = self._check_scale_growth_tracker("update")
        if new_scale is not None:
            xp = array_namespace(scale)
            if is_array(new_scale):
                if math.prod(new_scale.shape) != 1:
                    raise ValueError(f"new_scale must be a number or a 1-element array, "
                                     f"got an array of shape {tuple(new_scale.shape)}")
                if not array_namespace(new_scale).isdtype(new_scale.dtype, "real floating"):
                    raise TypeError(f"new_scale must be a real floating array, got dtype {new_scale.dtype}")
                value = _move(array_namespace(new_scale).reshape(new_scale, ()), xp, device(scale), xp.float32)
            else:
                value = _checked_scale("new_scale", new_scale)
            scale[...] = value
        else:
            found_infs = [f for st in self._per_optimizer_states.values()
                          for f in st["found_inf_per_device"].values()]
            if not found_infs:
                raise AssertionError("No inf checks were recorded prior to update.")
            xp = array_namespace(scale)
            dev = device(scale)
            combined = _move(found_infs[0], xp, dev)
            for f in found_infs[1:]:
                combined = combined + _move(f, xp, dev)
            update_scale_(scale, tracker, combined, self._growth_factor, self._backoff_factor,
                          self._growth_interval)
        self._per_optimizer_states = {}

    # ------------------------------------------------------------ accessors

    def _get_scale_async(self):
        return self._scale

    def get_scale(self) -> float:
        """The current scale as a Python float (1.0 when disabled). One device sync."""
        if self._enabled:
            return self._init_scale if self._scale is None else float(self._scale)
        return 1.0

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        self._growth_factor = _checked_growth_factor(new_factor, "new_factor")

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        self._backoff_factor = _checked_backoff_factor(new_factor, "new_factor")

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        self._growth_interval = _checked_interval(new_interval, "new_interval")

    def _get_growth_tracker(self) -> int:
        if self._enabled:
            return self._init_growth_tracker if self._growth_tracker is None else int(self._growth_tracker)
        return 0

    def is_enabled(self) -> bool:
        return self._enabled

    # --------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """torch's five entries, as Python numbers (``{}`` when disabled); call it after :meth:`update`.

        ``scale``, ``growth_factor``, ``backoff_factor`` (floats),
        ``growth_interval`` and ``_growth_tracker`` (ints). A torch
        GradScaler's ``state_dict()`` loads here and the reverse.
        """
        if not self._enabled:
            return {}
        return {
            "scale": self.get_scale(),
            "growth_factor": self._growth_factor,
            "backoff_factor": self._backoff_factor,
            "growth_interval": self._growth_interval,
            "_growth_tracker": self._get_growth_tracker(),
        }

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Load a :meth:`state_dict` (ours or torch's). A no-op when disabled.

        Every entry is checked before any is applied: on an error nothing changes.

        Raises:
          RuntimeError: ``state_dict`` is empty (saved from a disabled scaler; torch's message).
          TypeError / ValueError: an entry is missing or has a bad type or value.
        """
        if not self._enabled:
            return
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if len(state_dict) == 0:
            raise RuntimeError(
                "The source state dict is empty, possibly because it was saved "
                "from a disabled instance of GradScaler."
            )
        needed = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
        missing = [k for k in needed if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict lacks {missing}")
        scale = _checked_scale("state_dict['scale']", state_dict["scale"])
        growth = _checked_growth_factor(state_dict["growth_factor"], "state_dict['growth_factor']")
        backoff = _checked_backoff_factor(state_dict["backoff_factor"], "state_dict['backoff_factor']")
        interval = _checked_interval(state_dict["growth_interval"], "state_dict['growth_interval']")
        tracker = _checked_int("state_dict['_growth_tracker']", state_dict["_growth_tracker"])
        if not 0 <= tracker <= _INT32_MAX:
            raise ValueError(f"state_dict['_growth_tracker'] must be in [0, 2**31 - 1], got {tracker}")
        self._init_scale = scale
        if self._scale is not None:
            self._scale[...] = scale
        self._growth_factor = growth
        self._backoff_factor = backoff
        self._growth_interval = interval
        self._init_growth_tracker = tracker
        if self._growth_tracker is not None:
            self._growth_tracker[...] = tracker

    def __repr__(self):
        if not self._enabled:
            return "GradScaler(enabled=False)"
        return (f"GradScaler(scale={self.get_scale()}, growth_factor={self._growth_factor}, "
                f"backoff_factor={self._backoff_factor}, growth_interval={self._growth_interval})")


# ---------------------------------------------------------------------- helpers


def _refuse_fp16(grads: list) -> None:
    ndarray = np.ndarray
    for i, g in enumerate(grads):
        if g is None:
            continue
        if type(g) is ndarray:
            d = g.dtype
            half = d.kind == "f" and d.itemsize == 2  # attribute reads: a dtype comparison costs more
        else:
            half = str(g.dtype) == "float16"
        if half:
            raise ValueError(f"Attempting to unscale FP16 gradients. (grads[{i}] is float16)")


def _first_array(value):
    if is_array(value):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            found = _first_array(v)
            if found is not None:
                return found
    return None


def _any_found(flags, like) -> bool:
    """Whether any found-inf flag is set: one host read (per device when they are on several)."""
    flags = list(flags)
    if len(flags) == 1:
        return bool(float(flags[0]))
    xp = array_namespace(like)
    dev = device(like)
    return bool(float(sum(_move(f, xp, dev) for f in flags)))


def _checked_scale(name: str, value) -> float:
    v = check_real(name, value)
    if not (0.0 < v < math.inf):
        raise ValueError(f"{name} must be a positive finite number, got {v}")
    return v


def _checked_growth_factor(value, name: str = "growth_factor") -> float:
    v = check_real(name, value)
    if not (1.0 < v < math.inf):
        raise _InvalidFactor(f"The growth factor must be > 1.0. ({name}={v})")
    return v


def _checked_backoff_factor(value, name: str = "backoff_factor") -> float:
    v = check_real(name, value)
    if not (0.0 < v < 1.0):
        raise _InvalidFactor(f"The backoff factor must be < 1.0 (and > 0). ({name}={v})")
    return v


def _checked_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if is_array(value) and getattr(value, "ndim", None) == 0 and "int" in str(value.dtype):
            return int(value)
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    return int(value)


def _checked_interval(value, name: str = "growth_interval") -> int:
    v = _checked_int(name, value)
    if v < 1:
        raise ValueError(f"{name} must be a positive int, got {v}")
    return v
