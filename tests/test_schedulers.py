"""The schedulers package, table-driven.

One ``Case`` per scheduler configuration drives every generic test: the lr
trajectory of two param groups against a float64 reference written here from
torch's documented formulas, the recursive form against the closed form, a
state_dict round trip, 0-d array learning rates updated in place, composition
with LinearWarmup, and (where torch is installed) torch's own values to 1e-12.
References never come from the code under test.
"""

from __future__ import annotations

import copy
import math
import pickle
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

import ms_optim
import schedulers as S
from schedulers import schedules

LRS = (0.1, 0.03)  # the two groups' learning rates: different, so a mixed-up group shows
STEPS = 300


# ----------------------------------------------------------------- helpers


class NoMomentum(ms_optim.Optimizer):
    """A genuine ms_optim.Optimizer with neither ``momentum`` nor ``betas``."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, dict(lr=lr))

    def _validate(self, group):
        pass


def make_opt(kind: str = "sgd", xp=None, lrs=LRS):
    """Two param groups with different lrs; ``xp`` given: lrs are 0-d arrays of it."""
    xp_params = np if xp is None else xp
    groups = []
    for lr in lrs:
        p = xp_params.zeros(2, dtype=xp_params.float64)
        groups.append({"params": [p], "lr": lr if xp is None else xp.asarray(lr, dtype=xp.float64)})
    if kind == "sgd":
        return ms_optim.SGD(groups, lr=0.1, momentum=0.9)
    if kind == "adam":
        return ms_optim.Adam(groups, lr=0.1)
    if kind == "plain":
        return NoMomentum(groups)
    raise AssertionError(kind)


def make_torch_opt(kind: str = "sgd", lrs=LRS):
    import torch

    groups = [{"params": [torch.zeros(2)], "lr": lr} for lr in lrs]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    return torch.optim.Adam(groups, lr=0.1)


def lrs_of(opt) -> list[float]:
    return [float(g["lr"]) for g in opt.param_groups]


def momenta_of(opt) -> list[float]:
    g0 = opt.param_groups[0]
    key = "betas" if "betas" in g0 else "momentum"
    return [float(g["betas"][0]) if key == "betas" else float(g["momentum"]) for g in opt.param_groups]


def groups_snapshot(opt):
    return [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups]


def assert_close(actual, expected, rtol, atol=0.0, what=""):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


# --------------------------------------------------- independent references
# (t, group index, that group's lr before any scheduler) -> lr, float64.

def r_step(step_size, gamma=0.1):
    return lambda t, i, base: base * gamma ** (t // step_size)


def r_multistep(milestones, gamma=0.1):
    return lambda t, i, base: base * gamma ** sum(m <= t for m in milestones)


def r_constant(factor=1 / 3, total_iters=5):
    return lambda t, i, base: base * (factor if t < total_iters else 1.0)


def r_linear(start=1 / 3, end=1.0, total=5):
    return lambda t, i, base: base * (start + (end - start) * min(t, total) / total)


def r_exponential(gamma):
    return lambda t, i, base: base * gamma**t


def r_polynomial(total=5, power=1.0):
    return lambda t, i, base: base * (1 - min(t, total) / total) ** power


def r_cosine(T_max, eta_min=0.0):
    return lambda t, i, base: eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / T_max)) / 2


def r_warm_restarts(T_0, T_mult=1, eta_min=0.0):
    def ref(t, i, base):
        start, T_i = 0, T_0
        while t >= start + T_i:
            start, T_i = start + T_i, T_i * T_mult
        return eta_min + (base - eta_min) * (1 + math.cos(math.pi * (t - start) / T_i)) / 2

    return ref


def _pick(v, i):
    return v[i] if isinstance(v, (list, tuple)) else v


def _triangle(t, up, down):
    """(cycle number from 1, height in [0, 1]) of the CLR triangle, in exact integer steps."""
    total = up + down
    p = t % total
    return t // total + 1, (p / up if p <= up else (total - p) / down)


def _clr_scale(mode, gamma, scale_fn, scale_mode, t, cycle):
    if scale_fn is not None:
        return scale_fn(cycle if scale_mode == "cycle" else t)
    return {"triangular": 1.0, "triangular2": 0.5 ** (cycle - 1), "exp_range": gamma**t}[mode]


def r_cyclic(base_lr, max_lr, up=2000, down=None, mode="triangular", gamma=1.0, scale_fn=None,
             scale_mode="cycle"):
    down = up if down is None else down

    def ref(t, i, base):
        cycle, h = _triangle(t, up, down)
        b, m = _pick(base_lr, i), _pick(max_lr, i)
        return b + (m - b) * h * _clr_scale(mode, gamma, scale_fn, scale_mode, t, cycle)

    return ref


def m_cyclic(up=2000, down=None, mode="triangular", gamma=1.0, scale_fn=None, scale_mode="cycle",
             base_momentum=0.8, max_momentum=0.9):
    down = up if down is None else down

    def ref(t, i):
        cycle, h = _triangle(t, up, down)
        b, m = _pick(base_momentum, i), _pick(max_momentum, i)
        return m - (m - b) * h * _clr_scale(mode, gamma, scale_fn, scale_mode, t, cycle)

    return ref


def _anneal(kind, a, b, pct):
    if kind == "cos":
        return b + (a - b) * (1 + math.cos(math.pi * pct)) / 2
    return a + (b - a) * min(pct, 1.0)  # ms_optim holds the end value one step past the end (torch: < 0)


def _phases(t, total, pct_start, three_phase, points, kind):
    """1cycle: phases end at pct*T - 1 (and 2 pct*T - 2), T - 1; anneal between ``points``."""
    ends = [pct_start * total - 1, 2 * pct_start * total - 2, total - 1] if three_phase else [
        pct_start * total - 1, total - 1]
    start = 0.0
    for k, end in enumerate(ends):
        if t <= end or k == len(ends) - 1:
            return _anneal(kind, points[k], points[k + 1], (t - start) / (end - start))
        start = end
    raise AssertionError


def r_one_cycle(max_lr, total, pct_start=0.3, kind="cos", div=25.0, final_div=1e4, three_phase=False):
    def ref(t, i, base):
        peak = _pick(max_lr, i)
        low = peak / div
        pts = [low, peak, low, low / final_div] if three_phase else [low, peak, low / final_div]
        return _phases(t, total, pct_start, three_phase, pts, kind)

    return ref


def m_one_cycle(total, pct_start=0.3, kind="cos", three_phase=False, base_momentum=0.85, max_momentum=0.95):
    def ref(t, i):
        b, m = _pick(base_momentum, i), _pick(max_momentum, i)
        pts = [m, b, m, m] if three_phase else [m, b, m]
        return _phases(t, total, pct_start, three_phase, pts, kind)

    return ref


def r_lambda(*fns):
    return lambda t, i, base: base * (fns[i] if len(fns) > 1 else fns[0])(t)


def r_multiplicative(*fns):
    def ref(t, i, base):
        fn = fns[i] if len(fns) > 1 else fns[0]
        return base * math.prod(fn(k) for k in range(1, t + 1))

    return ref


def r_sequential(refs, milestones):
    def ref(t, i, base):
        k = sum(m <= t for m in milestones)
        return refs[k](t - (milestones[k - 1] if k else 0), i, base)

    return ref


def r_chained(*refs):
    # Chaining multiplies the factors of multiplicative schedulers.
    return lambda t, i, base: base * math.prod(r(t, i, base) / base for r in refs)


def r_warmup(warmup_steps, start_factor=0.0, after=None):
    def ref(t, i, base):
        if t < warmup_steps:
            return base * (start_factor + (1 - start_factor) * t / warmup_steps)
        return base if after is None else after(t - warmup_steps, i, base)

    return ref


# ------------------------------------------------------------------ table


def _inv(t):
    return 1.0 / (1.0 + 0.05 * t)


def _half_life(t):
    return 0.5 ** (t / 100)


def _mul99(t):
    return 0.99


def _mul995(t):
    return 0.995


def _inv_cycle(x):
    return 1.0 / x


def _decay_iter(x):
    return 0.995**x


@dataclass
class Case:
    id: str
    build: Callable[[Any, Any], Any]  # (optimizer, module: schedulers or torch's lr_scheduler) -> scheduler
    ref: Callable[[int, int, float], float]
    kind: str = "sgd"
    momentum: Callable[[int, int], float] | None = None
    steps: int = STEPS
    torch_build: Callable[[Any, Any], Any] | None = None  # where torch spells it differently
    torch: bool = True
    initial_lr: Callable[[int], float] | None = None  # base a warmup ramps to, if not the group's lr
    closed_form: bool = False  # step(epoch) uses a closed form (not get_lr)
    # 1cycle's linear anneal one step past the end: torch extrapolates (to a
    # negative lr here), ms_optim holds the end value (OneCycleLR's warning).
    torch_differs_at_end: bool = False


CASES = [
    Case("step", lambda o, L: L.StepLR(o, step_size=7, gamma=0.5), r_step(7, 0.5), closed_form=True),
    Case("step_default_gamma", lambda o, L: L.StepLR(o, 30), r_step(30), closed_form=True),
    Case("multistep", lambda o, L: L.MultiStepLR(o, milestones=[3, 50, 120], gamma=0.3),
         r_multistep([3, 50, 120], 0.3), closed_form=True),
    Case("constant", lambda o, L: L.ConstantLR(o, factor=0.25, total_iters=10), r_constant(0.25, 10),
         closed_form=True),
    Case("constant_defaults", lambda o, L: L.ConstantLR(o), r_constant(), closed_form=True),
    Case("linear", lambda o, L: L.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=40),
         r_linear(0.1, 0.9, 40), closed_form=True),
    Case("linear_to_zero", lambda o, L: L.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=100),
         r_linear(1.0, 0.0, 100), closed_form=True),
    Case("linear_defaults", lambda o, L: L.LinearLR(o), r_linear(), closed_form=True),
    Case("exponential", lambda o, L: L.ExponentialLR(o, gamma=0.97), r_exponential(0.97), closed_form=True),
    Case("polynomial", lambda o, L: L.PolynomialLR(o, total_iters=150, power=2.5), r_polynomial(150, 2.5),
         closed_form=True),
    Case("polynomial_defaults", lambda o, L: L.PolynomialLR(o), r_polynomial(), closed_form=True),
    Case("cosine", lambda o, L: L.CosineAnnealingLR(o, T_max=37, eta_min=0.001), r_cosine(37, 0.001),
         closed_form=True),
    Case("cosine_no_floor", lambda o, L: L.CosineAnnealingLR(o, T_max=100), r_cosine(100),
         closed_form=True),
    Case("warm_restarts", lambda o, L: L.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=0.001),
         r_warm_restarts(10, 2, 0.001), closed_form=True),
    Case("warm_restarts_fixed", lambda o, L: L.CosineAnnealingWarmRestarts(o, T_0=7), r_warm_restarts(7),
         closed_form=True),
    Case("cyclic_triangular",
         lambda o, L: L.CyclicLR(o, base_lr=0.01, max_lr=[0.1, 0.2], step_size_up=13, step_size_down=7),
         r_cyclic(0.01, [0.1, 0.2], 13, 7), momentum=m_cyclic(13, 7), initial_lr=lambda i: 0.01),
    Case("cyclic_triangular2",
         lambda o, L: L.CyclicLR(o, base_lr=[0.01, 0.02], max_lr=0.1, step_size_up=10, mode="triangular2",
                                 base_momentum=[0.8, 0.7], max_momentum=0.95),
         r_cyclic([0.01, 0.02], 0.1, 10, mode="triangular2"),
         momentum=m_cyclic(10, mode="triangular2", base_momentum=[0.8, 0.7], max_momentum=0.95),
         initial_lr=lambda i: [0.01, 0.02][i]),
    Case("cyclic_exp_range",
         lambda o, L: L.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=13, mode="exp_range", gamma=0.99),
         r_cyclic(0.01, 0.1, 13, mode="exp_range", gamma=0.99),
         momentum=m_cyclic(13, mode="exp_range", gamma=0.99), initial_lr=lambda i: 0.01),
    Case("cyclic_scale_fn_cycle",
         lambda o, L: L.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=9, step_size_down=11,
                                 scale_fn=_inv_cycle, scale_mode="cycle"),
         r_cyclic(0.01, 0.1, 9, 11, scale_fn=_inv_cycle, scale_mode="cycle"),
         momentum=m_cyclic(9, 11, scale_fn=_inv_cycle, scale_mode="cycle"), initial_lr=lambda i: 0.01),
    Case("cyclic_scale_fn_iterations",
         lambda o, L: L.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=9, scale_fn=_decay_iter,
                                 scale_mode="iterations"),
         r_cyclic(0.01, 0.1, 9, scale_fn=_decay_iter, scale_mode="iterations"),
         momentum=m_cyclic(9, scale_fn=_decay_iter, scale_mode="iterations"), initial_lr=lambda i: 0.01),
    Case("cyclic_adam_betas",
         lambda o, L: L.CyclicLR(o, base_lr=0.001, max_lr=0.006, step_size_up=25),
         r_cyclic(0.001, 0.006, 25), kind="adam", momentum=m_cyclic(25), initial_lr=lambda i: 0.001),
    Case("cyclic_no_momentum",
         lambda o, L: L.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=6, cycle_momentum=False),
         r_cyclic(0.01, 0.1, 6), initial_lr=lambda i: 0.01),
    Case("one_cycle", lambda o, L: L.OneCycleLR(o, max_lr=[0.1, 0.5], total_steps=STEPS),
         r_one_cycle([0.1, 0.5], STEPS), momentum=m_one_cycle(STEPS), initial_lr=lambda i: [0.1, 0.5][i] / 25),
    Case("one_cycle_linear_three_phase",
         lambda o, L: L.OneCycleLR(o, max_lr=0.2, total_steps=STEPS, anneal_strategy="linear", three_phase=True),
         r_one_cycle(0.2, STEPS, kind="linear", three_phase=True),
         momentum=m_one_cycle(STEPS, kind="linear", three_phase=True), initial_lr=lambda i: 0.2 / 25,
         torch_differs_at_end=True),
    Case("one_cycle_epochs_adam",
         lambda o, L: L.OneCycleLR(o, max_lr=0.01, epochs=10, steps_per_epoch=30, pct_start=0.25,
                                   div_factor=10.0, final_div_factor=100.0, base_momentum=0.8,
                                   max_momentum=0.9),
         r_one_cycle(0.01, STEPS, 0.25, div=10.0, final_div=100.0), kind="adam",
         momentum=m_one_cycle(STEPS, 0.25, base_momentum=0.8, max_momentum=0.9),
         initial_lr=lambda i: 0.01 / 10),
    Case("one_cycle_no_momentum",
         lambda o, L: L.OneCycleLR(o, max_lr=0.1, total_steps=STEPS, cycle_momentum=False, three_phase=True),
         r_one_cycle(0.1, STEPS, three_phase=True), initial_lr=lambda i: 0.1 / 25),
    Case("lambda", lambda o, L: L.LambdaLR(o, lr_lambda=_inv), r_lambda(_inv)),
    Case("lambda_per_group", lambda o, L: L.LambdaLR(o, lr_lambda=[_inv, _half_life]), r_lambda(_inv, _half_life)),
    Case("multiplicative", lambda o, L: L.MultiplicativeLR(o, lr_lambda=_mul99), r_multiplicative(_mul99)),
    Case("multiplicative_per_group", lambda o, L: L.MultiplicativeLR(o, lr_lambda=[_mul99, _mul995]),
         r_multiplicative(_mul99, _mul995)),
    Case("sequential",
         lambda o, L: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.1, total_iters=10),
                                         L.CosineAnnealingLR(o, T_max=90)], milestones=[10]),
         r_sequential([r_linear(0.1, 1.0, 10), r_cosine(90)], [10])),
    Case("sequential_three",
         lambda o, L: L.SequentialLR(o, [L.ConstantLR(o, factor=0.5, total_iters=5), L.ExponentialLR(o, gamma=0.98),
                                         L.StepLR(o, step_size=10, gamma=0.5)], milestones=[20, 100]),
         r_sequential([r_constant(0.5, 5), r_exponential(0.98), r_step(10, 0.5)], [20, 100])),
    Case("chained",
         lambda o, L: L.ChainedScheduler([L.ConstantLR(o, factor=0.5, total_iters=10), L.ExponentialLR(o, gamma=0.99)]),
         r_chained(r_constant(0.5, 10), r_exponential(0.99))),
    Case("chained_linear_step",
         lambda o, L: L.ChainedScheduler([L.LinearLR(o, start_factor=0.2, total_iters=20),
                                          L.StepLR(o, step_size=30, gamma=0.5)], optimizer=o),
         r_chained(r_linear(0.2, 1.0, 20), r_step(30, 0.5))),
    Case("warmup_alone", lambda o, L: L.LinearWarmup(o, warmup_steps=20, start_factor=0.1),
         r_warmup(20, 0.1), torch=False),
    Case("warmup_from_zero", lambda o, L: L.LinearWarmup(o, warmup_steps=50), r_warmup(50), torch=False),
    # torch spells warmup-then-cosine as SequentialLR(LinearLR, CosineAnnealingLR): the same definition.
    Case("warmup_cosine",
         lambda o, L: L.LinearWarmup(o, warmup_steps=20, start_factor=0.1, after=L.CosineAnnealingLR(o, T_max=100)),
         r_warmup(20, 0.1, r_cosine(100)),
         torch_build=lambda o, L: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.1, total_iters=20),
                                                     L.CosineAnnealingLR(o, T_max=100)], milestones=[20])),
]

BY_ID = {c.id: c for c in CASES}


def cases(pred=lambda c: True):
    return [pytest.param(c, id=c.id) for c in CASES if pred(c)]


def run(case: Case, opt, steps=None, sched=None):
    """The lrs (and momenta) of every group at steps 0..steps; asserts get_last_lr() == the groups' lrs."""
    sched = case.build(opt, S) if sched is None else sched
    lrs, moms = [], []
    for t in range((case.steps if steps is None else steps) + 1):
        if t:
            sched.step()
        now = lrs_of(opt)
        assert sched.get_last_lr() == now, f"step {t}: get_last_lr() {sched.get_last_lr()} != groups {now}"
        lrs.append(now)
        moms.append(momenta_of(opt))
    return np.array(lrs), np.array(moms), sched


def expected(case: Case, steps=None):
    n = case.steps if steps is None else steps
    return np.array([[case.ref(t, i, LRS[i]) for i in range(len(LRS))] for t in range(n + 1)])


# ---------------------------------------------------------- generic tests


@pytest.mark.parametrize("case", cases())
def test_trajectory_matches_reference(case):
    lrs, moms, _ = run(case, make_opt(case.kind))
    # torch's recursive form drifts from the formula in the last bits only.
    assert_close(lrs, expected(case), rtol=1e-12, what=case.id)
    if case.momentum is not None:
        want = np.array([[case.momentum(t, i) for i in range(len(LRS))] for t in range(case.steps + 1)])
        assert_close(moms, want, rtol=1e-12, atol=1e-15, what=f"{case.id} momentum")


@pytest.mark.parametrize("case", cases(lambda c: c.closed_form))
def test_recursive_form_equals_closed_form(case):
    stepped, _, _ = run(case, make_opt(case.kind))
    opt = make_opt(case.kind)
    sched = case.build(opt, S)
    jumped = [lrs_of(opt)]
    for t in range(1, case.steps + 1):
        sched.step(t)  # step(epoch) evaluates the closed form
        assert sched.last_epoch == t
        jumped.append(lrs_of(opt))
    assert_close(np.array(jumped), stepped, rtol=1e-12, what=case.id)


@pytest.mark.parametrize("stop", [1, 37, 150])
@pytest.mark.parametrize("case", cases())
def test_state_dict_round_trip_continues_exactly(case, stop):
    whole, whole_m, _ = run(case, make_opt(case.kind))

    opt = make_opt(case.kind)
    sched = case.build(opt, S)
    for _ in range(stop):
        sched.step()
    saved = (copy.deepcopy(opt.state_dict()), sched.state_dict())
    pickle.dumps(saved)  # a checkpoint can be written to disk
    for _ in range(5):  # the saved state must not follow the scheduler on
        sched.step()

    opt2 = make_opt(case.kind)
    sched2 = case.build(opt2, S)
    opt2.load_state_dict(saved[0])
    sched2.load_state_dict(saved[1])
    if hasattr(sched, "last_epoch"):  # ChainedScheduler has none, as in torch
        assert sched2.last_epoch == sched.last_epoch - 5
    rest = [lrs_of(opt2)]
    rest_m = [momenta_of(opt2)]
    for _ in range(stop, case.steps):
        sched2.step()
        rest.append(lrs_of(opt2))
        rest_m.append(momenta_of(opt2))
    np.testing.assert_array_equal(np.array(rest), whole[stop:], err_msg=case.id)
    np.testing.assert_array_equal(np.array(rest_m), whole_m[stop:], err_msg=case.id)


def _namespace(name):
    if name == "numpy":
        return np
    if name == "cupy":
        cupy = pytest.importorskip("cupy")
        try:
            if cupy.cuda.runtime.getDeviceCount() > 0:
                return cupy
        except Exception:  # no driver
            pass
        pytest.skip("no CUDA GPU")
    return pytest.importorskip(name)


@pytest.mark.parametrize("ns", ["numpy", "array_api_strict"])
@pytest.mark.parametrize("case", cases())
def test_0d_array_lr_is_updated_in_place(case, ns):
    _check_in_place(case, _namespace(ns))


def test_0d_cupy_lr_is_updated_in_place():
    xp = _namespace("cupy")  # one skip, not one per case, on machines without a GPU
    for case in CASES:
        _check_in_place(case, xp)


def _check_in_place(case, xp):
    floats, float_m, _ = run(case, make_opt(case.kind))
    opt = make_opt(case.kind, xp=xp)
    arrays = [g["lr"] for g in opt.param_groups]
    lrs, moms, sched = run(case, opt)
    assert all(g["lr"] is a for g, a in zip(opt.param_groups, arrays)), "lr array replaced"
    assert all(type(v) is float for v in sched.get_last_lr())
    # float64 arrays hold the same values a float would.
    np.testing.assert_array_equal(lrs, floats)
    np.testing.assert_array_equal(moms, float_m)


@pytest.mark.parametrize("case", cases(lambda c: c.torch))
def test_matches_torch(case):
    torch_sched = pytest.importorskip("torch.optim.lr_scheduler")
    topt = make_torch_opt(case.kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that optimizer.step() was never called
        tsched = (case.torch_build or case.build)(topt, torch_sched)
        want, want_m = [lrs_of(topt)], [momenta_of(topt)]
        for _ in range(case.steps):
            tsched.step()
            want.append(lrs_of(topt))
            want_m.append(momenta_of(topt))
    got, got_m, _ = run(case, make_opt(case.kind))
    want, want_m = np.array(want), np.array(want_m)
    if case.torch_differs_at_end:
        assert (want[-1] < 0).any(), "torch no longer extrapolates to a negative lr: drop the departure"
        assert (got[-1] >= 0).all()
        got, got_m, want, want_m = got[:-1], got_m[:-1], want[:-1], want_m[:-1]
    assert_close(got, want, rtol=1e-12, what=case.id)
    assert_close(got_m, want_m, rtol=1e-12, what=f"{case.id} momentum")


# ------------------------------------------------------------ LinearWarmup


def _warmup_target(case, i):
    return case.initial_lr(i) if case.initial_lr else LRS[i]


COMPOSABLE = cases(lambda c: not c.id.startswith("warmup"))


@pytest.mark.parametrize("start_factor", [0.0, 0.2])
@pytest.mark.parametrize("case", COMPOSABLE)
def test_warmup_then_any_scheduler(case, start_factor):
    """Ramp to the groups' initial lr, then exactly the scheduler's own trajectory, shifted by W."""
    W, n = 7, 120
    alone, alone_m, _ = run(case, make_opt(case.kind), steps=n)

    opt = make_opt(case.kind)
    after = case.build(opt, S)  # built first: its constructor already wrote lr
    warm = S.LinearWarmup(opt, warmup_steps=W, start_factor=start_factor, after=after)
    got, got_m, _ = run(case, opt, steps=n + W, sched=warm)

    ramp = [[_warmup_target(case, i) * (start_factor + (1 - start_factor) * t / W) for i in range(2)]
            for t in range(W)]
    assert_close(got[:W], np.array(ramp), rtol=1e-15, atol=1e-18, what=case.id)
    np.testing.assert_array_equal(got[W:], alone, err_msg=case.id)
    np.testing.assert_array_equal(got_m[W:], alone_m, err_msg=case.id)


@pytest.mark.parametrize("stop", [3, 7, 40])
@pytest.mark.parametrize("case", COMPOSABLE)
def test_warmup_state_dict_round_trip(case, stop):
    W, n = 7, 80

    def build(opt):
        return S.LinearWarmup(opt, warmup_steps=W, start_factor=0.1, after=case.build(opt, S))

    opt = make_opt(case.kind)
    whole, _, _ = run(case, opt, steps=n, sched=build(opt))

    opt = make_opt(case.kind)
    warm = build(opt)
    for _ in range(stop):
        warm.step()
    saved = pickle.loads(pickle.dumps((opt.state_dict(), warm.state_dict())))
    assert saved[1]["after"] is not None
    opt2 = make_opt(case.kind)
    warm2 = build(opt2)
    opt2.load_state_dict(saved[0])
    warm2.load_state_dict(saved[1])
    rest = [lrs_of(opt2)]
    for _ in range(stop, n):
        warm2.step()
        rest.append(lrs_of(opt2))
    np.testing.assert_array_equal(np.array(rest), whole[stop:], err_msg=case.id)


def test_warmup_then_cosine_gives_cosine_step_k_at_5_plus_k():
    opt = make_opt()
    warm = S.LinearWarmup(opt, warmup_steps=5, after=S.CosineAnnealingLR(opt, T_max=10))
    seen = [lrs_of(opt)]
    for _ in range(15):
        warm.step()
        seen.append(lrs_of(opt))
    for t, row in enumerate(seen):
        for i, base in enumerate(LRS):
            want = base * t / 5 if t < 5 else base * (1 + math.cos(math.pi * (t - 5) / 10)) / 2
            assert row[i] == pytest.approx(want, rel=1e-12, abs=1e-17), (t, i)
    assert seen[5] == list(LRS) and seen[15] == [0.0, 0.0]


def test_warmup_ramps_to_initial_lr_not_to_what_after_wrote():
    opt = make_opt()
    after = S.ConstantLR(opt, factor=0.25, total_iters=3)
    assert lrs_of(opt) == [0.25 * lr for lr in LRS]  # the trap: lr no longer holds the base
    warm = S.LinearWarmup(opt, warmup_steps=4, after=after)
    assert warm.base_lrs == list(LRS)
    for _ in range(3):
        warm.step()
    assert lrs_of(opt) == pytest.approx([0.75 * lr for lr in LRS], rel=1e-15)
    warm.step()  # step 4: ConstantLR's step 0
    assert lrs_of(opt) == [0.25 * lr for lr in LRS]
    for _ in range(3):
        warm.step()  # ConstantLR's step 3: full lr
    assert lrs_of(opt) == pytest.approx(list(LRS), rel=1e-15)


def test_warmup_zero_steps_is_after_alone():
    opt, opt2 = make_opt(), make_opt()
    warm = S.LinearWarmup(opt, warmup_steps=0, after=S.ExponentialLR(opt, gamma=0.9))
    alone = S.ExponentialLR(opt2, gamma=0.9)
    for _ in range(20):
        assert lrs_of(opt) == lrs_of(opt2)
        warm.step()
        alone.step()


def test_warmup_then_reduce_on_plateau():
    opt = make_opt()
    plateau = S.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    warm = S.LinearWarmup(opt, warmup_steps=3, after=plateau)
    for t in range(1, 4):
        warm.step(metrics=1.0)  # metrics during warmup are ignored
        assert plateau.num_bad_epochs == 0
    assert lrs_of(opt) == list(LRS)
    with pytest.raises(TypeError, match="metrics"):
        warm.step()  # the warmup is over: the plateau needs its metric
    assert warm.last_epoch == 3
    for loss in [1.0, 1.0, 1.0]:  # best, bad, bad -> reduce
        warm.step(loss)
    assert lrs_of(opt) == pytest.approx([0.5 * lr for lr in LRS])
    state = warm.state_dict()
    assert state["after"]["best"] == 1.0


def test_warmup_rejects_metrics_without_plateau():
    opt = make_opt()
    warm = S.LinearWarmup(opt, warmup_steps=3)
    before = groups_snapshot(opt)
    with pytest.raises(TypeError, match="metrics"):
        warm.step(0.5)
    assert groups_snapshot(opt) == before and warm.last_epoch == 0


def test_warmup_load_state_dict_requires_matching_after():
    opt = make_opt()
    saved = S.LinearWarmup(opt, warmup_steps=3).state_dict()
    opt2 = make_opt()
    warm = S.LinearWarmup(opt2, warmup_steps=3, after=S.ExponentialLR(opt2, gamma=0.9))
    with pytest.raises(ValueError, match="after"):
        warm.load_state_dict(saved)


def test_pure_join_equals_warmup_class():
    """The optax-style pieces joined give the class's values (to the recursive form's last bits)."""
    f = schedules.join_schedules(
        [schedules.linear_warmup(0.1, 20, 0.1), schedules.cosine_annealing_lr(0.1, T_max=100)], [20]
    )
    got, _, _ = run(BY_ID["warmup_cosine"], make_opt())
    assert_close(got[:, 0], [f(t) for t in range(STEPS + 1)], rtol=1e-12)


# ------------------------------------------------------------------ errors


def _other_opt():
    return make_opt()


ERRORS = [
    # (id, setup: opt -> zero-argument call that must raise, exception, match)
    ("not_an_optimizer", lambda o: lambda: S.StepLR(object(), step_size=3), TypeError, "optimizer"),
    ("dict_is_not_an_optimizer", lambda o: lambda: S.ExponentialLR({"param_groups": []}, gamma=0.9),
     TypeError, "optimizer"),
    ("plateau_not_an_optimizer", lambda o: lambda: S.ReduceLROnPlateau([1, 2]), TypeError, "optimizer"),
    ("step_size_negative", lambda o: lambda: S.StepLR(o, step_size=-1), ValueError, "step_size=-1"),
    ("step_size_zero", lambda o: lambda: S.StepLR(o, step_size=0), ValueError, "step_size"),
    ("step_size_float", lambda o: lambda: S.StepLR(o, step_size=2.5), TypeError, "step_size"),
    ("step_size_bool", lambda o: lambda: S.StepLR(o, step_size=True), TypeError, "step_size"),
    ("step_gamma_zero", lambda o: lambda: S.StepLR(o, step_size=3, gamma=0.0), ValueError, "gamma=0.0"),
    ("step_gamma_negative", lambda o: lambda: S.StepLR(o, step_size=3, gamma=-0.5), ValueError, "gamma"),
    ("step_gamma_nan", lambda o: lambda: S.StepLR(o, step_size=3, gamma=float("nan")), ValueError, "gamma"),
    ("step_gamma_str", lambda o: lambda: S.StepLR(o, step_size=3, gamma="0.1"), TypeError, "gamma"),
    ("last_epoch_too_small", lambda o: lambda: S.StepLR(o, step_size=3, last_epoch=-2), ValueError, "last_epoch"),
    ("resume_without_initial_lr", lambda o: lambda: S.StepLR(o, step_size=3, last_epoch=4), KeyError,
     "initial_lr"),
    ("milestones_decreasing", lambda o: lambda: S.MultiStepLR(o, milestones=[5, 3]), ValueError, "milestones"),
    ("milestones_repeated", lambda o: lambda: S.MultiStepLR(o, milestones=[3, 3]), ValueError, "milestones"),
    ("milestones_negative", lambda o: lambda: S.MultiStepLR(o, milestones=[-1, 2]), ValueError,
     r"milestones\[0\]"),
    ("milestones_float", lambda o: lambda: S.MultiStepLR(o, milestones=[1.5]), TypeError, r"milestones\[0\]"),
    ("milestones_scalar", lambda o: lambda: S.MultiStepLR(o, milestones=5), TypeError, "milestones"),
    ("multistep_gamma", lambda o: lambda: S.MultiStepLR(o, milestones=[2], gamma=0), ValueError, "gamma"),
    ("constant_factor_above_1", lambda o: lambda: S.ConstantLR(o, factor=1.5), ValueError, "factor=1.5"),
    ("constant_factor_zero", lambda o: lambda: S.ConstantLR(o, factor=0.0), ValueError, "factor"),
    ("constant_total_iters", lambda o: lambda: S.ConstantLR(o, total_iters=0), ValueError, "total_iters"),
    ("linear_start_zero", lambda o: lambda: S.LinearLR(o, start_factor=0.0), ValueError, "start_factor"),
    ("linear_end_above_1", lambda o: lambda: S.LinearLR(o, end_factor=1.5), ValueError, "end_factor"),
    ("linear_total_iters", lambda o: lambda: S.LinearLR(o, total_iters=-3), ValueError, "total_iters"),
    ("exponential_gamma", lambda o: lambda: S.ExponentialLR(o, gamma=0), ValueError, "gamma"),
    ("polynomial_total_iters", lambda o: lambda: S.PolynomialLR(o, total_iters=0), ValueError, "total_iters"),
    ("polynomial_power", lambda o: lambda: S.PolynomialLR(o, power=-1.0), ValueError, "power"),
    ("cosine_T_max", lambda o: lambda: S.CosineAnnealingLR(o, T_max=0), ValueError, "T_max"),
    ("cosine_T_max_str", lambda o: lambda: S.CosineAnnealingLR(o, T_max="10"), TypeError, "T_max"),
    ("cosine_eta_min", lambda o: lambda: S.CosineAnnealingLR(o, T_max=10, eta_min=-1.0), ValueError, "eta_min"),
    ("restarts_T_0", lambda o: lambda: S.CosineAnnealingWarmRestarts(o, T_0=0), ValueError, "T_0"),
    ("restarts_T_0_float", lambda o: lambda: S.CosineAnnealingWarmRestarts(o, T_0=2.5), TypeError, "T_0"),
    ("restarts_T_mult", lambda o: lambda: S.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=0), ValueError, "T_mult"),
    ("restarts_eta_min", lambda o: lambda: S.CosineAnnealingWarmRestarts(o, T_0=5, eta_min="0"), TypeError,
     "eta_min"),
    ("cyclic_base_lr_length", lambda o: lambda: S.CyclicLR(o, base_lr=[0.1], max_lr=1.0), ValueError, "base_lr"),
    ("cyclic_max_lr_length", lambda o: lambda: S.CyclicLR(o, base_lr=0.1, max_lr=[1, 2, 3]), ValueError, "max_lr"),
    ("cyclic_step_size_up", lambda o: lambda: S.CyclicLR(o, 0.1, 1.0, step_size_up=0), ValueError, "step_size_up"),
    ("cyclic_step_size_down", lambda o: lambda: S.CyclicLR(o, 0.1, 1.0, step_size_down=-1), ValueError,
     "step_size_down"),
    ("cyclic_mode", lambda o: lambda: S.CyclicLR(o, 0.1, 1.0, mode="sawtooth"), ValueError, "mode"),
    ("cyclic_gamma", lambda o: lambda: S.CyclicLR(o, 0.1, 1.0, mode="exp_range", gamma=0), ValueError, "gamma"),
    ("cyclic_scale_mode", lambda o: lambda: S.CyclicLR(o, 0.1, 1.0, scale_fn=_inv_cycle, scale_mode="epoch"),
     ValueError, "scale_mode"),
    ("cyclic_scale_fn", lambda o: lambda: S.CyclicLR(o, 0.1, 1.0, scale_fn=3), TypeError, "scale_fn"),
    ("cyclic_momentum_length", lambda o: lambda: S.CyclicLR(o, 0.1, 1.0, base_momentum=[0.8]), ValueError,
     "base_momentum"),
    ("cyclic_needs_momentum", lambda o: lambda: S.CyclicLR(make_opt("plain"), 0.1, 1.0), ValueError,
     "cycle_momentum"),
    ("one_cycle_total_steps", lambda o: lambda: S.OneCycleLR(o, max_lr=1.0, total_steps=0), ValueError,
     "total_steps"),
    ("one_cycle_no_length", lambda o: lambda: S.OneCycleLR(o, max_lr=1.0), ValueError, "total_steps"),
    ("one_cycle_epochs", lambda o: lambda: S.OneCycleLR(o, max_lr=1.0, epochs=0, steps_per_epoch=3), ValueError,
     "epochs"),
    ("one_cycle_steps_per_epoch", lambda o: lambda: S.OneCycleLR(o, 1.0, epochs=2, steps_per_epoch=-1),
     ValueError, "steps_per_epoch"),
    ("one_cycle_pct_start", lambda o: lambda: S.OneCycleLR(o, 1.0, total_steps=10, pct_start=1.5), ValueError,
     "pct_start"),
    ("one_cycle_empty_phase", lambda o: lambda: S.OneCycleLR(o, 1.0, total_steps=10, pct_start=0.1), ValueError,
     "pct_start"),
    ("one_cycle_anneal", lambda o: lambda: S.OneCycleLR(o, 1.0, total_steps=10, anneal_strategy="exp"),
     ValueError, "anneal_strategy"),
    ("one_cycle_div_factor", lambda o: lambda: S.OneCycleLR(o, 1.0, total_steps=10, div_factor=0), ValueError,
     "div_factor"),
    ("one_cycle_final_div", lambda o: lambda: S.OneCycleLR(o, 1.0, total_steps=10, final_div_factor=-1.0),
     ValueError, "final_div_factor"),
    ("one_cycle_three_phase", lambda o: lambda: S.OneCycleLR(o, 1.0, total_steps=10, three_phase="yes"),
     TypeError, "three_phase"),
    ("one_cycle_max_lr_length", lambda o: lambda: S.OneCycleLR(o, [1.0], total_steps=10), ValueError, "max_lr"),
    ("one_cycle_needs_momentum", lambda o: lambda: S.OneCycleLR(make_opt("plain"), 1.0, total_steps=10),
     ValueError, "cycle_momentum"),
    ("lambda_list_length", lambda o: lambda: S.LambdaLR(o, lr_lambda=[_inv]), ValueError, "lr_lambda"),
    ("lambda_not_callable", lambda o: lambda: S.LambdaLR(o, lr_lambda=3), TypeError, "lr_lambda"),
    ("lambda_list_item", lambda o: lambda: S.LambdaLR(o, lr_lambda=[_inv, 0.5]), TypeError, r"lr_lambda\[1\]"),
    ("multiplicative_list_length", lambda o: lambda: S.MultiplicativeLR(o, lr_lambda=[_inv] * 3), ValueError,
     "lr_lambda"),
    ("multiplicative_not_callable", lambda o: lambda: S.MultiplicativeLR(o, lr_lambda=None), TypeError,
     "lr_lambda"),
    ("sequential_empty", lambda o: lambda: S.SequentialLR(o, [], milestones=[]), ValueError, "schedulers"),
    ("sequential_milestones_length",
     lambda o: (lambda s: lambda: S.SequentialLR(o, [s], milestones=[3]))(S.ExponentialLR(o, 0.9)),
     ValueError, "milestones"),
    ("sequential_milestones_order",
     lambda o: (lambda a, b, c: lambda: S.SequentialLR(o, [a, b, c], milestones=[5, 2]))(
         S.ExponentialLR(o, 0.9), S.StepLR(o, 2), S.ConstantLR(o)),
     ValueError, "milestones"),
    ("sequential_not_a_scheduler",
     lambda o: (lambda s: lambda: S.SequentialLR(o, [s, "cosine"], milestones=[3]))(S.ExponentialLR(o, 0.9)),
     TypeError, r"schedulers\[1\]"),
    ("sequential_other_optimizer",
     lambda o: (lambda s: lambda: S.SequentialLR(o, [s], milestones=[]))(S.ExponentialLR(_other_opt(), 0.9)),
     ValueError, r"schedulers\[0\]"),
    ("sequential_plateau",
     lambda o: (lambda s: lambda: S.SequentialLR(o, [s], milestones=[]))(S.ReduceLROnPlateau(o)),
     ValueError, "ReduceLROnPlateau"),
    ("chained_empty", lambda o: lambda: S.ChainedScheduler([]), ValueError, "schedulers"),
    ("chained_other_optimizer",
     lambda o: (lambda a, b: lambda: S.ChainedScheduler([a, b]))(S.ExponentialLR(o, 0.9),
                                                                 S.ExponentialLR(_other_opt(), 0.9)),
     ValueError, r"schedulers\[1\]"),
    ("chained_plateau",
     lambda o: (lambda s: lambda: S.ChainedScheduler([s], optimizer=o))(S.ReduceLROnPlateau(o)),
     ValueError, "ReduceLROnPlateau"),
    ("plateau_factor_one", lambda o: lambda: S.ReduceLROnPlateau(o, factor=1.0), ValueError, "factor=1.0"),
    ("plateau_factor_negative", lambda o: lambda: S.ReduceLROnPlateau(o, factor=-0.1), ValueError, "factor"),
    ("plateau_mode", lambda o: lambda: S.ReduceLROnPlateau(o, mode="avg"), ValueError, "mode"),
    ("plateau_threshold_mode", lambda o: lambda: S.ReduceLROnPlateau(o, threshold_mode="pct"), ValueError,
     "threshold_mode"),
    ("plateau_threshold", lambda o: lambda: S.ReduceLROnPlateau(o, threshold=-1e-4), ValueError, "threshold"),
    ("plateau_patience", lambda o: lambda: S.ReduceLROnPlateau(o, patience=-1), ValueError, "patience"),
    ("plateau_cooldown", lambda o: lambda: S.ReduceLROnPlateau(o, cooldown=1.5), TypeError, "cooldown"),
    ("plateau_min_lr_length", lambda o: lambda: S.ReduceLROnPlateau(o, min_lr=[0.0]), ValueError, "min_lr"),
    ("plateau_min_lr_negative", lambda o: lambda: S.ReduceLROnPlateau(o, min_lr=-1.0), ValueError, "min_lr"),
    ("plateau_eps", lambda o: lambda: S.ReduceLROnPlateau(o, eps=-1.0), ValueError, "eps"),
    ("warmup_steps_negative", lambda o: lambda: S.LinearWarmup(o, warmup_steps=-1), ValueError, "warmup_steps=-1"),
    ("warmup_steps_float", lambda o: lambda: S.LinearWarmup(o, warmup_steps=2.0), TypeError, "warmup_steps"),
    ("warmup_start_factor_high", lambda o: lambda: S.LinearWarmup(o, 5, start_factor=1.5), ValueError,
     "start_factor"),
    ("warmup_start_factor_low", lambda o: lambda: S.LinearWarmup(o, 5, start_factor=-0.1), ValueError,
     "start_factor"),
    ("warmup_after_not_scheduler", lambda o: lambda: S.LinearWarmup(o, 5, after=object()), TypeError, "after"),
    ("warmup_after_other_optimizer",
     lambda o: (lambda s: lambda: S.LinearWarmup(o, 5, after=s))(S.ExponentialLR(_other_opt(), 0.9)),
     ValueError, "after"),
    ("warmup_not_an_optimizer", lambda o: lambda: S.LinearWarmup(None, 5), TypeError, "optimizer"),
    ("step_epoch_negative",
     lambda o: (lambda s: lambda: s.step(-1))(S.StepLR(o, step_size=3)), ValueError, "epoch"),
    ("restarts_epoch_negative",
     lambda o: (lambda s: lambda: s.step(-0.5))(S.CosineAnnealingWarmRestarts(o, T_0=3)), ValueError, "epoch"),
]


@pytest.mark.parametrize("setup, exc, match", [pytest.param(*e[1:], id=e[0]) for e in ERRORS])
def test_bad_argument_raises_and_changes_nothing(setup, exc, match):
    opt = make_opt()
    call = setup(opt)
    before = groups_snapshot(opt)
    with pytest.raises(exc, match=match):
        call()
    assert groups_snapshot(opt) == before


@pytest.mark.parametrize("name", [n for n in schedules.__all__ if n != "Schedule"])
def test_every_pure_schedule_validates_when_built(name):
    bad = {
        "step_lr": dict(init_value=1.0, step_size=0),
        "multistep_lr": dict(init_value=1.0, milestones=[3, 1]),
        "constant_lr": dict(init_value=1.0, factor=2.0),
        "linear_lr": dict(init_value=1.0, start_factor=0.0),
        "exponential_lr": dict(init_value=1.0, gamma=-1.0),
        "polynomial_lr": dict(init_value=1.0, total_iters=0),
        "cosine_annealing_lr": dict(init_value=1.0, T_max=0),
        "cosine_annealing_warm_restarts": dict(init_value=1.0, T_0=0),
        "cyclic_lr": dict(base_value=0.1, max_value=1.0, step_size_up=-2),
        "one_cycle_lr": dict(max_value=1.0, total_steps=0),
        "linear_warmup": dict(init_value=1.0, warmup_steps=-1),
        "join_schedules": dict(schedules=[float], boundaries=[1]),
    }[name]
    with pytest.raises(ValueError, match=r"step_size|milestones|factor|gamma|total_iters|T_max|T_0|step_size_up|"
                                         r"total_steps|warmup_steps|boundaries"):
        getattr(schedules, name)(**bad)


# ------------------------------------------------------------- edge cases


def test_one_cycle_stepping_past_total_steps_raises_and_changes_nothing():
    opt = make_opt()
    sched = S.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    for _ in range(10):  # torch allows last_epoch == total_steps
        sched.step()
    before, epoch = groups_snapshot(opt), sched.last_epoch
    with pytest.raises(ValueError, match="total steps is 10"):
        sched.step()
    assert sched.last_epoch == epoch == 10
    assert groups_snapshot(opt) == before
    with pytest.raises(ValueError, match="total steps"):
        sched.step(11)
    assert sched.last_epoch == 10


def test_warm_restarts_fractional_epochs():
    T_0, T_mult, eta_min = 10, 2, 0.001
    epochs = [0, 0.5, 1.25, 9.99, 10, 10.5, 29.7, 30, 75.3, 150.0, 151.5]
    opt = make_opt()
    sched = S.CosineAnnealingWarmRestarts(opt, T_0=T_0, T_mult=T_mult, eta_min=eta_min)
    got = []
    for e in epochs:
        sched.step(e)
        got.append(lrs_of(opt))
        assert sched.last_epoch == math.floor(e)
    ref = r_warm_restarts(T_0, T_mult, eta_min)  # its loop works for fractional t too
    want = [[ref(e, i, LRS[i]) for i in range(2)] for e in epochs]
    assert_close(got, want, rtol=1e-12)

    torch_sched = pytest.importorskip("torch.optim.lr_scheduler")
    topt = make_torch_opt()
    tsched = torch_sched.CosineAnnealingWarmRestarts(topt, T_0=T_0, T_mult=T_mult, eta_min=eta_min)
    twant = []
    for e in epochs:
        tsched.step(e)
        twant.append(lrs_of(topt))
    assert_close(got, twant, rtol=1e-12)


def test_warm_restarts_epoch_jump_lands_on_the_restart_exactly():
    # T_0=1, T_mult=3: restarts at 1, 4, 13, 40, 121. torch computes the period
    # with math.log(243, 3) == 4.999..., lands one period short, and gives
    # eta_min at epoch 121 instead of the restart's full lr.
    opt, opt2 = make_opt(), make_opt()
    jumped = S.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=3)
    stepped = S.CosineAnnealingWarmRestarts(opt2, T_0=1, T_mult=3)
    jumped.step(121)
    for _ in range(121):
        stepped.step()
    assert lrs_of(opt) == lrs_of(opt2) == list(LRS)


def test_cosine_step_by_step_with_floor_climbs_back_like_torch():
    # The recursive form's trough branch: past T_max the lr climbs again.
    opt = make_opt()
    sched = S.CosineAnnealingLR(opt, T_max=4, eta_min=0.01)
    seen = []
    for _ in range(9):
        sched.step()
        seen.append(lrs_of(opt)[0])
    ref = r_cosine(4, 0.01)
    assert seen == pytest.approx([ref(t, 0, 0.1) for t in range(1, 10)], rel=1e-13)


RESUMABLE = ["step", "multistep", "constant", "linear", "exponential", "polynomial", "cosine", "warm_restarts",
             "lambda", "multiplicative", "cyclic_triangular", "one_cycle"]


@pytest.mark.parametrize("case_id", RESUMABLE)
def test_resume_with_last_epoch_matches_torch(case_id):
    """Built with last_epoch=k on groups that hold initial_lr: torch's (quirky) values."""
    torch_sched = pytest.importorskip("torch.optim.lr_scheduler")
    case = BY_ID[case_id]

    def with_last_epoch(opt, L):
        first = case.build(opt, L)  # sets initial_lr (and, for 1cycle, max_lr...)
        del first
        return _rebuild(case, opt, L, last_epoch=12)

    opt, topt = make_opt(case.kind), make_torch_opt(case.kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tsched = with_last_epoch(topt, torch_sched)
        t_epoch = tsched.last_epoch
        want = [lrs_of(topt)]
        for _ in range(60):
            tsched.step()
            want.append(lrs_of(topt))
    sched = with_last_epoch(opt, S)
    assert sched.last_epoch == t_epoch == 13  # torch's constructor steps from last_epoch too
    got = [lrs_of(opt)]
    for _ in range(60):
        sched.step()
        got.append(lrs_of(opt))
    assert_close(got, want, rtol=1e-12)


def _rebuild(case, opt, L, last_epoch):
    """``case``'s scheduler again, with ``last_epoch`` (the builders do not take it)."""
    args = {
        "step": lambda: L.StepLR(opt, 7, 0.5, last_epoch=last_epoch),
        "multistep": lambda: L.MultiStepLR(opt, [3, 50, 120], 0.3, last_epoch=last_epoch),
        "constant": lambda: L.ConstantLR(opt, 0.25, 10, last_epoch=last_epoch),
        "linear": lambda: L.LinearLR(opt, 0.1, 0.9, 40, last_epoch=last_epoch),
        "exponential": lambda: L.ExponentialLR(opt, 0.97, last_epoch=last_epoch),
        "polynomial": lambda: L.PolynomialLR(opt, 150, 2.5, last_epoch=last_epoch),
        "cosine": lambda: L.CosineAnnealingLR(opt, 37, 0.001, last_epoch=last_epoch),
        "warm_restarts": lambda: L.CosineAnnealingWarmRestarts(opt, 10, 2, 0.001, last_epoch=last_epoch),
        "lambda": lambda: L.LambdaLR(opt, _inv, last_epoch=last_epoch),
        "multiplicative": lambda: L.MultiplicativeLR(opt, _mul99, last_epoch=last_epoch),
        "cyclic_triangular": lambda: L.CyclicLR(opt, 0.01, [0.1, 0.2], 13, 7, last_epoch=last_epoch),
        "one_cycle": lambda: L.OneCycleLR(opt, [0.1, 0.5], total_steps=STEPS, last_epoch=last_epoch),
    }
    return args[case.id]()


@pytest.mark.parametrize("case", cases(lambda c: c.closed_form))
def test_step_epoch_matches_torch(case):
    torch_sched = pytest.importorskip("torch.optim.lr_scheduler")
    epochs = [3, 3, 0, 17, 120, 41, 299, 5]
    topt = make_torch_opt(case.kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates step(epoch)
        tsched = case.build(topt, torch_sched)
        want = []
        for e in epochs:
            tsched.step(e)
            want.append(lrs_of(topt))
    opt = make_opt(case.kind)
    sched = case.build(opt, S)
    got = []
    for e in epochs:
        sched.step(e)
        got.append(lrs_of(opt))
    assert_close(got, want, rtol=1e-12)


# ---- param groups added after the scheduler was built


def _add_group(opt, lr=0.5):
    opt.add_param_group({"params": [np.zeros(2)], "lr": lr})


def test_added_group_gets_initial_lr_at_next_step_chainable():
    opt = make_opt()
    sched = S.ExponentialLR(opt, gamma=0.5)
    sched.step()
    _add_group(opt)
    assert "initial_lr" not in opt.param_groups[2]
    sched.step()
    assert opt.param_groups[2]["initial_lr"] == 0.5
    assert sched.base_lrs == [*LRS, 0.5]
    assert lrs_of(opt) == [LRS[0] / 4, LRS[1] / 4, 0.25]  # continues from its own lr
    assert sched.get_last_lr() == lrs_of(opt)


def test_state_dict_is_a_snapshot():
    opt = make_opt()
    sched = S.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=4)
    state = sched.state_dict()
    _add_group(opt)
    sched.step()  # extends base_lrs and max_lrs in place
    assert len(sched.base_lrs) == 3
    assert state["base_lrs"] == [0.01, 0.01] and state["max_lrs"] == [0.1, 0.1]


def test_added_group_closed_form_scheduler():
    opt = make_opt()
    sched = S.LambdaLR(opt, lr_lambda=_inv)
    for _ in range(3):
        sched.step()
    _add_group(opt, lr=0.4)
    sched.step()
    assert lrs_of(opt)[2] == 0.4 * _inv(4)


def test_added_group_with_per_group_lambdas_raises_before_changing_anything():
    opt = make_opt()
    sched = S.LambdaLR(opt, lr_lambda=[_inv, _half_life])
    _add_group(opt)
    before = groups_snapshot(opt)
    with pytest.raises(ValueError, match="lr_lambda"):
        sched.step()
    assert groups_snapshot(opt) == before and sched.last_epoch == 0


def test_added_group_cyclic_and_one_cycle_take_the_scalar_arguments():
    opt = make_opt()
    cyc = S.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=4)
    _add_group(opt, lr=0.7)
    cyc.step()
    ref, mref = r_cyclic(0.01, 0.1, 4), m_cyclic(4)
    assert lrs_of(opt) == pytest.approx([ref(1, i, None) for i in range(3)], rel=1e-14)
    assert momenta_of(opt) == pytest.approx([mref(1, i) for i in range(3)], rel=1e-14)

    opt = make_opt()
    one = S.OneCycleLR(opt, max_lr=0.1, total_steps=50)
    _add_group(opt, lr=0.7)
    one.step()
    assert opt.param_groups[2]["initial_lr"] == 0.1 / 25 and opt.param_groups[2]["max_lr"] == 0.1
    assert lrs_of(opt)[2] == lrs_of(opt)[0]

    opt = make_opt()
    per_group = S.CyclicLR(opt, base_lr=[0.01, 0.02], max_lr=0.1)
    _add_group(opt)
    with pytest.raises(ValueError, match="base_lr"):
        per_group.step()


def test_added_group_plateau_min_lr():
    opt = make_opt()
    sched = S.ReduceLROnPlateau(opt, patience=0, min_lr=[0.0, 0.0])
    _add_group(opt)
    with pytest.raises(ValueError, match="min_lr"):
        sched.step(1.0)
    assert sched.last_epoch == 0
    opt = make_opt()
    sched = S.ReduceLROnPlateau(opt, patience=0, factor=0.5, min_lr=0.0)
    sched.step(1.0)
    _add_group(opt)
    sched.step(2.0)
    assert lrs_of(opt) == [LRS[0] / 2, LRS[1] / 2, 0.25]


def test_added_group_during_warmup_ramps_to_its_own_lr_then_joins_after():
    opt = make_opt()
    warm = S.LinearWarmup(opt, warmup_steps=4, after=S.ExponentialLR(opt, gamma=0.5))
    warm.step()
    _add_group(opt, lr=0.8)
    warm.step()
    assert lrs_of(opt)[2] == 0.8 * 2 / 4
    warm.step()
    warm.step()  # step 4: the hand-over; the new group starts from its base
    assert lrs_of(opt) == [*LRS, 0.8]
    warm.step()
    assert lrs_of(opt) == [LRS[0] / 2, LRS[1] / 2, 0.4]


# ---- ReduceLROnPlateau


PLATEAU = [
    # (kwargs, metrics, expected lr factor after each step, for both groups)
    (dict(factor=0.5, patience=2), [5, 4, 4, 4, 4, 4, 4, 4], [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25]),
    (dict(factor=0.5, patience=0, cooldown=2), [5, 6, 6, 6, 6, 6], [1, 0.5, 0.5, 0.5, 0.25, 0.25]),
    (dict(mode="max", factor=0.1, patience=1), [1, 2, 2, 2, 3, 3, 3], [1, 1, 1, 0.1, 0.1, 0.1, 0.01]),
    # rel threshold: 0.99999 is not better than 1 by 1e-4 relatively
    (dict(factor=0.5, patience=0, threshold=1e-4), [1, 0.99999, 0.5], [1, 0.5, 0.5]),
    (dict(factor=0.5, patience=0, threshold=0.1, threshold_mode="abs"), [1, 0.95, 0.85], [1, 0.5, 0.5]),
    (dict(mode="max", factor=0.5, patience=0, threshold=0.1, threshold_mode="abs"), [1, 1.05, 1.2],
     [1, 0.5, 0.5]),
    # min_lr floors each group; below eps no change is made
    (dict(factor=0.1, patience=0, min_lr=[0.005, 0.0]), [1, 2, 2], [1, 0.1, 0.01]),
    (dict(factor=0.5, patience=0, eps=0.04), [1, 2, 2], [1, 0.5, 0.5]),
]


@pytest.mark.parametrize("kwargs, metrics, factors", PLATEAU)
def test_reduce_on_plateau(kwargs, metrics, factors):
    opt = make_opt()
    sched = S.ReduceLROnPlateau(opt, **kwargs)
    got = []
    for m in metrics:
        sched.step(np.asarray(float(m)))  # a 0-d array metric is fine
        got.append(lrs_of(opt))
        assert sched.get_last_lr() == got[-1]
    min_lr = kwargs.get("min_lr", 0.0)
    eps = kwargs.get("eps", 1e-8)
    want = []
    for f in factors:
        row = []
        for i, base in enumerate(LRS):
            floor = _pick(min_lr, i)
            row.append(max(base * f, floor))
        want.append(row)
    if eps == 0.04:  # group 1 (0.03) would drop by 0.015 < eps: unchanged
        want = [[r[0], LRS[1]] for r in want]
    assert_close(got, want, rtol=1e-14)

    torch_sched = pytest.importorskip("torch.optim.lr_scheduler")
    topt = make_torch_opt()
    tsched = torch_sched.ReduceLROnPlateau(topt, **kwargs)
    twant = []
    for m in metrics:
        tsched.step(float(m))
        twant.append(lrs_of(topt))
    assert_close(got, twant, rtol=1e-12)


def test_reduce_on_plateau_state_dict_round_trip():
    metrics = [5, 4, 4, 4, 4, 3, 3, 3, 3, 3, 3]
    opt = make_opt()
    sched = S.ReduceLROnPlateau(opt, factor=0.5, patience=1, cooldown=1)
    whole = []
    for m in metrics:
        sched.step(m)
        whole.append(lrs_of(opt))
    opt = make_opt()
    sched = S.ReduceLROnPlateau(opt, factor=0.5, patience=1, cooldown=1)
    for m in metrics[:4]:
        sched.step(m)
    saved = pickle.loads(pickle.dumps((opt.state_dict(), sched.state_dict())))
    opt2 = make_opt()
    sched2 = S.ReduceLROnPlateau(opt2)  # other settings: the state brings them back
    opt2.load_state_dict(saved[0])
    sched2.load_state_dict(saved[1])
    rest = []
    for m in metrics[4:]:
        sched2.step(m)
        rest.append(lrs_of(opt2))
    assert rest == whole[4:]


# ---- misc


def test_get_lr_outside_step_warns():
    opt = make_opt()
    sched = S.StepLR(opt, 3)
    with pytest.warns(UserWarning, match="get_last_lr"):
        sched.get_lr()


def test_reexport_for_torch_and_mindspore_users():
    import ms_optim.lr_scheduler as lr_scheduler

    for name in S.__all__:
        assert getattr(lr_scheduler, name) is getattr(S, name)


def test_lambda_state_dict_saves_callable_objects_state_like_torch():
    class Decay:
        def __init__(self, rate):
            self.rate = rate

        def __call__(self, t):
            return self.rate**t

    opt = make_opt()
    sched = S.LambdaLR(opt, lr_lambda=Decay(0.9))
    state = sched.state_dict()
    assert state["lr_lambdas"] == [{"rate": 0.9}, {"rate": 0.9}]
    opt2 = make_opt()
    other = S.LambdaLR(opt2, lr_lambda=Decay(0.5))
    other.load_state_dict(state)
    other.step()
    assert lrs_of(opt2) == pytest.approx([lr * 0.9 for lr in LRS], rel=1e-15)


@pytest.mark.parametrize("module", ["schedulers.schedules", "schedulers.base", "schedulers.decay",
                                    "schedulers.cosine", "schedulers.cyclic", "schedulers.composite",
                                    "schedulers.plateau", "schedulers.warmup", "schedulers.swa", "schedulers"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if module != "schedulers.base":
        assert result.attempted > 0
