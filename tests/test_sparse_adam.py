"""SparseAdam against torch.optim.SparseAdam: both gradient forms, torch's state and errors.

torch is the reference: the same initial values and the same sparse gradients
(random row or entry subsets with repeated indices, empty gradients, None) go
to both, in two param groups, and float64 must agree to 1e-9 relative over
12 steps. The scipy.sparse tests skip where scipy is missing.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

from ms_optim.algorithms.sparse_adam import SparseAdam, sparse_adam_update
from tests.conftest import _cupy_if_gpu, to_numpy

# torch's notice on building sparse tensors without invariant checks, once per run: not about us
pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")

STEPS = 12
SHAPES = [(6, 3), (7,), (4, 2, 3), (5, 4)]  # group 0 holds the first three, group 1 the last
GROUP_OVERRIDES = dict(lr=0.003, betas=(0.5, 0.9))
CONFIGS = [
    dict(lr=0.01),
    dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.02, maximize=True),
    dict(lr="0-d"),  # a 0-d array lr (torch: a 0-d tensor)
]
CONFIG_IDS = ["default", "betas-eps", "maximize", "0d-lr"]
SCIPY_FORMATS = ("coo", "csr", "csc")


def sparse_plan(form, seed=0, steps=STEPS, shapes=SHAPES):
    """Per step, one gradient spec per parameter (or None).

    ``("rows", indices, values)`` for the row-sparse form; with ``form="coo"``
    2-D parameters get ``("coo", rows, cols, values)`` (entry-sparse) instead.
    Indices are drawn with replacement, so most gradients repeat some; about
    one value in ten is an explicit 0 (still a touched entry). Param 1 gets
    its first gradient at step 2, param 3 none at step 6; param 0's gradient
    at step 4 and every gradient at step 9 are empty.
    """
    rng = np.random.default_rng(seed)
    plan = []
    for k in range(steps):
        grads = []
        for j, shape in enumerate(shapes):
            if (j == 1 and k < 2) or (j == 3 and k == 6):
                grads.append(None)
                continue
            empty = k == 9 or (k == 4 and j == 0)
            if form == "coo" and len(shape) == 2:
                n = 0 if empty else int(rng.integers(1, shape[0] * shape[1] + 3))
                rows, cols = rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)
                values = rng.standard_normal(n)
                values[rng.random(n) < 0.1] = 0.0
                grads.append(("coo", rows, cols, values))
            else:
                n = 0 if empty else int(rng.integers(1, shape[0] + 3))
                values = rng.standard_normal((n, *shape[1:]))
                values[rng.random(n) < 0.1] = 0.0
                grads.append(("rows", rng.integers(0, shape[0], n), values))
        plan.append(grads)
    return plan


def initial_params(seed=1, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


def ours_grad(spec, shape, k, xp=np, dtype=np.float64):
    """Our form of a gradient spec; COO specs cycle through scipy formats by step."""
    if spec is None:
        return None
    if spec[0] == "rows":
        _, idx, values = spec
        return xp.asarray(idx), xp.asarray(values.astype(dtype))
    sp = pytest.importorskip("scipy.sparse")
    _, rows, cols, values = spec
    matrix = sp.coo_array((values.astype(dtype), (rows, cols)), shape=shape)
    return matrix.asformat(SCIPY_FORMATS[k % len(SCIPY_FORMATS)])


def torch_grad(torch, spec, shape, dtype):
    if spec[0] == "rows":
        _, idx, values = spec
        indices = torch.tensor(idx, dtype=torch.long).reshape(1, -1)
    else:
        _, rows, cols, values = spec
        indices = torch.tensor(np.stack([rows, cols]), dtype=torch.long).reshape(2, -1)
    return torch.sparse_coo_tensor(indices, torch.tensor(values, dtype=dtype), shape)


def hyper(config, xp=np):
    return {**config, "lr": xp.asarray(0.02)} if config.get("lr") == "0-d" else dict(config)


def build_ours(params, config, **kw):
    return SparseAdam([{"params": params[:3]}, {"params": params[3:], **GROUP_OVERRIDES}], **hyper(config), **kw)


def run_torch(config, plan, dtype, params=None, opt=None):
    torch = pytest.importorskip("torch")
    if opt is None:
        params = [torch.nn.Parameter(torch.tensor(p, dtype=dtype)) for p in initial_params()]
        cfg = {**config, "lr": torch.tensor(0.02, dtype=torch.float64)} if config.get("lr") == "0-d" else config
        opt = torch.optim.SparseAdam([{"params": params[:3]}, {"params": params[3:], **GROUP_OVERRIDES}], **cfg)
    for grads in plan:
        for p, spec in zip(params, grads):
            p.grad = None if spec is None else torch_grad(torch, spec, tuple(p.shape), dtype)
        opt.step()
    return opt, params


def run_ours(config, plan, xp=np, dtype=np.float64, params=None, opt=None, start=0, **kw):
    if opt is None:
        params = [xp.asarray(p.astype(dtype)) for p in initial_params()]
        opt = build_ours(params, config, **kw)
    for k, grads in enumerate(plan, start):
        opt([ours_grad(spec, tuple(p.shape), k, xp, dtype) for p, spec in zip(params, grads)])
    return opt, params


def assert_matches_torch(opt, params, topt, tparams, rtol=1e-9, atol=1e-12):
    for i, (p, tp) in enumerate(zip(params, tparams)):
        np.testing.assert_allclose(to_numpy(p), tp.detach().numpy(), rtol=rtol, atol=atol, err_msg=f"param {i}")
        tstate, state = topt.state[tp], opt.state[p]
        assert set(state) == set(tstate) == {"step", "exp_avg", "exp_avg_sq"}
        assert state["step"] == tstate["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(to_numpy(state[key]), tstate[key].numpy(), rtol=rtol, atol=atol,
                                       err_msg=f"param {i} state {key}")


# ------------------------------------------------------------------ the plan


def test_the_plan_exercises_what_it_claims():
    for form in ("rows", "coo"):
        plan = sparse_plan(form)
        specs = [s for grads in plan for s in grads if s is not None]
        repeated = [s for s in specs if s[0] == "rows" and len(set(s[1])) < len(s[1])]
        assert len(repeated) >= 10
        assert sum(s[-1].shape[0] == 0 for s in specs) >= 5  # empty gradients
        assert any((s[-1] == 0).any() for s in specs)  # explicit zeros
    coo = [s for grads in sparse_plan("coo") for s in grads if s is not None and s[0] == "coo"]
    assert any(len(set(zip(s[1], s[2]))) < len(s[1]) for s in coo)  # repeated entries


# -------------------------------------------------------------- torch parity


@pytest.mark.parametrize("form", ["rows", "coo"])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_float64_matches_torch(config, form):
    torch = pytest.importorskip("torch")
    plan = sparse_plan(form)
    topt, tparams = run_torch(config, plan, torch.float64)
    opt, params = run_ours(config, plan)
    assert_matches_torch(opt, params, topt, tparams)


@pytest.mark.parametrize("form", ["rows", "coo"])
def test_float32_matches_torch_closely(form):
    torch = pytest.importorskip("torch")
    plan = sparse_plan(form, seed=3)
    config = dict(lr=0.01, maximize=True)
    topt, tparams = run_torch(config, plan, torch.float32)
    opt, params = run_ours(config, plan, dtype=np.float32)
    for p, tp in zip(params, tparams):
        assert p.dtype == np.float32 and opt.state[p]["exp_avg"].dtype == np.float32
        theirs = tp.detach().numpy().astype(np.float64)
        eps32 = float(np.finfo(np.float32).eps)
        np.testing.assert_allclose(to_numpy(p), theirs, rtol=0, atol=4 * STEPS * eps32 * max(1.0, np.abs(theirs).max()))


@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_every_backend_matches_torch(backend):
    """The arithmetic on the gathered entries runs through the engine; numba's loop too."""
    if backend == "cpu":
        pytest.importorskip("numba")
    torch = pytest.importorskip("torch")
    plan = sparse_plan("rows", seed=5)
    topt, tparams = run_torch(CONFIGS[1], plan, torch.float64)
    opt, params = run_ours(CONFIGS[1], plan, backend=backend)
    assert_matches_torch(opt, params, topt, tparams)


def test_state_dict_equals_torchs():
    torch = pytest.importorskip("torch")
    plan = sparse_plan("coo")
    topt, _ = run_torch(CONFIGS[2], plan, torch.float64)
    opt, _ = run_ours(CONFIGS[2], plan)
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    assert set(ours["state"]) == set(theirs["state"]) == {0, 1, 2, 3}
    for pid, tstate in theirs["state"].items():
        state = ours["state"][pid]
        assert set(state) == set(tstate)
        assert type(state["step"]) is int and state["step"] == tstate["step"]  # torch keeps a plain int here
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(state[key], tstate[key].numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("form", ["rows", "coo"])
def test_a_torch_checkpoint_resumes_here_as_in_torch(form):
    torch = pytest.importorskip("torch")
    plan = sparse_plan(form, seed=7)
    topt, tparams = run_torch(CONFIGS[0], plan[:5], torch.float64)
    params = [tp.detach().numpy().copy() for tp in tparams]
    opt = build_ours(params, CONFIGS[0])
    opt.load_state_dict(topt.state_dict())
    run_torch(CONFIGS[0], plan[5:], torch.float64, tparams, topt)
    run_ours(CONFIGS[0], plan[5:], params=params, opt=opt, start=5)
    assert_matches_torch(opt, params, topt, tparams)


def test_our_checkpoint_resumes_identically():
    plan = sparse_plan("coo", seed=8)
    whole, wparams = run_ours(CONFIGS[1], plan)
    half, hparams = run_ours(CONFIGS[1], plan[:6])
    saved = copy.deepcopy(half.state_dict())
    params = [p.copy() for p in hparams]
    opt = build_ours(params, CONFIGS[1])
    opt.load_state_dict(saved)
    run_ours(CONFIGS[1], plan[6:], params=params, opt=opt, start=6)
    for p, w in zip(params, wparams):
        np.testing.assert_array_equal(p, w)


def test_empty_gradient_counts_a_step_and_moves_nothing_as_in_torch():
    torch = pytest.importorskip("torch")
    p = np.arange(6.0).reshape(3, 2)
    tp = torch.nn.Parameter(torch.tensor(p))
    opt, topt = SparseAdam([p]), torch.optim.SparseAdam([tp])
    opt([(np.zeros(0, dtype=np.int64), np.zeros((0, 2)))])
    tp.grad = torch.sparse_coo_tensor(torch.zeros((1, 0), dtype=torch.long), torch.zeros((0, 2), dtype=torch.float64),
                                      (3, 2))
    topt.step()
    assert opt.state[p]["step"] == topt.state[tp]["step"] == 1
    np.testing.assert_array_equal(p, np.arange(6.0).reshape(3, 2))
    np.testing.assert_array_equal(opt.state[p]["exp_avg"], np.zeros((3, 2)))


def test_only_touched_entries_move():
    p = np.ones((5, 3))
    opt = SparseAdam([p], lr=0.1)
    opt([(np.array([3, 1, 3]), np.ones((3, 3)))])
    untouched = [0, 2, 4]
    np.testing.assert_array_equal(p[untouched], 1.0)
    np.testing.assert_array_equal(opt.state[p]["exp_avg"][untouched], 0.0)
    np.testing.assert_allclose(opt.state[p]["exp_avg"][3], 0.2)  # (1 - 0.9) * (1 + 1): rows summed first
    np.testing.assert_allclose(opt.state[p]["exp_avg"][1], 0.1)


def test_callers_scipy_matrix_is_left_as_it_was():
    sp = pytest.importorskip("scipy.sparse")
    g = sp.coo_array((np.array([1.0, 2.0, 3.0]), (np.array([2, 0, 2]), np.array([1, 1, 1]))), shape=(3, 2))
    before = (g.coords[0].copy(), g.coords[1].copy(), g.data.copy())
    SparseAdam([np.zeros((3, 2))])([g])
    for a, b in zip((*g.coords, g.data), before):
        np.testing.assert_array_equal(a, b)
    assert g.nnz == 3


def test_functional_form_matches_torch():
    torch = pytest.importorskip("torch")
    plan = [grads[0] for grads in sparse_plan("rows", seed=9)]
    tp = torch.nn.Parameter(torch.tensor(initial_params()[0]))
    topt = torch.optim.SparseAdam([tp], lr=0.05, betas=(0.7, 0.9), maximize=True)
    p, m, v = initial_params()[0], None, None
    for k, spec in enumerate(plan, 1):
        tp.grad = torch_grad(torch, spec, (6, 3), torch.float64)
        topt.step()
        out = sparse_adam_update(p, ours_grad(spec, (6, 3), k), m, v, step=k, lr=0.05, betas=(0.7, 0.9),
                                 maximize=True)
        assert out[0] is p
        m, v = out[1], out[2]
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m, topt.state[tp]["exp_avg"].numpy(), rtol=1e-9, atol=1e-12)


def test_functional_form_checks_its_arguments():
    p = np.zeros((3, 2))
    g = (np.array([0]), np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"step is the 1-based number"):
        sparse_adam_update(p, g, step=0)
    with pytest.raises(TypeError, match=r"exp_avg has dtype float32"):
        sparse_adam_update(p, g, np.zeros((3, 2), np.float32), step=1)
    with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients"):
        sparse_adam_update(p, np.ones((3, 2)), step=1)
    np.testing.assert_array_equal(p, 0.0)


# ------------------------------------------------------------------- refusals


def test_signature_is_torchs():
    torch = pytest.importorskip("torch")
    import inspect

    ours = inspect.signature(SparseAdam).parameters
    theirs = inspect.signature(torch.optim.SparseAdam).parameters
    assert [(n, p.kind, p.default) for n, p in theirs.items()] == [
        (n, p.kind, p.default) for n, p in ours.items() if n != "backend"]
    assert ours["backend"].kind is inspect.Parameter.KEYWORD_ONLY


def test_dense_gradient_is_refused_with_torchs_exception():
    torch = pytest.importorskip("torch")
    tp = torch.nn.Parameter(torch.zeros(3))
    tp.grad = torch.ones(3)
    with pytest.raises(RuntimeError) as theirs:
        torch.optim.SparseAdam([tp]).step()
    with pytest.raises(RuntimeError) as ours:
        SparseAdam([np.zeros(3)])([np.ones(3)])
    assert str(ours.value) == str(theirs.value)


def _translated(value, memo):
    """A torch error input's params/kwargs in our terms (same object for the same tensor)."""
    import torch

    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            if value.layout == torch.sparse_coo:
                import scipy.sparse as sp  # ImportError: the caller leaves this input out

                memo[id(value)] = sp.coo_array(value.to_dense().numpy())
            else:
                memo[id(value)] = value.detach().numpy().copy()
        return memo[id(value)]
    if isinstance(value, dict):
        return {k: _translated(v, memo) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_translated(v, memo) for v in value)
    return value


#: torch's error inputs the Optimizer base answers differently on purpose, with its reason
BASE_DEPARTURES = {
    "a param group cannot have duplicate parameters":
        (ValueError, "torch only warns; ms_optim refuses a repeated param (it would be stepped twice)"),
    "all optimizer params should be with/without names":
        (TypeError, "ms_optim takes no (name, param) pairs at all: a pair is not an array"),
    "all optimizer param groups should be with/without names.":
        (TypeError, "ms_optim takes no (name, param) pairs at all: a pair is not an array"),
}


def _torch_error_inputs():
    torch = pytest.importorskip("torch")
    pytest.importorskip("expecttest")
    from torch.testing._internal.common_optimizers import optim_error_inputs_func_sparseadam

    return optim_error_inputs_func_sparseadam("cpu", torch.float32)


def test_torch_error_inputs_raise_torchs_types():
    inputs = _torch_error_inputs()
    assert len(inputs) >= 9
    for err in inputs:
        given = err.optimizer_error_input
        memo: dict = {}
        try:
            params = _translated(given.params, memo) if given.params is not None else [np.zeros((2, 2))]
            kwargs = _translated(given.kwargs, memo)
        except ImportError:  # a sparse param needs scipy.sparse; the other inputs still run
            continue
        expected, reason = BASE_DEPARTURES.get(given.desc, (err.error_type, None))
        with pytest.raises(expected) as info:
            SparseAdam(params, **kwargs)
        if reason is None and ("SparseAdam" in err.error_regex or "Invalid" in err.error_regex
                               or "more than one" in err.error_regex):
            assert err.error_regex in str(info.value), given.desc  # torch's own words


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(lr=0.0), ValueError, r"^Invalid learning rate: 0\.0$"),
    (dict(lr=-1.0), ValueError, r"^Invalid learning rate: -1\.0$"),
    (dict(lr=float("nan")), ValueError, r"^Invalid learning rate: nan$"),
    (dict(lr=float("inf")), ValueError, r"^Invalid learning rate: inf$"),
    (dict(eps=0.0), ValueError, r"^Invalid epsilon value: 0\.0$"),
    (dict(eps=float("nan")), ValueError, r"^Invalid epsilon value: nan$"),
    (dict(betas=(1.0, 0.999)), ValueError, r"^Invalid beta parameter at index 0: 1\.0$"),
    (dict(betas=(0.9, -0.1)), ValueError, r"^Invalid beta parameter at index 1: -0\.1$"),
    (dict(lr="0.1"), TypeError, r"lr must be a real number, got str"),
    (dict(eps=None), TypeError, r"eps must be a real number, got NoneType"),
    (dict(betas=0.9), TypeError, r"betas must be a pair of floats"),
    (dict(maximize=1), TypeError, r"maximize must be a bool, got int"),
    (dict(backend="warp-drive"), ValueError, r"Invalid backend: 'warp-drive'"),
])
def test_bad_hyperparameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SparseAdam([np.zeros(2)], **kwargs)


def test_value_errors_in_torchs_words():
    torch = pytest.importorskip("torch")
    for kwargs in (dict(lr=0.0), dict(lr=-0.5), dict(eps=0.0), dict(eps=-1.0), dict(betas=(0.9, 1.0))):
        with pytest.raises(ValueError) as theirs:
            torch.optim.SparseAdam([torch.zeros(1)], **kwargs)
        with pytest.raises(ValueError) as ours:
            SparseAdam([np.zeros(1)], **kwargs)
        assert str(ours.value) == str(theirs.value)


def test_array_api_strict_is_refused_when_built():
    xs = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match=r"params\[0\] is an array of array_api_strict: SparseAdam writes"):
        SparseAdam([xs.zeros((3, 2))])
    opt = SparseAdam([np.zeros(2)])
    with pytest.raises(TypeError, match="integer indices"):
        opt.add_param_group({"params": [xs.zeros(3)]})
    assert len(opt.param_groups) == 1


def _bad_grads():
    """(description, gradient for param 2 of shape (4, 3), exception, regex)."""
    sp_cases = []
    try:
        import scipy.sparse as sp

        sp_cases = [
            ("scipy shape", sp.coo_array(np.ones((3, 4))), ValueError, r"grads\[2\] has shape \(3, 4\)"),
            ("scipy ints", sp.coo_array(np.ones((4, 3), dtype=np.int64)), TypeError, r"grads\[2\] has values of dtype"),
        ]
    except ImportError:
        pass
    i64 = np.int64
    return [
        ("dense", np.ones((4, 3)), RuntimeError, r"SparseAdam does not support dense gradients"),
        ("too big", (np.array([0, 4]), np.ones((2, 3))), ValueError, r"grads\[2\] has row index 4, outside \[0, 4\)"),
        ("negative", (np.array([-1, 2]), np.ones((2, 3))), ValueError, r"grads\[2\] has row index -1"),
        ("float idx", (np.array([0.0]), np.ones((1, 3))), TypeError, r"grads\[2\]: indices must have an integer"),
        ("2-d idx", (np.array([[0]]), np.ones((1, 3))), ValueError, r"grads\[2\]: indices must be 1-D"),
        ("values shape", (np.array([0, 1], i64), np.ones((2, 4))), ValueError, r"grads\[2\]: values has shape"),
        ("int values", (np.array([0], i64), np.ones((1, 3), i64)), TypeError, r"grads\[2\] has values of dtype"),
        ("list idx", ([0], np.ones((1, 3))), TypeError, r"grads\[2\]: indices must be a numpy array"),
        ("triple", (np.array([0]), np.ones((1, 3)), None), TypeError, r"grads\[2\] must be a scipy.sparse matrix"),
        ("strict", (np.array([0]), __import__("array_api_strict").ones((1, 3))), TypeError,
         r"grads\[2\]: values must be a numpy array like its parameter, got array_api_strict array"),
        *sp_cases,
    ]


@pytest.mark.parametrize("desc,bad,exc,match", _bad_grads(), ids=[c[0] for c in _bad_grads()])
def test_a_refused_step_changes_nothing(desc, bad, exc, match):
    params = [np.random.default_rng(2).standard_normal(s) for s in [(5, 2), (6,), (4, 3), (3, 3)]]
    opt = SparseAdam([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}], lr=0.05)
    good = [(np.array([1, 1, 4]), np.ones((3, 2))), (np.array([0, 5]), np.ones(2))]
    opt(good + [(np.array([2]), np.ones((1, 3))), None])  # params 0-2 have state, param 3 none
    before = copy.deepcopy((params, opt.state_dict()))
    with pytest.raises(exc, match=match):
        opt(good + [bad, (np.array([0]), np.ones((1, 3)))])
    after = (params, opt.state_dict())
    for p, q in zip(before[0], after[0]):
        np.testing.assert_array_equal(p, q)
    assert before[1]["param_groups"] == after[1]["param_groups"]
    assert set(before[1]["state"]) == set(after[1]["state"]) == {0, 1, 2}
    for pid, st in before[1]["state"].items():
        assert st["step"] == after[1]["state"][pid]["step"] == 1
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(st[key], after[1]["state"][pid][key])


def test_malformed_calls():
    p = np.zeros((3, 2))
    opt = SparseAdam([p])
    with pytest.raises(ValueError, match=r"a single \(indices, values\) pair goes in a list"):
        opt((np.array([0]), np.ones((1, 2))))
    with pytest.raises(TypeError, match="grads must be a list"):
        opt(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"grads\[0\] is an \(indices, values\) pair of rows, but its parameter is 0-d"):
        SparseAdam([np.zeros(())])([(np.array([0]), np.ones(1))])
    opt([None])  # None skips, as for every optimizer
    assert p.sum() == 0 and not opt.state


def test_importing_it_imports_neither_cupy_nor_scipy():
    code = "import sys, ms_optim.algorithms.sparse_adam; print(sorted({'cupy', 'cupyx', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------- CuPy


@pytest.mark.skipif(_cupy_if_gpu() is None, reason="no CUDA GPU")
@pytest.mark.parametrize("form", ["rows", "coo"])
def test_cupy_matches_torch(form):
    torch = pytest.importorskip("torch")
    cp = _cupy_if_gpu()
    import cupyx.scipy.sparse as csp

    plan = sparse_plan(form, seed=11)
    topt, tparams = run_torch(CONFIGS[1], plan, torch.float64)
    params = [cp.asarray(p) for p in initial_params()]
    opt = build_ours(params, CONFIGS[1])
    for grads in plan:
        ours = []
        for p, spec in zip(params, grads):
            if spec is None:
                ours.append(None)
            elif spec[0] == "rows":
                ours.append((cp.asarray(spec[1]), cp.asarray(spec[2])))
            else:
                _, rows, cols, values = spec
                ours.append(csp.coo_matrix((cp.asarray(values), (cp.asarray(rows), cp.asarray(cols))), shape=p.shape))
        opt(ours)
    assert_matches_torch(opt, params, topt, tparams)


def test_a_scheduler_may_anneal_the_lr_to_zero():
    """torch checks lr > 0 when SparseAdam is built only; cosine annealing to 0 then steps on."""
    import schedulers

    p = np.ones((4, 2))
    opt = SparseAdam([p], lr=0.1)
    sched = schedulers.CosineAnnealingLR(opt, T_max=2)
    for _ in range(2):
        opt.step([(np.array([1]), np.ones((1, 2)))])
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.0
    before = p.copy()
    opt.step([(np.array([1]), np.ones((1, 2)))])  # an lr of 0 moves nothing, and counts the step
    np.testing.assert_array_equal(p, before)
    assert opt.state[p]["step"] == 3
    with pytest.raises(ValueError, match=r"Invalid learning rate: 0\.0"):
        SparseAdam([np.ones((2, 2))], lr=0.0)
