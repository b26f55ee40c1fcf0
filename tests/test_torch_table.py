"""torch's own optimizer test table, run against ms_optim.

torch ships the table its optimizer tests are generated from in the wheel:
``torch.testing._internal.common_optimizers.optim_db``, one ``OptimizerInfo``
per optimizer with ``optim_inputs_func`` (the configurations torch tests) and
``optim_error_inputs_func`` (inputs that must raise, and the exception type).
This file runs every row whose name ms_optim has:

* each CPU configuration: 12 steps over two param groups (one for LBFGS,
  which torch runs with a single group) of 0-d, 1-D, 2-D and non-contiguous
  parameters, on the same seeded random gradients, compared with torch in
  float64 to 1e-9 relative: the parameters, and the state (same keys as
  torch's, values close, ``step`` as a number);
* each error input: ms_optim raises torch's exception type (the message may
  differ), at construction or, where torch raises at step time, by the step.

torch is the oracle here, never ms_optim. What is skipped, and why, is decided
by :func:`_input_skip` and :func:`_error_skip` and said in each skip message;
where ms_optim refuses on purpose what torch accepts or raises differently,
:data:`DEPARTURES` names the case, the exception ms_optim raises instead and
the reason, and the test checks that exception.
"""

from __future__ import annotations

import inspect
import math
import re

import numpy as np
import pytest

import ms_optim

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")  # common_optimizers imports common_utils, which needs it
from torch.testing._internal import common_optimizers as co  # noqa: E402

try:
    import scipy.sparse as scipy_sparse
except ImportError:  # the SparseAdam driver then passes the (indices, values) form only
    scipy_sparse = None

STEPS = 12
RTOL, ATOL = 1e-9, 1e-12
DEVICE = "cpu"

#: flags that choose one of torch's implementations; ms_optim has no such choice
TORCH_ONLY_FLAGS = ("foreach", "fused", "capturable", "differentiable")

INFOS = {info.name: info for info in co.optim_db}


def _ours(name):
    return getattr(ms_optim, name, None)


def _inputs(info):
    return info.optim_inputs_func(device=DEVICE, dtype=torch.float64)


def _error_inputs(info):
    return info.optim_error_inputs_func(device=DEVICE, dtype=torch.float64)


def _case_id(name, i, desc):
    return f"{name}-{i:02d}-" + re.sub(r"[^A-Za-z0-9]+", "_", desc).strip("_")


INPUT_CASES = [
    pytest.param(info.name, i, id=_case_id(info.name, i, inp.desc))
    for info in co.optim_db
    for i, inp in enumerate(_inputs(info))
]
ERROR_CASES = [
    pytest.param(info.name, i, id=_case_id(info.name, i, err.optimizer_error_input.desc))
    for info in co.optim_db
    for i, err in enumerate(_error_inputs(info))
]


# --------------------------------------------------------------------- skips


def _kwargs_skip(kwargs) -> str | None:
    """Why these constructor kwargs cannot be given to ms_optim, or None."""
    for flag in TORCH_ONLY_FLAGS:
        if kwargs.get(flag):
            return f"torch-only flag {flag}=True (chooses one of torch's implementations)"
    for key, value in kwargs.items():
        values = value if isinstance(value, (tuple, list)) else (value,)
        if key != "lr" and any(isinstance(v, torch.Tensor) for v in values):
            return f"tensor-valued hyper-parameter {key} (only a 0-d lr is carried over, as a 0-d array)"
    return None


def _input_skip(name, inp) -> str | None:
    if _ours(name) is None:
        return f"ms_optim has no {name} yet"
    if inp.params is not None:
        if any(t.is_complex() for t in _tensors_in(inp.params)):
            return "complex parameters: ms_optim updates real floating-point arrays only"
    return _kwargs_skip(inp.kwargs)


def _error_skip(name, err) -> str | None:
    if _ours(name) is None:
        return f"ms_optim has no {name} yet"
    inp = err.optimizer_error_input
    if any(t.is_sparse for t in _tensors_in(inp.params)) and scipy_sparse is None:
        return "a sparse parameter needs scipy.sparse to be expressed here, and scipy is not installed"
    return _kwargs_skip(inp.kwargs)


def _tensors_in(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors_in(v)


# ---------------------------------------------------------------- departures

#: (optimizer name or "*", error-input desc) -> (exception ms_optim raises instead, why)
DEPARTURES = {
    ("*", "a param group cannot have duplicate parameters"): (
        ValueError,
        "ms_optim refuses a parameter listed twice in one group; torch only warns "
        "(UserWarning) that this will become an error, and then updates it once",
    ),
    ("*", "all optimizer params should be with/without names"): (
        TypeError,
        "ms_optim has no named parameters (torch's (name, tensor) pairs): a pair is "
        "not an array, so it is refused as a wrong type",
    ),
    ("*", "all optimizer param groups should be with/without names."): (
        TypeError,
        "ms_optim has no named parameters (torch's (name, tensor) pairs): a pair is "
        "not an array, so it is refused as a wrong type",
    ),
    ("*", "does not support complex parameters"): (
        TypeError,
        "ms_optim refuses a complex parameter with TypeError when it joins a group "
        "(a dtype is a type); torch raises RuntimeError at the first step",
    ),
}


def _departure(name, desc):
    return DEPARTURES.get((name, desc)) or DEPARTURES.get(("*", desc))


# ------------------------------------------------------------ the two sides


def _build_ours(cls, params, kwargs):
    if "backend" in inspect.signature(cls).parameters:
        kwargs = {**kwargs, "backend": "eager"}  # the reference backend: no compile time
    return cls(params, **kwargs)


def _lr_value(kwargs, torch_cls):
    lr = kwargs.get("lr", inspect.signature(torch_cls).parameters["lr"].default)
    return float(lr)


def _to_ours(obj, memo):
    """torch's params/kwargs as ms_optim takes them: tensors as NumPy arrays, identity kept."""
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = _array_of(obj)
        return memo[id(obj)]
    if isinstance(obj, dict):
        return {k: _to_ours(v, memo) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_to_ours(v, memo) for v in obj)
    if isinstance(obj, list):
        return [_to_ours(v, memo) for v in obj]
    return obj


def _array_of(t):
    t = t.detach()
    if t.is_sparse:
        t = t.coalesce()
        idx, vals = t.indices().numpy(), t.values().numpy()
        return scipy_sparse.coo_array((vals, tuple(idx)), shape=tuple(t.shape))
    return t.numpy().copy()


def _twin(a):
    """A torch copy of NumPy parameter ``a`` with the same memory layout (a transposed view stays one)."""
    if a.ndim == 2 and not a.flags.c_contiguous and a.T.flags.c_contiguous:
        return torch.tensor(a.T).T
    return torch.tensor(a)


# (shape, transposed): the parameters of group 0 and group 1. A transposed view
# is a non-contiguous parameter: both libraries must update it in place.
LAYOUTS = {
    "generic": ([((5, 4), False), ((4,), False)], [((3, 6), True), ((), False)]),
    # Muon takes 2-D parameters only: wide, tall, and a transposed view
    "Muon": ([((5, 4), False), ((4, 6), False)], [((3, 6), True)]),
    "SparseAdam": ([((6, 3), False), ((5,), False)], [((4, 2), False)]),
}


def _layout(name, rng):
    groups = LAYOUTS.get(name, LAYOUTS["generic"])
    out = []
    for group in groups:
        params = []
        for shape, transposed in group:
            if transposed:
                params.append(rng.standard_normal(shape[::-1]).T)
            else:
                params.append(np.asarray(rng.standard_normal(shape)))
        out.append(params)
    if name == "LBFGS":  # torch runs LBFGS with one group only (supports_param_groups=False)
        out = [out[0] + out[1]]
    return out


def _group_lists(groups, kwargs, torch_cls, as_lr):
    """Param groups: the second one halves the learning rate (a per-group value)."""
    result = [{"params": groups[0]}]
    if len(groups) > 1:
        result.append({"params": groups[1], "lr": as_lr(0.5 * _lr_value(kwargs, torch_cls))})
    return result


def _ours_kwargs(kwargs):
    out = {k: v for k, v in kwargs.items() if k not in TORCH_ONLY_FLAGS}
    if isinstance(out.get("lr"), torch.Tensor):
        out["lr"] = np.asarray(out["lr"].item())  # a 0-d tensor lr becomes a 0-d array
    return out


# ------------------------------------------------------------------- drivers
#
# Each driver steps both optimizers STEPS times on the same inputs, in the
# calling convention of each: torch reads ``.grad``, ms_optim takes them in step.


def _dense_grads(rng, params, step):
    grads = [rng.standard_normal(p.shape) for p in params]
    if step == 3 and len(grads) > 1:
        grads[1] = None  # a missing gradient: torch skips the param, state and step count included
    return grads


def _drive_dense(ours, topt, params, tparams, rng):
    for step in range(STEPS):
        grads = _dense_grads(rng, params, step)
        for tp, g in zip(tparams, grads):
            tp.grad = None if g is None else torch.tensor(g)
        topt.step()
        ours.step([None if g is None else g.copy() for g in grads])


def _sparse_grad(rng, p, step):
    """(torch's sparse gradient, ours): row-sparse (indices, values) with a duplicate row, or,
    for a matrix on odd steps, an element-sparse scipy.sparse matrix with a duplicate entry."""
    n = p.shape[0]
    if p.ndim == 2 and step % 2 == 1 and scipy_sparse is not None:
        m = p.size // 2
        rows, cols = rng.integers(0, n, m), rng.integers(0, p.shape[1], m)
        rows[-1], cols[-1] = rows[0], cols[0]  # duplicates are summed, as torch's coalesce does
        vals = rng.standard_normal(m)
        tgrad = torch.sparse_coo_tensor(torch.tensor(np.stack([rows, cols])), torch.tensor(vals), p.shape, check_invariants=True)
        make = scipy_sparse.coo_matrix if step % 4 == 1 else scipy_sparse.csr_array
        return tgrad, make((vals, (rows, cols)), shape=p.shape)
    rows = rng.integers(0, n, n // 2 + 1)
    rows[-1] = rows[0]
    vals = rng.standard_normal((len(rows), *p.shape[1:]))
    tgrad = torch.sparse_coo_tensor(torch.tensor(rows)[None], torch.tensor(vals), p.shape, check_invariants=True)
    return tgrad, (rows.copy(), vals.copy())


def _drive_sparse(ours, topt, params, tparams, rng):
    for step in range(STEPS):
        grads = []
        for i, (p, tp) in enumerate(zip(params, tparams)):
            if step == 3 and i == 1:
                tp.grad = None
                grads.append(None)
                continue
            tgrad, grad = _sparse_grad(rng, p, step)
            tp.grad = tgrad
            grads.append(grad)
        topt.step()
        ours.step(grads)


class _Objective:
    """A smooth, non-quadratic loss over all parameters, shifted at every step.

    ``f(x) = sum_i 0.5 x_i.Q_i x_i + c_i(t).x_i + 0.05 sum x_i^4`` with Q_i
    symmetric positive definite: LBFGS's line searches see a real curvature,
    and the shift keeps every step doing work instead of stopping at the optimum.
    """

    def __init__(self, rng, params):
        self.q, self.c, self.shift = [], [], []
        for p in params:
            n = p.size
            m = rng.standard_normal((n, n)) / math.sqrt(n)
            self.q.append(m @ m.T + 0.5 * np.eye(n))
            self.c.append(rng.standard_normal(n))
            self.shift.append(rng.standard_normal(n))
        self.step = 0

    def __call__(self, arrays):
        loss, grads = 0.0, []
        for x, q, c, s in zip(arrays, self.q, self.c, self.shift):
            v = np.asarray(x, dtype=np.float64).reshape(-1)
            ct = c + 0.3 * self.step * s
            qv = q @ v
            loss += 0.5 * v @ qv + ct @ v + 0.05 * np.sum(v**4)
            grads.append((qv + ct + 0.2 * v**3).reshape(np.shape(x)))
        return float(loss), grads


def _drive_closure(ours, topt, params, tparams, rng):
    objective = _Objective(rng, params)

    def torch_closure():
        loss, grads = objective([tp.detach().numpy() for tp in tparams])
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g)
        return torch.tensor(loss)

    def our_closure():  # ms_optim's convention: closure() -> (loss, grads aligned with opt.parameters)
        return objective(ours.parameters)

    for step in range(STEPS):
        objective.step = step
        topt.step(torch_closure)
        ours.step(our_closure)
        if isinstance(ours, ms_optim.Optimizer):
            # Each outer step runs up to max_iter iterations whose dot products round an ulp
            # apart from torch's BLAS; over 200 iterations on a shifting objective LBFGS
            # amplifies that to 1e-6 without any step being wrong. So each step is checked
            # from torch's own parameters and state: compared, then synced from torch's.
            assert_matches_torch(ours, topt, params, tparams)
            for p, tp in zip(params, tparams):
                p[...] = tp.detach().numpy()
            ours.load_state_dict(_numpy_tree(topt.state_dict()))


def _numpy_tree(x):
    """A torch state_dict with every tensor a NumPy copy (LBFGS's history lists too)."""
    if isinstance(x, torch.Tensor):
        return x.detach().numpy().copy()
    if isinstance(x, dict):
        return {k: _numpy_tree(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_numpy_tree(v) for v in x]
    return x


DRIVERS = {"LBFGS": _drive_closure, "SparseAdam": _drive_sparse}


def _ns_in_input_dtype(grad, ns_coefficients, ns_steps, eps):
    """torch's ``_zeropower_via_newtonschulz`` without its ``.bfloat16()`` cast.

    torch runs Muon's Newton-Schulz iteration in bfloat16; ms_optim runs it in
    the parameter's dtype. A float64 comparison to 1e-9 needs torch to do the
    same, so the Muon rows run with this copy patched in: the same checks,
    transposes, normalisation and addmm calls as torch 2.13's, in float64.
    """
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(grad.shape) != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    a, b, c = ns_coefficients
    ortho_grad = grad.clone()  # the copy .bfloat16() made: div_ below must not touch the momentum buffer
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    ortho_grad.div_(ortho_grad.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram_matrix = ortho_grad @ ortho_grad.T
        gram_update = torch.addmm(gram_matrix, gram_matrix, gram_matrix, beta=b, alpha=c)
        ortho_grad = torch.addmm(ortho_grad, gram_update, ortho_grad, beta=a)
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    return ortho_grad


@pytest.fixture
def float64_torch(monkeypatch):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torch's host numbers (ASGD's eta, NAdam's mu_product) in float64
    import torch.optim._muon as torch_muon

    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", _ns_in_input_dtype)
    yield
    torch.set_default_dtype(previous)


def run_pair(name, kwargs, ours_cls, seed=0):
    """Build both optimizers on the same parameters and step them on the same inputs."""
    rng = np.random.default_rng(seed)
    torch_cls = INFOS[name].optim_cls
    groups = _layout(name, rng)
    tgroups = [[_twin(p) for p in g] for g in groups]
    ours = _build_ours(ours_cls, _group_lists(groups, kwargs, torch_cls, _ours_lr(kwargs)), _ours_kwargs(kwargs))
    topt = torch_cls(_group_lists(tgroups, kwargs, torch_cls, _torch_lr(kwargs)), **kwargs)
    params = [p for g in groups for p in g]
    tparams = [p for g in tgroups for p in g]
    DRIVERS.get(name, _drive_dense)(ours, topt, params, tparams, rng)
    return ours, topt, params, tparams


def _ours_lr(kwargs):
    return np.asarray if isinstance(kwargs.get("lr"), torch.Tensor) else float


def _torch_lr(kwargs):
    return torch.tensor if isinstance(kwargs.get("lr"), torch.Tensor) else float


# --------------------------------------------------------------- comparison


def assert_close(ours, theirs, where, atol=None):
    """ms_optim's value against torch's: tensors, arrays, numbers, None and lists of them."""
    if isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(theirs), f"{where}: {ours!r} vs {theirs!r}"
        for i, (o, t) in enumerate(zip(ours, theirs)):
            assert_close(o, t, f"{where}[{i}]", atol)
        return
    if theirs is None:
        assert ours is None, f"{where}: torch has None, ms_optim {ours!r}"
        return
    if isinstance(theirs, torch.Tensor):
        theirs = theirs.detach().numpy()
    if isinstance(ours, torch.Tensor):  # the driver checks below run torch on both sides
        ours = ours.detach().numpy()
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{where}: shape {ours.shape}, torch's {theirs.shape}"
    np.testing.assert_allclose(ours.astype(np.float64), theirs.astype(np.float64), rtol=RTOL,
                               atol=ATOL if atol is None else atol, err_msg=where)


#: LBFGS's flat vectors: differences of nearly equal vectors near the optimum (see below)
NORMWISE_STATE = {"d", "old_dirs", "old_stps", "ro", "prev_flat_grad"}


def _scale(value) -> float:
    values = value if isinstance(value, (list, tuple)) else [value]
    arrays = [np.abs(v.detach().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=np.float64))
              for v in values if v is not None]
    return max((float(a.max()) for a in arrays if a.size), default=0.0)


def assert_matches_torch(ours, topt, params, tparams):
    for i, (p, tp) in enumerate(zip(params, tparams)):
        assert_close(p, tp, f"param {i}")
        theirs = topt.state.get(tp) or {}
        mine = ours.state.get(p) or {}
        assert set(mine) == set(theirs), f"param {i}: state keys {sorted(mine)}, torch's {sorted(theirs)}"
        for key, value in theirs.items():
            if key == "step":  # an int here, a tensor or an int in torch
                assert float(mine[key]) == float(value), f"param {i} step: {mine[key]} vs {value}"
            elif key == "al":
                # torch's scratch buffer of the two-loop recursion, rewritten before it is read in
                # every iteration: it carries nothing into the next step, so it is held looser
                assert_close(mine[key], value, f"param {i} state 'al'", max(ATOL, 1e-6 * _scale(value)))
            elif key in NORMWISE_STATE:
                # gradients and steps shrink at the optimum, where params agreeing to 1e-9 still
                # move them by 1e-9 of the params' size: held to that size, or their own if larger
                size = max(_scale(value), max(_scale(t) for t in tparams))
                assert_close(mine[key], value, f"param {i} state {key!r}", max(ATOL, RTOL * size))
            else:
                assert_close(mine[key], value, f"param {i} state {key!r}")


# --------------------------------------------------------------------- tests


@pytest.mark.parametrize("name,index", INPUT_CASES)
def test_configuration_matches_torch(name, index, float64_torch):
    inp = _inputs(INFOS[name])[index]  # built under float64: a tensor lr is a float64 0-d tensor
    reason = _input_skip(name, inp)
    if reason:
        pytest.skip(reason)
    assert inp.params is None, "torch 2.13's CPU inputs leave params to the test; extend run_pair if not"
    ours, topt, params, tparams = run_pair(name, dict(inp.kwargs), _ours(name))
    assert_matches_torch(ours, topt, params, tparams)


@pytest.mark.parametrize("name,index", ERROR_CASES)
def test_error_input_raises_torchs_exception_type(name, index):
    err = _error_inputs(INFOS[name])[index]
    reason = _error_skip(name, err)
    if reason:
        pytest.skip(reason)
    inp = err.optimizer_error_input
    departure = _departure(name, inp.desc)
    expected = departure[0] if departure else err.error_type
    memo: dict = {}
    params = _to_ours(inp.params, memo)
    kwargs = _ours_kwargs(_to_ours(inp.kwargs, {}))
    cls = _ours(name)
    attempts = [params]
    if params is None:
        # torch's table passes no params where the kwargs alone must fail: that
        # must hold with real params too (checked before any group is read).
        attempts.append([np.zeros((2, 3))])
    for attempt in attempts:
        with pytest.raises(expected):
            opt = _build_ours(cls, attempt, kwargs)
            if err.error_on is co.OptimizerErrorEnum.STEP_ERROR:
                # torch raises when it steps; ms_optim may refuse earlier, when it is built
                opt.step([_array_of(p.grad) if p.grad is not None else None for p in _tensors_in(inp.params)])


def test_every_ms_optim_twin_of_a_torch_optimizer_has_rows():
    """A torch.optim name ms_optim has is run here: no twin falls outside the table unnoticed."""
    twins = [n for n in dir(ms_optim) if n != "Optimizer" and isinstance(getattr(ms_optim, n), type)
             and issubclass(getattr(ms_optim, n), ms_optim.Optimizer) and hasattr(torch.optim, n)]
    assert len(twins) >= 11
    for name in twins:
        assert name in INFOS and _inputs(INFOS[name]) and _error_inputs(INFOS[name]), name


# ------------------------------------------------ the drivers, checked on torch
#
# LBFGS and SparseAdam are not in ms_optim yet, so their drivers would be
# untested code until they land. Run them now with torch's own optimizer
# behind ms_optim's calling convention: the drivers must reproduce torch
# exactly, which checks the sparse (indices, values) and scipy.sparse forms
# and the (loss, grads) closure against torch's own gradients.


class _TorchBehindOurConvention:
    """torch.optim's ``cls`` on NumPy parameters (shared memory), stepped as ms_optim is."""

    def __init__(self, torch_cls, groups, **kwargs):
        self._twins = {}
        tgroups = []
        for g in groups:
            tg = dict(g, params=[self._twin_of(p) for p in g["params"]])
            tgroups.append(tg)
        self.param_groups = groups
        self._opt = torch_cls(tgroups, **kwargs)

    def _twin_of(self, p):
        self._twins[id(p)] = torch.from_numpy(p)  # shares memory: torch's update is seen in p
        return self._twins[id(p)]

    @property
    def parameters(self):
        return [p for g in self.param_groups for p in g["params"]]

    @property
    def state(self):
        return _StateById({id(p): self._opt.state.get(self._twins[id(p)]) for p in self.parameters})

    def step(self, grads):
        if callable(grads):
            closure = grads

            def torch_closure():
                loss, gs = closure()
                for p, g in zip(self.parameters, gs):
                    self._twins[id(p)].grad = torch.tensor(g)
                return torch.tensor(loss)

            return self._opt.step(torch_closure)
        for p, g in zip(self.parameters, grads):
            self._twins[id(p)].grad = None if g is None else self._torch_grad(p, g)
        self._opt.step()

    @staticmethod
    def _torch_grad(p, g):
        if isinstance(g, tuple):
            rows, vals = g
            return torch.sparse_coo_tensor(torch.tensor(rows)[None], torch.tensor(vals), p.shape, check_invariants=True)
        if scipy_sparse is not None and scipy_sparse.issparse(g):
            coo = g.tocoo()
            idx = np.stack([coo.row, coo.col]) if hasattr(coo, "row") else np.stack(coo.coords)
            return torch.sparse_coo_tensor(torch.tensor(idx), torch.tensor(coo.data), p.shape, check_invariants=True)
        return torch.tensor(g)


class _StateById:
    def __init__(self, by_id):
        self._by_id = by_id

    def get(self, p):
        return self._by_id.get(id(p))


@pytest.mark.parametrize("name,kwargs", [
    ("Adafactor", {}),
    ("LBFGS", {}),
    ("LBFGS", {"line_search_fn": "strong_wolfe", "history_size": 3}),
    ("SparseAdam", {"lr": 0.05}),
    ("Muon", {"lr": 0.02}),
])
def test_drivers_reproduce_torch_when_torch_is_under_test(name, kwargs, float64_torch):
    torch_cls = INFOS[name].optim_cls

    def factory(groups, **kw):
        return _TorchBehindOurConvention(torch_cls, groups, **{k: v for k, v in kw.items() if k != "backend"})

    ours, topt, params, tparams = run_pair(name, kwargs, factory)
    assert_matches_torch(ours, topt, params, tparams)
    # the run did something: every parameter moved away from where it started
    start = _layout(name, np.random.default_rng(0))
    for p, p0 in zip(params, [p for g in start for p in g]):
        assert not np.allclose(p, p0)
