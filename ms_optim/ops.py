"""Functional primitives: one update of explicitly passed arrays, in place.

* :func:`apply_adam_with_amsgrad_v2`: MindSpore's ``ops.ApplyAdamWithAmsgradV2``.
* ``<algorithm>_update`` (:func:`adam_update`, :func:`nadam_update`, ...): each
  optimizer's rule with its host scalars filled in, for callers that keep
  their own state. They are made by :func:`functional` from the optimizer
  class itself, so they validate, compute and update exactly as the class does.

Every op here runs its rule through the engine (eager, or a compiled backend
where one serves the arrays), like the optimizers.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np

from .algorithms import (
    ASGD, LAMB, SGD, Adadelta, Adafactor, Adagrad, Adam, Adamax, AdamW, Lion, Muon, NAdam, RAdam, RMSprop, Rprop,
)
from .algorithms.schedule_free_adamw import schedule_free_adamw_update
from .algorithms.sparse_adam import sparse_adam_update
from .checks import check_real
from .engine import backend_for
from .engine.namespace import array_namespace, device, is_array, is_writeable, to_namespace
from .optimizer import Optimizer

__all__ = [
    "adadelta_update",
    "adafactor_update",
    "adagrad_update",
    "adam_update",
    "adamax_update",
    "adamw_update",
    "amsgrad_v2_rule",
    "apply_adam_with_amsgrad_v2",
    "asgd_update",
    "lamb_update",
    "lion_update",
    "functional",
    "nadam_update",
    "radam_update",
    "rmsprop_update",
    "rprop_update",
    "muon_update",
    "schedule_free_adamw_update",
    "sgd_update",
    "sparse_adam_update",
]


# --------------------------------------------------------------- MindSpore's op


def amsgrad_v2_rule(var, grad, m, v, vhat, *, lr_t, beta1, beta2, epsilon, xp):
    """One ApplyAdamWithAmsgradV2 update of one element, in MindSpore's CPU kernel's order."""
    m = m + (grad - m) * (1 - beta1)
    v = v + (grad * grad - v) * (1 - beta2)
    vhat = xp.maximum(vhat, v)
    return var - lr_t * m / (xp.sqrt(vhat) + epsilon), m, v, vhat


_OP_DTYPES = ("float16", "float32", "float64")
#: the hyper-parameters MindSpore lets carry a batch shape (one value per leading index)
_BATCHABLE = ("beta1_power", "beta2_power", "lr")


def apply_adam_with_amsgrad_v2(var, m, v, vhat, beta1_power, beta2_power, lr, beta1, beta2,
                               epsilon, grad, *, backend=None):
    r"""MindSpore's ``ApplyAdamWithAmsgradV2``: one AMSGrad step on explicit arrays, in place.

    .. math::
       \begin{aligned}
       lr_t &= lr \cdot \sqrt{1-\beta_2^t} \,/\, (1-\beta_1^t) \\
       m &\leftarrow \beta_1 m + (1-\beta_1)\, g \\
       v &\leftarrow \beta_2 v + (1-\beta_2)\, g^2 \\
       \hat v &\leftarrow \max(\hat v, v) \\
       var &\leftarrow var - lr_t \, m \,/\, (\sqrt{\hat v} + \epsilon)
       \end{aligned}

    with :math:`\beta_1^t, \beta_2^t` = ``beta1_power``, ``beta2_power``
    supplied by the caller, :math:`g` = ``grad`` and :math:`\epsilon` =
    ``epsilon``.

    Args:
      var: the parameter, an array of float16, float32 or float64 of any
        shape (a 0-d one too); updated in place.
      m, v, vhat: first moment, second moment and running maximum of the
        second moment: arrays of ``var``'s namespace, shape and dtype;
        updated in place.
      beta1_power, beta2_power: :math:`\beta_1^t` and :math:`\beta_2^t`.
      lr: learning rate.
      beta1, beta2, epsilon: the moment decay rates and the stability term.
      grad: the gradient, of ``var``'s namespace and shape and a float16,
        float32 or float64 dtype (cast to ``var``'s).
      backend: keyword-only; ``None`` picks the fastest for the arrays.

      The six hyper-parameters are real numbers or 0-d arrays, converted to
      ``var``'s dtype first (MindSpore's implicit type conversion); ``lr_t``
      is then computed once on the host. ``lr``, ``beta1_power`` and
      ``beta2_power`` may instead hold one value per leading index of ``var``
      (shape ``var.shape[:k]``, MindSpore's batched form).

    Returns:
      ``(var, m, v, vhat)``: the same arrays, updated.

    Raises:
      TypeError: an argument is not an array or number, or has a dtype other
        than float16/float32/float64, or ``m``/``v``/``vhat`` differ from
        ``var`` in namespace or dtype.
      ValueError: shapes differ, an array is read-only, ``beta1_power`` is 1
        or ``beta2_power`` exceeds 1. Nothing is changed when it raises.

    Example (MindSpore's documentation's, whose printed result it reproduces):
      >>> import numpy as np
      >>> from ms_optim.ops import apply_adam_with_amsgrad_v2
      >>> f32 = np.float32
      >>> var = np.full((2, 2), 0.2, dtype=f32)
      >>> m = np.array([[0.1, 0.2], [0.4, 0.3]], dtype=f32)
      >>> v = np.array([[0.2, 0.1], [0.3, 0.4]], dtype=f32)
      >>> vhat = np.array([[0.1, 0.2], [0.6, 0.2]], dtype=f32)
      >>> grad = np.array([[0.4, 0.2], [0.2, 0.3]], dtype=f32)
      >>> _ = apply_adam_with_amsgrad_v2(var, m, v, vhat, 0.9, 0.999, 0.01, 0.8, 0.999, 1e-8, grad)
      >>> print(var)
      [[0.19886853 0.1985858 ]
       [0.19853032 0.19849943]]

    By hand, for the first element: :math:`m = 0.8 \cdot 0.1 + 0.2 \cdot 0.4 =
    0.16`, :math:`\hat v = v = 0.999 \cdot 0.2 + 0.001 \cdot 0.16 = 0.19996`,
    :math:`lr_t = 0.01\sqrt{0.001}/0.1 = 0.0031623` and :math:`0.2 -
    0.0031623 \cdot 0.16/\sqrt{0.19996} = 0.1988685`.

    .. warning::
       This is not torch's ``Adam(amsgrad=True)``. Here epsilon is added to
       :math:`\sqrt{\hat v}` *before* the bias correction scales the step;
       torch adds it after, so this op equals torch's update with eps
       replaced by :math:`\epsilon/\sqrt{1-\beta_2^t}` (larger in early
       steps). And the caller supplies the bias corrections through the beta
       powers (the op counts no steps), where torch keeps a ``step``.
       float16 is computed in float32 and rounded once (MindSpore's kernel
       computes in float16). MindSpore's ``use_locking`` has no counterpart.
    """
    arrays = _checked_op_arrays(var, m, v, vhat, grad)
    var, m, v, vhat, grad = arrays
    xp = array_namespace(var)
    dtype_name = _dtype_name(xp, var.dtype)
    values = dict(beta1_power=beta1_power, beta2_power=beta2_power, lr=lr, beta1=beta1, beta2=beta2,
                  epsilon=epsilon)
    host = {name: _checked_op_scalar(name, value, var, dtype_name) for name, value in values.items()}
    batch_shape = _batch_shape(host, var)
    b1p = host["beta1_power"]
    b2p = host["beta2_power"]
    if np.any(b1p == 1):
        raise ValueError("beta1_power must not be 1: the bias correction 1 - beta1_power would be 0")
    if np.any(b2p > 1):
        raise ValueError(f"beta2_power must be at most 1, got {np.max(b2p)}")
    lr_t = host["lr"] * np.sqrt(1 - b2p) / (1 - b1p)  # float64 on the host, once
    scalars = dict(beta1=float(host["beta1"]), beta2=float(host["beta2"]), epsilon=float(host["epsilon"]))
    engine = backend_for(xp, backend)
    if not batch_shape:
        engine.run(amsgrad_v2_rule, {}, dict(scalars, lr_t=float(lr_t)), [var], [grad], [[m, v, vhat]], xp)
        return var, m, v, vhat
    lr_t = np.broadcast_to(lr_t, batch_shape)
    for index in np.ndindex(*batch_shape):
        at = (*index, ...)
        parts = [xp.asarray(a[at], copy=True) for a in (var, grad, m, v, vhat)]
        engine.run(amsgrad_v2_rule, {}, dict(scalars, lr_t=float(lr_t[index])), [parts[0]], [parts[1]],
                   [parts[2:]], xp)
        for target, part in zip((var, m, v, vhat), (parts[0], *parts[2:])):
            target[at] = part
    return var, m, v, vhat


def _dtype_name(xp, dtype) -> str | None:
    for name in _OP_DTYPES:
        if hasattr(xp, name) and dtype == getattr(xp, name):
            return name
    return None


def _checked_op_arrays(var, m, v, vhat, grad):
    for name, a in (("var", var), ("m", m), ("v", v), ("vhat", vhat), ("grad", grad)):
        if not is_array(a) or not hasattr(a, "shape"):
            raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    xp = array_namespace(var)
    if _dtype_name(xp, var.dtype) is None:
        raise TypeError(f"var has dtype {var.dtype}; ApplyAdamWithAmsgradV2 takes float16, float32 or float64")
    for name, a in (("m", m), ("v", v), ("vhat", vhat), ("grad", grad)):
        try:
            same = array_namespace(a) is xp
        except TypeError:
            same = False
        if not same:
            raise TypeError(f"{name} is not an array of var's namespace ({xp.__name__})")
        if tuple(a.shape) != tuple(var.shape):
            raise ValueError(f"{name} has shape {tuple(a.shape)}, var {tuple(var.shape)}")
        if device(a) != device(var):
            raise ValueError(f"{name} is on device {device(a)}, var on {device(var)}")
        if name != "grad" and a.dtype != var.dtype:
            raise TypeError(f"{name} has dtype {a.dtype}, var {var.dtype}: the state is updated in var's dtype")
    if _dtype_name(xp, grad.dtype) is None:
        raise TypeError(f"grad has dtype {grad.dtype}; ApplyAdamWithAmsgradV2 takes float16, float32 or float64")
    for name, a in (("var", var), ("m", m), ("v", v), ("vhat", vhat)):
        if not is_writeable(a):
            raise ValueError(f"{name} is read-only; ApplyAdamWithAmsgradV2 updates it in place")
    if grad.dtype != var.dtype:
        grad = xp.astype(grad, var.dtype)
    return var, m, v, vhat, grad


def _checked_op_scalar(name, value, var, dtype_name):
    """``value`` as float64 NumPy data rounded to var's dtype: a 0-d array, or a batch of values."""
    if is_array(value) and getattr(value, "ndim", 0) > 0:
        if name not in _BATCHABLE:
            raise ValueError(f"{name} must be a number or a 0-d array, got an array of shape {tuple(value.shape)}")
        if _dtype_name(array_namespace(value), value.dtype) is None:
            raise TypeError(f"{name} has dtype {value.dtype}; it must be float16, float32 or float64")
        host = np.asarray(to_namespace(value, like=np.empty(0)), dtype=np.float64)  # a copy on the host
    else:
        if is_array(value) and _dtype_name(array_namespace(value), value.dtype) is None:
            raise TypeError(f"{name} has dtype {value.dtype}; it must be float16, float32 or float64")
        host = np.asarray(check_real(name, value), dtype=np.float64)
    return host.astype(dtype_name).astype(np.float64)


def _batch_shape(host: dict, var) -> tuple:
    shapes = {name: host[name].shape for name in _BATCHABLE if host[name].ndim > 0}
    if not shapes:
        return ()
    shape = next(iter(shapes.values()))
    if any(s != shape for s in shapes.values()) or tuple(var.shape[: len(shape)]) != shape:
        raise ValueError(
            "batched lr, beta1_power and beta2_power must all have the shape of var's leading "
            f"dimensions; got {', '.join(f'{n} {s}' for n, s in shapes.items())} for var {tuple(var.shape)}"
        )
    return shape


# ------------------------------------------------------ the optimizers' updates


def functional(cls: type[Optimizer], *state_names: str) -> Callable:
    """Make ``cls``'s one-step functional form: ``update(p, g, *state, step=..., **hyper)``.

    The returned function builds a one-parameter ``cls`` (so every argument
    is checked exactly as the class checks it), seeds its state with the
    arrays given, runs one step through the engine and returns ``(p,
    *state_arrays, *host_numbers)``: ``p`` and the state arrays this
    configuration uses, in the rule's order, all updated in place, then the
    class's extra host-held numbers (NAdam's ``mu_product``) after the step.

    Args:
      cls: an optimizer class.
      state_names: every state array ``cls`` may keep, in the rule's order.
        They become positional arguments after ``p`` and ``g``, each
        defaulting to None: a state array left None is created as the
        optimizer creates it on a parameter's first step (and returned).

    The function's keyword-only arguments are ``step`` (the 1-based number of
    this update, for classes that count steps), the class's host-held numbers
    (each None on a first step) and the class's hyper-parameters with their
    defaults.

    Example:
      >>> import numpy as np
      >>> from ms_optim.ops import adam_update
      >>> w, m, v = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
      >>> _ = adam_update(w, 2 * w, m, v, step=1, lr=0.1)
      >>> np.round(w, 6)    # bias-corrected m = g and v = g**2: the first step is lr * sign(g)
      array([ 0.9, -1.9])
      >>> m                 # (1 - beta1) * g, updated in place
      array([ 0.2, -0.4])
    """
    ctor = inspect.signature(cls).parameters
    hyper = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for n, p in ctor.items() if n != "params"]
    P = inspect.Parameter
    params = [P("p", P.POSITIONAL_OR_KEYWORD), P("g", P.POSITIONAL_OR_KEYWORD)]
    params += [P(n, P.POSITIONAL_OR_KEYWORD, default=None) for n in state_names]
    if cls.tracks_step:
        params.append(P("step", P.KEYWORD_ONLY))
    params += [P(n, P.KEYWORD_ONLY, default=None) for n in cls.host_state_keys]
    signature = inspect.Signature(params + hyper)
    hyper_names = [p.name for p in hyper]
    name = f"{cls.__name__.lower()}_update"

    def update(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{name}(): {err}") from None
        bound.apply_defaults()
        a = bound.arguments
        p, g = a["p"], a["g"]
        opt = cls([p], **{k: a[k] for k in hyper_names})  # checks p and every hyper-parameter
        _checked_like_p(name, "g", g, p)
        group = opt.param_groups[0]
        keys = opt._param_state_keys(group, p)
        state: dict[str, Any] = {}
        for key in state_names:
            value = a[key]
            if value is None:
                continue
            if key not in keys:
                raise TypeError(f"{name}(): {key} is given but this configuration keeps no {key}")
            state[key] = _checked_state(name, key, value, p, opt._state_shape(key, p, group))
        if cls.tracks_step:
            state["step"] = _checked_step_number(name, a["step"]) - 1
        for key in cls.host_state_keys:
            if a[key] is not None:
                state[key] = check_real(key, a[key])
        opt.state[p] = state
        opt.step([g])
        final = opt.state[p]
        return (p, *(final[k] for k in keys), *(final[k] for k in cls.host_state_keys))

    update.__name__ = update.__qualname__ = name
    update.__module__ = __name__
    update.__signature__ = signature  # type: ignore[attr-defined]
    returned = ", ".join(["p", *state_names, *cls.host_state_keys])
    update.__doc__ = (
        f"One {cls.__name__} update of ``p`` in place, with explicit state: "
        f":class:`ms_optim.{cls.__name__}`'s rule with its host scalars filled in.\n\n"
        f"Returns ``({returned})``, leaving out the state this configuration does not keep; "
        f"arrays are updated in place. See :func:`ms_optim.ops.functional` for the arguments "
        f"and :class:`ms_optim.{cls.__name__}` for the math and the hyper-parameters."
    )
    return update


def _checked_like_p(name, key, value, p):
    if not is_array(value) or not hasattr(value, "shape"):
        raise TypeError(f"{name}(): {key} must be an array, got {type(value).__name__}")
    try:
        same = array_namespace(value) is array_namespace(p)
    except TypeError:
        same = False
    if not same:
        raise TypeError(f"{name}(): {key} is not an array of p's namespace")
    if tuple(value.shape) != tuple(p.shape):
        raise ValueError(f"{name}(): {key} has shape {tuple(value.shape)}, p {tuple(p.shape)}")


def _checked_state(name, key, value, p, shape=None):
    if shape is not None and shape != tuple(p.shape):  # a factor (Adafactor's row_var), not p's shape
        if not is_array(value) or tuple(value.shape) != shape:
            got = tuple(value.shape) if is_array(value) else type(value).__name__
            raise ValueError(f"{name}(): {key} must have shape {shape}, got {got}")
        _checked_like_p(name, key, value, value)
    else:
        _checked_like_p(name, key, value, p)
    if value.dtype != p.dtype:
        raise TypeError(f"{name}(): {key} has dtype {value.dtype}, p {p.dtype}")
    if not is_writeable(value):
        raise ValueError(f"{name}(): {key} is read-only; it is updated in place")
    return value


def _checked_step_number(name, step) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"{name}(): step must be an int, got {type(step).__name__}: {step!r}")
    if step < 1:
        raise ValueError(f"{name}(): step is the 1-based number of this update, got {step}")
    return int(step)


sgd_update = functional(SGD, "momentum_buffer")
adam_update = functional(Adam, "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
adamw_update = functional(AdamW, "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
adamax_update = functional(Adamax, "exp_avg", "exp_inf")
radam_update = functional(RAdam, "exp_avg", "exp_avg_sq")
nadam_update = functional(NAdam, "exp_avg", "exp_avg_sq")
adagrad_update = functional(Adagrad, "sum")
adadelta_update = functional(Adadelta, "square_avg", "acc_delta")
adafactor_update = functional(Adafactor, "row_var", "col_var", "variance")
muon_update = functional(Muon, "momentum_buffer")
lion_update = functional(Lion, "exp_avg")
lamb_update = functional(LAMB, "exp_avg", "exp_avg_sq")
rmsprop_update = functional(RMSprop, "square_avg", "momentum_buffer", "grad_avg")
rprop_update = functional(Rprop, "prev", "step_size")
asgd_update = functional(ASGD, "ax")
