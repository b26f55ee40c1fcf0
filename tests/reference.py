"""Float64 reference optimizers, written from the documented formulas.

Each reference is deliberately naive NumPy float64 code that follows the
pseudo-code of torch.optim's documentation (and the MindSpore pages in
shared/seeds), sharing nothing with ms_optim's rules. Where torch's
implementation departs from its pseudo-code (AMSGrad keeps the max of the raw
second moment), the reference follows the implementation and says so.

A reference is a function ``update(p, g, state, hp) -> p`` on float64 arrays,
where ``state`` is a dict it owns (empty on a parameter's first gradient) and
``hp`` the param group's hyper-parameters.
"""

from __future__ import annotations

import numpy as np


def sgd(p, g, state, hp):
    lr, mu, tau, wd = hp["lr"], hp["momentum"], hp["dampening"], hp["weight_decay"]
    if hp.get("maximize", False):
        g = -g
    if wd != 0:
        g = g + wd * p
    if mu != 0:
        if "momentum_buffer" not in state:
            b = g.copy()
        else:
            b = mu * state["momentum_buffer"] + (1 - tau) * g
        state["momentum_buffer"] = b
        g = g + mu * b if hp.get("nesterov", False) else b
    return p - lr * g


def adam(p, g, state, hp):
    lr, (b1, b2), eps, wd = hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"]
    if not state:
        state.update(step=0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
        if hp.get("amsgrad", False):
            state["max_exp_avg_sq"] = np.zeros_like(p)
    state["step"] += 1
    t = state["step"]
    if hp.get("maximize", False):
        g = -g
    if wd != 0:
        if hp.get("decoupled_weight_decay", False):
            p = p - lr * wd * p
        else:
            g = g + wd * p
    m = b1 * state["exp_avg"] + (1 - b1) * g
    v = b2 * state["exp_avg_sq"] + (1 - b2) * g**2
    state["exp_avg"], state["exp_avg_sq"] = m, v
    m_hat = m / (1 - b1**t)
    if hp.get("amsgrad", False):
        # torch's implementation: the max of the raw v, then bias-corrected
        state["max_exp_avg_sq"] = np.maximum(state["max_exp_avg_sq"], v)
        v_hat = state["max_exp_avg_sq"] / (1 - b2**t)
    else:
        v_hat = v / (1 - b2**t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


def adagrad(p, g, state, hp):
    lr, lr_decay, wd, eps = hp["lr"], hp["lr_decay"], hp["weight_decay"], hp["eps"]
    if not state:
        state.update(step=0, sum=np.full(np.shape(p), float(hp["initial_accumulator_value"])))
    state["step"] += 1
    t = state["step"]
    if hp.get("maximize", False):
        g = -g
    if wd != 0:
        g = g + wd * p
    decayed_lr = lr / (1 + (t - 1) * lr_decay)
    state["sum"] = state["sum"] + g**2
    return p - decayed_lr * g / (np.sqrt(state["sum"]) + eps)


def adadelta(p, g, state, hp):
    lr, rho, eps, wd = hp["lr"], hp["rho"], hp["eps"], hp["weight_decay"]
    if not state:
        state.update(step=0, square_avg=np.zeros_like(p), acc_delta=np.zeros_like(p))
    state["step"] += 1
    if hp.get("maximize", False):
        g = -g
    if wd != 0:
        g = g + wd * p
    v = rho * state["square_avg"] + (1 - rho) * g**2
    dx = np.sqrt(state["acc_delta"] + eps) / np.sqrt(v + eps) * g
    state["square_avg"] = v
    state["acc_delta"] = rho * state["acc_delta"] + (1 - rho) * dx**2
    return p - lr * dx


def rmsprop(p, g, state, hp):
    lr, alpha, eps, wd, mu = hp["lr"], hp["alpha"], hp["eps"], hp["weight_decay"], hp["momentum"]
    centered = hp.get("centered", False)
    if not state:
        state.update(step=0, square_avg=np.zeros_like(p))
        if mu > 0:
            state["momentum_buffer"] = np.zeros_like(p)
        if centered:
            state["grad_avg"] = np.zeros_like(p)
    state["step"] += 1
    if hp.get("maximize", False):
        g = -g
    if wd != 0:
        g = g + wd * p
    v = alpha * state["square_avg"] + (1 - alpha) * g**2
    state["square_avg"] = v
    if centered:
        state["grad_avg"] = alpha * state["grad_avg"] + (1 - alpha) * g
        v = v - state["grad_avg"] ** 2
    if mu > 0:
        state["momentum_buffer"] = mu * state["momentum_buffer"] + g / (np.sqrt(v) + eps)
        return p - lr * state["momentum_buffer"]
    return p - lr * g / (np.sqrt(v) + eps)


def rprop(p, g, state, hp):
    """Element by element, as torch's pseudo-code reads.

    Where the implementation departs from the pseudo-code it is followed:
    every step size is clamped to ``step_sizes`` after its update, in all
    three cases (which matters when ``lr`` lies outside ``step_sizes``).
    """
    (eta_minus, eta_plus), (lo, hi) = hp["etas"], hp["step_sizes"]
    if not state:
        state.update(step=0, prev=np.zeros_like(p), step_size=np.full(np.shape(p), float(hp["lr"])))
    state["step"] += 1
    if hp.get("maximize", False):
        g = -g
    g = np.array(g, dtype=np.float64, copy=True).reshape(-1)
    prev = state["prev"].reshape(-1)
    eta = state["step_size"].reshape(-1).copy()
    delta = np.zeros_like(g)
    for i in range(g.size):
        if prev[i] * g[i] > 0:
            eta[i] = eta[i] * eta_plus
        elif prev[i] * g[i] < 0:
            eta[i] = eta[i] * eta_minus
            g[i] = 0.0
        eta[i] = min(max(eta[i], lo), hi)
        delta[i] = eta[i] * np.sign(g[i])
    shape = np.shape(p)
    state["prev"] = g.reshape(shape)
    state["step_size"] = eta.reshape(shape)
    return p - delta.reshape(shape)


def asgd(p, g, state, hp):
    """torch documents ASGD in prose only; this follows that and its source.

    eta starts at lr and mu at 1; after the t-th update eta = lr / (1 + lambd
    lr t) ** alpha and mu = 1 / max(1, t - t0) (torch's 0-d tensors of its
    default dtype; float64 here). ax is the parameter itself while mu is 1,
    then a running mean.
    """
    lr, lambd, alpha, t0, wd = hp["lr"], hp["lambd"], hp["alpha"], hp["t0"], hp["weight_decay"]
    if not state:
        state.update(step=0, eta=float(lr), mu=1.0, ax=np.zeros_like(p))
    state["step"] += 1
    t = state["step"]
    if hp.get("maximize", False):
        g = -g
    if wd != 0:
        g = g + wd * p
    eta, mu = state["eta"], state["mu"]
    p = p - eta * (lambd * p + g)
    state["ax"] = np.array(p, copy=True) if mu == 1 else (1 - mu) * state["ax"] + mu * p
    state["eta"] = lr / (1 + lambd * lr * t) ** alpha
    state["mu"] = 1 / max(1, t - t0)
    return p


def adamax(p, g, state, hp):
    """torch's and MindSpore's Adamax pseudo-code: eps inside the max, only m bias-corrected."""
    lr, (b1, b2), eps, wd = hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"]
    if not state:
        state.update(step=0, exp_avg=np.zeros_like(p), exp_inf=np.zeros_like(p))
    state["step"] += 1
    t = state["step"]
    if hp.get("maximize", False):
        g = -g
    if wd != 0:
        g = g + wd * p
    m = b1 * state["exp_avg"] + (1 - b1) * g
    u = np.maximum(b2 * state["exp_inf"], np.abs(g) + eps)
    state["exp_avg"], state["exp_inf"] = m, u
    return p - lr * m / ((1 - b1**t) * u)


def radam(p, g, state, hp):
    """torch's and MindSpore's RAdam pseudo-code, with torch's decoupled decay and maximize."""
    lr, (b1, b2), eps, wd = hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"]
    if not state:
        state.update(step=0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
    state["step"] += 1
    t = state["step"]
    if hp.get("maximize", False):
        g = -g
    if wd != 0:
        if hp.get("decoupled_weight_decay", False):
            p = p - lr * wd * p
        else:
            g = g + wd * p
    m = b1 * state["exp_avg"] + (1 - b1) * g
    v = b2 * state["exp_avg_sq"] + (1 - b2) * g**2
    state["exp_avg"], state["exp_avg_sq"] = m, v
    m_hat = m / (1 - b1**t)
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
    if rho_t > 5:
        l_t = np.sqrt(1 - b2**t) / (np.sqrt(v) + eps)
        r_t = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        return p - lr * m_hat * r_t * l_t
    return p - lr * m_hat


def nadam(p, g, state, hp):
    """torch's NAdam pseudo-code; the products of mu are recomputed from their definition."""
    lr, (b1, b2), eps, wd, psi = hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"], hp["momentum_decay"]
    if not state:
        state.update(step=0, mu_product=1.0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
    state["step"] += 1
    t = state["step"]
    if hp.get("maximize", False):
        g = -g
    if wd != 0:
        if hp.get("decoupled_weight_decay", False):
            p = p - lr * wd * p
        else:
            g = g + wd * p

    def mu(i):
        return b1 * (1 - 0.5 * 0.96 ** (i * psi))

    prod_t = float(np.prod([mu(i) for i in range(1, t + 1)]))
    prod_next = float(np.prod([mu(i) for i in range(1, t + 2)]))
    m = b1 * state["exp_avg"] + (1 - b1) * g
    v = b2 * state["exp_avg_sq"] + (1 - b2) * g**2
    state.update(mu_product=prod_t, exp_avg=m, exp_avg_sq=v)
    m_hat = mu(t + 1) * m / (1 - prod_next) + (1 - mu(t)) * g / (1 - prod_t)
    v_hat = v / (1 - b2**t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


def lion(p, g, state, hp):
    """Chen et al. 2023, Algorithm 2 (Lion with decoupled weight decay, scaled by lr)."""
    lr, (b1, b2), wd = hp["lr"], hp["betas"], hp["weight_decay"]
    if not state:
        state["exp_avg"] = np.zeros_like(p)
    if hp.get("maximize", False):
        g = -g
    m = state["exp_avg"]
    update = np.sign(b1 * m + (1 - b1) * g) + wd * p
    state["exp_avg"] = b2 * m + (1 - b2) * g
    return p - lr * update


def lamb(p, g, state, hp):
    """You et al. 2019, Algorithm 2 with phi the identity; a zero norm gives a ratio of 1 (optax's rule)."""
    lr, (b1, b2), eps, wd = hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"]
    if not state:
        state.update(step=0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
    state["step"] += 1
    t = state["step"]
    if hp.get("maximize", False):
        g = -g
    m = b1 * state["exp_avg"] + (1 - b1) * g
    v = b2 * state["exp_avg_sq"] + (1 - b2) * g**2
    state["exp_avg"], state["exp_avg_sq"] = m, v
    r = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * p
    p_norm, r_norm = np.sqrt(np.sum(p * p)), np.sqrt(np.sum(r * r))
    ratio = p_norm / r_norm if p_norm > 0 and r_norm > 0 else 1.0
    return p - lr * ratio * r


def adafactor(p, g, state, hp):
    """torch.optim.Adafactor's documented algorithm (factored for 2+ dimensions)."""
    lr, c, (eps1, eps2), d, wd = hp["lr"], hp["beta2_decay"], hp["eps"], hp["d"], hp["weight_decay"]
    if eps1 is None:
        eps1 = np.finfo(np.float64).eps
    if hp.get("maximize", False):
        g = -g
    factored = p.ndim > 1
    if not state:
        state["step"] = 0
        if factored:
            state["row_var"] = np.zeros(p.shape[:-1] + (1,))
            state["col_var"] = np.zeros(p.shape[:-2] + (1,) + p.shape[-1:])
        else:
            state["variance"] = np.zeros_like(p)
    state["step"] += 1
    t = state["step"]
    beta2_hat = t**c
    rho = min(lr, 1 / np.sqrt(t))
    rms = lambda x: np.sqrt(np.mean(x**2)) if x.size else 0.0  # noqa: E731
    alpha = max(eps2, rms(p)) * rho
    p = p * (1 - lr * wd)
    if factored:
        row = state["row_var"] + beta2_hat * (np.mean(g**2, axis=-1, keepdims=True) - state["row_var"])
        col = state["col_var"] + beta2_hat * (np.mean(g**2, axis=-2, keepdims=True) - state["col_var"])
        state["row_var"], state["col_var"] = row, col
        v_hat = row * col / np.maximum(np.mean(row, axis=-2, keepdims=True), eps1)
    else:
        state["variance"] = state["variance"] + beta2_hat * (g**2 - state["variance"])
        v_hat = state["variance"]
    u = g / np.sqrt(np.maximum(v_hat, eps1**2))
    return p - alpha / max(1.0, rms(u) / d) * u


def muon(p, g, state, hp):
    """torch.optim.Muon's documented algorithm, the Newton–Schulz iteration in float64."""
    if p.size == 0:  # nothing to orthogonalise or move (torch would divide by a zero dimension)
        state.setdefault("momentum_buffer", np.zeros_like(p))
        return p
    lr, wd, mu = hp["lr"], hp["weight_decay"], hp["momentum"]
    a, b, c = hp["ns_coefficients"]
    buf = state.get("momentum_buffer", np.zeros_like(p))
    buf = mu * buf + (1 - mu) * g
    state["momentum_buffer"] = buf
    x = (1 - mu) * g + mu * buf if hp["nesterov"] else buf
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / max(np.linalg.norm(x), hp["eps"])
    for _ in range(hp["ns_steps"]):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    o = x.T if tall else x
    rows, cols = p.shape
    scale = 0.2 * np.sqrt(max(rows, cols)) if hp["adjust_lr_fn"] == "match_rms_adamw" else np.sqrt(max(1, rows / cols))
    return p * (1 - lr * wd) - lr * scale * o


def schedule_free_adamw(p, g, state, hp):
    """Schedule-free AdamW in the paper's x/y/z form (Defazio et al. 2024, Algorithm 1 with Adam's denominator).

    ``p`` is y. x is not stored (the optimizer's state is z and v, as
    schedulefree's); it is recovered as ``x = (y - (1 - beta1) z) / beta1``.
    The group's step count before this step is ``hp['_step_index']`` (it
    advances whether or not this parameter had a gradient), so the lr, the
    running max lr and the averaging weights are recomputed over the group's
    whole history.
    """
    k = int(hp.get("_step_index", hp["k"]))
    lr0, (b1, b2), eps, wd = hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"]
    warmup, r, power = hp["warmup_steps"], hp["r"], hp["weight_lr_power"]
    lrs = [lr0 * min(1.0, (j + 1) / warmup) if warmup else lr0 for j in range(k + 1)]
    lr_max = np.maximum.accumulate(np.array(lrs))
    weights = [(j + 1) ** r * m**power for j, m in enumerate(lr_max)]
    c = weights[-1] / sum(weights) if sum(weights) else 0.0
    if not state:
        state.update(z=p.copy(), exp_avg_sq=np.zeros_like(p))
    y, z = p, state["z"]
    x = (y - (1 - b1) * z) / b1
    v = b2 * state["exp_avg_sq"] + (1 - b2) * g**2
    u = g / (np.sqrt(v / (1 - b2 ** (k + 1))) + eps) + wd * y
    z = z - lrs[-1] * u
    x = (1 - c) * x + c * z
    state["z"], state["exp_avg_sq"] = z, v
    return (1 - b1) * z + b1 * x
