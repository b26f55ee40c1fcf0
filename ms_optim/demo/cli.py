"""``ms-optim demo``: the command line. Parses options, runs, and reports in plain text.

Every problem a user can cause (a bad option, no GPU, an unreadable checkpoint, a
diverged run) ends with one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading

from . import checkpoint, choices
from .data import N_CLASSES, N_FEATURES
from .device import DEVICES, select_backend
from .errors import DemoError
from .plot import require_matplotlib, write_plot
from .progress import ProgressBar
from .train import DTYPES, History, Run, TrainConfig

PROG = "ms-optim demo"
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

# Options that decide a run's numbers; on --resume they come from the checkpoint.
CONFIG_OPTIONS = ("optimizer", "lr", "scheduler", "steps", "warmup", "batch_size", "seed", "hidden", "dtype",
                  "clip_grad_norm")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage first)."""

    def error(self, message):
        raise _UsageError(f"{message} (see {PROG} --help)")


class _UsageError(Exception):
    pass


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _lr(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _hidden(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths like 128 or 256,128, got {text!r}") from None
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return widths


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = _Parser(
        prog=PROG,
        description=(
            f"Train a small MLP ({N_FEATURES}-{'-'.join(map(str, d.hidden))}-{N_CLASSES}) on the 1,797 8x8 "
            "handwritten digits embedded in the package, with an ms_optim optimizer and scheduler. "
            "The forward and backward passes are plain Array API code: NumPy on the CPU, CuPy on a GPU."
        ),
        epilog="Example: ms-optim demo --compare adamw,sgd,radam --plot curves.png",
    )
    p.add_argument("--optimizer", type=str.lower, metavar="NAME", help=f"any ms_optim optimizer (default {d.optimizer}); see --list")
    p.add_argument("--lr", type=_lr, help="learning rate (default: a per-optimizer value that suits this problem)")
    p.add_argument("--scheduler", choices=list(choices.SCHEDULERS), help=f"lr schedule (default {d.scheduler})")
    p.add_argument("--warmup", type=_non_negative_int, metavar="N", help="warmup steps for warmup-cosine (default 5%% of --steps)")
    p.add_argument("--steps", type=_positive_int, metavar="N", help=f"training steps, the schedule's length (default {d.steps})")
    p.add_argument("--batch-size", type=_positive_int, metavar="N", help=f"minibatch size (default {d.batch_size})")
    p.add_argument("--hidden", type=_hidden, metavar="W[,W...]", help=f"hidden layer widths (default {','.join(map(str, d.hidden))})")
    p.add_argument("--clip-grad-norm", type=_lr, metavar="MAX",
                   help="clip the gradients' global 2-norm to MAX before each step (default: no clipping)")
    p.add_argument("--dtype", choices=DTYPES, help=f"parameter and data dtype (default {d.dtype})")
    p.add_argument("--seed", type=_non_negative_int, help=f"seed for the split, the initial weights and the batches (default {d.seed})")
    p.add_argument("--device", choices=DEVICES, default="auto", help="cpu (NumPy), gpu (CuPy) or auto: the GPU when CuPy sees one (default auto)")
    p.add_argument("--compare", metavar="A,B,...", help="train each optimizer on the same data and print a table; 'all' for every one")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the loss and lr curves (needs matplotlib)")
    p.add_argument("--save", metavar="PATH", help="write a checkpoint at the end (or on Ctrl-C) to resume from")
    p.add_argument("--resume", metavar="PATH", help="continue a run from a checkpoint written by --save")
    p.add_argument("--until", type=_positive_int, metavar="STEP", help="stop after this step; the schedule still spans --steps")
    p.add_argument("--distributed", action="store_true",
                   help="train data-parallel over the MPI ranks (mpiexec -n 2 ... demo --distributed): each rank a "
                        "slice of every batch, gradients averaged, optimizer state sharded (ZeRO-1); NumPy only, "
                        "needs mpi4py; rank 0 prints")
    p.add_argument("--list", action="store_true", help="list the optimizers and schedulers, then exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    """Run the demo with ``argv`` (default ``sys.argv[2:]``); return the exit code."""
    argv = sys.argv[2:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as err:
        return _fail(str(err), EXIT_USAGE)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        with _single_threaded_blas():
            return _run(args)
    except DemoError as err:
        return _fail(str(err), EXIT_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except Exception as err:
        if os.environ.get("MS_OPTIM_DEBUG"):
            raise
        return _fail(f"internal error: {type(err).__name__}: {err} (set MS_OPTIM_DEBUG=1 for the traceback)", EXIT_ERROR)


def _single_threaded_blas():
    """Limit NumPy's BLAS to one thread while the demo runs, when threadpoolctl is installed.

    The demo's matrices are tiny (64 x 128): a second BLAS thread only adds synchronisation,
    and on a busy machine spinning BLAS threads made each step 20x slower (0.6 -> 12 ms).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


#: under --distributed, ranks other than 0 print nothing (their errors are rank 0's too)
_SILENT = {"on": False}


def _fail(message: str, code: int) -> int:
    if not _SILENT["on"]:
        print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _mpi_world(args):
    """``(comm, rank)`` for --distributed (or ``(None, 0)``); ranks but 0 have stdout silenced."""
    if not args.distributed:
        return None, 0
    try:
        from mpi4py import MPI
    except ImportError:
        raise DemoError("--distributed needs mpi4py and an MPI: pip install mpi4py mpich, then "
                        "mpiexec -n 2 python -m ms_optim demo --distributed") from None
    comm = MPI.COMM_WORLD
    if comm.Get_rank() != 0:
        _SILENT["on"] = True
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- for the life of this process
    for bad in ("compare", "save", "resume", "plot"):
        if getattr(args, bad) is not None:
            raise DemoError(f"--distributed cannot be combined with --{bad}")
    if args.device == "gpu":
        raise DemoError("--distributed runs on the CPU (NumPy over MPI); drop --device gpu")
    return comm, comm.Get_rank()


def _run(args) -> int:
    if args.list:
        _print_list()
        return 0
    given = {k: getattr(args, k) for k in CONFIG_OPTIONS if getattr(args, k) is not None}
    comm, rank = _mpi_world(args)
    if rank != 0:
        args.quiet = True  # the progress bar is rank 0's
    if args.plot:
        require_matplotlib()  # say so now, not after the training
    if args.compare:
        for bad in ("optimizer", "save", "resume", "until"):
            if getattr(args, bad) is not None:
                raise DemoError(f"--compare cannot be combined with --{bad}")
        names = _compare_names(args.compare)
        config = TrainConfig(**given)
        config.validate()  # a bad shared option fails before any training
        backend = select_backend(args.device)
        return _compare(names, config, backend, args)

    if args.save:
        checkpoint.check_writable(args.save)  # say so now, not after the training
    backend = select_backend("cpu" if comm is not None else args.device)
    if args.resume:
        saved = checkpoint.load(args.resume)
        for k, v in given.items():
            have = getattr(saved.config, k)
            if _normal(have) != _normal(v):
                raise DemoError(
                    f"--{k.replace('_', '-')} {_show(v)} differs from the checkpoint's {_show(have)}; "
                    "drop it to continue the saved run"
                )
        run = Run.from_saved(saved, backend.xp, backend.device)
    else:
        run = Run(TrainConfig(**given), backend.xp, backend.device, comm=comm)

    config = run.config
    if args.until is not None and args.until <= run.step:
        raise DemoError(f"--until {args.until} is not after the checkpoint's step {run.step}")
    _print_header(run, backend.label)
    if comm is not None:
        print(f"data-parallel over {comm.Get_size()} MPI ranks: each takes a slice of every batch, gradients "
              f"averaged (all_reduce_mean), optimizer state sharded (ZeroRedundancyOptimizer)")
    if run.step:
        print(f"resuming at step {run.step} from {args.resume}")
    history, interrupted = _train_with_progress(run, args.until, args.quiet, label="")
    print(_final_line(history, run.step, config.steps))
    if args.save:
        checkpoint.save(args.save, run)
        print(f"checkpoint at step {run.step} saved to {args.save}" + (f" (continue with --resume {args.save})" if run.step < config.steps else ""))
    if args.plot:
        title = f"{run.optimizer.__class__.__name__}, {config.scheduler}, {run.step} steps: test accuracy {100 * history.test_accuracy:.2f}%"
        write_plot(args.plot, {config.optimizer: history}, title)
        print(f"plot saved to {args.plot}")
    if interrupted:
        print(f"{PROG}: interrupted at step {run.step}/{config.steps}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _normal(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _compare_names(text: str) -> list[str]:
    available = choices.optimizer_classes()
    if text.strip().lower() == "all":
        return list(available)
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise DemoError("--compare needs a comma-separated list of optimizers, e.g. adamw,sgd")
    for n in names:
        choices.optimizer_class(n)
    return list(dict.fromkeys(names))


def _train_with_progress(run: Run, until, quiet: bool, label: str) -> tuple[History, bool]:
    """Train, drawing the bar; the first Ctrl-C stops cleanly after the current step."""
    stop = {"requested": False}
    bar = None if quiet else ProgressBar(run.config.steps if until is None else min(until, run.config.steps), label=label)

    def on_step(step, loss, lr):
        if bar is not None:
            bar.update(step, loss, lr)
        return stop["requested"]

    def on_sigint(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    try:
        history = run.train(until=until, on_step=on_step)
    finally:
        if bar is not None:
            bar.close()
        if in_main:
            signal.signal(signal.SIGINT, previous)
    return history, stop["requested"]


def _print_header(run: Run, backend_label: str) -> None:
    c, data = run.config, run.data
    sizes = "-".join(map(str, run.sizes))
    print(f"ms_optim demo: MLP {sizes} on 8x8 digits ({data.n_train} train / {data.n_test} test), {backend_label}, {c.dtype}")
    sched = c.scheduler
    if c.scheduler == "warmup-cosine":
        sched += f" ({choices.default_warmup(c.steps) if c.warmup is None else c.warmup} warmup steps)"
    print(f"{_optimizer_text(run)}, {sched}, {c.steps} steps of batch {c.batch_size}, seed {c.seed}")


def _optimizer_text(run: Run) -> str:
    args = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in run.settings.items())
    inner = getattr(run.optimizer, "optimizer_class", None)  # ZeroRedundancyOptimizer(AdamW, ...)
    if inner is not None:
        args = ", ".join([inner.__name__, *filter(None, [args])])
    return f"{run.optimizer.__class__.__name__}({args})"


def _final_line(h: History, step: int, steps: int) -> str:
    where = "done" if step >= steps else f"stopped at step {step}/{steps}"
    line = f"{where}: test accuracy {100 * h.test_accuracy:.2f}% ({h.test_correct}/{h.n_test}), train loss {h.train_loss:.4f}"
    if h.timed_steps:
        line += f", {1e3 * h.seconds_per_step:.3f} ms/step ({h.timed_steps} steps in {h.train_seconds:.2f} s)"
    else:
        line += " (no steps left to take)"
    return line


def _compare(names: list[str], config: TrainConfig, backend, args) -> int:
    c = config
    print(
        f"ms_optim demo --compare: MLP on 8x8 digits, {backend.label}, {c.dtype}, {c.scheduler}, "
        f"{c.steps} steps of batch {c.batch_size}, seed {c.seed}"
    )
    rows, histories, interrupted = [], {}, False
    width = max(len(n) for n in names)
    for name in names:
        cfg = TrainConfig(**{**config.to_dict(), "optimizer": name})
        try:
            run = Run(cfg, backend.xp, backend.device)
            settings = _optimizer_text(run)
            h, interrupted = _train_with_progress(run, None, args.quiet, label=f"{name:<{width}} ")
        except DemoError as err:
            rows.append((name, "", None, None, None, str(err)))
            continue
        histories[name] = h
        rows.append((name, settings, h.train_loss, h.test_accuracy, h.seconds_per_step, ""))
        if interrupted:
            break
    print(format_table(rows))
    if args.plot and histories:
        write_plot(args.plot, histories, f"ms_optim demo: {c.scheduler}, {c.steps} steps, seed {c.seed}")
        print(f"plot saved to {args.plot}")
    if interrupted:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if any(r[2] is not None for r in rows) else EXIT_ERROR


def format_table(rows) -> str:
    """Rows of (name, settings, final train loss, test accuracy, seconds/step, note) as text."""
    head = ("optimizer", "settings", "final loss", "test acc", "ms/step")
    cells = [head]
    for name, settings, loss, acc, sps, note in rows:
        if loss is None:
            cells.append((name, note, "-", "-", "-"))
        else:
            cells.append((name, settings, f"{loss:.4f}", f"{100 * acc:.2f}%", f"{1e3 * sps:.3f}"))
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = []
    for r in cells:
        left = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        right = [r[i].rjust(widths[i]) for i in range(2, len(head))]
        lines.append("  ".join(left + right).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _print_list() -> None:
    print("optimizers (--optimizer, --compare):")
    for name, cls in choices.optimizer_classes().items():
        settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in choices.optimizer_settings(name).items())
        print(f"  {name:<10} {cls.__name__}" + (f"({settings})" if settings else ""))
    print("schedulers (--scheduler):")
    for name, text in choices.SCHEDULERS.items():
        print(f"  {name:<14} {text}")
