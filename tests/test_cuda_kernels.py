"""The CUDA kernels, checked on every CI run, on machines without a GPU.

"Every kernel" is every (rule, static configuration) that the optimizer table
(tests/optim_table.py) reaches, found by running each table configuration,
with its second param group's overrides, for 12 steps through a recording
backend: a new algorithm or configuration in the table is covered without a
line here. For each of them, in float16, float32 and float64:

1. **NVRTC** compiles the ElementwiseKernel exactly as CuPy would build it
   (CuPy's own code template, headers and options, ``-ftz=true`` included,
   for sm_90) and the multi-tensor RawKernel likewise; any compile error or
   warning fails, and so does a register spill reported by ptxas
   (``-Xptxas -v`` through NVRTC: no GPU needed). The PTX shows no fused
   multiply-add (``--fmad=false``). Needs CuPy and NVRTC from PyPI (the
   ``test`` extra); skips with a reason without them.
2. **g++** compiles the same emitted body inside a plain C++ loop; run on
   NumPy data through ctypes, it must match the eager backend: float64 to
   1 ulp, float32 to 2 ulps, float16 to 1 ulp, NaN/inf/0 inputs included.
   The multi-tensor kernel's own source runs on the host too (a launch as
   loops over blocks and threads), fed the tables the backend builds, and
   must equal the plain loop bit for bit.
3. Pure-Python checks of the generated text: literals in the compute dtype,
   one SSA temporary per node, outputs written last, NaN-propagating max/min.

Kernels are compiled in one NVRTC program per (dtype, kernel kind) and one
g++ shared library per session: each test then reads its kernel's entry.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from unittest import mock

import numpy as np
import pytest

from ms_optim.algorithms.schedule_free_adamw import schedule_free_adamw_rule
from ms_optim.algorithms.sparse_adam import sparse_adam_rule
from ms_optim.averaging import lerp_rule, swa_rule
from ms_optim.engine import BACKENDS, register_backend
from ms_optim.engine.cuda_codegen import (
    COMPUTE_TYPES,
    MULTI_TENSOR_THREADS,
    NVRTC_OPTIONS,
    KernelSource,
    block_map,
    cache_key,
    generate,
    host_prelude,
    host_source,
    kernel_source,
    pointer_table,
)
from ms_optim.engine.eager import EagerBackend, run_eager
from ms_optim.engine.layout import Layout, broadcast_run
from ms_optim.engine.tracer import trace
from tests.optim_table import CASES

DTYPES = ("float16", "float32", "float64")
ARCH = "90"
#: steps per table configuration, as the generic tests take: some static choices
#: depend on the step (RAdam rectifies from about step 6 with beta2 = 0.999)
STEPS = 12


# ---------------------------------------------------------------------------
# The kernels the table reaches


@dataclass(frozen=True)
class KernelCase:
    """One kernel the optimizers ask for: what a backend's ``run`` receives."""

    id: str
    rule: object
    static: tuple
    scalars: tuple  # ((name, value), ...) from a real step: realistic host values
    n_states: int
    #: a stage's layout (None: the classic rule(p, g, *state) -> (p, *state))
    layout: Layout | None = None
    #: per operand, (its shape, its parameter's shape) as a real step passed them
    operand_shapes: tuple = ()

    def source(self, storage: str) -> KernelSource:
        return kernel_source(self.rule, dict(self.static), [k for k, _ in self.scalars], self.kernel_layout, storage)

    @property
    def kernel_layout(self) -> Layout:
        return self.layout or Layout.of_state(self.n_states)

    @property
    def scalar_values(self) -> dict:
        return dict(self.scalars)


class _Recorder:
    """A backend that records each (rule, static, scalars, state count) and runs eagerly."""

    name = "record-kernels"

    def __init__(self):
        self.calls: dict[tuple, KernelCase] = {}
        self._eager = EagerBackend()

    def run(self, rule, static, scalars, params, grads, states, xp):
        n_states = len(states[0]) if states else 0
        key = cache_key(rule, static, scalars, n_states, "any")[:4]
        if key not in self.calls:
            flags = "-".join(k for k, v in sorted(static.items()) if v is True) or "plain"
            case_id = f"{getattr(rule, '__name__', 'rule')}-{flags}-{n_states}st"
            self.calls[key] = KernelCase(case_id, rule, tuple(sorted(static.items())),
                                         tuple(sorted(scalars.items())), n_states)
        self._eager.run(rule, static, scalars, params, grads, states, xp)

    def run_stage(self, rule, static, scalars, layout, tensors, xp):
        key = cache_key(rule, static, scalars, layout, "any")[:4]
        if key not in self.calls:
            flags = "-".join(k for k, v in sorted(static.items()) if v is True) or "plain"
            kinds = "".join(k[0] for k in layout.operands)  # s(calar) / b(cast) operands
            case_id = f"{getattr(rule, '__name__', 'rule')}-{flags}-{layout.n_arrays}a{len(layout.writes)}w{kinds}"
            first = tensors[0]
            shapes = tuple((tuple(o.shape), tuple(first[0].shape)) for o in first[layout.n_arrays:])
            self.calls[key] = KernelCase(case_id, rule, tuple(sorted(static.items())),
                                         tuple(sorted(scalars.items())), layout.n_arrays - 2, layout, shapes)
        self._eager.run_stage(rule, static, scalars, layout, tensors, xp)


def reached_kernels() -> tuple[list[KernelCase], list[str]]:
    """Every distinct kernel the table's configurations reach in :data:`STEPS` steps.

    Returns the kernels and, for a configuration that could not step, why
    (reported by a test rather than breaking this module's collection).
    """
    recorder = _Recorder()
    failures = []
    register_backend(recorder.name, lambda xp: True, lambda: recorder)
    try:
        rng = np.random.default_rng(0)
        for info, config in CASES:
            # a vector and a matrix (Adafactor factors matrices); Muon's own shapes
            params = [rng.standard_normal(s) for s in (info.shapes[:2] if info.shapes else [(3,), (2, 4)])]
            groups = [{"params": params[:1]}, {"params": params[1:], **info.group_overrides}]
            try:
                opt = info.cls(groups, **config, backend=recorder.name)
                for _ in range(STEPS):
                    opt([rng.standard_normal(p.shape) for p in params])
            except Exception as exc:  # noqa: BLE001 - reported by test_the_table_reaches_kernels
                failures.append(f"{info.name}({config}): {type(exc).__name__}: {exc}")
    finally:
        BACKENDS.pop(recorder.name, None)
    cases = list(recorder.calls.values())
    seen: dict[str, int] = {}
    unique = []
    for case in cases:  # ids must be unique for pytest
        n = seen.get(case.id, 0)
        seen[case.id] = n + 1
        unique.append(_renamed(case, f"{case.id}#{n}") if n else case)
    return unique, failures


def _renamed(case: KernelCase, new_id: str) -> KernelCase:
    return KernelCase(new_id, case.rule, case.static, case.scalars, case.n_states, case.layout, case.operand_shapes)


KERNELS, UNREACHED = reached_kernels()
KERNEL_IDS = [k.id for k in KERNELS]


# Rules that reach what the table's rules do not (yet): every op of the tracer's
# vocabulary, NaN handling of maximum/minimum, non-special powers.
def exact_ops_rule(p, g, s, *, a, b, xp):
    """Only operations IEEE rounds exactly (or that are exact): must match eager to the ulp."""
    big = xp.maximum(p, g)
    small = xp.minimum(s, g * a)
    cond = ((g > 0) & ~(p < b)) | (s == 0) | xp.logical_and(g <= -1, p >= 1) | xp.logical_not(g != g)
    pick = xp.where(cond, xp.sign(g) * xp.abs(p), -s)
    powers = xp.sqrt(xp.abs(p)) ** 2 + xp.abs(g) ** 0.5 + (xp.abs(s) + 1) ** -1 + g**1.0
    new_p = p - a * pick + (big - small) / (1 + b) + powers
    return new_p, xp.square(s) * (2 * a) + xp.where(xp.logical_or(p > g, p == g), 1.0, 0.5)


def transcendental_rule(p, g, s, t, *, a, b, xp):
    """exp, log and pow: the host's libm and NumPy's own loops may differ by an ulp or two."""
    return xp.exp(g * a), xp.log(xp.abs(s) + 1.0), xp.abs(p) ** (1 - b) + g**3.0


def max_min_rule(p, g, m, *, xp):
    return xp.maximum(p, g), xp.minimum(m, g)


EXTRA = [
    KernelCase("exact_ops", exact_ops_rule, (), (("a", 0.3), ("b", 0.25)), 1),
    KernelCase("transcendental", transcendental_rule, (), (("a", 0.3), ("b", 0.25)), 2),
    KernelCase("max_min", max_min_rule, (), (), 1),
    # SparseAdam's rule (on the gathered rows; its sparse gradients keep it out of the table)
    *(KernelCase(f"sparse_adam-{'maximize' if maximize else 'plain'}", sparse_adam_rule,
                 (("maximize", maximize),),
                 (("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8), ("step_size", 1e-3 * (1 - 0.999**3) ** 0.5 / (1 - 0.9**3))),
                 2) for maximize in (False, True)),
    # kernels outside an optimizer's step: schedule-free's train/eval swap and
    # AveragedParams' EMA (lerp, both of torch's formulas) and SWA mean
    KernelCase("lerp", lerp_rule, (("lerp_from_end", False),), (("weight", -1 / 9),), 0),
    KernelCase("lerp_from_end", lerp_rule, (("lerp_from_end", True),), (("weight", 0.7),), 0),
    KernelCase("swa_mean", swa_rule, (), (("count", 3.0),), 0),
    # ScheduleFreeAdamW's step, until its row in tests/optim_table.py reaches it (the same
    # kernel twice would be defined twice): the first step (c = 1) and a later one
    *(KernelCase(f"schedule_free_adamw-{'first' if first else 'later'}", schedule_free_adamw_rule,
                 (("has_weight_decay", True), ("lerp_from_end", first)),
                 (("beta2", 0.999), ("bias_correction2", 0.001 if first else 0.004), ("ckp1", 1.0 if first else 0.25),
                  ("eps", 1e-8), ("lr", 0.0025), ("weight_decay", 0.01),
                  ("y_step", -0.0025 if first else 0.0025 * (0.9 * 0.75 - 1))), 2)
      for first in (True, False) if schedule_free_adamw_rule not in {k.rule for k in KERNELS}),
]
ALL = KERNELS + EXTRA
ALL_IDS = [k.id for k in ALL]


def test_the_table_reaches_kernels():
    assert not UNREACHED, "table configurations that could not step:\n" + "\n".join(UNREACHED)
    assert len(KERNELS) >= 3
    names = {getattr(k.rule, "__name__", "") for k in KERNELS}
    assert {"adam_rule", "sgd_rule"} <= names


# ---------------------------------------------------------------------------
# 3. The generated text


def _sources(case):
    return [case.source(dt) for dt in DTYPES]


_BARE_FLOAT = re.compile(r"(?<![\w.])(\d+\.\d*|\.\d+|\d+[eE][-+]?\d+)")


@pytest.mark.parametrize("case", ALL, ids=ALL_IDS)
def test_literals_and_scalars_are_in_the_compute_dtype(case):
    for ks in _sources(case):
        body = ks.body
        stripped = re.sub(r"T\([^()]*\)", "T(lit)", body)  # T(0.5), T(-1e-08), T(MSO_INF)
        assert not _BARE_FLOAT.search(stripped), f"a bare double literal in\n{body}"
        assert f"typedef {ks.compute} T;" in body
        assert ks.compute == ("double" if ks.storage == "float64" else "float")
        for name in ks.scalar_params:
            assert f"{ks.scalar_dtype} {name}" in ks.in_params
            assert f"const {ks.compute} {name}" in ks.multi_tensor_source
        assert "double" not in body.replace("typedef double T;", "") or ks.compute == "double"


@pytest.mark.parametrize("case", ALL, ids=ALL_IDS)
def test_one_temporary_per_node_and_outputs_written_last(case):
    ks = case.source("float32")
    lines = ks.body.splitlines()
    temps = [re.match(r"const (?:T|bool) (t\d+) = ", line) for line in lines[1:]]
    n_temps = sum(m is not None for m in temps)
    names = [m.group(1) for m in temps if m]
    assert len(names) == len(set(names)), "a temporary is assigned twice"
    writes = lines[1 + n_temps:]
    assert all(m is not None for m in temps[:n_temps]), "a write back comes before the last computation"
    assert [w.split(" = ")[0] for w in writes] == list(ks.outputs)
    assert all(re.fullmatch(r"\w+ = \(P\)\w+(\([^;]*\))?;", w) for w in writes), writes
    # every array is read once, into a temporary, before any write
    for a in ks.arrays:
        assert sum(f"(T){a};" in line for line in lines[1:1 + n_temps]) <= 1


def test_maximum_and_minimum_propagate_nan_in_the_emitted_code():
    ks = EXTRA[2].source("float64")
    assert "mso_maximum(" in ks.body and "mso_minimum(" in ks.body
    code = "\n".join(line.split("//")[0] for line in ks.preamble.splitlines())
    assert "fmax" not in code and "fmin" not in code
    assert "a != a ? a" in ks.preamble


def test_float16_is_computed_in_float32_and_stored_as_half():
    ks = KERNELS[0].source("float16")
    assert ks.compute == "float" and ks.scalar_dtype == "float32"
    assert "typedef __half P;" in ks.multi_tensor_source and "#include <cuda_fp16.h>" in ks.multi_tensor_source
    assert ks.in_params.startswith("P g") and all(o.startswith("P ") for o in ks.out_params.split(", "))


def test_kernel_sources_are_cached_per_rule_static_and_dtype():
    case = KERNELS[0]
    assert case.source("float32") is case.source("float32")
    assert case.source("float32").name != case.source("float64").name
    names = {k.source("float32").name for k in KERNELS}
    assert len(names) == len(KERNELS), "two configurations share a kernel name"


def test_importing_the_code_generator_imports_no_cupy():
    code = "import sys, ms_optim.engine.cuda_codegen; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_special_powers_are_exact_operations():
    def rule(p, g, *, xp):
        return p - g**2 - g**0.5 - g**-1 - g**1.0 - g**3.0

    ks = generate(trace(rule, ("p", "g"), ()), "float32", "powers")
    assert ks.body.count("mso_pow(") == 1 and "mso_sqrt(" in ks.body and "T(1.0) / " in ks.body


def test_a_rule_returning_the_wrong_number_of_values_is_refused():
    def rule(p, g, m, *, xp):
        return p - g

    with pytest.raises(ValueError, match="returns 1 values for 2 in-place outputs"):
        generate(trace(rule, ("p", "g", "m"), ()), "float32", "bad")


# ---------------------------------------------------------------------------
# 2. The host check: the same body compiled by g++, compared with eager


_HOST_SUFFIX = {"float16": "f16", "float32": "f32", "float64": "f64"}


@functools.lru_cache(maxsize=None)
def _host_library():
    """One shared library holding every (kernel, dtype) body in a C++ loop."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return None, "no C++ compiler (g++) on PATH"
    parts = [host_prelude(), _CUDA_ON_HOST]
    for i, case in enumerate(ALL):
        for dt in DTYPES:
            ks = case.source(dt)
            parts.append(host_source(ks, f"host_{i}_{_HOST_SUFFIX[dt]}"))
            parts.append(ks.multi_tensor_source)
            parts.append(_emulation_driver(ks, f"emulate_{i}_{_HOST_SUFFIX[dt]}"))
    workdir = tempfile.mkdtemp(prefix="ms_optim_host_")
    src = os.path.join(workdir, "kernels.cpp")
    lib = os.path.join(workdir, "kernels.so")
    with open(src, "w") as f:
        f.write("\n\n".join(parts))
    with open(os.path.join(workdir, "cuda_fp16.h"), "w") as f:
        f.write("// __half is _Float16 on the host (see _CUDA_ON_HOST)\n")
    # -ffp-contract=off: no fused multiply-add, as on the GPU (--fmad=false) and in NumPy
    cmd = [cxx, "-std=c++17", "-O1", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC",
           "-Wall", "-Werror", "-I", workdir, "-o", lib, src]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:  # remembered, so that every test reports it without recompiling
        return None, f"FAIL: g++ rejected the emitted bodies:\n{done.stderr[-4000:]}\nsource: {src}"
    return ctypes.CDLL(lib), None


# Just enough CUDA for the multi-tensor kernel's own source to compile as C++:
# a launch becomes a loop over blocks and threads (each element belongs to one
# thread, so running the threads one after another computes the same thing).
_CUDA_ON_HOST = r"""
#include <string.h>
struct mso_dim3 { unsigned int x, y, z; };
static mso_dim3 blockIdx, threadIdx, blockDim;
#define __global__
#define __launch_bounds__(...)
typedef _Float16 __half;
static inline long long min(long long a, long long b) { return a < b ? a : b; }
"""


def _emulation_driver(ks: KernelSource, name: str) -> str:
    scalars = [f"{ks.compute} {s}" for s in ks.scalar_params]
    bcast = "bcast" in ks.layout.operands  # the kernel then takes the broadcast table too
    args = ["const long long* ptrs", "const long long* blocks", "const long long* sizes",
            *(["const long long* bcast"] if bcast else []), "int n_tensors", "int chunk", *scalars]
    call = ", ".join(["ptrs", "blocks", "sizes", *(["bcast"] if bcast else []), "n_tensors", "chunk",
                      *ks.scalar_params])
    return "\n".join([
        f"extern \"C\" void {name}(int grid, int block, {', '.join(args)}) {{",
        "  blockDim.x = block;",
        "  for (int b = 0; b < grid; ++b) for (int t = 0; t < block; ++t) {",
        f"    blockIdx.x = b; threadIdx.x = t; {ks.multi_tensor_name}({call});",
        "  }",
        "}",
    ])


def _run_host(case_index: int, ks: KernelSource, arrays: list[np.ndarray], hoisted: list) -> None:
    """The host loop over ``arrays`` (full arrays, then operands: their broadcast table is built here)."""
    lib, reason = _host_library()
    if lib is None:
        if reason.startswith("FAIL: "):
            pytest.fail(reason[6:])
        pytest.skip(reason)
    fn = getattr(lib, f"host_{case_index}_{_HOST_SUFFIX[ks.storage]}")
    scalar = ctypes.c_double if ks.compute == "double" else ctypes.c_float
    layout = ks.layout
    extra = []
    if "bcast" in layout.operands:
        extra = [_bcast_table([arrays], layout)]
    fn.restype = None
    fn.argtypes = [ctypes.c_longlong] + [ctypes.c_void_p] * (len(arrays) + len(extra)) + [scalar] * len(hoisted)
    fn(arrays[0].size, *(a.ctypes.data for a in arrays), *(t.ctypes.data for t in extra), *hoisted)


def _bcast_table(tensors, layout: Layout) -> np.ndarray:
    """``(inner, span)`` of each bcast operand (operand-major, then tensor), as cuda.py uploads it."""
    runs = [broadcast_run(arrays[layout.n_arrays + j].shape, arrays[0].shape)
            for j, kind in enumerate(layout.operands) if kind == "bcast" for arrays in tensors]
    return np.asarray(runs, dtype=np.int64).reshape(-1)


#: the shape of a stage case's tensors in the host checks: 96 elements, as _inputs makes them
STAGE_SHAPE = (2, 4, 12)


def _operand_shape(recorded, shape=STAGE_SHAPE) -> tuple:
    """An operand for ``shape`` broadcasting along the axes the recorded one did (aligned right)."""
    op, param = recorded
    if not op:
        return ()
    out = list(shape)
    for k in range(1, len(shape) + 1):
        if k <= len(param) and (k > len(op) or (op[-k] == 1 and param[-k] != 1)):
            out[-k] = 1
    return tuple(out)


def _case_inputs(case: KernelCase, dtype, rng, shape=STAGE_SHAPE) -> list[np.ndarray]:
    """A case's positional arrays: its full arrays (edge values included), then its operands."""
    layout = case.kernel_layout
    n = math.prod(shape)
    full = [a.reshape(shape) for a in _inputs(layout.n_arrays, dtype, rng, n)]
    operands = [np.asarray(np.abs(rng.standard_normal(_operand_shape(rec, shape))) + 0.1, dtype=dtype)
                for rec in case.operand_shapes]
    return full + operands


def _inputs(n_arrays: int, dtype, rng, n: int = 96) -> list[np.ndarray]:
    """Random values, then rows of edge values: NaN, +-inf, +-0 in each role."""
    arrays = [rng.standard_normal(n)] + [rng.standard_normal(n)]
    arrays += [np.abs(rng.standard_normal(n)) + 0.1 for _ in range(n_arrays - 2)]  # second moments are >= 0
    edges = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -3.5, 2.0]
    if n >= 96:  # the edge rows need room; smaller tensors test chunking, not values
        for role, a in enumerate(arrays):
            for k, v in enumerate(edges):
                a[64 + (role * 3 + k) % 32] = v
        arrays[0][60], arrays[1][60] = 0.0, -0.0  # signed-zero tie for maximum/minimum
        arrays[0][61], arrays[1][61] = -0.0, 0.0
    return [a.astype(dtype) for a in arrays]


def _ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units in the last place; NaN==NaN, -0.0==0.0, inf==inf of the same sign."""
    int_type = {2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize]
    def ordered(x):
        i = x.view(int_type).astype(np.int64)
        return np.where(i < 0, np.iinfo(int_type).min - i, i)
    both_nan = np.isnan(a) & np.isnan(b)
    d = np.abs(ordered(a) - ordered(b))
    d = np.where(both_nan, 0, d)
    return np.where(np.isnan(a) != np.isnan(b), np.iinfo(np.int64).max, d)


MAX_ULPS = {"float16": 1, "float32": 2, "float64": 1}
#: exp/log/pow: g++ calls glibc, NumPy its own SIMD loops; each is within a few ulps
TRANSCENDENTAL_ULPS = {"float16": 1, "float32": 4, "float64": 2}
_TRANSCENDENTAL_OPS = {"exp", "log", "pow"}


@pytest.mark.parametrize("storage", DTYPES)
@pytest.mark.parametrize("index", range(len(ALL)), ids=ALL_IDS)
def test_host_compiled_body_matches_eager(index, storage):
    case = ALL[index]
    ks = case.source(storage)
    scalars = case.scalar_values
    rng = np.random.default_rng(index)
    layout = case.kernel_layout
    arrays = _case_inputs(case, storage, rng)
    eager = [a.copy() for a in arrays]
    with np.errstate(all="ignore"):
        run_eager(case.rule, eager, len(layout.writes), scalars, dict(case.static), np, layout)
        hoisted = [float(np.dtype(ks.scalar_dtype).type(v)) for v in ks.graph.host_values(scalars)]
    host = [a.copy() for a in arrays]
    _run_host(index, ks, host, hoisted)
    for k in (*layout.read_only, *range(layout.n_arrays, layout.n_inputs)):
        np.testing.assert_array_equal(host[k], arrays[k], err_msg=f"read-only argument {k} was written")
    uses_libm = any(node.op in _TRANSCENDENTAL_OPS for node in ks.graph.nodes)
    limit = (TRANSCENDENTAL_ULPS if uses_libm else MAX_ULPS)[storage]
    for role, name in zip(layout.writes, ks.outputs):
        got, want = host[role], eager[role]
        dist = _ulp_distance(got, want)
        bad = dist > limit
        assert not bad.any(), (
            f"{name}: {int(dist.max())} ulps from eager at {np.flatnonzero(bad)[:8]}; "
            f"host {got[bad][:4]} eager {want[bad][:4]}\n{ks.body}"
        )


@pytest.mark.parametrize("storage", DTYPES)
@pytest.mark.parametrize("index", range(len(ALL)), ids=ALL_IDS)
def test_multi_tensor_kernel_run_on_host_equals_the_plain_loop(index, storage):
    """The RawKernel's own source, launched on the host with the backend's tables.

    Checks what no GPU-less compile can: the tables that cuda.py builds
    (block_map, pointer_table) and the kernel's reading of them agree, across
    chunk boundaries, for several tensors in one launch.
    """
    case = ALL[index]
    ks = case.source(storage)
    lib, reason = _host_library()
    if lib is None:
        pytest.fail(reason[6:]) if reason.startswith("FAIL: ") else pytest.skip(reason)
    rng = np.random.default_rng(100 + index)
    layout = case.kernel_layout
    tensors = [_case_inputs(case, storage, rng)]
    # 1, 999, 1000, 1001 and 2500 elements: chunk boundaries (chunk = 1000), in the shapes
    # a broadcast operand sees: its index depends on where the chunk starts
    for shape in ((1, 1, 1), (3, 3, 111), (2, 50, 10), (7, 11, 13), (5, 20, 25)):
        tensors.append(_case_inputs(case, storage, rng, shape))
    hoisted = [float(np.dtype(ks.scalar_dtype).type(v)) for v in ks.graph.host_values(case.scalar_values)]

    looped = [[a.copy() for a in arrays] for arrays in tensors]
    for arrays in looped:
        _run_host(index, ks, arrays, hoisted)

    launched = [[a.copy() for a in arrays] for arrays in tensors]
    chunk = 1000
    sizes = np.array([arrays[0].size for arrays in launched], dtype=np.int64)
    blocks = block_map(sizes, chunk)
    ptrs = pointer_table([[a.ctypes.data for a in arrays] for arrays in launched])
    tables = [ptrs, blocks, sizes]
    if "bcast" in layout.operands:
        tables.append(_bcast_table(launched, layout))
    fn = getattr(lib, f"emulate_{index}_{_HOST_SUFFIX[storage]}")
    scalar = ctypes.c_double if ks.compute == "double" else ctypes.c_float
    fn.restype = None
    fn.argtypes = ([ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * len(tables) + [ctypes.c_int] * 2
                   + [scalar] * len(hoisted))
    fn(blocks.size // 2, MULTI_TENSOR_THREADS, *(t.ctypes.data for t in tables), len(launched), chunk, *hoisted)
    for t, (a, b) in enumerate(zip(launched, looped)):
        for role, (x, y) in enumerate(zip(a, b)):
            np.testing.assert_array_equal(x, y, err_msg=f"tensor {t} (size {x.size}) array {role}")


def test_block_map_covers_every_element_once():
    sizes = [0, 1, 999, 1000, 1001, 2500]
    blocks = block_map(sizes, 1000).reshape(-1, 2)
    covered = {k: np.zeros(n, dtype=int) for k, n in enumerate(sizes)}
    for tensor, start in blocks:
        covered[tensor][start:min(start + 1000, sizes[tensor])] += 1
    assert all((c == 1).all() for c in covered.values())
    assert pointer_table([(1, 2, 3), (4, 5, 6)]).tolist() == [1, 4, 2, 5, 3, 6]


def test_host_maximum_propagates_nan_and_keeps_numpy_ties():
    index = ALL.index(EXTRA[2])
    ks = EXTRA[2].source("float64")
    p = np.array([np.nan, 1.0, np.nan, -0.0, 0.0, 2.0])
    g = np.array([1.0, np.nan, np.nan, 0.0, -0.0, 3.0])
    m = np.array([np.nan, 0.5, 1.0, -0.0, 0.0, 5.0])
    arrays = [p.copy(), g.copy(), m.copy()]
    _run_host(index, ks, arrays, [])
    np.testing.assert_array_equal(arrays[0], np.maximum(p, g))
    np.testing.assert_array_equal(np.signbit(arrays[0]), np.signbit(np.maximum(p, g)))
    np.testing.assert_array_equal(arrays[2], np.minimum(m, g))
    np.testing.assert_array_equal(np.signbit(arrays[2]), np.signbit(np.minimum(m, g)))


# ---------------------------------------------------------------------------
# 1. NVRTC, as CuPy compiles, for sm_90, without a GPU

_NVRTC_HINT = "pip install cupy-cuda13x 'cuda-toolkit[nvrtc,cudart]==13.*' (the test extra)"


@functools.lru_cache(maxsize=None)
def _cupy_compiler():
    """(cupy, reason): CuPy with a loadable NVRTC, or None and why not."""
    try:
        import cupy
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # not installed, or libnvrtc missing
        return None, f"CuPy with NVRTC is not available ({type(exc).__name__}: {exc}); {_NVRTC_HINT}"
    return cupy, None


class _Compiled(Exception):
    """Raised from inside CuPy's compile path once NVRTC is done, before CuPy loads the module."""

    def __init__(self, ok: bool, log: str, options: tuple):
        super().__init__(log)
        self.ok, self.log, self.options = ok, log, options


@contextlib.contextmanager
def _compile_as_cupy_for(arch: str):
    """Run CuPy's own compile path up to NVRTC, with the GPU's arch given instead of asked.

    CuPy asks the driver for the architecture and loads the cubin into a
    context; both need a GPU. Everything in between (its headers, code
    template, options including -ftz=true, the NVRTC call) is CuPy's own.
    """
    from cupy.cuda import compiler, nvrtc

    class Program(compiler._NVRTCProgram):
        def compile(self, options=(), log_stream=None):
            if not self.src.strip():  # CuPy's probe of the compiler version
                return super().compile(options, log_stream)
            options = tuple(options) + ("-Xptxas=-v",)
            try:
                nvrtc.compileProgram(self.ptr, options)
            except nvrtc.NVRTCError:
                raise _Compiled(False, nvrtc.getProgramLog(self.ptr), options) from None
            raise _Compiled(True, nvrtc.getProgramLog(self.ptr), options)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, {"CUPY_CACHE_IN_MEMORY": "1"}))
        stack.enter_context(mock.patch.object(compiler, "_NVRTCProgram", Program))
        stack.enter_context(mock.patch.object(
            compiler, "_get_arch_for_options_for_nvrtc", lambda arch=None: (f"-arch=sm_{arch}", "cubin")))
        yield


def _cupy_compile(source: str, options: tuple, prepend_cupy_headers: bool) -> _Compiled:
    """Compile through ``cupy._core.core.compile_with_cache`` (inside :func:`_compile_as_cupy_for`)."""
    from cupy._core import core

    try:
        core.compile_with_cache(source, options, ARCH, prepend_cupy_headers=prepend_cupy_headers)
    except _Compiled as done:
        return done
    raise AssertionError("CuPy's compile path never reached NVRTC")


def _elementwise_code(ks: KernelSource, name: str, contiguous: bool) -> str:
    """The source CuPy's ElementwiseKernel generates for 1-D contiguous or 2-D strided arrays."""
    import cupy
    from cupy._core import _carray, _kernel, _scalar

    in_params = _kernel._get_param_info(ks.in_params, True)
    out_params = _kernel._get_param_info(ks.out_params, False)
    params = in_params + out_params + _kernel._get_param_info("CIndexer _ind", False)
    storage = np.dtype(ks.storage)
    scalar = np.dtype(ks.scalar_dtype)
    in_dtypes = tuple(storage if p.ctype == "P" else scalar for p in in_params)
    _, _, type_map = _kernel._decide_params_type(in_params, out_params, in_dtypes, (storage,) * len(out_params))
    ndim = 1 if contiguous else 2
    ndarray, scalar_arg, indexer = 1, 3, 2  # CuPy's _ArgKind
    infos = [
        _kernel._ArgInfo(ndarray, cupy.ndarray, storage, ndim, contiguous, True) if p.ctype == "P"
        else _kernel._ArgInfo(scalar_arg, _scalar.CScalar, scalar, 0, True, True)
        for p in in_params + out_params
    ]
    infos.append(_kernel._ArgInfo(indexer, _carray.Indexer, None, ndim, True, True))
    return _kernel._get_elementwise_kernel_code(tuple(infos), type_map, params, ks.body, name, ks.preamble)


def _ptxas_report(log: str) -> dict:
    """name -> {regs, stack, stores, loads} from ptxas's verbose log, entries and called functions alike."""
    functions: dict[str, dict] = {}
    entry = current = None
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            entry = m.group(1)
        elif m := re.search(r"Function properties for (\w+)", line):
            current = m.group(1)
        elif (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)) and current:
            functions[current] = dict(zip(("stack", "stores", "loads"), map(int, m.groups())), regs=None)
        elif (m := re.search(r"Used (\d+) registers", line)) and entry in functions:
            functions[entry]["regs"] = int(m.group(1))
    return functions


@dataclass
class _Build:
    ok: bool
    log: str
    options: tuple
    functions: dict  # name -> dict(regs, stack, stores, loads)


@functools.lru_cache(maxsize=None)
def _nvrtc_builds() -> dict:
    """(dtype, kind) -> _Build: every kernel of one dtype and kind in one NVRTC program.

    ``kind`` is 'elementwise' (CuPy's ElementwiseKernel code for 2-D strided
    arrays, what the fallback path serves; the 1-D contiguous variant indexes
    more simply) or 'multi_tensor' (the RawKernel). NVRTC releases the GIL, so
    the programs compile on all cores.
    """
    cupy, reason = _cupy_compiler()
    if cupy is None:
        pytest.skip(reason)
    jobs = {}
    for storage in DTYPES:
        codes = [_elementwise_code(case.source(storage), case.source(storage).name, contiguous=False) for case in ALL]
        jobs[storage, "elementwise"] = ("\n".join(codes), True)
        jobs[storage, "multi_tensor"] = ("\n".join(c.source(storage).multi_tensor_source for c in ALL), False)

    def build(job):
        done = _cupy_compile(job[0], NVRTC_OPTIONS, prepend_cupy_headers=job[1])
        return _Build(done.ok, done.log, done.options, _ptxas_report(done.log))

    with _compile_as_cupy_for(ARCH), ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        return dict(zip(jobs, pool.map(build, jobs.values())))


def _nvrtc_build(storage: str, kind: str) -> _Build:
    return _nvrtc_builds()[storage, kind]


def _check_build(build: _Build, names: list[str]):
    assert build.ok, f"NVRTC failed:\n{build.log[-6000:]}"
    warnings = [line for line in build.log.splitlines() if "warning" in line.lower()]
    assert not warnings, "NVRTC warnings:\n" + "\n".join(warnings[:20])
    for name in names:
        assert name in build.functions, f"ptxas reported nothing for {name}:\n{build.log[-3000:]}"
        info = build.functions[name]
        assert info["stores"] == 0 and info["loads"] == 0, f"{name} spills registers: {info}"
        assert info["stack"] == 0, f"{name} uses a stack frame: {info}"
    # functions the kernels call (CUDA's slow paths of division, pow...) must not spill either
    spilling = {n: i for n, i in build.functions.items() if i["stores"] or i["loads"]}
    assert not spilling, f"register spills: {spilling}"


@pytest.mark.parametrize("storage", DTYPES)
@pytest.mark.parametrize("case", ALL, ids=ALL_IDS)
def test_elementwise_kernel_compiles_for_sm90_without_spills(case, storage):
    ks = case.source(storage)
    _check_build(_nvrtc_build(storage, "elementwise"), [ks.name])


@pytest.mark.parametrize("storage", DTYPES)
@pytest.mark.parametrize("case", ALL, ids=ALL_IDS)
def test_multi_tensor_kernel_compiles_for_sm90_without_spills(case, storage):
    ks = case.source(storage)
    _check_build(_nvrtc_build(storage, "multi_tensor"), [ks.multi_tensor_name])


def test_nvrtc_gets_cupys_options_and_ours():
    build = _nvrtc_build("float32", "elementwise")
    options = build.options
    for needed in ("-ftz=true", f"-arch=sm_{ARCH}", "--fmad=false", "--device-as-default-execution-space"):
        assert needed in options, f"{needed} missing from {options}"
    assert any(o.startswith("--std=c++") or o.startswith("-std=c++") for o in options), options


def test_no_fused_multiply_add_where_numpy_rounds_each_operation():
    """--fmad=false reaches NVVM: the PTX rounds each +, -, *, / and sqrt (.rn), with no fma.

    That is what makes the GPU compute what NumPy computes (up to -ftz=true
    flushing subnormals, which CuPy's own kernels, eager's on CuPy, do too).
    Rules calling exp/log/pow are left out: CUDA's implementations use fma inside.
    """
    cupy, reason = _cupy_compiler()
    if cupy is None:
        pytest.skip(reason)
    from cupy.cuda import nvrtc

    options = tuple(
        "-arch=compute_" + ARCH if o.startswith("-arch=") else o
        for o in _nvrtc_build("float32", "multi_tensor").options if o != "-Xptxas=-v"
    )
    exact = [c for c in ALL if not any(n.op in _TRANSCENDENTAL_OPS for n in c.source("float32").graph.nodes)]
    sources = [c.source(dt) for c in exact for dt in ("float32", "float64")]
    prog = nvrtc.createProgram("\n".join(ks.multi_tensor_source for ks in sources), "ptx_check.cu", (), ())
    nvrtc.compileProgram(prog, options)
    ptx = nvrtc.getPTX(prog)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    entries = dict(re.findall(r"\.entry (\w+)\((.*?)\n}", ptx, re.S))
    assert {ks.multi_tensor_name for ks in sources} <= entries.keys()
    for ks in sources:
        code = entries[ks.multi_tensor_name]
        assert "fma." not in code, f"{ks.multi_tensor_name} fuses a multiply-add"
        float_ops = re.findall(r"\b(?:add|sub|mul|div|sqrt)\.(?:[a-z]+\.)*f(?:32|64)\b", code)
        assert all(".rn." in op for op in float_ops), (ks.multi_tensor_name, float_ops)


def test_nvrtc_reports_a_broken_body():
    """The check can fail: a body with a type error is an NVRTC error, not a pass."""
    cupy, reason = _cupy_compiler()
    if cupy is None:
        pytest.skip(reason)
    ks = KERNELS[0].source("float32")
    code = _elementwise_code(ks, "broken", True).replace("typedef float T;", "typedef float T; undeclared_name();")
    with _compile_as_cupy_for(ARCH):
        done = _cupy_compile(code, NVRTC_OPTIONS, prepend_cupy_headers=True)
    assert not done.ok and "undeclared_name" in done.log


def test_compute_types_cover_the_tested_dtypes():
    assert set(DTYPES) <= set(COMPUTE_TYPES)


def test_an_argument_the_rule_never_reads_is_not_bound_in_the_kernel():
    """NVRTC warns of a declared, unreferenced variable: an unread read-only array is left unbound."""

    def ignores_g(p, g, *, a, xp):
        return p * a

    ks = kernel_source(ignores_g, {}, ["a"], Layout(2, (0,)), "float32")
    assert "g_ptr" not in ks.multi_tensor_source and "g_arg" not in host_source(ks).split("{", 1)[1]
    assert "p_ptr" in ks.multi_tensor_source
    cupy, reason = _cupy_compiler()
    if cupy is None:
        pytest.skip(reason)
    with _compile_as_cupy_for(ARCH):
        build = _cupy_compile(ks.multi_tensor_source, NVRTC_OPTIONS, prepend_cupy_headers=False)
    assert build.ok and "warning" not in build.log.lower(), build.log
