"""AveragedParams against torch.optim.swa_utils.AveragedModel, and SWALR against torch's SWALR.

The same sequence of parameter values goes into both averages; float64 must
agree to 1e-12 relative after every update, for SWA and EMA, on NumPy and
array-api-strict arrays, through the eager and cpu backends. SWALR's lr must
equal torch's at every step to 1e-12. Skips cleanly without torch.
"""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest

import ms_optim
import schedulers
from ms_optim.averaging import (
    AveragedParams,
    get_ema_avg_fn,
    get_ema_multi_avg_fn,
    get_swa_avg_fn,
    get_swa_multi_avg_fn,
)
from ms_optim.engine.eager import EagerBackend
from tests.conftest import to_numpy, to_xp

torch = pytest.importorskip("torch")
swa_utils = torch.optim.swa_utils

SHAPES = [(3, 4), (5,), (), (0, 2), (2, 3)]
UPDATES = 12
RTOL, ATOL = 1e-12, 1e-15


class Model(torch.nn.Module):
    def __init__(self, values):
        super().__init__()
        self.ps = torch.nn.ParameterList([torch.nn.Parameter(torch.tensor(v)) for v in values])


def trajectory(seed=0):
    """Parameter values for each update: a random walk, as training makes."""
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(s) for s in SHAPES]
    out = []
    for _ in range(UPDATES):
        values = [np.asarray(v + 0.3 * rng.standard_normal(v.shape)) for v in values]  # 0-d stays an array
        out.append(values)
    return out


# name -> (our kwargs, torch kwargs): each side's own helpers
KINDS = {
    "swa_default": (lambda: {}, lambda: {}),  # torch on the CPU: get_swa_avg_fn, per tensor
    "swa_multi": (lambda: dict(multi_avg_fn=get_swa_multi_avg_fn()), lambda: {}),  # see get_swa_multi_avg_fn
    "ema_multi": (lambda: dict(multi_avg_fn=get_ema_multi_avg_fn(0.9)),
                  lambda: dict(multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.9))),
    "ema_multi_low_decay": (lambda: dict(multi_avg_fn=get_ema_multi_avg_fn(0.3)),  # lerp weight >= 0.5
                            lambda: dict(multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.3))),
    "ema_avg_fn": (lambda: dict(avg_fn=get_ema_avg_fn(0.95)), lambda: dict(avg_fn=swa_utils.get_ema_avg_fn(0.95))),
    "swa_avg_fn": (lambda: dict(avg_fn=get_swa_avg_fn()), lambda: dict(avg_fn=swa_utils.get_swa_avg_fn())),
}


def backends_for(xp):
    return ["eager", "cpu"] if xp.__name__ == "numpy" else ["eager"]


@pytest.mark.parametrize("backend", ["eager", "cpu"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_float64_matches_torch_averaged_model(kind, xp, backend):
    if backend not in backends_for(xp):
        pytest.skip("the cpu backend runs NumPy arrays only")
    if backend == "cpu":
        pytest.importorskip("numba")
    ours_kw, torch_kw = KINDS[kind]
    start = [np.zeros(s) for s in SHAPES]
    params = [to_xp(xp, np.array(v)) for v in start]
    avg = AveragedParams(params, **ours_kw(), backend=backend)
    model = Model(start).double()
    tavg = swa_utils.AveragedModel(model, **torch_kw())
    for k, values in enumerate(trajectory()):
        for p, v in zip(params, values):
            p[...] = to_xp(xp, v)  # the parameters change in place, as an optimizer moves them
        with torch.no_grad():
            for tp, v in zip(model.ps, values):
                tp.copy_(torch.tensor(v))
        avg.update_parameters(params)
        tavg.update_parameters(model)
        assert avg.n_averaged == int(tavg.n_averaged) == k + 1
        for i, (a, t) in enumerate(zip(avg.averaged, tavg.module.ps)):
            np.testing.assert_allclose(to_numpy(a), t.detach().numpy(), rtol=RTOL, atol=ATOL,
                                       err_msg=f"{kind}: update {k + 1}, array {i}")


def test_swa_is_the_exact_mean_of_the_updates():
    values = trajectory()
    avg = AveragedParams([np.zeros(s) for s in SHAPES])
    for vs in values:
        avg.update_parameters(vs)
    for i, a in enumerate(avg.averaged):
        np.testing.assert_allclose(a, np.mean([vs[i] for vs in values], axis=0), rtol=1e-13, atol=1e-15)


def test_torchs_multi_swa_rounds_its_weight_to_float32():
    """Why get_swa_multi_avg_fn is compared with torch's default: torch's own is off by ~1e-8."""
    values = trajectory()
    model = Model([np.zeros(s) for s in SHAPES]).double()
    tavg = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_swa_multi_avg_fn())
    for vs in values:
        with torch.no_grad():
            for tp, v in zip(model.ps, vs):
                tp.copy_(torch.tensor(v))
        tavg.update_parameters(model)
    exact = np.mean([vs[0] for vs in values], axis=0)
    err = np.max(np.abs(tavg.module.ps[0].detach().numpy() - exact) / np.abs(exact))
    assert 1e-12 < err < 1e-6


def test_one_fused_pass_per_bucket(monkeypatch):
    calls = []
    original = EagerBackend.run_stage

    def counting(self, rule, static, scalars, layout, tensors, xp):
        calls.append((rule.__name__, len(tensors)))
        return original(self, rule, static, scalars, layout, tensors, xp)

    monkeypatch.setattr(EagerBackend, "run_stage", counting)
    params = [np.zeros((3,)), np.zeros((2, 2)), np.zeros((4,), dtype=np.float32), np.zeros((0,))]
    for kw in ({}, dict(multi_avg_fn=get_ema_multi_avg_fn(0.9))):
        calls.clear()
        avg = AveragedParams(params, **kw, backend="eager")
        avg.update_parameters(params)  # the first update copies: no pass
        assert calls == []
        avg.update_parameters(params)
        # float64 arrays in one pass, float32 in another; the empty array in none
        assert sorted(n for _, n in calls) == [1, 2], calls


def test_dtypes_and_namespaces_are_kept():
    params = [np.ones(3, dtype=np.float32), np.ones(2)]
    avg = AveragedParams(params, multi_avg_fn=get_ema_multi_avg_fn(0.5))
    assert [a.dtype for a in avg.averaged] == [np.float32, np.float64]
    assert all(a is not p for a, p in zip(avg.averaged, params))
    avg.update_parameters(params)
    avg.update_parameters([np.full(3, 3.0), np.full(2, 3.0, dtype=np.float32)])  # other float dtypes are cast
    np.testing.assert_array_equal(avg.averaged[0], np.full(3, 2.0, dtype=np.float32))
    np.testing.assert_array_equal(avg.averaged[1], np.full(2, 2.0))


def test_state_dict_round_trip_and_torch_state_loads(xp):
    values = trajectory()
    params = [to_xp(xp, np.zeros(s)) for s in SHAPES]
    avg = AveragedParams(params, multi_avg_fn=get_ema_multi_avg_fn(0.8))
    for vs in values[:5]:
        avg.update_parameters([to_xp(xp, v) for v in vs])
    saved = pickle.loads(pickle.dumps(avg.state_dict()))
    other = AveragedParams([to_xp(xp, np.zeros(s)) for s in SHAPES], multi_avg_fn=get_ema_multi_avg_fn(0.8))
    kept = other.averaged[0]
    other.load_state_dict(saved)
    assert other.averaged[0] is kept  # loaded in place
    assert other.n_averaged == 5
    for a, b in zip(other.averaged, avg.averaged):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    # torch's AveragedModel state_dict: n_averaged as a long tensor and module.* entries
    model = Model([np.zeros(s) for s in SHAPES]).double()
    tavg = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.8))
    for vs in values[:5]:
        with torch.no_grad():
            for tp, v in zip(model.ps, vs):
                tp.copy_(torch.tensor(v))
        tavg.update_parameters(model)
    from_torch = AveragedParams([to_xp(xp, np.zeros(s)) for s in SHAPES], multi_avg_fn=get_ema_multi_avg_fn(0.8))
    from_torch.load_state_dict(tavg.state_dict())
    assert from_torch.n_averaged == 5
    for a, t in zip(from_torch.averaged, tavg.module.ps):
        np.testing.assert_allclose(to_numpy(a), t.detach().numpy(), rtol=RTOL, atol=ATOL)


def test_bad_update_and_bad_load_change_nothing():
    params = [np.ones(s) for s in SHAPES]
    avg = AveragedParams(params)
    avg.update_parameters(params)
    before = [a.copy() for a in avg.averaged]
    bad_updates = [
        (params[:-1], ValueError, "has 4 arrays"),
        ([*params[:-1], np.ones((3, 2))], ValueError, r"params\[4\] has shape \(3, 2\)"),
        ([*params[:-1], np.ones((2, 3), dtype=np.int64)], TypeError, r"params\[4\] has dtype int64"),
        ([*params[:-1], [[1.0] * 3] * 2], TypeError, r"params\[4\] must be an array"),
        (np.ones(3), TypeError, "params must be a list of arrays"),
    ]
    for bad, exc, match in bad_updates:
        with pytest.raises(exc, match=match):
            avg.update_parameters(bad)
    good = copy.deepcopy(avg.state_dict())
    bad_loads = [
        ({**good, "n_averaged": -1}, ValueError, r"n_averaged'\] must be >= 0"),
        ({**good, "n_averaged": 1.5}, TypeError, r"n_averaged'\] must be an int"),
        ({**good, "averaged": good["averaged"][:-1]}, ValueError, "holds 4 arrays"),
        ({**good, "averaged": [*good["averaged"][:-1], np.ones(6)]}, ValueError, r"\[4\] has shape \(6,\)"),
        ({**good, "extra": 1}, ValueError, "unexpected entries"),
        ({"averaged": good["averaged"]}, TypeError, "'n_averaged'"),
    ]
    for bad, exc, match in bad_loads:
        with pytest.raises(exc, match=match):
            avg.load_state_dict(bad)
    for a, b in zip(avg.averaged, before):
        np.testing.assert_array_equal(a, b)
    assert avg.n_averaged == 1


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(avg_fn=get_swa_avg_fn(), multi_avg_fn=get_swa_multi_avg_fn()), ValueError, "Only one of"),
    (dict(avg_fn="mean"), TypeError, "avg_fn must be a function"),
    (dict(backend="warp-drive"), ValueError, r"Invalid backend: 'warp-drive'"),
])
def test_constructor_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        AveragedParams([np.zeros(2)], **kwargs)


def test_constructor_rejects_bad_params():
    with pytest.raises(TypeError, match="params must be a list"):
        AveragedParams(np.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        AveragedParams([])
    with pytest.raises(TypeError, match=r"params\[1\] has dtype int64"):
        AveragedParams([np.zeros(2), np.zeros(2, dtype=np.int64)])


@pytest.mark.parametrize("decay", [-0.1, 1.5, float("nan")])
def test_decay_errors_match_torch(decay):
    for ours, theirs in ((get_ema_multi_avg_fn, swa_utils.get_ema_multi_avg_fn),
                         (get_ema_avg_fn, swa_utils.get_ema_avg_fn)):
        if decay == decay:  # torch lets NaN through; we refuse it as well
            with pytest.raises(ValueError) as err:
                theirs(decay)
            with pytest.raises(ValueError, match="Invalid decay value") as mine:
                ours(decay)
            assert str(mine.value) == str(err.value)
        else:
            with pytest.raises(ValueError, match="Invalid decay value"):
                ours(decay)


def test_custom_multi_avg_fn_gets_buckets_and_the_count():
    seen = []

    def fn(averaged, current, n):
        seen.append((len(averaged), n))
        for a, c in zip(averaged, current):
            a[...] = np.maximum(a, c)

    params = [np.zeros(2), np.zeros(3, dtype=np.float32)]
    avg = AveragedParams(params, multi_avg_fn=fn)
    for v in (1.0, 3.0, 2.0):
        avg.update_parameters([np.full(2, v), np.full(3, v, dtype=np.float32)])
    assert seen == [(1, 1), (1, 1), (1, 2), (1, 2)]
    np.testing.assert_array_equal(avg.averaged[0], [3.0, 3.0])


def test_docstring_examples_run():
    import doctest

    import ms_optim.averaging

    result = doctest.testmod(ms_optim.averaging, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------- SWALR


def _opts(lrs=(0.1, 0.03)):
    ours = ms_optim.SGD([{"params": [np.zeros(2)], "lr": lr} for lr in lrs], lr=0.1, momentum=0.9)
    theirs = torch.optim.SGD([{"params": [torch.zeros(2)], "lr": lr} for lr in lrs], lr=0.1, momentum=0.9)
    return ours, theirs


SWALR_CASES = {
    "cos": dict(swa_lr=0.05),
    "linear": dict(swa_lr=0.05, anneal_strategy="linear", anneal_epochs=4),
    "per_group": dict(swa_lr=[0.01, 0.2], anneal_epochs=7),
    "no_anneal": dict(swa_lr=0.02, anneal_epochs=0),
    "one_epoch_linear": dict(swa_lr=0.3, anneal_epochs=1, anneal_strategy="linear"),
}


@pytest.mark.parametrize("name", list(SWALR_CASES))
def test_swalr_matches_torch_at_every_step(name):
    kw = SWALR_CASES[name]
    opt, topt = _opts()
    sched = schedulers.SWALR(opt, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "lr_scheduler.step() before optimizer.step()"
        tsched = swa_utils.SWALR(topt, **kw)
        for k in range(20):
            assert [g["swa_lr"] for g in opt.param_groups] == [g["swa_lr"] for g in topt.param_groups]
            np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12, atol=0,
                                       err_msg=f"step {k}")
            np.testing.assert_allclose([g["lr"] for g in opt.param_groups], [g["lr"] for g in topt.param_groups],
                                       rtol=1e-12, atol=0)
            sched.step()
            tsched.step()


def test_swalr_after_another_schedule_matches_torch():
    """The recursive form continues from wherever the lr is when SWA starts."""
    opt, topt = _opts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cos = schedulers.CosineAnnealingLR(opt, T_max=20)
        tcos = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=20)
        for _ in range(8):
            cos.step()
            tcos.step()
        sched = schedulers.SWALR(opt, swa_lr=0.01, anneal_epochs=5)
        tsched = swa_utils.SWALR(topt, swa_lr=0.01, anneal_epochs=5)
        for k in range(10):
            np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12, atol=0,
                                       err_msg=f"step {k}")
            sched.step()
            tsched.step()


def test_swalr_state_dict_round_trip_and_torchs_loads():
    opt, topt = _opts()
    sched = schedulers.SWALR(opt, swa_lr=0.05, anneal_epochs=6, anneal_strategy="linear")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tsched = swa_utils.SWALR(topt, swa_lr=0.05, anneal_epochs=6, anneal_strategy="linear")
        for _ in range(3):
            sched.step()
            tsched.step()
    for state in (pickle.loads(pickle.dumps(sched.state_dict())), tsched.state_dict()):
        opt2, _ = _opts()
        opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # the groups' lr, initial_lr and swa_lr
        sched2 = schedulers.SWALR(opt2, swa_lr=0.05)  # cos, 10 epochs: the state brings linear, 6
        sched2.load_state_dict(state)
        assert sched2.anneal_epochs == 6 and sched2._anneal_strategy == "linear"
        ref = copy.deepcopy(sched)
        for _ in range(6):
            sched2.step()
            ref.step()
            assert sched2.get_last_lr() == ref.get_last_lr()


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(swa_lr=0.05, anneal_strategy="cosine"), ValueError, "anneal_strategy must be one of 'cos', 'linear'"),
    (dict(swa_lr=0.05, anneal_epochs=-1), ValueError, "anneal_epochs must be an int >= 0"),
    (dict(swa_lr=0.05, anneal_epochs=2.0), TypeError, "anneal_epochs must be an int"),
    (dict(swa_lr=[0.05]), ValueError, r"swa_lr must have one value per param group \(2\)"),
    (dict(swa_lr=-0.1), ValueError, "swa_lr must be in"),
    (dict(swa_lr="0.1"), TypeError, "swa_lr must be a real number"),
])
def test_swalr_rejects_and_writes_nothing(kwargs, exc, match):
    opt, _ = _opts()
    before = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    with pytest.raises(exc, match=match):
        schedulers.SWALR(opt, **kwargs)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == before


def test_swalr_adopts_a_group_added_later():
    opt, _ = _opts()
    sched = schedulers.SWALR(opt, swa_lr=0.05, anneal_epochs=0)
    opt.add_param_group({"params": [np.zeros(1)], "lr": 0.5})
    sched.step()
    assert opt.param_groups[2]["swa_lr"] == 0.05
    assert sched.get_last_lr() == [0.05, 0.05, 0.05]
    per_group = schedulers.SWALR(_opts()[0], swa_lr=[0.05, 0.02])
    per_group.optimizer.add_param_group({"params": [np.zeros(1)], "lr": 0.5})
    with pytest.raises(ValueError, match=r"param_groups\[2\].*no 'swa_lr'"):
        per_group.step()
