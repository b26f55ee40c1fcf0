"""ms_optim.GradScaler against torch.amp.GradScaler("cpu") driving the same optimizer.

Both sides get the same raw gradients, scaled by their own scaler, with NaN
and inf injected at some steps; the scale and growth-tracker trajectories
must be identical, parameters and state agree to 1e-9 relative in float64,
and a skipped step leaves parameters, state and step counts bit-identical.
"""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ms_optim
from ms_optim.amp import GradScaler, OptState, update_scale_
from ms_optim.clipping import clip_grad_norm_
from tests.conftest import to_numpy, to_xp

torch = pytest.importorskip("torch")

SOAK = os.environ.get("MS_OPTIM_SOAK") == "1"
EXAMPLES = 2000 if SOAK else 60

SHAPES = [(4, 3), (5,), (2, 2, 2)]
STEPS = 16
#: step -> (param index, value): overflows on single, consecutive and late steps
BAD = {2: (0, np.nan), 5: (1, np.inf), 6: (2, -np.inf), 11: (0, np.nan)}
SCALER = dict(init_scale=2.0**10, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)

OPTIMIZERS = {
    "sgd-momentum": ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    "adamw": ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    "adam-amsgrad": ("Adam", dict(lr=0.01, amsgrad=True)),
}


def _plan(seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s) for s in SHAPES]
    raw = []
    for k in range(STEPS):
        grads = [rng.standard_normal(s) for s in SHAPES]
        if k in BAD:
            i, v = BAD[k]
            grads[i].flat[1] = v
        if k == 8:
            grads[1] = None  # a param without a gradient this step
        raw.append(grads)
    return init, raw


def _snapshot(opt, params):
    return copy.deepcopy(([to_numpy(p) for p in params],
                          {i: {k: (to_numpy(v) if hasattr(v, "shape") else v) for k, v in opt.state[p].items()}
                           for i, p in enumerate(params) if p in opt.state}))


def _assert_same_snapshot(a, b):
    (pa, sa), (pb, sb) = a, b
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(x, y)
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for k in sa[i]:
            np.testing.assert_array_equal(sa[i][k], sb[i][k])


def _torch_run(name, config, init, raw, clip=None):
    params = [torch.tensor(a, requires_grad=True) for a in init]
    opt = getattr(torch.optim, name)(params, **config, foreach=False)
    scaler = torch.amp.GradScaler("cpu", **SCALER)
    trajectory = []
    for grads in raw:
        scaled = scaler.scale([torch.tensor(g) for g in grads if g is not None])
        it = iter(scaled)
        for p, g in zip(params, grads):
            p.grad = None if g is None else next(it)
        if clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(opt)
        scaler.update()
        trajectory.append((scaler.get_scale(), scaler._get_growth_tracker(),
                           [p.detach().numpy().copy() for p in params],
                           {i: {k: v.numpy().copy() for k, v in opt.state[p].items()}
                            for i, p in enumerate(params) if p in opt.state}))
    return trajectory, scaler


@pytest.mark.parametrize("fused_clip", [False, True], ids=["separate", "fused"])
@pytest.mark.parametrize("clip", [None, 0.5], ids=["plain", "unscale-clip-step"])
@pytest.mark.parametrize("opt_id", list(OPTIMIZERS))
def test_trajectory_matches_torch(xp, opt_id, clip, fused_clip):
    if fused_clip and clip is None:
        pytest.skip("the fused clip needs a clip")
    name, config = OPTIMIZERS[opt_id]
    init, raw = _plan()
    expected, tscaler = _torch_run(name, config, init, raw, clip)
    params = [to_xp(xp, a.copy()) for a in init]
    opt = getattr(ms_optim, name)(params, **config)
    scaler = GradScaler(**SCALER)
    skipped = 0
    for k, (grads, (tscale, ttracker, tparams, tstate)) in enumerate(zip(raw, expected)):
        present = [to_xp(xp, g.copy()) for g in grads if g is not None]
        scaled = iter(scaler.scale(present))
        mgrads = [None if g is None else next(scaled) for g in grads]
        before = _snapshot(opt, params)
        if fused_clip:
            kept = [None if g is None else to_numpy(g).copy() for g in mgrads]
            scaler.clip_grad_norm_(opt, mgrads, clip)  # torch's unscale_ + clip_grad_norm_, left to the step
            for g, k_ in zip(mgrads, kept):
                if g is not None:
                    np.testing.assert_array_equal(to_numpy(g), k_, err_msg="clip_grad_norm_ wrote a gradient")
        elif clip is not None:
            scaler.unscale_(opt, mgrads)
            clip_grad_norm_(mgrads, clip)
        out = scaler.step(opt, mgrads)
        assert out is None
        if k in BAD:
            skipped += 1
            _assert_same_snapshot(before, _snapshot(opt, params))  # nothing changed, bit for bit
        scaler.update()
        assert scaler.get_scale() == tscale, f"step {k}: scale"
        assert scaler._get_growth_tracker() == ttracker, f"step {k}: growth tracker"
        for p, tp in zip(params, tparams):
            np.testing.assert_allclose(to_numpy(p), tp, rtol=1e-9, atol=1e-12, err_msg=f"step {k}")
        for i, st_ in tstate.items():
            ours = opt.state[params[i]]
            assert set(ours) == set(st_)
            for key, tv in st_.items():
                if key == "step":
                    assert ours["step"] == int(tv.item()), f"step {k}: step count of param {i}"
                else:
                    np.testing.assert_allclose(to_numpy(ours[key]), tv, rtol=1e-9, atol=1e-12)
    assert skipped == len(BAD)
    assert scaler.state_dict() == tscaler.state_dict()


def test_scale_keeps_torchs_dtypes():
    for dtype, shape in [(np.float16, ()), (np.float16, (3,)), (np.float32, ()), (np.float64, (2,))]:
        x = np.asarray(np.linspace(-2, 3, math.prod(shape)).reshape(shape)).astype(dtype) + dtype(0.1)
        ours = GradScaler(init_scale=3.0).scale(x)
        theirs = torch.amp.GradScaler("cpu", init_scale=3.0).scale(torch.from_numpy(np.array(x)))
        assert ours.dtype == theirs.numpy().dtype, (dtype, shape)
        np.testing.assert_array_equal(ours, theirs.numpy())


def test_scale_structures_and_numbers():
    s = GradScaler(init_scale=4.0)
    out = s.scale([np.ones(2), (np.ones(1), 2.0)])
    assert isinstance(out, list) and isinstance(out[1], tuple)
    np.testing.assert_array_equal(out[0], [4.0, 4.0])
    assert float(out[1][1]) == 8.0 and out[1][1].dtype == np.float64
    assert list(map(float, s.scale(iter([np.ones(()), np.ones(())])))) == [4.0, 4.0]
    with pytest.raises(TypeError, match="outputs"):
        s.scale("loss")
    with pytest.raises(TypeError, match=r"outputs\[0\]"):
        s.scale([np.ones(2, dtype=np.int64)])


def test_scale_lives_in_the_first_arrays_namespace(xp):
    s = GradScaler()
    y = s.scale(to_xp(xp, np.ones(3)))
    assert type(s._scale) is type(y) and s._scale.dtype == xp.float32 and s._growth_tracker.dtype == xp.int32


def test_two_optimizers_one_scaler():
    init, raw = _plan(1)
    tp = [torch.tensor(a, requires_grad=True) for a in init]
    topts = [torch.optim.SGD(tp[:1], lr=0.1), torch.optim.AdamW(tp[1:], lr=0.01)]
    ts = torch.amp.GradScaler("cpu", **SCALER)
    mp = [a.copy() for a in init]
    mopts = [ms_optim.SGD(mp[:1], lr=0.1), ms_optim.AdamW(mp[1:], lr=0.01)]
    ms = GradScaler(**SCALER)
    for grads in raw:
        grads = [np.zeros(s) if g is None else g for g, s in zip(grads, SHAPES)]
        for p, g in zip(tp, ts.scale([torch.tensor(g) for g in grads])):
            p.grad = g
        for o in topts:
            ts.step(o)
        ts.update()
        mg = ms.scale([g.copy() for g in grads])
        ms.step(mopts[0], mg[:1])
        ms.step(mopts[1], mg[1:])
        ms.update()
        assert ms.get_scale() == ts.get_scale()
        for a, b in zip(mp, tp):
            np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_growth_stops_at_float32_max():
    s, t = GradScaler(init_scale=3e38, growth_interval=1), torch.amp.GradScaler("cpu", init_scale=3e38,
                                                                                 growth_interval=1)
    w = np.zeros(2)
    opt = ms_optim.SGD([w], lr=0.1)
    s.scale(np.ones(())), t.scale(torch.ones(()))
    tw = torch.zeros(2, requires_grad=True)
    topt = torch.optim.SGD([tw], lr=0.1)
    for _ in range(3):
        s.step(opt, [np.ones(2)])
        s.update()
        tw.grad = torch.ones(2)
        t.step(topt)
        t.update()
        assert s.get_scale() == t.get_scale() and s._get_growth_tracker() == t._get_growth_tracker()


@settings(max_examples=EXAMPLES, deadline=None)
@given(found=st.lists(st.booleans(), min_size=1, max_size=40),
       init_scale=st.floats(1e-3, 1e30), growth_factor=st.floats(1.0001, 10.0),
       backoff_factor=st.floats(1e-3, 0.999), growth_interval=st.integers(1, 5))
def test_property_update_scale_matches_torch(found, init_scale, growth_factor, backoff_factor, growth_interval):
    scale = np.full((), init_scale, np.float32)
    tracker = np.zeros((), np.int32)
    tscale = torch.full((), init_scale, dtype=torch.float32)
    ttracker = torch.zeros((), dtype=torch.int32)
    for f in found:
        flag = np.asarray(float(f), np.float32)
        update_scale_(scale, tracker, flag, growth_factor, backoff_factor, growth_interval)
        torch._amp_update_scale_(tscale, ttracker, torch.tensor(float(f)), growth_factor, backoff_factor,
                                 growth_interval)
        assert scale.tobytes() == tscale.numpy().tobytes()
        assert int(tracker) == int(ttracker)


@settings(max_examples=EXAMPLES, deadline=None)
@given(values=st.lists(st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf])),
                       min_size=1, max_size=30),
       dtype=st.sampled_from([np.float32, np.float64]), scale=st.floats(1e-3, 1e8))
def test_property_unscale_matches_torchs_kernel(values, dtype, scale):
    g = np.array(values, dtype=dtype)
    tg = torch.from_numpy(g.copy())
    s = GradScaler(init_scale=scale)
    s.scale(np.ones(()))
    opt = ms_optim.SGD([np.zeros_like(g)], lr=0.1)
    s.unscale_(opt, [g])
    inv = torch.full((), scale, dtype=torch.float32).double().reciprocal().float()
    found = torch.zeros(())
    torch._amp_foreach_non_finite_check_and_unscale_([tg], found, inv)
    np.testing.assert_array_equal(g, tg.numpy())
    assert float(s._found_inf_per_device(opt)[next(iter(s._found_inf_per_device(opt)))]) == found.item()


# ------------------------------------------------------------- errors and state


def _ready(enabled=True, **kw):
    w = np.zeros(3)
    opt = ms_optim.SGD([w], lr=0.1)
    s = GradScaler(enabled=enabled, **kw)
    s.scale(np.ones(()))
    return s, opt, w


def test_call_order_errors_are_torchs():
    s, opt, _ = _ready()
    g = [np.ones(3)]
    s.unscale_(opt, g)
    with pytest.raises(RuntimeError, match=r"^unscale_\(\) has already been called on this optimizer"):
        s.unscale_(opt, g)
    s.step(opt, g)
    with pytest.raises(RuntimeError, match=r"^unscale_\(\) is being called after step\(\)\.$"):
        s.unscale_(opt, g)
    with pytest.raises(RuntimeError, match=r"^step\(\) has already been called since the last update\(\)\.$"):
        s.step(opt, g)
    s.update()
    with pytest.raises(AssertionError, match="No inf checks were recorded prior to update"):
        s.update()
    with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
        s.step(opt, g, closure=lambda: 0)
    fresh = GradScaler()
    with pytest.raises(AssertionError, match="Attempted step but _scale is None"):
        fresh.step(opt, g)
    with pytest.raises(AssertionError, match="No inf checks were recorded for this optimizer"):
        s.step(opt, [None])


def test_bad_gradients_refused_before_anything_changes():
    s, opt, w = _ready()
    g16 = [np.ones(3, np.float16) * 8]
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        s.unscale_(opt, g16)
    np.testing.assert_array_equal(g16[0], 8)
    for bad, exc in [([np.ones(4)], ValueError), ([np.ones(3), np.ones(3)], ValueError),
                     (np.ones(3), TypeError), ([[1.0, 2.0, 3.0]], TypeError)]:
        with pytest.raises(exc, match="grads"):
            s.unscale_(opt, bad)
    assert s._opt_state(opt)["stage"] is OptState.READY
    np.testing.assert_array_equal(w, 0)
    s.step(opt, [np.full(3, 2.0**16)])  # still usable: nothing was recorded by the failures
    np.testing.assert_allclose(w, -0.1)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(growth_factor=1.0), AssertionError, "The growth factor must be > 1.0"),
    (dict(growth_factor=0.5), ValueError, "growth_factor"),
    (dict(backoff_factor=1.0), AssertionError, "The backoff factor must be < 1.0"),
    (dict(backoff_factor=0.0), ValueError, "backoff_factor"),
    (dict(init_scale=-1.0), ValueError, "init_scale"),
    (dict(init_scale=math.inf), ValueError, "init_scale"),
    (dict(init_scale="cuda"), TypeError, "no device argument"),
    (dict(growth_interval=0), ValueError, "growth_interval"),
    (dict(growth_interval=2.5), TypeError, "growth_interval"),
    (dict(enabled="yes"), TypeError, "enabled"),
])
def test_bad_constructor_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        GradScaler(**kw)


def test_setters_getters_and_new_scale():
    s, opt, _ = _ready(init_scale=8.0)
    s.set_growth_factor(3.0), s.set_backoff_factor(0.25), s.set_growth_interval(7)
    assert (s.get_growth_factor(), s.get_backoff_factor(), s.get_growth_interval()) == (3.0, 0.25, 7)
    with pytest.raises(ValueError, match="new_factor"):
        s.set_backoff_factor(2.0)
    s.step(opt, [np.ones(3)])
    s.update(new_scale=100.0)
    assert s.get_scale() == 100.0 and s._per_optimizer_states == {}
    s.update(new_scale=np.asarray([5.0]))
    assert s.get_scale() == 5.0
    with pytest.raises(ValueError, match="new_scale"):
        s.update(new_scale=np.ones(2))
    with pytest.raises(ValueError, match="new_scale"):
        s.update(new_scale=-1.0)
    assert s.get_scale() == 5.0 and s.is_enabled()


def test_disabled_scaler_is_transparent():
    s, opt, w = _ready(enabled=False, growth_factor=0.1)  # torch checks nothing when disabled either
    x = np.ones(3)
    assert s.scale(x) is x and s.get_scale() == 1.0 and not s.is_enabled()
    s.unscale_(opt, [np.ones(3)])
    s.step(opt, [np.full(3, np.nan)])  # no check: a plain optimizer step
    assert np.isnan(w).all()
    s.update()
    assert s.state_dict() == {}
    s.load_state_dict({})
    t = torch.amp.GradScaler("cpu", enabled=False)
    assert t.state_dict() == s.state_dict()


def test_state_dict_round_trips_with_torch():
    s, opt, _ = _ready(**SCALER)
    for _ in range(2):
        s.step(opt, [np.ones(3)])
        s.update()
    sd = s.state_dict()
    t = torch.amp.GradScaler("cpu")
    t.load_state_dict(sd)
    assert t.state_dict() == sd
    t.scale(torch.ones(()))
    t2 = GradScaler()
    t2.load_state_dict(t.state_dict())
    assert t2.state_dict() == sd
    t2.scale(np.ones(()))
    assert t2.get_scale() == sd["scale"] and t2._get_growth_tracker() == 2


@pytest.mark.parametrize("field,value,exc", [
    ("scale", 0.0, ValueError), ("scale", "big", TypeError), ("growth_factor", 0.9, ValueError),
    ("backoff_factor", 1.5, ValueError), ("growth_interval", 0, ValueError),
    ("_growth_tracker", -1, ValueError), ("_growth_tracker", 1.5, TypeError), ("scale", None, TypeError),
])
def test_load_state_dict_checks_everything_first(field, value, exc):
    s, opt, _ = _ready(**SCALER)
    before = s.state_dict()
    bad = {**before, "growth_factor": 4.0, field: value}  # a good change before the bad one
    with pytest.raises(exc, match=field):
        s.load_state_dict(bad)
    assert s.state_dict() == before
    with pytest.raises(ValueError, match="lacks"):
        s.load_state_dict({"scale": 2.0})
    with pytest.raises(RuntimeError, match="source state dict is empty"):
        s.load_state_dict({})
    assert s.state_dict() == before


class _FusedSGD:
    """An optimizer that follows the fused contract: it unscales and skips on the device itself."""

    _step_supports_amp_scaling = True

    def __init__(self, w, lr):
        self.w, self.lr, self.calls = w, lr, []

    def step(self, grads, grad_scale=None, found_inf=None):
        self.calls.append((grad_scale, found_inf))
        inv = 1.0 if grad_scale is None else 1.0 / np.float64(grad_scale)
        keep = np.float64(found_inf) != 0
        self.w[...] = np.where(keep, self.w, self.w - self.lr * grads[0] * inv)


def test_fused_contract_hands_scale_and_flag_to_the_optimizer():
    w = np.zeros(2)
    opt = _FusedSGD(w, 0.5)
    s = GradScaler(init_scale=4.0)
    g = s.scale([np.ones(2)])
    s.step(opt, g)
    np.testing.assert_array_equal(g[0], 4.0)  # not unscaled by the scaler: the optimizer did it
    np.testing.assert_allclose(w, -0.5)
    assert float(opt.calls[-1][0]) == 4.0 and float(opt.calls[-1][1]) == 0.0
    s.update()
    s.step(opt, [np.array([np.inf, 1.0])])
    np.testing.assert_allclose(w, -0.5)
    assert float(opt.calls[-1][1]) == 1.0
    s.update()
    assert s.get_scale() == 2.0
    gg = s.scale([np.ones(2)])
    s.unscale_(opt, gg)
    s.step(opt, gg)
    assert opt.calls[-1][0] is None  # already unscaled


# ------------------------------------------- the unscale fused into the update


@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_the_fused_unscale_matches_torch_and_leaves_the_gradients_alone(backend):
    if backend == "cpu":
        pytest.importorskip("numba")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 5)).astype(np.float32)
    tw = torch.tensor(w.copy(), requires_grad=True)
    opt = ms_optim.AdamW([w], lr=0.01, weight_decay=0.1, backend=backend)
    topt = torch.optim.AdamW([tw], lr=0.01, weight_decay=0.1)
    scaler, tscaler = GradScaler(init_scale=2.0**10, growth_interval=2), torch.amp.GradScaler("cpu", init_scale=2.0**10,
                                                                                         growth_interval=2)
    assert opt._step_supports_amp_scaling
    for k in range(8):
        g = (rng.standard_normal((4, 5)) * 2.0**10).astype(np.float32)
        if k == 3:
            g[1, 2] = np.inf  # a skipped step
        kept = g.copy()
        tw.grad = torch.tensor(g.copy())
        scaler.scale(np.ones((), np.float32))
        tscaler.scale(torch.ones(()))
        scaler.step(opt, [g])
        scaler.update()
        tscaler.step(topt)
        tscaler.update()
        np.testing.assert_array_equal(g, kept, err_msg="the gradients are read, not unscaled in place")
        np.testing.assert_array_equal(w, tw.detach().numpy())
        assert scaler.get_scale() == tscaler.get_scale()
    assert opt.state[w]["step"] == 7


def test_step_with_found_inf_changes_nothing_and_staged_optimizers_refuse_a_scale():
    w = np.ones(3)
    opt = ms_optim.Adam([w], lr=0.1)
    opt.step([np.ones(3)])
    before = w.copy(), {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in opt.state[w].items()}
    opt.step([np.ones(3)], grad_scale=np.float32(4.0), found_inf=np.ones((), np.float32))
    np.testing.assert_array_equal(w, before[0])
    assert opt.state[w]["step"] == 1
    with pytest.raises(ValueError, match="grads has 2 entries"):
        opt.step([np.ones(3), np.ones(3)], found_inf=np.ones((), np.float32))
    with pytest.raises(ValueError, match="grad_scale must be a positive finite number"):
        opt.step([np.ones(3)], grad_scale=0.0)
    m = np.ones((3, 3))
    muon = ms_optim.Muon([m], lr=0.1)
    assert not muon._step_supports_amp_scaling
    with pytest.raises(TypeError, match="Muon.step takes no grad_scale"):
        muon.step([np.ones((3, 3))], grad_scale=2.0)


# ------------------------------------------- the clip fused into the update


def _scaled_grads(rng, shapes, scale, dtype, bad=None):
    grads = [(rng.standard_normal(s) * 3).astype(dtype) * dtype(scale) for s in shapes]
    if bad is not None:
        grads[bad[0]].flat[bad[1]] = bad[2]
    return grads


FUSED_CLIP_CASES = {
    # (optimizer, config, shapes, dtype, norm_type, compiled reductions)
    "adamw-f32-l2": ("AdamW", dict(lr=0.01, weight_decay=0.1), [(30, 40), (40,), (7, 3, 5)], np.float32, 2.0, False),
    "adamw-f32-l2-one-pass": ("AdamW", dict(lr=0.01, weight_decay=0.1), [(30, 40), (40,), (7, 3, 5)], np.float32,
                              2.0, True),
    "sgd-f64-inf-one-pass": ("SGD", dict(lr=0.05, momentum=0.9), [(20, 10), (9,)], np.float64, math.inf, True),
    "adam-f64-l1": ("Adam", dict(lr=0.01, amsgrad=True), [(20, 10), (9,)], np.float64, 1.0, False),
    "adamw-f32-p3-one-pass": ("AdamW", dict(lr=0.01), [(64, 8), (5,)], np.float32, 3.0, True),
    "rmsprop-f32-p0": ("RMSprop", dict(lr=0.01), [(6, 6), (5,)], np.float32, 0.0, False),
    "nadam-f64-neg-inf-one-pass": ("NAdam", dict(lr=0.01), [(6, 6), (5,)], np.float64, -math.inf, True),
}


@pytest.mark.parametrize("backend", ["eager", "cpu"])
@pytest.mark.parametrize("case", list(FUSED_CLIP_CASES))
def test_fused_clip_is_unscale_then_clip_then_step_bit_for_bit(case, backend, monkeypatch):
    """GradScaler.clip_grad_norm_ + step == unscale_ + clip_grad_norm_ + step: norms, parameters, state, scale."""
    if backend == "cpu":
        pytest.importorskip("numba")
    name, config, shapes, dtype, norm_type, compiled = FUSED_CLIP_CASES[case]
    if compiled:
        pytest.importorskip("numba")
        from ms_optim.engine import reductions

        monkeypatch.setattr(reductions, "MIN_ELEMENTS", 0)  # the multi-tensor pass on these small buckets
    rng = np.random.default_rng(5)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    runs = []
    for fused in (True, False):
        params = [a.copy() for a in init]
        opt = getattr(ms_optim, name)(params, **config, backend=backend)
        scaler = GradScaler(init_scale=2.0**8, growth_interval=2)
        rng = np.random.default_rng(6)
        record = []
        for k in range(12):
            bad = {3: (0, 4, np.inf), 4: (1, 0, np.nan), 9: (0, 0, -np.inf)}.get(k)
            scale = float(scaler.scale(np.ones((), np.float32)))
            grads = _scaled_grads(rng, shapes, scale, dtype, bad)
            if fused:
                norm = scaler.clip_grad_norm_(opt, grads, 0.5, norm_type)
            else:
                scaler.unscale_(opt, grads)
                norm = clip_grad_norm_(grads, 0.5, norm_type)
            scaler.step(opt, grads)
            scaler.update()
            record.append((np.asarray(norm).tobytes(), scaler.get_scale(), [p.tobytes() for p in params],
                           {i: {key: np.asarray(v).tobytes() for key, v in opt.state[p].items()}
                            for i, p in enumerate(params)}))
        runs.append(record)
    for k, (a, b) in enumerate(zip(*runs)):
        assert a[0] == b[0], f"step {k}: total norm"
        assert a[1] == b[1], f"step {k}: scale"
        assert a[2] == b[2], f"step {k}: parameters"
        assert a[3] == b[3], f"step {k}: state"


def test_fused_clip_finds_infs_exactly_when_the_norm_overflows():
    """A finite float64 gradient whose squares overflow: the norm is inf, the step still runs (as in torch)."""
    w = np.ones(3)
    opt = ms_optim.SGD([w], lr=0.1, momentum=0.9)
    scaler = GradScaler(init_scale=1.0)
    scaler.scale(1.0)
    g = np.array([1e200, -1e200, 1.0])
    norm = scaler.clip_grad_norm_(opt, [g], 1.0)
    assert float(norm) == math.inf
    flags = list(next(iter(scaler._per_optimizer_states.values()))["found_inf_per_device"].values())
    assert [float(f) for f in flags] == [0.0]
    scaler.step(opt, [g])
    # coefficient 1 / (inf + 1e-6) * 1 = 0: torch's clip zeroes the gradient and SGD leaves w
    np.testing.assert_array_equal(w, 1.0)
    np.testing.assert_array_equal(opt.state[w]["momentum_buffer"], 0.0)  # the step ran: not skipped


def test_fused_clip_on_an_optimizer_without_the_contract_writes_the_gradients():
    """Muon has no single rule: clip_grad_norm_ unscales and clips in place, exactly as the separate pair."""
    rng = np.random.default_rng(1)
    out = []
    for fused in (True, False):
        m = np.ones((4, 4))
        opt = ms_optim.Muon([m], lr=0.1)
        scaler = GradScaler(init_scale=2.0**4)
        scaler.scale(1.0)
        g = rng.standard_normal((4, 4)) * 16 if fused else out[0][2]
        g = g.copy()
        keep = g.copy()
        if fused:
            norm = scaler.clip_grad_norm_(opt, [g], 0.1)
        else:
            scaler.unscale_(opt, [g])
            norm = clip_grad_norm_([g], 0.1)
        scaler.step(opt, [g])
        out.append((float(norm), m.copy(), keep))
    assert out[0][0] == out[1][0]
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_fused_clip_refusals_change_nothing():
    w = np.ones(3, np.float32)
    opt = ms_optim.AdamW([w], lr=0.1)
    scaler = GradScaler(init_scale=4.0)
    scaler.scale(1.0)
    g = np.full(3, 8.0, np.float32)
    with pytest.raises(ValueError, match="max_norm must be non-negative"):
        scaler.clip_grad_norm_(opt, [g], -1.0)
    with pytest.raises(ValueError, match="norm_type must not be NaN"):
        scaler.clip_grad_norm_(opt, [g], 1.0, math.nan)
    with pytest.raises(ValueError, match="FP16"):
        scaler.clip_grad_norm_(ms_optim.SGD([np.ones(3, np.float16)], lr=0.1), [np.ones(3, np.float16)], 1.0)
    with pytest.raises(RuntimeError, match="non-finite"):
        scaler.clip_grad_norm_(opt, [np.array([np.inf, 0, 0], np.float32)], 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(g, 8.0)
    norm = scaler.clip_grad_norm_(opt, [g], 1.0)  # the refusals left the stage as it was
    assert float(norm) == pytest.approx(math.sqrt(3 * 4.0))
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.clip_grad_norm_(opt, [g], 1.0)
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_(opt, [g])
    with pytest.raises(ValueError, match="must be the arrays given to clip_grad_norm_"):
        scaler.step(opt, [g.copy()])
    np.testing.assert_array_equal(w, 1.0)
    assert w not in opt.state
    scaler.step(opt, [g])
    assert opt.state[w]["step"] == 1
    with pytest.raises(RuntimeError, match="after step"):
        scaler.clip_grad_norm_(opt, [g], 1.0)


def test_disabled_scaler_clip_is_plain_clip():
    g = [np.array([3.0, 4.0]), None]
    norm = GradScaler(enabled=False).clip_grad_norm_(ms_optim.SGD([np.ones(2), np.ones(1)], lr=0.1), g, 1.0)
    assert float(norm) == 5.0
    np.testing.assert_array_equal(g[0], np.array([3.0, 4.0]) * ((1.0 / (5.0 + 1e-6)) * 1.0))


@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_step_clip_coef_is_clip_grads_with_norm_then_step(backend):
    """Without a scaler: step(grads, clip_coef=c) reads g * c, what clip_grads_with_norm_ would write."""
    if backend == "cpu":
        pytest.importorskip("numba")
    from ms_optim.clipping import clip_coefficient, clip_grads_with_norm_, get_total_norm

    rng = np.random.default_rng(2)
    shapes = [(8, 5), (3,)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    a = [x.copy() for x in init]
    b = [x.copy() for x in init]
    oa = ms_optim.Adam(a, lr=0.01, backend=backend)
    ob = ms_optim.Adam(b, lr=0.01, backend=backend)
    for _ in range(5):
        grads = [rng.standard_normal(s).astype(np.float32) * 4 for s in shapes]
        kept = [g.copy() for g in grads]
        norm = get_total_norm(grads)
        oa.step(grads, clip_coef=clip_coefficient(1.0, norm))
        for g, k in zip(grads, kept):
            np.testing.assert_array_equal(g, k)
        clip_grads_with_norm_(grads, 1.0, norm)
        ob.step(grads)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    before = [x.copy() for x in a]
    for bad in (math.nan, 1.5, -0.1):
        with pytest.raises(ValueError, match="clip_coef must be a number in"):
            oa.step(grads, clip_coef=bad)
    with pytest.raises(TypeError, match="clip_coef"):
        oa.step(grads, clip_coef="0.5")
    for x, y in zip(a, before):
        np.testing.assert_array_equal(x, y)
    assert oa.state[a[0]]["step"] == 5
    muon = ms_optim.Muon([np.ones((3, 3))], lr=0.1)
    with pytest.raises(TypeError, match="Muon.step takes no grad_scale/found_inf/clip_coef"):
        muon.step([np.ones((3, 3))], clip_coef=0.5)


@settings(max_examples=EXAMPLES, deadline=None)
@given(values=st.lists(st.lists(st.one_of(st.floats(width=32, allow_nan=False, allow_infinity=False),
                                          st.sampled_from([math.nan, math.inf, -math.inf, 0.0])),
                                min_size=0, max_size=12), min_size=1, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64]), scale=st.floats(1e-3, 1e8),
       max_norm=st.floats(0.0, 10.0), norm_type=st.sampled_from([2.0, 1.0, math.inf, 3.0, 0.5, 0.0]),
       compiled=st.booleans())
def test_property_fused_clip_is_the_separate_pair(values, dtype, scale, max_norm, norm_type, compiled):
    """Any gradients (NaN, inf, zeros, empty, huge), any scale: the same norm, skip decision and step."""
    from ms_optim.engine import reductions

    saved = reductions.MIN_ELEMENTS
    reductions.MIN_ELEMENTS = 0 if compiled else 1 << 62
    try:
        out = []
        for fused in (True, False):
            params = [np.linspace(-1, 1, len(v)).astype(dtype) for v in values]
            opt = ms_optim.SGD(params, lr=0.1, momentum=0.9)
            s = GradScaler(init_scale=scale)
            s.scale(np.ones(()))
            grads = [np.array(v, dtype=dtype) for v in values]
            kept = [g.copy() for g in grads]
            try:
                with np.errstate(all="ignore"):
                    if fused:
                        norm = s.clip_grad_norm_(opt, grads, max_norm, norm_type)
                    else:
                        norm = clip_grad_norm_(grads, max_norm, norm_type)  # refuses before unscale_ writes
                        for g, k in zip(grads, kept):
                            np.copyto(g, k)
                        s.unscale_(opt, grads)
                        norm = clip_grad_norm_(grads, max_norm, norm_type)
                    s.step(opt, grads)
            except ValueError as exc:  # an empty gradient with an order that has no identity
                out.append(("refused", str(exc)))
                continue
            s.update()
            out.append((np.asarray(norm).tobytes(), s.get_scale(), [p.tobytes() for p in params],
                        [np.asarray(opt.state[p].get("momentum_buffer", np.nan)).tobytes() for p in params]))
        assert out[0] == out[1]
    finally:
        reductions.MIN_ELEMENTS = saved


def test_a_kept_plan_does_not_let_a_misfit_gradient_through_unscale_():
    """After steps that keep a plan, unscale_ still refuses a wrong shape before it writes anything."""
    params = [np.ones(3), np.ones(2)]
    opt = ms_optim.Adam(params, lr=0.1)
    s = GradScaler(init_scale=4.0)
    for _ in range(2):
        s.scale(1.0)
        s.step(opt, [np.ones(3), np.ones(2)])
        s.update()
    assert opt.__dict__.get("_step_plan") is not None
    s.scale(1.0)
    grads = [np.full(3, 8.0), np.full(3, 8.0)]
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \(3,\), its parameter \(2,\)"):
        s.unscale_(opt, grads)
    np.testing.assert_array_equal(grads[0], 8.0)
    cast = [np.full(3, 8.0, np.float32), np.full(2, 8.0)]  # a cast gradient: the full checks, then the step
    s.step(opt, cast)
    assert opt.state[params[0]]["step"] == 3


def test_scale_flag_and_clip_coef_of_another_namespace_are_read_together(monkeypatch):
    """On a device the scale, the flag and the coefficient come to the host in one transfer; the step is the same."""
    xps = pytest.importorskip("array_api_strict")
    import ms_optim.optimizer as optimizer_module

    calls = []
    real = optimizer_module._to_host
    monkeypatch.setattr(optimizer_module, "_to_host", lambda v, xp: calls.append(v.shape) or real(v, xp))
    results = []
    for scale, found, coef in ((xps.asarray(2.0, dtype=xps.float32), xps.asarray(0.0),
                                xps.asarray(0.25, dtype=xps.float32)), (2.0, 0.0, 0.25)):
        w = xps.asarray([1.0, 2.0])
        opt = ms_optim.SGD([w], lr=0.1)
        opt.step([xps.asarray([8.0, 8.0])], grad_scale=scale, found_inf=found, clip_coef=coef)
        results.append(np.asarray(w).tolist())
    assert results[0] == results[1] == [1.0 - 0.1, 2.0 - 0.1]
    assert calls == [(3,)]  # one stacked transfer for the three arrays, none for the numbers
    w = xps.asarray([1.0, 2.0])
    opt = ms_optim.SGD([w], lr=0.1)
    opt.step([xps.asarray([4.0, 4.0])], found_inf=xps.asarray(1.0), clip_coef=xps.asarray(0.5))
    assert np.asarray(w).tolist() == [1.0, 2.0]  # skipped
    with pytest.raises(ValueError, match="clip_coef must be a number or a 0-d array"):
        opt.step([xps.asarray([4.0, 4.0])], found_inf=xps.asarray(0.0), clip_coef=xps.asarray([0.5]))
