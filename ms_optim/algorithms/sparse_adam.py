"""SparseAdam: Adam for dense parameters with sparse gradients; only the touched entries move."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ..checks import check_betas, check_bool, check_real
from ..engine import backend_for
from ..engine.namespace import array_namespace, device, is_array, is_cupy, is_numpy
from ..optimizer import Optimizer

__all__ = ["SparseAdam", "sparse_adam_rule", "sparse_adam_update"]

_DENSE_GRAD = "SparseAdam does not support dense gradients, please consider Adam instead"


def sparse_adam_rule(p, g, exp_avg, exp_avg_sq, *, beta1, beta2, eps, step_size, maximize, xp):
    """One SparseAdam update of one *touched* element, in torch's order of operations.

    It runs on the gathered values only (``p``, ``exp_avg``, ``exp_avg_sq``
    at the gradient's indices). ``step_size = lr * sqrt(1 - beta2**t) / (1 -
    beta1**t)`` comes from the host, and eps is added to ``sqrt(v)`` itself,
    not to ``sqrt(v) / sqrt(1 - beta2**t)`` as in Adam.
    """
    if maximize:
        g = -g  # exact, so negating before or after summing duplicates is the same
    # torch adds (g - old) * (1 - b) to the old values rather than lerping
    exp_avg = exp_avg + (g - exp_avg) * (1 - beta1)
    exp_avg_sq = exp_avg_sq + (g * g - exp_avg_sq) * (1 - beta2)
    return p - step_size * (exp_avg / (xp.sqrt(exp_avg_sq) + eps)), exp_avg, exp_avg_sq


class _SparseGrad(NamedTuple):
    """A checked, coalesced gradient: ``values[k]`` belongs at ``param[(*at_k, ...)]``."""

    at: tuple  # one index array per sparse axis (1 for the row form, ndim for COO), unique positions
    values: Any  # (nnz, *dense shape), in the parameter's namespace and dtype
    empty: bool  # nothing to update (nnz == 0): the step still counts, as in torch


class SparseAdam(Optimizer):
    r"""SparseAdam: Adam on the entries a sparse gradient touches, the rest left as they are.

    For the set :math:`S` of entries a gradient stores (duplicates summed first):

    .. math::
       \begin{aligned}
       g_S &\leftarrow \pm\nabla_\theta f_t(\theta_{t-1})_S \\
       m_S &\leftarrow m_S + (1-\beta_1)(g_S - m_S) \\
       v_S &\leftarrow v_S + (1-\beta_2)(g_S^2 - v_S) \\
       \theta_S &\leftarrow \theta_S - \gamma\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
            \frac{m_S}{\sqrt{v_S} + \epsilon}
       \end{aligned}

    with :math:`\gamma` = ``lr``, :math:`(\beta_1, \beta_2)` = ``betas``,
    :math:`\epsilon` = ``eps`` and :math:`t` the parameter's step count.
    Entries outside :math:`S` keep their values, moments included (no
    decay): this is torch's masked approximation of Adam. An entry a
    gradient stores counts as touched even when its value is 0.

    Gradients, one per parameter as for every ms_optim optimizer (``None``
    skips the parameter), in one of two sparse forms:

    * a **scipy.sparse** matrix or array of any format (COO, CSR, CSC, ...)
      with the parameter's shape, for a NumPy parameter; on CuPy a
      **cupyx.scipy.sparse** matrix likewise. It is converted to COO and its
      duplicates summed (on a copy; the caller's matrix is not changed).
      The stored entries are those ``tocoo()`` keeps (explicit zeros too).
    * a **row-sparse pair** ``(indices, values)`` for a parameter of any
      shape with at least one axis: ``indices`` a 1-D integer array of the
      parameter's namespace naming rows along axis 0, ``values`` of shape
      ``(len(indices), *param.shape[1:])``. Repeated rows are summed; an
      index outside ``[0, param.shape[0])`` (negative included) is refused.

    A dense array is refused with torch's ``RuntimeError`` ("SparseAdam does
    not support dense gradients, please consider Adam instead"). Every
    gradient of a call is checked before anything is written. A gradient
    with no entries counts a step (and creates the state) but moves nothing,
    as in torch.

    Args:
      params: a list of NumPy or CuPy arrays, or of dicts defining parameter groups.
      lr: learning rate (default: 1e-3), a positive float or 0-d array.
      betas: coefficients of the running averages of the gradient and its
        square (default: (0.9, 0.999)), each in [0, 1).
      eps: added to :math:`\sqrt{v}` for numerical stability (default: 1e-8), positive.
      maximize: ascend the objective instead of descending (default: False).
      backend: keyword-only; ``None`` picks the fastest for the arrays. It
        runs the arithmetic on the gathered entries; gathering and
        scattering them back are indexing in the array's own namespace.

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq`` (dense, the
    parameter's shape), as in torch, so torch's ``state_dict`` loads here.

    Cost per step: one pass over the touched entries (gather ``p``, ``m``,
    ``v``; one fused update; scatter the three back), none over the rest;
    summing repeated indices first sorts them (a gradient without repeats
    skips the sum). The index range check and the sort's output size are
    read on the host: on CuPy that is a synchronisation per parameter with
    a gradient.

    Example (an embedding table: only the rows a batch looked up move):
      >>> import numpy as np
      >>> from ms_optim.algorithms.sparse_adam import SparseAdam
      >>> table = np.ones((4, 2))
      >>> opt = SparseAdam([table], lr=0.1)
      >>> rows = np.array([0, 2, 2])                  # row 2 looked up twice: summed
      >>> opt([(rows, np.array([[1.0, -1.0], [0.5, 0.5], [0.5, 0.5]]))])
      >>> np.round(table, 6)                          # a first step moves lr * sign(g)
      array([[0.9, 1.1],
             [1. , 1. ],
             [0.9, 0.9],
             [1. , 1. ]])
      >>> opt.state[table]["exp_avg"][2]              # (1 - beta1) * (0.5 + 0.5)
      array([0.1, 0.1])

    The same gradient as a scipy.sparse matrix (any format):
      >>> import scipy.sparse as sp                   # doctest: +SKIP
      >>> opt([sp.csr_array(([1.0, -1.0, 1.0, 1.0], ([0, 0, 2, 2], [0, 1, 0, 1])), shape=(4, 2))])  # doctest: +SKIP

    .. warning::
       Departures from torch: every gradient of a call is checked before any
       parameter moves (torch raises on the first dense gradient after
       updating the groups before it); the checks are TypeError/ValueError
       naming ``grads[i]`` (torch's only check is the dense-gradient
       RuntimeError, kept as it is); ``lr=inf`` is refused. Only NumPy and
       CuPy arrays are accepted: the update writes at integer indices, which
       the Array API standard does not provide (array-api-strict refuses
       it), so other namespaces get a TypeError when the optimizer is built.

    References:
      Kingma & Ba, 2014. Adam: A Method for Stochastic Optimization. https://arxiv.org/abs/1412.6980
      torch.optim.SparseAdam. https://pytorch.org/docs/stable/generated/torch.optim.SparseAdam.html
    """

    rule = staticmethod(sparse_adam_rule)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False, *, backend=None):
        # torch wants a strictly positive lr when it is built (SparseAdam's own check,
        # unlike Adam's); a scheduler may still anneal it to 0 later, as with torch
        if not 0.0 < check_real("lr", lr):
            raise ValueError(f"Invalid learning rate: {check_real('lr', lr)}")
        defaults = dict(lr=lr, betas=betas, eps=eps, maximize=maximize)
        super().__init__(params, defaults, backend=backend)

    # -------------------------------------------------------------- the hooks

    #: second moments and step sizes: a loaded one with a negative entry is corrupt
    non_negative_state = frozenset(('exp_avg_sq',))

    def _validate(self, group):
        lr = check_real("lr", group["lr"])
        if not 0.0 <= lr < math.inf:
            raise ValueError(f"Invalid learning rate: {lr}")
        eps = check_real("eps", group["eps"])
        if not 0.0 < eps < math.inf:
            raise ValueError(f"Invalid epsilon value: {eps}")
        check_betas(group["betas"])
        check_bool("maximize", group["maximize"])

    def _state_keys(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _static(self, group):
        return dict(maximize=bool(group["maximize"]))

    def _host_scalars(self, group, state):
        step = self._next_step(state)
        beta1, beta2 = (float(b) for b in group["betas"])
        return dict(
            beta1=beta1,
            beta2=beta2,
            eps=float(group["eps"]),
            step_size=float(group["lr"]) * math.sqrt(1 - beta2**step) / (1 - beta1**step),
        )

    def _prepared_group(self, param_group, others):
        if isinstance(param_group, Mapping) and "params" in param_group:
            params = param_group["params"]
            if _is_sparse_matrix(params):
                params = [params]
            elif (isinstance(params, Iterable) and not is_array(params)
                  and not isinstance(params, (str, bytes, Mapping, set, frozenset))):
                params = list(params)  # a generator is read once, here, and handed on as a list
            param_group = {**param_group, "params": params}
            if isinstance(params, list):
                _refuse_like_torch(len(others), params)
        group = super()._prepared_group(param_group, others)
        for i, p in enumerate(group["params"]):
            xp = array_namespace(p)
            if not (is_numpy(xp) or is_cupy(xp)):
                raise TypeError(
                    f"params[{i}] is an array of {xp.__name__}: SparseAdam writes the touched entries "
                    f"in place at integer indices, which that namespace does not support (the Array "
                    f"API standard has no indexed writes); use NumPy or CuPy arrays"
                )
        return group

    # ------------------------------------------------------------------- step

    def step(self, grads) -> None:
        """Update the entries each sparse gradient touches, in place.

        Args:
          grads: one entry per parameter of :attr:`parameters` (all groups, in
            order): a scipy.sparse / cupyx.scipy.sparse matrix, a row-sparse
            ``(indices, values)`` pair (see the class docstring), or None to
            leave that parameter (and its step count) untouched.

        Raises:
          RuntimeError: a gradient is a dense array (torch's error).
          TypeError / ValueError: a malformed gradient or a bad
            hyper-parameter. Nothing is changed when it raises.
        """
        self._check_group_keys()
        checked = self._checked_sparse_grads(grads)
        for group in self.param_groups:
            self._validate(group)
        # Plan every write (new state arrays, step counts, buckets) before making any.
        buckets: dict[tuple, list] = {}
        commits = []
        scalars_of: dict[tuple, dict] = {}
        index = 0
        for gi, group in enumerate(self.param_groups):
            keys = self._state_keys(group)
            static = self._static(group)
            for p in group["params"]:
                sg = checked[index]
                index += 1
                if sg is None:
                    continue
                xp = array_namespace(p)
                state = self.state.get(p) or {}
                new_arrays = {k: xp.zeros_like(p) for k in keys if k not in state}
                step = self._next_step(state)
                commits.append((p, new_arrays, step))
                if sg.empty:
                    continue  # torch counts the step and skips the update
                if (gi, step) not in scalars_of:
                    scalars_of[(gi, step)] = self._host_scalars(group, {"step": step - 1})
                arrays = [state[k] if k in state else new_arrays[k] for k in keys]
                bucket = buckets.setdefault((gi, step, id(xp), str(p.dtype)), [static, xp, []])
                bucket[2].append((p, sg, arrays))
        # Gather the touched entries into fresh arrays and update those, one
        # backend call per bucket, for every bucket before writing any back:
        # what can fail (a temporary, a compile) fails with nothing written.
        # Floating-point error signalling is off, as in Optimizer.step.
        scatters = []
        with np.errstate(all="ignore"):
            for (gi, step, *_), (static, xp, entries) in buckets.items():
                ps, gs, sts = [], [], []
                for p, sg, arrays in entries:
                    ps.append(_gathered(xp, p, sg.at))
                    gs.append(sg.values)
                    sts.append([_gathered(xp, a, sg.at) for a in arrays])
                backend_for(xp, self.backend).run(type(self).rule, static, scalars_of[(gi, step)], ps, gs, sts, xp)
                scatters.append((entries, ps, sts))
            for entries, ps, sts in scatters:
                for (p, sg, arrays), new_p, new_states in zip(entries, ps, sts):
                    at = (*sg.at, ...)  # unique positions after coalescing: plain assignment is exact
                    p[at] = new_p
                    for target, value in zip(arrays, new_states):
                        target[at] = value
        for p, new_arrays, step in commits:
            state = self.state[p]
            state.update(new_arrays)
            state["step"] = step

    def _checked_sparse_grads(self, grads) -> list:
        if is_array(grads) or _is_sparse_matrix(grads) or isinstance(grads, (str, bytes, Mapping)):
            raise TypeError(
                "grads must be a list with one sparse gradient (or None) per parameter, "
                f"got {type(grads).__name__}"
            )
        try:
            grads = list(grads)
        except TypeError:
            raise TypeError(
                f"grads must be a list with one sparse gradient (or None) per parameter, got {type(grads).__name__}"
            ) from None
        params = self._checked_params()
        if len(grads) != len(params):
            hint = " (a single (indices, values) pair goes in a list: [(indices, values)])" if (
                len(grads) == 2 and all(is_array(g) for g in grads)) else ""
            raise ValueError(f"grads has {len(grads)} entries but the optimizer has {len(params)} parameters{hint}")
        return [None if g is None else _checked_sparse_grad(i, p, g) for i, (p, g) in enumerate(zip(params, grads))]


# ------------------------------------------------------------------ the grads


def _is_sparse_matrix(x) -> bool:
    """A scipy.sparse or cupyx.scipy.sparse object, told by its type's module (importing neither)."""
    module = type(x).__module__ or ""
    return module.startswith(("scipy.sparse", "cupyx.scipy.sparse")) and hasattr(x, "tocoo")


def _refuse_like_torch(group_index: int, params: list) -> None:
    """torch's ValueErrors for sparse or complex parameters, before the base's type checks."""
    sparse = [[group_index, d] for d, p in enumerate(params) if _is_sparse_matrix(p)]
    if sparse:
        raise ValueError(f"Sparse params at indices {sparse}: SparseAdam requires dense parameter tensors")
    complex_ = [
        [group_index, d] for d, p in enumerate(params)
        if is_array(p) and hasattr(p, "dtype") and array_namespace(p).isdtype(p.dtype, "complex floating")
    ]
    if complex_:
        raise ValueError(f"Complex params at indices {complex_}: SparseAdam does not support complex parameters")


def _checked_sparse_grad(i: int, p, g) -> _SparseGrad:
    xp = array_namespace(p)
    if is_array(g):
        raise RuntimeError(_DENSE_GRAD)
    if _is_sparse_matrix(g):
        return _from_matrix(i, p, g, xp)
    if isinstance(g, tuple) and len(g) == 2:
        return _from_rows(i, p, g, xp)
    raise TypeError(
        f"grads[{i}] must be a scipy.sparse matrix, an (indices, values) pair of arrays or None, "
        f"got {type(g).__name__}"
    )


def _from_matrix(i, p, g, xp) -> _SparseGrad:
    on_gpu = type(g).__module__.startswith("cupyx.")
    if on_gpu != is_cupy(xp):
        kind = "cupyx.scipy.sparse" if on_gpu else "scipy.sparse"
        raise TypeError(f"grads[{i}] is a {kind} matrix but its parameter is a {_name(xp)} array")
    if tuple(g.shape) != tuple(p.shape):
        raise ValueError(f"grads[{i}] has shape {tuple(g.shape)}, its parameter {tuple(p.shape)}")
    coo = g.tocoo(copy=True)  # summing duplicates below must not reorder the caller's matrix
    coo.sum_duplicates()
    values = xp.asarray(coo.data)
    _check_values_dtype(i, values, xp)
    coords = coo.coords if hasattr(coo, "coords") else (coo.row, coo.col)
    at = tuple(xp.astype(xp.asarray(c), xp.int64) for c in coords)
    if on_gpu and device(values) != device(p):
        raise ValueError(f"grads[{i}] is on device {device(values)}, its parameter on {device(p)}")
    nnz = values.shape[0]
    for axis, c in enumerate(at):
        _check_range(i, c, p.shape[axis], f"axis-{axis} index", xp)
    return _SparseGrad(at, _as_param_dtype(values, p, xp), nnz == 0)


def _from_rows(i, p, g, xp) -> _SparseGrad:
    indices, values = g
    if p.ndim == 0:
        raise ValueError(f"grads[{i}] is an (indices, values) pair of rows, but its parameter is 0-d")
    for name, a in (("indices", indices), ("values", values)):
        if not is_array(a) or array_namespace(a) is not xp:
            kind = _name(array_namespace(a)) + " array" if is_array(a) else type(a).__name__
            raise TypeError(f"grads[{i}]: {name} must be a {_name(xp)} array like its parameter, got {kind}")
        if device(a) != device(p):
            raise ValueError(f"grads[{i}]: {name} is on device {device(a)}, its parameter on {device(p)}")
    if not xp.isdtype(indices.dtype, "integral"):
        raise TypeError(f"grads[{i}]: indices must have an integer dtype, got {indices.dtype}")
    if indices.ndim != 1:
        raise ValueError(f"grads[{i}]: indices must be 1-D, got shape {tuple(indices.shape)}")
    _check_values_dtype(i, values, xp)
    expected = (indices.shape[0], *p.shape[1:])
    if tuple(values.shape) != expected:
        raise ValueError(
            f"grads[{i}]: values has shape {tuple(values.shape)}; {indices.shape[0]} indices "
            f"into a parameter of shape {tuple(p.shape)} need {expected}"
        )
    _check_range(i, indices, p.shape[0], "row index", xp)
    values = _as_param_dtype(values, p, xp)
    if indices.shape[0] == 0:
        return _SparseGrad((indices,), values, True)
    if math.prod(values.shape) == 0:
        return _SparseGrad((indices,), values, True)  # rows of zero width: torch skips these too
    rows, values = _summed_rows(xp, indices, values)
    return _SparseGrad((rows,), values, False)


def _name(xp) -> str:
    """The namespace as users call it (NumPy's and CuPy's come wrapped by array_api_compat)."""
    return "numpy" if is_numpy(xp) else "cupy" if is_cupy(xp) else xp.__name__


def _check_values_dtype(i, values, xp) -> None:
    if not xp.isdtype(values.dtype, "real floating"):
        raise TypeError(f"grads[{i}] has values of dtype {values.dtype}; a real floating-point gradient is needed")


def _as_param_dtype(values, p, xp):
    return values if values.dtype == p.dtype else xp.astype(values, p.dtype)


def _check_range(i, index, size, what, xp) -> None:
    if index.shape[0] == 0:
        return
    low, high = int(xp.min(index)), int(xp.max(index))  # host reads: a sync on the GPU
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise ValueError(f"grads[{i}] has {what} {bad}, outside [0, {size}) of its parameter")


def _summed_rows(xp, indices, values):
    """Each row once, with the values of its repeats summed (torch's coalesce).

    Returns ``(indices, values)`` themselves when no row repeats.
    """
    if is_numpy(xp):
        import numpy as np

        # Sorting and summing runs with reduceat is several times faster than
        # np.add.at; a stable sort adds a row's repeats in the caller's order.
        order = np.argsort(indices, kind="stable")
        ordered = indices[order]
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        if starts.shape[0] == indices.shape[0]:
            return indices, values
        return ordered[starts], np.add.reduceat(values[order], starts, axis=0)
    import cupy  # the only other namespace a SparseAdam accepts; already imported, the arrays are CuPy's

    rows, inverse = cupy.unique(indices, return_inverse=True)
    if rows.shape[0] == indices.shape[0]:
        return indices, values
    summed = cupy.zeros((rows.shape[0], *values.shape[1:]), dtype=values.dtype)
    cupy.add.at(summed, inverse.reshape(-1), values)
    return rows, summed


def _gathered(xp, a, at):
    """A fresh array of ``a``'s entries at ``at`` (row indices, or one index array per axis)."""
    if len(at) == 1:
        return xp.take(a, at[0], axis=0)
    return a[(*at, ...)]


# ------------------------------------------------------------ functional form


def sparse_adam_update(p, g, exp_avg=None, exp_avg_sq=None, *, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                       maximize=False, backend=None):
    """One SparseAdam update of ``p`` in place, with explicit state.

    The functional twin of :class:`SparseAdam` (same math, checks and
    gradient forms), for callers that keep their own state arrays.

    Args:
      p: the parameter, a NumPy or CuPy array; updated in place.
      g: its sparse gradient: a scipy.sparse / cupyx.scipy.sparse matrix or
        a row-sparse ``(indices, values)`` pair (see :class:`SparseAdam`).
      exp_avg, exp_avg_sq: the moments, arrays like ``p`` (updated in place),
        or None on a first step to create them as zeros (returned).
      step: the 1-based number of this update (its bias corrections).
      lr, betas, eps, maximize, backend: as :class:`SparseAdam`'s.

    Returns:
      ``(p, exp_avg, exp_avg_sq)``.

    Example:
      >>> import numpy as np
      >>> from ms_optim.algorithms.sparse_adam import sparse_adam_update
      >>> w = np.zeros((3, 2))
      >>> _, m, v = sparse_adam_update(w, (np.array([1]), np.array([[2.0, -4.0]])), step=1, lr=0.5)
      >>> np.round(w, 6)    # only row 1 moves, by lr * sign(g) on a first step
      array([[ 0. ,  0. ],
             [-0.5,  0.5],
             [ 0. ,  0. ]])
    """
    from ..ops import _checked_state, _checked_step_number  # ops imports this module: import here

    name = "sparse_adam_update"
    opt = SparseAdam([p], lr=lr, betas=betas, eps=eps, maximize=maximize, backend=backend)
    state: dict[str, Any] = {}
    for key, value in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if value is not None:
            state[key] = _checked_state(name, key, value, p)
    state["step"] = _checked_step_number(name, step) - 1
    opt.state[p] = state
    opt.step([g])
    final = opt.state[p]
    return p, final["exp_avg"], final["exp_avg_sq"]
