"""Loss-scale unscale + global-norm clipping on the CPU: separate passes against fused ones, and torch.

The tail of a mixed-precision iteration, between backward and the next
forward, on float32 gradients (``--models``: how many tensors, how many
elements in all). Two parts:

**1. The passes alone** (``scaler.unscale_``, ``clip_grad_norm_``, both),
three implementations:

* ``one pass``: ms_optim's compiled multi-tensor passes
  (``ms_optim.engine.reductions``: one numba call per bucket for the finite
  check + unscale, one for the norm, one for the clip multiply);
* ``per tensor``: the same calls with the compiled passes switched off
  (``reductions.MIN_ELEMENTS`` past the bucket's size): the NumPy code, one
  BLAS dot / finite check / multiply per gradient;
* ``torch foreach``: ``torch.amp.GradScaler.unscale_`` and
  ``torch.nn.utils.clip_grad_norm_(foreach=True)``.

**2. With the optimizer step** (AdamW, lr 1e-3, weight decay 1e-2, the cpu
backend): the whole tail, ``update()`` included, two ways on ms_optim and
torch's best beside them:

* ``separate``: ``scaler.unscale_(opt, grads)``, ``clip_grad_norm_(grads, 1.0)``,
  ``scaler.step(opt, grads)``: the gradients are rewritten twice (unscale,
  clip) before the update reads them;
* ``fused``: ``scaler.clip_grad_norm_(opt, grads, 1.0)`` (one read: the norm of
  the unscaled gradients and the finite check, nothing written), then
  ``scaler.step(opt, grads)``, whose update reads ``(g / S) * coef``;
* ``torch``: ``unscale_``, ``clip_grad_norm_(foreach=True)`` and ``step`` with
  ``AdamW(fused=True)``;

and the same without the clip (``unscale_`` + ``step`` against ``step``
alone, which fuses the unscale into the update: torch's fused AdamW gets
``grad_scale`` the same way).

Every implementation starts each timed call from the same gradient values
(restored untimed) and they take turns in blocks (``bench_cpu.timed_in_blocks``:
one untimed call, then ``--block`` timed ones), so a busy neighbour slows all
alike and none is timed while another's threads still spin.

Run (the committed results were made with exactly this)::

    python benchmarks/bench_clip.py --out benchmarks/results/clip-<kind>-<date>.txt
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


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="200:1e7,2000:1e6",
                   help="comma-separated TENSORS:ELEMENTS float32 gradient sets (default 200:1e7,2000:1e6)")
    p.add_argument("--threads", type=int, default=2, help="threads for torch, BLAS and ms_optim (default 2)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15, help="timed calls per implementation (default 15)")
    p.add_argument("--block", type=int, default=5, help="timed calls in a row per turn (default 5)")
    p.add_argument("--parts", default="passes,step", help="passes, step or both (default both)")
    p.add_argument("--out", type=Path, help="also write the report to this file")
    return p.parse_args(argv)


def _models(spec: str) -> list[tuple[int, int]]:
    out = []
    for item in spec.split(","):
        tensors, elements = item.split(":")
        out.append((int(tensors), int(float(elements))))
    return out


class Model:
    """One set of float32 gradients (scaled by 65536) with ms_optim and torch copies and their optimizers."""

    SCALE = 65536.0

    def __init__(self, tensors: int, elements: int):
        import numpy as np
        import torch

        import ms_optim

        sizes = [elements // tensors + (1 if i < elements % tensors else 0) for i in range(tensors)]
        rng = np.random.default_rng(0)
        self.master = [(rng.standard_normal(s) * self.SCALE).astype(np.float32) for s in sizes]
        params = [(rng.standard_normal(s) * 0.02).astype(np.float32) for s in sizes]
        self.grads = [g.copy() for g in self.master]
        self.sgd = ms_optim.SGD([np.zeros(s, np.float32) for s in sizes], lr=0.1)  # never stepped: passes only
        self.adamw = ms_optim.AdamW([p.copy() for p in params], lr=1e-3, weight_decay=1e-2, backend="cpu")
        self.t_params = [torch.tensor(p, requires_grad=True) for p in params]
        for p, g in zip(self.t_params, self.master):
            p.grad = torch.tensor(g)
        self.t_sgd = torch.optim.SGD(self.t_params, lr=0.1)
        self.t_adamw = torch.optim.AdamW(self.t_params, lr=1e-3, weight_decay=1e-2, fused=True)
        self.n = elements
        self.tensors = tensors

    def restore(self, side: str) -> None:
        import numpy as np
        import torch

        if side == "t":
            for p, src in zip(self.t_params, self.master):
                p.grad.copy_(torch.from_numpy(src))
        else:
            for g, src in zip(self.grads, self.master):
                np.copyto(g, src)


def passes_part(model: Model, args, out) -> None:
    import numpy as np
    import torch

    from ms_optim.amp import GradScaler
    from ms_optim.clipping import clip_grad_norm_
    from ms_optim.engine import reductions

    from bench_cpu import timed_in_blocks

    m_scaler, t_scaler = GradScaler(), torch.amp.GradScaler("cpu")
    m_scaler.scale(np.ones((), np.float32))
    t_scaler.scale(torch.ones(()))
    grads, opt, t_opt, t_params = model.grads, model.sgd, model.t_sgd, model.t_params

    def reset(side):
        model.restore("t" if side == "t" else "m")
        if side == "t":
            t_scaler._per_optimizer_states.clear()
        else:
            m_scaler._per_optimizer_states = {}

    def threshold(fn, value):
        def run():
            saved = reductions.MIN_ELEMENTS
            reductions.MIN_ELEMENTS = value
            try:
                fn()
            finally:
                reductions.MIN_ELEMENTS = saved
        return run

    m_cases = {
        "unscale_ + clip_grad_norm_": lambda: (m_scaler.unscale_(opt, grads), clip_grad_norm_(grads, 1.0)),
        "unscale_ alone": lambda: m_scaler.unscale_(opt, grads),
        "clip_grad_norm_ alone": lambda: clip_grad_norm_(grads, 1.0),
    }
    t_cases = {
        "unscale_ + clip_grad_norm_":
            lambda: (t_scaler.unscale_(t_opt), torch.nn.utils.clip_grad_norm_(t_params, 1.0, foreach=True)),
        "unscale_ alone": lambda: t_scaler.unscale_(t_opt),
        "clip_grad_norm_ alone": lambda: torch.nn.utils.clip_grad_norm_(t_params, 1.0, foreach=True),
    }
    never = 1 << 62
    out(f"\n1. the passes alone: {model.tensors} float32 gradients, {model.n:,} elements; median ms (min) per call")
    out(f"  {'operation':<28} {'one pass':>15} {'per tensor':>15} {'torch foreach':>15} "
        f"{'one/per-tensor':>15} {'one/torch':>10}")
    for label in m_cases:
        runners = {"one": threshold(m_cases[label], 0), "per": threshold(m_cases[label], never), "t": t_cases[label]}
        for fn in runners.values():
            for _ in range(args.warmup):
                reset("t" if fn is runners["t"] else "m")
                fn()
        times = timed_in_blocks(runners, args.repeats, args.block, before=lambda name: reset(name))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        cells = " ".join(f"{med[k]:>8.2f} ({min(times[k]) * 1e3:>5.2f})" for k in ("one", "per", "t"))
        out(f"  {label:<28} {cells} {med['one'] / med['per']:>15.2f} {med['one'] / med['t']:>10.2f}")
    # the results agree: same norm, same clipped gradients (to float32 rounding)
    results = {}
    for key, value in (("one pass", 0), ("per tensor", never)):
        reset("m")
        saved, reductions.MIN_ELEMENTS = reductions.MIN_ELEMENTS, value
        try:
            m_scaler.unscale_(opt, grads)
            results[key] = (float(clip_grad_norm_(grads, 1.0)), [g.copy() for g in grads])
        finally:
            reductions.MIN_ELEMENTS = saved
    reset("t")
    t_scaler.unscale_(t_opt)
    t_norm = float(torch.nn.utils.clip_grad_norm_(t_params, 1.0, foreach=True))
    exact = float(np.sqrt(sum(math.fsum((g.astype(np.float64) / Model.SCALE) ** 2) for g in model.master)))
    for key, (norm, clipped) in results.items():
        worst = max(float(np.max(np.abs(g - p.grad.numpy()))) for g, p in zip(clipped, t_params))
        out(f"  check ({key}): total norm {norm:.9g}, torch {t_norm:.9g}, float64 exact {exact:.9g} "
            f"(relative to torch {abs(norm - t_norm) / t_norm:.1e}, to exact {abs(norm - exact) / exact:.1e}); "
            f"largest gradient difference from torch {worst:.1e}")


def step_part(model: Model, args, out) -> None:
    import numpy as np
    import torch

    from ms_optim.amp import GradScaler
    from ms_optim.clipping import clip_grad_norm_

    from bench_cpu import timed_in_blocks

    # growth_interval past the run: the scale stays put, so every call does the same work
    m_scaler = GradScaler(growth_interval=1 << 30)
    t_scaler = torch.amp.GradScaler("cpu", growth_interval=1 << 30)
    opt, grads, t_opt, t_params = model.adamw, model.grads, model.t_adamw, model.t_params

    def m_scale():
        m_scaler.scale(np.ones((), np.float32))

    def t_scale():
        t_scaler.scale(torch.ones(()))

    def m_separate_clip():
        m_scale()
        m_scaler.unscale_(opt, grads)
        clip_grad_norm_(grads, 1.0)
        m_scaler.step(opt, grads)
        m_scaler.update()

    def m_fused_clip():
        m_scale()
        m_scaler.clip_grad_norm_(opt, grads, 1.0)
        m_scaler.step(opt, grads)
        m_scaler.update()

    def t_clip():
        t_scale()
        t_scaler.unscale_(t_opt)
        torch.nn.utils.clip_grad_norm_(t_params, 1.0, foreach=True)
        t_scaler.step(t_opt)
        t_scaler.update()

    def m_separate():
        m_scale()
        m_scaler.unscale_(opt, grads)
        m_scaler.step(opt, grads)
        m_scaler.update()

    def m_fused():
        m_scale()
        m_scaler.step(opt, grads)
        m_scaler.update()

    def t_plain():
        t_scale()
        t_scaler.step(t_opt)
        t_scaler.update()

    rows = {
        "unscale + clip + AdamW step": {"separate": m_separate_clip, "fused": m_fused_clip, "t": t_clip},
        "unscale + AdamW step": {"separate": m_separate, "fused": m_fused, "t": t_plain},
    }
    out(f"\n2. with the optimizer step (AdamW, cpu backend; torch AdamW fused=True): {model.tensors} float32 "
        f"gradients, {model.n:,} elements; median ms (min) per iteration tail, update() included")
    out(f"  {'iteration tail':<28} {'separate':>15} {'fused':>15} {'torch':>15} "
        f"{'fused/separate':>15} {'fused/torch':>12}")
    for label, runners in rows.items():
        for name, fn in runners.items():
            for _ in range(args.warmup):
                model.restore("t" if name == "t" else "m")
                fn()
        times = timed_in_blocks(runners, args.repeats, args.block,
                                before=lambda name: model.restore("t" if name == "t" else "m"))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        cells = " ".join(f"{med[k]:>8.2f} ({min(times[k]) * 1e3:>5.2f})" for k in ("separate", "fused", "t"))
        out(f"  {label:<28} {cells} {med['fused'] / med['separate']:>15.2f} {med['fused'] / med['t']:>12.2f}")
    # the two ms_optim ways compute the same step, bit for bit (tests/test_amp.py checks it on every path)
    same = []
    for fused in (False, True):
        import ms_optim

        params = [p.detach().numpy().copy() for p in model.t_params[:3]]
        o = ms_optim.AdamW(params, lr=1e-3, weight_decay=1e-2, backend="cpu")
        s = GradScaler()
        s.scale(np.ones((), np.float32))
        g = [x.copy() for x in model.master[:3]]
        if fused:
            s.clip_grad_norm_(o, g, 1.0)
        else:
            s.unscale_(o, g)
            clip_grad_norm_(g, 1.0)
        s.step(o, g)
        same.append([p.tobytes() for p in params])
    out(f"  check: separate and fused give the same parameters bit for bit: {same[0] == same[1]}")


def main(argv=None) -> int:
    args = _parse_args(argv)
    from bench_cpu import _load, _set_threads_env, machine_facts

    _set_threads_env(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    lines: list[str] = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    parts = {p.strip() for p in args.parts.split(",")}
    out(f"ms_optim unscale + clip_grad_norm_ benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    out("command: python benchmarks/bench_clip.py " + " ".join(sys.argv[1:] if argv is None else argv))
    for line in machine_facts(args.threads):
        out(line)
    out(f"data: float32 gradients scaled by 65536 (--models {args.models}); max_norm=1.0, norm_type=2")
    out(f"method: {args.warmup} warm-up calls, then {args.repeats} timed calls per implementation, in turns of "
        f"1 untimed + {args.block} timed; gradients restored (untimed) before each call; median and min wall time")
    out(f"load average at start (1/5/15 min): {_load()}")
    for tensors, elements in _models(args.models):
        model = Model(tensors, elements)
        if "passes" in parts:
            passes_part(model, args, out)
        if "step" in parts:
            step_part(model, args, out)
        del model
    out(f"\nload average at end (1/5/15 min): {_load()}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
