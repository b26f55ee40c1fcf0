"""Weight averaging of parameter arrays: torch.optim.swa_utils's AveragedModel, for arrays.

:class:`AveragedParams` keeps a running average of a list of parameter
arrays: an equal-weight average of every ``update_parameters`` call (SWA,
Izmailov et al. 2018) by default, or an exponential moving average (EMA) with
``multi_avg_fn=get_ema_multi_avg_fn(decay)``. Each update is one fused
element-wise pass per (namespace, dtype) bucket through the engine's
backends (one numba loop on NumPy, one CUDA launch on CuPy), like an
optimizer's step. The learning-rate side of SWA, :class:`schedulers.SWALR`,
lives with the other schedulers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Callable, Sequence

from .engine import BACKENDS, backend_for
from .engine.layout import Layout
from .engine.namespace import array_namespace, device, is_array, is_real_floating, is_writeable, to_namespace

__all__ = [
    "AveragedParams",
    "get_ema_avg_fn",
    "get_ema_multi_avg_fn",
    "get_swa_avg_fn",
    "get_swa_multi_avg_fn",
    "lerp_rule",
    "swa_rule",
]

# one rule per averaging kind; both write the average (array 0) and read the current value (array 1)
_LAYOUT = Layout(2, (0,))


def lerp_rule(start, end, *, weight, lerp_from_end, xp):
    """``start + weight * (end - start)``, rounded as torch's ``lerp_`` rounds it.

    torch switches formula at ``weight >= 0.5`` (starting from ``end``), so
    the branch is static configuration chosen on the host.
    """
    if lerp_from_end:
        return end - (end - start) * (1 - weight)
    return start + weight * (end - start)


def swa_rule(averaged, current, *, count, xp):
    """The running mean after ``count`` values: torch's ``avg + (cur - avg) / (n + 1)``."""
    return averaged + (current - averaged) / count


def _check_decay(decay) -> float:
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
        raise TypeError(f"decay must be a real number, got {type(decay).__name__}: {decay!r}")
    d = float(decay)
    if not 0.0 <= d <= 1.0:  # NaN fails this too
        raise ValueError(f"Invalid decay value {decay} provided. Please provide a value in [0,1] range.")
    return d


def _check_count(name: str, value) -> int:
    """A non-negative whole number: an int, a NumPy integer or a 0-d integer array (torch's long tensor)."""
    if is_array(value) and getattr(value, "ndim", None) == 0 and "int" in str(value.dtype):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _check_backend(backend) -> None:
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a string or None, got {type(backend).__name__}: {backend!r}")
    if backend not in (None, "auto") and backend not in BACKENDS:
        raise ValueError(f"Invalid backend: {backend!r} (known: {', '.join(sorted(BACKENDS))})")


def _checked_pairs(averaged: Sequence, current, what: str) -> list:
    """``current`` aligned with ``averaged``: same length, namespace, shape, device; cast to its dtype."""
    if is_array(current) or isinstance(current, (str, bytes, Mapping)):
        raise TypeError(f"{what} must be a list of arrays, got {type(current).__name__}")
    try:
        current = list(current)
    except TypeError:
        raise TypeError(f"{what} must be a list of arrays, got {type(current).__name__}") from None
    if len(current) != len(averaged):
        raise ValueError(f"{what} has {len(current)} arrays, the average holds {len(averaged)}")
    out = []
    for i, (a, c) in enumerate(zip(averaged, current)):
        if not is_array(c) or not hasattr(c, "shape"):
            raise TypeError(f"{what}[{i}] must be an array, got {type(c).__name__}")
        xp = array_namespace(a)
        try:
            cxp = array_namespace(c)
        except TypeError:
            cxp = None
        if cxp is not xp:
            raise TypeError(f"{what}[{i}] is a {getattr(cxp, '__name__', type(c).__name__)} array "
                            f"but its average is a {xp.__name__} array")
        if tuple(c.shape) != tuple(a.shape):
            raise ValueError(f"{what}[{i}] has shape {tuple(c.shape)}, its average {tuple(a.shape)}")
        if device(c) != device(a):
            raise ValueError(f"{what}[{i}] is on device {device(c)}, its average on {device(a)}")
        if c.dtype != a.dtype:
            if not is_real_floating(xp, c.dtype):
                raise TypeError(f"{what}[{i}] has dtype {c.dtype}; a real floating-point array is needed")
            c = xp.astype(c, a.dtype)
        out.append(c)
    return out


def _buckets(averaged: Sequence, current: Sequence) -> list:
    """``(xp, [averaged...], [current...])`` per namespace and dtype, empty arrays left out."""
    buckets: dict[tuple, tuple] = {}
    for a, c in zip(averaged, current):
        if math.prod(a.shape):
            xp = array_namespace(a)
            entry = buckets.setdefault((id(xp), str(a.dtype)), (xp, [], []))
            entry[1].append(a)
            entry[2].append(c)
    return list(buckets.values())


class FusedAverage:
    """An in-place multi-array averaging function run as one fused pass per bucket.

    What :func:`get_ema_multi_avg_fn` and :func:`get_swa_multi_avg_fn`
    return: called as torch's ``multi_avg_fn(averaged, current,
    num_averaged)``, it updates every array of ``averaged`` in place.
    """

    def __init__(self, kind: str, decay: float | None = None):
        self.kind = kind
        self.decay = decay

    def __call__(self, averaged, current, num_averaged, *, backend: str | None = None) -> None:
        _check_backend(backend)
        averaged = list(averaged)
        current = _checked_pairs(averaged, current, "current")
        n = _check_count("num_averaged", num_averaged)
        for a in averaged:
            if not is_writeable(a):
                raise ValueError("an averaged array is read-only; the average is updated in place")
        if self.kind == "ema":
            weight = 1.0 - self.decay
            rule, static, scalars = lerp_rule, {"lerp_from_end": weight >= 0.5}, {"weight": weight}
        else:
            rule, static, scalars = swa_rule, {}, {"count": float(n + 1)}
        for xp, avgs, curs in _buckets(averaged, current):
            backend_for(xp, backend).run_stage(rule, static, scalars, _LAYOUT, list(zip(avgs, curs)), xp)

    def __repr__(self) -> str:
        return f"get_ema_multi_avg_fn(decay={self.decay})" if self.kind == "ema" else "get_swa_multi_avg_fn()"


def get_ema_multi_avg_fn(decay: float = 0.999) -> FusedAverage:
    r"""The exponential moving average, for :class:`AveragedParams`'s ``multi_avg_fn`` (torch's helper).

    .. math::
       W^{EMA}_0 = W_0, \qquad W^{EMA}_{t+1} = \text{decay}\, W^{EMA}_t + (1 - \text{decay})\, W_{t+1}

    computed as torch does, ``lerp(W^EMA, W, 1 - decay)``, one fused pass per bucket.

    Args:
      decay: in [0, 1] (default: 0.999).

    Raises:
      ValueError: decay outside [0, 1] (torch's message). TypeError: not a real number.
    """
    return FusedAverage("ema", _check_decay(decay))


def get_swa_multi_avg_fn() -> FusedAverage:
    r"""The equal-weight running mean (SWA), for :class:`AveragedParams`'s ``multi_avg_fn``.

    .. math:: W^{SWA}_{n+1} = W^{SWA}_n + \frac{W - W^{SWA}_n}{n + 1}

    .. warning::
       torch's ``get_swa_multi_avg_fn`` takes ``1 / (n + 1)`` of the long
       tensor ``n_averaged``, a float32 number, and lerps with it: its average
       is off by about 1e-8 relative even in float64. This one divides by
       ``n + 1`` exactly, as torch's per-tensor path (``get_swa_avg_fn``, and
       ``AveragedModel``'s default on the CPU) does.
    """
    return FusedAverage("swa")


def get_ema_avg_fn(decay: float = 0.999) -> Callable:
    """torch's per-array EMA: ``avg_fn(averaged, current, num_averaged) -> decay * averaged + (1 - decay) * current``."""
    d = _check_decay(decay)

    def ema_update(averaged, current, num_averaged):
        return d * averaged + (1 - d) * current

    return ema_update


def get_swa_avg_fn() -> Callable:
    """torch's per-array SWA: ``avg_fn(averaged, current, n) -> averaged + (current - averaged) / (n + 1)``."""

    def swa_update(averaged, current, num_averaged):
        return averaged + (current - averaged) / (num_averaged + 1)

    return swa_update


class AveragedParams:
    r"""A running average (SWA or EMA) of a list of parameter arrays: torch's ``AveragedModel`` for arrays.

    ``averaged`` holds one array per parameter, of its namespace, shape,
    device and dtype. The first :meth:`update_parameters` copies the
    parameters in; each later one folds them into the average:

    .. math::
       \text{SWA (default):}\quad \bar W_{n+1} = \bar W_n + \frac{W - \bar W_n}{n + 1}, \qquad
       \text{EMA:}\quad \bar W_{n+1} = \text{decay}\,\bar W_n + (1 - \text{decay})\, W

    with :math:`n` = :attr:`n_averaged`, the number of updates so far.

    Args:
      params: a list of real floating-point arrays (any mix of namespaces and dtypes).
      avg_fn: ``avg_fn(averaged, current, n_averaged) -> array``, applied per
        array and written back in place (:func:`get_ema_avg_fn`,
        :func:`get_swa_avg_fn`, or your own); default None.
      multi_avg_fn: ``multi_avg_fn(averaged_list, current_list, n_averaged)``,
        updating a bucket of arrays (one namespace and dtype) in place;
        :func:`get_ema_multi_avg_fn` and :func:`get_swa_multi_avg_fn` run one
        fused pass per bucket. Default None: the fused SWA mean. Give at most
        one of the two.
      backend: keyword-only; the backend of the fused passes (``None`` picks
        the fastest for the arrays, ``'eager'`` the reference).

    There are no buffers to choose (torch's ``use_buffers``): every array
    given is averaged. Each update costs one pass over the averages and the
    parameters (reads both, writes the average).

    Example:
      >>> import numpy as np
      >>> from ms_optim.averaging import AveragedParams, get_ema_multi_avg_fn
      >>> w = np.array([0.0, 2.0])
      >>> swa = AveragedParams([w])
      >>> ema = AveragedParams([w], multi_avg_fn=get_ema_multi_avg_fn(0.5))
      >>> for value in (1.0, 2.0, 6.0):
      ...     w[...] = value                 # an optimizer step, in place
      ...     swa.update_parameters([w])
      ...     ema.update_parameters([w])
      >>> swa.averaged[0], ema.averaged[0], swa.n_averaged
      (array([3., 3.]), array([3.75, 3.75]), 3)

    .. warning::
       Departures from torch: both ``avg_fn`` and ``multi_avg_fn`` given
       raises ValueError (torch: AssertionError); :attr:`n_averaged` is a
       Python int (torch: a long tensor buffer); the default SWA mean divides
       by ``n + 1`` exactly on every backend (torch on a GPU lerps with a
       float32 ``1 / (n + 1)``, see :func:`get_swa_multi_avg_fn`).

    References:
      Izmailov et al., 2018. Averaging Weights Leads to Wider Optima and Better Generalization.
      https://arxiv.org/abs/1803.05407
    """

    def __init__(self, params, avg_fn: Callable | None = None, multi_avg_fn: Callable | None = None, *,
                 backend: str | None = None):
        if avg_fn is not None and multi_avg_fn is not None:
            raise ValueError("Only one of avg_fn and multi_avg_fn should be provided")
        for name, fn in (("avg_fn", avg_fn), ("multi_avg_fn", multi_avg_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a function or None, got {type(fn).__name__}: {fn!r}")
        _check_backend(backend)
        if is_array(params) or isinstance(params, (str, bytes, Mapping)):
            raise TypeError(f"params must be a list of arrays, got {type(params).__name__}")
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"params must be a list of arrays, got {type(params).__name__}") from None
        if not params:
            raise ValueError("AveragedParams got an empty parameter list")
        for i, p in enumerate(params):
            if not is_array(p) or not hasattr(p, "shape"):
                raise TypeError(f"params[{i}] must be an array, got {type(p).__name__}")
            if not is_real_floating(array_namespace(p), p.dtype):
                raise TypeError(f"params[{i}] has dtype {p.dtype}; only real floating-point arrays are averaged")
        if backend not in (None, "auto"):
            for xp in {id(ns): ns for ns in map(array_namespace, params)}.values():
                backend_for(xp, backend)  # a named backend must serve these arrays: say so now
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.backend = backend
        #: the averages, one fresh array per parameter
        self.averaged: list = [array_namespace(p).asarray(p, copy=True) for p in params]
        #: how many times :meth:`update_parameters` has run
        self.n_averaged: int = 0

    def update_parameters(self, params) -> None:
        """Fold the current parameter values into the average (the first call copies them).

        Args:
          params: one array per entry of :attr:`averaged`, in order, of its
            namespace, shape and device (another floating dtype is cast).

        Raises:
          TypeError / ValueError: a malformed list; nothing is changed.
        """
        current = _checked_pairs(self.averaged, params, "params")
        n = self.n_averaged
        if n == 0:
            for a, c in zip(self.averaged, current):
                a[...] = c
        elif self.avg_fn is not None:
            for a, c in zip(self.averaged, current):
                a[...] = self.avg_fn(a, c, n)
        else:
            fn = self.multi_avg_fn if self.multi_avg_fn is not None else _SWA
            for _, avgs, curs in _buckets(self.averaged, current):
                if isinstance(fn, FusedAverage):
                    fn(avgs, curs, n, backend=self.backend)
                else:
                    fn(avgs, curs, n)
        self.n_averaged = n + 1

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """``{'n_averaged': int, 'averaged': [arrays]}``: the live arrays, as torch's state_dict gives them."""
        return {"n_averaged": self.n_averaged, "averaged": list(self.averaged)}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore a :meth:`state_dict`, or a torch ``AveragedModel.state_dict()``.

        The arrays are copied into :attr:`averaged` in place, in each one's
        namespace, device and dtype. A torch state loads when its module's
        entries (``'module.*'``: parameters, then buffers, in order) are
        exactly the arrays averaged here. Everything is checked first.

        Raises:
          TypeError / ValueError: a malformed state, naming the entry; nothing changes.
        """
        if not isinstance(state_dict, Mapping) or "n_averaged" not in state_dict:
            raise TypeError("state_dict must be a dict with 'n_averaged' and 'averaged' entries")
        n = _check_count("state_dict['n_averaged']", state_dict["n_averaged"])
        if "averaged" in state_dict:
            unknown = set(state_dict) - {"n_averaged", "averaged"}
            if unknown:
                raise ValueError(f"state_dict has unexpected entries {sorted(unknown)}")
            arrays, where = state_dict["averaged"], "state_dict['averaged']"
            if is_array(arrays) or not isinstance(arrays, (list, tuple)):
                raise TypeError(f"{where} must be a list of arrays, got {type(arrays).__name__}")
            names = [f"{where}[{i}]" for i in range(len(arrays))]
        else:  # torch's AveragedModel: 'n_averaged' and 'module.<name>' entries
            keys = [k for k in state_dict if k != "n_averaged"]
            bad = [k for k in keys if not str(k).startswith("module.")]
            if bad:
                raise ValueError(f"state_dict has entries {bad} that are neither 'averaged' nor torch's 'module.*'")
            arrays, names = [state_dict[k] for k in keys], [f"state_dict[{k!r}]" for k in keys]
        if len(arrays) != len(self.averaged):
            raise ValueError(f"state_dict holds {len(arrays)} arrays, the average {len(self.averaged)}")
        loaded = []
        for name, value, a in zip(names, arrays, self.averaged):
            if not is_array(value) or not hasattr(value, "shape"):
                raise TypeError(f"{name} must be an array, got {type(value).__name__}")
            if tuple(value.shape) != tuple(a.shape):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, its average {tuple(a.shape)}")
            loaded.append(to_namespace(value, like=a))
        for a, value in zip(self.averaged, loaded):
            a[...] = value
        self.n_averaged = n

    def __repr__(self) -> str:
        fn = self.multi_avg_fn or self.avg_fn or "swa"
        return f"AveragedParams({len(self.averaged)} arrays, {fn}, n_averaged={self.n_averaged})"


_SWA = FusedAverage("swa")
