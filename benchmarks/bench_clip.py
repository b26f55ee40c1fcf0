"""Loss-scale unscale + global-norm clipping: ms_optim against torch's foreach path, on the CPU.

One iteration of a mixed-precision loop between backward and the optimizer
step: ``scaler.unscale_(...)`` (check every gradient for NaN/inf and divide it
by the scale) then ``clip_grad_norm_(..., max_norm)`` (one norm over all
gradients, then scale each), on ``--tensors`` float32 gradients holding
``--elements`` in all. Both sides start every timed iteration from the same
gradient values (restored untimed, so repeated unscaling never drifts into
denormals) and take turns (round robin), so a busy neighbour slows both alike.

Rows: the two operations together, and each alone; columns, three
implementations taking turns (round robin):

* ``one pass``: ms_optim's compiled multi-tensor passes
  (``ms_optim.engine.reductions``: one numba call per bucket for the finite
  check + unscale, one for the norm, one for the clip multiply);
* ``per tensor``: the same calls with the compiled passes switched off
  (``reductions.MIN_ELEMENTS`` past the bucket's size): the NumPy code, one
  BLAS dot / finite check / multiply per gradient, i.e. separate passes;
* ``torch foreach``: ``torch.amp.GradScaler.unscale_`` and
  ``torch.nn.utils.clip_grad_norm_(foreach=True)``.

Ratios: one pass over per tensor, and one pass over torch (below 1 is
faster). None of them fuses the unscale into the optimizer's update (torch's
``fused=True`` optimizers can; that is the optimizer's side, not measured here).

Run (the committed results were made with exactly this)::

    python benchmarks/bench_clip.py --out benchmarks/results/clip-<kind>-<date>.txt
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tensors", type=int, default=200, help="number of gradient arrays (default 200)")
    p.add_argument("--elements", type=float, default=1e7, help="float32 elements in all (default 1e7)")
    p.add_argument("--threads", type=int, default=2, help="threads for torch and BLAS (default 2)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", type=Path, help="also write the report to this file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    from bench_cpu import _load, _set_threads_env, machine_facts

    _set_threads_env(args.threads)
    import numpy as np
    import torch

    import ms_optim
    from ms_optim.amp import GradScaler
    from ms_optim.clipping import clip_grad_norm_

    torch.set_num_threads(args.threads)
    lines: list[str] = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    n = int(args.elements)
    sizes = [n // args.tensors + (1 if i < n % args.tensors else 0) for i in range(args.tensors)]
    rng = np.random.default_rng(0)
    master = [(rng.standard_normal(s) * 65536).astype(np.float32) for s in sizes]

    out(f"ms_optim unscale + clip_grad_norm_ benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    out("command: python benchmarks/bench_clip.py " + " ".join(sys.argv[1:] if argv is None else argv))
    for line in machine_facts(args.threads):
        out(line)
    out(f"data: {args.tensors} float32 gradients, {n:,} elements in all; max_norm=1.0, norm_type=2, scale 65536")
    out(f"method: {args.warmup} warm-up then {args.repeats} timed iterations per implementation, in turns; "
        "gradients restored (untimed) before each; median and min wall time")
    out(f"load average at start (1/5/15 min): {_load()}")

    # ms_optim side
    m_params = [np.zeros(s, np.float32) for s in sizes]
    m_grads = [g.copy() for g in master]
    m_opt = ms_optim.SGD(m_params, lr=0.1)
    m_scaler = GradScaler()
    m_scaler.scale(np.ones((), np.float32))
    # torch side
    t_params = [torch.zeros(s, requires_grad=True) for s in sizes]
    for p, g in zip(t_params, master):
        p.grad = torch.from_numpy(g.copy())
    t_opt = torch.optim.SGD(t_params, lr=0.1)
    t_scaler = torch.amp.GradScaler("cpu")
    t_scaler.scale(torch.ones(()))

    def m_restore():
        for g, src in zip(m_grads, master):
            np.copyto(g, src)

    def t_restore():
        for p, src in zip(t_params, master):
            p.grad.copy_(torch.from_numpy(src))

    def m_reset():
        m_scaler._per_optimizer_states = {}

    def t_reset():
        t_scaler._per_optimizer_states.clear()

    from ms_optim.engine import reductions

    def with_threshold(fn, threshold):
        def run():
            saved = reductions.MIN_ELEMENTS
            reductions.MIN_ELEMENTS = threshold
            try:
                fn()
            finally:
                reductions.MIN_ELEMENTS = saved
        return run

    def m_both():
        m_scaler.unscale_(m_opt, m_grads)
        clip_grad_norm_(m_grads, 1.0)

    m_cases = {
        "unscale_ + clip_grad_norm_": m_both,
        "unscale_ alone": lambda: m_scaler.unscale_(m_opt, m_grads),
        "clip_grad_norm_ alone": lambda: clip_grad_norm_(m_grads, 1.0),
    }
    t_cases = {
        "unscale_ + clip_grad_norm_":
            lambda: (t_scaler.unscale_(t_opt), torch.nn.utils.clip_grad_norm_(t_params, 1.0, foreach=True)),
        "unscale_ alone": lambda: t_scaler.unscale_(t_opt),
        "clip_grad_norm_ alone": lambda: torch.nn.utils.clip_grad_norm_(t_params, 1.0, foreach=True),
    }
    never = 1 << 62
    out()
    out("median ms (min) per call")
    out(f"{'operation':<28} {'one pass':>15} {'per tensor':>15} {'torch foreach':>15} "
        f"{'one/per-tensor':>15} {'one/torch':>10}")
    for label in m_cases:
        impls = (("one", with_threshold(m_cases[label], 0), m_restore, m_reset),
                 ("per", with_threshold(m_cases[label], never), m_restore, m_reset),
                 ("t", t_cases[label], t_restore, t_reset))
        times = {key: [] for key, *_ in impls}
        for i in range(args.warmup + args.repeats):
            for key, fn, restore, reset in impls:
                restore()
                reset()
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
                if i >= args.warmup:
                    times[key].append(elapsed * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        cells = " ".join(f"{med[k]:>8.2f} ({min(times[k]):>5.2f})" for k in ("one", "per", "t"))
        out(f"{label:<28} {cells} {med['one'] / med['per']:>15.2f} {med['one'] / med['t']:>10.2f}")
    # the results agree: same norm, same clipped gradients (to float32 rounding)
    out()
    results = {}
    for key, threshold in (("one pass", 0), ("per tensor", never)):
        m_restore(), m_reset()
        reductions.MIN_ELEMENTS = threshold
        m_scaler.unscale_(m_opt, m_grads)
        results[key] = (float(clip_grad_norm_(m_grads, 1.0)), [g.copy() for g in m_grads])
    reductions.MIN_ELEMENTS = 1 << 18
    t_restore(), t_reset()
    t_scaler.unscale_(t_opt)
    t_norm = float(torch.nn.utils.clip_grad_norm_(t_params, 1.0, foreach=True))
    exact = float(np.sqrt(sum(math.fsum((g.astype(np.float64) / 65536) ** 2) for g in master)))
    for key, (norm, grads) in results.items():
        worst = max(float(np.max(np.abs(g - p.grad.numpy()))) for g, p in zip(grads, t_params))
        out(f"check ({key}): total norm {norm:.9g}, torch {t_norm:.9g}, float64 exact {exact:.9g} "
            f"(relative to torch {abs(norm - t_norm) / t_norm:.1e}, to exact {abs(norm - exact) / exact:.1e}); "
            f"largest gradient difference from torch {worst:.1e}")
    out("not measured: an unscale fused into the optimizer's update pass (torch fused=True with grad_scale); "
        "that is the optimizer's side")
    out(f"load average at end (1/5/15 min): {_load()}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
