"""The multi-tensor reduction passes (ms_optim/engine/reductions*.py), on machines without a GPU.

1. The numba pass (the NumPy path of clip_grad_norm_, get_total_norm and the
   GradScaler unscale, forced on small arrays here) against torch 2.13 and
   against exact float64 references (math.fsum):
   * each per-tensor norm within 1 ulp of the exactly rounded one, so against
     torch (which accumulates float32 in float32) within torch's own rounding:
     float64 1e-12 relative, float32 1e-5, float16 2 half ulps;
   * the unscale and the clip multiply bit for bit torch's; found_inf too;
   * NaN/inf gradients, overflow past float32, empty lists, zero-size and
     chunk-crossing tensors, float16, strided inputs (the NumPy fallback),
     bad input raising before anything changes, thread-count independence.
2. The CUDA sources: every kernel compiled with NVRTC for sm_90 as CuPy
   compiles a RawKernel (no errors, no warnings, no spills), and the same
   sources run on the host with g++, each CUDA thread a real thread (the tree
   reduction's ``__syncthreads`` is a barrier), on NumPy data, against the
   numba pass and the float64 references.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import ms_optim
from ms_optim import amp, clipping
from ms_optim.engine import reductions, reductions_cuda
from ms_optim.engine.cuda_codegen import NVRTC_OPTIONS, block_map, host_prelude, pointer_table

torch = pytest.importorskip("torch")

NORM_TYPES = [2.0, 1.0, math.inf, -math.inf, 0.0, 3.0, 0.5, -1.5]
DTYPES = ["float16", "float32", "float64"]
#: relative tolerance against torch's norm (torch's own float32 accumulation, see reductions.py)
RTOL = {"float16": 2 * 2.0**-10, "float32": 1e-5, "float64": 1e-12}


@pytest.fixture
def compiled(monkeypatch):
    """Every bucket takes the compiled pass, however small."""
    if reductions._numba_kernels() is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(reductions, "MIN_ELEMENTS", 0)
    return reductions


def _grads(dtype, rng, shapes=((3,), (0,), (70_001,), (17, 5), (1,), (2, 0, 3), (40_000,)), scale=1.0):
    out = []
    for s in shapes:
        a = rng.standard_normal(s) * scale
        a[rng.random(s) < 0.05] = 0.0  # zeros for the 0-norm and the -inf norm
        out.append(a.astype(dtype))
    return out


def _exact_norm(a: np.ndarray, p: float) -> float:
    a = np.abs(a.astype(np.float64).reshape(-1))
    if p == math.inf:
        return float(a.max())
    if p == -math.inf:
        return float(a.min())
    if p == 0:
        return float(np.count_nonzero(a))
    with np.errstate(divide="ignore"):  # 0 ** -1.5 is inf, as the norm takes it
        return math.fsum(a**p) ** (1.0 / p)


def _close_to_exact(value, exact: float, dtype) -> bool:
    """float16/float32: within 1 ulp of the exactly rounded norm; float64: 1e-12 relative."""
    if dtype == np.float64:
        return math.isclose(float(value), exact, rel_tol=1e-12)
    with np.errstate(over="ignore"):
        rounded = np.asarray(exact, np.float64).astype(dtype)  # inf where the norm overflows the dtype
    if value == rounded:
        return True
    return bool(abs(float(value) - float(rounded)) <= float(np.spacing(abs(rounded))))


def _torch_norm(grads, p):
    return torch.nn.utils.get_total_norm([torch.from_numpy(g.copy()) for g in grads], p)


# ---------------------------------------------------------------------------
# 1. the numba pass


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", NORM_TYPES)
def test_per_tensor_norms_are_within_an_ulp_of_exact(compiled, dtype, p):
    rng = np.random.default_rng(1)
    grads = [g for g in _grads(dtype, rng) if g.size or 0 <= p < math.inf]
    partials = reductions.norm_partials(grads, p)
    norms = reductions.finish_norms(partials, p, np.dtype(dtype))
    assert norms.dtype == np.dtype(dtype) and norms.shape == (len(grads),)
    for g, n in zip(grads, norms):
        if g.size == 0:
            assert n == 0
            continue
        exact = _exact_norm(g, p)
        assert _close_to_exact(n, exact, np.dtype(dtype)), (g.shape, float(n), exact)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", NORM_TYPES)
def test_a_multiplier_gives_the_partials_of_the_products(compiled, dtype, p):
    """norm_partials(g, p, c) == norm_partials(g * c, p) bit for bit, c an unscale's float32 inverse scale."""
    rng = np.random.default_rng(4)
    grads = [g for g in _grads(dtype, rng) if g.size or 0 <= p < math.inf]
    for c in (2.0**-16, float(np.float32(1 / 3.0)), 1e30):
        compute = np.float32 if dtype == "float16" else np.dtype(dtype).type
        with np.errstate(over="ignore"):
            products = [(g.astype(compute) * compute(c)) for g in grads]
        if dtype == "float16":  # the products in float32, as the kernel computes them
            expected = reductions.norm_partials(products, p)
        else:
            expected = reductions.norm_partials([np.ascontiguousarray(x, dtype=dtype) for x in products], p)
        got = reductions.norm_partials(grads, p, multiplier=c)
        if dtype == "float16":
            # the same float64 terms, but the float16 and float32 specialisations of a sum
            # vectorise to other widths, so reassociation may order the additions differently
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
        else:
            assert got.tobytes() == expected.tobytes(), (c, got[:3], expected[:3])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", NORM_TYPES)
def test_clip_grad_norm_matches_torch(compiled, dtype, p):
    rng = np.random.default_rng(2)
    grads = [g for g in _grads(dtype, rng) if g.size or 0 <= p < math.inf]
    t_grads = [torch.from_numpy(g.copy()) for g in grads]
    params = [torch.zeros(g.shape, dtype=g.dtype, requires_grad=True) for g in t_grads]
    for q, tg in zip(params, t_grads):
        q.grad = tg
    calls = []
    real = reductions.norm_partials
    with pytest.MonkeyPatch.context() as m:
        m.setattr(reductions, "norm_partials", lambda *a: calls.append(1) or real(*a))
        ours = ms_optim.clip_grad_norm_(grads, 1.0, norm_type=p)
    assert calls == [1], "the bucket did not take the compiled pass"
    theirs = torch.nn.utils.clip_grad_norm_(params, 1.0, norm_type=p)
    assert ours.dtype == np.dtype(dtype) and ours.shape == ()
    np.testing.assert_allclose(float(ours), float(theirs), rtol=RTOL[dtype], atol=0)
    for g, tg in zip(grads, t_grads):
        np.testing.assert_allclose(g.astype(np.float64), tg.numpy().astype(np.float64),
                                   rtol=2 * RTOL[dtype], atol=float(np.finfo(dtype).tiny))


def test_the_clip_multiply_is_torchs_bit_for_bit(compiled):
    """With the same total norm, the compiled multiply writes exactly torch's products (float16 included)."""
    rng = np.random.default_rng(3)
    for dtype in DTYPES:
        grads = _grads(dtype, rng)
        t_grads = [torch.from_numpy(g.copy()) for g in grads]
        total = np.asarray(7.25, dtype=dtype)
        clipping.clip_grads_with_norm_(grads, 1.0, total)
        torch.nn.utils.clip_grads_with_norm_(_with_grads(t_grads), 1.0, torch.tensor(7.25, dtype=t_grads[0].dtype))
        for g, tg in zip(grads, t_grads):
            assert g.tobytes() == tg.numpy().tobytes(), dtype


def _with_grads(t_grads):
    params = [torch.zeros(g.shape, dtype=g.dtype, requires_grad=True) for g in t_grads]
    for q, g in zip(params, t_grads):
        q.grad = g  # the same storage: torch scales t_grads in place
    return params


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("p", [2.0, 1.0, math.inf, -math.inf, 3.0])
def test_nonfinite_gradients_give_torchs_norm(compiled, dtype, bad, p):
    rng = np.random.default_rng(4)
    grads = [g for g in _grads(dtype, rng) if g.size]
    max(grads, key=lambda g: g.size).reshape(-1)[68_000] = bad  # in the second chunk
    theirs = float(_torch_norm(grads, p))
    ours = float(clipping.get_total_norm(grads, p))
    assert (math.isnan(ours) and math.isnan(theirs)) or ours == theirs or \
        math.isclose(ours, theirs, rel_tol=RTOL[dtype]), (ours, theirs)


def test_a_float32_sum_past_float32s_range_is_inf_as_in_torch(compiled):
    grads = [np.full(300, 3e18, np.float32), np.ones(5, np.float32)]
    theirs = float(_torch_norm(grads, 2.0))
    assert theirs == math.inf  # torch's float32 accumulator overflows
    assert float(clipping.get_total_norm(grads, 2.0)) == math.inf
    small = [np.full(300, 1e18, np.float32)]  # 3e38: still finite in float32
    np.testing.assert_allclose(float(clipping.get_total_norm(small, 2.0)), float(_torch_norm(small, 2.0)), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unscale_is_torchs_bit_for_bit_and_reads_nonfinite_before_the_multiply(compiled, dtype):
    rng = np.random.default_rng(5)
    for inject in (None, math.nan, math.inf, -math.inf):
        grads = _grads(dtype, rng, scale=1000.0)
        if inject is not None:
            grads[2][70_000] = inject  # in the second chunk of a chunk-crossing tensor
        t_grads = [torch.from_numpy(g.copy()) for g in grads]
        found = np.zeros((), np.float32)
        inv = np.asarray(1.0 / 1024.0 / 3.0, np.float32)
        calls = []
        real = reductions.non_finite_check_and_unscale_
        with pytest.MonkeyPatch.context() as m:
            m.setattr(reductions, "non_finite_check_and_unscale_", lambda *a: calls.append(1) or real(*a))
            amp.non_finite_check_and_unscale_(grads, found, inv)
        assert calls == [1]
        t_found = torch.zeros(())
        torch._amp_foreach_non_finite_check_and_unscale_(t_grads, t_found, torch.from_numpy(inv.copy()))
        assert float(found) == float(t_found) == (0.0 if inject is None else 1.0)
        for g, tg in zip(grads, t_grads):
            assert g.tobytes() == tg.numpy().tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_check_only_writes_nothing(compiled, dtype):
    """inv_scale 1 (the fused-optimizer path): the check alone, every byte left as it was."""
    rng = np.random.default_rng(6)
    grads = _grads(dtype, rng)
    grads[0][1] = -0.0
    grads[6][7] = np.finfo(dtype).smallest_subnormal
    before = [g.tobytes() for g in grads]
    found = np.zeros((), np.float32)
    amp.non_finite_check_and_unscale_(grads, found, np.ones((), np.float32))
    assert float(found) == 0.0 and [g.tobytes() for g in grads] == before
    grads[6][-1] = np.inf
    reductions.non_finite_check_(grads, found)
    assert float(found) == 1.0
    found[...] = 0.0
    grads[6][-1] = 0.0
    grads[2][-1] = np.nan  # the last element of a tensor's last chunk
    reductions.non_finite_check_(grads, found)
    assert float(found) == 1.0


def test_found_inf_is_not_cleared(compiled):
    found = np.ones((), np.float32)
    reductions.non_finite_check_and_unscale_([np.ones(10, np.float32)], found, np.asarray(0.5, np.float32))
    assert float(found) == 1.0


def test_gradscaler_step_over_compiled_buckets_matches_torch(compiled):
    rng = np.random.default_rng(7)
    shapes = [(50,), (0,), (70_001,), (3, 4)]
    w = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    tw = [torch.tensor(a, requires_grad=True) for a in w]
    opt, topt = ms_optim.SGD(w, lr=0.1), torch.optim.SGD(tw, lr=0.1)
    scaler, tscaler = ms_optim.GradScaler(init_scale=256.0, growth_interval=2), \
        torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=2)
    for step in range(6):
        grads = [(rng.standard_normal(s) * 256).astype(np.float32) for s in shapes]
        if step in (2, 4):
            grads[2][step] = np.inf
        for q, g in zip(tw, grads):
            q.grad = torch.from_numpy(g.copy())
        scaler.scale(np.ones((), np.float32))
        tscaler.scale(torch.ones(()))
        scaler.unscale_(opt, grads)
        tscaler.unscale_(topt)
        ms_optim.clip_grad_norm_(grads, 5.0)
        torch.nn.utils.clip_grad_norm_(tw, 5.0)
        scaler.step(opt, grads)
        tscaler.step(topt)
        scaler.update()
        tscaler.update()
        assert scaler.get_scale() == tscaler.get_scale()
        for a, t in zip(w, tw):
            np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_results_do_not_depend_on_the_thread_count(compiled, monkeypatch):
    rng = np.random.default_rng(8)
    grads = [rng.standard_normal(n).astype(np.float32) for n in (300_000, 5, 200_000, 70_000)]
    monkeypatch.setattr(reductions, "PARALLEL_MIN_ELEMENTS", 0)
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(reductions, "num_threads", threads)
        results.append([reductions.norm_partials(grads, p).tobytes() for p in (2.0, 1.0, math.inf, 3.0)])
    assert results[0] == results[1] == results[2]


def test_an_empty_list_and_all_zero_size_tensors(compiled):
    assert float(clipping.clip_grad_norm_([], 1.0)) == 0.0
    zs = [np.zeros((0,), np.float32), np.zeros((2, 0), np.float32)]
    assert float(clipping.clip_grad_norm_(zs, 1.0)) == float(_torch_norm(zs, 2.0)) == 0.0
    found = np.zeros((), np.float32)
    amp.non_finite_check_and_unscale_(zs, found, np.asarray(0.5, np.float32))
    assert float(found) == 0.0
    with pytest.raises(ValueError, match="empty"):
        clipping.clip_grad_norm_(zs, 1.0, norm_type=math.inf)


def test_strided_gradients_take_the_numpy_path_and_still_match_torch(compiled, monkeypatch):
    rng = np.random.default_rng(9)
    base = rng.standard_normal((400, 300)).astype(np.float32)
    grads = [base[:, ::2], rng.standard_normal(1000).astype(np.float32)]
    assert not reductions.supports(grads)
    monkeypatch.setattr(reductions, "norm_partials", _forbidden)
    monkeypatch.setattr(reductions, "scale_", _forbidden)
    t_grads = [torch.from_numpy(g.copy()) for g in grads]
    ours = clipping.clip_grad_norm_(grads, 1.0)
    theirs = torch.nn.utils.clip_grad_norm_(_with_grads(t_grads), 1.0)
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-6)
    for g, tg in zip(grads, t_grads):
        np.testing.assert_allclose(g, tg.numpy(), rtol=1e-6)


def _forbidden(*args, **kwargs):
    raise AssertionError("the compiled pass was taken")


def test_small_buckets_and_missing_numba_take_the_numpy_path(monkeypatch):
    grads = [np.ones(1000, np.float32)]
    assert not reductions.supports(grads)  # below MIN_ELEMENTS
    monkeypatch.setattr(reductions, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(reductions, "_kernels", None)
    monkeypatch.setattr(reductions, "_kernels_error", ImportError("no numba here"))
    assert not reductions.supports(grads)
    monkeypatch.setattr(reductions, "norm_partials", _forbidden)
    assert float(clipping.clip_grad_norm_(grads, 1.0)) == pytest.approx(math.sqrt(1000))
    with pytest.raises(TypeError, match="numba"):
        reductions.scale_(grads, 1.0)


def test_mixed_dtypes_and_buckets(compiled):
    rng = np.random.default_rng(10)
    grads = [rng.standard_normal(70_000).astype(np.float32), rng.standard_normal(5).astype(np.float64),
             rng.standard_normal(7).astype(np.float16), rng.standard_normal((3, 3))[:, ::2]]
    ours = clipping.get_total_norm(grads, 2.0)
    theirs = _torch_norm(grads, 2.0)
    assert str(ours.dtype) == str(theirs.dtype).removeprefix("torch.")
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-6)


@pytest.mark.parametrize("call", ["clip", "unscale"])
def test_bad_input_raises_before_anything_changes(compiled, call):
    rng = np.random.default_rng(11)
    grads = [rng.standard_normal(70_001).astype(np.float32) for _ in range(3)]
    ro = rng.standard_normal(10).astype(np.float32)
    ro.flags.writeable = False
    before = [g.copy() for g in grads]
    if call == "clip":
        with pytest.raises(ValueError, match=r"grads\[3\] is read-only"):
            clipping.clip_grad_norm_([*grads, ro], 1.0)
        with pytest.raises(ValueError, match="max_norm"):
            clipping.clip_grad_norm_(grads, -1.0)
        with pytest.raises(TypeError, match=r"grads\[1\]"):
            clipping.clip_grad_norm_([grads[0], "x"], 1.0)
    else:
        opt = ms_optim.SGD([np.zeros_like(g) for g in grads], lr=0.1)
        scaler = ms_optim.GradScaler()
        scaler.scale(np.ones((), np.float32))
        with pytest.raises(ValueError, match="FP16"):
            scaler.unscale_(opt, [*grads[:2], grads[2].astype(np.float16)])
        with pytest.raises((TypeError, ValueError)):
            scaler.unscale_(opt, grads[:2])  # one gradient short
    for g, b in zip(grads, before):
        assert g.tobytes() == b.tobytes()


def test_the_reduction_entry_points_refuse_what_they_cannot_take(compiled):
    with pytest.raises(TypeError, match="non-empty list"):
        reductions.norm_partials([], 2.0)
    with pytest.raises(TypeError, match="C-contiguous"):
        reductions.norm_partials([np.ones((4, 4), np.float32)[:, ::2]], 2.0)
    with pytest.raises(TypeError, match="C-contiguous"):
        reductions.scale_([np.ones(3, np.float32), np.ones(3, np.float64)], 2.0)
    with pytest.raises(ValueError, match="NaN"):
        reductions.norm_partials([np.ones(3, np.float32)], math.nan)


def test_importing_ms_optim_imports_no_numba_nor_cupy():
    code = ("import sys, numpy as np, ms_optim; ms_optim.clip_grad_norm_([np.ones(10)], 1.0); "
            "print('numba' in sys.modules, 'cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------
# 2. the CUDA sources: NVRTC for sm_90, and the same source on the host


def test_every_cuda_kernel_compiles_for_sm90_without_warnings_or_spills():
    from tests.test_cuda_kernels import ARCH, _compile_as_cupy_for, _cupy_compile, _cupy_compiler, _ptxas_report

    cupy, reason = _cupy_compiler()
    if cupy is None:
        pytest.skip(reason)
    sources = reductions_cuda.all_sources()
    with _compile_as_cupy_for(ARCH):
        done = _cupy_compile("\n".join(src for _, src in sources), NVRTC_OPTIONS, prepend_cupy_headers=False)
    assert done.ok, done.log[-6000:]
    assert "warning" not in done.log.lower(), done.log[-6000:]
    report = _ptxas_report(done.log)
    for name, _ in sources:
        assert name in report, f"ptxas reported nothing for {name}"
        info = report[name]
        assert info["stores"] == 0 and info["loads"] == 0 and info["stack"] == 0, (name, info)


#: just enough CUDA for the sources to run as C++: a launch runs its blocks one after another,
#: each block's threads as real threads, ``__syncthreads`` a barrier, ``__shared__`` a static
_CUDA_ON_HOST = r"""
#include <barrier>
#include <thread>
#include <vector>
#include <functional>
struct mso_dim3 { unsigned int x, y, z; };
static mso_dim3 blockIdx, blockDim;
static thread_local mso_dim3 threadIdx;
static std::barrier<>* mso_barrier;
#define __global__
#define __shared__ static
#define __launch_bounds__(...)
static inline void __syncthreads() { mso_barrier->arrive_and_wait(); }
typedef _Float16 __half;
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static void mso_launch(int grid, int block, const std::function<void()>& body) {
  blockDim.x = block;
  for (int b = 0; b < grid; ++b) {
    blockIdx.x = b;
    std::barrier<> bar(block);
    mso_barrier = &bar;
    std::vector<std::thread> threads;
    for (int t = 0; t < block; ++t) threads.emplace_back([&body, t] { threadIdx.x = t; body(); });
    for (auto& th : threads) th.join();
  }
}
"""

HOST_THREADS = 64  # a power of two, as the tree reduction needs
HOST_CHUNK = 1000  # small chunks: many blocks per tensor, tails shorter than a block


def _driver(name: str, params: list[str]) -> str:
    args = ", ".join(p.rsplit(" ", 1)[1] for p in params)
    return (f'extern "C" void run_{name}(int grid, int block, {", ".join(params)}) {{\n'
            f"  mso_launch(grid, block, [&] {{ {name}({args}); }});\n}}\n")


_TABLES = ["const long long* ptrs", "const long long* blocks", "const long long* sizes"]


def _driver_params(name: str) -> list[str]:
    if name.startswith("ms_optim_norm_segment"):
        return ["const double* partials", "const long long* first", "double* out"]
    if name.startswith("ms_optim_norm_"):
        return [*_TABLES, "double* partials", "int chunk", *(["double p"] if "sumpow" in name else [])]
    if name.startswith("ms_optim_unscale"):
        return [*_TABLES, "float* found_inf", "const float* inv_scale", "int chunk"]
    if name.startswith("ms_optim_check"):
        return [*_TABLES, "float* found_inf", "int chunk"]
    compute = "double" if name.endswith("f64") else "float"
    return [*_TABLES, f"const {compute}* coef", "int chunk"]


@functools.lru_cache(maxsize=None)
def _host_library():
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return None, "no C++ compiler (g++) on PATH"
    parts = [host_prelude(), _CUDA_ON_HOST]
    for name, src in reductions_cuda.all_sources():
        parts += [src, _driver(name, _driver_params(name))]
    workdir = tempfile.mkdtemp(prefix="ms_optim_reduce_")
    src, lib = os.path.join(workdir, "reduce.cpp"), os.path.join(workdir, "reduce.so")
    with open(src, "w") as f:
        f.write("\n".join(parts))
    with open(os.path.join(workdir, "cuda_fp16.h"), "w") as f:
        f.write("// __half is _Float16 on the host\n")
    cmd = [cxx, "-std=c++20", "-O1", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC", "-pthread",
           "-Wall", "-Werror", "-I", workdir, "-o", lib, src]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return None, f"FAIL: g++ rejected the reduction kernels:\n{done.stderr[-4000:]}"
    return ctypes.CDLL(lib), None


def _lib():
    lib, reason = _host_library()
    if lib is None:
        if reason.startswith("FAIL: "):
            pytest.fail(reason[6:])
        pytest.skip(reason)
    return lib


def _call(name: str, grid: int, *args) -> None:
    fn = getattr(_lib(), f"run_{name}")
    fn.restype = None
    conv = [ctypes.c_int, ctypes.c_int]
    for a in args:
        conv.append(ctypes.c_void_p if isinstance(a, np.ndarray) else
                    ctypes.c_double if isinstance(a, float) else ctypes.c_int)
    fn.argtypes = conv
    fn(grid, HOST_THREADS, *(a.ctypes.data if isinstance(a, np.ndarray) else a for a in args))


def _host_tables(grads):
    sizes = [g.size for g in grads]
    ptrs = pointer_table([(g.ctypes.data,) for g in grads])
    blocks = block_map(sizes, HOST_CHUNK)
    return ptrs, blocks, np.asarray(sizes, np.int64), blocks.size // 2


def host_norm_partials(grads, p):
    """reductions_cuda.norm_partials's two launches, run on the host."""
    storage = str(grads[0].dtype)
    op = reductions_cuda.norm_op(p)
    name, _ = reductions_cuda.norm_source(op, storage)
    ptrs, blocks, sizes, n_blocks = _host_tables(grads)
    partials = np.full(max(n_blocks, 1), np.nan)
    extra = (float(p),) if op == "sumpow" else ()
    if n_blocks:
        _call(name, n_blocks, ptrs, blocks, sizes, partials, HOST_CHUNK, *extra)
    counts = [-(-n // HOST_CHUNK) for n in sizes]
    first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    out = np.full(len(grads), np.nan)
    seg, _ = reductions_cuda.segment_source(reductions_cuda._NORM_OPS[op][2])
    _call(seg, len(grads), partials, first, out)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", NORM_TYPES)
def test_cuda_norm_kernels_on_the_host_match_exact_and_the_numba_pass(dtype, p):
    rng = np.random.default_rng(12)
    shapes = ((3,), (0,), (2_500,), (64,), (1,), (999,), (1000,), (1001,))
    grads = [g for g in _grads(dtype, rng, shapes) if g.size or 0 <= p < math.inf]
    grads[2][::7] = 0.0
    parts = host_norm_partials(grads, p)
    norms = reductions.finish_norms(parts, p, np.dtype(dtype))
    for g, n in zip(grads, norms):
        if g.size:
            assert _close_to_exact(n, _exact_norm(g, p), np.dtype(dtype)), (g.shape, float(n))
        else:
            assert n == 0
    if reductions._numba_kernels() is not None:
        np.testing.assert_allclose(parts, reductions.norm_partials(grads, p), rtol=1e-13, atol=0)


@pytest.mark.parametrize("p", [2.0, 1.0, math.inf, -math.inf, 3.0])
def test_cuda_norm_kernels_on_the_host_propagate_nan(p):
    grads = [np.ones(2500, np.float32), np.ones(10, np.float32)]
    grads[0][1700] = np.nan
    parts = host_norm_partials(grads, p)
    assert math.isnan(parts[0]) and not math.isnan(parts[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_unscale_and_check_on_the_host_are_torchs(dtype):
    rng = np.random.default_rng(13)
    shapes = ((3,), (0,), (2_500,), (1001,))
    for inject in (None, math.nan, -math.inf):
        grads = _grads(dtype, rng, shapes, scale=100.0)
        if inject is not None:
            grads[2][2499] = inject
        t_grads = [torch.from_numpy(g.copy()) for g in grads]
        ptrs, blocks, sizes, n_blocks = _host_tables(grads)
        found = np.zeros(1, np.float32)
        inv = np.asarray([1 / 96.0], np.float32)
        _call(reductions_cuda.check_source(dtype, True)[0], n_blocks, ptrs, blocks, sizes, found, inv, HOST_CHUNK)
        t_found = torch.zeros(())
        torch._amp_foreach_non_finite_check_and_unscale_(t_grads, t_found, torch.from_numpy(inv[0:1].copy())[0])
        assert found[0] == float(t_found) == (0.0 if inject is None else 1.0)
        for g, tg in zip(grads, t_grads):
            assert g.tobytes() == tg.numpy().tobytes()
        # inv_scale 1 writes nothing; the check-only kernel neither
        before = [g.tobytes() for g in grads]
        found[0] = 0.0
        _call(reductions_cuda.check_source(dtype, True)[0], n_blocks, ptrs, blocks, sizes, found,
              np.ones(1, np.float32), HOST_CHUNK)
        found2 = np.zeros(1, np.float32)
        _call(reductions_cuda.check_source(dtype, False)[0], n_blocks, ptrs, blocks, sizes, found2, HOST_CHUNK)
        assert [g.tobytes() for g in grads] == before
        assert found[0] == found2[0] == (0.0 if inject is None else 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_scale_on_the_host_is_torchs_multiply(dtype):
    rng = np.random.default_rng(14)
    grads = _grads(dtype, rng, ((3,), (0,), (2_500,)))
    t_grads = [torch.from_numpy(g.copy()) for g in grads]
    ptrs, blocks, sizes, n_blocks = _host_tables(grads)
    compute = np.float64 if dtype == "float64" else np.float32
    coef = np.asarray([0.3141], compute)
    _call(reductions_cuda.scale_source(dtype)[0], n_blocks, ptrs, blocks, sizes, coef, HOST_CHUNK)
    torch._foreach_mul_(t_grads, torch.tensor(coef[0]))
    for g, tg in zip(grads, t_grads):
        assert g.tobytes() == tg.numpy().tobytes()
