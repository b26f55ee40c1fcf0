r"""Gradient clipping: ``torch.nn.utils.clip_grad_norm_`` and ``clip_grad_value_`` for plain arrays.

Gradients are a list of arrays (None entries skipped, as a missing ``.grad``
is in torch), of any Array API namespace, changed in place. The total norm
and the clip coefficient stay arrays of the gradients' namespace and device:
on a GPU nothing here waits for the device unless the caller reads the
returned norm (or asks for ``error_if_nonfinite``, which must read it).

The numerics are torch's (2.13), step for step:

* each gradient's norm in its own dtype (float16 accumulated in float32 and
  rounded back, as torch's CPU and CUDA reductions do);
* the total is the same norm of those norms stacked into one vector, in the
  dtype their stack promotes to, in the namespace and device of the first
  gradient;
* the coefficient is ``max_norm / (total_norm + 1e-6)`` clamped to at most
  1.0, in the total's dtype, evaluated as torch does (a reciprocal, then a
  product), and every gradient is multiplied by it, even
  when it is 1.0 (a branch on it would be a device sync);
* the multiplication reads the coefficient as the gradient's compute dtype
  (float32 for float16, the gradient's own dtype otherwise), as torch's
  ``mul_`` by a 0-d tensor does.

This module is plain Array API code with a NumPy fast path (BLAS dot products,
no temporaries for the 2-norm and the finite checks); it is the reference a
compiled multi-tensor pass can be checked against.
"""

from __future__ import annotations

import math
import types
import warnings
from collections.abc import Iterable, Mapping

import numpy as np

from .checks import check_bool, check_real
from .engine import reductions
from .engine.namespace import _to_host, array_namespace, device, is_array, is_numpy, is_writeable

__all__ = ["clip_coefficient", "clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "get_total_norm"]


# ------------------------------------------------------------------ arguments


def _grad_list(grads, name: str = "grads") -> list:
    """The non-None gradients of ``grads`` (one array or an iterable of arrays/None), checked."""
    if is_array(grads):
        grads = [grads]
    elif isinstance(grads, (str, bytes, Mapping)) or not isinstance(grads, Iterable):
        raise TypeError(f"{name} must be an array or an iterable of arrays (or None), got {type(grads).__name__}")
    else:
        is_generator = isinstance(grads, types.GeneratorType)
        grads = list(grads)
        if is_generator and not grads:
            warnings.warn(f"`{name}` is an empty generator, no gradient clipping will occur.", stacklevel=3)
    out = []
    for i, g in enumerate(grads):
        if g is None:
            continue
        _check_grad(name, i, g)
        out.append(g)
    return out


def _check_grad(name: str, i: int, g) -> None:
    """``g``, entry ``i`` of the list ``name``, is a writeable real floating array (named in the error)."""
    if type(g) is np.ndarray and g.dtype.kind == "f" and g.flags.writeable:
        return  # the common case, without the generic checks' per-array cost (nor the name's)
    where = f"{name}[{i}]"
    if not is_array(g) or not hasattr(g, "shape"):
        raise TypeError(f"{where} must be an array or None, got {type(g).__name__}")
    xp = array_namespace(g)
    if not xp.isdtype(g.dtype, "real floating"):
        raise TypeError(f"{where} has dtype {g.dtype}; a real floating-point gradient is needed")
    if not is_writeable(g):
        raise ValueError(f"{where} is read-only; clipping changes gradients in place")


def _checked_norm_type(norm_type) -> float:
    # torch takes float(norm_type), so the strings 'inf' and '-inf' work too.
    if isinstance(norm_type, str):
        try:
            value = float(norm_type)
        except ValueError:
            raise ValueError(f"norm_type must be a number or 'inf', got {norm_type!r}") from None
    else:
        value = check_real("norm_type", norm_type)
    if math.isnan(value):
        raise ValueError(f"norm_type must not be NaN, got {norm_type!r}")
    return value


def _checked_foreach(foreach) -> None:
    if foreach is not None and not isinstance(foreach, bool):
        raise TypeError(f"foreach must be None or a bool, got {type(foreach).__name__}: {foreach!r}")


def _checked_bound(name: str, value) -> float:
    v = check_real(name, value)
    if not v >= 0.0:  # NaN included
        raise ValueError(f"{name} must be non-negative, got {v}")
    return v


def _check_empty_norm(grads: list, p: float) -> None:
    # Norms without an identity (max, min, negative powers) are undefined on an
    # empty array; torch raises a RuntimeError there, after nothing has changed.
    if p == math.inf or p < 0:
        for i, g in enumerate(grads):
            if math.prod(g.shape) == 0:
                raise ValueError(
                    f"grads[{i}] is empty: the {_order(p)} norm of an empty array is undefined "
                    f"(the operation has no identity)"
                )


def _order(p: float) -> str:
    return {math.inf: "inf", -math.inf: "-inf"}.get(p, repr(p))


# ------------------------------------------------------------------ helpers


def _compute_dtype(xp, dtype):
    """float32 for the 16-bit floats (torch's opmath type), the dtype itself otherwise."""
    return xp.float32 if str(dtype) in ("float16", "bfloat16") else dtype


def _move(x, xp, dev, dtype=None):
    """``x`` as an array of namespace ``xp`` on ``dev`` (a host copy when it lives elsewhere)."""
    src = array_namespace(x)
    if src is not xp or device(x) != dev:
        x = xp.asarray(_to_host(x, src), device=dev)
    if dtype is not None and x.dtype != dtype:
        x = xp.astype(x, dtype)
    return x


def _groups(grads: list) -> dict:
    """Gradients by (namespace, device, dtype), in first-seen order (torch's grouping)."""
    out: dict = {}
    for g in grads:
        # an array's type fixes its namespace; NumPy has one device
        key = (np.ndarray, None, g.dtype) if type(g) is np.ndarray else (type(g), str(device(g)), g.dtype)
        entry = out.get(key)
        if entry is None:
            entry = out[key] = (array_namespace(g), device(g), [])
        entry[2].append(g)
    return out


def _vector_norm(x, p: float, xp):
    """``torch.linalg.vector_norm(x, p)`` over all elements, as a 0-d array of ``x``'s dtype."""
    dtype = x.dtype
    if is_numpy(xp):
        return np.asarray(_numpy_norm(np.asarray(x), p), dtype=dtype)
    a = x if _compute_dtype(xp, dtype) == dtype else xp.astype(x, xp.float32)
    a = xp.reshape(a, (-1,))
    if p == 2:
        r = xp.sqrt(xp.sum(a * a))
    elif p == 1:
        r = xp.sum(xp.abs(a))
    elif p == math.inf:
        r = xp.max(xp.abs(a))
    elif p == -math.inf:
        r = xp.min(xp.abs(a))
    elif p == 0:
        r = xp.sum(xp.astype(a != 0, a.dtype))
    else:
        r = xp.sum(xp.abs(a) ** p) ** (1.0 / p)
    return xp.astype(r, dtype)


def _numpy_norm(x: np.ndarray, p: float):
    a = x.astype(np.float32) if x.dtype == np.float16 else x
    a = a.reshape(-1)
    if p == 2:
        return np.sqrt(np.dot(a, a))  # BLAS, one read pass, no temporary
    if p == 1:
        return np.add.reduce(np.abs(a))
    if p == math.inf:
        # max |x| without an |x| temporary; both reductions propagate NaN, and
        # adding 0.0 turns the -0.0 of an all-zero array into 0.0
        return np.maximum(a.max(), -a.min()) + a.dtype.type(0)
    if p == -math.inf:
        return np.abs(a).min()
    if p == 0:
        return a.dtype.type(np.count_nonzero(a))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return np.add.reduce(np.abs(a) ** a.dtype.type(p)) ** a.dtype.type(1.0 / p)


def _multiply_(g, c, xp) -> None:
    """``g *= c`` in place, ``c`` a 0-d array already in ``g``'s compute dtype and device."""
    if is_numpy(xp):
        np.multiply(g, c, out=g, casting="unsafe")
    elif g.dtype == c.dtype:
        g *= c
    else:
        g[...] = xp.astype(xp.astype(g, c.dtype) * c, g.dtype)


# ------------------------------------------------------------------ public


def get_total_norm(grads, norm_type: float = 2.0, error_if_nonfinite: bool = False, foreach=None):
    r"""The norm of all ``grads`` viewed as one vector (``torch.nn.utils.get_total_norm``).

    .. math::
       \|g\|_p = \Bigl\| \bigl(\|g_1\|_p, \dots, \|g_n\|_p\bigr) \Bigr\|_p

    Each gradient's norm is taken in its own dtype; the total in the dtype
    their stack promotes to, in the namespace and device of the first
    gradient. ``p = inf`` is the largest absolute entry, ``-inf`` the smallest,
    ``0`` counts the non-zero entries (and then the non-zero norms), as torch's
    ``vector_norm`` does.

    Args:
      grads: an array or an iterable of arrays (None entries are skipped).
      norm_type: the order p: any real number, ``inf``/``-inf`` or the strings
        ``'inf'``/``'-inf'`` (default: 2.0).
      error_if_nonfinite: raise RuntimeError when the total is NaN or
        infinite (default: False). This reads the norm: one device sync.
      foreach: accepted for torch compatibility and ignored: the
        implementation is chosen by the arrays' namespace.

    Returns:
      The total norm, a 0-d array (float32 NumPy 0.0 when there is no gradient,
      as torch's ``tensor(0.)``).

    Example:
      >>> import numpy as np
      >>> from ms_optim.clipping import get_total_norm
      >>> float(get_total_norm([np.array([3.0]), np.array([4.0])]))
      5.0
    """
    grads = _grad_list(grads)
    p = _checked_norm_type(norm_type)
    error_if_nonfinite = check_bool("error_if_nonfinite", error_if_nonfinite)
    _checked_foreach(foreach)
    _check_empty_norm(grads, p)
    return _total_norm(grads, p, error_if_nonfinite)


def _total_norm(grads: list, p: float, error_if_nonfinite: bool, multiplier=None, found: dict | None = None):
    """The total norm of ``grads``; with ``multiplier``, of ``g * multiplier``, nothing written.

    ``multiplier`` (a 0-d float32 array: GradScaler's inverse scale; float32
    and float64 gradients only) makes every value the product an unscale
    would write, one multiply in the gradient's dtype. ``found`` (a dict)
    then also receives, per (namespace, device), a float32 0-d flag that is
    1.0 exactly when some gradient there holds a NaN or inf: the finite check
    of ``unscale_``, read from the same pass where it can be (a finite norm
    of positive order proves every entry finite; only a non-finite one, or an
    order <= 0, costs a second, checking pass).
    """
    if not grads:
        return np.asarray(0.0, dtype=np.float32)
    xp0 = array_namespace(grads[0])
    dev0 = device(grads[0])
    norms = []
    compiled = False
    with np.errstate(over="ignore", invalid="ignore"):  # g * c may overflow: its norm is inf then
        for xp, dev, members in _groups(grads).values():
            compiled |= _group_norms(norms, xp, dev, members, p, xp0, dev0, multiplier, found)
    if compiled:
        stacked = xp0.concat([xp0.reshape(n, (-1,)) for n in norms])
    else:
        stacked = xp0.stack(norms)
    total = _vector_norm(stacked, p, xp0)
    if error_if_nonfinite and not bool(xp0.all(xp0.isfinite(total))):
        raise RuntimeError(
            f"The total norm of order {p} for gradients from "
            "`parameters` is non-finite, so it cannot be clipped. To disable "
            "this error and scale the gradients by the non-finite norm anyway, "
            "set `error_if_nonfinite=False`"
        )
    return total


def _group_norms(norms: list, xp, dev, members: list, p: float, xp0, dev0, multiplier, found) -> bool:
    """Append the norms of one (namespace, device, dtype) group to ``norms``; True if one compiled pass made them.

    Scalars (0-d arrays) are appended per tensor, a 1-D array per compiled
    pass; each is moved to ``xp0``/``dev0``. See :func:`_total_norm`.
    """
    here = xp is xp0 and str(dev) == str(dev0)
    c = None if multiplier is None else _move(multiplier, xp, dev, _compute_dtype(xp, members[0].dtype))
    flag = None
    if found is not None:
        flag = found.setdefault((id(xp), str(dev)), xp.zeros((), dtype=xp.float32, device=dev))
    if reductions.supports(members):
        # one pass over the whole bucket: a 1-D array of its per-tensor norms
        partials = reductions.norm_partials(members, p, None if c is None else float(c))
        if flag is not None and not (p > 0 and bool(np.isfinite(partials).all())):
            reductions.non_finite_check_(members, flag)
        n = reductions.finish_norms(partials, p, members[0].dtype)
        norms.append(n if here else _move(n, xp0, dev0))
        return True
    for g in members:
        n = _vector_norm(g if c is None else g * c, p, xp)
        if flag is not None:
            if is_numpy(xp):  # host memory: reading the norm is free
                if not (p > 0 and math.isfinite(float(n))) and g.size and not _numpy_all_finite(g):
                    flag[...] = 1.0
            else:  # on the device, no sync
                bad = xp.any(xp.logical_not(xp.isfinite(g)))
                flag[...] = xp.where(bad, xp.ones_like(flag), flag)
        norms.append(n if here else _move(n, xp0, dev0))
    return False


def _numpy_all_finite(g: np.ndarray) -> bool:
    a = g.reshape(-1)
    if a.dtype != np.float16:
        # A finite sum of squares proves every entry finite (one BLAS pass, no
        # temporary); only an overflowing sum needs the exact check.
        s = np.dot(a, a)
        if math.isfinite(s):
            return True
    return bool(math.isfinite(a.max()) and math.isfinite(a.min()))


def _clip_coefficient(max_norm: float, total_norm):
    """``min(max_norm / (total_norm + 1e-6), 1.0)`` in the total's dtype, as torch computes it.

    torch evaluates ``number / tensor`` as ``tensor.reciprocal() * number``:
    two roundings, not one, so a plain division differs in the last bit.
    """
    xp = array_namespace(total_norm)
    dtype = total_norm.dtype
    compute = _compute_dtype(xp, dtype)
    if compute == dtype:
        coef = (1.0 / (total_norm + 1e-6)) * max_norm
    else:
        # torch's 16-bit arithmetic with a Python scalar: each op in float32, rounded back.
        def rounded(x):
            return xp.astype(xp.astype(x, dtype), compute)

        shifted = rounded(xp.astype(total_norm, compute) + 1e-6)
        coef = xp.astype(rounded(1.0 / shifted) * max_norm, dtype)
    one = xp.asarray(1.0, dtype=dtype, device=device(total_norm))
    return xp.minimum(coef, one)  # NaN stays NaN, as torch.clamp keeps it


def clip_coefficient(max_norm: float, total_norm):
    r"""The factor clipping multiplies every gradient by: :math:`\min(\text{max\_norm} / (\text{total\_norm} + 10^{-6}), 1)`.

    The same 0-d array :func:`clip_grads_with_norm_` multiplies by, in the
    total's dtype, namespace and device, computed as torch computes it (a
    reciprocal, then a product). Give it to an optimizer's step to fold the
    clip into the update instead of rewriting the gradients first::

        norm = ms_optim.clipping.get_total_norm(grads)
        opt.step(grads, clip_coef=ms_optim.clipping.clip_coefficient(1.0, norm))

    Args:
      max_norm: the largest norm to allow, a non-negative number or 0-d array.
      total_norm: a 0-d real floating array (e.g. from :func:`get_total_norm`)
        or a number (taken as float32).

    Example:
      >>> import numpy as np
      >>> from ms_optim.clipping import clip_coefficient
      >>> float(clip_coefficient(1.0, np.float32(4.0)))
      0.25
    """
    max_norm = _checked_bound("max_norm", max_norm)
    return _clip_coefficient(max_norm, _checked_total_norm(total_norm))


def _checked_total_norm(total_norm):
    if not is_array(total_norm):
        return np.asarray(check_real("total_norm", total_norm), dtype=np.float32)
    if getattr(total_norm, "ndim", None) != 0 or not array_namespace(total_norm).isdtype(
            total_norm.dtype, "real floating"):
        raise TypeError(f"total_norm must be a number or a 0-d real floating array, "
                        f"got an array of shape {tuple(total_norm.shape)} and dtype {total_norm.dtype}")
    return total_norm


def clip_grads_with_norm_(grads, max_norm: float, total_norm, foreach=None) -> None:
    r"""Scale ``grads`` in place for a total norm already computed (``torch.nn.utils.clip_grads_with_norm_``).

    .. math::
       g_i \leftarrow g_i \cdot \min\Bigl(\frac{\text{max\_norm}}{\text{total\_norm} + 10^{-6}},\, 1\Bigr)

    Args:
      grads: an array or an iterable of arrays (None entries are skipped).
      max_norm: the largest norm to allow, a non-negative number or 0-d array.
      total_norm: the norm to clip by: a 0-d array (e.g. from
        :func:`get_total_norm`) or a number.
      foreach: accepted for torch compatibility and ignored.

    .. warning::
       A negative or NaN ``max_norm`` raises ValueError; torch accepts it
       (a negative one flips the gradients' sign).
    """
    grads = _grad_list(grads)
    max_norm = _checked_bound("max_norm", max_norm)
    _checked_foreach(foreach)
    _clip_with_norm(grads, max_norm, _checked_total_norm(total_norm))


def _clip_with_norm(grads: list, max_norm: float, total_norm) -> None:
    if not grads:
        return
    coef = _clip_coefficient(max_norm, total_norm)
    # A non-finite norm gives inf * 0 = NaN entries, silently, as in torch
    # (array-api-strict computes with NumPy underneath, so this covers it too).
    with np.errstate(invalid="ignore", over="ignore"):
        for xp, dev, members in _groups(grads).values():
            c = _move(coef, xp, dev, _compute_dtype(xp, members[0].dtype))
            if reductions.supports(members):
                reductions.scale_(members, c)  # one multi-tensor pass, the same IEEE products
                continue
            for g in members:
                _multiply_(g, c, xp)


def clip_grad_norm_(grads, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach=None):
    r"""Clip gradients by their global norm, in place (``torch.nn.utils.clip_grad_norm_``).

    The norm is taken over all gradients as if they were one vector; when it
    exceeds ``max_norm`` every gradient is scaled down by the same factor:

    .. math::
       \|g\|_p = \Bigl\| \bigl(\|g_1\|_p, \dots, \|g_n\|_p\bigr) \Bigr\|_p, \qquad
       g_i \leftarrow g_i \cdot \min\Bigl(\frac{\text{max\_norm}}{\|g\|_p + 10^{-6}},\, 1\Bigr)

    Nothing waits for a GPU: the norm and the factor stay 0-d arrays on the
    gradients' device, and the scaling is one in-place multiply per gradient
    (also when the factor is 1). Reading the returned norm (``float(norm)``)
    is the sync, if the caller wants it.

    Args:
      grads: an array or an iterable of arrays (None entries skipped), of any
        namespaces, devices and real floating dtypes; they are changed in place.
      max_norm: the largest total norm to allow (a non-negative number or 0-d array).
      norm_type: the order p: any real number, ``inf``, ``-inf``, or the
        strings ``'inf'``/``'-inf'`` (default: 2.0).
      error_if_nonfinite: raise RuntimeError (torch's message), before any
        gradient changes, when the total norm is NaN or infinite (default:
        False: the gradients are then scaled by the non-finite factor, as in
        torch). It reads the norm: one device sync.
      foreach: accepted for torch compatibility and ignored: the
        implementation is chosen by the arrays' namespace.

    Returns:
      The total norm before clipping: a 0-d array in the namespace and device
      of the first gradient, in the dtype the per-gradient norms promote to
      (float32 NumPy 0.0 when every gradient is None, as torch's ``tensor(0.)``).

    Raises:
      TypeError: ``grads`` holds something other than real floating arrays
        or None, or an argument has the wrong type.
      ValueError: a negative or NaN ``max_norm``, a NaN ``norm_type``, a
        read-only gradient, or an empty gradient with an ``inf``, ``-inf`` or
        negative order (undefined). Nothing changes when it raises.

    Example:
      >>> import numpy as np
      >>> import ms_optim
      >>> grads = [np.array([3.0, 0.0]), np.array([4.0])]
      >>> norm = ms_optim.clip_grad_norm_(grads, max_norm=1.0)
      >>> float(norm), [g.round(4).tolist() for g in grads]
      (5.0, [[0.6, 0.0], [0.8]])

    References:
      Pascanu, Mikolov and Bengio, *On the difficulty of training recurrent
      neural networks*, ICML 2013, https://arxiv.org/abs/1211.5063

    .. warning::
       Departures from torch: a negative or NaN ``max_norm`` raises ValueError
       (torch flips or NaNs the gradients); complex gradients raise TypeError
       (ms_optim's optimizers take real parameters only); ``foreach=True``
       never raises (every namespace has the one implementation). In float32
       the per-gradient sums are accumulated in another order than torch's,
       so the norm agrees to rounding, not bit for bit.
    """
    grads = _grad_list(grads)
    max_norm = _checked_bound("max_norm", max_norm)
    p = _checked_norm_type(norm_type)
    error_if_nonfinite = check_bool("error_if_nonfinite", error_if_nonfinite)
    _checked_foreach(foreach)
    _check_empty_norm(grads, p)
    total = _total_norm(grads, p, error_if_nonfinite)
    _clip_with_norm(grads, max_norm, total)
    return total


def clip_grad_value_(grads, clip_value: float, foreach=None) -> None:
    r"""Clamp every gradient entry to ``[-clip_value, clip_value]``, in place (``torch.nn.utils.clip_grad_value_``).

    .. math::
       g_{ij} \leftarrow \min\bigl(\max(g_{ij}, -c), c\bigr), \qquad c = \text{clip\_value}

    NaN entries stay NaN, as in torch.

    Args:
      grads: an array or an iterable of arrays (None entries skipped).
      clip_value: the bound c, a non-negative number or 0-d array.
      foreach: accepted for torch compatibility and ignored.

    Example:
      >>> import numpy as np
      >>> import ms_optim
      >>> g = np.array([-3.0, 0.5, 2.0])
      >>> ms_optim.clip_grad_value_([g], 1.0)
      >>> g.tolist()
      [-1.0, 0.5, 1.0]

    .. warning::
       A negative or NaN ``clip_value`` raises ValueError; torch accepts it
       (and sets every entry to ``clip_value``).
    """
    grads = _grad_list(grads)
    c = _checked_bound("clip_value", clip_value)
    _checked_foreach(foreach)
    for xp, _, members in _groups(grads).values():
        for g in members:
            if is_numpy(xp):
                np.clip(g, -c, c, out=g)
            else:
                g[...] = xp.clip(g, min=-c, max=c)
