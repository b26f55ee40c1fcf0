"""The optimizers and schedulers the demo can train with, looked up by name.

Optimizers are found in ``ms_optim`` itself (every public subclass of ``ms_optim.Optimizer``),
so an optimizer added to the package appears in ``--optimizer`` and ``--compare`` with no
change here. ``DEMO_SETTINGS`` only holds a learning rate that suits this small problem
for the optimizers whose torch default does not.
"""

from __future__ import annotations

import inspect

import ms_optim
import schedulers

from .errors import DemoError


# Keyword arguments the demo passes by default, by lower-case class name, from a sweep of
# lr (3 seeds, the default run) that kept the best test accuracy with a margin from divergence.
# A ``--lr`` given on the command line replaces ``lr``. Optimizers not listed use their defaults.
DEMO_SETTINGS: dict[str, dict] = {
    "adamw": {"lr": 3e-3},
    "adam": {"lr": 3e-3},
    "adamax": {"lr": 1e-2},
    "nadam": {"lr": 3e-3},
    "radam": {"lr": 1e-2},
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "asgd": {"lr": 0.3},
    "adagrad": {"lr": 0.05},
    "adadelta": {"lr": 1.0},
    "rmsprop": {"lr": 1e-3},
    "lamb": {"lr": 3e-3},
    "lion": {"lr": 1e-3},
    # Rprop is a full-batch method: on minibatches its steps grow on noise up to the default
    # cap of 50 and the weights blow up; a cap of 0.01 keeps it a fair entry in --compare.
    "rprop": {"lr": 1e-2, "step_sizes": (1e-6, 0.01)},
}


# Optimizers that cannot train the demo's MLP alone, by lower-case class name, and why.
NOT_FOR_DEMO: dict[str, str] = {
    "muon": "updates 2-D parameters only; the MLP's biases need a second optimizer",
    "lbfgs": "takes a closure that re-evaluates the full-batch loss, not one minibatch gradient",
    "sparseadam": "takes sparse gradients; the MLP's are dense",
}


def optimizer_classes() -> dict[str, type]:
    """Every optimizer class ``ms_optim`` exports, by lower-case name, sorted (less NOT_FOR_DEMO)."""
    base = ms_optim.Optimizer
    names = getattr(ms_optim, "__all__", None) or [n for n in dir(ms_optim) if not n.startswith("_")]
    found = {}
    for name in names:
        obj = getattr(ms_optim, name, None)
        if isinstance(obj, type) and issubclass(obj, base) and obj is not base and not name.startswith("_") \
                and name.lower() not in NOT_FOR_DEMO:
            found[name.lower()] = obj
    return dict(sorted(found.items()))


def optimizer_settings(name: str, lr: float | None = None) -> dict:
    """The keyword arguments the demo passes to optimizer ``name`` (with ``lr`` if given)."""
    cls = optimizer_class(name)
    settings = dict(DEMO_SETTINGS.get(name, {}))
    if "lr" not in settings:
        default = inspect.signature(cls).parameters.get("lr")
        if default is None or default.default is inspect.Parameter.empty:
            settings["lr"] = 1e-3
    if lr is not None:
        settings["lr"] = lr
    return settings


def optimizer_class(name: str) -> type:
    classes = optimizer_classes()
    try:
        return classes[name.lower()]
    except KeyError:
        if name.lower() in NOT_FOR_DEMO:
            raise DemoError(f"the demo cannot train with {name}: it {NOT_FOR_DEMO[name.lower()]}") from None
        raise DemoError(f"unknown optimizer {name!r}; choose from {', '.join(classes)}") from None


def make_optimizer(name: str, params: list, lr: float | None = None, comm=None):
    """``(optimizer, settings)``: optimizer ``name`` over ``params`` and the arguments it got.

    With an MPI communicator ``comm``, the optimizer is sharded over its ranks
    (``ms_optim.distributed.ZeroRedundancyOptimizer``).
    """
    cls = optimizer_class(name)
    settings = optimizer_settings(name.lower(), lr)
    try:
        if comm is not None:
            if hasattr(cls, "eval") and hasattr(cls, "train"):
                raise DemoError(f"--distributed cannot train with {cls.__name__}: its eval()/train() modes "
                                "would swap only this rank's shard")
            from ..distributed import ZeroRedundancyOptimizer

            return ZeroRedundancyOptimizer(params, cls, comm=comm, **settings), settings
        return cls(params, **settings), settings
    except (ValueError, TypeError) as err:
        raise DemoError(f"cannot make {cls.__name__}({_kwargs(settings)}): {err}") from None


def _kwargs(settings: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in settings.items())


SCHEDULERS = {
    "warmup-cosine": "linear warmup, then cosine annealing to 0",
    "cosine": "cosine annealing to 0",
    "step": "multiply lr by 0.1 after each third of the run",
    "onecycle": "one cycle: up to lr over 30% of the run, then cosine down",
    "constant": "lr held constant",
}


def default_warmup(steps: int) -> int:
    """Warmup length for ``warmup-cosine``: 5% of the run."""
    return max(1, steps // 20)


def make_scheduler(name: str, optimizer, steps: int, warmup: int | None = None):
    """The scheduler ``name`` for a run of ``steps`` steps, or None for ``constant``."""
    sch = schedulers
    if name == "constant":
        return None
    if name == "cosine":
        return sch.CosineAnnealingLR(optimizer, T_max=steps)
    if name == "warmup-cosine":
        warmup = default_warmup(steps) if warmup is None else warmup
        if warmup == 0:
            return sch.CosineAnnealingLR(optimizer, T_max=steps)
        after = sch.CosineAnnealingLR(optimizer, T_max=steps - warmup)
        return sch.LinearWarmup(optimizer, warmup, start_factor=1.0 / (warmup + 1), after=after)
    if name == "step":
        return sch.StepLR(optimizer, step_size=max(1, steps // 3), gamma=0.1)
    if name == "onecycle":
        lr = optimizer.param_groups[0]["lr"]
        return sch.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    raise DemoError(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")
