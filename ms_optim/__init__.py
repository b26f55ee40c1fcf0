"""ms_optim: torch.optim's optimizers for plain arrays (NumPy, CuPy, any Array API namespace).

    >>> import numpy as np
    >>> import ms_optim
    >>> w = np.ones(3)
    >>> opt = ms_optim.AdamW([w], lr=1e-2)
    >>> opt([2 * w])        # MindSpore's convention: optimizer(grads)

Importing ms_optim never imports CuPy or numba; a compiled backend is loaded
the first time an optimizer meets arrays it can serve.
"""

from .algorithms import ASGD, SGD, Adadelta, Adafactor, Adagrad, Adam, AdamW, Adamax, LAMB, LBFGS, Lion, Muon, NAdam, RAdam, RMSprop, Rprop, ScheduleFreeAdamW, SparseAdam
from .amp import GradScaler
from .averaging import AveragedParams, get_ema_avg_fn, get_ema_multi_avg_fn, get_swa_avg_fn, get_swa_multi_avg_fn
from .checkpoint import load, save
from .clipping import clip_grad_norm_, clip_grad_value_
from .flat import FlatBuffer
from .optimizer import Optimizer, required

__version__ = "0.1.0"

__all__ = ["ASGD", "AveragedParams", "GradScaler", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "FlatBuffer", "LAMB", "LBFGS", "Lion", "Muon", "NAdam", "Optimizer", "RAdam", "RMSprop", "Rprop", "SGD", "ScheduleFreeAdamW", "SparseAdam", "clip_grad_norm_", "clip_grad_value_",
           "get_ema_avg_fn", "get_ema_multi_avg_fn", "get_swa_avg_fn", "get_swa_multi_avg_fn", "load", "required", "save"]
