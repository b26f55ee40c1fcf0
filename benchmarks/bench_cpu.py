"""Optimizer step time on the CPU: ms_optim eager and cpu (numba) against torch.optim.

For each algorithm and model size, every implementation starts from the same
float32 parameters, gradients and state, split over a transformer-like list of
tensors (per block: qkv and output projections, a 4x MLP, biases, two layer
norms). Implementations take turns in blocks (:func:`timed_in_blocks`): each
turn runs one untimed step, then ``--block`` timed steps in a row, so a busy
neighbour on a shared machine slows them all alike, and no implementation is
timed while another one's threads are still awake. (torch's OpenMP workers
spin for a while after each parallel region; timed step by step in turns,
whatever ran right after torch paid for those spinning threads, which on a
2-core machine made it look much slower than it is.) Each reports the median of ``--repeats`` timed steps
after ``--warmup`` untimed ones (which include the cpu backend's JIT compile
or disk-cache load, reported on its own).

Effective bandwidth is the bytes one step must move at least (each array the
update reads, read once; each it writes, written once: 28 bytes per element
for Adam/AdamW, 20 for SGD with momentum) divided by the step time, so a
fused single pass scores its real bandwidth and a multi-pass implementation
scores lower.

Run (the committed results were made with exactly this)::

    python benchmarks/bench_cpu.py --out benchmarks/results/cpu-<kind>-<date>.txt

Quick check: ``--sizes 1M --repeats 5``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import math
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1x10M,10M,1x1M,2000x500",
                   help="models: 10M (a transformer-like list of tensors of 10M elements in all), "
                        "1x10M (one tensor), 2000x500 (2000 tensors of 500); default: the four goal cases")
    p.add_argument("--per-param", default="100,1000,10000",
                   help="parameter counts for the per-parameter Python cost (tensors of 64 elements); '' skips")
    p.add_argument("--algos", default="adamw", help="adamw, adam, sgd (momentum 0.9); default adamw")
    p.add_argument("--threads", type=int, default=2, help="threads for torch and the cpu backend (default 2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--repeats", type=int, default=15, help="timed steps per implementation (default 15)")
    p.add_argument("--block", type=int, default=5,
                   help="timed steps in a row per turn, after one untimed step (default 5)")
    p.add_argument("--impls", default="cpu,cpu-flat,cpu-serial,cpu-prange,eager,torch-foreach,torch-fused,"
                                      "torch-fused-1t",
                   help="which implementations to run (default: all)")
    p.add_argument("--out", type=Path, help="also write the report to this file")
    return p.parse_args(argv)


def _set_threads_env(n: int) -> None:
    # before numpy/torch/numba start their pools: every library gets the same count
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def _size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    return int(float(text.rstrip("KMG")) * scale)


def shapes_for(spec: str) -> list[tuple[int, ...]]:
    """``10M``: transformer-like tensors of 10M elements in all; ``1x10M``: one tensor; ``2000x500``."""
    spec = spec.strip()
    if "x" in spec:
        count, size = spec.split("x", 1)
        return [(_size(size),)] * _size(count)
    return model_shapes(_size(spec))


def model_shapes(total: int) -> list[tuple[int, ...]]:
    """A GPT-like list of tensor shapes with about ``total`` elements."""
    d = 128 if total <= 2_000_000 else 256 if total <= 20_000_000 else 512
    block = [(3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,), (d,), (d,)]
    per_block = sum(math.prod(s) for s in block)
    vocab = max(1, (total - per_block * max(1, total // per_block)) // d)
    shapes = [(vocab, d)] if vocab > 1 else []
    while sum(math.prod(s) for s in shapes) + per_block <= total or not shapes:
        shapes.extend(block)
    return shapes


def machine_facts(threads: int) -> list[str]:
    import numpy as np

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    for name in ("numba", "torch"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            versions.append(f"{name} missing")
    return [
        f"machine: {model}, {os.cpu_count()} logical CPUs ({usable} usable){mem}, {platform.system()} {platform.release()}",
        "versions: " + ", ".join(versions),
        f"threads: {threads} for torch (set_num_threads) and ms_optim cpu; OMP/MKL/OPENBLAS/NUMBA_NUM_THREADS={threads}; "
        "NumPy's element-wise ufuncs (eager) are single-threaded",
    ]


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def timed_in_blocks(runners: dict, repeats: int, block: int, before=None) -> dict:
    """Seconds per call of each ``runners[name]()``: ``repeats`` timed calls, taken in turns of blocks.

    A turn is one untimed call (it pays for waking this implementation's
    threads, and for the previous one's still spinning), then up to ``block``
    timed calls in a row. ``before(name)``, if given, runs untimed before
    every call (to restore inputs).
    """
    times = {name: [] for name in runners}
    block = max(1, block)
    while any(len(ts) < repeats for ts in times.values()):
        for name, fn in runners.items():
            todo = min(block, repeats - len(times[name]))
            if todo <= 0:
                continue
            for k in range(todo + 1):
                if before is not None:
                    before(name)
                t = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - t
                if k:
                    times[name].append(elapsed)
    return times


# ---------------------------------------------------------------- implementations


class Impl:
    """One implementation holding its own copy of the model; ``step()`` does one update."""

    label = ""

    def step(self) -> None:
        raise NotImplementedError


class MsOptim(Impl):
    def __init__(self, algo, params, grads, backend, parallel=None, threads=2):
        import ms_optim

        self.params = [p.copy() for p in params]
        self.grads = grads
        cls, kwargs = _ms_algo(ms_optim, algo)
        self.opt = cls(self.params, backend=backend, **kwargs)
        if backend == "cpu":
            from ms_optim.engine import backend_for
            import numpy as np

            self._engine, self._parallel, self._threads = backend_for(np, "cpu"), parallel, threads
        else:
            self._engine = None

    def step(self):
        if self._engine is not None:  # several cpu variants share one backend instance
            from ms_optim.engine.cpu_threads import PARALLEL_MIN_ELEMENTS

            self._engine.num_threads = 1 if self._parallel == "serial" else self._threads
            self._engine.parallel = "prange" if self._parallel == "prange" else "threads"
            # a kept plan keeps the split its first step chose: set before that step
            self._engine.parallel_min_elements = 0 if self._parallel == "split" else PARALLEL_MIN_ELEMENTS
        self.opt.step(self.grads)


class MsOptimFlat(MsOptim):
    """Parameters and gradients as views of two flat buffers (ms_optim.FlatBuffer): one row per bucket."""

    def __init__(self, algo, params, grads, threads):
        import ms_optim

        from ms_optim.engine import backend_for
        import numpy as np

        self.flat = ms_optim.FlatBuffer.from_arrays(params)  # a copy, as MsOptim makes one
        self.flat_grads = ms_optim.FlatBuffer.from_arrays(grads)
        self.params, self.grads = self.flat.views, self.flat_grads.views
        cls, kwargs = _ms_algo(ms_optim, algo)
        self.opt = cls(self.params, backend="cpu", **kwargs)
        self._engine, self._parallel, self._threads = backend_for(np, "cpu"), "threads", threads


class MsOptimBackendOnly(MsOptim):
    """The cpu backend's ``run`` on the bucket Optimizer.step would build, without Optimizer.step."""

    def __init__(self, algo, params, grads, threads):
        super().__init__(algo, params, grads, "cpu", "threads", threads)
        opt = self.opt
        opt.step(grads)  # create the state, then replay the call step() makes for this bucket
        group = opt.param_groups[0]
        state = opt.state[self.params[0]]
        keys = opt._state_keys(group)
        self._args = (
            type(opt).rule,
            {**opt._static(group), **opt._step_static(group, state)},
            {k: float(v) for k, v in opt._host_scalars(group, state).items()},
            self.params,
            grads,
            [[opt.state[p][k] for k in keys] for p in self.params],
        )

    def step(self):
        import numpy as np

        self._engine.num_threads, self._engine.parallel = self._threads, "threads"
        self._engine.run(*self._args, np)


def _ms_algo(ms_optim, algo):
    return {
        "adamw": (ms_optim.AdamW, dict(lr=1e-3, weight_decay=1e-2)),
        "adam": (ms_optim.Adam, dict(lr=1e-3)),
        "sgd": (ms_optim.SGD, dict(lr=1e-3, momentum=0.9)),
    }[algo]


class Torch(Impl):
    def __init__(self, algo, params, grads, mode, threads):
        import torch

        self.threads = threads

        self.params = []
        for p, g in zip(params, grads):
            # torch.tensor copies into torch's own (64-byte aligned) memory, as a torch model has
            # it; from_numpy views of NumPy's 16-byte aligned buffers make fused AdamW many
            # times slower on this machine
            t = torch.tensor(p).requires_grad_(True)
            t.grad = torch.tensor(g)
            self.params.append(t)
        cls, kwargs = {
            "adamw": (torch.optim.AdamW, dict(lr=1e-3, weight_decay=1e-2)),
            "adam": (torch.optim.Adam, dict(lr=1e-3)),
            "sgd": (torch.optim.SGD, dict(lr=1e-3, momentum=0.9)),
        }[algo]
        self.opt = cls(self.params, **kwargs, **{mode: True})

    def step(self):
        import torch

        if torch.get_num_threads() != self.threads:  # each block's untimed first step pays for a switch
            torch.set_num_threads(self.threads)
        self.opt.step()


BYTES_PER_ELEMENT = {"adamw": 28, "adam": 28, "sgd": 20}  # float32: (arrays read + arrays written) * 4
TITLES = {"adamw": "AdamW (lr=1e-3, weight_decay=1e-2)", "adam": "Adam (lr=1e-3)", "sgd": "SGD (lr=1e-3, momentum=0.9)"}
LABELS = {
    "eager": "ms_optim eager (NumPy)",
    "cpu": "ms_optim cpu (numba, threads)",
    "cpu-prange": "ms_optim cpu (numba, prange)",
    "cpu-serial": "ms_optim cpu (numba, 1 thread)",
    "cpu-split": "ms_optim cpu, every bucket split",
    "cpu-run-only": "  cpu backend.run alone",
    "cpu-flat": "ms_optim cpu, flat buffers",
    "torch-foreach": "torch foreach=True",
    "torch-fused": "torch fused=True",
    "torch-fused-1t": "torch fused=True, 1 thread",
}


def _make(name, algo, params, grads, threads):
    if name == "eager":
        return MsOptim(algo, params, grads, "eager")
    if name == "cpu-run-only":
        return MsOptimBackendOnly(algo, params, grads, threads)
    if name == "cpu-flat":
        return MsOptimFlat(algo, params, grads, threads)
    if name.startswith("cpu"):
        parallel = {"cpu": "threads", "cpu-prange": "prange", "cpu-serial": "serial", "cpu-split": "split"}[name]
        return MsOptim(algo, params, grads, "cpu", parallel, threads)
    mode = {"torch-foreach": "foreach", "torch-fused": "fused", "torch-fused-1t": "fused"}[name]
    return Torch(algo, params, grads, mode, 1 if name == "torch-fused-1t" else threads)


def run_case(algo: str, spec: str, impls: list[str], args, out) -> dict:
    import numpy as np

    shapes = shapes_for(spec)
    n = sum(math.prod(s) for s in shapes)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s, dtype=np.float32) * np.float32(0.02) for s in shapes]
    grads = [rng.standard_normal(s, dtype=np.float32) * np.float32(1e-3) for s in shapes]
    out(f"\n{TITLES[algo]}: {n / 1e6:.1f}M float32 elements in {len(shapes)} tensors "
        f"(largest {max(shapes, key=math.prod)}), {BYTES_PER_ELEMENT[algo]} B/element minimum traffic")
    runners, first, notes = {}, {}, []
    for name in impls:
        try:
            impl = _make(name, algo, params, grads, args.threads)
            t = time.perf_counter()
            impl.step()  # first step: state creation, and the JIT compile or cache load for cpu
            first[name] = time.perf_counter() - t
            runners[name] = impl
        except Exception as exc:  # e.g. an older torch without fused CPU SGD
            notes.append(f"  {LABELS[name]}: not run ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})")
    for _ in range(max(0, args.warmup - 1)):
        for impl in runners.values():
            impl.step()
    times = timed_in_blocks({name: impl.step for name, impl in runners.items()}, args.repeats, args.block)
    ref = statistics.median(times["torch-fused"]) if "torch-fused" in times else None
    out(f"  {'implementation':32s} {'median ms':>10s} {'min ms':>8s} {'vs fused':>9s} {'GB/s':>7s} {'1st step s':>11s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = f"{med / ref:8.2f}x" if ref else "      n/a"
        gbs = BYTES_PER_ELEMENT[algo] * n / med / 1e9
        out(f"  {LABELS[name]:32s} {med * 1e3:10.2f} {min(ts) * 1e3:8.2f} {ratio:>9s} {gbs:7.2f} {first[name]:11.3f}")
    for line in notes:
        out(line)
    del runners
    gc.collect()
    return {name: statistics.median(ts) for name, ts in times.items()}


def per_param_cost(algo: str, counts: list[int], args, out) -> None:
    """Python cost per parameter per step: many tiny tensors, so the arithmetic is negligible."""
    import numpy as np

    out(f"\nPython cost per parameter per step, {TITLES[algo]}: N tensors of 64 float32 elements, "
        "median step time / N (the kernels move 28 B x 64 per tensor, a few ns)")
    names = [n for n in ("cpu", "eager", "torch-fused") if n in args.impl_list]
    out(f"  {'N':>6s} " + " ".join(f"{LABELS[n] + ' us/param':>34s}" for n in names))
    for count in counts:
        rng = np.random.default_rng(0)
        params = [rng.standard_normal(64, dtype=np.float32) for _ in range(count)]
        grads = [rng.standard_normal(64, dtype=np.float32) for _ in range(count)]
        runners = {}
        for name in names:
            impl = _make(name, algo, params, grads, args.threads)
            if name == "cpu":
                impl.opt.backend = "cpu"  # compiled even below auto's size threshold
            runners[name] = impl
        for _ in range(args.warmup):
            for impl in runners.values():
                impl.step()
        times = timed_in_blocks({name: impl.step for name, impl in runners.items()}, args.repeats, args.block)
        out(f"  {count:6d} " + " ".join(f"{statistics.median(times[n]) / count * 1e6:34.3f}" for n in names))


def main(argv=None) -> int:
    args = _parse_args(argv)
    _set_threads_env(args.threads)
    import numpy as np  # noqa: F401  (after the thread variables)

    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    lines: list[str] = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    unknown = set(impls) - set(LABELS)
    if unknown:
        raise SystemExit(f"unknown --impls {sorted(unknown)}; choose from {', '.join(LABELS)}")
    if torch is None:
        impls = [i for i in impls if not i.startswith("torch")]
    out(f"ms_optim CPU optimizer step benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    out("command: python benchmarks/bench_cpu.py " + " ".join(sys.argv[1:] if argv is None else argv))
    for line in machine_facts(args.threads):
        out(line)
    out(f"method: same float32 data for all, {args.warmup} warm-up steps, then {args.repeats} timed steps "
        f"per implementation, taken in turns of 1 untimed + {args.block} timed steps; median (and min) wall "
        "time of Optimizer.step / optimizer.step()")
    out(f"load average at start (1/5/15 min): {_load()}; this process's nice value: {os.nice(0)}")
    args.impl_list = impls
    summary = []
    for algo in [a.strip() for a in args.algos.split(",") if a.strip()]:
        for spec in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            medians = run_case(algo, spec, impls, args, out)
            if "torch-fused" in medians:
                summary.append((algo, spec, {n: m / medians["torch-fused"] for n, m in medians.items()}))
        counts = [int(_size(c)) for c in args.per_param.split(",") if c.strip()]
        if counts:
            per_param_cost(algo, counts, args, out)
    if summary:
        out("\nSummary: median step time as a ratio to torch fused=True (lower is faster)")
        names = [n for n in impls if n != "torch-fused"]
        out(f"  {'case':22s} " + " ".join(f"{n:>14s}" for n in names))
        for algo, spec, ratios in summary:
            out(f"  {algo + ' ' + spec:22s} " + " ".join(
                f"{ratios[n]:14.2f}" if n in ratios else f"{'n/a':>14s}" for n in names))
    out(f"\nload average at end (1/5/15 min): {_load()}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
