"""The rule engine: tracer graphs agree with direct calls; the tracer's guard rails."""

from __future__ import annotations

import numpy as np
import pytest

from ms_optim.engine import backend_for
from ms_optim.engine.eager import RuleNamespace, run_eager
from ms_optim.engine.tracer import TraceError, trace
from tests.conftest import to_numpy, to_xp
from tests.optim_table import CASE_IDS, CASES


def state_after(info, config, xp, dtype, updates, seed=3):
    """A parameter and its real state after ``updates`` eager steps of a table case.

    Real states keep the rule in its domain (a centered RMSprop's square_avg
    exceeds grad_avg**2, second moments are positive), so the comparison below
    checks numbers, not NaN against NaN.
    """
    rng = np.random.default_rng(seed)
    p = to_xp(xp, rng.standard_normal(7), dtype)
    opt = info.cls([p], **config, backend="eager")
    for _ in range(updates):
        opt([to_xp(xp, rng.standard_normal(7), dtype)])
    return opt, p, to_xp(xp, rng.standard_normal(7), dtype)


#: trace at a parameter's 3rd and 10th update: RAdam's rule is specialised differently
#: for each, and the 10th passes the table's small ASGD t0s, so averaging traces too
@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
@pytest.mark.parametrize("info,config", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("updates", [2, 9], ids=lambda n: f"update{n + 1}")
def test_graph_evaluates_to_the_direct_call(info, config, xp, dtype_name, updates):
    if info.cls.rule is None:
        pytest.skip(f"{info.name} runs stages; tests/test_stage_kernels.py traces its element-wise rules")
    dtype = getattr(xp, dtype_name)
    opt, p, g = state_after(info, config, xp, dtype, updates)
    group, state = opt.param_groups[0], opt.state[p]
    keys = opt._state_keys(group)
    static = {**opt._static(group), **opt._step_static(group, state)}
    scalars = {k: float(v) for k, v in opt._host_scalars(group, state).items()}
    graph = trace(opt.rule, ("p", "g", *keys), scalars, static)
    arrays = [p, g, *(state[k] for k in keys)]
    direct = [xp.asarray(a, copy=True) for a in arrays]
    run_eager(opt.rule, direct, len(graph.outputs), scalars, static, xp)
    traced = graph.evaluate(arrays, scalars, RuleNamespace(xp))
    targets = [direct[0], *direct[2:]]
    assert len(traced) == len(targets)
    for got, want in zip(traced, targets):
        assert got.dtype == want.dtype
        assert not np.isnan(to_numpy(want)).any()
        np.testing.assert_array_equal(to_numpy(got), to_numpy(want))


def test_uniform_subexpressions_are_hoisted_in_double_precision():
    def rule(p, g, *, beta, xp):
        return p * beta + (1 - beta) * g

    graph = trace(rule, ("p", "g"), ("beta",))
    # 1 - beta is computed once on the host, in float64: 1 - 0.999 != float32(1) - float32(0.999)
    values = graph.host_values({"beta": 0.999})
    assert 1 - 0.999 in values
    assert float(np.float32(1) - np.float32(0.999)) not in values


def test_shared_subexpressions_become_one_node():
    def rule(p, g, *, xp):
        return p - (g * g) / (1 + g * g)

    graph = trace(rule, ("p", "g"), ())
    assert sum(node.op == "mul" for node in graph.nodes) == 1


def test_outputs_may_overwrite_inputs_read_later():
    # m is both an output and read by p's update: SSA reads the *new* m where the
    # rule does and never an already-written buffer.
    def rule(p, g, m, *, xp):
        m = m * 0.5 + g
        return p - m, m

    graph = trace(rule, ("p", "g", "m"), ())
    p, g, m = np.array([1.0]), np.array([2.0]), np.array([4.0])
    new_p, new_m = graph.evaluate([p, g, m], {}, RuleNamespace(np))
    assert new_m[0] == 4.0 and new_p[0] == -3.0


def test_branching_on_data_is_refused():
    def rule(p, g, *, xp):
        if g > 0:
            return p - g
        return p

    with pytest.raises(TraceError, match="static configuration"):
        trace(rule, ("p", "g"), ())


def test_unknown_xp_function_is_refused_on_both_paths():
    def rule(p, g, *, xp):
        return p - xp.tanh(g)

    with pytest.raises(TraceError, match=r"xp\.tanh is not available"):
        trace(rule, ("p", "g"), ())
    with pytest.raises(AttributeError, match=r"xp\.tanh is not available"):
        run_eager(rule, [np.ones(2), np.ones(2)], 1, {}, {}, np)


def test_scalar_math_in_a_rule_stays_in_python_floats():
    """xp.sqrt of a host scalar must not become a float64 NumPy scalar and promote float32 math."""

    def rule(p, g, *, bc, xp):
        return p - g / xp.sqrt(bc)

    p = np.ones(3, dtype=np.float32)
    run_eager(rule, [p, np.ones(3, dtype=np.float32)], 1, {"bc": 2.0}, {}, np)
    assert p.dtype == np.float32
    np.testing.assert_array_equal(p, np.float32(1) - np.float32(1 / 2.0**0.5))


def test_maximum_propagates_nan_like_numpy():
    def rule(p, g, *, xp):
        return xp.maximum(p, g)

    graph = trace(rule, ("p", "g"), ())
    out = graph.evaluate([np.array([np.nan, 1.0]), np.array([0.0, np.nan])], {}, RuleNamespace(np))[0]
    assert np.isnan(out).all()


def test_backend_for_rejects_unknown_names():
    with pytest.raises(ValueError, match="Invalid backend: 'nope'"):
        backend_for(np, "nope")
    assert backend_for(np, "eager").name == "eager"


def test_import_does_not_pull_gpu_or_jit_modules():
    import subprocess
    import sys

    code = "import sys, ms_optim; print(sorted(m for m in ('cupy', 'numba') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_rules_run_on_numpy_0d_float64_params():
    """NumPy 0-d arithmetic returns np.float64 (a float subclass); xp.sign must still take it."""

    def rule(p, g, *, xp):
        return p - 0.5 * xp.sign(p - g)

    p = np.array(1.0)
    run_eager(rule, [p, np.array(3.0)], 1, {}, {}, np)
    assert p.shape == () and float(p) == 1.5


def test_address_cache_follows_the_array_and_forgets_it_when_it_dies():
    import gc

    from ms_optim.engine.addresses import AddressCache

    cache = AddressCache()
    a = np.zeros(1000, np.float32)
    assert cache(a) == a.ctypes.data and cache(a) == a.ctypes.data and len(cache) == 1
    with pytest.raises(ValueError):  # NumPy will not move the buffer of an array that has a weakref
        a.resize(10, refcheck=False)
    b = a[10:]
    assert cache(b) == b.ctypes.data == a.ctypes.data + 40 and len(cache) == 2
    del a, b
    gc.collect()
    assert len(cache) == 0  # dropped before its id can be reused
