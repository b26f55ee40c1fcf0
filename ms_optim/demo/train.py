"""The demo's training loop: an MLP on the digits with an ms_optim optimizer and scheduler.

``Run`` holds one run's state (parameters, optimizer, scheduler, step, history) on one
array namespace; ``Run.train`` advances it and returns the ``History``. A run is a pure
function of its ``TrainConfig``: the split, the initial weights and every minibatch come
from the seed, so two runs with one config agree bit for bit on the CPU, and a run saved
with ``checkpoint.save`` and rebuilt with ``Run.from_saved`` continues exactly as if it
had never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..clipping import clip_grad_norm_
from . import choices, mlp
from .data import N_CLASSES, N_FEATURES, BatchSampler, Dataset, load_dataset
from .errors import DemoError

DTYPES = ("float32", "float64")


@dataclass
class TrainConfig:
    """Everything that decides a run's numbers. ``lr=None`` takes the optimizer's demo default."""

    optimizer: str = "adamw"
    lr: float | None = None
    scheduler: str = "warmup-cosine"
    steps: int = 1000
    warmup: int | None = None  # warmup-cosine only; None: 5% of the steps
    batch_size: int = 64
    seed: int = 0
    hidden: tuple[int, ...] = (128,)
    dtype: str = "float32"
    #: clip the gradients' global 2-norm to this before each step (ms_optim.clip_grad_norm_); None: no clipping
    clip_grad_norm: float | None = None

    def validate(self, name=None, fail=DemoError) -> None:
        """Raise ``fail(message)`` naming the first bad field.

        ``name(field)`` is how the message names a field: by default the CLI flag
        (``--batch-size``); a checkpoint's values are named as its fields (``config.batch_size``),
        so that an error never blames a flag the user did not pass.
        """
        name = name or _flag
        choices.optimizer_class(self.optimizer)
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise fail(f"{name('lr')} must be a positive number, got {self.lr}")
        if self.clip_grad_norm is not None and not (math.isfinite(self.clip_grad_norm) and self.clip_grad_norm > 0):
            raise fail(f"{name('clip_grad_norm')} must be a positive number, got {self.clip_grad_norm}")
        if self.scheduler not in choices.SCHEDULERS:
            raise fail(f"unknown scheduler {self.scheduler!r}; choose from {', '.join(choices.SCHEDULERS)}")
        if self.steps < 1:
            raise fail(f"{name('steps')} must be at least 1, got {self.steps}")
        if self.warmup is not None and not 0 <= self.warmup < self.steps:
            raise fail(f"{name('warmup')} must be in [0, steps), got {self.warmup} with {name('steps')} {self.steps}")
        if self.batch_size < 1:
            raise fail(f"{name('batch_size')} must be at least 1, got {self.batch_size}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise fail(f"{name('hidden')} must be positive layer widths, got {','.join(map(str, self.hidden))}")
        if self.dtype not in DTYPES:
            raise fail(f"{name('dtype')} must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


@dataclass
class History:
    """What a run did: the minibatch loss and the lr used at every step, and final metrics."""

    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    train_seconds: float = 0.0  # wall time of the steps taken in this process
    timed_steps: int = 0  # how many steps train_seconds covers
    train_loss: float | None = None  # mean loss over the whole training set at the end
    test_accuracy: float | None = None
    test_correct: int | None = None
    n_test: int | None = None

    @property
    def steps(self) -> int:
        return len(self.loss)

    @property
    def seconds_per_step(self) -> float:
        return self.train_seconds / self.timed_steps if self.timed_steps else float("nan")


def _quiet_fp():
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


class Run:
    """One training run on namespace ``xp``: build it, ``train`` it, save it with ``checkpoint.save``."""

    def __init__(self, config: TrainConfig, xp, device=None, data: Dataset | None = None, *, name=None, fail=DemoError,
                 comm=None):
        # name/fail: how errors name a field and what they raise (TrainConfig.validate)
        # comm: an MPI communicator to train data-parallel over (each rank a slice of every batch)
        config.validate(name, fail)
        self.comm = comm
        self.config, self.xp, self.device = config, xp, device
        self.dtype = getattr(xp, config.dtype)
        self.data = data if data is not None else load_dataset(xp, seed=config.seed, dtype=self.dtype, device=device)
        if config.batch_size > self.data.n_train:
            raise fail(
                f"{(name or _flag)('batch_size')} must be at most {self.data.n_train} (the training set), "
                f"got {config.batch_size}"
            )
        self.sizes = mlp.layer_sizes(N_FEATURES, config.hidden, N_CLASSES)
        self.params = mlp.init_params(self.sizes, xp, seed=config.seed, dtype=self.dtype, device=device)
        if comm is not None and config.batch_size < comm.Get_size():
            raise fail(f"{(name or _flag)('batch_size')} must be at least the {comm.Get_size()} ranks, "
                       f"got {config.batch_size}")
        self.optimizer, self.settings = choices.make_optimizer(config.optimizer, self.params, config.lr, comm)
        try:
            self.scheduler = choices.make_scheduler(config.scheduler, self.optimizer, config.steps, config.warmup)
        except (ValueError, TypeError) as err:
            raise DemoError(f"cannot make scheduler {config.scheduler!r}: {err}") from None
        self.sampler = BatchSampler(self.data.n_train, config.batch_size, config.seed)
        self.step = 0
        self.history = History()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train(self, until: int | None = None, on_step=None) -> History:
        """Train up to step ``until`` (default: the end), then evaluate; return the history.

        ``on_step(step, loss, lr)`` is called after every step; if it returns a true value
        the run stops there (still a consistent state: save it and resume later).
        A non-finite loss stops the run with a ``DemoError``.
        """
        xp, data, h = self.xp, self.data, self.history
        until = self.config.steps if until is None else min(until, self.config.steps)
        start, t0 = self.step, time.perf_counter()
        # A run that blows up is stopped below with one clear message; NumPy's overflow
        # warnings on the way there would only bury it. (No effect on other namespaces.)
        try:
            with _quiet_fp():
                while self.step < until:
                    loss, grads = self._loss_and_grads(self.sampler.indices(self.step))
                    if self.config.clip_grad_norm is not None:
                        clip_grad_norm_(grads, self.config.clip_grad_norm)
                    lr = self.lr
                    self.optimizer.step(grads)
                    if self.scheduler is not None:
                        self.scheduler.step()
                    loss = float(loss)
                    h.loss.append(loss)
                    h.lr.append(lr)
                    self.step += 1
                    if not math.isfinite(loss):
                        raise DemoError(
                            f"training diverged at step {self.step} (loss {loss}); try a smaller --lr than {lr:g}"
                        )
                    if on_step is not None and on_step(self.step, loss, lr):
                        break
        finally:
            h.train_seconds += time.perf_counter() - t0
            h.timed_steps += self.step - start
        with _quiet_fp():
            self.evaluate()
        return h

    def _loss_and_grads(self, indices):
        """The batch's mean loss and gradients; data-parallel, this rank's slice, averaged over the ranks."""
        xp, data = self.xp, self.data
        if self.comm is not None:
            rank, world = self.comm.Get_rank(), self.comm.Get_size()
            mine = np.array_split(indices, world)[rank]
        else:
            mine = indices
        idx = xp.asarray(mine, device=self.device)
        loss, grads = mlp.loss_and_grads(self.params, xp.take(data.x_train, idx, axis=0),
                                         xp.take(data.y_train, idx, axis=0), xp)
        if self.comm is None:
            return loss, grads
        from ..distributed import all_reduce_mean

        # slices differ by a row when the batch does not divide: weight each rank's mean by its
        # rows so that the average over the ranks is the whole batch's mean
        parts = [*grads, xp.reshape(loss, (1,))]
        if len(mine) * world != len(indices):
            parts = [p * (len(mine) * world / len(indices)) for p in parts]
        all_reduce_mean(parts, self.comm)
        return parts[-1][0], parts[:-1]

    def evaluate(self) -> None:
        """Fill the history's training-set loss and test accuracy for the current params.

        A schedule-free optimizer holds the point its gradients are taken at while it
        trains; it is evaluated at its average (``eval()``), then put back to train on.
        """
        xp, data, h = self.xp, self.data, self.history
        modes = hasattr(self.optimizer, "eval") and hasattr(self.optimizer, "train")
        if modes:
            self.optimizer.eval()
        try:
            h.train_loss = float(mlp.loss_fn(self.params, data.x_train, data.y_train, xp))
            h.n_test = data.n_test
            h.test_accuracy = mlp.accuracy(self.params, data.x_test, data.y_test, xp)
            h.test_correct = round(h.test_accuracy * data.n_test)
        finally:
            if modes:
                self.optimizer.train()

    @classmethod
    def from_saved(cls, saved, xp, device=None) -> "Run":
        """A run rebuilt on namespace ``xp`` from a checked ``checkpoint.SavedRun``, ready to continue.

        The optimizer and scheduler are loaded with ``ms_optim.checkpoint`` (all or nothing,
        every value checked); the parameters, step and history come from the demo's fields.
        """
        run = cls(saved.config, xp, device, name=lambda f: f"config.{f}", fail=saved.fail)
        built_groups = [dict(g) for g in run.optimizer.param_groups]
        built_schedule = None if run.scheduler is None else run.scheduler.state_dict()
        try:
            saved.checkpoint.restore(run.optimizer, run.scheduler)
        except (TypeError, ValueError) as err:
            message = str(err)
            if message.startswith(f"{saved.path}: "):
                message = message[len(saved.path) + 2 :]
            raise saved.fail(message) from None
        _check_settings_as_built(saved, built_groups, built_schedule)
        for gi, group in enumerate(run.optimizer.param_groups):
            # the lr is the schedule's (or the config's): an edited one would train another run
            want = run.scheduler.get_last_lr()[gi] if run.scheduler is not None else run.settings["lr"]
            if float(group["lr"]) != want:
                raise saved.fail(f"optimizer param_groups[{gi}]['lr'] is {group['lr']!r}; the schedule says {want!r}")
        for p, value in zip(run.params, saved.params):
            p[...] = xp.asarray(value, dtype=p.dtype, device=device)
        run.step = saved.step
        run.history = History(loss=list(saved.loss), lr=list(saved.lr))
        return run


# What changes as a run goes on; everything else in the optimizer's groups and the scheduler's
# state is fixed by the config, and must be what the config builds.
_RUNNING_GROUP_KEYS = ("params", "lr", "momentum", "betas")
_RUNNING_SCHEDULER_KEYS = ("last_epoch", "_step_count", "_last_lr", "_is_initial", "_get_lr_called_within_step")


def _check_settings_as_built(saved, built_groups: list, built_schedule) -> None:
    """The saved optimizer settings and schedule are the ones ``saved.config`` builds.

    A hand-edited ``total_steps`` or ``max_momentum`` would otherwise load (each value is
    valid alone) and fail steps later; the demo knows what its config builds, so it says so now.
    """
    groups = saved.checkpoint.optimizer_state.get("param_groups")
    if isinstance(groups, (list, tuple)) and len(groups) == len(built_groups):
        for gi, (got, built) in enumerate(zip(groups, built_groups)):
            if not isinstance(got, dict):
                continue  # ms_optim.checkpoint names this one
            # only a cyclic schedule moves the momentum; elsewhere it is a setting
            running = _RUNNING_GROUP_KEYS if saved.config.scheduler == "onecycle" else ("params", "lr")
            for key, value in built.items():
                if key not in running and key in got and not _same(got[key], value):
                    raise saved.fail(
                        f"optimizer param_groups[{gi}][{key!r}] is {got[key]!r}; the config builds {value!r}"
                    )
    if built_schedule is not None and isinstance(saved.checkpoint.scheduler_state, dict):
        _same_schedule(saved, saved.checkpoint.scheduler_state, built_schedule, "scheduler state")


def _same_schedule(saved, got: dict, built: dict, where: str) -> None:
    for key, value in built.items():
        if key in _RUNNING_SCHEDULER_KEYS or key not in got:
            continue  # a missing key is ms_optim.checkpoint's to name
        if isinstance(value, dict) and isinstance(got[key], dict):
            _same_schedule(saved, got[key], value, f"{where}[{key!r}]")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            if isinstance(got[key], list) and len(got[key]) == len(value):
                for i, (g, b) in enumerate(zip(got[key], value)):
                    if isinstance(g, dict):
                        _same_schedule(saved, g, b, f"{where}[{key!r}][{i}]")
        elif not _same(got[key], value):
            raise saved.fail(f"{where}[{key!r}] is {got[key]!r}; config.scheduler builds {value!r}")


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray) or hasattr(b, "__array_namespace__"):
        try:
            return float(a) == float(b)  # a 0-d lr array: its value is what counts
        except (TypeError, ValueError):
            return False
    return type(a) is type(b) and a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                              and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def train(config: TrainConfig, xp=None, device=None, *, data: Dataset | None = None, on_step=None) -> History:
    """Train a fresh run of ``config`` to the end on ``xp`` (default NumPy) and return its history."""
    if xp is None:
        from .device import cpu_backend

        xp = cpu_backend().xp
    return Run(config, xp, device, data).train(on_step=on_step)
