"""Issue 9, the optimizer side: a step never half-applies, loads check everything, params stay checked.

Faults are injected where a step can really fail (a rule or a backend raising
on the k-th tensor, a MemoryError inside a NumPy function, np.seterr(all='raise'),
warnings as errors, a parameter made read-only); after each, parameters, state
and groups must be bit-identical and a retry must give the result of a clean
run. The property tests draw random valid configurations, shapes (0-d and
zero-size included), dtypes, group layouts and None-gradient patterns from
tests/optim_table.py and compare with its float64 references; random invalid
inputs must be refused with everything bit-identical. ``MS_OPTIM_SOAK=1`` runs
the large profile.
"""

from __future__ import annotations

import copy
import math
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ms_optim
from ms_optim.algorithms.lamb import LAMB
from ms_optim.engine import cpu as cpu_mod
from ms_optim.engine import eager as eager_mod
from tests.optim_table import TABLE

SOAK = os.environ.get("MS_OPTIM_SOAK") == "1"
PROFILE = settings(
    max_examples=1500 if SOAK else 12,
    deadline=None,
    derandomize=not SOAK,  # CI: the same examples every run
    suppress_health_check=list(HealthCheck),
)
INFO = {info.name: info for info in TABLE}

# ---------------------------------------------------------------- helpers


def _host(x):
    if isinstance(x, np.ndarray):
        return x.copy()
    return np.asarray(np.from_dlpack(x)).copy()


def fingerprint(opt):
    """Every bit a refused or failed call must leave alone."""
    params = [(_host(p).tobytes(), str(p.dtype), tuple(p.shape)) for p in opt.parameters]
    state = []
    for p in opt.parameters:
        st_ = opt.state.get(p) or {}
        state.append({k: (_host(v).tobytes() if ms_optim.optimizer.is_array(v) and not isinstance(v, np.generic)
                          else repr(v)) for k, v in st_.items()})
    groups = [{k: (repr(_host(v).tobytes()) if ms_optim.optimizer.is_array(v) and not isinstance(v, np.generic)
                   else repr(v)) for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return params, state, groups


def _params(shapes=((3, 4), (5,), (), (2, 3)), dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _grads(params, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def _two_groups(cls, params, **kw):
    return cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], **kw)


CLASSIC = [(INFO[name].cls, INFO[name].configs[-1]) for name in INFO]
STAGED = [
    (ms_optim.Adafactor, dict(lr=0.01)),
    (ms_optim.Adafactor, dict(lr=0.01, weight_decay=0.1)),
    (ms_optim.Muon, dict(lr=0.02, momentum=0.9)),
    (ms_optim.Muon, dict(lr=0.02, momentum=0.9, nesterov=True)),
    (LAMB, dict(lr=0.01, weight_decay=0.1)),
]
ALL = CLASSIC + STAGED


def _shapes_for(cls):
    return ((3, 4), (4, 2), (2, 5)) if cls is ms_optim.Muon else ((3, 4), (5,), (), (2, 3))


def _ids(cases):
    return [f"{c.__name__}-{i}" for i, (c, _) in enumerate(cases)]


def _fresh(cls, kw, backend="eager"):
    params = _params(_shapes_for(cls))
    return _two_groups(cls, params, backend=backend, **kw), params


def _clean_run(cls, kw, steps, backend="eager"):
    opt, params = _fresh(cls, kw, backend)
    for k in range(steps):
        opt.step(_grads(params, k))
    return fingerprint(opt)


# ------------------------------------------------------- item 1: half-apply


class Boom(RuntimeError):
    pass


def _fail_on_call(monkeypatch, module, name, k, exc=Boom):
    """Make ``module.name`` raise ``exc`` on its k-th call (1-based), pass through otherwise."""
    real = getattr(module, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            raise exc("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.mark.parametrize("cls,kw", ALL, ids=_ids(ALL))
@pytest.mark.parametrize("k", [1, 2, 4])
def test_a_rule_failing_on_the_kth_tensor_changes_nothing(monkeypatch, cls, kw, k):
    opt, params = _fresh(cls, kw)
    opt.step(_grads(params, 0))
    before = fingerprint(opt)
    with monkeypatch.context() as m:
        calls = _fail_on_call(m, eager_mod, "run_eager", k)
        grads = _grads(params, 1)
        try:
            opt.step(grads)
        except Boom:
            pass
        else:
            assert calls["n"] < k, "the fault was not reached"
            return
    assert fingerprint(opt) == before
    opt.step(grads)  # the retry is the step a clean run takes
    for j in range(2, 3):
        opt.step(_grads(params, j))
    assert fingerprint(opt) == _clean_run(cls, kw, 3)


@pytest.mark.parametrize("cls,kw", ALL, ids=_ids(ALL))
@pytest.mark.parametrize("fn,k", [("sqrt", 2), ("multiply", 3), ("add", 5), ("subtract", 7), ("matmul", 3),
                                  ("clip", 2)])
def test_a_memory_error_in_a_numpy_function_changes_nothing(monkeypatch, cls, kw, fn, k):
    opt, params = _fresh(cls, kw)
    opt.step(_grads(params, 0))
    before = fingerprint(opt)
    grads = _grads(params, 1)
    real = getattr(np, fn)
    calls = {"n": 0}

    # ufuncs cannot be wrapped in place; the operators call them through ndarray methods,
    # so the fault goes into the namespace the rule sees (RuleNamespace wraps np) and np itself
    def wrapper(*a, **kw_):
        calls["n"] += 1
        if calls["n"] == k:
            raise MemoryError("injected")
        return real(*a, **kw_)

    with monkeypatch.context() as m:
        m.setattr(np, fn, wrapper)
        try:
            opt.step(grads)
            failed = False
        except MemoryError:
            failed = True
    if failed:
        assert fingerprint(opt) == before
        opt.step(grads)
    opt.step(_grads(params, 2))
    assert fingerprint(opt) == _clean_run(cls, kw, 3)


@pytest.mark.parametrize("cls,kw", ALL, ids=_ids(ALL))
def test_seterr_raise_and_warnings_as_errors_do_not_break_a_step(cls, kw):
    params = [p.astype(np.float32) for p in _params(_shapes_for(cls))]
    opt = _two_groups(cls, params, backend="eager", **kw)
    huge = [np.full(p.shape, 3e38, np.float32) for p in params]  # squares overflow float32
    ref = copy.deepcopy(opt)
    with np.errstate(all="ignore"):
        ref.step(huge)
    old = np.seterr(all="raise")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opt.step(huge)  # overflow gives inf (as the compiled kernels do), no FloatingPointError
    finally:
        np.seterr(**old)
    assert fingerprint(opt) == fingerprint(ref)


def test_a_param_made_read_only_after_construction_is_refused_before_any_write():
    params = _params()
    opt = _two_groups(ms_optim.Adam, params, lr=0.1)
    opt.step(_grads(params, 0))
    before = fingerprint(opt)
    params[3].flags.writeable = False
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[1\] is read-only"):
        opt.step(_grads(params, 1))
    assert fingerprint(opt) == before


def test_torch_tensors_that_require_grad_are_refused():
    torch = pytest.importorskip("torch")
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=r"params\[0\] is a torch tensor that requires grad.*detach"):
        ms_optim.SGD([w], lr=0.1)
    v = torch.ones(3, dtype=torch.float64)
    opt = ms_optim.SGD([v], lr=0.1)
    v.requires_grad_(True)
    with pytest.raises(ValueError, match=r"requires grad"):
        opt.step([torch.ones(3, dtype=torch.float64)])
    v.requires_grad_(False)
    opt.step([torch.ones(3, dtype=torch.float64)])
    assert torch.equal(v, torch.full((3,), 0.9, dtype=torch.float64))


def _cpu_backend():
    pytest.importorskip("numba")
    return ms_optim.engine.backend_for(np, "cpu")


def test_a_compiled_bucket_failing_after_another_was_written_changes_nothing(monkeypatch):
    backend = _cpu_backend()
    params = _params()
    opt = _two_groups(ms_optim.AdamW, params, lr=0.1, backend="cpu")  # two groups: two buckets
    before = fingerprint(opt)
    with monkeypatch.context() as m:
        _fail_on_call(m, type(backend), "prepare_kernel", 2)
        with pytest.raises(Boom):
            opt.step(_grads(params, 0))
    assert fingerprint(opt) == before
    opt.step(_grads(params, 0))
    clean = _two_groups(ms_optim.AdamW, [p.copy() for p in _params()], lr=0.1, backend="cpu")
    clean.step(_grads(clean.parameters, 0))
    assert fingerprint(opt) == fingerprint(clean)


def _recording_saves(monkeypatch) -> list:
    saved = []
    real = eager_mod.StepWrites.save
    monkeypatch.setattr(eager_mod.StepWrites, "save", lambda self, a: (saved.append(a), real(self, a)))
    return saved


def test_a_compiled_classic_step_copies_nothing(monkeypatch):
    """Every bucket is prepared (compiled, its table built) before any is launched: nothing to journal."""
    _cpu_backend()
    params = _params()
    saved = _recording_saves(monkeypatch)
    for opt in (ms_optim.AdamW([p.copy() for p in params], lr=0.1, backend="cpu"),  # one bucket
                _two_groups(ms_optim.AdamW, params, lr=0.1, backend="cpu")):  # two buckets
        for k in range(4):  # the full path, then the kept plan
            opt.step(_grads(opt.parameters, k))
        assert saved == [], "a classic step journals nothing"


def test_a_warm_step_failing_in_its_last_bucket_changes_nothing(monkeypatch):
    """After every bucket has run once, a failure in the last bucket still undoes the first's writes."""
    backend = _cpu_backend()
    params = _params()
    opt = _two_groups(ms_optim.AdamW, params, lr=0.1, backend="cpu")
    opt.step(_grads(params, 0))
    opt.step(_grads(params, 1))  # warm: every kernel built, every bucket run, the plan kept
    before = fingerprint(opt)
    with monkeypatch.context() as m:
        _fail_on_call(m, cpu_mod.Program, "bind", 2)
        with pytest.raises(Boom):
            opt.step(_grads(params, 2))
    assert fingerprint(opt) == before
    opt.step(_grads(params, 2))  # and the kept plan still serves
    clean = _two_groups(ms_optim.AdamW, [p.copy() for p in _params()], lr=0.1, backend="cpu")
    for k in range(3):
        clean.step(_grads(clean.parameters, k))
    assert fingerprint(opt) == fingerprint(clean)


def test_auto_cpu_compile_warning_as_error_changes_nothing(monkeypatch):
    """'auto' warns and falls back to eager when a compile fails: under -W error that raises mid-step."""
    backend = _cpu_backend()
    auto = backend.auto_variant
    monkeypatch.setattr(auto, "min_elements", 1)
    monkeypatch.setattr(auto, "_failed", set())

    def broken(*a, **k):
        raise RuntimeError("numba is broken")

    params = _params(((40,), (30,)), np.float32)
    opt = ms_optim.Adam([{"params": params[:1]}, {"params": params[1:], "amsgrad": True}], lr=0.1)
    before = fingerprint(opt)
    calls = {"n": 0}
    real_kernel = type(backend).kernel

    def second_fails(self, rule, static, *a, **k):
        calls["n"] += 1
        if calls["n"] >= 2:
            broken()
        return real_kernel(self, rule, static, *a, **k)

    monkeypatch.setattr(type(backend), "kernel", second_fails)
    monkeypatch.setattr(backend, "_kernels", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="running .* eagerly"):
            opt.step(_grads(params, 0))
    assert fingerprint(opt) == before


def test_sparse_adam_is_all_or_nothing(monkeypatch):
    params = [np.ones((4, 3)), np.ones((5, 2))]
    opt = ms_optim.SparseAdam([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}], lr=0.1, backend="eager")
    grads = [(np.array([0, 2]), np.ones((2, 3))), (np.array([1]), np.ones((1, 2)))]
    before = fingerprint(opt)
    with monkeypatch.context() as m:
        _fail_on_call(m, eager_mod, "run_eager", 2)
        with pytest.raises(Boom):
            opt.step(grads)
    assert fingerprint(opt) == before
    opt.step(grads)
    assert opt.state[params[0]]["step"] == opt.state[params[1]]["step"] == 1


def test_lbfgs_restores_params_when_its_math_raises(monkeypatch):
    w = np.array([1.0, -2.0, 3.0])
    opt = ms_optim.LBFGS([w], lr=1, max_iter=5)
    before = fingerprint(opt)

    def closure():
        return float(w @ w), [2 * w]

    with monkeypatch.context() as m:
        _fail_on_call(m, np, "concat", 3, MemoryError)
        try:
            opt.step(closure)
        except MemoryError:
            assert fingerprint(opt) == before


# ----------------------------------------------------- item 2: NumPy scalars


@pytest.mark.parametrize("value", [np.bool_(False), np.bool_(True), np.asarray(True)])
def test_numpy_bools_are_flags(value):
    opt = ms_optim.Adam([np.ones(2)], amsgrad=value)
    opt.step([np.ones(2)])
    assert ("max_exp_avg_sq" in opt.state[opt.parameters[0]]) == bool(value)


@pytest.mark.parametrize("lr", [np.float32(0.01), np.float64(0.01), np.int64(1), np.float16(0.5)])
def test_numpy_scalar_hyper_parameters_keep_their_type_through_state_dict(lr):
    opt = ms_optim.SGD([np.ones(2)], lr=lr, momentum=np.float32(0.5), nesterov=np.bool_(False))
    sd = opt.state_dict()
    assert type(sd["param_groups"][0]["lr"]) is type(lr)
    new = ms_optim.SGD([np.ones(2)], lr=0.5)
    new.load_state_dict(sd)
    assert type(new.param_groups[0]["lr"]) is type(lr)
    assert type(new.param_groups[0]["nesterov"]) is np.bool_
    new.step([np.ones(2)])


def test_numpy_scalar_steps_and_host_state_load():
    opt = ms_optim.NAdam([np.ones(2)])
    opt.step([np.ones(2)])
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["step"] = np.int64(1)
    sd["state"][0]["mu_product"] = np.float32(sd["state"][0]["mu_product"])
    opt.load_state_dict(sd)
    assert opt.state[opt.parameters[0]]["step"] == 1


# --------------------------------------------------- item 4: corrupt loads


def _saved(cls=ms_optim.Adam, **kw):
    params = _params()
    opt = _two_groups(cls, params, **kw)
    opt.step(_grads(params, 0))
    return opt, copy.deepcopy(opt.state_dict())


def _refused(opt, sd, exc, match):
    before = fingerprint(opt)
    with pytest.raises(exc, match=match):
        opt.load_state_dict(sd)
    assert fingerprint(opt) == before


def _set(sd, pid, key, value):
    sd["state"][pid][key] = value
    return sd


BAD_ARRAYS = [
    ("object", lambda a: a.astype(object), TypeError, "dtype object"),
    ("complex", lambda a: a.astype(np.complex128), TypeError, "dtype complex128"),
    ("datetime", lambda a: np.zeros(a.shape, "datetime64[s]"), TypeError, "dtype datetime64"),
    ("int", lambda a: a.astype(np.int64), TypeError, "dtype int64"),
    ("bool", lambda a: a > 0, TypeError, "dtype bool"),
    ("nan", lambda a: np.where(a == a.flat[0], np.nan, a), ValueError, "NaN or infinite"),
    ("inf", lambda a: np.full(a.shape, -np.inf), ValueError, "NaN or infinite"),
    ("beyond-float32", lambda a: np.full(a.shape, 1e300), ValueError, "beyond float32's range"),
]


@pytest.mark.parametrize("name,change,exc,match", BAD_ARRAYS, ids=[b[0] for b in BAD_ARRAYS])
def test_state_arrays_must_be_finite_real_floating(name, change, exc, match):
    if name == "beyond-float32":
        params = [p.astype(np.float32) for p in _params()]
        opt = _two_groups(ms_optim.Adam, params)
        opt.step(_grads(params, 0))
        sd = copy.deepcopy(opt.state_dict())
    else:
        opt, sd = _saved()
    _refused(opt, _set(sd, 0, "exp_avg", change(sd["state"][0]["exp_avg"])), exc,
             r"state_dict\['state'\]\[0\]\['exp_avg'\].*" + match)


SECOND_MOMENTS = [
    (ms_optim.Adam, dict(amsgrad=True), "max_exp_avg_sq"),
    (ms_optim.Adam, {}, "exp_avg_sq"),
    (ms_optim.Adamax, {}, "exp_inf"),
    (ms_optim.Adagrad, {}, "sum"),
    (ms_optim.Adadelta, {}, "acc_delta"),
    (ms_optim.RMSprop, {}, "square_avg"),
    (ms_optim.Rprop, {}, "step_size"),
    (ms_optim.RAdam, {}, "exp_avg_sq"),
    (ms_optim.NAdam, {}, "exp_avg_sq"),
    (ms_optim.Adafactor, {}, "row_var"),
    (LAMB, {}, "exp_avg_sq"),
]


@pytest.mark.parametrize("cls,kw,key", SECOND_MOMENTS, ids=[f"{c.__name__}-{k}" for c, _, k in SECOND_MOMENTS])
def test_negative_second_moments_are_refused(cls, kw, key):
    opt, sd = _saved(cls, **kw)
    bad = -np.abs(sd["state"][0][key]) - 1.0
    _refused(opt, _set(sd, 0, key, bad), ValueError, rf"\['{key}'\] has negative entries")


@pytest.mark.parametrize("step,exc", [("3", TypeError), (True, TypeError), (np.bool_(True), TypeError),
                                      (1e308, ValueError), (-1, ValueError), (2.5, ValueError),
                                      (float("nan"), ValueError), (None, TypeError), (np.ones(2), ValueError)])
def test_bad_steps_are_refused(step, exc):
    opt, sd = _saved()
    _refused(opt, _set(sd, 0, "step", step), exc, r"\['step'\]")


@pytest.mark.parametrize("cls,key,value", [
    (ms_optim.NAdam, "mu_product", 0.0), (ms_optim.NAdam, "mu_product", 1.5), (ms_optim.NAdam, "mu_product", -0.1),
    (ms_optim.ASGD, "eta", -0.01), (ms_optim.ASGD, "mu", 0.0), (ms_optim.ASGD, "mu", 2.0),
])
def test_host_state_outside_its_domain_is_refused(cls, key, value):
    opt, sd = _saved(cls)
    _refused(opt, _set(sd, 0, key, value), ValueError, rf"\['{key}'\] must be in")


def test_nadam_mu_product_zero_loads_when_beta1_is_zero():
    opt, sd = _saved(ms_optim.NAdam, betas=(0.0, 0.999))
    assert sd["state"][0]["mu_product"] == 0.0
    opt.load_state_dict(sd)


def test_duplicate_parameter_ids_are_refused():
    opt, sd = _saved()
    sd["param_groups"][1]["params"][0] = sd["param_groups"][0]["params"][0]
    _refused(opt, sd, ValueError, r"lists parameter id 0 twice")


@pytest.mark.parametrize("other", [ms_optim.SGD, ms_optim.RMSprop, ms_optim.Adagrad])
def test_another_optimizers_state_is_refused_even_without_state(other):
    params = _params()
    theirs = _two_groups(other, params, lr=0.1)  # no step taken: an empty 'state'
    opt, _ = _saved(ms_optim.Adam)
    _refused(opt, theirs.state_dict(), ValueError, r"lacks .*: it is not the state of a Adam")


def test_torch_state_dicts_still_load():
    torch = pytest.importorskip("torch")
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    topt = torch.optim.Adam([w], lr=0.1, amsgrad=True)
    w.grad = torch.ones(3, dtype=torch.float64)
    topt.step()
    opt = ms_optim.Adam([np.ones(3)], lr=0.1, amsgrad=True)
    opt.load_state_dict(topt.state_dict())
    assert opt.state[opt.parameters[0]]["step"] == 1


# ------------------------------------------------- item 5: cross-device loads


def test_state_on_another_device_moves_to_the_params_device():
    xps = pytest.importorskip("array_api_strict")
    other = xps.Device("device1")
    src = [xps.asarray(np.ones(3), device=other)]
    opt = ms_optim.Adam(src, lr=0.1)
    opt.step([xps.asarray(np.ones(3), device=other)])
    sd = opt.state_dict()
    for dst, xp in ((xps.asarray(np.ones(3)), xps), (np.ones(3), np)):
        new = ms_optim.Adam([dst], lr=0.1)
        new.load_state_dict(sd)
        st_ = new.state[dst]
        assert ms_optim.optimizer.device(st_["exp_avg"]) == ms_optim.optimizer.device(dst)
        new.step([xp.asarray(np.ones(3))])


# ------------------------------------------- item 7: hyper-parameters and params


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_sgd_refuses_non_finite_dampening(value):
    with pytest.raises(ValueError, match=r"Invalid dampening value: .* \(must be finite\)"):
        ms_optim.SGD([np.ones(2)], lr=0.1, momentum=0.9, dampening=value)


@pytest.mark.parametrize("cls,kw,match", [
    (ms_optim.SGD, dict(momentum=1.5), r"Invalid momentum value: 1\.5 \(must be at most 1.*diverges"),
    (ms_optim.RMSprop, dict(momentum=1.5), r"Invalid momentum value: 1\.5"),
    (ms_optim.RMSprop, dict(alpha=1.5), r"Invalid alpha value: 1\.5 \(must be at most 1.*NaN"),
    (ms_optim.Muon, dict(momentum=1.5), r"momentum should be <= 1 but is: 1\.5"),
])
def test_values_that_can_only_diverge_are_refused_with_the_reason(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls([np.ones((2, 2))], lr=0.1, **kw)
    opt = cls([np.ones((2, 2))], lr=0.1)
    before = fingerprint(opt)
    key, value = next(iter(kw.items()))
    opt.param_groups[0][key] = value  # written after construction: refused at the step
    with pytest.raises(ValueError, match=match):
        opt.step([np.ones((2, 2))])
    opt.param_groups[0].pop(key)
    assert fingerprint(opt)[:2] == before[:2]


def test_a_deleted_group_key_is_named():
    opt = ms_optim.SGD([np.ones(2)], lr=0.1, momentum=0.9)
    before = fingerprint(opt)
    del opt.param_groups[0]["dampening"]
    with pytest.raises(ValueError, match=r"param_groups\[0\] has no 'dampening' entry"):
        opt.step([np.ones(2)])
    assert fingerprint(opt)[:2] == before[:2]


def test_arrays_appended_to_a_group_are_checked():
    w = np.ones(2)
    opt = ms_optim.SGD([w], lr=0.1)
    opt.param_groups[0]["params"].append(np.ones(2, dtype=np.int64))
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[1\] has dtype int64"):
        opt.step([np.ones(2), np.ones(2)])
    opt.param_groups[0]["params"][1] = w  # the same array twice
    with pytest.raises(ValueError, match=r"\[1\] is param_groups\[0\]\['params'\]\[0\] again"):
        opt.step([np.ones(2), np.ones(2)])
    np.testing.assert_array_equal(w, np.ones(2))
    v = np.ones(3)
    opt.param_groups[0]["params"][1] = v  # a good one: it trains
    opt.step([np.ones(2), np.ones(3)])
    np.testing.assert_array_equal(v, np.full(3, 0.9))


def test_overlapping_views_are_refused_and_interleaved_ones_accepted():
    base = np.ones(10)
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
        ms_optim.SGD([base[:6], base[4:]], lr=0.1)
    with pytest.raises(ValueError, match=r"share memory"):
        ms_optim.SGD([{"params": [base[:6]]}, {"params": [base[5:]]}], lr=0.1)
    opt = ms_optim.SGD([base[::2], base[1::2]], lr=0.1)  # disjoint though their bounds overlap
    opt.step([np.ones(5), np.ones(5)])
    np.testing.assert_array_equal(base, np.full(10, 0.9))
    opt.param_groups[0]["params"].append(base[3:5])
    with pytest.raises(ValueError, match=r"share memory"):
        opt.step([np.ones(5), np.ones(5), np.ones(2)])


def test_masked_arrays_are_refused():
    m = np.ma.masked_array(np.ones(3), mask=[0, 1, 0])
    with pytest.raises(TypeError, match=r"params\[0\] is a MaskedArray"):
        ms_optim.SGD([m], lr=0.1)
    opt = ms_optim.SGD([np.ones(3)], lr=0.1)
    with pytest.raises(TypeError, match=r"grads\[0\] is a MaskedArray"):
        opt.step([m])


def test_a_gradient_overflowing_the_params_dtype_is_refused():
    w = np.ones(3, dtype=np.float32)
    opt = ms_optim.SGD([w], lr=0.1)
    with pytest.raises(ValueError, match=r"grads\[0\] has finite float64 values beyond the range of .* float32"):
        opt.step([np.array([1.0, 1e39, 2.0])])
    np.testing.assert_array_equal(w, np.ones(3, dtype=np.float32))
    opt.step([np.array([1.0, np.inf, 2.0])])  # an inf gradient is the user's own: passed on, as torch does
    assert np.isinf(w[1])


# ----------------------------------------------------- property-based tests


def _perturbed(info, config, draw):
    """A random valid configuration near one of the table's (hyper-parameters drawn in valid ranges)."""
    kw = dict(config)
    hp = info.hyperparams(config)
    kw["lr"] = draw(st.floats(1e-4, 0.05))
    if "weight_decay" in hp:
        kw["weight_decay"] = draw(st.sampled_from([0.0, 0.0, 1e-3, 0.1]))
    if "eps" in hp and isinstance(hp["eps"], float):
        kw["eps"] = draw(st.sampled_from([1e-8, 1e-6, 1e-3]))
    if "maximize" in hp:
        kw["maximize"] = draw(st.booleans())
    if "momentum" in hp and not kw.get("nesterov") and hp["momentum"] != 0:
        kw["momentum"] = draw(st.floats(0.1, 0.99))
    if "betas" in hp:
        # schedule-free recovers x from y by dividing by beta1: it needs beta1 > 0
        low = 0.05 if info.name == "ScheduleFreeAdamW" else 0.0
        kw["betas"] = (draw(st.floats(low, 0.95)), draw(st.floats(0.5, 0.999)))
    return kw


SHAPE = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)


@st.composite
def problems(draw):
    info = draw(st.sampled_from(TABLE))
    config = _perturbed(info, draw(st.sampled_from(info.configs)), draw)
    shapes = draw(st.lists(SHAPE, min_size=1, max_size=5))
    cut = draw(st.integers(1, len(shapes)))
    steps = draw(st.integers(1, 4))
    present = draw(st.lists(st.lists(st.booleans(), min_size=len(shapes), max_size=len(shapes)),
                            min_size=steps, max_size=steps))
    dtype = draw(st.sampled_from([np.float64, np.float64, np.float32]))
    seed = draw(st.integers(0, 2**16))
    override = draw(st.sampled_from([{}, info.group_overrides]))
    return info, config, shapes, cut, present, dtype, seed, override


@PROFILE
@given(problems())
def test_random_problems_match_the_float64_references(problem):
    info, config, shapes, cut, present, dtype, seed, override = problem
    if info.shapes and any(len(s) != 2 for s in shapes):
        shapes = [(2, 3)] * len(shapes)
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    groups = [{"params": params[:cut]}] + ([{"params": params[cut:], **override}] if cut < len(params) else [])
    opt = info.cls(groups, **config)
    hp0 = info.hyperparams(config)
    hps = [hp0] * cut + [{**hp0, **override}] * (len(params) - cut)
    refs = [p.astype(np.float64) for p in params]
    states = [{} for _ in params]
    for k, mask in enumerate(present):
        grads = [rng.standard_normal(s).astype(dtype) if on else None for s, on in zip(shapes, mask)]
        opt.step(grads)
        for i, g in enumerate(grads):
            if g is not None:  # _step_index: the group's steps before this one (schedule-free counts per group)
                refs[i] = info.reference(refs[i], g.astype(np.float64), states[i], {**hps[i], "_step_index": k})
    for i, (p, r) in enumerate(zip(params, refs)):
        assert p.dtype == dtype and p.shape == r.shape
        if dtype == np.float64:
            np.testing.assert_allclose(p, r, rtol=1e-9, atol=1e-12, err_msg=f"param {i}")
        elif info.name != "Rprop":  # float32 sign flips near 0 legitimately part Rprop from float64
            np.testing.assert_allclose(p, r, rtol=2e-3, atol=2e-3, err_msg=f"param {i}")
        stepped = sum(m[i] for m in present)
        if opt.tracks_step and stepped:
            assert opt.state[p]["step"] == stepped


def _bad_values(info):
    """(group key, bad value) pairs from the table's own error inputs, plus generic type errors."""
    out = []
    for kwargs, _, _ in info.errors:
        for k, v in kwargs.items():
            if k != "backend" and k in info.hyperparams({}):
                out.append((k, v))
    hp = info.hyperparams({})
    for k, v in hp.items():
        if k != "params":
            out += [(k, "x"), (k, None), (k, [1.0, 2.0, 3.0]), (k, np.ones(2))]
    return out


@PROFILE
@given(st.data())
def test_random_invalid_inputs_are_refused_and_change_nothing(data):
    info = data.draw(st.sampled_from(TABLE))
    config = data.draw(st.sampled_from(info.configs))
    shapes = [(3, 2), (4,), ()] if not info.shapes else [(2, 3), (3, 3), (2, 2)]
    params = _params(shapes)
    opt = info.cls([{"params": params[:2]}, {"params": params[2:], **info.group_overrides}], **config)
    opt.step(_grads(params, 0))
    before = fingerprint(opt)
    kind = data.draw(st.sampled_from(["hyper", "grad", "load"]))
    if kind == "hyper":
        key, value = data.draw(st.sampled_from(_bad_values(info)))
        gi = data.draw(st.integers(0, 1))
        old = opt.param_groups[gi][key]
        opt.param_groups[gi][key] = value
        try:
            opt.step(_grads(params, 1))
        except (TypeError, ValueError) as err:
            # torch's words for some arguments (Muon's "weight decay should be >= 0", "Adjust learning rate function")
            label = {"lr": "learning rate", "eps": "epsilon", "betas": "beta", "etas": "eta",
                     "weight_decay": "weight decay", "adjust_lr_fn": "learning rate function"}.get(key, key)
            message = str(err).lower()
            # the argument is named (torch's words for some), or the rule two of them break together
            assert key in message or label.lower() in message or "nesterov" in message, message
            opt.param_groups[gi][key] = old
            assert fingerprint(opt) == before
        else:  # some values are valid for some configs (momentum=0.0 etc.): then it must have stepped
            opt.param_groups[gi][key] = old
        return
    if kind == "grad":
        i = data.draw(st.integers(0, len(params) - 1))
        grads = _grads(params, 1)
        grads[i] = data.draw(st.sampled_from([
            np.ones((7, 7)), np.ones(params[i].shape, dtype=np.int32), "grad", [1.0],
            np.ones(params[i].shape, dtype=np.complex128), np.full(params[i].shape, 1e300, np.float64).astype(object),
        ]))
        with pytest.raises((TypeError, ValueError), match=rf"grads\[{i}\]"):
            opt.step(grads)
        assert fingerprint(opt) == before
        return
    sd = copy.deepcopy(opt.state_dict())
    if not any(sd["state"].values()):  # SGD without momentum keeps no state: nothing to corrupt
        return
    pid = data.draw(st.sampled_from([k for k, v in sd["state"].items() if v]))
    keys = [k for k in sd["state"][pid]]
    key = data.draw(st.sampled_from(keys))
    value = sd["state"][pid][key]
    if isinstance(value, np.ndarray):
        bad = data.draw(st.sampled_from([value.astype(object), value.astype(np.complex64), np.ones((9, 9)),
                                         np.full(value.shape, np.nan), "array"]))
    else:
        # 1e308 is out of range for a step count or ASGD's mu, but a valid (if absurd) ASGD eta
        bad = data.draw(st.sampled_from(["3", True, -1, float("inf"), None] + ([] if key == "eta" else [1e308])))
    sd["state"][pid][key] = bad
    with pytest.raises((TypeError, ValueError), match=rf"\[{pid}\]\['{key}'\]"):
        opt.load_state_dict(sd)
    assert fingerprint(opt) == before


def test_soak_profile_is_selected_by_the_environment():
    assert PROFILE.max_examples == (1500 if SOAK else 12)
    assert math.isfinite(PROFILE.max_examples)


def _warm_adafactor():
    opt = ms_optim.Adafactor(_params(), lr=0.1, backend="cpu")  # a bucket per shape (its RMS scale differs)
    opt.step(_grads(opt.parameters, 0))
    opt.step(_grads(opt.parameters, 1))  # warm: every kernel built, every bucket run
    return opt


def test_a_warm_adafactor_step_makes_four_fused_passes(monkeypatch):
    backend = _cpu_backend()
    opt = _warm_adafactor()
    calls = _fail_on_call(monkeypatch, type(backend), "prepare_kernel", 0)  # counts, never fails
    opt.step(_grads(opt.parameters, 2))
    assert calls["n"] == 8, "two fused passes for each of the four buckets: the injections below hit each pass"


@pytest.mark.parametrize("failing_call", range(2, 9))
def test_a_warm_staged_step_failing_in_a_later_bucket_changes_nothing(monkeypatch, failing_call):
    """Earlier buckets of a warm Adafactor step have written; then a later pass fails."""
    backend = _cpu_backend()
    opt = _warm_adafactor()
    before = fingerprint(opt)
    with monkeypatch.context() as m:
        _fail_on_call(m, type(backend), "prepare_kernel", failing_call)
        with pytest.raises(Boom):
            opt.step(_grads(opt.parameters, 2))
    assert fingerprint(opt) == before
