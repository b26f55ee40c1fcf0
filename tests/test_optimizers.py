"""Generic optimizer tests, driven by tests/optim_table.py, on every array namespace."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from tests.conftest import to_numpy, to_xp
from tests.optim_table import CASE_IDS, CASES, ERROR_CASES, ERROR_IDS, TABLE

STEPS = 12
SHAPES = [(3, 4), (5,), (), (2, 3)]  # group 0 holds the first three, group 1 the last


def grad_plan(seed=0, steps=STEPS, shapes=SHAPES):
    """Random gradients per step; some None: param 1's first gradient comes at step 3."""
    rng = np.random.default_rng(seed)
    plan = []
    for k in range(steps):
        grads = [rng.standard_normal(s) for s in shapes]
        if k < 3:
            grads[1] = None
        if k == 5:
            grads[2] = None
        if k == 7:
            grads[3] = None
        plan.append(grads)
    return plan


def initial_params(seed=1, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


#: a bad lr, in torch's words for the optimizer (Adafactor and Muon word it their own way)
BAD_LR = r"(Invalid learning rate: |Learning rate should be >= 0 but is: )"


def shapes_of(info) -> list:
    """The parameter shapes of ``info``'s generic tests (Muon takes matrices only)."""
    return info.shapes or SHAPES


def host_keys(opt) -> set:
    """State entries held on the host as numbers (``step``, NAdam's ``mu_product``), not arrays."""
    return {"step", *opt.host_state_keys}


def build(info, config, params):
    groups = [
        {"params": params[:3]},
        {"params": params[3:], **info.group_overrides},
    ]
    return info.cls(groups, **config)


def run_ours(info, config, xp, dtype=None, steps=STEPS):
    params = [to_xp(xp, p, dtype) for p in initial_params(shapes=shapes_of(info))]
    opt = build(info, config, params)
    for grads in grad_plan(steps=steps, shapes=shapes_of(info)):
        opt([None if g is None else to_xp(xp, g, dtype) for g in grads])
    return opt, params


def run_reference(info, config, steps=STEPS):
    hp0 = info.hyperparams(config)
    hps = [hp0, hp0, hp0, {**hp0, **info.group_overrides}]
    params = initial_params(shapes=shapes_of(info))
    states = [{} for _ in params]
    for k, grads in enumerate(grad_plan(steps=steps, shapes=shapes_of(info))):
        for i, g in enumerate(grads):
            if g is not None:
                # _step_index: the optimizer steps before this one, for a reference whose
                # count is per group (ScheduleFreeAdamW's k), not per parameter
                params[i] = info.reference(params[i], g, states[i], {**hps[i], "_step_index": k})
    return params, states


@pytest.mark.parametrize("info,config", CASES, ids=CASE_IDS)
def test_matches_float64_reference(info, config, xp):
    opt, params = run_ours(info, config, xp)
    ref_params, ref_states = run_reference(info, config)
    for i, (p, r) in enumerate(zip(params, ref_params)):
        np.testing.assert_allclose(to_numpy(p), r, rtol=1e-10, atol=1e-13, err_msg=f"param {i}")
    for i, (p, ref_state) in enumerate(zip(params, ref_states)):
        state = opt.state[p]
        assert set(state) == set(ref_state), f"param {i}: state keys {set(state)} != {set(ref_state)}"
        for key, value in ref_state.items():
            if key == "step":
                assert state["step"] == value
            else:
                np.testing.assert_allclose(to_numpy(state[key]), value, rtol=1e-10, atol=1e-13,
                                           err_msg=f"param {i} state {key}")


@pytest.mark.parametrize("info,config", CASES, ids=CASE_IDS)
def test_state_layout_is_torchs(info, config):
    opt, params = run_ours(info, config, np)
    for p in params:
        assert set(opt.state[p]) == info.expected_state_keys(config, p.shape)


@pytest.mark.parametrize("info,config", CASES, ids=CASE_IDS)
def test_descends_on_quadratic(info, config, xp):
    if info.shapes:
        pytest.skip(f"{info.name} takes matrices only; this test uses vectors and 0-d arrays")
    scale = np.array([1.0, 2.0, 0.5, 3.0])
    w = to_xp(xp, np.array([1.5, -2.0, 0.7, -0.3]))

    def loss():
        return float(0.5 * np.sum(scale * to_numpy(w) ** 2))

    sign = -1.0 if config.get("maximize") else 1.0  # maximize ascends -f
    opt = info.cls([w], **{**config, "lr": config["lr"] * 5})
    start = loss()
    for _ in range(60):
        opt([to_xp(xp, sign * scale * to_numpy(w))])
    assert loss() < 0.5 * start


@pytest.mark.parametrize("dtype_name", ["float32", "float16"])
@pytest.mark.parametrize("info,config", CASES, ids=CASE_IDS)
def test_low_precision_keeps_dtype_and_tracks_reference(info, config, xp, dtype_name):
    if not hasattr(xp, dtype_name):
        pytest.skip(f"{xp.__name__} has no {dtype_name}")
    dtype = getattr(xp, dtype_name)
    opt, params = run_ours(info, config, xp, dtype)
    ref_params, _ = run_reference(info, config)
    tol = {"float32": 2e-5, "float16": 2e-2}[dtype_name]
    for p, r in zip(params, ref_params):
        assert p.dtype == dtype
        for v in opt.state[p].values():
            assert not hasattr(v, "dtype") or v.dtype == dtype
        np.testing.assert_allclose(to_numpy(p), r, rtol=tol, atol=tol)


@pytest.mark.parametrize("info,config", CASES, ids=CASE_IDS)
def test_zero_dim_and_zero_size_params(info, config, xp):
    if info.shapes:
        pytest.skip(f"{info.name} takes matrices only; this test uses vectors and 0-d arrays")
    scalar = to_xp(xp, np.array(0.5))
    empty = to_xp(xp, np.zeros((0, 3)))
    opt = info.cls([scalar, empty], **config)
    ref_state: dict = {}
    ref = np.array(0.5)
    for k in range(4):
        g = np.array(0.25 * (k + 1))
        opt([to_xp(xp, g), to_xp(xp, np.zeros((0, 3)))])
        ref = info.reference(ref, g, ref_state, {**info.hyperparams(config), "_step_index": k})
    assert scalar.shape == () and empty.shape == (0, 3)
    np.testing.assert_allclose(to_numpy(scalar), ref, rtol=1e-12)
    group = opt.param_groups[0]
    assert all(v.shape == opt._state_shape(k, empty, group) for k, v in opt.state[empty].items() if k not in host_keys(opt))


@pytest.mark.parametrize("info,config", CASES, ids=CASE_IDS)
def test_state_dict_round_trip_continues_exactly(info, config, xp):
    uninterrupted, expected = run_ours(info, config, xp)

    params = [to_xp(xp, p) for p in initial_params(shapes=shapes_of(info))]
    opt = build(info, config, params)
    plan = grad_plan(shapes=shapes_of(info))
    for grads in plan[:5]:
        opt([None if g is None else to_xp(xp, g) for g in grads])
    blob = pickle.dumps((opt.state_dict(), [to_numpy(p) for p in params]))

    saved_state, saved_params = pickle.loads(blob)
    params2 = [to_xp(xp, p) for p in saved_params]
    opt2 = build(info, {**config, "lr": 123.0}, params2)  # lr comes back from the checkpoint
    opt2.load_state_dict(saved_state)
    for grads in plan[5:]:
        opt2([None if g is None else to_xp(xp, g) for g in grads])
    for a, b in zip(params2, expected):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    for p2, p in zip(params2, expected):
        st2, st = opt2.state[p2], uninterrupted.state[p]
        assert set(st2) == set(st)
        for key in st:
            np.testing.assert_array_equal(to_numpy(st2[key]), to_numpy(st[key]))


@pytest.mark.parametrize("info,config", CASES, ids=CASE_IDS)
def test_loaded_state_lives_in_the_params_namespace(info, config, xp):
    """A checkpoint saved from NumPy loads into any namespace (and dtype)."""
    opt_np, _ = run_ours(info, config, np, steps=4)
    sd = opt_np.state_dict()
    params = [to_xp(xp, p, xp.float32) for p in initial_params(shapes=shapes_of(info))]
    opt = build(info, config, params)
    opt.load_state_dict(sd)
    for p in params:
        for key, v in opt.state[p].items():
            if key not in host_keys(opt):
                assert type(v) is type(p) and v.dtype == xp.float32
                assert v.shape == opt._state_shape(key, p, opt.param_groups[0])


def test_none_grad_leaves_param_and_state_untouched(xp):
    info = TABLE[1]  # Adam: has a step count and state arrays
    a, b = to_xp(xp, np.ones(3)), to_xp(xp, np.ones(2))
    opt = info.cls([a, b], lr=0.1)
    opt([to_xp(xp, np.ones(3)), to_xp(xp, np.ones(2))])
    before = (to_numpy(b), {k: to_numpy(v) if k != "step" else v for k, v in opt.state[b].items()})
    opt([to_xp(xp, np.ones(3)), None])
    assert opt.state[a]["step"] == 2 and opt.state[b]["step"] == 1
    np.testing.assert_array_equal(to_numpy(b), before[0])
    assert opt.state[b]["step"] == before[1]["step"]


def test_lr_as_0d_array_is_read_each_step(xp):
    lr = to_xp(xp, np.array(0.1))
    w = to_xp(xp, np.array([1.0]))
    opt = TABLE[0].cls([w], lr=lr)
    opt([to_xp(xp, np.array([1.0]))])
    lr[...] = 0.5  # a scheduler writes a 0-d lr in place
    opt([to_xp(xp, np.array([1.0]))])
    np.testing.assert_allclose(to_numpy(w), [1.0 - 0.1 - 0.5])


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("info,kwargs,exc,match", ERROR_CASES, ids=ERROR_IDS)
def test_constructor_rejects(info, kwargs, exc, match):
    w = np.zeros(3)
    with pytest.raises(exc, match=match):
        info.cls([w], **{"lr": 0.01, **kwargs})
    if "backend" not in kwargs:  # backend belongs to the optimizer, not to a group
        with pytest.raises(exc, match=match):  # the same check guards a group's own values
            info.cls([{"params": [w], **kwargs}], lr=0.01)
    np.testing.assert_array_equal(w, 0.0)


@pytest.mark.parametrize("info", TABLE, ids=lambda i: i.name)
def test_bad_param_groups_are_rejected(info):
    a, b = (np.zeros((2, 2)), np.zeros((3, 2))) if info.shapes else (np.zeros(2), np.zeros(3))
    cases = [
        (lambda: info.cls(np.zeros(3), lr=0.1), TypeError, r"single array"),
        (lambda: info.cls([], lr=0.1), ValueError, r"empty parameter list"),
        (lambda: info.cls({a.__array_interface__["data"][0]: a}, lr=0.1), TypeError, r"iterable of arrays or dicts"),
        (lambda: info.cls([[1.0, 2.0]], lr=0.1), TypeError, r"params\[0\] must be an array, got list"),
        (lambda: info.cls([np.zeros(3, dtype=np.int64)], lr=0.1), TypeError, r"params\[0\] has dtype int64"),
        (lambda: info.cls([a, a], lr=0.1), ValueError, r"params\[1\] appears twice"),
        (lambda: info.cls([{"params": [a]}, {"params": [a, b]}], lr=0.1), ValueError, r"more than one parameter group"),
        (lambda: info.cls([{"params": []}], lr=0.1), ValueError, r"empty parameter list"),
        (lambda: info.cls([{"lr": 0.1}], lr=0.1), ValueError, r"'params' entry"),
        (lambda: info.cls([{"params": {a.size: a}}], lr=0.1), TypeError, r"params must be a list of arrays"),
    ]
    ro = np.zeros(2)
    ro.flags.writeable = False
    cases.append((lambda: info.cls([ro], lr=0.1), ValueError, r"params\[0\] is read-only"))
    for make, exc, match in cases:
        with pytest.raises(exc, match=match):
            make()
    opt = info.cls([a], lr=0.1)
    for group, exc, match in [
        ({"params": [a]}, ValueError, "more than one parameter group"),
        ({"params": [b], "lr": -2.0}, ValueError, BAD_LR + r"-2\.0"),
        ([b], TypeError, "param_group must be a dict"),
    ]:
        with pytest.raises(exc, match=match):
            opt.add_param_group(group)
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": b, "lr": 0.5})
    assert opt.parameters == [a, b] or all(x is y for x, y in zip(opt.parameters, [a, b]))
    assert opt.param_groups[1]["lr"] == 0.5


def _snapshot(opt, params):
    return (
        [to_numpy(p) for p in params],
        {i: {k: (v if k == "step" else to_numpy(v)) for k, v in opt.state[p].items()} for i, p in enumerate(params)},
        copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]),
    )


def _assert_same(a, b):
    for x, y in zip(a[0], b[0]):
        np.testing.assert_array_equal(x, y)
    assert a[1].keys() == b[1].keys()
    for i in a[1]:
        assert a[1][i].keys() == b[1][i].keys()
        for k in a[1][i]:
            np.testing.assert_array_equal(a[1][i][k], b[1][i][k])
    assert a[2] == b[2]


def _bad_steps(xp, info):
    """(name, grads for SHAPES, exception, match): each must leave everything as it was."""
    import array_api_strict

    ok = [to_xp(xp, np.ones(s)) for s in shapes_of(info)]
    other = array_api_strict if xp is np else np
    return [
        ("too few", ok[:3], ValueError, r"grads has 3 entries but the optimizer has 4"),
        ("too many", ok + [ok[0]], ValueError, r"grads has 5 entries"),
        ("single array", ok[0], TypeError, r"grads must be a sequence"),
        ("not an array", ok[:3] + [[[1.0] * 3] * 2], TypeError, r"grads\[3\] must be an array or None, got list"),
        ("bad shape", ok[:3] + [to_xp(xp, np.ones((3, 2)))], ValueError, r"grads\[3\] has shape \(3, 2\), its parameter \(2, 3\)"),
        ("int dtype", ok[:3] + [to_xp(xp, np.ones((2, 3), dtype=np.int64))], TypeError, r"grads\[3\] has dtype"),
        ("other namespace", ok[:3] + [other.asarray(np.ones((2, 3)))], TypeError, r"grads\[3\] is a"),
    ]


@pytest.mark.parametrize("info,config", CASES, ids=CASE_IDS)
def test_bad_step_changes_nothing(info, config, xp):
    opt, params = run_ours(info, config, xp, steps=3)
    before = _snapshot(opt, params)
    for name, grads, exc, match in _bad_steps(xp, info):
        with pytest.raises(exc, match=match):
            opt(grads)
        _assert_same(before, _snapshot(opt, params))
    # a hyper-parameter broken after construction is caught before any update
    opt.param_groups[1]["lr"] = -1.0
    with pytest.raises(ValueError, match=BAD_LR + r"-1\.0"):
        opt([to_xp(xp, np.ones(s)) for s in shapes_of(info)])
    opt.param_groups[1]["lr"] = before[2][1]["lr"]
    _assert_same(before, _snapshot(opt, params))


@pytest.mark.parametrize("info,config", CASES, ids=CASE_IDS)
def test_bad_load_changes_nothing(info, config):
    opt, params = run_ours(info, config, np, steps=4)
    good = copy.deepcopy(opt.state_dict())
    before = _snapshot(opt, params)
    some_id = next(iter(good["state"]), None)

    def mutated(fn):
        sd = copy.deepcopy(good)
        fn(sd)
        return sd

    bad = [
        ([1, 2], TypeError, "must be a dict"),
        (mutated(lambda sd: sd["param_groups"].pop()), ValueError, "different number of parameter groups"),
        (mutated(lambda sd: sd["param_groups"][0]["params"].pop()), ValueError, "doesn't match the size"),
        (mutated(lambda sd: sd["param_groups"][1].__setitem__("lr", -3.0)), ValueError, BAD_LR + r"-3\.0"),
        (mutated(lambda sd: sd["state"].__setitem__(99, {})), ValueError, "parameter id 99"),
    ]
    if some_id is not None:
        key = next(k for k in good["state"][some_id] if k not in host_keys(opt))
        bad += [
            (mutated(lambda sd: sd["state"][some_id].__setitem__("bogus", np.zeros(1))), ValueError, "unexpected entries"),
            (mutated(lambda sd: sd["state"][some_id].__setitem__(key, np.zeros((7, 7)))), ValueError, r"has shape \(7, 7\)"),
        ]
        if len(good["state"][some_id]) > 1:  # popping the only entry leaves a valid empty state
            bad.append((mutated(lambda sd: sd["state"][some_id].pop(key)), ValueError, "lacks"))
        if "step" in good["state"][some_id]:
            bad.append((mutated(lambda sd: sd["state"][some_id].__setitem__("step", -2)), ValueError, "non-negative"))
        for host_key in opt.host_state_keys:
            bad += [
                (mutated(lambda sd: sd["state"][some_id].__setitem__(host_key, float("nan"))), ValueError, "finite"),
                (mutated(lambda sd: sd["state"][some_id].__setitem__(host_key, "1.0")), TypeError, "real number"),
                (mutated(lambda sd: sd["state"][some_id].pop(host_key)), ValueError, "lacks"),
            ]
    # the last group's state is valid, so a half-done load would show
    for sd, exc, match in bad:
        with pytest.raises(exc, match=match):
            opt.load_state_dict(sd)
        _assert_same(before, _snapshot(opt, params))


def test_state_dict_layout_is_torchs():
    a, b, c = np.ones(2), np.ones(3), np.ones(1)
    opt = TABLE[1].cls([{"params": [a, b]}, {"params": [c], "lr": 0.5}], lr=0.1)
    opt([np.ones(2), None, np.ones(1)])
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert sorted(sd["state"]) == [0, 2]
    assert sd["param_groups"][1]["lr"] == 0.5 and sd["param_groups"][0]["betas"] == (0.9, 0.999)
    assert sd["state"][0]["step"] == 1


def test_optimizer_pickles_whole():
    w = np.ones(3)
    opt = TABLE[1].cls([w], lr=0.1)
    opt([np.ones(3)])
    opt2 = pickle.loads(pickle.dumps(opt))
    w2 = opt2.parameters[0]
    assert opt2.state[w2]["step"] == 1
    opt2([np.ones(3)])
    opt([np.ones(3)])
    np.testing.assert_array_equal(w, w2)


def test_array_hyperparameters_are_copied_in_and_out_of_checkpoints(xp):
    """A 0-d lr written in place (by a scheduler) must not leak into a saved state_dict, or back."""
    lr = to_xp(xp, np.array(0.1))
    w = to_xp(xp, np.ones(2))
    opt = TABLE[0].cls([w], lr=lr)
    sd = opt.state_dict()
    lr[...] = 0.05
    assert float(sd["param_groups"][0]["lr"]) == 0.1
    opt.load_state_dict(sd)
    sd["param_groups"][0]["lr"][...] = 7.0
    assert float(opt.param_groups[0]["lr"]) == 0.1


def test_a_named_backend_that_cannot_serve_the_params_fails_at_construction():
    import array_api_strict

    for backend, w in [("cpu", array_api_strict.ones(3)), ("cuda", np.ones(3))]:
        with pytest.raises(ValueError, match=f"Invalid backend: '{backend}' cannot run arrays of"):
            TABLE[0].cls([w], lr=0.1, backend=backend)
    opt = TABLE[0].cls([array_api_strict.ones(3)], lr=0.1, backend="eager")
    assert opt.backend == "eager"


def test_list_hyperparameters_are_stored_as_tuples():
    """betas=[...] (or a pair that went through JSON in a checkpoint) is kept as torch keeps it."""
    w = np.ones(2)
    opt = TABLE[1].cls([{"params": [w], "betas": [0.8, 0.9]}], lr=0.1, betas=[0.7, 0.8])
    assert opt.defaults["betas"] == (0.7, 0.8) and opt.param_groups[0]["betas"] == (0.8, 0.9)
    sd = opt.state_dict()
    sd["param_groups"][0]["betas"] = [0.5, 0.6]
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["betas"] == (0.5, 0.6)
