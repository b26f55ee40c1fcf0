"""The optimizer table: one OptimInfo per algorithm drives every generic test.

Adding an optimizer adds a row here (its configurations, its float64
reference, its bad inputs); the generic tests in test_optimizers.py and
test_torch_parity.py then cover it. Keep each configuration's lr modest so
12 steps on random gradients stay well-conditioned for the parity checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import ms_optim
from tests import reference


@dataclass
class OptimInfo:
    cls: type
    reference: Callable
    configs: list[dict]
    #: hyper-parameters a second param group overrides (exercises per-group values)
    group_overrides: dict
    #: (constructor kwargs, exception type, regex the message must match)
    errors: list[tuple[dict, type, str]] = field(default_factory=list)
    #: torch.optim class name, when torch has the same algorithm
    torch_name: str | None = None
    #: keys of torch's per-parameter state for a given config
    state_keys: Callable[[dict], set] = lambda kw: set()
    #: parameter shapes the generic tests use (group 0 the first three, group 1 the rest);
    #: None: tests.test_optimizers.SHAPES
    shapes: list | None = None
    #: keys of torch's state for a config and a parameter shape, where they depend on the shape
    param_state_keys: Callable[[dict, tuple], set] | None = None

    def expected_state_keys(self, config: dict, shape: tuple) -> set:
        if self.param_state_keys is not None:
            return self.param_state_keys(config, tuple(shape))
        return self.state_keys(config)

    @property
    def name(self) -> str:
        return self.cls.__name__

    def hyperparams(self, config: dict) -> dict:
        """The full hyper-parameters of a group built with ``config``: defaults filled in."""
        return dict(self.cls([_dummy()], **config).param_groups[0], params=None)


def _dummy():
    import numpy as np

    return np.zeros((1, 1))  # 2-D: Muon takes nothing else


# Errors every optimizer shares (lr is the first argument after params everywhere).
COMMON_ERRORS = [
    (dict(lr=-1.0), ValueError, r"Invalid learning rate: -1\.0"),
    (dict(lr=float("nan")), ValueError, r"Invalid learning rate: nan"),
    (dict(lr=float("inf")), ValueError, r"Invalid learning rate: inf"),
    (dict(lr="0.1"), TypeError, r"lr must be a real number, got str"),
    (dict(lr=None), TypeError, r"lr must be a real number, got NoneType"),
    (dict(lr=True), TypeError, r"lr must be a real number, got bool"),
    (dict(backend="warp-drive"), ValueError, r"Invalid backend: 'warp-drive'"),
]

ADAM_ERRORS = [
    (dict(eps=-1e-8), ValueError, r"Invalid epsilon value: -1e-08"),
    (dict(betas=(1.0, 0.999)), ValueError, r"Invalid beta parameter at index 0: 1\.0"),
    (dict(betas=(-0.1, 0.999)), ValueError, r"Invalid beta parameter at index 0: -0\.1"),
    (dict(betas=(0.9, 1.0)), ValueError, r"Invalid beta parameter at index 1: 1\.0"),
    (dict(betas=0.9), TypeError, r"betas must be a pair of floats, got float"),
    (dict(betas=(0.9, 0.99, 0.999)), TypeError, r"betas must be a pair of floats"),
    (dict(betas=("a", 0.9)), TypeError, r"betas\[0\] must be a real number, got str"),
    (dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay value: -0\.1"),
    (dict(amsgrad=1), TypeError, r"amsgrad must be a bool, got int"),
    (dict(maximize="yes"), TypeError, r"maximize must be a bool, got str"),
]


#: COMMON_ERRORS in the words torch's newer optimizers (Adafactor, Muon) use for a bad lr
TORCH_LR_WORDS_ERRORS = [
    (kw, exc, match.replace(r"Invalid learning rate: ", r"Learning rate should be >= 0 but is: "))
    for kw, exc, match in COMMON_ERRORS
]

#: ADAM_ERRORS for the Adam family members without amsgrad (Adamax, RAdam, NAdam)
NO_AMSGRAD_ERRORS = [e for e in ADAM_ERRORS if "amsgrad" not in e[0]]


def _adam_keys(kw):
    keys = {"step", "exp_avg", "exp_avg_sq"}
    return keys | {"max_exp_avg_sq"} if kw.get("amsgrad") else keys


TABLE: list[OptimInfo] = [
    OptimInfo(
        cls=ms_optim.SGD,
        reference=reference.sgd,
        configs=[
            dict(lr=0.05),
            dict(lr=0.05, momentum=0.9),
            dict(lr=0.05, momentum=0.9, dampening=0.3),
            dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
            dict(lr=0.05, weight_decay=0.2, maximize=True),
            dict(lr=0.05, momentum=0.5, dampening=0.1, weight_decay=0.05, maximize=True),
        ],
        group_overrides=dict(lr=0.02, weight_decay=0.3),
        errors=COMMON_ERRORS + [
            (dict(lr=0.1, momentum=-0.5), ValueError, r"Invalid momentum value: -0\.5"),
            (dict(lr=0.1, weight_decay=-1e-4), ValueError, r"Invalid weight_decay value: -0\.0001"),
            (dict(lr=0.1, nesterov=True), ValueError, r"Nesterov momentum requires a momentum and zero dampening"),
            (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, r"Nesterov momentum requires"),
            (dict(lr=0.1, nesterov="no"), TypeError, r"nesterov must be a bool, got str"),
            (dict(lr=0.1, dampening="x"), TypeError, r"dampening must be a real number, got str"),
        ],
        torch_name="SGD",
        state_keys=lambda kw: {"momentum_buffer"} if kw.get("momentum", 0) != 0 else set(),
    ),
    OptimInfo(
        cls=ms_optim.Adam,
        reference=reference.adam,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
            dict(lr=0.01, weight_decay=0.1),
            dict(lr=0.01, amsgrad=True),
            dict(lr=0.01, amsgrad=True, weight_decay=0.05, maximize=True),
            dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
            dict(lr=0.01, betas=(0.3, 0.6), maximize=True),
        ],
        group_overrides=dict(lr=0.003, weight_decay=0.2),
        errors=COMMON_ERRORS + ADAM_ERRORS,
        torch_name="Adam",
        state_keys=_adam_keys,
    ),
    OptimInfo(
        cls=ms_optim.AdamW,
        reference=reference.adam,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, weight_decay=0.0),
            dict(lr=0.01, weight_decay=0.3, amsgrad=True),
            dict(lr=0.01, betas=(0.5, 0.9), maximize=True),
        ],
        group_overrides=dict(lr=0.003, weight_decay=0.5),
        errors=COMMON_ERRORS + ADAM_ERRORS,
        torch_name="AdamW",
        state_keys=_adam_keys,
    ),
    OptimInfo(
        cls=ms_optim.Adagrad,
        reference=reference.adagrad,
        configs=[
            dict(lr=0.1),
            dict(lr=0.1, lr_decay=0.05),
            dict(lr=0.1, weight_decay=0.1, initial_accumulator_value=0.5),
            dict(lr=0.1, eps=1e-3, maximize=True),
            dict(lr=0.05, lr_decay=0.1, weight_decay=0.05, initial_accumulator_value=0.1, maximize=True),
        ],
        group_overrides=dict(lr=0.03, lr_decay=0.01, weight_decay=0.2),
        errors=COMMON_ERRORS + [
            (dict(lr_decay=-0.5), ValueError, r"Invalid lr_decay value: -0\.5"),
            (dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay value: -0\.1"),
            (dict(initial_accumulator_value=-1.0), ValueError, r"Invalid initial_accumulator_value value: -1\.0"),
            (dict(eps=-1e-10), ValueError, r"Invalid epsilon value: -1e-10"),
            (dict(lr_decay="0"), TypeError, r"lr_decay must be a real number, got str"),
            (dict(initial_accumulator_value=None), TypeError,
             r"initial_accumulator_value must be a real number, got NoneType"),
            (dict(maximize=1), TypeError, r"maximize must be a bool, got int"),
        ],
        torch_name="Adagrad",
        state_keys=lambda kw: {"step", "sum"},
    ),
    OptimInfo(
        cls=ms_optim.Adadelta,
        reference=reference.adadelta,
        configs=[
            dict(lr=1.0),
            dict(lr=1.0, rho=0.5, eps=1e-4),
            dict(lr=0.5, rho=0.0, weight_decay=0.1),
            dict(lr=1.0, eps=1e-3, weight_decay=0.05, maximize=True),
            dict(lr=2.0, rho=0.95, maximize=True),
        ],
        group_overrides=dict(lr=0.5, rho=0.8, weight_decay=0.1),
        errors=COMMON_ERRORS + [
            (dict(rho=1.1), ValueError, r"Invalid rho value: 1\.1"),
            (dict(rho=-0.1), ValueError, r"Invalid rho value: -0\.1"),
            (dict(eps=-1e-6), ValueError, r"Invalid epsilon value: -1e-06"),
            (dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay value: -0\.1"),
            (dict(rho="0.9"), TypeError, r"rho must be a real number, got str"),
            (dict(maximize="no"), TypeError, r"maximize must be a bool, got str"),
        ],
        torch_name="Adadelta",
        state_keys=lambda kw: {"step", "square_avg", "acc_delta"},
    ),
    OptimInfo(
        cls=ms_optim.RMSprop,
        reference=reference.rmsprop,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, alpha=0.9, eps=1e-6),
            dict(lr=0.01, momentum=0.9),
            dict(lr=0.01, centered=True),
            dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1),
            dict(lr=0.01, weight_decay=0.1, maximize=True),
            dict(lr=0.005, alpha=0.3, centered=True, maximize=True),
        ],
        group_overrides=dict(lr=0.003, alpha=0.9, weight_decay=0.2),
        errors=COMMON_ERRORS + [
            (dict(eps=-1.0), ValueError, r"Invalid epsilon value: -1\.0"),
            (dict(momentum=-0.1), ValueError, r"Invalid momentum value: -0\.1"),
            (dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay value: -0\.1"),
            (dict(alpha=-0.5), ValueError, r"Invalid alpha value: -0\.5"),
            (dict(alpha=float("nan")), ValueError, r"Invalid alpha value: nan"),
            (dict(momentum=[0.9]), TypeError, r"momentum must be a real number, got list"),
            (dict(centered=1), TypeError, r"centered must be a bool, got int"),
        ],
        torch_name="RMSprop",
        state_keys=lambda kw: (
            {"step", "square_avg"}
            | ({"momentum_buffer"} if kw.get("momentum", 0) > 0 else set())
            | ({"grad_avg"} if kw.get("centered") else set())
        ),
    ),
    OptimInfo(
        cls=ms_optim.Rprop,
        reference=reference.rprop,
        configs=[
            dict(lr=0.01),
            dict(lr=0.05, etas=(0.3, 1.5)),
            dict(lr=0.01, step_sizes=(1e-3, 0.02)),
            dict(lr=0.05, step_sizes=(1e-4, 0.02), maximize=True),  # lr above the cap: clamped at once
            dict(lr=0.01, maximize=True),
        ],
        group_overrides=dict(lr=0.02, etas=(0.4, 1.1)),
        errors=COMMON_ERRORS + [
            (dict(etas=(1.0, 1.2)), ValueError, r"Invalid eta values: 1\.0, 1\.2"),
            (dict(etas=(0.0, 1.2)), ValueError, r"Invalid eta values: 0\.0, 1\.2"),
            (dict(etas=(0.5, 1.0)), ValueError, r"Invalid eta values: 0\.5, 1\.0"),
            (dict(step_sizes=(1.0, 1e-6)), ValueError, r"Invalid step_sizes: \(1\.0, 1e-06\); need 0 <= min <= max"),
            (dict(step_sizes=(-1e-6, 50)), ValueError, r"Invalid step_sizes: \(-1e-06, 50\.0\)"),
            (dict(etas=(0.5,)), TypeError, r"etas must be a pair of floats, got tuple"),
            (dict(etas=("a", 1.2)), TypeError, r"etas\[0\] must be a real number, got str"),
            (dict(step_sizes=1e-6), TypeError, r"step_sizes must be a pair of floats, got float"),
            (dict(step_sizes=(None, 50)), TypeError, r"step_sizes\[0\] must be a real number, got NoneType"),
            (dict(maximize=0), TypeError, r"maximize must be a bool, got int"),
        ],
        torch_name="Rprop",
        state_keys=lambda kw: {"step", "prev", "step_size"},
    ),
    OptimInfo(
        cls=ms_optim.ASGD,
        reference=reference.asgd,
        configs=[
            dict(lr=0.01),
            dict(lr=0.05, lambd=0.1, alpha=0.5),
            dict(lr=0.02, t0=3),  # averaging starts within the 12 steps, per param's own count
            dict(lr=0.02, lambd=0.05, t0=0.0, weight_decay=0.1),
            dict(lr=0.01, t0=5, weight_decay=0.2, maximize=True),
            dict(lr=0.03, lambd=1e-3, alpha=1.0, t0=2, maximize=True),
        ],
        group_overrides=dict(lr=0.005, lambd=0.01, t0=1, weight_decay=0.1),
        errors=COMMON_ERRORS + [
            (dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay value: -0\.1"),
            (dict(lambd="1e-4"), TypeError, r"lambd must be a real number, got str"),
            (dict(alpha=None), TypeError, r"alpha must be a real number, got NoneType"),
            (dict(t0=[1]), TypeError, r"t0 must be a real number, got list"),
            (dict(lambd=-1e-4), ValueError, r"Invalid lambd value: -0\.0001"),
            (dict(alpha=-0.75), ValueError, r"Invalid alpha value: -0\.75"),
            (dict(t0=-1.0), ValueError, r"Invalid t0 value: -1\.0"),
            (dict(maximize=1), TypeError, r"maximize must be a bool, got int"),
        ],
        torch_name="ASGD",
        state_keys=lambda kw: {"step", "eta", "mu", "ax"},
    ),
    OptimInfo(
        cls=ms_optim.Adamax,
        reference=reference.adamax,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
            dict(lr=0.01, eps=0.5),  # eps inside the max, not beside it, decides this one
            dict(lr=0.01, weight_decay=0.1),
            dict(lr=0.01, weight_decay=0.05, maximize=True),
            dict(lr=0.01, betas=(0.3, 0.6), maximize=True),
        ],
        group_overrides=dict(lr=0.003, weight_decay=0.2),
        errors=COMMON_ERRORS + NO_AMSGRAD_ERRORS,
        torch_name="Adamax",
        state_keys=lambda kw: {"step", "exp_avg", "exp_inf"},
    ),
    OptimInfo(
        cls=ms_optim.RAdam,
        reference=reference.radam,
        configs=[
            dict(lr=0.01),  # momentum steps 1-5, rectified from step 6 (param 1 from its 6th gradient)
            dict(lr=0.01, betas=(0.9, 0.8)),  # rectified from step 7
            dict(lr=0.01, betas=(0.8, 0.6), eps=1e-6),  # rho_inf = 4: never rectified
            dict(lr=0.01, weight_decay=0.1),
            dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
            dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True, maximize=True),
            dict(lr=0.01, betas=(0.3, 0.9), maximize=True),
        ],
        group_overrides=dict(lr=0.003, weight_decay=0.2, betas=(0.9, 0.8)),
        errors=COMMON_ERRORS + NO_AMSGRAD_ERRORS + [
            (dict(decoupled_weight_decay="no"), TypeError, r"decoupled_weight_decay must be a bool, got str"),
        ],
        torch_name="RAdam",
        state_keys=lambda kw: {"step", "exp_avg", "exp_avg_sq"},
    ),
    OptimInfo(
        cls=ms_optim.NAdam,
        reference=reference.nadam,
        configs=[
            dict(lr=0.01),
            dict(lr=0.01, momentum_decay=0.1, betas=(0.8, 0.99)),
            dict(lr=0.01, momentum_decay=0.0),  # constant mu = beta1 / 2
            dict(lr=0.01, weight_decay=0.1),
            dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
            dict(lr=0.01, weight_decay=0.05, maximize=True),
            dict(lr=0.01, betas=(0.3, 0.6), eps=1e-6, decoupled_weight_decay=True, maximize=True),
        ],
        group_overrides=dict(lr=0.003, weight_decay=0.2, momentum_decay=0.02),
        errors=COMMON_ERRORS + NO_AMSGRAD_ERRORS + [
            (dict(momentum_decay=-0.1), ValueError, r"Invalid momentum_decay value: -0\.1"),
            (dict(momentum_decay="fast"), TypeError, r"momentum_decay must be a real number, got str"),
            (dict(decoupled_weight_decay=1), TypeError, r"decoupled_weight_decay must be a bool, got int"),
        ],
        torch_name="NAdam",
        state_keys=lambda kw: {"step", "mu_product", "exp_avg", "exp_avg_sq"},
    ),
]

TABLE += [
    OptimInfo(
        cls=ms_optim.Adafactor,
        reference=reference.adafactor,
        configs=[
            dict(lr=0.01),
            dict(lr=0.05, beta2_decay=-0.5, d=1.5),
            dict(lr=0.02, eps=(1e-20, 1e-2), weight_decay=0.1),
            dict(lr=0.01, weight_decay=0.05, maximize=True),
        ],
        group_overrides=dict(lr=0.003, weight_decay=0.2, d=2.0),
        errors=TORCH_LR_WORDS_ERRORS + [
            (dict(beta2_decay=0.5), ValueError, r"beta2_decay should be <= 0 but is: 0\.5"),
            (dict(eps=(-1e-3, 1e-3)), ValueError, r"epsilon1 should be >= 0 but is: -0\.001"),
            (dict(eps=(None, -1.0)), ValueError, r"epsilon2 should be >= 0 but is: -1\.0"),
            (dict(eps=1e-3), TypeError, r"eps must be a pair \(eps1 or None, eps2\), got float"),
            (dict(d=0.5), ValueError, r"Clipping threshold d should be >= 1 but is: 0\.5"),
            (dict(weight_decay=-0.1), ValueError, r"weight_decay should be >= 0 but is: -0\.1"),
            (dict(maximize="no"), TypeError, r"maximize must be a bool, got str"),
        ],
        torch_name="Adafactor",
        param_state_keys=lambda kw, shape: {"step", "row_var", "col_var"} if len(shape) > 1 else {"step", "variance"},
    ),
    OptimInfo(
        cls=ms_optim.Muon,
        reference=reference.muon,
        configs=[
            dict(lr=0.02),
            dict(lr=0.02, nesterov=False, momentum=0.3, weight_decay=0.0),
            dict(lr=0.01, adjust_lr_fn="match_rms_adamw", ns_steps=3),
            dict(lr=0.02, momentum=0.5, ns_coefficients=(2.0, -1.5, 0.5), eps=1e-5),
        ],
        group_overrides=dict(lr=0.005, weight_decay=0.2),
        errors=TORCH_LR_WORDS_ERRORS + [
            (dict(momentum=-0.5), ValueError, r"momentum should be >= 0 but is: -0\.5"),
            (dict(weight_decay=-0.1), ValueError, r"weight decay should be >= 0 but is: -0\.1"),
            (dict(adjust_lr_fn="fast"), ValueError, r"Adjust learning rate function fast is not supported"),
            (dict(adjust_lr_fn=[1.0, 2.0]), TypeError, r"adjust_lr_fn must be None or a string, got list"),
            (dict(ns_steps=100), ValueError, r"Number of steps must be less than 100"),
            (dict(ns_steps=2.5), TypeError, r"ns_steps must be an int, got float"),
            (dict(ns_coefficients=(1.0, 2.0)), ValueError,
             r"Coefficients must be a tuple of exactly 3 values: ns_coefficients=\(1\.0, 2\.0\)"),
            (dict(ns_coefficients="abc"), TypeError, r"ns_coefficients must be a tuple of 3 numbers, got str"),
            (dict(nesterov="yes"), TypeError, r"nesterov must be a bool, got str"),
        ],
        torch_name="Muon",
        state_keys=lambda kw: {"momentum_buffer"},
        shapes=[(3, 4), (5, 2), (4, 4), (2, 3)],
    ),
]

# Beyond torch.optim: the updates of optax.lion and optax.lamb
LION_ERRORS = COMMON_ERRORS + [
    (dict(betas=(1.0, 0.99)), ValueError, r"Invalid beta parameter at index 0: 1\.0"),
    (dict(betas=(-0.1, 0.99)), ValueError, r"Invalid beta parameter at index 0: -0\.1"),
    (dict(betas=(0.9, 1.0)), ValueError, r"Invalid beta parameter at index 1: 1\.0"),
    (dict(betas=(0.9, float("nan"))), ValueError, r"Invalid beta parameter at index 1: nan"),
    (dict(betas=0.9), TypeError, r"betas must be a pair of floats, got float"),
    (dict(betas=("a", 0.9)), TypeError, r"betas\[0\] must be a real number, got str"),
    (dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay value: -0\.1"),
    (dict(weight_decay=float("inf")), ValueError, r"Invalid weight_decay value: inf"),
    (dict(weight_decay="0.1"), TypeError, r"weight_decay must be a real number, got str"),
    (dict(maximize=1), TypeError, r"maximize must be a bool, got int"),
]

LAMB_ERRORS = LION_ERRORS + [
    (dict(eps=-1e-6), ValueError, r"Invalid epsilon value: -1e-06"),
    (dict(eps=float("nan")), ValueError, r"Invalid epsilon value: nan"),
    (dict(eps=None), TypeError, r"eps must be a real number, got NoneType"),
]

LION_ROW = OptimInfo(
    cls=ms_optim.Lion,
    reference=reference.lion,
    configs=[
        dict(lr=0.01),
        dict(lr=0.01, betas=(0.8, 0.95)),
        dict(lr=0.01, betas=(0.0, 0.5)),  # beta1 = 0: the sign of the gradient itself
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.003, weight_decay=0.5, maximize=True),
        dict(lr=0.01, betas=(0.95, 0.98), maximize=True),
    ],
    group_overrides=dict(lr=0.003, weight_decay=0.2, betas=(0.95, 0.98)),
    errors=LION_ERRORS,
    state_keys=lambda kw: {"exp_avg"},
)

LAMB_ROW = OptimInfo(
    cls=ms_optim.LAMB,
    reference=reference.lamb,
    configs=[
        dict(lr=0.01),
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-3),
        dict(lr=0.01, eps=0.5),  # eps outside the square root of the bias-corrected v decides this one
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.05, maximize=True),
        dict(lr=0.02, betas=(0.5, 0.9), maximize=True),
    ],
    group_overrides=dict(lr=0.003, weight_decay=0.2, betas=(0.9, 0.99)),
    errors=LAMB_ERRORS,
    state_keys=lambda kw: {"step", "exp_avg", "exp_avg_sq"},
)

TABLE += [LION_ROW, LAMB_ROW]

# Beyond torch.optim: the update of schedulefree.AdamWScheduleFree
TABLE.append(OptimInfo(
    cls=ms_optim.ScheduleFreeAdamW, reference=reference.schedule_free_adamw,
    configs=[dict(lr=0.01), dict(lr=0.02, warmup_steps=5), dict(lr=0.01, weight_decay=0.1, r=1.0),
             dict(lr=0.03, betas=(0.3, 0.95), eps=1e-6, weight_lr_power=0.0)],
    group_overrides=dict(lr=0.004, weight_decay=0.2, warmup_steps=2),
    errors=COMMON_ERRORS + [
        (dict(betas=(0.0, 0.999)), ValueError, r"Invalid beta parameter at index 0: 0\.0"),
        (dict(warmup_steps=-1), ValueError, r"Invalid warmup_steps value: -1"),
        (dict(warmup_steps=2.5), TypeError, r"warmup_steps must be an int, got float"),
        (dict(r=-0.5), ValueError, r"Invalid r value: -0\.5"),
    ],
    state_keys=lambda kw: {"z", "exp_avg_sq"},
))

#: (info, config) for every row and configuration, with readable ids
CASES = [(info, cfg) for info in TABLE for cfg in info.configs]
CASE_IDS = [f"{info.name}-{'-'.join(f'{k}={v}' for k, v in cfg.items())}" for info, cfg in CASES]
ERROR_CASES = [(info, *err) for info in TABLE for err in info.errors]
ERROR_IDS = [f"{info.name}-{next(iter(kw))}={kw[next(iter(kw))]!r}" for info, kw, _, _ in ERROR_CASES]
