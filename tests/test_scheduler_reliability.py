"""Schedulers under bad input: every refused call changes nothing, loads check everything.

One builder per scheduler class drives generic tests: a refused constructor,
step or load_state_dict leaves the scheduler and the optimizer's param groups
bit-identical (compared through :func:`freeze`, which sees every attribute,
every float's bits and every 0-d array's bytes); torch's own state_dicts
load and continue as torch does; a state that went through JSON or an
npz-like conversion loads and continues bit for bit. Property tests
(hypothesis) compare random valid configurations with torch's schedulers
at every step and feed random invalid arguments.

The property tests run a small profile by default (a few seconds); set
``MS_OPTIM_SOAK=1`` for the large one.
"""

from __future__ import annotations

import copy
import json
import math
import os
import struct
import types
import warnings
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ms_optim
import schedulers as S
from schedulers.base import LRScheduler
from tests.test_schedulers import LRS, make_opt, make_torch_opt

settings.register_profile(
    "schedulers-small", max_examples=25, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(
    "schedulers-soak", max_examples=10000, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
PROFILE = settings.get_profile("schedulers-soak" if os.environ.get("MS_OPTIM_SOAK") == "1" else "schedulers-small")


# ------------------------------------------------------------------ freezing


def freeze(x, _seen=None):
    """A hashable picture of ``x``, equal only if ``x`` is bit-identical (floats by their bits)."""
    seen = set() if _seen is None else _seen
    if isinstance(x, float):
        return ("float", struct.pack("<d", x))
    if isinstance(x, (bool, int, str, bytes, type(None))):
        return (type(x).__name__, x)
    if hasattr(x, "__array_namespace__") or isinstance(x, np.generic):
        a = np.asarray(x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else x)
        return ("array", id(x) if not isinstance(x, np.generic) else None, str(a.dtype), a.shape, a.tobytes())
    if id(x) in seen:
        return ("seen", id(x))
    if isinstance(x, LRScheduler):
        seen.add(id(x))
        return ("sched", type(x).__name__, freeze({k: v for k, v in x.__dict__.items() if k != "optimizer"}, seen))
    if isinstance(x, dict):
        return (type(x).__name__, tuple((freeze(k, seen), freeze(v, seen)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, id(x) if isinstance(x, list) else None, tuple(freeze(e, seen) for e in x))
    if callable(x):
        attrs = None if isinstance(x, (types.FunctionType, types.MethodType)) else freeze(vars(x), seen)
        return ("callable", id(x), attrs)
    return (type(x).__name__, repr(x))


def snap(sched, opt):
    return freeze(sched), freeze(opt.param_groups), len(opt.param_groups)


def assert_refused(call, sched, opt, exc=(TypeError, ValueError), names=()):
    """``call()`` raises ``exc`` naming each of ``names``, and nothing changed."""
    before = snap(sched, opt)
    with pytest.raises(exc) as info:
        call()
    for name in names:
        assert name in str(info.value), f"{info.value!r} does not name {name!r}"
    assert snap(sched, opt) == before, f"changed by a refused call ({info.value!r})"
    return info.value


# ------------------------------------------------------------------ builders


def _decay(t):
    return 0.95**t


def _mul(t):
    return 0.97


class Decay:
    """A callable object: its __dict__ travels in the state_dict, as torch does."""

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, t):
        return self.rate**t


# class name -> (optimizer kind, builder(opt, module)); every scheduler class, as torch spells it
BUILDERS = {
    "StepLR": ("sgd", lambda o, L: L.StepLR(o, step_size=4, gamma=0.5)),
    "MultiStepLR": ("sgd", lambda o, L: L.MultiStepLR(o, milestones=[3, 7, 20], gamma=0.5)),
    "ConstantLR": ("sgd", lambda o, L: L.ConstantLR(o, factor=0.5, total_iters=6)),
    "LinearLR": ("sgd", lambda o, L: L.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=12)),
    "ExponentialLR": ("sgd", lambda o, L: L.ExponentialLR(o, gamma=0.9)),
    "PolynomialLR": ("sgd", lambda o, L: L.PolynomialLR(o, total_iters=30, power=2.0)),
    "CosineAnnealingLR": ("sgd", lambda o, L: L.CosineAnnealingLR(o, T_max=9, eta_min=0.001)),
    "CosineAnnealingWarmRestarts": ("sgd", lambda o, L: L.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2)),
    "CyclicLR": ("sgd", lambda o, L: L.CyclicLR(o, base_lr=0.01, max_lr=[0.1, 0.2], step_size_up=5)),
    "CyclicLR_adam": ("adam", lambda o, L: L.CyclicLR(o, base_lr=0.001, max_lr=0.01, step_size_up=4,
                                                      mode="exp_range", gamma=0.98)),
    "OneCycleLR": ("sgd", lambda o, L: L.OneCycleLR(o, max_lr=[0.1, 0.3], total_steps=40, three_phase=True)),
    "OneCycleLR_adam": ("adam", lambda o, L: L.OneCycleLR(o, max_lr=0.01, total_steps=50, anneal_strategy="linear")),
    "LambdaLR": ("sgd", lambda o, L: L.LambdaLR(o, lr_lambda=[_decay, Decay(0.9)])),
    "MultiplicativeLR": ("sgd", lambda o, L: L.MultiplicativeLR(o, lr_lambda=_mul)),
    "SequentialLR": ("sgd", lambda o, L: L.SequentialLR(
        o, [L.LinearLR(o, start_factor=0.1, total_iters=4), L.ExponentialLR(o, gamma=0.9)], milestones=[4])),
    "ChainedScheduler": ("sgd", lambda o, L: L.ChainedScheduler(
        [L.ConstantLR(o, factor=0.5, total_iters=3), L.ExponentialLR(o, gamma=0.9)])),
    "ReduceLROnPlateau": ("sgd", lambda o, L: L.ReduceLROnPlateau(o, factor=0.5, patience=1, cooldown=1)),
    "LinearWarmup": ("sgd", lambda o, L: S.LinearWarmup(o, warmup_steps=3, after=S.CosineAnnealingLR(o, T_max=9))),
    "LinearWarmup_alone": ("sgd", lambda o, L: S.LinearWarmup(o, warmup_steps=5, start_factor=0.1)),
}
TORCH_TWINS = [k for k in BUILDERS if not k.startswith("LinearWarmup")]
METRICS = [5.0, 4.0, 4.0, 4.0, 4.0, 3.0, 3.0, 3.0, 3.0]


def build(name, L=S):
    kind, fn = BUILDERS[name]
    opt = make_opt(kind) if L is S else make_torch_opt(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "optimizer.step() before lr_scheduler.step()"
        return fn(opt, L), opt


def advance(sched, k, start=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(start, start + k):
            if isinstance(sched, S.ReduceLROnPlateau) or type(sched).__name__ == "ReduceLROnPlateau":
                sched.step(METRICS[t % len(METRICS)])
            else:
                sched.step()


def lrs(opt):
    return [float(g["lr"]) for g in opt.param_groups]


def trajectory(sched, opt, k, start=0):
    out = []
    for t in range(start, start + k):
        advance(sched, 1, t)
        out.append(lrs(opt) + [float(g["betas"][0] if "betas" in g else g.get("momentum", 0.0))
                               for g in opt.param_groups])
    return np.array(out)


def fresh_with_state(name, state, opt_state):
    sched, opt = build(name)
    opt.load_state_dict(copy.deepcopy(opt_state))
    sched.load_state_dict(state)
    return sched, opt


# ------------------------------------------------------------ bad states


def _paths(state, prefix=()):
    """Every key path in a state, nested schedulers' states included."""
    for k, v in state.items():
        if k == "_class":
            continue
        yield (*prefix, k)
        if k == "_schedulers":
            for i, sub in enumerate(v):
                yield from _paths(sub, (*prefix, k, i))
        elif k == "after" and isinstance(v, dict):
            yield from _paths(v, (*prefix, k))


def _set(state, path, value):
    out = copy.deepcopy(state)
    node = out
    for p in path[:-1]:
        node = node[p]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def _get(state, path):
    for p in path:
        state = state[p]
    return state


_DELETE = object()
#: bad for every key of every scheduler's state
UNIVERSAL_BAD = ["x", float("nan"), 1 + 2j, [float("nan")], [-1], b"x"]


def _bad_values(key, value):
    bad = list(UNIVERSAL_BAD)
    if key != "_scale_fn_custom":  # a callable's attributes: any dict with str keys is one
        bad.append({"a": object()})
    if key != "best":
        bad.append(-5)
    if key != "milestones":
        bad.append([])
    if key not in ("default_min_lr", "_scale_fn_custom") and not (key == "after" and value is None):
        bad.append(None)
    if isinstance(value, list) and value and key not in ("_schedulers", "_milestones"):
        bad.append(value + value[:1])  # one value more than there are groups
    return bad


@pytest.mark.parametrize("name", list(BUILDERS))
def test_load_refuses_bad_state_and_changes_nothing(name):
    src, src_opt = build(name)
    advance(src, 5)
    good = src.state_dict()
    sched, opt = build(name)
    advance(sched, 2)

    for bad in [{}, None, [], "x", 3, {"not_a_key": 1}, {**good, "not_a_key": 1}]:
        assert_refused(lambda: sched.load_state_dict(bad), sched, opt)
    for other in BUILDERS:
        if other.split("_")[0] == name.split("_")[0]:
            continue
        foreign, _ = build(other)
        assert_refused(lambda: sched.load_state_dict(foreign.state_dict()), sched, opt)
    for path in _paths(good):
        key = path[-1]
        for bad in _bad_values(key, _get(good, path)):
            state = _set(good, path, bad)
            assert_refused(lambda: sched.load_state_dict(state), sched, opt, names=[repr(key)])
    sched.load_state_dict(good)  # and the good one still loads


@pytest.mark.parametrize("name", list(BUILDERS))
def test_load_without_a_key_is_refused_or_harmless(name):
    """A missing key is refused, or (a bookkeeping key) the load continues exactly as the full one."""
    src, src_opt = build(name)
    advance(src, 6)
    good, opt_state = src.state_dict(), copy.deepcopy(src_opt.state_dict())
    ref_sched, ref_opt = fresh_with_state(name, good, opt_state)
    want = trajectory(ref_sched, ref_opt, 15, 6)
    for path in _paths(good):
        sched, opt = build(name)
        opt.load_state_dict(copy.deepcopy(opt_state))
        state = _set(good, path, _DELETE)
        try:
            sched.load_state_dict(state)
        except (TypeError, ValueError):
            continue
        np.testing.assert_array_equal(trajectory(sched, opt, 15, 6), want, err_msg=f"without {path}")


def test_load_refuses_state_with_other_number_of_groups():
    src, _ = build("StepLR")
    state = src.state_dict()
    opt3 = ms_optim.SGD([{"params": [np.zeros(2)]} for _ in range(3)], lr=0.1)
    sched = S.StepLR(opt3, step_size=4)
    assert_refused(lambda: sched.load_state_dict(state), sched, opt3, ValueError, ["base_lrs", "(3)"])


def test_lambda_and_multiplicative_states_are_told_apart():
    lam, opt = build("LambdaLR")
    mul, _ = build("MultiplicativeLR")
    err = assert_refused(lambda: lam.load_state_dict(mul.state_dict()), lam, opt, ValueError)
    assert "MultiplicativeLR" in str(err)


def test_composite_load_is_checked_whole_before_any_child_changes():
    src, _ = build("SequentialLR")
    advance(src, 6)
    good = src.state_dict()
    bad = copy.deepcopy(good)
    bad["_schedulers"][1]["gamma"] = -1.0  # the first child's state is fine, the second's is not
    sched, opt = build("SequentialLR")
    assert_refused(lambda: sched.load_state_dict(bad), sched, opt, ValueError, ["gamma"])
    bad = copy.deepcopy(good)
    bad["last_epoch"] = "x"  # the children's states are fine, the parent's is not
    assert_refused(lambda: sched.load_state_dict(bad), sched, opt, TypeError, ["last_epoch"])


# -------------------------------------------------- torch's states, round trips


@pytest.mark.parametrize("name", TORCH_TWINS)
def test_torch_state_dict_loads_and_continues_as_torch(name):
    torch = pytest.importorskip("torch")  # noqa: F841
    from torch.optim import lr_scheduler as T

    tsched, topt = build(name, T)
    advance(tsched, 7)
    sched, opt = build(name)
    # The groups' lr (and 1cycle's bounds) belong to the optimizer's state: copy torch's.
    for g, tg in zip(opt.param_groups, topt.param_groups):
        for k, v in tg.items():
            if k != "params":
                g[k] = tuple(v) if isinstance(v, tuple) else v
    sched.load_state_dict(tsched.state_dict())
    want = trajectory(tsched, topt, 20, 7)
    got = trajectory(sched, opt, 20, 7)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-18)


def _to_json(state):
    return json.loads(json.dumps(state))  # tuples become lists, Counter keys strings


def _npzify(x):
    """What saving each value as an array and reading it back gives: 0-d arrays for numbers, arrays for lists."""
    if isinstance(x, dict):
        return {k: _npzify(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        if x and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in x):
            return np.array(x)
        return [_npzify(e) for e in x]
    if isinstance(x, (bool, int, float, str)):
        return np.asarray(x)
    return x


@pytest.mark.parametrize("convert", [_to_json, _npzify], ids=["json", "npz"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_round_tripped_state_loads_and_continues_bit_for_bit(name, convert):
    sched, opt = build(name)
    advance(sched, 6)
    state, opt_state = sched.state_dict(), copy.deepcopy(opt.state_dict())
    want = trajectory(sched, opt, 15, 6)
    sched2, opt2 = build(name)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(convert(state))
    for k, v in sched2.__dict__.items():  # stored as Python values again, not arrays
        assert not isinstance(v, np.ndarray) and not isinstance(v, np.generic), (k, v)
    np.testing.assert_array_equal(trajectory(sched2, opt2, 15, 6), want)


def test_multistep_milestones_from_json_and_torch_repeats():
    opt = make_opt()
    sched = S.MultiStepLR(opt, milestones=[2, 5])
    sched.load_state_dict({**sched.state_dict(), "milestones": {"2": 1, "5": 2}})
    assert sched.milestones == Counter({2: 1, 5: 2})


# ------------------------------------------------------- constructors, steps


def raise_on_call(n):
    """A lambda that works until its ``n``-th call, then raises (its counter is no scheduler state)."""
    calls = 0

    def fn(t):
        nonlocal calls
        calls += 1
        if calls >= n:
            raise ZeroDivisionError("user code")
        return 0.5

    return fn


BAD_CONSTRUCTION = [
    # (id, builder(opt) that must raise, exception, names in the message)
    ("cyclic_base_lr_negative", lambda o: S.CyclicLR(o, base_lr=-0.01, max_lr=0.1), ValueError, ["base_lr"]),
    ("cyclic_max_lr_negative", lambda o: S.CyclicLR(o, base_lr=0.01, max_lr=[0.1, -0.1]), ValueError, ["max_lr[1]"]),
    ("cyclic_max_lr_nan", lambda o: S.CyclicLR(o, base_lr=0.01, max_lr=float("nan")), ValueError, ["max_lr"]),
    ("cyclic_momentum_above_1", lambda o: S.CyclicLR(o, 0.01, 0.1, max_momentum=1.5), ValueError, ["max_momentum"]),
    ("cyclic_momentum_negative", lambda o: S.CyclicLR(o, 0.01, 0.1, base_momentum=-0.1), ValueError,
     ["base_momentum"]),
    ("cyclic_beta1_one", lambda o: S.CyclicLR(make_opt("adam"), 0.01, 0.1, max_momentum=1.0), ValueError,
     ["max_momentum", "bias correction"]),
    ("cyclic_cycle_momentum_str", lambda o: S.CyclicLR(o, 0.01, 0.1, cycle_momentum="no"), TypeError,
     ["cycle_momentum"]),
    ("cyclic_scale_fn_raises", lambda o: S.CyclicLR(o, 0.01, 0.1, scale_fn=lambda x: 1 / 0), ZeroDivisionError, []),
    ("one_cycle_max_lr_negative", lambda o: S.OneCycleLR(o, max_lr=-1.0, total_steps=10), ValueError, ["max_lr"]),
    ("one_cycle_momentum_above_1", lambda o: S.OneCycleLR(o, 1.0, total_steps=10, max_momentum=1.2), ValueError,
     ["max_momentum"]),
    ("one_cycle_beta1_one", lambda o: S.OneCycleLR(make_opt("adam"), 1.0, total_steps=10, max_momentum=1.0),
     ValueError, ["max_momentum"]),
    ("one_cycle_three_phase_int", lambda o: S.OneCycleLR(o, 1.0, total_steps=10, three_phase=1), TypeError,
     ["three_phase"]),
    ("lambda_raises", lambda o: S.LambdaLR(o, lr_lambda=lambda t: 1 / 0), ZeroDivisionError, []),
    ("lambda_nan", lambda o: S.LambdaLR(o, lr_lambda=lambda t: float("nan")), ValueError, ["lr_lambda", "nan"]),
    ("lambda_negative", lambda o: S.LambdaLR(o, lr_lambda=lambda t: -1.0), ValueError, ["lr_lambda"]),
    ("lambda_inf", lambda o: S.LambdaLR(o, lr_lambda=lambda t: math.inf), ValueError, ["lr_lambda"]),
    ("lambda_str", lambda o: S.LambdaLR(o, lr_lambda=lambda t: "0.5"), TypeError, ["lr_lambda"]),
    ("lambda_none", lambda o: S.LambdaLR(o, lr_lambda=lambda t: None), TypeError, ["lr_lambda"]),
    ("lambda_raises_second_group", lambda o: S.LambdaLR(o, lr_lambda=[lambda t: 1.0, lambda t: 1 / 0]),
     ZeroDivisionError, []),
    ("plateau_min_lr_nan", lambda o: S.ReduceLROnPlateau(o, min_lr=[0.0, float("nan")]), ValueError, ["min_lr[1]"]),
    ("last_epoch_nan", lambda o: S.StepLR(o, 3, last_epoch=float("nan")), TypeError, ["last_epoch"]),
    ("last_epoch_str", lambda o: S.ExponentialLR(o, 0.9, last_epoch="x"), TypeError, ["last_epoch"]),
    ("warmup_after_other_class", lambda o: S.LinearWarmup(o, 3, after=3), TypeError, ["after"]),
]


@pytest.mark.parametrize("build_bad, exc, names", [pytest.param(*e[1:], id=e[0]) for e in BAD_CONSTRUCTION])
def test_refused_construction_changes_nothing(build_bad, exc, names):
    opt = make_opt()
    before = freeze(opt.param_groups)
    with pytest.raises(exc) as info:
        build_bad(opt)
    for name in names:
        assert name in str(info.value), f"{info.value!r} does not name {name!r}"
    assert freeze(opt.param_groups) == before
    assert all("initial_lr" not in g for g in opt.param_groups)


def test_refused_sequential_construction_rewinds_its_schedulers():
    opt = make_opt()
    a, b = S.LambdaLR(opt, raise_on_call(3)), S.ExponentialLR(opt, 0.9)  # 2 groups: 2 calls a step
    before = freeze(a), freeze(b), freeze(opt.param_groups)
    with pytest.raises(ZeroDivisionError):
        # Undoes both construction steps, then retakes a's: its lambda raises there.
        S.SequentialLR(opt, [a, b], milestones=[1])
    assert (freeze(a), freeze(b), freeze(opt.param_groups)) == before


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8"])
def test_integer_0d_lr_array_is_refused_not_truncated(dtype):
    opt = ms_optim.SGD([{"params": [np.zeros(2)], "lr": np.asarray(1, dtype=dtype)}], lr=0.1)
    before = freeze(opt.param_groups)
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['lr'\].*real floating"):
        S.ExponentialLR(opt, gamma=0.5)
    assert freeze(opt.param_groups) == before


def test_lr_replaced_by_an_int_array_after_construction_is_refused_at_the_step():
    opt = make_opt()
    sched = S.ExponentialLR(opt, gamma=0.5)
    opt.param_groups[1]["lr"] = np.asarray(1)
    assert_refused(sched.step, sched, opt, TypeError, ["param_groups[1]['lr']"])


def _bad_steps(name):
    if name == "ReduceLROnPlateau":
        return [("0.5",), (True,), (np.bool_(True),), (np.array([1.0, 2.0]),), (1 + 2j,), (None,), ([1.0],),
                (1.0, -1), (1.0, 2.5), (1.0, "x")]
    if name.startswith("LinearWarmup"):
        return [(0.5,), ("x",)]  # metrics without a plateau after
    if name in ("SequentialLR", "ChainedScheduler"):
        return [(3,)]
    return [("x",), (float("nan"),), (-1,), (math.inf,), ([1],), (1 + 2j,), (np.array([1.0, 2.0]),)]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_refused_step_changes_nothing(name):
    sched, opt = build(name)
    advance(sched, 4)
    for args in _bad_steps(name):
        assert_refused(lambda: sched.step(*args), sched, opt)
    sched2, opt2 = build(name)
    advance(sched2, 4)
    np.testing.assert_array_equal(trajectory(sched, opt, 10, 4), trajectory(sched2, opt2, 10, 4))


@pytest.mark.parametrize("name", [n for n in BUILDERS if n != "ReduceLROnPlateau"])
def test_write_failing_in_a_later_group_undoes_the_earlier_ones(name):
    """A read-only 0-d lr in group 1: group 0 is written, group 1 raises: the step must leave no trace."""
    kind, fn = BUILDERS[name]
    opt = make_opt(kind, xp=np)
    sched = fn(opt, S)
    advance(sched, 3)
    opt.param_groups[1]["lr"].flags.writeable = False
    before = snap(sched, opt)
    with pytest.raises(ValueError, match="read-only"):
        advance(sched, 1, 3)
    assert snap(sched, opt) == before


def test_user_lambda_raising_mid_training_leaves_no_trace_and_training_goes_on():
    calls = {"fail": False}

    def lam(t):
        if calls["fail"]:
            raise RuntimeError("flaky")
        return 0.9**t

    opt, opt2 = make_opt(), make_opt()
    sched = S.SequentialLR(opt, [S.ConstantLR(opt, 0.5, 3), S.LambdaLR(opt, lam)], milestones=[3])
    ref = S.SequentialLR(opt2, [S.ConstantLR(opt2, 0.5, 3), S.LambdaLR(opt2, lambda t: 0.9**t)], milestones=[3])
    for t in range(8):
        if t >= 2:  # the lambda runs from the milestone (step 3) on
            calls["fail"] = True
            assert_refused(sched.step, sched, opt, RuntimeError)
            calls["fail"] = False
        sched.step()
        ref.step()
        assert lrs(opt) == lrs(opt2), t


def test_step_whose_scale_fn_drives_lr_or_momentum_out_of_range_is_refused():
    opt = make_opt()
    sched = S.CyclicLR(opt, 0.01, 0.1, step_size_up=2, scale_fn=lambda x: -50.0)
    assert_refused(sched.step, sched, opt, ValueError, ["param_groups[0]['lr']", "scale_fn"])
    opt = make_opt()
    sched = S.CyclicLR(opt, 0.01, 0.1, step_size_up=2, scale_fn=lambda x: 0.0 if x < 1.5 else 20.0,
                       scale_mode="iterations")
    sched.step()
    assert_refused(sched.step, sched, opt, ValueError, ["momentum"])


def test_multiplicative_lambda_raising_in_a_later_group_leaves_no_trace():
    opt = make_opt()
    sched = S.MultiplicativeLR(opt, lr_lambda=[lambda t: 0.5, raise_on_call(2)])
    sched.step()
    assert_refused(sched.step, sched, opt, ZeroDivisionError)


def test_plateau_nan_metric_counts_as_no_improvement_like_torch():
    torch_sched = pytest.importorskip("torch.optim.lr_scheduler")
    opt, topt = make_opt(), make_torch_opt()
    sched = S.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    tsched = torch_sched.ReduceLROnPlateau(topt, patience=1, factor=0.5)
    for m in [1.0, float("nan"), float("nan"), float("nan"), 0.5, float("nan")]:
        sched.step(m)
        tsched.step(m)
        assert lrs(opt) == lrs(topt)
    assert lrs(opt) == [lr / 2 for lr in LRS]


def test_exponential_growth_past_float_range_is_refused_at_the_step():
    opt = make_opt()
    sched = S.ExponentialLR(opt, gamma=1e100)
    for _ in range(3):
        sched.step()
    assert lrs(opt)[0] == pytest.approx(1e299)
    err = assert_refused(sched.step, sched, opt, ValueError, ["param_groups[0]['lr']", "inf"])
    assert "finite" in str(err)


# ------------------------------------------------------------ NumPy scalars


NUMPY_ARGS = [
    ("StepLR", dict(step_size=np.int64(4), gamma=np.float64(0.5))),
    ("MultiStepLR", dict(milestones=np.array([3, 7]), gamma=np.asarray(0.5))),
    ("ConstantLR", dict(factor=np.float64(0.5), total_iters=np.int32(6))),
    ("LinearLR", dict(start_factor=np.float64(0.2), end_factor=np.asarray(0.9), total_iters=np.int64(12))),
    ("ExponentialLR", dict(gamma=np.float64(0.9), last_epoch=np.int64(-1))),
    ("PolynomialLR", dict(total_iters=np.int64(30), power=np.float64(2.0))),
    ("CosineAnnealingLR", dict(T_max=np.int64(9), eta_min=np.float64(0.001))),
    ("CosineAnnealingWarmRestarts", dict(T_0=np.int64(3), T_mult=np.int64(2), eta_min=np.float64(0.0))),
    ("CyclicLR", dict(base_lr=np.float64(0.01), max_lr=np.array([0.1, 0.2]), step_size_up=np.int64(5),
                      cycle_momentum=np.bool_(True), base_momentum=np.float64(0.8))),
    ("OneCycleLR", dict(max_lr=np.array([0.1, 0.3]), total_steps=np.int64(40), three_phase=np.bool_(True),
                        cycle_momentum=np.asarray(True), pct_start=np.float64(0.3))),
    ("ReduceLROnPlateau", dict(factor=np.float64(0.5), patience=np.int64(1), cooldown=np.int64(1),
                               min_lr=np.float64(0.0), threshold=np.float64(1e-4))),
]


def _python(v):
    if isinstance(v, np.ndarray) and v.ndim == 1:
        return v.tolist()
    return v.item() if isinstance(v, (np.ndarray, np.generic)) else v


@pytest.mark.parametrize("name, kwargs", NUMPY_ARGS, ids=[a[0] for a in NUMPY_ARGS])
def test_numpy_scalars_work_as_python_numbers(name, kwargs):
    cls = getattr(S, name)
    opt, opt2 = make_opt(), make_opt()
    sched = cls(opt, **kwargs)
    ref = cls(opt2, **{k: _python(v) for k, v in kwargs.items()})
    for k, v in sched.__dict__.items():
        assert not isinstance(v, (np.ndarray, np.generic)), f"{k} stored as {type(v).__name__}"
        for e in (v if isinstance(v, (list, tuple)) else list(v) if isinstance(v, Counter) else ()):
            assert not isinstance(e, (np.ndarray, np.generic)), f"{k} holds a {type(e).__name__}"
    np.testing.assert_array_equal(trajectory(sched, opt, 30), trajectory(ref, opt2, 30))
    # NumPy values where step takes a number: the metric, or the epoch to jump to.
    if name == "ReduceLROnPlateau":
        for m in (np.float32(9.5), np.asarray(9.0), np.int64(9)):
            sched.step(m)
            ref.step(float(m))
        assert lrs(opt) == lrs(opt2) and sched.num_bad_epochs == ref.num_bad_epochs
    elif name not in ("CyclicLR", "OneCycleLR"):
        sched.step(np.int64(33))
        ref.step(33)
        assert type(sched.last_epoch) is int and lrs(opt) == lrs(opt2)


# ------------------------------------------------------ property tests


def _torch_opt_pair(kind="sgd"):
    return make_opt(kind), make_torch_opt(kind)


_frac = st.floats(0.05, 1.0)
_lr = st.floats(0.0, 0.5)
CONFIGS = {
    "StepLR": st.fixed_dictionaries(dict(step_size=st.integers(1, 20), gamma=st.floats(0.05, 1.5))),
    "MultiStepLR": st.fixed_dictionaries(dict(
        milestones=st.lists(st.integers(0, 60), max_size=4, unique=True).map(sorted), gamma=st.floats(0.05, 1.5))),
    "ConstantLR": st.fixed_dictionaries(dict(factor=_frac, total_iters=st.integers(1, 30))),
    "LinearLR": st.fixed_dictionaries(dict(start_factor=_frac, end_factor=st.floats(0.0, 1.0),
                                           total_iters=st.integers(1, 30))),
    "ExponentialLR": st.fixed_dictionaries(dict(gamma=st.floats(0.5, 1.1))),
    "PolynomialLR": st.fixed_dictionaries(dict(total_iters=st.integers(1, 40), power=st.floats(0.0, 3.0))),
    "CosineAnnealingLR": st.fixed_dictionaries(dict(T_max=st.integers(1, 50), eta_min=st.floats(0.0, 0.01))),
    "CosineAnnealingWarmRestarts": st.fixed_dictionaries(dict(
        T_0=st.integers(1, 10), T_mult=st.integers(1, 3), eta_min=st.floats(0.0, 0.01))),
    "CyclicLR": st.fixed_dictionaries(dict(
        base_lr=_lr, max_lr=_lr, step_size_up=st.integers(1, 20),
        step_size_down=st.one_of(st.none(), st.integers(1, 20)),
        mode=st.sampled_from(["triangular", "triangular2", "exp_range"]), gamma=st.floats(0.9, 1.0),
        base_momentum=st.floats(0.5, 0.85), max_momentum=st.floats(0.85, 0.99))),
    "OneCycleLR": st.fixed_dictionaries(dict(
        max_lr=_lr, total_steps=st.integers(10, 80), pct_start=st.floats(0.0, 0.9),
        anneal_strategy=st.sampled_from(["cos", "linear"]), three_phase=st.booleans(),
        div_factor=st.floats(1.0, 50.0), final_div_factor=st.floats(1.0, 1e4))),
    "LambdaLR": st.floats(0.8, 1.0).map(lambda a: dict(lr_lambda=Decay(a))),
    "MultiplicativeLR": st.floats(0.8, 1.0).map(lambda a: dict(lr_lambda=Decay(a))),
    "ReduceLROnPlateau": st.fixed_dictionaries(dict(
        mode=st.sampled_from(["min", "max"]), factor=st.floats(0.05, 0.95), patience=st.integers(0, 4),
        threshold=st.floats(0.0, 0.1), threshold_mode=st.sampled_from(["rel", "abs"]),
        cooldown=st.integers(0, 3), min_lr=st.floats(0.0, 0.01), eps=st.floats(0.0, 1e-3))),
}


@settings(PROFILE)
@given(data=st.data(), name=st.sampled_from(sorted(CONFIGS)), steps=st.integers(1, 60),
       kind=st.sampled_from(["sgd", "adam"]))
def test_random_valid_configs_match_torch_at_every_step(data, name, steps, kind):
    torch_sched = pytest.importorskip("torch.optim.lr_scheduler")
    kwargs = data.draw(CONFIGS[name], label="kwargs")
    opt, topt = _torch_opt_pair(kind)
    try:
        sched = getattr(S, name)(opt, **kwargs)
    except ValueError:  # a 1cycle phase of zero length: refused here, ZeroDivisionError in torch
        assume(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tsched = getattr(torch_sched, name)(topt, **copy.deepcopy(kwargs))
    if name == "OneCycleLR":
        steps = min(steps, kwargs["total_steps"] - 1)  # torch extrapolates one past the end (see OneCycleLR)
    metrics = data.draw(st.lists(st.floats(-10, 10), min_size=steps, max_size=steps), label="metrics")
    got, want = [lrs(opt)], [lrs(topt)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(steps):
            if name == "ReduceLROnPlateau":
                sched.step(metrics[t])
                tsched.step(metrics[t])
            else:
                sched.step()
                tsched.step()
            got.append(lrs(opt) + [float(g["betas"][0] if "betas" in g else g["momentum"]) for g in opt.param_groups])
            want.append(lrs(topt) + [float(g["betas"][0] if "betas" in g else g["momentum"])
                                     for g in topt.param_groups])
    got, want = np.array(got[1:]), np.array(want[1:])
    assert got.shape == want.shape == (steps, 4)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)  # atol: torch's -3e-18 is our 0.0


# argument -> bad values a user could pass, with the name the error must give
_NOT_INT = st.one_of(st.floats(allow_nan=True), st.text(max_size=3), st.booleans(), st.none(), st.just([1]))
_NOT_REAL = st.one_of(st.text(max_size=3), st.booleans(), st.none(), st.just([1.0]), st.just(1 + 1j))
_NONFINITE = st.sampled_from([float("nan"), math.inf, -math.inf])
BAD_ARGS = {
    "StepLR": dict(step_size=st.one_of(_NOT_INT, st.integers(max_value=0)),
                   gamma=st.one_of(_NOT_REAL, _NONFINITE, st.floats(max_value=0.0))),
    "MultiStepLR": dict(milestones=st.one_of(st.just([3, 1]), st.just([-1]), st.just("12"), st.just([1.5]))),
    "ConstantLR": dict(factor=st.one_of(_NOT_REAL, _NONFINITE, st.floats(max_value=0.0), st.floats(1.0001, 1e9)),
                       total_iters=st.one_of(_NOT_INT, st.integers(max_value=0))),
    "LinearLR": dict(start_factor=st.one_of(_NOT_REAL, st.floats(max_value=0.0)),
                     end_factor=st.one_of(_NOT_REAL, st.floats(min_value=1.0001), st.floats(max_value=-1e-9))),
    "ExponentialLR": dict(gamma=st.one_of(_NOT_REAL, _NONFINITE, st.floats(max_value=0.0))),
    "PolynomialLR": dict(power=st.one_of(_NOT_REAL, _NONFINITE, st.floats(max_value=-1e-9))),
    "CosineAnnealingLR": dict(T_max=st.one_of(_NOT_REAL, _NONFINITE, st.floats(max_value=0.0)),
                              eta_min=st.one_of(_NOT_REAL, _NONFINITE, st.floats(max_value=-1e-9))),
    "CosineAnnealingWarmRestarts": dict(T_0=st.one_of(_NOT_INT, st.integers(max_value=0)),
                                        T_mult=st.one_of(_NOT_INT, st.integers(max_value=0))),
    "CyclicLR": dict(base_lr=st.one_of(_NOT_REAL, _NONFINITE, st.floats(max_value=-1e-9)),
                     max_lr=st.one_of(_NOT_REAL, _NONFINITE, st.floats(max_value=-1e-9)),
                     base_momentum=st.one_of(_NOT_REAL, st.floats(1.0001, 10), st.floats(max_value=-1e-9)),
                     max_momentum=st.one_of(_NOT_REAL, st.floats(1.0001, 10), st.floats(max_value=-1e-9)),
                     cycle_momentum=st.one_of(st.text(max_size=3), st.integers(), st.none())),
    "OneCycleLR": dict(max_lr=st.one_of(_NOT_REAL, _NONFINITE, st.floats(max_value=-1e-9)),
                       pct_start=st.one_of(_NOT_REAL, st.floats(1.0001, 10), st.floats(max_value=-1e-9)),
                       three_phase=st.one_of(st.text(max_size=3), st.integers(), st.none()),
                       max_momentum=st.one_of(_NOT_REAL, st.floats(1.0001, 10))),
    "ReduceLROnPlateau": dict(factor=st.one_of(_NOT_REAL, st.floats(min_value=1.0), st.floats(max_value=-1e-9)),
                              patience=st.one_of(_NOT_INT, st.integers(max_value=-1)),
                              min_lr=st.one_of(_NOT_REAL, _NONFINITE, st.floats(max_value=-1e-9))),
}
REQUIRED = {"StepLR": dict(step_size=3), "MultiStepLR": dict(milestones=[2]), "ExponentialLR": dict(gamma=0.9),
            "CosineAnnealingLR": dict(T_max=10), "CosineAnnealingWarmRestarts": dict(T_0=3),
            "CyclicLR": dict(base_lr=0.01, max_lr=0.1), "OneCycleLR": dict(max_lr=0.1, total_steps=20)}
_BAD_CASES = [(n, a) for n, args in BAD_ARGS.items() for a in args]


@settings(PROFILE)
@given(data=st.data(), case=st.sampled_from(_BAD_CASES))
def test_random_invalid_arguments_are_refused_naming_them(data, case):
    name, arg = case
    value = data.draw(BAD_ARGS[name][arg], label=arg)
    opt = make_opt()
    before = freeze(opt.param_groups)
    kwargs = {**REQUIRED.get(name, {}), arg: value}
    with pytest.raises((TypeError, ValueError)) as info:
        getattr(S, name)(opt, **kwargs)
    assert arg in str(info.value)
    assert freeze(opt.param_groups) == before


_ANY_BAD = st.one_of(st.text(max_size=4), st.just(float("nan")), st.integers(-10**6, -2),
                     st.lists(st.floats(allow_nan=True), max_size=4), st.just(1 + 1j), st.just(object()))


@settings(PROFILE)
@given(data=st.data(), name=st.sampled_from(sorted(BUILDERS)), k=st.integers(0, 12))
def test_random_corrupt_states_are_refused_or_keep_the_scheduler_sound(data, name, k):
    src, _ = build(name)
    advance(src, k)
    good = src.state_dict()
    path = data.draw(st.sampled_from(list(_paths(good))), label="path")
    value = data.draw(_ANY_BAD, label="value")
    state = _set(good, path, value)
    sched, opt = build(name)
    before = snap(sched, opt)
    try:
        sched.load_state_dict(state)
    except (TypeError, ValueError) as err:
        assert repr(path[-1]) in str(err), err
        assert snap(sched, opt) == before
        return
    # Accepted (a negative `best`, an empty milestone list...): stepping on stays clean.
    for t in range(20):
        try:
            advance(sched, 1, t)
        except (TypeError, ValueError):
            break
        assert all(math.isfinite(v) and v >= 0 for v in lrs(opt))
