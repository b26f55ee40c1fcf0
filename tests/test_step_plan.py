"""The kept step plan: used in the steady state, rebuilt exactly when something it was built from changes.

Each change a training loop can make between steps is made here to an
ms_optim optimizer and to torch.optim's (the independent reference) alike,
and the parameters must agree at every step; a spy says whether the kept plan
served the step. Refusals are checked to happen on the planned path too,
before anything changes. Flat buffers and aligned state are at the end.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import ms_optim
from ms_optim.flat import ALIGNMENT, FlatBuffer, aligned_empty

torch = pytest.importorskip("torch")

BACKENDS = ["eager", pytest.param("cpu", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("numba") is None, reason="numba is not installed"))]
SHAPES = [(3, 4), (5,), (2, 3), (7,)]


def _arrays(seed, shapes=SHAPES, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


class Pair:
    """An ms_optim optimizer and torch's on the same parameters; ``step`` compares them."""

    def __init__(self, name, backend, groups=None, **kw):
        self.params = _arrays(0)
        self.tparams = [torch.tensor(p) for p in self.params]
        groups = groups or [{"params": slice(None)}]
        ms_groups = [{**g, "params": self.params[g["params"]]} for g in groups]
        t_groups = [{**g, "params": self.tparams[g["params"]]} for g in groups]
        self.opt = getattr(ms_optim, name)(ms_groups, backend=backend, **kw)
        self.topt = getattr(torch.optim, name)(t_groups, **kw)
        self.planned = 0
        real = self.opt._planned_step

        def spy(plan, grads):
            served = real(plan, grads)
            self.planned += served
            return served

        self.opt._planned_step = spy
        self.k = 0

    def step(self, grads=None, *, none=()):
        self.k += 1
        grads = _arrays(100 + self.k) if grads is None else grads
        grads = [None if i in none else g for i, g in enumerate(grads)]
        for t, g in zip(self.tparams, grads):
            t.grad = None if g is None else torch.tensor(np.asarray(g, dtype=np.float64))
        self.topt.step()
        self.opt.step(grads)
        for p, t in zip(self.params, self.tparams):
            np.testing.assert_allclose(p, t.numpy(), rtol=1e-12, atol=1e-14)

    def both_groups(self, key, value):
        for g, tg in zip(self.opt.param_groups, self.topt.param_groups):
            g[key] = value
            tg[key] = value


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_steady_state_is_planned_and_matches_torch(backend):
    pair = Pair("AdamW", backend, lr=0.01, weight_decay=0.1)
    for _ in range(8):
        pair.step()
    assert pair.planned == 7, "every step after the first uses the kept plan"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_scheduler_lr_reaches_the_planned_step(backend):
    pair = Pair("Adam", backend, lr=0.01)
    for k in range(6):
        pair.both_groups("lr", 0.01 * 0.5 ** k)
        pair.step()
    assert pair.planned == 5, "a new lr is a new host scalar, not a new plan"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_static_change_replans(backend):
    pair = Pair("Adam", backend, lr=0.01)
    for _ in range(3):
        pair.step()
    pair.both_groups("maximize", True)  # another kernel
    for _ in range(3):
        pair.step()
    assert pair.planned == 4  # steps 2, 3, then 5 and 6 (4 replans)


def test_a_hyper_parameter_that_adds_state_replans():
    opt = ms_optim.Adam(_arrays(0), lr=0.01, backend="eager")
    for k in range(3):
        opt.step(_arrays(k))
    opt.param_groups[0]["amsgrad"] = True  # torch refuses this (it lacks the state); ms_optim creates it
    opt.step(_arrays(3))
    st = opt.state[opt.parameters[0]]
    assert st["step"] == 4
    np.testing.assert_array_equal(st["max_exp_avg_sq"], st["exp_avg_sq"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_gradient_that_becomes_none_or_comes_back_replans(backend):
    pair = Pair("AdamW", backend, lr=0.01)
    pair.step()
    pair.step()
    pair.step(none={1})
    pair.step(none={1})
    pair.step()
    assert pair.opt.state[pair.params[1]]["step"] == 3
    assert pair.planned == 2  # steps 2 and 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_edited_and_loaded_state_replans(backend):
    pair = Pair("Adam", backend, lr=0.01)
    for _ in range(3):
        pair.step()
    new = pair.opt.state[pair.params[0]]["exp_avg"] * 2 + 1
    pair.opt.state[pair.params[0]]["exp_avg"] = new
    tstate = pair.topt.state[pair.tparams[0]]
    tstate["exp_avg"] = torch.tensor(new.copy())
    pair.step()
    assert pair.opt.state[pair.params[0]]["exp_avg"] is new, "the new array is the one updated"
    saved = pair.opt.state_dict()
    snapshot = pickle.loads(pickle.dumps(saved))
    pair.step()
    pair.opt.load_state_dict(snapshot)
    pair.topt.load_state_dict(pair.topt.state_dict())  # torch stepped too: rewind it the same way
    for p, t in zip(pair.params, pair.tparams):
        t.data = torch.tensor(p)  # parameters are not in a state dict: keep both at the same point
    pair.topt = torch.optim.Adam(pair.tparams, lr=0.01)
    pair.topt.load_state_dict({"state": {i: {k: torch.tensor(v) if isinstance(v, np.ndarray) else v
                                             for k, v in st.items()} for i, st in snapshot["state"].items()},
                               "param_groups": [{**g} for g in snapshot["param_groups"]]})
    for _ in range(2):
        pair.step()
    assert pair.opt.state[pair.params[0]]["step"] == snapshot["state"][0]["step"] + 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_new_param_group_and_a_changed_param_list_replan(backend):
    pair = Pair("SGD", backend, groups=[{"params": slice(0, 3)}], lr=0.1, momentum=0.9)
    extra = pair.params[3]
    pair.step(_arrays(1)[:3])
    pair.step(_arrays(2)[:3])
    pair.opt.add_param_group({"params": [extra], "lr": 0.05})
    pair.topt.add_param_group({"params": [pair.tparams[3]], "lr": 0.05})
    pair.step(_arrays(3))
    pair.step(_arrays(4))
    assert pair.planned == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_cast_strided_and_fresh_gradients(backend):
    pair = Pair("AdamW", backend, lr=0.01)
    pair.step()
    pair.step()
    pair.step([g.astype(np.float32) for g in _arrays(7)])  # a cast: the full path
    wide = [np.repeat(g[..., None], 2, axis=-1) for g in _arrays(8)]
    pair.step([w[..., 0] for w in wide])  # strided views
    same = _arrays(9)
    pair.step(same)
    for g in same:  # the same arrays with new values: the kept addresses, new contents
        g *= -0.5
    pair.step(same)
    assert pair.planned >= 3


def test_radam_crossing_to_its_rectified_update_replans():
    pair = Pair("RAdam", "eager", lr=0.01)
    for _ in range(9):  # rho_t > 5 from step 6 on: another static configuration
        pair.step()
    assert 5 <= pair.planned <= 7


@pytest.mark.parametrize("backend", BACKENDS)
def test_refusals_still_happen_on_the_planned_path(backend):
    opt = ms_optim.AdamW(_arrays(0), lr=0.01, backend=backend)
    opt.step(_arrays(1))
    opt.step(_arrays(2))
    before = [p.copy() for p in opt.parameters], {k: v for k, v in opt.state[opt.parameters[0]].items()}
    bad = _arrays(3)
    bad[1] = np.ones((6,))
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \(6,\), its parameter \(5,\)"):
        opt.step(bad)
    with pytest.raises(ValueError, match="grads has 3 entries"):
        opt.step(_arrays(3)[:3])
    opt.parameters[2].flags.writeable = False
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[2\] is read-only"):
        opt.step(_arrays(3))
    opt.parameters[2].flags.writeable = True
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.step(_arrays(3))
    for p, q in zip(opt.parameters, before[0]):
        np.testing.assert_array_equal(p, q)
    assert opt.state[opt.parameters[0]]["step"] == 2


def test_param_state_counts_changes_and_copies_an_assigned_dict():
    opt = ms_optim.Adam(_arrays(0), lr=0.01, backend="eager")
    opt.step(_arrays(1))
    state = opt.state
    before = state.changes
    opt.step(_arrays(2))
    opt.step(_arrays(3))
    assert state.changes == before, "the optimizer's own step writes are not changes"
    st = state[opt.parameters[0]]
    st["exp_avg"] = st["exp_avg"].copy()
    assert state.changes == before + 1
    mine = dict(st)
    state[opt.parameters[0]] = mine
    assert state[opt.parameters[0]] is not mine and state[opt.parameters[0]] == mine
    assert type(pickle.loads(pickle.dumps(st))) is dict


# ------------------------------------------------------- flat buffers, alignment


def test_aligned_empty_is_aligned_for_every_shape_and_dtype():
    for dtype in (np.float16, np.float32, np.float64):
        for shape in [(), (1,), (3, 5), (1000,)]:
            a = aligned_empty(shape, dtype)
            assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
            assert a.ctypes.data % ALIGNMENT == 0


def test_numpy_state_arrays_are_aligned():
    opt = ms_optim.Adam([p.astype(np.float32) for p in _arrays(0)], lr=0.01, backend="eager")
    opt.step([g.astype(np.float32) for g in _arrays(1)])
    for p in opt.parameters:
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt.state[p][key].ctypes.data % ALIGNMENT == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_buffers_make_one_row_and_match_separate_arrays(backend):
    flat = FlatBuffer.from_arrays(_arrays(0))
    grads = flat.zeros_like()
    opt = ms_optim.AdamW(flat.views, lr=0.01, backend=backend)
    separate = ms_optim.AdamW(_arrays(0), lr=0.01, backend="eager")
    for k in range(5):
        for view, g in zip(grads.views, _arrays(10 + k)):
            view[...] = g
        opt.step(grads.views)
        separate.step(_arrays(10 + k))
        for p, q in zip(opt.parameters, separate.parameters):
            np.testing.assert_array_equal(p, q)
    exp_avg = [opt.state[p]["exp_avg"] for p in opt.parameters]
    base = exp_avg[0].base
    assert all(a.base is base for a in exp_avg), "state arrays are views of one buffer, laid out like the params"
    if backend == "cpu":
        (program,) = opt._step_plan.buckets[0].program.values()
        table, _ = program._launch_for[1]
        assert len(table) == 1 and table[0, 0] == flat.size, "one row over the whole flat buffer"


def test_flat_buffer_refuses_bad_shapes():
    with pytest.raises(ValueError, match=r"shapes\[1\] must hold non-negative ints"):
        FlatBuffer([(2,), (-1,)])
    with pytest.raises(TypeError, match="shapes must be a list of shapes"):
        FlatBuffer("abc")
    with pytest.raises(ValueError, match="shapes is empty"):
        FlatBuffer([])
