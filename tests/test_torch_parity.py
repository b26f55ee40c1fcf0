"""The optimizer table against torch.optim, where torch is importable.

Same initial values, same gradients (None included: torch skips a param whose
``.grad`` is None), two param groups; float64 must agree to 1e-9 relative
over 12 steps, float32 to a few ulps per step.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from tests.conftest import to_numpy, to_xp
from tests.optim_table import CASE_IDS, CASES, TABLE
from tests.test_optimizers import STEPS, build, grad_plan, initial_params, shapes_of

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def muon_newton_schulz_in_float64(monkeypatch):
    """torch runs Muon's Newton-Schulz in bfloat16, ms_optim in the parameter's dtype (see Muon's warning)."""
    import torch.optim._muon as torch_muon

    from tests.test_torch_table import _ns_in_input_dtype

    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", _ns_in_input_dtype)

TORCH_CASES = [(i, c) for i, c in CASES if i.torch_name]
TORCH_IDS = [n for (i, c), n in zip(CASES, CASE_IDS) if i.torch_name]


def run_torch(info, config, dtype, steps=STEPS):
    # torch keeps per-parameter host numbers (NAdam's mu_product) as tensors of its
    # default dtype; a float64 run makes that float64 too, as ours are Python floats.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        params = [torch.tensor(p, dtype=dtype) for p in initial_params(shapes=shapes_of(info))]
        cls = getattr(torch.optim, info.torch_name)
        groups = [{"params": params[:3]}, {"params": params[3:], **info.group_overrides}]
        # the single-tensor path, where torch has others (Muon has no foreach argument)
        flags = {"foreach": False} if "foreach" in inspect.signature(cls).parameters else {}
        opt = cls(groups, **config, **flags)
        for grads in grad_plan(steps=steps, shapes=shapes_of(info)):
            for p, g in zip(params, grads):
                p.grad = None if g is None else torch.tensor(g, dtype=dtype)
            opt.step()
    finally:
        torch.set_default_dtype(previous)
    return opt, params


@pytest.mark.parametrize("info,config", TORCH_CASES, ids=TORCH_IDS)
def test_float64_matches_torch(info, config, xp):
    topt, tparams = run_torch(info, config, torch.float64)
    params = [to_xp(xp, p) for p in initial_params(shapes=shapes_of(info))]
    opt = build(info, config, params)
    for grads in grad_plan(shapes=shapes_of(info)):
        opt([None if g is None else to_xp(xp, g) for g in grads])
    for i, (p, tp) in enumerate(zip(params, tparams)):
        np.testing.assert_allclose(to_numpy(p), tp.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=f"param {i}")
        tstate = topt.state[tp]
        assert set(opt.state[p]) == set(tstate), "state keys differ from torch's"
        for key, tv in tstate.items():
            if key == "step":
                assert opt.state[p]["step"] == int(tv.item())
            else:
                np.testing.assert_allclose(to_numpy(opt.state[p][key]), tv.numpy(), rtol=1e-9, atol=1e-12,
                                           err_msg=f"param {i} state {key}")


@pytest.mark.parametrize("info,config", TORCH_CASES, ids=TORCH_IDS)
def test_float32_matches_torch_to_a_few_ulps(info, config, xp):
    _, tparams = run_torch(info, config, torch.float32)
    params = [to_xp(xp, p, xp.float32) for p in initial_params(shapes=shapes_of(info))]
    opt = build(info, config, params)
    for grads in grad_plan(shapes=shapes_of(info)):
        opt([None if g is None else to_xp(xp, g, xp.float32) for g in grads])
    eps32 = float(np.finfo(np.float32).eps)
    for p, tp in zip(params, tparams):
        ours, theirs = to_numpy(p), tp.detach().numpy().astype(np.float64)
        # a few ulps of the parameter's magnitude per step, over STEPS steps
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=4 * STEPS * eps32 * max(1.0, np.abs(theirs).max()))


@pytest.mark.parametrize("info", [i for i in TABLE if i.torch_name], ids=lambda i: i.name)
def test_defaults_match_torch(info):
    """Same defaults, and every positional call torch accepts binds the same way here.

    Our positional arguments are exactly torch's, in torch's order, up to the
    first one we lack (``foreach``, ``capturable``); the rest are
    keyword-only. torch's RMSprop and ASGD take ``maximize`` by position
    *after* ``foreach``/``capturable``: no positional call can reach it
    through arguments we lack, and taking it at an earlier position would
    bind a torch user's ``capturable=True`` to ``maximize``.
    """
    ours = inspect.signature(info.cls).parameters
    theirs = inspect.signature(getattr(torch.optim, info.torch_name)).parameters
    shared = [n for n in ours if n in theirs and n != "params"]
    assert len(shared) >= 3
    for name in shared:
        assert ours[name].default == theirs[name].default, name

    def positional(params):
        return [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]

    prefix = []
    for name in positional(theirs):
        if name not in ours:
            break
        prefix.append(name)
    assert positional(ours) == prefix
    for name in shared:
        if name not in prefix:
            assert ours[name].kind is ours[name].KEYWORD_ONLY, name


@pytest.mark.parametrize("info", [i for i in TABLE if i.torch_name], ids=lambda i: i.name)
def test_value_errors_match_torch(info):
    """Where torch rejects a value with ValueError, we reject it with torch's words."""
    for kwargs, exc, match in info.errors:
        if exc is not ValueError or "backend" in kwargs:
            continue
        args = {"lr": 0.01, **kwargs}
        shape = shapes_of(info)[0]
        try:
            getattr(torch.optim, info.torch_name)([torch.zeros(shape)], **args)
        except ValueError as err:
            with pytest.raises(ValueError) as ours:
                info.cls([np.zeros(shape)], **args)
            assert str(ours.value) == str(err)


@pytest.mark.parametrize("info,config", TORCH_CASES, ids=TORCH_IDS)
def test_a_torch_checkpoint_resumes_here_as_in_torch(info, config):
    """torch's state_dict loads as it is (tensors, its extra group keys) and training goes on alike."""
    plan = grad_plan(shapes=shapes_of(info))
    topt, tparams = run_torch(info, config, torch.float64, steps=5)
    params = [p.detach().numpy().copy() for p in tparams]
    opt = build(info, config, params)
    opt.load_state_dict(topt.state_dict())
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for grads in plan[5:]:
            for p, g in zip(tparams, grads):
                p.grad = None if g is None else torch.tensor(g)
            topt.step()
            opt([None if g is None else g.copy() for g in grads])
    finally:
        torch.set_default_dtype(previous)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-9, atol=1e-12)
