"""ScheduleFreeAdamW against schedulefree.AdamWScheduleFree, step by step, in train and eval mode.

Both sides see the same gradients (some None, as a missing ``.grad``) on two
param groups; float64 parameters must agree to 1e-9 relative after every step,
in train mode (the parameter holds y) and after eval() (it holds x), and the
per-parameter state and the per-group running values (k, weight_sum, lr_max)
likewise. Skips cleanly where schedulefree (or torch) is not installed.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from ms_optim.algorithms.schedule_free_adamw import ScheduleFreeAdamW, schedule_free_adamw_update
from tests.conftest import to_numpy
from tests.conftest import to_xp as _to_xp

torch = pytest.importorskip("torch")
schedulefree = pytest.importorskip("schedulefree")

STEPS = 14
SHAPES = [(3, 4), (5,), (), (2, 3)]  # group 0: the first three; group 1: the last
RTOL, ATOL = 1e-9, 1e-12

CONFIGS = {
    "defaults": dict(lr=0.01),
    "warmup": dict(lr=0.02, warmup_steps=5),
    "weight_decay": dict(lr=0.01, weight_decay=0.1),
    "r": dict(lr=0.01, r=1.5, weight_lr_power=1.0),
    "everything": dict(lr=0.03, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05, warmup_steps=4, r=0.5,
                       weight_lr_power=3.0),
    "no_lr_weighting": dict(lr=0.01, warmup_steps=3, weight_lr_power=0.0),
    # betas[0] < 0.5: the train swap lerps with weight >= 0.5, torch's other formula
    "low_beta1": dict(lr=0.01, betas=(0.3, 0.99)),
}
GROUP1 = dict(lr=0.004, weight_decay=0.2, warmup_steps=2)


def to_xp(xp, a):
    return _to_xp(xp, np.array(a, dtype=np.float64, copy=True))


def grad_plan(seed=0, steps=STEPS):
    """Random gradients; param 1 gets its first one at step 3, a few are None later."""
    rng = np.random.default_rng(seed)
    plan = []
    for k in range(steps):
        grads = [rng.standard_normal(s) for s in SHAPES]
        if k < 3:
            grads[1] = None
        if k == 5:
            grads[2] = None
        if k in (7, 8):
            grads[3] = None  # group 1 has no gradient at all: its k still advances
        plan.append(grads)
    return plan


def initial_params(seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in SHAPES]


def make_ours(config, xp, backend=None):
    params = [to_xp(xp, p) for p in initial_params()]
    opt = ScheduleFreeAdamW([{"params": params[:3]}, {"params": params[3:], **GROUP1}], **config, backend=backend)
    return opt, params


def make_theirs(config):
    params = [torch.tensor(p, dtype=torch.float64) for p in initial_params()]
    opt = schedulefree.AdamWScheduleFree([{"params": params[:3]}, {"params": params[3:], **GROUP1}],
                                         **config, foreach=False)
    return opt, params


def step_theirs(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else torch.tensor(g, dtype=torch.float64)
    opt.step()


def assert_close(ours, theirs, what):
    for i, (p, t) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(to_numpy(p), t.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg=f"{what} param {i}")


def assert_same_state(opt, params, topt, tparams, what):
    for i, (p, tp) in enumerate(zip(params, tparams)):
        ours, theirs = opt.state.get(p, {}), topt.state[tp]
        assert set(ours) == set(theirs), f"{what} param {i}: state keys {set(ours)} != {set(theirs)}"
        for key in theirs:
            np.testing.assert_allclose(to_numpy(ours[key]), theirs[key].numpy(), rtol=RTOL, atol=ATOL,
                                       err_msg=f"{what} param {i} state {key}")
    for gi, (group, tgroup) in enumerate(zip(opt.param_groups, topt.param_groups)):
        assert group["k"] == tgroup["k"], f"{what} group {gi} k"
        assert group["train_mode"] == tgroup["train_mode"]
        for key in ("weight_sum", "lr_max", "scheduled_lr"):
            np.testing.assert_allclose(group[key], float(tgroup[key]), rtol=1e-13, err_msg=f"{what} group {gi} {key}")


BACKENDS = ["eager", "cpu"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_float64_matches_schedulefree_in_train_and_eval_mode(name, xp, backend):
    if backend == "cpu":
        if xp.__name__ != "numpy":
            pytest.skip("the cpu backend runs NumPy arrays only")
        pytest.importorskip("numba")
    config = CONFIGS[name]
    opt, params = make_ours(config, xp, backend)
    topt, tparams = make_theirs(config)
    opt.train()
    topt.train()
    for k, grads in enumerate(grad_plan()):
        opt([None if g is None else to_xp(xp, g) for g in grads])
        step_theirs(topt, tparams, grads)
        assert_close(params, tparams, f"train, step {k + 1}")
        if k % 4 == 3:  # evaluate now and then, and train on from there, as a training loop does
            opt.eval()
            topt.eval()
            assert_close(params, tparams, f"eval after step {k + 1}")
            opt.train()
            topt.train()
            assert_close(params, tparams, f"train again after step {k + 1}")
    assert_same_state(opt, params, topt, tparams, "after the run")
    opt.eval()
    topt.eval()
    assert_close(params, tparams, "final eval")


def test_a_step_in_eval_mode_raises_and_changes_nothing():
    opt, params = make_ours(CONFIGS["defaults"], np)
    grads = [np.ones(s) for s in SHAPES]
    opt(grads)  # a new optimizer starts in train mode (schedulefree's would refuse)
    opt.eval()
    before = [p.copy() for p in params], copy.deepcopy(opt.state_dict())
    with pytest.raises(RuntimeError, match=r"not in train mode.*train\(\)"):
        opt(grads)
    for p, b in zip(params, before[0]):
        np.testing.assert_array_equal(p, b)
    assert opt.param_groups[0]["k"] == 1


def test_eval_and_train_twice_move_nothing():
    opt, params = make_ours(CONFIGS["defaults"], np)
    opt.train()
    opt.train()  # already in train mode: no swap
    for grads in grad_plan()[:3]:  # after one step x = y = z: take a few
        opt(grads)
    y = [p.copy() for p in params]
    opt.eval()
    x = [p.copy() for p in params]
    opt.eval()
    for p, b in zip(params, x):
        np.testing.assert_array_equal(p, b)
    assert any(not np.array_equal(a, b) for a, b in zip(x, y))
    opt.train()
    for p, b in zip(params, y):
        np.testing.assert_allclose(p, b, rtol=1e-14, atol=1e-15)


def test_a_bad_step_changes_nothing():
    opt, params = make_ours(CONFIGS["warmup"], np)
    opt.train()
    opt([np.ones(s) for s in SHAPES])
    before = [p.copy() for p in params]
    groups = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    for bad in ([np.ones(s) for s in SHAPES[:-1]], [np.ones((7,))] + [np.ones(s) for s in SHAPES[1:]]):
        with pytest.raises((TypeError, ValueError)):
            opt(bad)
    opt.param_groups[1]["lr"] = -1.0
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt([np.ones(s) for s in SHAPES])
    opt.param_groups[1]["lr"] = GROUP1["lr"]
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_state_dict_round_trip_continues_exactly(mode):
    config = CONFIGS["everything"]
    plan = grad_plan()
    opt, params = make_ours(config, np)
    opt.train()
    for grads in plan[:6]:
        opt(grads)
    getattr(opt, mode)()
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    # a fresh optimizer on copies of the (saved-mode) parameters, loaded, continues as the original
    params2 = [p.copy() for p in params]
    opt2 = ScheduleFreeAdamW([{"params": params2[:3]}, {"params": params2[3:], **GROUP1}], **config)
    opt2.load_state_dict(saved)
    assert [g["k"] for g in opt2.param_groups] == [6, 6]
    assert opt2.param_groups[0]["train_mode"] is (mode == "train")
    for o in (opt, opt2):
        o.train()
        for grads in plan[6:]:
            o([None if g is None else g.copy() for g in grads])
        o.eval()
    for a, b in zip(params, params2):
        np.testing.assert_array_equal(a, b)


def test_a_schedulefree_checkpoint_loads_and_training_goes_on_alike():
    config = CONFIGS["everything"]
    plan = grad_plan()
    topt, tparams = make_theirs(config)
    topt.train()
    for grads in plan[:6]:
        step_theirs(topt, tparams, grads)
    topt.eval()  # schedulefree's advice: save in eval mode
    params = [p.detach().numpy().copy() for p in tparams]
    opt = ScheduleFreeAdamW([{"params": params[:3]}, {"params": params[3:], **GROUP1}], **config)
    opt.load_state_dict(topt.state_dict())  # torch tensors, its 'foreach' key, its group-level values
    assert opt.param_groups[1]["k"] == 6 and opt.param_groups[0]["train_mode"] is False
    opt.train()
    topt.train()
    for grads in plan[6:]:
        opt(grads)
        step_theirs(topt, tparams, grads)
        assert_close(params, tparams, "after loading")
    opt.eval()
    topt.eval()
    assert_close(params, tparams, "eval after loading")


def test_bad_load_changes_nothing():
    opt, params = make_ours(CONFIGS["defaults"], np)
    opt.train()
    opt([np.ones(s) for s in SHAPES])
    good = opt.state_dict()
    before = copy.deepcopy(good)
    for key, value, exc in (("k", -1, ValueError), ("k", 1.5, TypeError), ("weight_sum", float("nan"), ValueError),
                            ("train_mode", 1, TypeError), ("lr_max", float("inf"), ValueError),
                            ("warmup_steps", "5", TypeError)):
        bad = copy.deepcopy(good)
        bad["param_groups"][1][key] = value
        with pytest.raises(exc, match=key):
            opt.load_state_dict(bad)
    bad = copy.deepcopy(good)
    bad["state"][0]["z"] = np.zeros((9,))
    with pytest.raises(ValueError, match="z"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert [{k: v for k, v in g.items()} for g in after["param_groups"]] == before["param_groups"]
    for pid, st in before["state"].items():
        for key in st:
            np.testing.assert_array_equal(after["state"][pid][key], st[key])


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(lr=-1.0), ValueError, r"Invalid learning rate: -1\.0"),
    (dict(betas=(0.0, 0.999)), ValueError, r"Invalid beta parameter at index 0: 0\.0"),
    (dict(betas=(0.9, 1.0)), ValueError, r"Invalid beta parameter at index 1: 1\.0"),
    (dict(eps=-1.0), ValueError, r"Invalid epsilon value: -1\.0"),
    (dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay value: -0\.1"),
    (dict(warmup_steps=-1), ValueError, r"Invalid warmup_steps value: -1"),
    (dict(warmup_steps=2.5), TypeError, r"warmup_steps must be an int, got float"),
    (dict(r=-0.5), ValueError, r"Invalid r value: -0\.5"),
    (dict(weight_lr_power="2"), TypeError, r"weight_lr_power must be a real number, got str"),
    (dict(backend="warp-drive"), ValueError, r"Invalid backend: 'warp-drive'"),
])
def test_constructor_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ScheduleFreeAdamW([np.zeros(3)], **kwargs)


def test_defaults_match_schedulefree():
    ours = ScheduleFreeAdamW([np.zeros(2)]).param_groups[0]
    theirs = schedulefree.AdamWScheduleFree([torch.zeros(2)]).param_groups[0]
    for key, value in ours.items():
        if key not in ("params", "train_mode"):  # ours starts in train mode (see the class's warning)
            assert theirs[key] == value, key
    assert ours["train_mode"] is True and theirs["train_mode"] is False
    assert set(theirs) - set(ours) == {"foreach"}


def test_a_group_added_later_joins_in_the_current_mode():
    params = initial_params()
    opt = ScheduleFreeAdamW([params[0]], lr=0.01)
    opt.train()
    opt([np.ones(SHAPES[0])])
    opt.add_param_group({"params": [params[1]]})
    assert opt.param_groups[1]["train_mode"] is True
    opt([np.ones(SHAPES[0]), np.ones(SHAPES[1])])  # no RuntimeError
    y = params[1].copy()
    opt.eval()
    opt.train()
    np.testing.assert_allclose(params[1], y, rtol=1e-14, atol=1e-15)


def test_functional_form_matches_the_class():
    plan = [g[0] for g in grad_plan()][:5]
    y = initial_params()[0]
    opt_p = y.copy()
    opt = ScheduleFreeAdamW([opt_p], **CONFIGS["everything"])
    opt.train()
    z = v = None
    k, weight_sum, lr_max = 0, 0.0, -1.0
    for g in plan:
        opt([g])
        y, z, v, k, weight_sum, lr_max = schedule_free_adamw_update(
            y, g, z, v, k=k, weight_sum=weight_sum, lr_max=lr_max, **CONFIGS["everything"])
    np.testing.assert_array_equal(y, opt_p)
    np.testing.assert_array_equal(z, opt.state[opt_p]["z"])
    assert (k, weight_sum, lr_max) == tuple(opt.param_groups[0][n] for n in ("k", "weight_sum", "lr_max"))
    with pytest.raises(ValueError, match="both z and exp_avg_sq"):
        schedule_free_adamw_update(y, plan[0], z)
    with pytest.raises(ValueError, match="Invalid k value: -1"):
        schedule_free_adamw_update(y, plan[0], k=-1)


def test_a_new_optimizer_needs_no_train_call():
    """A new optimizer is in train mode; schedulefree's needs train() first, then they agree."""
    opt, params = make_ours(CONFIGS["warmup"], np)
    topt, tparams = make_theirs(CONFIGS["warmup"])
    topt.train()
    for grads in grad_plan()[:4]:
        opt(grads)
        step_theirs(topt, tparams, grads)
    assert_close(params, tparams, "without train()")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_low_precision_keeps_dtype_and_tracks_float64(dtype, backend):
    if backend == "cpu":
        pytest.importorskip("numba")
    config = CONFIGS["everything"]
    opt64, p64 = make_ours(config, np)
    params = [p.astype(dtype) for p in p64]
    opt = ScheduleFreeAdamW([{"params": params[:3]}, {"params": params[3:], **GROUP1}], **config, backend=backend)
    for k, grads in enumerate(grad_plan()):
        opt64(grads)
        opt([None if g is None else g.astype(dtype) for g in grads])
        if k == 6:
            opt.eval(), opt64.eval()
            opt.train(), opt64.train()
    opt.eval(), opt64.eval()
    tol = 1e-5 if dtype == "float32" else 2e-2
    for p, r in zip(params, p64):
        assert p.dtype == np.dtype(dtype)
        np.testing.assert_allclose(p.astype(np.float64), r, rtol=tol, atol=tol)
    assert all(opt.state[p]["z"].dtype == np.dtype(dtype) for p in params)
