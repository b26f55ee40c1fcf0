"""The cpu backend (numba) against the eager reference, for every row of the optimizer table.

Both backends run the same rule; this file checks that the compiled loop
computes what eager computes: through ``Optimizer.step`` for every
(algorithm, configuration) of tests/optim_table.py in float64, float32 and
float16 storage, on buckets of mixed shapes (0-d and zero-size included), on
strided views, on NaN/inf values, on both parallel paths; and that the
emitted code keeps float32 math in float32. Without numba the kernel tests
skip; the fallback tests (auto -> eager, backend='cpu' -> ImportError) run
everywhere.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.optim_table import CASE_IDS, CASES

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="the cpu backend needs numba: pip install 'ms-optim[cpu]'")

#: group 0: mixed shapes, a 0-d and a zero-size one; group 1 (the table's group overrides): two more
SHAPES = [(5, 7), (), (0, 3), (33,), (2, 3, 4), (4, 1)]
GROUP0 = 4
#: the same roles for an optimizer of matrices only: a wide, an empty, a tall and a square one
MATRIX_SHAPES = [(5, 7), (1, 1), (0, 3), (33, 2), (3, 4), (4, 1)]
STEPS = 4
#: float16 is computed in float32 by both backends and rounded once: allow one half ulp
ULPS = {"float64": 0, "float32": 0, "float16": 1}


def _cpu():
    from ms_optim.engine import backend_for

    return backend_for(np, "cpu")


def _host_keys(opt) -> set:
    return {"step", *getattr(opt, "host_state_keys", ())}


def _arrays(rng, shapes, dtype, *, special=False):
    out = []
    for s in shapes:
        a = np.asarray(rng.standard_normal(s), dtype=np.float64)
        if special and a.size:
            flat = a.reshape(-1)
            edge = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e-30, 3e-8]
            flat[: min(len(edge), flat.size)] = edge[: flat.size]
        out.append(np.asarray(a, dtype=dtype))
    return out


def run(info, config, dtype, backend, *, special=False, layout=None, steps=STEPS):
    """Params and optimizer after ``steps`` steps on seeded data (None grads included)."""
    rng = np.random.default_rng(7)
    shapes = MATRIX_SHAPES if info.shapes else SHAPES  # Muon takes matrices only
    params = _arrays(rng, shapes, dtype)
    bases = None
    if layout is not None:
        params, bases = layout(params)
    groups = [{"params": params[:GROUP0]}, {"params": params[GROUP0:], **info.group_overrides}]
    opt = info.cls(groups, backend=backend, **config)
    for k in range(steps):
        grads = _arrays(rng, shapes, dtype, special=special and k == 1)
        if k == 0:
            grads[3] = None  # param 3 starts a step late: buckets with different scalars
        if layout is not None:
            grads = [None if g is None else layout([g])[0][0] for g in grads]
        with np.errstate(all="ignore"):
            opt.step(grads)
    return params, opt, bases


def assert_close(got, want, dtype_name, what, ulps=None):
    assert got.dtype == want.dtype, what
    assert got.shape == want.shape, what
    ulps = ULPS[dtype_name] if ulps is None else ulps
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    same = (g == w) | (np.isnan(g) & np.isnan(w))
    if ulps:
        with np.errstate(invalid="ignore"):  # inf - inf and spacing(inf): NaN, never "close"
            spacing = np.spacing(np.maximum(np.abs(got), np.abs(want))).astype(np.float64)
            same |= np.abs(g - w) <= ulps * spacing
    assert same.all(), f"{what}: {np.count_nonzero(~same)} elements differ, e.g. {g[~same][:3]} vs {w[~same][:3]}"


def assert_same_trajectory(info, config, dtype_name, **kw):
    dtype = getattr(np, dtype_name)
    cpu = _cpu()
    before = dict(cpu.stats)
    got_params, got_opt, got_bases = run(info, config, dtype, "cpu", **kw)
    want_params, want_opt, want_bases = run(info, config, dtype, "eager", **kw)
    assert cpu.stats["compiled_tensors"] > before["compiled_tensors"], "the kernel never ran"
    assert cpu.stats["eager_tensors"] == before["eager_tensors"], "some tensors fell back to eager"
    for i, (g, w) in enumerate(zip(got_params, want_params)):
        assert_close(g, w, dtype_name, f"param {i}")
    for i, (pg, pw) in enumerate(zip(got_params, want_params)):
        sg, sw = got_opt.state[pg], want_opt.state[pw]
        assert set(sg) == set(sw)
        for key in set(sg) - _host_keys(got_opt):
            assert_close(sg[key], sw[key], dtype_name, f"state {i} {key}")
        for key in set(sg) & _host_keys(got_opt):
            assert sg[key] == sw[key]
    if got_bases is not None:
        for i, (g, w) in enumerate(zip(got_bases, want_bases)):
            assert_close(g, w, dtype_name, f"base array {i} (outside the view too)")


# --------------------------------------------------------------- every table row


@needs_numba
@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16"])
@pytest.mark.parametrize("info,config", CASES, ids=CASE_IDS)
def test_cpu_matches_eager_through_step(info, config, dtype_name):
    assert_same_trajectory(info, config, dtype_name)


@needs_numba
@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
@pytest.mark.parametrize("info,config", CASES, ids=CASE_IDS)
def test_cpu_matches_eager_on_nan_and_inf(info, config, dtype_name):
    assert_same_trajectory(info, config, dtype_name, special=True)


def _strided(arrays):
    """Each array as a strided view (every other column) into a larger base array."""
    views, bases = [], []
    for a in arrays:
        base = np.zeros(a.shape + (2,), dtype=a.dtype) + np.asarray(-3.0, dtype=a.dtype)
        view = base[..., 0]
        view[...] = a
        views.append(view)
        bases.append(base)
    return views, bases


def _fortran(arrays):
    return [np.asfortranarray(a) for a in arrays], None


FIRST_CONFIGS = [(info, cfg) for k, (info, cfg) in enumerate(CASES) if k == 0 or CASES[k - 1][0] is not info]
FIRST_IDS = [CASE_IDS[CASES.index(c)] for c in FIRST_CONFIGS]


@needs_numba
@pytest.mark.parametrize("layout", [_strided, _fortran], ids=["strided", "fortran"])
@pytest.mark.parametrize("info,config", FIRST_CONFIGS, ids=FIRST_IDS)
def test_non_contiguous_params(info, config, layout):
    assert_same_trajectory(info, config, "float32", layout=layout)


# ------------------------------------------------------------ parallel paths


def _amsgrad_case():
    for info, cfg in CASES:
        if cfg.get("amsgrad"):
            return info, cfg
    pytest.skip("no AMSGrad configuration in the table")


@needs_numba
@pytest.mark.parametrize("mode", ["threads", "prange"])
def test_parallel_paths_match_serial(mode, monkeypatch):

    cpu = _cpu()
    monkeypatch.setattr(cpu, "chunk", 5)  # cut every tensor into many rows
    monkeypatch.setattr(cpu, "parallel_min_elements", 1)
    monkeypatch.setattr(cpu, "num_threads", 3)
    monkeypatch.setattr(cpu, "parallel", mode)
    info, config = _amsgrad_case()
    assert_same_trajectory(info, config, "float32", special=True)
    monkeypatch.setattr(cpu, "chunk", 1 << 16)  # tensors of one row each: one part only
    assert_same_trajectory(info, config, "float64")


@needs_numba
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_thread_pool_is_rebuilt_in_a_forked_child():
    out = _python(
        """
        import os, numpy as np, ms_optim
        from ms_optim.engine import backend_for
        cpu = backend_for(np, "cpu")
        cpu.num_threads, cpu.parallel_min_elements = 2, 1
        p = np.ones(200000, np.float32)
        opt = ms_optim.SGD([p], lr=0.5, backend="cpu")
        opt.step([np.ones_like(p)])  # the parent's pool exists now
        pid = os.fork()
        if pid == 0:
            opt.step([np.ones_like(p)])
            os._exit(0 if (p == 0).all() else 1)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), p[0])
        """,
        timeout=120,  # a child waiting on the parent's dead pool threads would hang
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "0.5"]


def test_chunked_rows_cover_every_element_once():
    from ms_optim.engine.cpu import _chunked

    table = np.array([[12, 1000, 2000], [3, 5000, 6000], [0, 7, 7], [5, 9000, 9100]], dtype=np.int64)
    rows = _chunked(table, 5, 4)
    assert rows[:, 0].tolist() == [5, 5, 2, 3, 5]
    assert rows[:3, 1].tolist() == [1000, 1020, 1040] and rows[:3, 2].tolist() == [2000, 2020, 2040]
    assert rows[:, 0].sum() == table[:, 0].sum()


# --------------------------------------------------------------- the numerics


@needs_numba
def test_amsgrad_propagates_nan_through_maximum():
    import ms_optim

    for backend in ("cpu", "eager"):
        p = np.ones(3, dtype=np.float32)
        opt = ms_optim.Adam([p], lr=0.1, amsgrad=True, backend=backend)
        opt.step([np.ones(3, dtype=np.float32)])
        with np.errstate(all="ignore"):
            opt.step([np.array([np.nan, 1.0, 2.0], dtype=np.float32)])
        m = opt.state[p]["max_exp_avg_sq"]
        assert np.isnan(m[0]) and np.isnan(p[0]) and np.isfinite(m[1:]).all(), backend


def every_op_rule(p, g, s, *, a, b, bool_math, xp):
    """Every exactly rounded function and operator a rule may use, on values that reach their edges.

    ``bool_math``: arithmetic on a comparison and ``where`` between two Python
    numbers. Eager NumPy computes those in float64 (a bool array times a Python
    float is float64), the compiled loop in the compute dtype, so they agree
    only for float64 storage. (No table rule does either.)
    """
    c = xp.where(g > 0, g * a, -g) + xp.sign(g) + xp.abs(s) ** 2 + (s - b) ** -1.0
    c = c + xp.maximum(g, s) - xp.minimum(g, 1.5) + xp.sqrt(xp.abs(g)) + g ** 0.5 + g ** 1.0
    c = c + xp.where(xp.logical_and(g >= 0, xp.logical_not(s < 0)), g, 0.0)
    c = c + xp.where(xp.logical_or(g == 0, s != g), a * s, b) + xp.square(g - 1.0)
    if bool_math:
        c = c + (g <= s) * 2.0 + xp.where(s > 1, a, b)
    return p - a * c, -s / a


def libm_rule(p, g, s, u, *, b, xp):
    """exp, log and a general power: libm's in numba, NumPy's own (SIMD) ones in eager."""
    return xp.exp(xp.minimum(g, 3.0)), xp.log(xp.abs(s) + 1.0), xp.abs(g) ** b


def _edge_values(dtype, n=3):
    rng = np.random.default_rng(3)
    edge = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 1e-30, -1e30])
    values = np.concatenate([edge, rng.standard_normal(200) * 3])
    with np.errstate(over="ignore"):
        return [rng.permutation(values).astype(dtype) for _ in range(n)]


@needs_numba
@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16"])
def test_every_op_matches_eager(dtype_name):
    from ms_optim.engine.eager import EagerBackend

    dtype = getattr(np, dtype_name)
    arrays = _edge_values(dtype)
    got = [a.copy() for a in arrays]
    want = [a.copy() for a in arrays]
    scalars = {"a": 0.3, "b": 1.7}
    with np.errstate(all="ignore"):
        static = {"bool_math": dtype_name == "float64"}
        _cpu().run(every_op_rule, static, scalars, [got[0]], [got[1]], [[got[2]]], np)
        EagerBackend().run(every_op_rule, static, scalars, [want[0]], [want[1]], [[want[2]]], np)
    assert_close(got[0], want[0], dtype_name, "p")
    assert_close(got[2], want[2], dtype_name, "s")
    np.testing.assert_array_equal(got[1], arrays[1])  # the gradient is never written


@needs_numba
@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16"])
def test_exp_log_pow_agree_to_a_few_ulps(dtype_name):
    from ms_optim.engine.eager import EagerBackend

    dtype = getattr(np, dtype_name)
    arrays = _edge_values(dtype, 4)
    got = [a.copy() for a in arrays]
    want = [a.copy() for a in arrays]
    with np.errstate(all="ignore"):
        _cpu().run(libm_rule, {}, {"b": 1.7}, [got[0]], [got[1]], [got[2:]], np)
        EagerBackend().run(libm_rule, {}, {"b": 1.7}, [want[0]], [want[1]], [want[2:]], np)
    ulps = 1 if dtype_name == "float16" else 4
    for k in (0, 2, 3):
        assert_close(got[k], want[k], dtype_name, f"output {k}", ulps)


@needs_numba
def test_sign_and_maximum_follow_numpy_exactly():
    from ms_optim.engine.eager import EagerBackend

    def rule(p, g, *, xp):
        return xp.sign(p) + xp.maximum(p, g) * 4.0 + xp.minimum(g, p) * 16.0

    x = np.array([np.nan, -0.0, 0.0, 1.0, -2.0, np.inf, 3.0, np.nan], dtype=np.float64)
    y = np.array([1.0, 0.0, -0.0, np.nan, -np.inf, 2.0, 3.0, np.nan], dtype=np.float64)
    got, want = x.copy(), x.copy()
    _cpu().run(rule, {}, {}, [got], [y.copy()], [[]], np)
    EagerBackend().run(rule, {}, {}, [want], [y.copy()], [[]], np)
    np.testing.assert_array_equal(got, want)


@needs_numba
def test_float32_kernels_do_no_float64_math(monkeypatch):
    """A Python float in numba is a float64: every literal and scalar must be cast."""
    monkeypatch.setenv("MS_OPTIM_CPU_DISK_CACHE", "0")  # compiled here, so its LLVM IR is at hand
    from ms_optim.engine.cpu import CpuBackend

    import ms_optim

    backend = CpuBackend()
    for cls, kw in [(ms_optim.Adam, dict(amsgrad=True, weight_decay=0.1)), (ms_optim.SGD, dict(momentum=0.9, nesterov=True))]:
        opt = cls([np.zeros(3, np.float32)], lr=0.1, **kw)
        group = opt.param_groups[0]
        scalars = opt._host_scalars(group, {"step": 2})
        kernel = backend.kernel(opt.rule, opt._static(group), scalars.keys(), len(opt._state_keys(group)), "float32")
        assert "_T = np.float32" in kernel.source
        table = np.zeros((0, kernel.n_inputs + 1), dtype=np.int64)
        kernel.module.serial(table, np.zeros(len(kernel.graph.hoisted), np.float32))
        ir = next(iter(kernel.module.serial.inspect_llvm().values()))
        for pattern in ("fpext float", "fadd double", "fmul double", "fdiv double", "fsub double", "@llvm.sqrt.f64"):
            assert pattern not in ir, pattern


def test_emitted_source_casts_every_literal():
    """Without numba too: every literal of the body is wrapped in the compute dtype."""
    import re

    from ms_optim.engine.cpu import emit_source
    from ms_optim.engine.tracer import trace

    def rule(p, g, m, *, lr, xp):
        m = 0.9 * m + 0.1 * g
        return p - lr * xp.maximum(m, 0.5) / 3.0, m

    graph = trace(rule, ("p", "g", "m"), ("lr",))
    for storage in ("float16", "float32", "float64"):
        src = emit_source(graph, storage)
        body = src.split("def serial", 1)[1].split("\n@njit", 1)[0]
        assert "_T(0.9)" in body and "_T(0.5)" in body and "_T(3.0)" in body
        bare = re.findall(r"(?<!_T\()(?<![\w.])\d+\.\d+", body)
        assert not bare, (storage, bare)
        assert f"_T = np.{'float64' if storage == 'float64' else 'float32'}" in src
        assert ("_ptr = _s.ptr_uint16" in src) == (storage == "float16")


@needs_numba
def test_half_conversions_are_numpys():
    import numba

    from ms_optim.engine.cpu import numba_support

    half_to_float = numba_support().half_to_float
    float_to_half = numba_support().float_to_half

    @numba.njit
    def to_float(bits, out):
        for i in range(bits.size):
            out[i] = half_to_float(bits[i])

    @numba.njit
    def to_half(x, out):
        for i in range(x.size):
            out[i] = float_to_half(x[i])

    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(halves.size, np.float32)
    to_float(halves, out)
    want = halves.view(np.float16).astype(np.float32)
    assert np.array_equal(out, want, equal_nan=True)
    assert np.array_equal(out.view(np.uint32)[~np.isnan(want)], want.view(np.uint32)[~np.isnan(want)])

    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    near = want[np.isfinite(want)].view(np.uint32).astype(np.int64)
    ties = np.concatenate([near + d for d in (-1, 0, 1, 0x1000, 0xFFF, 0x1001, 0x2000)])
    bits = np.concatenate([bits, (ties & 0xFFFFFFFF).astype(np.uint32), np.uint32([0x7F800001, 0xFF800001, 0x7FC00000])])
    floats = bits.view(np.float32)
    got = np.empty(floats.size, np.uint16)
    to_half(floats, got)
    with np.errstate(all="ignore"):
        expect = floats.astype(np.float16)
    nan = np.isnan(expect)
    assert np.array_equal(got[~nan], expect.view(np.uint16)[~nan])
    assert np.isnan(got[nan].view(np.float16)).all()


# -------------------------------------------------- the backend at the edges


@needs_numba
def test_read_only_target_is_refused_as_eager_refuses_it():
    from ms_optim.algorithms.sgd import sgd_rule

    p = np.ones(4, dtype=np.float32)
    p.setflags(write=False)
    static = dict(maximize=False, has_weight_decay=False, has_momentum=False, nesterov=False)
    scalars = dict(lr=0.1, weight_decay=0.0, momentum=0.0, keep=0.0, blend=1.0)
    with pytest.raises(ValueError, match="read-only"):
        _cpu().run(sgd_rule, static, scalars, [p], [np.ones(4, np.float32)], [[]], np)


@needs_numba
def test_read_only_and_broadcast_gradients_are_read():
    import ms_optim

    result = {}
    for backend in ("cpu", "eager"):
        p = np.arange(6, dtype=np.float32).reshape(2, 3)
        opt = ms_optim.SGD([p], lr=0.5, momentum=0.5, backend=backend)
        g = np.broadcast_to(np.float32([1.0, 2.0, 3.0]), (2, 3))  # read-only, stride 0
        opt.step([g])
        opt.step([g])
        result[backend] = p
    np.testing.assert_array_equal(result["cpu"], result["eager"])


def _auto_only_rule(p, g, *, lr, xp):
    return (p - lr * g,)


@needs_numba
def test_auto_compiles_only_large_buckets():
    from ms_optim.engine import backend_for
    from ms_optim.engine.cpu import AutoCpuBackend

    auto = backend_for(np)
    assert isinstance(auto, AutoCpuBackend)
    cpu = auto.cpu
    before = dict(cpu.stats)

    def step(n):
        p = np.ones(n, np.float32)
        auto.run(_auto_only_rule, {}, {"lr": 0.5}, [p], [np.ones(n, np.float32)], [[]], np)
        assert (p == 0.5).all()

    step(10)  # small: eager, no compile
    assert cpu.stats["eager_tensors"] == before["eager_tensors"] + 1
    assert cpu.stats["kernels"] == before["kernels"]
    step(auto.min_elements)  # large: compiled
    assert cpu.stats["kernels"] == before["kernels"] + 1
    assert cpu.stats["compiled_tensors"] == before["compiled_tensors"] + 1
    step(3)  # the kernel exists now: small buckets of that rule run compiled too
    assert cpu.stats["compiled_tensors"] == before["compiled_tensors"] + 2


def _python(code: str, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full_env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, cwd=root, timeout=timeout)


def test_without_numba_auto_is_eager_and_explicit_cpu_explains():
    out = _python(
        """
        import sys, warnings
        sys.modules["numba"] = None  # as if numba were not installed
        warnings.simplefilter("error")
        import numpy as np, ms_optim
        from ms_optim.engine import backend_for
        assert backend_for(np).name == "eager", backend_for(np)
        w = np.ones(300000, np.float32)
        ms_optim.AdamW([w], lr=0.1).step([np.ones_like(w)])  # auto: silently eager
        assert w[0] < 1
        v = np.ones(3, np.float32)
        try:  # named explicitly, a missing backend is reported when the optimizer is built
            ms_optim.AdamW([v], lr=0.1, backend="cpu")
        except ImportError as exc:
            print(type(exc).__name__, "|", exc)
        assert (v == 1).all()
        """
    )
    assert out.returncode == 0, out.stderr
    name, message = out.stdout.strip().split(" | ")
    assert name == "CpuBackendUnavailable"
    assert "numba" in message and "pip install" in message and "backend='eager'" in message


@needs_numba
def test_small_models_under_auto_never_import_numba():
    out = _python(
        """
        import sys, numpy as np, ms_optim
        w = [np.ones((64, 128), np.float32), np.ones(128, np.float32)]
        opt = ms_optim.AdamW(w, lr=0.1)
        for _ in range(3):
            opt.step([np.ones_like(a) for a in w])
        print("numba" in sys.modules)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@needs_numba
def test_kernels_are_cached_on_disk_across_processes(tmp_path):
    code = """
        import numpy as np, ms_optim
        from ms_optim.engine import backend_for
        p = np.ones(5, np.float32)
        ms_optim.SGD([p], lr=0.5, momentum=0.5, backend="cpu").step([np.ones(5, np.float32)])
        kernel = next(iter(backend_for(np, "cpu")._kernels.values()))
        stats = kernel.module.serial.stats
        print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()), p[0])
        """
    first = _python(code, MS_OPTIM_CACHE_DIR=str(tmp_path))
    second = _python(code, MS_OPTIM_CACHE_DIR=str(tmp_path))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.split() == ["0", "1", "0.5"]
    assert second.stdout.split() == ["1", "0", "0.5"]
    assert list(tmp_path.glob("cpu-kernels/*/ms_optim_cpu_*.py"))


@needs_numba
def test_unwritable_cache_dir_compiles_in_memory(tmp_path):
    target = tmp_path / "file-not-dir"
    target.write_text("")
    out = _python(
        """
        import numpy as np, ms_optim
        p = np.ones(5)
        ms_optim.SGD([p], lr=0.5, backend="cpu").step([np.ones(5)])
        print(p[0])
        """,
        MS_OPTIM_CACHE_DIR=str(target),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.5"
