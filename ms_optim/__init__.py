"""ms_optim: torch.optim's optimizers for plain arrays (NumPy, CuPy, any Array API namespace).

    >>> import numpy as np
    >>> import ms_optim
    >>> w = np.ones(3)
    >>> opt = ms_optim.AdamW([w], lr=1e-2)
    >>> opt([2 * w])        # MindSpore's convention: optimizer(grads)

Importing ms_optim never imports CuPy or numba; a compiled backend is loaded
the first time an optimizer meets arrays it can serve.
"""

from .algorithms import ASGD, SGD, Adadelta, Adafactor, Adagrad, Adam, AdamW, Adamax, LAMB, LBFGS, Lion, Muon, NAdam, RAdam, RMSprop, Rprop, SparseAdam
from .amp import GradScaler
from .checkpoint import load, save
from .clipping import clip_grad_norm_, clip_grad_value_
from .optimizer import Optimizer, required

__version__ = "0.1.0"

__all__ = ["ASGD", "GradScaler", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "LAMB", "LBFGS", "Lion", "Muon", "NAdam", "Optimizer", "RAdam", "RMSprop", "Rprop", "SGD", "SparseAdam", "clip_grad_norm_", "clip_grad_value_", "load", "required", "save"]
