"""ms_optim.ops: MindSpore's ApplyAdamWithAmsgradV2 and the optimizers' functional forms."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import ms_optim.ops
from ms_optim.engine.eager import RuleNamespace, run_eager
from ms_optim.engine.tracer import trace
from ms_optim.ops import amsgrad_v2_rule, apply_adam_with_amsgrad_v2
from tests import reference
from tests.conftest import to_numpy, to_xp
from tests.optim_table import TABLE

# ------------------------------------------------------------ ApplyAdamWithAmsgradV2

#: MindSpore's documentation example: inputs, then the printed result
DOC_INPUTS = dict(
    var=[[0.2, 0.2], [0.2, 0.2]],
    m=[[0.1, 0.2], [0.4, 0.3]],
    v=[[0.2, 0.1], [0.3, 0.4]],
    vhat=[[0.1, 0.2], [0.6, 0.2]],
    grad=[[0.4, 0.2], [0.2, 0.3]],
)
DOC_SCALARS = dict(beta1_power=0.9, beta2_power=0.999, lr=0.01, beta1=0.8, beta2=0.999, epsilon=1e-8)
DOC_PRINTED_VAR = np.array([[0.19886853, 0.1985858], [0.19853032, 0.19849943]])


def doc_arrays(xp, dtype_name="float32"):
    dtype = getattr(xp, dtype_name)
    return {k: to_xp(xp, np.array(v), dtype) for k, v in DOC_INPUTS.items()}


def call(a, **scalars):
    s = {**DOC_SCALARS, **scalars}
    return apply_adam_with_amsgrad_v2(a["var"], a["m"], a["v"], a["vhat"], s["beta1_power"], s["beta2_power"],
                                      s["lr"], s["beta1"], s["beta2"], s["epsilon"], a["grad"])


def test_reproduces_mindsporés_documented_example(xp):
    a = doc_arrays(xp)
    out = call(a)
    assert all(o is a[k] for o, k in zip(out, ("var", "m", "v", "vhat")))  # the same arrays, in place
    assert all(o.dtype == xp.float32 for o in out)
    # NumPy prints the shortest decimals that round-trip: equal float32 values print alike
    np.testing.assert_array_equal(to_numpy(a["var"]).astype(np.float32), DOC_PRINTED_VAR.astype(np.float32))
    # the moments, worked out by hand: m = 0.8 m + 0.2 g, v = 0.999 v + 0.001 g^2, vhat = max(vhat, v)
    np.testing.assert_allclose(to_numpy(a["m"]), [[0.16, 0.2], [0.36, 0.3]], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(a["v"]), [[0.19996, 0.09994], [0.29974, 0.39969]], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(a["vhat"]), [[0.19996, 0.2], [0.6, 0.39969]], rtol=1e-6)


def amsgrad_v2_reference(var, m, v, vhat, b1p, b2p, lr, b1, b2, eps, g):
    """The documented formula in float64, written out plainly."""
    lr_t = lr * np.sqrt(1 - b2p) / (1 - b1p)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    vhat = np.maximum(vhat, v)
    return var - lr_t * m / (np.sqrt(vhat) + eps), m, v, vhat


@pytest.mark.parametrize("dtype_name,rtol", [("float64", 1e-13), ("float32", 2e-6), ("float16", 2e-3)])
def test_several_steps_track_the_float64_formula_and_keep_dtype(xp, dtype_name, rtol):
    if not hasattr(xp, dtype_name):
        pytest.skip(f"{xp.__name__} has no {dtype_name}")
    rng = np.random.default_rng(0)
    shape = (3, 5)
    ref = [rng.standard_normal(shape).astype(dtype_name).astype(np.float64), np.zeros(shape), np.zeros(shape),
           np.zeros(shape)]
    dtype = getattr(xp, dtype_name)
    ours = [to_xp(xp, r, dtype) for r in ref]
    b1, b2, lr, eps = 0.9, 0.99, 0.01, 1e-3

    def rounded(x):  # the op takes its scalars in var's dtype (MindSpore's implicit conversion)
        return float(np.asarray(x, dtype=dtype_name))

    for t in range(1, 6):
        g = rng.standard_normal(shape).astype(dtype_name).astype(np.float64)
        ref = list(amsgrad_v2_reference(*ref, *map(rounded, (b1**t, b2**t, lr, b1, b2, eps)), g))
        apply_adam_with_amsgrad_v2(*ours, b1**t, b2**t, lr, b1, b2, eps, to_xp(xp, g, dtype))
    for o, r in zip(ours, ref):
        assert o.dtype == dtype
        np.testing.assert_allclose(to_numpy(o), r, rtol=rtol, atol=rtol)


def test_epsilon_is_not_scaled_unlike_torchs_amsgrad():
    """The op equals torch's Adam(amsgrad=True) step with eps / sqrt(1 - beta2^t), not with eps."""
    rng = np.random.default_rng(1)
    t, b1, b2, lr, eps = 3, 0.9, 0.999, 0.01, 1.0  # a large eps makes the placement visible
    p, m, g = rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal(4)
    v = np.abs(rng.standard_normal(4))
    vhat = v + 0.5

    def torch_adam(eps_torch):
        state = dict(step=t - 1, exp_avg=m.copy(), exp_avg_sq=v.copy(), max_exp_avg_sq=vhat.copy())
        hp = dict(lr=lr, betas=(b1, b2), eps=eps_torch, weight_decay=0.0, amsgrad=True)
        return reference.adam(p.copy(), g, state, hp)

    var = p.copy()
    apply_adam_with_amsgrad_v2(var, m.copy(), v.copy(), vhat.copy(), b1**t, b2**t, lr, b1, b2, eps, g)
    np.testing.assert_allclose(var, torch_adam(eps / np.sqrt(1 - b2**t)), rtol=1e-12)
    # with the same eps the steps differ by far more than rounding: our eps weighs 18x more
    ours, theirs = var - p, torch_adam(eps) - p
    assert np.all(np.abs(ours) < 0.8 * np.abs(theirs))


def test_scalars_are_converted_to_vars_dtype_first():
    # 0.999 is 0.99899995 in float32: 1 - beta2_power is then 4.7e-5 relative larger,
    # which MindSpore's published float32 result shows (float64 scalars miss it by an ulp)
    a = doc_arrays(np)
    call(a)
    b = doc_arrays(np)
    call(b, beta2_power=float(np.float32(0.999)), lr=float(np.float32(0.01)), beta1_power=float(np.float32(0.9)),
         beta1=float(np.float32(0.8)), beta2=float(np.float32(0.999)), epsilon=float(np.float32(1e-8)))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_zero_dim_and_batched_hyper_parameters(xp):
    rng = np.random.default_rng(2)
    shape = (3, 2, 4)
    init = [rng.standard_normal(shape), rng.standard_normal(shape), np.abs(rng.standard_normal(shape)),
            np.abs(rng.standard_normal(shape))]
    g = rng.standard_normal(shape)
    lr, b1p, b2p = np.array([0.1, 0.01, 0.001]), np.array([0.9, 0.81, 0.729]), np.array([0.99, 0.98, 0.97])
    arrays = [to_xp(xp, x.copy()) for x in init]  # to_xp may hand back its argument itself
    apply_adam_with_amsgrad_v2(*arrays, to_xp(xp, b1p), to_xp(xp, b2p), to_xp(xp, lr), 0.9, 0.99, 1e-8,
                               to_xp(xp, g))
    for i in range(3):  # each leading index with its own lr and beta powers
        want = amsgrad_v2_reference(*(x[i] for x in init), b1p[i], b2p[i], lr[i], 0.9, 0.99, 1e-8, g[i])
        for o, w in zip(arrays, want):
            np.testing.assert_allclose(to_numpy(o)[i], w, rtol=1e-13)
    # a 0-d var and 0-d array hyper-parameters
    arrays = [to_xp(xp, np.array(x[0, 0, 0])) for x in init]
    apply_adam_with_amsgrad_v2(*arrays, to_xp(xp, np.array(0.9)), 0.99, to_xp(xp, np.array(0.1)), 0.9, 0.99,
                               1e-8, to_xp(xp, np.array(g[0, 0, 0])))
    want = amsgrad_v2_reference(*(x[0, 0, 0] for x in init), 0.9, 0.99, 0.1, 0.9, 0.99, 1e-8, g[0, 0, 0])
    for o, w in zip(arrays, want):
        assert o.shape == ()
        np.testing.assert_allclose(to_numpy(o), w, rtol=1e-13)


def test_a_float64_gradient_is_cast_to_vars_dtype(xp):
    a = doc_arrays(xp)
    a["grad"] = to_xp(xp, np.array(DOC_INPUTS["grad"]))
    call(a)
    assert a["var"].dtype == xp.float32
    np.testing.assert_array_equal(to_numpy(a["var"]).astype(np.float32), DOC_PRINTED_VAR.astype(np.float32))


def _bad_calls(xp):
    import array_api_strict

    other = array_api_strict if xp is np else np
    f32 = xp.float32
    ro = np.zeros((2, 2), dtype=np.float32)
    ro.flags.writeable = False
    cases = [
        (dict(var=to_xp(xp, np.zeros((2, 2)), xp.int64)), {}, TypeError, r"var has dtype \S*int64"),
        (dict(var=[[0.2, 0.2], [0.2, 0.2]]), {}, TypeError, r"var must be an array, got list"),
        (dict(m=to_xp(xp, np.zeros((2, 2)), xp.float64)), {}, TypeError, r"m has dtype \S*float64, var \S*float32"),
        (dict(vhat=to_xp(xp, np.zeros((2, 3)), f32)), {}, ValueError, r"vhat has shape \(2, 3\), var \(2, 2\)"),
        (dict(v=other.asarray(np.zeros((2, 2), dtype=np.float32))), {}, TypeError, r"v is not an array of var's"),
        (dict(grad=to_xp(xp, np.zeros((2, 2)), xp.int32)), {}, TypeError, r"grad has dtype \S*int32"),
        (dict(grad=to_xp(xp, np.zeros(4), f32)), {}, ValueError, r"grad has shape \(4,\)"),
        ({}, dict(lr="0.01"), TypeError, r"lr must be a real number, got str"),
        ({}, dict(beta1=True), TypeError, r"beta1 must be a real number, got bool"),
        ({}, dict(epsilon=to_xp(xp, np.array(1), xp.int64)), TypeError, r"epsilon has dtype \S*int64"),
        ({}, dict(beta1=to_xp(xp, np.array([0.8, 0.8]))), ValueError, r"beta1 must be a number or a 0-d array"),
        ({}, dict(lr=to_xp(xp, np.array([0.1, 0.1, 0.1]))), ValueError, r"leading dimensions.*lr \(3,\)"),
        ({}, dict(lr=to_xp(xp, np.array([0.1, 0.1])), beta1_power=to_xp(xp, np.array([[0.9, 0.9], [0.9, 0.9]]))),
         ValueError, r"must all have the shape"),
        ({}, dict(beta1_power=1.0), ValueError, r"beta1_power must not be 1"),
        ({}, dict(beta2_power=1.5), ValueError, r"beta2_power must be at most 1, got 1\.5"),
    ]
    if xp is np:
        cases.append((dict(var=ro), {}, ValueError, r"var is read-only"))
    return cases


def test_bad_input_raises_before_anything_changes(xp):
    for arrays, scalars, exc, match in _bad_calls(xp):
        a = {**doc_arrays(xp), **arrays}
        before = {k: (to_numpy(v) if hasattr(v, "shape") else v) for k, v in a.items()}
        with pytest.raises(exc, match=match):
            call(a, **scalars)
        for k, v in a.items():
            if hasattr(v, "shape"):
                np.testing.assert_array_equal(to_numpy(v), before[k], err_msg=f"{k} changed ({match})")


@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
def test_the_rule_traces_to_the_same_numbers(xp, dtype_name):
    scalars = dict(lr_t=0.003, beta1=0.8, beta2=0.999, epsilon=1e-8)
    names = ("var", "grad", "m", "v", "vhat")
    graph = trace(amsgrad_v2_rule, names, scalars)
    rng = np.random.default_rng(4)
    dtype = getattr(xp, dtype_name)
    arrays = [to_xp(xp, np.abs(rng.standard_normal(9)) + 0.1, dtype) for _ in names]
    direct = [xp.asarray(a, copy=True) for a in arrays]
    run_eager(amsgrad_v2_rule, direct, 4, scalars, {}, xp)
    traced = graph.evaluate(arrays, scalars, RuleNamespace(xp))
    for got, want in zip(traced, [direct[0], *direct[2:]]):
        np.testing.assert_array_equal(to_numpy(got), to_numpy(want))


def test_docstring_examples_run():
    result = doctest.testmod(ms_optim.ops, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------- the functional forms

FUNCTIONAL = {  # by the class's lower-case name: schedule_free_adamw_update is ScheduleFreeAdamW's
    f.__name__.removesuffix("_update").replace("_", ""): f
    for f in (getattr(ms_optim.ops, n) for n in ms_optim.ops.__all__ if n.endswith("_update"))
}
#: ScheduleFreeAdamW's functional form also carries its group's running numbers (k, weight_sum,
#: lr_max): tests/test_schedule_free.py checks it against the class
FUNCTIONAL_CASES = [(info, cfg) for info in TABLE if info.name.lower() in FUNCTIONAL
                    and info.name != "ScheduleFreeAdamW" for cfg in info.configs]


def test_every_optimizer_has_a_functional_form():
    assert [info.name for info in TABLE if info.name.lower() not in FUNCTIONAL] == []


@pytest.mark.parametrize(
    "info,config", FUNCTIONAL_CASES,
    ids=[f"{i.name}-{'-'.join(f'{k}={v}' for k, v in c.items())}" for i, c in FUNCTIONAL_CASES],
)
def test_functional_form_steps_exactly_as_the_class(info, config, xp):
    rng = np.random.default_rng(5)
    start = rng.standard_normal((2, 3))  # a matrix: Muon takes nothing else, Adafactor factors it
    grads = [rng.standard_normal((2, 3)) for _ in range(5)]
    w = to_xp(xp, start.copy())  # to_xp may return its argument itself
    opt = info.cls([w], **config)
    for g in grads:
        opt([to_xp(xp, g)])

    fn = FUNCTIONAL[info.name.lower()]
    p = to_xp(xp, start.copy())
    assert p is not w
    keys = opt._param_state_keys(opt.param_groups[0], w)
    arrays: dict = {}
    host: dict = {}
    for t, g in enumerate(grads, start=1):
        step = {"step": t} if info.cls.tracks_step else {}
        out = fn(p, to_xp(xp, g), **arrays, **step, **host, **config)
        assert out[0] is p and all(out[1 + i] is arrays[k] for i, k in enumerate(keys) if k in arrays)
        arrays = dict(zip(keys, out[1:1 + len(keys)]))
        host = dict(zip(info.cls.host_state_keys, out[1 + len(keys):]))
    np.testing.assert_array_equal(to_numpy(p), to_numpy(w))
    for k in keys:
        np.testing.assert_array_equal(to_numpy(arrays[k]), to_numpy(opt.state[w][k]))
    for k in info.cls.host_state_keys:
        assert host[k] == opt.state[w][k]


def test_functional_sgd_creates_the_first_buffer_as_torch_does():
    from ms_optim.ops import sgd_update

    w = np.array([1.0, 2.0])
    _, buf = sgd_update(w, np.array([1.0, -1.0]), lr=0.1, momentum=0.9, dampening=0.5)
    np.testing.assert_array_equal(buf, [1.0, -1.0])  # the first buffer is g, not (1 - dampening) g
    np.testing.assert_allclose(w, [0.9, 2.1])
    sgd_update(w, np.array([1.0, -1.0]), buf, lr=0.1, momentum=0.9, dampening=0.5)
    np.testing.assert_allclose(buf, [1.4, -1.4])  # 0.9 * 1 + 0.5 * 1
    np.testing.assert_allclose(w, [0.76, 2.24])


def test_functional_nadam_returns_the_new_mu_product():
    from ms_optim.ops import nadam_update

    w = np.ones(2)
    out = nadam_update(w, np.ones(2), step=1, momentum_decay=0.0)
    assert len(out) == 4 and out[3] == pytest.approx(0.45)  # mu = beta1 / 2 without decay
    out = nadam_update(w, np.ones(2), out[1], out[2], step=2, mu_product=out[3], momentum_decay=0.0)
    assert out[3] == pytest.approx(0.45**2)


def test_functional_forms_reject_bad_calls_and_change_nothing():
    from ms_optim.ops import adam_update, sgd_update

    w, m, v = np.ones(3), np.zeros(3), np.zeros(3)
    g = np.ones(3)
    for call_, exc, match in [
        (lambda: adam_update(w, g, m, v), TypeError, r"adam_update\(\): missing a required argument: 'step'"),
        (lambda: adam_update(w, g, m, v, step=0), ValueError, r"step is the 1-based number"),
        (lambda: adam_update(w, g, m, v, step=True), TypeError, r"step must be an int, got bool"),
        (lambda: adam_update(w, g, m, v, step=1.5), TypeError, r"step must be an int, got float"),
        (lambda: adam_update(w, g, m, v, np.zeros(3), step=1), TypeError, r"max_exp_avg_sq is given"),
        (lambda: adam_update(w, g, m, np.zeros(2), step=1), ValueError, r"exp_avg_sq has shape \(2,\), p \(3,\)"),
        (lambda: adam_update(w, g, m, np.zeros(3, np.float32), step=1), TypeError, r"exp_avg_sq has dtype float32"),
        (lambda: adam_update(w, g, [0.0] * 3, v, step=1), TypeError, r"exp_avg must be an array, got list"),
        (lambda: adam_update(w, np.ones(4), m, v, step=1), ValueError, r"g has shape \(4,\), p \(3,\)"),
        (lambda: adam_update(w, g, m, v, step=1, lr=-1.0), ValueError, r"Invalid learning rate: -1\.0"),
        (lambda: adam_update(w, g, m, v, step=1, momentum=0.9), TypeError, r"unexpected keyword argument"),
        (lambda: sgd_update(w, g, m, lr=0.1), TypeError, r"momentum_buffer is given but"),
    ]:
        with pytest.raises(exc, match=match):
            call_()
        np.testing.assert_array_equal(w, 1.0)
        np.testing.assert_array_equal(m, 0.0)
        np.testing.assert_array_equal(v, 0.0)
