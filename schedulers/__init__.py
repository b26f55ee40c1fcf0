"""Learning-rate schedulers for ms_optim optimizers: torch.optim.lr_scheduler's set, plus LinearWarmup.

Every scheduler takes an :class:`ms_optim.Optimizer` and writes ``group['lr']``
for each of its param groups (in place when that is a 0-d array), with
torch's constructor signatures, defaults and values. The math lives in
:mod:`schedulers.schedules` as pure ``step -> lr`` functions.

>>> import numpy as np
>>> from ms_optim import SGD
>>> from schedulers import CosineAnnealingLR, LinearWarmup
>>> opt = SGD([np.zeros(3)], lr=0.1)
>>> sched = LinearWarmup(opt, warmup_steps=100, after=CosineAnnealingLR(opt, T_max=900))
>>> for step in range(1000):
...     pass  # opt.step(grads) here, then:
...     sched.step()
"""

from . import schedules
from .base import LRScheduler
from .composite import ChainedScheduler, SequentialLR
from .cosine import CosineAnnealingLR, CosineAnnealingWarmRestarts
from .cyclic import CyclicLR, OneCycleLR
from .decay import (
    ConstantLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    MultiplicativeLR,
    MultiStepLR,
    PolynomialLR,
    StepLR,
)
from .plateau import ReduceLROnPlateau
from .swa import SWALR
from .warmup import LinearWarmup

__all__ = [
    "LRScheduler",
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "OneCycleLR",
    "SequentialLR",
    "ChainedScheduler",
    "ReduceLROnPlateau",
    "LinearWarmup",
    "SWALR",
    "schedules",
]
