"""Lion and LAMB against optax (jax on the CPU, float64) and against float64 references from the papers.

optax is the peer these two follow (torch.optim has neither). Its runs are
made one parameter at a time, each with its own group's hyper-parameters and
its own optax state, stepping only when the parameter has a gradient: optax
has no None gradient, so a skipped parameter is simply not updated, which is
what a None means here. The parity tests skip cleanly without jax/optax; the
paper references, the cpu (numba) backend against eager, the errors and the
functional forms run everywhere.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest

from ms_optim.algorithms.lamb import LAMB
from ms_optim.algorithms.lion import Lion
from ms_optim.ops import functional
from tests import reference
from tests.conftest import NAMESPACES, to_numpy, to_xp
from tests.optim_table import TABLE

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
OPTAX_REASON = "the optax parity tests need jax and optax: pip install 'jax[cpu]' optax"

STEPS = 14
#: group 0 holds the first five (a 0-d one among them), group 1 (the overrides) the rest
SHAPES = [(3, 4), (5,), (), (4,), (6,), (2, 3), (2, 3, 4)]
GROUP0 = 5
ZERO_INIT = 3  # starts at 0: ||p|| = 0 on its first step, LAMB's ratio is 1
ZERO_GRAD = 4  # always a zero gradient: where group 0 has no decay, u = 0 and LAMB's ratio is 1

# --------------------------------------------------------------- the two rows

LION = next(info for info in TABLE if info.cls is Lion)
LAMB_ROW = next(info for info in TABLE if info.cls is LAMB)
INFOS = [LION, LAMB_ROW]
CASES = [(info, k) for info in INFOS for k in range(len(info.configs))]
CASE_IDS = [f"{info.name}-{'-'.join(f'{a}={b}' for a, b in info.configs[k].items())}" for info, k in CASES]
ERRORS = [(info, *err) for info in INFOS for err in info.errors]
ERROR_IDS = [f"{info.name}-{next(iter(kw))}={kw[next(iter(kw))]!r}" for info, kw, _, _ in ERRORS]


def _cupy_param():
    return [p for p in NAMESPACES if p.id == "cupy"][0]


#: (namespace, backend): eager on NumPy and array-api-strict, the numba loop on NumPy, CuPy where a GPU is
BACKENDS = [
    pytest.param("numpy", "eager", id="numpy-eager"),
    pytest.param("numpy", "cpu", id="numpy-cpu",
                 marks=pytest.mark.skipif(not HAVE_NUMBA, reason="the cpu backend needs numba")),
    pytest.param("strict", "eager", id="strict-eager"),
    pytest.param("cupy", None, id="cupy-auto", marks=_cupy_param().marks),
]


def _namespace(name):
    return {p.id: p.values[0] for p in NAMESPACES}[name]


# --------------------------------------------------------------- the runs


def initial_params():
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s) for s in SHAPES]
    params[ZERO_INIT] = np.zeros(SHAPES[ZERO_INIT])
    return params


def grad_plan():
    """Random gradients per step, some None: param 1's first gradient comes at step 3."""
    rng = np.random.default_rng(0)
    plan = []
    for k in range(STEPS):
        grads = [rng.standard_normal(s) for s in SHAPES]
        grads[ZERO_GRAD] = np.zeros(SHAPES[ZERO_GRAD])
        if k < 3:
            grads[1] = None
        if k == 5:
            grads[2] = None
        if k in (7, 8):
            grads[5] = None
        plan.append(grads)
    return plan


def group_hyperparams(info, config):
    """The full hyper-parameters of each parameter's group, defaults filled in."""
    opt = info.cls([{"params": [np.zeros(1)]}, {"params": [np.zeros(1)], **info.group_overrides}], **config)
    g0, g1 = (dict(g, params=None) for g in opt.param_groups)
    return [g0 if i < GROUP0 else g1 for i in range(len(SHAPES))]


def run_ours(info, config, xp, backend, dtype=None):
    params = [to_xp(xp, p, dtype) for p in initial_params()]
    groups = [{"params": params[:GROUP0]}, {"params": params[GROUP0:], **info.group_overrides}]
    opt = info.cls(groups, backend=backend, **config)
    for grads in grad_plan():
        opt([None if g is None else to_xp(xp, g, dtype) for g in grads])
    return opt, params


def run_paper(info, config):
    hps = group_hyperparams(info, config)
    params, states = initial_params(), [{} for _ in SHAPES]
    for grads in grad_plan():
        for i, g in enumerate(grads):
            if g is not None:
                params[i] = info.reference(params[i], g, states[i], hps[i])
    return params, states


@functools.lru_cache(maxsize=None)
def run_optax(name, k):
    """optax's trajectory in float64: params and (mu, nu) per parameter, for config k of row ``name``."""
    jax = pytest.importorskip("jax", reason=OPTAX_REASON)
    optax = pytest.importorskip("optax", reason=OPTAX_REASON)
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    info = {i.name: i for i in INFOS}[name]
    hps = group_hyperparams(info, info.configs[k])
    transforms = []
    for hp in hps:
        (b1, b2), lr, wd = hp["betas"], float(hp["lr"]), hp["weight_decay"]
        if name == "Lion":
            transforms.append(optax.lion(lr, b1=b1, b2=b2, weight_decay=wd))
        else:
            transforms.append(optax.lamb(lr, b1=b1, b2=b2, eps=hp["eps"], eps_root=0.0, weight_decay=wd))
    params = [jnp.asarray(p, dtype=jnp.float64) for p in initial_params()]
    states = [t.init(p) for t, p in zip(transforms, params)]
    for grads in grad_plan():
        for i, g in enumerate(grads):
            if g is None:
                continue  # optax has no None: a skipped parameter is one we do not update
            g = jnp.asarray(-g if hps[i]["maximize"] else g, dtype=jnp.float64)  # optax descends only
            updates, states[i] = transforms[i].update(g, states[i], params[i])
            params[i] = optax.apply_updates(params[i], updates)
    moments = [(np.asarray(s[0].mu), np.asarray(s[0].nu) if name == "LAMB" else None) for s in states]
    counts = [int(s[0].count) for s in states]
    return [np.asarray(p) for p in params], moments, counts


# --------------------------------------------------------------- against optax


@pytest.mark.parametrize("space,backend", BACKENDS)
@pytest.mark.parametrize("info,k", CASES, ids=CASE_IDS)
def test_matches_optax_in_float64(info, k, space, backend):
    want_params, want_moments, counts = run_optax(info.name, k)
    opt, params = run_ours(info, info.configs[k], _namespace(space), backend)
    for i, (p, w) in enumerate(zip(params, want_params)):
        np.testing.assert_allclose(to_numpy(p), w, rtol=1e-9, atol=0, err_msg=f"param {i}")
    for i, (p, (mu, nu)) in enumerate(zip(params, want_moments)):
        state = opt.state[p]
        np.testing.assert_allclose(to_numpy(state["exp_avg"]), mu, rtol=1e-9, atol=0, err_msg=f"exp_avg {i}")
        if nu is not None:
            np.testing.assert_allclose(to_numpy(state["exp_avg_sq"]), nu, rtol=1e-9, atol=0,
                                       err_msg=f"exp_avg_sq {i}")
            assert state["step"] == counts[i]


def test_zero_norm_params_move_as_optax_says():
    """The zero-initialised and the zero-gradient parameters really exercise LAMB's ratio of 1."""
    want_params, _, _ = run_optax("LAMB", 0)
    start = initial_params()
    assert np.all(start[ZERO_INIT] == 0) and np.any(want_params[ZERO_INIT] != 0)
    np.testing.assert_array_equal(want_params[ZERO_GRAD], start[ZERO_GRAD])  # u = 0 and no decay: no move


# --------------------------------------------------------------- against the papers


@pytest.mark.parametrize("info,k", CASES, ids=CASE_IDS)
def test_matches_paper_reference(info, k, xp):
    config = info.configs[k]
    opt, params = run_ours(info, config, xp, None)
    ref_params, ref_states = run_paper(info, config)
    for i, (p, r) in enumerate(zip(params, ref_params)):
        np.testing.assert_allclose(to_numpy(p), r, rtol=1e-10, atol=1e-13, err_msg=f"param {i}")
    for i, (p, ref_state) in enumerate(zip(params, ref_states)):
        state = opt.state[p]
        assert set(state) == set(ref_state) == info.state_keys(config)
        for key, value in ref_state.items():
            if key == "step":
                assert state[key] == value
            else:
                np.testing.assert_allclose(to_numpy(state[key]), value, rtol=1e-10, atol=1e-13,
                                           err_msg=f"param {i} {key}")


@pytest.mark.parametrize("dtype_name", ["float32", "float16"])
@pytest.mark.parametrize("info,k", CASES, ids=CASE_IDS)
def test_low_precision_tracks_reference(info, k, dtype_name):
    dtype = getattr(np, dtype_name)
    opt, params = run_ours(info, info.configs[k], np, None, dtype)
    ref_params, _ = run_paper(info, info.configs[k])
    tol = {"float32": 2e-5, "float16": 2e-2}[dtype_name]
    for p, r in zip(params, ref_params):
        assert p.dtype == dtype and all(v.dtype == dtype for v in opt.state[p].values() if hasattr(v, "dtype"))
        np.testing.assert_allclose(p.astype(np.float64), r, rtol=tol, atol=tol)


# --------------------------------------------------------------- cpu == eager, bit for bit


#: float16 is computed in float32 and rounded once by both backends; NaN/inf in float64 and float32,
#: as tests/test_cpu_backend.py checks the other algorithms
CPU_RUNS = [("float64", False), ("float32", False), ("float16", False), ("float64", True), ("float32", True)]


@pytest.mark.skipif(not HAVE_NUMBA, reason="the cpu backend needs numba: pip install 'ms-optim[cpu]'")
@pytest.mark.parametrize("dtype_name,special", CPU_RUNS, ids=[f"{d}{'-nan-inf' * s}" for d, s in CPU_RUNS])
@pytest.mark.parametrize("info,k", CASES, ids=CASE_IDS)
def test_cpu_matches_eager_bit_for_bit(info, k, dtype_name, special):
    from tests.test_cpu_backend import assert_same_trajectory

    assert_same_trajectory(info, info.configs[k], dtype_name, special=special)


# --------------------------------------------------------------- trust ratio details


def test_lamb_trust_ratio_is_one_for_zero_norms_and_exact_otherwise():
    W = np.full((2, 2), 3.0)  # ||W|| = 6, u = g / (|g| + eps) per element
    zero = np.zeros(3)
    frozen = np.array([1.0, -1.0])
    opt = LAMB([W, zero, frozen], lr=0.1, eps=1e-6)
    opt([np.full((2, 2), 1e-3), np.full(3, 2.0), np.zeros(2)])
    np.testing.assert_allclose(W, 3.0 - 0.1 * 6.0 / 2.0, rtol=1e-15)  # lr * ||W|| * u / ||u||
    np.testing.assert_allclose(zero, -0.1 * 2.0 / (2.0 + 1e-6), rtol=1e-15)  # ||p|| = 0: ratio 1
    np.testing.assert_array_equal(frozen, [1.0, -1.0])  # ||u|| = 0: ratio 1, and no NaN


def test_lamb_step_makes_no_host_sync():
    """No float()/bool()/int() of a device value in a step: array-api-strict's are made to raise."""
    import array_api_strict as xp

    params = [xp.ones((3, 4)), xp.zeros(5), xp.asarray(2.0)]
    grads = [xp.full((3, 4), 0.5), xp.full((5,), -1.0), xp.asarray(0.25)]
    opt = LAMB(params, lr=0.1, weight_decay=0.01)
    array_type = type(params[0])

    def sync(self, *args):
        raise AssertionError("a step read a device value to the host")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("__float__", "__bool__", "__int__", "__index__"):
            mp.setattr(array_type, name, sync)
        opt(grads)
        opt(grads)
    assert opt.state[params[0]]["step"] == 2


# --------------------------------------------------------------- errors


@pytest.mark.parametrize("info,kwargs,exc,match", ERRORS, ids=ERROR_IDS)
def test_bad_hyperparameters_raise(info, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        info.cls([np.zeros(3)], **kwargs)


@pytest.mark.parametrize("info", INFOS, ids=lambda i: i.name)
def test_bad_group_value_at_step_changes_nothing(info):
    w = np.array([1.0, -2.0])
    opt = info.cls([w], lr=0.1)
    opt([np.array([0.5, 0.5])])
    before_w, before_state = w.copy(), {k: np.copy(v) for k, v in opt.state[w].items()}
    opt.param_groups[0]["betas"] = (0.9, 1.5)
    with pytest.raises(ValueError, match=r"Invalid beta parameter at index 1: 1\.5"):
        opt([np.array([0.5, 0.5])])
    np.testing.assert_array_equal(w, before_w)
    for key, value in before_state.items():
        np.testing.assert_array_equal(opt.state[w][key], value)


# --------------------------------------------------------------- functional forms

lion_update = functional(Lion, "exp_avg")
lamb_update = functional(LAMB, "exp_avg", "exp_avg_sq")


def test_functional_forms_match_the_classes():
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal((3, 2)) for _ in range(4)]
    for cls, update, names in ((Lion, lion_update, ("exp_avg",)), (LAMB, lamb_update, ("exp_avg", "exp_avg_sq"))):
        p_cls = np.linspace(-1, 1, 6).reshape(3, 2)
        p_fn = p_cls.copy()
        opt = cls([p_cls], lr=0.05, weight_decay=0.1)
        state = [None] * len(names)
        for t, g in enumerate(grads, start=1):
            opt([g])
            steps = {"step": t} if cls.tracks_step else {}
            out = update(p_fn, g, *state, lr=0.05, weight_decay=0.1, **steps)
            assert out[0] is p_fn
            state = list(out[1:])
        np.testing.assert_array_equal(p_fn, p_cls)
        for name, value in zip(names, state):
            np.testing.assert_array_equal(value, opt.state[p_cls][name])
