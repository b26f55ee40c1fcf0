"""The demo's checkpoints: :mod:`ms_optim.checkpoint` files whose ``extra`` holds the run.

``extra`` is ``{"format": "ms_optim.demo/2", "config": {...}, "step": n, "params": [arrays],
"history": {"loss": array, "lr": array}}``; the optimizer and scheduler are the checkpoint's
own. Files of the demo's first format (``ms_optim.demo/1``, one JSON tree in an npz) are
read too. Everything is checked before a run is built from it: a bad file is one line
naming the file and the field, never a traceback, never a flag the user did not pass.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, fields, replace

import numpy as np

from .. import checkpoint as _checkpoint
from . import choices, mlp
from .data import N_CLASSES, N_FEATURES
from .errors import DemoError

FORMAT = "ms_optim.demo/2"
LEGACY_FORMAT = "ms_optim.demo/1"
# Fields of TrainConfig, and how a checkpoint must spell each (the CLI's types).
_MAX_STEPS = 10**9
_MAX_WIDTH = 1 << 16


@dataclass
class SavedRun:
    """A demo checkpoint, checked: what ``Run.from_saved`` continues from."""

    path: str
    config: object  # TrainConfig
    step: int
    params: list  # NumPy arrays, the model's shapes and dtype
    loss: list[float]
    lr: list[float]
    checkpoint: _checkpoint.Checkpoint

    def fail(self, message: str) -> DemoError:
        return DemoError(f"checkpoint {self.path}: {message}")


def save(path: str, run) -> None:
    """Write ``run`` (a ``train.Run``) to ``path`` atomically."""
    extra = {
        "format": FORMAT,
        "config": run.config.to_dict(),
        "step": run.step,
        "params": list(run.params),
        "history": {
            "loss": np.asarray(run.history.loss, dtype=np.float64),
            "lr": np.asarray(run.history.lr, dtype=np.float64),
        },
    }
    try:
        _checkpoint.save(path, run.optimizer, run.scheduler, extra=extra)
    except OSError as err:
        raise DemoError(f"cannot write checkpoint {path}: {err.strerror or err}") from None


def check_writable(path: str) -> None:
    """Raise ``DemoError`` now if ``--save path`` could not be written at the end."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise DemoError(f"--save {path}: is a folder, not a file name")
    if not os.path.isdir(folder):
        raise DemoError(f"--save {path}: the folder {folder} does not exist")
    try:  # a real file, not os.access: ACLs, read-only mounts and root all answer truthfully
        with tempfile.TemporaryFile(dir=folder, prefix=".ms-optim-probe-"):
            pass
    except OSError as err:
        raise DemoError(f"--save {path}: cannot write in {folder}: {err.strerror or err}") from None


def load(path: str) -> SavedRun:
    """Read and check the demo checkpoint at ``path``; any problem is a one-line ``DemoError``."""
    try:
        ck = _checkpoint.read(path)
    except OSError as err:
        raise DemoError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    except (ValueError, TypeError) as err:
        raise DemoError(f"cannot read checkpoint {path}: {_without_path(str(err), path)}") from None
    return _checked(ck, path)


def _without_path(message: str, path: str) -> str:
    for prefix in (f"{path}: ", f"{path} "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _checked(ck: _checkpoint.Checkpoint, path: str) -> SavedRun:
    from .train import DTYPES, TrainConfig

    def fail(message):
        return DemoError(f"checkpoint {path}: {message}")

    extra = ck.extra
    expected = LEGACY_FORMAT if ck.version[0] == 0 else FORMAT
    if extra.get("format") != expected:
        raise fail(f"not a demo checkpoint (format {extra.get('format')!r}, expected {expected!r})")
    for key in ("config", "step", "params", "history"):
        if key not in extra:
            raise fail(f"lacks the field {key!r}")

    config = _checked_config(extra["config"], fail, TrainConfig, DTYPES)
    step = extra["step"]
    if not _is_int(step) or not 0 <= step <= config.steps:
        raise fail(f"field 'step' must be an int in [0, config.steps={config.steps}], got {step!r}")
    step = int(step)

    # The model: shapes from the config, checked before anything is allocated for it.
    sizes = mlp.layer_sizes(N_FEATURES, config.hidden, N_CLASSES)
    shapes = [s for a, b in zip(sizes[:-1], sizes[1:]) for s in ((a, b), (b,))]
    params = extra["params"]
    if not isinstance(params, (list, tuple)) or len(params) != len(shapes):
        got = f"{len(params)} entries" if isinstance(params, (list, tuple)) else type(params).__name__
        raise fail(f"field 'params' must be a list of {len(shapes)} arrays for hidden={_show(config.hidden)}, got {got}")
    for i, (p, shape) in enumerate(zip(params, shapes)):
        if not isinstance(p, np.ndarray):
            raise fail(f"params[{i}] must be an array, got {type(p).__name__}")
        if p.dtype.name != config.dtype:
            raise fail(f"params[{i}] has dtype {p.dtype}; the run's config.dtype is {config.dtype}")
        if tuple(p.shape) != shape:
            raise fail(f"params[{i}] has shape {tuple(p.shape)}; the model needs {shape}")
        if not np.isfinite(p).all():
            raise fail(f"params[{i}] holds non-finite values")

    history = extra["history"]
    if not isinstance(history, dict) or set(history) != {"loss", "lr"}:
        raise fail("field 'history' must be a dict with exactly 'loss' and 'lr'")
    curves = {}
    for key in ("loss", "lr"):
        values = history[key]
        if isinstance(values, np.ndarray):
            if values.ndim != 1 or values.dtype.kind != "f":
                raise fail(f"history.{key} must be a 1-d float array, got {values.dtype} of shape {values.shape}")
            values = values.tolist()
        if not isinstance(values, (list, tuple)) or not all(_is_number(v) for v in values):
            raise fail(f"history.{key} must be a list of numbers")
        if len(values) != step:
            raise fail(f"history.{key} has {len(values)} values for step {step}")
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v) or (key == "lr" and v < 0)), None)
        if bad is not None:
            raise fail(f"history.{key}[{bad}] is {values[bad]!r}")
        curves[key] = [float(v) for v in values]

    # The optimizer and scheduler the config builds must be the ones saved.
    cls = choices.optimizer_class(config.optimizer).__name__
    if ck.optimizer_class is not None and ck.optimizer_class != cls:
        raise fail(f"config.optimizer is {config.optimizer!r} but the optimizer state is a {ck.optimizer_class}'s")
    if (config.scheduler == "constant") != (ck.scheduler_state is None):
        raise fail(
            f"config.scheduler is {config.scheduler!r} but the file holds "
            + ("a scheduler state" if ck.scheduler_state is not None else "no scheduler state")
        )
    _check_run_state(ck, step, fail)
    ck = replace(ck, optimizer_class=cls)  # the old format did not record it: check it all the same
    return SavedRun(path, config, step, list(params), curves["loss"], curves["lr"], ck)


def _check_run_state(ck, step: int, fail) -> None:
    """The demo's own rules: every parameter gets a gradient every step, and a diverged run is
    never saved, so every state's step is the run's and every state array is finite."""
    state = ck.optimizer_state.get("state") if isinstance(ck.optimizer_state, dict) else None
    if isinstance(state, dict):
        for pid, st in state.items():
            if not isinstance(st, dict):
                continue  # ms_optim.checkpoint names this one
            if "step" in st and _is_number(st["step"]) and float(st["step"]) != step:
                raise fail(f"optimizer state of parameter {pid} is at step {st['step']!r}, the run at step {step}")
            for key, value in st.items():
                if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
                    raise fail(f"optimizer state [{pid!r}][{key!r}] holds non-finite values")
    sched = ck.scheduler_state
    if isinstance(sched, dict) and "last_epoch" in sched and _is_number(sched["last_epoch"]):
        if sched["last_epoch"] != step:
            raise fail(f"scheduler state is at step {sched['last_epoch']!r}, the run at step {step}")


def _checked_config(saved, fail, TrainConfig, DTYPES):
    names = [f.name for f in fields(TrainConfig)]
    if not isinstance(saved, dict):
        raise fail(f"field 'config' must be a dict, got {type(saved).__name__}")
    # clip_grad_norm is newer than the first checkpoints: absent means no clipping
    missing = [n for n in names if n not in saved and n != "clip_grad_norm"]
    unknown = sorted(str(k) for k in saved if k not in names)
    if missing:
        raise fail(f"config lacks {', '.join(missing)}")
    if unknown:
        raise fail(f"config has unknown field(s) {', '.join(unknown)}")
    c = {"clip_grad_norm": None, **saved}

    def need(ok, field, what):
        if not ok:
            raise fail(f"config.{field} must be {what}, got {c[field]!r}")

    need(isinstance(c["optimizer"], str) and c["optimizer"].lower() in choices.optimizer_classes(), "optimizer",
         f"one of {', '.join(choices.optimizer_classes())}")
    need(c["lr"] is None or (_is_number(c["lr"]) and math.isfinite(c["lr"]) and c["lr"] > 0), "lr", "a positive number or null")
    need(isinstance(c["scheduler"], str) and c["scheduler"] in choices.SCHEDULERS, "scheduler",
         f"one of {', '.join(choices.SCHEDULERS)}")
    need(_is_int(c["steps"]) and 1 <= c["steps"] <= _MAX_STEPS, "steps", f"an int in [1, {_MAX_STEPS}]")
    need(c["warmup"] is None or (_is_int(c["warmup"]) and 0 <= c["warmup"] < c["steps"]), "warmup",
         f"null or an int in [0, config.steps={c['steps']})")
    need(_is_int(c["batch_size"]) and c["batch_size"] >= 1, "batch_size", "an int >= 1")
    need(_is_int(c["seed"]) and 0 <= c["seed"] < 2**63, "seed", "an int >= 0")
    hidden = c["hidden"]
    need(isinstance(hidden, (list, tuple)) and 0 < len(hidden) <= 16 and all(_is_int(h) and 1 <= h <= _MAX_WIDTH for h in hidden),
         "hidden", f"a list of 1 to 16 layer widths in [1, {_MAX_WIDTH}]")
    need(c["dtype"] in DTYPES, "dtype", f"one of {', '.join(DTYPES)}")
    need(c["clip_grad_norm"] is None or (_is_number(c["clip_grad_norm"]) and math.isfinite(c["clip_grad_norm"])
                                         and c["clip_grad_norm"] > 0), "clip_grad_norm", "a positive number or null")
    c["clip_grad_norm"] = None if c["clip_grad_norm"] is None else float(c["clip_grad_norm"])
    c["optimizer"] = c["optimizer"].lower()
    c["hidden"] = tuple(int(h) for h in hidden)
    c["lr"] = None if c["lr"] is None else float(c["lr"])
    for k in ("steps", "batch_size", "seed"):
        c[k] = int(c[k])
    c["warmup"] = None if c["warmup"] is None else int(c["warmup"])
    config = TrainConfig(**c)
    config.validate(name=lambda field: f"config.{field}", fail=fail)
    return config


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
