"""Step time of the optimizers built on tensor-level stages: Adafactor and Muon, against torch.optim.

Each implementation starts from the same float32 parameters and gradients: the
matrices of a transformer-like model (``bench_cpu.model_shapes``; Adafactor
also gets its vectors, Muon takes matrices only). Implementations take turns
step by step (round robin), so a busy neighbour on a shared machine slows them
all alike; each reports the median of ``--repeats`` timed steps after
``--warmup`` untimed ones (the cpu backend's compile or disk-cache load among
them). torch runs its single-tensor path and, for Adafactor, ``foreach=True``
(torch has no foreach Muon). Muon in torch runs its Newton–Schulz iteration in
bfloat16, ms_optim in float32: the same matrix products, at another precision.

Run (the committed results were made with exactly this)::

    python benchmarks/bench_stages.py --out benchmarks/results/stages-<kind>-<date>.txt
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cpu import _load, _set_threads_env, _size, machine_facts, model_shapes  # noqa: E402


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1M,10M", help="total elements per model, e.g. 1M,10M")
    p.add_argument("--algos", default="adafactor,muon", help="adafactor, muon")
    p.add_argument("--threads", type=int, default=2, help="threads for torch, BLAS and the cpu backend (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--repeats", type=int, default=7, help="timed steps per implementation (default 7)")
    p.add_argument("--out", type=Path, help="also write the report to this file")
    return p.parse_args(argv)


SETTINGS = {
    "adafactor": ("Adafactor", dict(lr=1e-2)),
    "muon": ("Muon", dict(lr=2e-2, weight_decay=0.1)),
}


class _Ours:
    def __init__(self, algo, params, grads, backend):
        import ms_optim

        name, kwargs = SETTINGS[algo]
        self.params = [p.copy() for p in params]
        self.grads = grads
        self.opt = getattr(ms_optim, name)(self.params, backend=backend, **kwargs)

    def step(self):
        self.opt.step(self.grads)


class _Torch:
    def __init__(self, algo, params, grads, foreach):
        import torch

        name, kwargs = SETTINGS[algo]
        self.params = []
        for p, g in zip(params, grads):
            t = torch.tensor(p).requires_grad_(True)
            t.grad = torch.tensor(g)
            self.params.append(t)
        cls = getattr(torch.optim, name)
        flags = {"foreach": foreach} if algo == "adafactor" else {}
        self.opt = cls(self.params, **kwargs, **flags)

    def step(self):
        self.opt.step()


def _impls(algo):
    impls = {"ms_optim eager (NumPy)": lambda a, p, g: _Ours(a, p, g, "eager"),
             "ms_optim cpu (numba)": lambda a, p, g: _Ours(a, p, g, "cpu"),
             "ms_optim default (auto)": lambda a, p, g: _Ours(a, p, g, None),
             "torch single-tensor": lambda a, p, g: _Torch(a, p, g, False)}
    if algo == "adafactor":
        impls["torch foreach=True"] = lambda a, p, g: _Torch(a, p, g, True)
    return impls


def run_case(algo, total, args, out):
    import numpy as np

    shapes = model_shapes(total)
    if algo == "muon":
        shapes = [s for s in shapes if len(s) == 2]
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    n = sum(math.prod(s) for s in shapes)
    built = {label: make(algo, params, grads) for label, make in _impls(algo).items()}
    times = {label: [] for label in built}
    for k in range(args.warmup + args.repeats):
        for label, impl in built.items():  # round robin
            t0 = time.perf_counter()
            impl.step()
            if k >= args.warmup:
                times[label].append(time.perf_counter() - t0)
    out(f"\n{SETTINGS[algo][0]}{SETTINGS[algo][1]}: {len(shapes)} tensors, {n / 1e6:.2f}M float32 elements "
        f"(load {_load()})")
    base = statistics.median(times["torch single-tensor"])
    out(f"  {'implementation':<26} {'ms/step':>9} {'vs torch single-tensor':>24}")
    for label, ts in times.items():
        med = statistics.median(ts)
        out(f"  {label:<26} {med * 1e3:>9.2f} {med / base:>23.2f}x")


def main(argv=None) -> int:
    args = _parse_args(argv)
    _set_threads_env(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    lines = []

    def out(line=""):
        print(line, flush=True)
        lines.append(line)

    for fact in machine_facts(args.threads):
        out(fact)
    out(f"median of {args.repeats} steps after {args.warmup} warm-up steps, implementations in turns")
    for algo in [a.strip() for a in args.algos.split(",") if a.strip()]:
        for size in args.sizes.split(","):
            run_case(algo, _size(size), args, out)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
