"""Optimizer step time on one GPU: ms_optim's cuda backend against torch.optim's fused kernels.

.. warning::
   NOT RUN YET. This script was written on a machine without a GPU and checked
   there only with ``--dry-run`` (NumPy arrays, torch on the CPU, host clocks:
   tests/test_gpu_check.py). The first run on the H200 machine
   (``benchmarks/gpu_check.sh``) should commit its report under
   benchmarks/results/ and remove this note.

For each algorithm and case, every implementation starts from the same
float32 parameters and gradients (seeded NumPy draws, copied to the device)
and takes the same number of steps with the same gradients:

* algorithms: AdamW (weight decay 1e-2), Adam, SGD with momentum 0.9, Adagrad,
  RMSprop, at torch's defaults otherwise;
* cases: ``1x1e8`` one tensor of 1e8 elements (bandwidth bound);
  ``200x1e8`` 200 transformer-like tensors totalling 1e8; ``200x1e6`` 200
  such tensors totalling 1e6 (launch and host bound: its arrays fit in L2);
* implementations: ``ms_optim`` (the cuda backend: one multi-tensor launch per
  bucket, ``Optimizer.step``'s Python work included), optionally
  ``ms_optim-per-tensor`` (one ElementwiseKernel per tensor), ``torch-fused``
  (``fused=True``, where torch has a fused kernel for the algorithm on CUDA:
  probed at start, the report says which) and ``torch-foreach``
  (``foreach=True``).

Timing: ``--warmup`` untimed steps per implementation (kernel compiles, state
creation), then ``--repeats`` rounds; in each round every implementation in
turn (round robin, so drift hits all alike) runs ``--burst`` back-to-back
steps between two CUDA events of its own library (CuPy's for ms_optim, torch's
for torch) after a device synchronisation. ``ms/step`` is the median over the
rounds of the event time over the burst: what a training loop that never syncs
sees, the host's launch work included when the host is the bottleneck. ``host
ms`` is the host time to issue one step: when it is close to ``ms/step`` the
step is host bound.

Bandwidth: ``GB/s`` is the least traffic a step must move (read p, g and each
state array once; write p and each state array once: 28 bytes per element for
Adam/AdamW, 20 for SGD with momentum, Adagrad and RMSprop) over ``ms/step``;
``% copy`` is that over the device-to-device copy bandwidth measured in the
same run (the better of ``cudaMemcpy`` and a copy kernel over a ``--copy-mib``
buffer, bytes read plus written, at the start and the end of the run).
``x fused`` and ``x foreach`` are this row's ``ms/step`` over torch's
(below 1: faster than torch). ``rel diff`` is ||p - p_torch|| / ||p_torch - p_0|| over all
parameters after all steps: the difference from torch fused's (foreach's where there
is no fused kernel) relative to the distance the parameters moved.

Run (on the GPU machine this is done by benchmarks/gpu_check.sh)::

    python benchmarks/bench_cuda.py --out benchmarks/results/cuda-<gpu>-<date>.txt

writes the text report there and the same results as JSON beside it
(``.json``). ``--dry-run`` runs every path but the GPU's on NumPy arrays and
torch's CPU tensors with host clocks, at 1/1000 of the sizes; ``--facts``
prints the machine facts alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing


@dataclass(frozen=True)
class Algo:
    cls: str  # the class name, in ms_optim and torch.optim alike
    kwargs: dict
    n_states: int  # float32 state arrays per parameter

    @property
    def bytes_per_element(self) -> int:
        # read p, g and every state array; write p and every state array
        return 4 * (2 + self.n_states + 1 + self.n_states)


ALGOS = {
    "adamw": Algo("AdamW", dict(lr=1e-3, weight_decay=1e-2), 2),
    "adam": Algo("Adam", dict(lr=1e-3), 2),
    "sgd": Algo("SGD", dict(lr=1e-3, momentum=0.9), 1),
    "adagrad": Algo("Adagrad", dict(lr=1e-2), 1),
    "rmsprop": Algo("RMSprop", dict(lr=1e-3), 1),
}
IMPLS = ("ms_optim", "ms_optim-per-tensor", "torch-fused", "torch-foreach")
DEFAULT_IMPLS = ("ms_optim", "torch-fused", "torch-foreach")
CASES = ("1x1e8", "200x1e8", "200x1e6")
#: (tensors, elements) of each case at full size
CASE_SIZES = {"1x1e8": (1, 10**8), "200x1e8": (200, 10**8), "200x1e6": (200, 10**6)}
DRY_RUN_SCALE = 1e-3


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", default=",".join(ALGOS), help=f"comma list of {', '.join(ALGOS)}")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    p.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help=f"comma list of {', '.join(IMPLS)}")
    p.add_argument("--warmup", type=int, help="untimed steps per implementation first (default 3; 1 dry)")
    p.add_argument("--repeats", type=int, help="timed rounds (default 20; 3 dry)")
    p.add_argument("--burst", type=int, help="steps per timed round (default 10; 2 dry)")
    p.add_argument("--copy-mib", type=int, default=1024, help="copy-bandwidth buffer in MiB (default 1024)")
    p.add_argument("--scale", type=float, default=None,
                   help=f"multiply every case's elements (default 1; {DRY_RUN_SCALE} with --dry-run)")
    p.add_argument("--budget-s", type=float, default=150.0,
                   help="start no new (algo, case) after this many seconds; the rest is reported skipped")
    p.add_argument("--out", type=Path, help="write the text report here and the JSON beside it (.json)")
    p.add_argument("--dry-run", action="store_true", help="no GPU: NumPy, torch on the CPU, host clocks")
    p.add_argument("--facts", action="store_true", help="print the machine facts and exit")
    args = p.parse_args(argv)
    args.algos = _choices(args.algos, ALGOS, "--algos")
    args.cases = _choices(args.cases, CASES, "--cases")
    args.impls = _choices(args.impls, IMPLS, "--impls")
    # a dry run checks paths, not speed: small and quick unless asked otherwise
    for name, full, dry in (("scale", 1.0, DRY_RUN_SCALE), ("warmup", 3, 1), ("repeats", 20, 3), ("burst", 10, 2)):
        if getattr(args, name) is None:
            setattr(args, name, dry if args.dry_run else full)
    if args.dry_run:
        args.copy_mib = min(args.copy_mib, 4)
    for name in ("warmup", "repeats", "burst", "copy_mib"):
        minimum = 0 if name == "warmup" else 1
        if getattr(args, name) < minimum:
            p.error(f"--{name.replace('_', '-')} must be >= {minimum}, got {getattr(args, name)}")
    if not 0 < args.scale <= 1:
        p.error(f"--scale must be in (0, 1], got {args.scale}")
    return args


def _choices(text: str, known, flag: str) -> list[str]:
    wanted = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in known]
    if unknown or not wanted:
        raise SystemExit(f"{flag}: unknown {unknown or text!r}; known: {', '.join(known)}")
    return wanted


def transformer_sizes(total: int, tensors: int = 200) -> list[int]:
    """``tensors`` sizes adding up to exactly ``total``, laid out like transformer blocks.

    Blocks of 10 tensors at width ``d``: qkv (3d x d) and its bias, the
    attention output (d x d) and its bias, the MLP (4d x d, d x 4d) and their
    biases, two norm weights. ``d`` is the largest multiple of 64 (of 1 for
    tiny totals) whose blocks fit in ``total``; the first matrix, like an
    embedding, takes the remainder.
    """
    if tensors == 1:
        return [total]
    if tensors % 10:
        raise ValueError(f"tensors must be 1 or a multiple of 10, got {tensors}")
    blocks = tensors // 10

    def block(d):
        return [3 * d * d, 3 * d, d * d, d, 4 * d * d, 4 * d, 4 * d * d, d, d, d]

    def fits(d):
        return blocks * sum(block(d)) <= total

    step = 64 if fits(64) else 1
    if not fits(step):
        raise ValueError(f"total {total} is too small for {tensors} tensors")
    d = step
    while fits(d + step):
        d += step
    sizes = block(d) * blocks
    sizes[0] += total - sum(sizes)
    return sizes


def case_sizes(case: str, scale: float) -> list[int]:
    tensors, total = CASE_SIZES[case]
    smallest = 23 * max(1, tensors // 10)  # ten tensors at width 1 hold 23 elements
    return transformer_sizes(max(smallest, round(total * scale)), tensors)


# ---------------------------------------------------------------------------
# Devices: the GPU, and the host stand-in that --dry-run uses


class GpuDevice:
    """CuPy arrays for ms_optim, torch CUDA tensors for torch, CUDA events for time."""

    dry_run = False
    ms_backend = "cuda"

    def __init__(self):
        import cupy
        import torch

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees no CUDA device")
        if not torch.cuda.is_available():
            raise RuntimeError(f"torch {torch.__version__} sees no CUDA device")
        self.cupy, self.torch = cupy, torch
        self._copy_kernel = cupy.ElementwiseKernel("T x", "T y", "y = x", "ms_optim_bench_copy")

    def ms_array(self, host):
        return self.cupy.asarray(host)

    def torch_tensor(self, host):
        return self.torch.tensor(host, device="cuda")

    def synchronize(self):
        self.cupy.cuda.runtime.deviceSynchronize()

    def time_burst(self, lib: str, step, burst: int) -> tuple[float, float]:
        """(device ms, host ms) per step of ``burst`` calls of ``step``."""
        self.synchronize()
        if lib == "torch":
            start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
        else:
            start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
        start.record()
        t0 = time.perf_counter()
        for _ in range(burst):
            step()
        host = time.perf_counter() - t0
        end.record()
        end.synchronize()
        device = start.elapsed_time(end) if lib == "torch" else self.cupy.cuda.get_elapsed_time(start, end)
        return device / burst, host * 1e3 / burst

    def copy_bandwidth(self, nbytes: int, repeats: int) -> dict:
        """Median GB/s (read + written) of cudaMemcpy D2D and of a copy kernel."""
        cp = self.cupy
        src = cp.random.default_rng(7).standard_normal(nbytes // 4, dtype=cp.float32)
        dst = cp.empty_like(src)
        out = {}
        for name, copy in (("memcpy", lambda: dst.data.copy_from_device_async(src.data, src.nbytes)),
                           ("kernel", lambda: self._copy_kernel(src, dst))):
            copy()  # compile / first touch
            times = [self.time_burst("cupy", copy, 1)[0] for _ in range(repeats)]
            out[name] = 2 * src.nbytes / (statistics.median(times) * 1e-3) / 1e9
        if not bool(cp.all(dst == src)):
            raise RuntimeError("the copy-bandwidth buffer did not copy")
        del src, dst
        self.free()
        return out

    def to_cupy(self, x):
        if isinstance(x, self.cupy.ndarray):
            return x
        try:
            return self.cupy.from_dlpack(x.detach())
        except Exception:  # noqa: BLE001 - an old DLPack on either side: go through the host
            return self.cupy.asarray(x.detach().cpu().numpy())

    def rel_diff(self, params, reference, initial) -> float:
        cp = self.cupy
        num = den = 0.0
        for a, b, p0 in zip(params, reference, initial):
            a, b = self.to_cupy(a).astype(cp.float64), self.to_cupy(b).astype(cp.float64)
            num += float(cp.sum((a - b) ** 2))
            den += float(cp.sum((b - cp.asarray(p0, dtype=cp.float64)) ** 2))
        return math.sqrt(num / den) if den else math.inf

    def free_bytes(self) -> int:
        return int(self.cupy.cuda.runtime.memGetInfo()[0])

    def free(self):
        self.synchronize()
        self.cupy.get_default_memory_pool().free_all_blocks()
        self.torch.cuda.empty_cache()

    def facts(self) -> dict:
        cp, torch = self.cupy, self.torch
        rt = cp.cuda.runtime
        dev = cp.cuda.Device()
        props = rt.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        facts = {
            "gpu": name,
            "compute_capability": f"sm_{props['major']}{props['minor']}",
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "driver": _nvidia_smi_driver(),
            "cuda_driver_api": _cuda_version(rt.driverGetVersion()),
            "cuda_runtime": _cuda_version(rt.runtimeGetVersion()),
            "cupy": cp.__version__,
            "torch": torch.__version__,
            "torch_cuda": str(torch.version.cuda),
            "torch_gpu": torch.cuda.get_device_name(),
        }
        try:
            facts["nvrtc"] = ".".join(map(str, cp.cuda.nvrtc.getVersion()))
        except Exception as exc:  # noqa: BLE001
            facts["nvrtc"] = f"unknown ({type(exc).__name__})"
        return facts


class HostDevice:
    """The --dry-run stand-in: NumPy arrays, torch CPU tensors, host clocks; every other path as on a GPU."""

    dry_run = True
    ms_backend = "eager"  # the cpu backend would spend the dry run compiling numba loops

    def __init__(self):
        import numpy

        self.np = numpy

    def ms_array(self, host):
        return host.copy()

    def torch_tensor(self, host):
        import torch  # here, not at start: --facts stays quick

        return torch.tensor(host)

    def synchronize(self):
        pass

    def time_burst(self, lib: str, step, burst: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        for _ in range(burst):
            step()
        ms = (time.perf_counter() - t0) * 1e3 / burst
        return ms, ms

    def copy_bandwidth(self, nbytes: int, repeats: int) -> dict:
        src = self.np.random.default_rng(7).standard_normal(nbytes // 4, dtype=self.np.float32)
        dst = self.np.empty_like(src)
        out = {}
        for name, copy in (("memcpy", lambda: self.np.copyto(dst, src)), ("kernel", lambda: dst.__setitem__(..., src))):
            times = [self.time_burst("host", copy, 1)[0] for _ in range(repeats)]
            out[name] = 2 * src.nbytes / (statistics.median(times) * 1e-3) / 1e9
        return out

    def rel_diff(self, params, reference, initial) -> float:
        np = self.np
        num = den = 0.0
        for a, b, p0 in zip(params, reference, initial):
            a, b = (np.asarray(x.detach().numpy() if hasattr(x, "detach") else x, dtype=np.float64) for x in (a, b))
            num += float(np.sum((a - b) ** 2))
            den += float(np.sum((b - p0) ** 2))
        return math.sqrt(num / den) if den else math.inf

    def free_bytes(self) -> int:
        return 2**40

    def free(self):
        pass

    def facts(self) -> dict:
        return {
            "gpu": "none (dry run: NumPy arrays and torch CPU tensors, host clocks)",
            "cpu": platform.processor() or platform.machine(),
            "torch": _installed("torch"),
        }


def _installed(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def _nvidia_smi_driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return out.strip().splitlines()[0]
    except Exception as exc:  # noqa: BLE001 - a fact we can do without
        return f"unknown ({type(exc).__name__})"


def _common_facts() -> dict:
    import numpy

    facts = {"numpy": numpy.__version__, "python": platform.python_version(), "machine": platform.machine(),
             "ms_optim_commit": _commit()}
    return facts


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        # The GPU machine gets a copy of the working tree, maybe without .git:
        # gpu_wheels.sh writes the commit into the carried .whl/COMMIT.
        return os.environ.get("MS_OPTIM_COMMIT", "unknown") + " (when the wheels were fetched)"


# ---------------------------------------------------------------------------
# Implementations


class Impl:
    """One implementation's optimizer over its own copy of the parameters."""

    def __init__(self, name: str, algo: Algo, host_params, host_grads, device):
        self.name = name
        self.lib = "torch" if name.startswith("torch") else "cupy"
        if self.lib == "cupy":
            import ms_optim

            backend = device.ms_backend
            if name == "ms_optim-per-tensor" and not device.dry_run:
                backend = _per_tensor_backend()
            self.params = [device.ms_array(h) for h in host_params]
            self.grads = [device.ms_array(h) for h in host_grads]
            opt = getattr(ms_optim, algo.cls)(self.params, **algo.kwargs, backend=backend)
            grads = self.grads
            self.step = lambda: opt(grads)
        else:
            import torch

            flag = "fused" if name == "torch-fused" else "foreach"
            self.params = [device.torch_tensor(h).requires_grad_() for h in host_params]
            for p, g in zip(self.params, host_grads):
                p.grad = device.torch_tensor(g)
            opt = getattr(torch.optim, algo.cls)(self.params, **algo.kwargs, **{flag: True})
            self.step = opt.step
        self.opt = opt


def _per_tensor_backend() -> str:
    from ms_optim.engine import BACKENDS, register_backend
    from ms_optim.engine.cuda import CudaBackend
    from ms_optim.engine.namespace import is_cupy

    if "cuda-per-tensor" not in BACKENDS:
        register_backend("cuda-per-tensor", is_cupy, lambda: CudaBackend(multi_tensor=False))
    return "cuda-per-tensor"


def probe_fused(algo: Algo, device) -> tuple[bool, str]:
    """Whether torch has ``fused=True`` for this algorithm on the device, and if not, what it said."""
    import numpy as np

    one = [np.ones(16, dtype=np.float32)]
    try:
        impl = Impl("torch-fused", algo, one, one, device)
        impl.step()
        device.synchronize()
        return True, ""
    except (TypeError, RuntimeError, ValueError) as exc:
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]


# ---------------------------------------------------------------------------
# Measurement


def measure(impls, device, args) -> dict:
    """Per implementation: median and min device ms/step, median host ms/step, over round-robin rounds."""
    for impl in impls:
        for _ in range(args.warmup):
            impl.step()
    device.synchronize()
    times = {i.name: [] for i in impls}
    hosts = {i.name: [] for i in impls}
    for _ in range(args.repeats):
        for impl in impls:
            dev_ms, host_ms = device.time_burst(impl.lib, impl.step, args.burst)
            times[impl.name].append(dev_ms)
            hosts[impl.name].append(host_ms)
    return {name: dict(ms=statistics.median(t), min_ms=min(t), host_ms=statistics.median(hosts[name]))
            for name, t in times.items()}


def run_case(algo_name: str, case: str, host, impl_names, fused_ok: bool, device, args) -> list[dict]:
    """The rows of one (algorithm, case): one per implementation, or one error row per failure."""
    algo = ALGOS[algo_name]
    host_params, host_grads = host
    n = sum(p.size for p in host_params)
    names = [i for i in impl_names if not (i == "torch-fused" and not fused_ok)]
    need = 1.3 * len(names) * n * 4 * (2 + algo.n_states)
    base = dict(algo=algo_name, case=case, tensors=len(host_params), elements=n,
                min_bytes=algo.bytes_per_element * n)
    if need > 0.8 * device.free_bytes():
        return [dict(base, impl=i, error=f"skipped: needs ~{need / 2**30:.1f} GiB") for i in names]
    impls, rows = [], []
    for name in names:
        try:
            impls.append(Impl(name, algo, host_params, host_grads, device))
        except Exception as exc:  # noqa: BLE001 - report it, time the others
            rows.append(dict(base, impl=name, error=_error(exc)))
    try:
        timed = measure(impls, device, args)
    except Exception:  # noqa: BLE001 - one broken implementation must not hide the others
        timed = {}
        for impl in impls:  # time each alone to find the broken one
            try:
                timed.update(measure([impl], device, args))
            except Exception as exc1:  # noqa: BLE001
                rows.append(dict(base, impl=impl.name, error=_error(exc1)))
    impls = [i for i in impls if i.name in timed]
    reference = next((i for i in impls if i.name == "torch-fused"), None) or \
        next((i for i in impls if i.name == "torch-foreach"), None)
    for impl in impls:
        row = dict(base, impl=impl.name, **timed[impl.name])
        row["gbps"] = row["min_bytes"] / (row["ms"] * 1e-3) / 1e9
        for ref in ("torch-fused", "torch-foreach"):
            row[f"x_{ref[6:]}"] = row["ms"] / timed[ref]["ms"] if ref in timed else None
        row["ref"] = reference.name if reference is not None else None
        try:
            row["rel_diff"] = (device.rel_diff(impl.params, reference.params, host_params)
                               if reference is not None else None)
        except Exception as exc:  # noqa: BLE001
            row["rel_diff"] = None
            row["error"] = "comparison: " + _error(exc)
        rows.append(row)
    order = {name: k for k, name in enumerate(names)}
    rows.sort(key=lambda r: order.get(r["impl"], len(order)))
    del impls, reference
    device.free()
    return rows


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


# ---------------------------------------------------------------------------
# Goals and the report


GOALS = (
    # (description, algos or None for all, case, what, bound)
    ("AdamW 1x1e8: >= 90% of the copy bandwidth", ("adamw",), "1x1e8", "pct_copy", 90.0),
    ("200 tensors = 1e8: <= 1.0x torch fused", None, "200x1e8", "x_fused", 1.0),
    ("200 tensors = 1e6: <= 0.5x torch fused", None, "200x1e6", "x_fused", 0.5),
)


def evaluate_goals(report: dict) -> list[dict]:
    """The issue's goals, checked on the ms_optim rows: PASS, MISS or n/a (with why)."""
    rows = {(r["algo"], r["case"]): r for r in report["rows"] if r["impl"] == "ms_optim" and "ms" in r}
    out = []
    for text, algos, case, what, bound in GOALS:
        for algo in algos or report["config"]["algos"]:
            row = rows.get((algo, case))
            goal = dict(goal=text, algo=algo, case=case, what=what, bound=bound)
            if case not in report["config"]["cases"] or algo not in report["config"]["algos"]:
                continue
            if row is None:
                out.append(dict(goal, status="n/a", why="no ms_optim timing"))
                continue
            value = row.get(what)
            if value is None:
                why = "torch has no fused kernel for it" if what == "x_fused" else "not measured"
                if what == "x_fused" and row.get("x_foreach") is not None:
                    why += f" (vs foreach: {row['x_foreach']:.2f}x)"
                out.append(dict(goal, status="n/a", why=why))
                continue
            ok = value >= bound if what == "pct_copy" else value <= bound
            out.append(dict(goal, value=value, status="PASS" if ok else "MISS"))
    return out


def _fmt(value, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}{spec}}"


def format_row(r: dict) -> str:
    """One implementation's line of the table (or its error)."""
    start = f"{r['algo']:8} {r['case']:8} {r['tensors']:>7} {r['impl']:20}"
    if "ms" not in r:
        return f"{start} {r.get('error', 'no timing')}"
    return (f"{start} {r['ms']:9.3f} {r['min_ms']:9.3f} {r['host_ms']:8.3f} {r['gbps']:6.0f} "
            f"{_fmt(r.get('pct_copy'), '.0f', 6)} {_fmt(r.get('x_fused'), '.2f', 7)} "
            f"{_fmt(r.get('x_foreach'), '.2f', 9)} {_fmt(r.get('rel_diff'), '.1e', 11)}"
            + (f"  {r['error']}" if r.get("error") else ""))


def format_report(report: dict) -> str:
    """The text report: machine facts, copy bandwidth, one row per implementation, then the goals."""
    f, cfg, copy = report["facts"], report["config"], report.get("copy") or {}
    lines = ["# ms_optim cuda backend vs torch.optim on one GPU: float32 step time, CUDA-event medians"]
    if report.get("dry_run"):
        lines.append("# DRY RUN: no GPU; NumPy arrays (eager backend) and torch CPU tensors, host clocks, "
                     f"sizes x{cfg['scale']:g}. These numbers mean nothing.")
    if "compute_capability" in f:
        lines.append(f"# gpu: {f['gpu']} ({f['compute_capability']}, {f['memory_gib']} GiB); "
                     f"driver {f['driver']}; CUDA driver API {f['cuda_driver_api']}, "
                     f"runtime {f['cuda_runtime']}, NVRTC {f.get('nvrtc')}")
        lines.append(f"# cupy {f['cupy']}; torch {f['torch']} (CUDA {f['torch_cuda']}); numpy {f['numpy']}; "
                     f"python {f['python']}; ms_optim {f['ms_optim_commit']}")
    else:
        lines.append("# " + "; ".join(f"{k} {v}" for k, v in f.items()))
    lines.append(f"# warmup {cfg['warmup']}, {cfg['repeats']} rounds of {cfg['burst']} steps, round robin; "
                 f"medians")
    for case, c in cfg["case_sizes"].items():
        lines.append(f"# case {case}: {c['tensors']} tensors, {c['elements']:,} elements "
                     f"(smallest {c['smallest']:,}, largest {c['largest']:,})")
    if copy:
        lines.append(f"# copy bandwidth ({cfg['copy_mib']} MiB, read + written), GB/s: "
                     + ", ".join(f"{k} {v:.0f}" for k, v in copy.items() if k != "ceiling")
                     + f"; ceiling {copy['ceiling']:.0f}")
    fused = report.get("fused") or {}
    if fused:
        lines.append("# torch fused=True on this device: " + "; ".join(
            f"{ALGOS[a].cls} {'yes' if ok['supported'] else 'no (' + ok['why'] + ')'}" for a, ok in fused.items()))
    header = (f"{'algo':8} {'case':8} {'tensors':>7} {'impl':20} {'ms/step':>9} {'min ms':>9} {'host ms':>8} "
              f"{'GB/s':>6} {'% copy':>6} {'x fused':>7} {'x foreach':>9} {'rel diff':>11}")
    lines += ["", header, "-" * len(header)]
    lines += [format_row(r) for r in report["rows"]]
    goals = report.get("goals") or []
    if goals:
        lines += ["", "goals (ms_optim rows):"]
        for g in goals:
            value = "" if "value" not in g else (f"{g['value']:.0f}%" if g["what"] == "pct_copy"
                                                 else f"{g['value']:.2f}x")
            lines.append(f"  {g['status']:4} {g['goal']}: {g['algo']} {value}{'  ' + g['why'] if 'why' in g else ''}")
    for note in report.get("notes", []):
        lines.append(f"# note: {note}")
    lines.append(f"# elapsed {report.get('elapsed_s', 0):.0f} s")
    return "\n".join(lines) + "\n"


def finish(report: dict) -> None:
    """Fill the derived columns and goals in place (idempotent: called after every case)."""
    ceiling = (report.get("copy") or {}).get("ceiling")
    for r in report["rows"]:
        if "gbps" in r:
            r["pct_copy"] = 100 * r["gbps"] / ceiling if ceiling else None
    report["goals"] = evaluate_goals(report)


def write(report: dict, out: Path | None) -> str:
    finish(report)
    text = format_report(report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return text


def main(argv=None) -> int:
    args = _parse_args(argv)
    t_start = time.perf_counter()
    try:
        device = HostDevice() if args.dry_run else GpuDevice()
    except Exception as exc:  # noqa: BLE001
        print(f"bench_cuda needs a CUDA GPU, CuPy and a CUDA torch (or --dry-run): {_error(exc)}", file=sys.stderr)
        return 2
    facts = {**device.facts(), **_common_facts()}
    if args.facts:
        print(json.dumps(facts, indent=1))
        return 0
    import numpy as np

    sizes = {case: case_sizes(case, args.scale) for case in args.cases}
    report = dict(
        dry_run=device.dry_run, facts=facts, rows=[], notes=[], fused={},
        config=dict(algos=args.algos, cases=args.cases, impls=args.impls, warmup=args.warmup,
                    repeats=args.repeats, burst=args.burst, copy_mib=args.copy_mib, scale=args.scale,
                    case_sizes={c: dict(tensors=len(s), elements=sum(s), smallest=min(s), largest=max(s))
                                for c, s in sizes.items()}),
    )
    print(format_report(report), end="", flush=True)

    copy_repeats = max(5, args.repeats)
    copy = {f"{k} start": v for k, v in device.copy_bandwidth(args.copy_mib * 2**20, copy_repeats).items()}
    report["copy"] = dict(copy, ceiling=max(copy.values()))
    if "torch-fused" in args.impls:
        for a in args.algos:
            ok, why = probe_fused(ALGOS[a], device)
            report["fused"][a] = dict(supported=ok, why=why)
    write(report, args.out)

    host_data = {}
    for algo in args.algos:
        for case in args.cases:
            elapsed = time.perf_counter() - t_start
            if elapsed > args.budget_s:
                report["notes"].append(f"{algo} {case}: skipped, {elapsed:.0f} s over the --budget-s {args.budget_s:g}")
                continue
            if case not in host_data:
                rng = np.random.default_rng(0)
                host_data[case] = ([rng.standard_normal(n, dtype=np.float32) for n in sizes[case]],
                                   [rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2)
                                    for n in sizes[case]])
            fused_ok = report["fused"].get(algo, {}).get("supported", False)
            rows = run_case(algo, case, host_data[case], args.impls, fused_ok, device, args)
            report["rows"] += rows
            report["elapsed_s"] = time.perf_counter() - t_start
            write(report, args.out)  # after every case: a run stopped by its timeout keeps what it measured
            print("\n".join(format_row(r) for r in rows), flush=True)

    try:  # the ceiling again at the end: did the card's clocks move during the run?
        end = device.copy_bandwidth(args.copy_mib * 2**20, copy_repeats)
        report["copy"].update({f"{k} end": v for k, v in end.items()})
        report["copy"]["ceiling"] = max(v for k, v in report["copy"].items() if k != "ceiling")
    except Exception as exc:  # noqa: BLE001
        report["notes"].append(f"copy bandwidth at the end: {_error(exc)}")
    report["elapsed_s"] = time.perf_counter() - t_start
    text = write(report, args.out)
    print("\n" + text, end="", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
