"""L-BFGS: a quasi-Newton method driven by a closure, torch.optim.LBFGS for plain arrays.

Unlike every other algorithm here, L-BFGS has no element-wise rule: each
iteration is a two-loop recursion of dot products over the whole flattened
parameter vector, and its control flow (line search, termination tests)
depends on those dot products. So it is written as plain Array API code on
flat vectors, host-driven as torch's is, and runs on any namespace (NumPy,
CuPy, array-api-strict) by the same code.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

from ..checks import check_lr, check_non_negative, check_real
from ..engine import BACKENDS
from ..engine.namespace import array_namespace, device, is_array, to_namespace
from ..optimizer import Optimizer, _checked_step

__all__ = ["LBFGS"]

_GROUPS_ERROR = "LBFGS doesn't support per-parameter options (parameter groups)"
#: the state kept after the first iteration of a step (torch's keys), 'al' aside
_ITERATION_KEYS = ("d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad", "prev_loss")
_COUNT_KEYS = ("func_evals", "n_iter")


class LBFGS(Optimizer):
    r"""L-BFGS with torch's iteration, line search and termination tests, on plain arrays.

    Each :meth:`step` runs up to ``max_iter`` iterations on the flattened
    parameters :math:`x` (all parameters concatenated), with gradient
    :math:`g` from the closure:

    .. math::
       \begin{aligned}
       y &\leftarrow g_k - g_{k-1}, \quad s \leftarrow t_{k-1} d_{k-1},
         \quad \text{kept (at most history\_size pairs) when } y^\top s > 10^{-10}\\
       \gamma &\leftarrow \frac{y^\top s}{y^\top y} \quad (\gamma = 1 \text{ at the first iteration})\\
       d_k &\leftarrow -H_k g_k \quad \text{(two-loop recursion over the kept } (s_i, y_i),
         \ \rho_i = 1 / y_i^\top s_i, \ H^0 = \gamma I)\\
       t_k &\leftarrow \begin{cases} \min(1, 1/\lVert g_1\rVert_1)\,\mathrm{lr} & \text{first iteration ever}\\
         \mathrm{lr} & \text{otherwise} \end{cases}
         \quad \text{(or a strong-Wolfe line search from that guess)}\\
       x_{k+1} &\leftarrow x_k + t_k d_k
       \end{aligned}

    A step stops early when :math:`\max|g| \le` ``tolerance_grad``, when
    :math:`g^\top d > -` ``tolerance_change``, when :math:`\max|t d| \le`
    ``tolerance_change``, when the loss moved less than ``tolerance_change``,
    or after ``max_eval`` closure evaluations; the history carries over to the
    next step, as in torch.

    **Calling convention.** ``opt.step(closure)`` (or ``opt(closure)``) where
    ``closure()`` computes the loss at the parameters' current values and
    returns ``(loss, grads)``: ``loss`` a Python float or a 0-d array,
    ``grads`` one array per parameter in :attr:`parameters` order, or None for
    a zero gradient (torch's missing ``.grad``). The closure is called several
    times per step, with the parameters moved in place in between, so it must
    read the parameter arrays themselves, not copies taken before the step.
    ``step`` returns the first loss, as the closure gave it (torch's
    ``orig_loss``).

    Args:
      params: a list of arrays (or a list with one param group dict); all in
        one namespace and on one device.
      lr: the step length of each iteration, or the line search's first guess
        (default: 1), a float or 0-d array.
      max_iter: iterations per :meth:`step` (default: 20).
      max_eval: closure evaluations per :meth:`step` (default: ``max_iter * 5 // 4``).
      tolerance_grad: stop when the largest gradient element is at most this
        (default: 1e-7).
      tolerance_change: stop when the step, the directional derivative or the
        loss changes by less than this (default: 1e-9).
      history_size: how many :math:`(s, y)` pairs to keep (default: 100).
      line_search_fn: None (fixed step ``lr``) or ``'strong_wolfe'``.
      backend: keyword-only; ``None``, ``'auto'`` or ``'eager'`` (L-BFGS is
        Array API code on flat vectors; there is no element-wise kernel to
        compile, so ``'cpu'`` and ``'cuda'`` are refused).

    State, in ``state[parameters[0]]`` as torch keeps it: ``func_evals``,
    ``n_iter`` (counts over all steps), ``d``, ``t``, ``old_dirs``,
    ``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``, and
    ``al`` (scratch of the two-loop recursion). Flat vectors are 1-d arrays of
    the parameters' namespace; the scalars (``t``, ``H_diag``, ``prev_loss``,
    each ``ro`` and ``al`` entry) are Python floats.

    Example:
      >>> import numpy as np
      >>> from ms_optim.algorithms.lbfgs import LBFGS
      >>> x = np.array([-1.5, 2.0])
      >>> def rosenbrock():
      ...     a, b = x
      ...     loss = (1 - a) ** 2 + 100 * (b - a * a) ** 2
      ...     grad = np.array([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)])
      ...     return loss, [grad]
      >>> opt = LBFGS([x], line_search_fn="strong_wolfe")
      >>> for _ in range(5):
      ...     _ = opt.step(rosenbrock)
      >>> np.round(x, 4)
      array([1., 1.])

    .. warning::
       Stricter than torch, which takes these and then fails (an IndexError
       for ``history_size=0``, an UnboundLocalError for ``max_eval=0`` with
       the line search) or does nothing useful: ``max_iter``, ``max_eval``
       and ``history_size`` must be integers >= 1, the tolerances finite and
       >= 0, and an unknown ``line_search_fn`` is refused when the optimizer
       is built (torch raises RuntimeError at the first step).
       ``add_param_group`` raises ValueError at once (torch fails at the next
       step). Real floating-point parameters only (torch also takes complex
       ones, as pairs of reals). If the closure
       raises, or returns something malformed, during a step, the parameters
       are put back to their values at the start of the step and the state is
       left as it was, then the error propagates (torch leaves the parameters
       wherever the failed evaluation found them). The scalars are computed
       as Python floats (float64): float64 parameters follow torch to
       rounding, float32 ones closely but not bit for bit (torch does part of
       that scalar math in float32).

    .. note::
       Memory: about ``2 * history_size + 4`` flat vectors of the
       parameters' total size (the history pairs, ``d``, the last gradient,
       temporaries, and the snapshot that makes a failed step undoable). Each
       iteration costs one closure call (several with the line search) and
       ``2 * len(history) + 3`` dot products plus a few max-abs reductions
       over the whole vector, each read to the host: a device sync on a GPU,
       as torch's comparisons and ``.item()`` calls are.

    References:
      Nocedal, 1980. Updating Quasi-Newton Matrices with Limited Storage.
      Mathematics of Computation 35(151). https://doi.org/10.1090/S0025-5718-1980-0572855-7

      Liu & Nocedal, 1989. On the limited memory BFGS method for large scale
      optimization. Mathematical Programming 45. https://doi.org/10.1007/BF01589116
    """

    tracks_step = False

    def __init__(self, params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None, *, backend=None):
        if isinstance(backend, str) and backend in BACKENDS and backend != "eager":
            raise ValueError(
                f"Invalid backend for LBFGS: {backend!r}; L-BFGS runs Array API code on flat vectors "
                "and has no element-wise kernel to compile (use None, 'auto' or 'eager')"
            )
        if max_eval is None:
            _check_count("max_iter", max_iter)
            max_eval = max_iter * 5 // 4
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                        tolerance_change=tolerance_change, history_size=history_size,
                        line_search_fn=line_search_fn)
        super().__init__(params, defaults, backend=backend)
        if len(self.param_groups) != 1:
            raise ValueError(_GROUPS_ERROR)
        params = self.param_groups[0]["params"]
        try:
            array_namespace(*params)
        except TypeError:
            raise TypeError("LBFGS needs every parameter in one array namespace (it concatenates them)") from None
        devices = {str(device(p)) for p in params}
        if len(devices) > 1:
            raise ValueError(f"LBFGS needs every parameter on one device, got {sorted(devices)}")

    def add_param_group(self, param_group) -> None:
        raise ValueError(_GROUPS_ERROR)

    def _validate(self, group):
        check_lr(group["lr"])
        _check_count("max_iter", group["max_iter"])
        _check_count("max_eval", group["max_eval"])
        _check_count("history_size", group["history_size"])
        check_non_negative("tolerance_grad", group["tolerance_grad"])
        check_non_negative("tolerance_change", group["tolerance_change"])
        fn = group["line_search_fn"]
        if fn is not None and not isinstance(fn, str):
            raise TypeError(f"line_search_fn must be None or 'strong_wolfe', got {type(fn).__name__}: {fn!r}")
        if fn not in (None, "strong_wolfe"):
            raise ValueError(f"Invalid line_search_fn: {fn!r}; only 'strong_wolfe' (or None) is supported")

    # --------------------------------------------------------------- flat vectors

    @property
    def _params(self) -> list:
        return self.param_groups[0]["params"]

    @property
    def _xp(self):
        # looked up, not stored: a module attribute would stop the optimizer pickling
        return array_namespace(self._params[0])

    def _evaluate(self, closure):
        """(loss as returned, loss as a float, flat gradient): one closure call, checked."""
        out = closure()
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(
                f"closure must return (loss, grads), got {type(out).__name__}"
                + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
            )
        loss, grads = out
        value = check_real("the loss returned by closure", loss)
        try:
            checked = self._checked_grads(grads)
        except (TypeError, ValueError) as err:
            raise type(err)(f"closure returned bad grads: {err}") from None
        xp = self._xp
        views = [
            xp.zeros((_numel(p),), dtype=p.dtype, device=device(p)) if g is None else xp.reshape(g, (-1,))
            for p, g in zip(self._params, checked)
        ]
        # A lone view would alias the caller's gradient array, and the history
        # keeps flat gradients across steps: copy it (concat copies anyway).
        return loss, value, xp.concat(views) if len(views) > 1 else xp.asarray(views[0], copy=True)

    def _add_grad(self, step_size: float, update) -> None:
        xp = self._xp
        offset = 0
        for p in self._params:
            n = _numel(p)
            step = step_size * xp.reshape(update[offset:offset + n], p.shape)
            if step.dtype == p.dtype:
                p += step
            else:  # params of mixed dtypes: the flat vectors have the widest
                p[...] = xp.astype(p + step, p.dtype)
            offset += n

    def _clone_params(self) -> list:
        xp = self._xp
        return [xp.asarray(p, copy=True) for p in self._params]

    def _set_params(self, values) -> None:
        for p, v in zip(self._params, values):
            p[...] = v

    def _dot(self, a, b) -> float:
        return float(self._xp.vecdot(a, b))

    def _abs_max(self, v) -> float:
        return float(self._xp.max(self._xp.abs(v))) if v.shape[0] else 0.0

    # ------------------------------------------------------------------- step

    def __call__(self, closure):
        """``optimizer(closure)``: the same as :meth:`step`."""
        return self.step(closure)

    def step(self, closure):
        """Run up to ``max_iter`` L-BFGS iterations; return the closure's first loss.

        Args:
          closure: called with no arguments, it computes the loss at the
            parameters' current values and returns ``(loss, grads)`` (see the
            class docstring).

        Raises:
          TypeError / ValueError: ``closure`` is not callable or returns
            something malformed, or a hyper-parameter is bad. If the closure
            fails after the parameters have moved, they are restored to their
            values at the start of this step and the state is unchanged.
        """
        if not callable(closure):
            raise TypeError(
                f"LBFGS.step needs a closure that returns (loss, grads), got {type(closure).__name__}"
            )
        if len(self.param_groups) != 1:
            raise ValueError(_GROUPS_ERROR)
        group = self.param_groups[0]
        self._validate(group)
        lr = float(group["lr"])
        max_iter = int(group["max_iter"])
        max_eval = int(group["max_eval"])
        tolerance_grad = float(group["tolerance_grad"])
        tolerance_change = float(group["tolerance_change"])
        line_search_fn = group["line_search_fn"]
        history_size = int(group["history_size"])

        # Everything is computed into locals and written to the state only at
        # the end, so a closure that fails mid-step leaves the state as it was.
        first = self._params[0]
        old = self.state.get(first) or {}
        func_evals = int(old.get("func_evals", 0))
        total_iter = int(old.get("n_iter", 0))

        orig_loss, loss, flat_grad = self._evaluate(closure)  # fails before anything moved
        current_evals = 1
        func_evals += 1
        if self._abs_max(flat_grad) <= tolerance_grad:
            self.state[first] = {**old, "func_evals": func_evals, "n_iter": total_iter}
            return orig_loss

        d = old.get("d")
        t = old.get("t")
        old_dirs = list(old["old_dirs"]) if "old_dirs" in old else None
        old_stps = list(old["old_stps"]) if "old_stps" in old else None
        ro = list(old["ro"]) if "ro" in old else None
        H_diag = old.get("H_diag")
        prev_flat_grad = old.get("prev_flat_grad")
        prev_loss = old.get("prev_loss")
        al = list(old["al"]) if "al" in old else None

        start = None  # the parameters at the start of the step, taken before they first move
        try:
            n_iter = 0
            while n_iter < max_iter:
                n_iter += 1
                total_iter += 1

                # ---- the descent direction
                if total_iter == 1:
                    d = -flat_grad
                    old_dirs, old_stps, ro = [], [], []
                    H_diag = 1.0
                else:
                    y = flat_grad - prev_flat_grad
                    s = d * t
                    ys = self._dot(y, s)
                    if ys > 1e-10:
                        # `while`, not torch's `==`: the same unless history_size
                        # was lowered between steps, where torch keeps growing
                        while len(old_dirs) >= history_size:
                            old_dirs.pop(0)
                            old_stps.pop(0)
                            ro.pop(0)
                        old_dirs.append(y)
                        old_stps.append(s)
                        ro.append(_div(1.0, ys))
                        H_diag = _div(ys, self._dot(y, y))
                    num_old = len(old_dirs)
                    if al is None:
                        al = [None] * history_size
                    elif len(al) < num_old:  # history_size was raised between steps
                        al.extend([None] * (num_old - len(al)))
                    # q and r are fresh arrays, so they are updated in place, as
                    # torch's add_ does (y - fl(a x) is torch's y + fl((-a) x))
                    q = -flat_grad
                    for i in range(num_old - 1, -1, -1):
                        al[i] = self._dot(old_stps[i], q) * ro[i]
                        q -= al[i] * old_dirs[i]
                    q *= H_diag
                    r = q
                    for i in range(num_old):
                        be_i = self._dot(old_dirs[i], r) * ro[i]
                        r += (al[i] - be_i) * old_stps[i]
                    d = r

                # flat_grad is a fresh array, never written in place: no copy needed
                prev_flat_grad = flat_grad
                prev_loss = loss

                # ---- the step length
                if total_iter == 1:
                    t = min(1.0, _div(1.0, float(self._xp.sum(self._xp.abs(flat_grad))))) * lr
                else:
                    t = lr
                gtd = self._dot(flat_grad, d)
                if gtd > -tolerance_change:
                    break

                ls_func_evals = 0
                if line_search_fn is not None:
                    x_init = self._clone_params()
                    if start is None:
                        start = x_init

                    def obj_func(x, step, direction):
                        self._add_grad(step, direction)
                        _, f, g = self._evaluate(closure)
                        self._set_params(x)
                        return f, g

                    # torch leaves the search's tolerance_change at its default
                    # 1e-9, whatever the group's is: so do we
                    loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                        obj_func, x_init, t, d, loss, flat_grad, gtd, self._dot, self._abs_max,
                        tolerance_change=1e-9, max_ls=max_eval - current_evals,
                    )
                    self._add_grad(t, d)
                    opt_cond = self._abs_max(flat_grad) <= tolerance_grad
                else:
                    if start is None:
                        start = self._clone_params()
                    self._add_grad(t, d)
                    opt_cond = False
                    if n_iter != max_iter:
                        # not after the last iteration: in a stochastic setting
                        # that evaluation would be wasted (torch's reasoning)
                        _, loss, flat_grad = self._evaluate(closure)
                        opt_cond = self._abs_max(flat_grad) <= tolerance_grad
                        ls_func_evals = 1

                current_evals += ls_func_evals
                func_evals += ls_func_evals

                # ---- termination
                if n_iter == max_iter:
                    break
                if current_evals >= max_eval:
                    break
                if opt_cond:
                    break
                # max|d t| without the vector d * t: rounding is monotone, so
                # fl(|t| max|d|) is exactly the largest fl(|d_i t|)
                if abs(t) * self._abs_max(d) <= tolerance_change:
                    break
                if abs(loss - prev_loss) < tolerance_change:
                    break
        except BaseException:
            if start is not None:
                self._set_params(start)
            raise

        new = {**old, "func_evals": func_evals, "n_iter": total_iter, "d": d, "t": t,
               "old_dirs": old_dirs, "old_stps": old_stps, "ro": ro, "H_diag": H_diag,
               "prev_flat_grad": prev_flat_grad, "prev_loss": prev_loss}
        if al is not None:
            new["al"] = al
        self.state[first] = new
        return orig_loss

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """torch's layout (see :meth:`Optimizer.state_dict`); the history lists are copies.

        The arrays in it are the live ones, but L-BFGS never writes a state
        array in place, so a state_dict taken now keeps describing this moment
        after later steps.
        """
        out = super().state_dict()
        out["state"] = {pid: {k: list(v) if isinstance(v, list) else v for k, v in st.items()}
                        for pid, st in out["state"].items()}
        return out

    def _loaded_param_state(self, pid, st, p, group) -> dict:
        where = f"state_dict['state'][{pid!r}]"
        if not isinstance(st, Mapping):
            raise TypeError(f"{where} must be a dict, got {type(st).__name__}")
        if not st:
            return {}
        if p is not group["params"][0]:
            raise ValueError(f"{where}: LBFGS keeps its state on the first parameter only (torch's layout)")
        allowed = set(_COUNT_KEYS) | set(_ITERATION_KEYS) | {"al"}
        unknown = set(st) - allowed
        if unknown:
            raise ValueError(f"{where} has unexpected entries {sorted(unknown)}; expected {sorted(allowed)}")
        missing = [k for k in _COUNT_KEYS if k not in st]
        if missing:
            raise ValueError(f"{where} lacks {missing}")
        out = {k: _checked_step(f"{where}[{k!r}]", st[k]) for k in _COUNT_KEYS}
        present = [k for k in _ITERATION_KEYS if k in st]
        if out["n_iter"] == 0:
            if present or "al" in st:
                raise ValueError(f"{where} has n_iter 0 but holds iteration state {present + ['al'] * ('al' in st)}")
            return out
        if len(present) != len(_ITERATION_KEYS):
            raise ValueError(f"{where} has n_iter {out['n_iter']} but lacks "
                             f"{[k for k in _ITERATION_KEYS if k not in st]}")
        xp = self._xp
        params = group["params"]
        numel = sum(_numel(q) for q in params)
        flat_dtype = xp.result_type(*(q.dtype for q in params)) if len(params) > 1 else params[0].dtype

        def flat(name, value):
            if not is_array(value):
                raise TypeError(f"{name} must be an array, got {type(value).__name__}")
            if tuple(value.shape) != (numel,):
                raise ValueError(f"{name} has shape {tuple(value.shape)}; the flattened parameters have ({numel},)")
            out = to_namespace(value, like=p)
            return out if out.dtype == flat_dtype else xp.astype(out, flat_dtype)

        def vectors(name, value):
            if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or is_array(value):
                raise TypeError(f"{name} must be a list, got {type(value).__name__}")
            return [flat(f"{name}[{i}]", v) for i, v in enumerate(value)]

        def numbers_(name, value, allow_none=False):
            if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or is_array(value):
                raise TypeError(f"{name} must be a list, got {type(value).__name__}")
            return [None if (allow_none and v is None) else check_real(f"{name}[{i}]", v)
                    for i, v in enumerate(value)]

        out["d"] = flat(f"{where}['d']", st["d"])
        out["prev_flat_grad"] = flat(f"{where}['prev_flat_grad']", st["prev_flat_grad"])
        out["old_dirs"] = vectors(f"{where}['old_dirs']", st["old_dirs"])
        out["old_stps"] = vectors(f"{where}['old_stps']", st["old_stps"])
        out["ro"] = numbers_(f"{where}['ro']", st["ro"])
        if not len(out["old_dirs"]) == len(out["old_stps"]) == len(out["ro"]):
            raise ValueError(
                f"{where}: old_dirs, old_stps and ro must have one entry per kept pair, got "
                f"{len(out['old_dirs'])}, {len(out['old_stps'])} and {len(out['ro'])}"
            )
        for k in ("t", "H_diag", "prev_loss"):
            out[k] = check_real(f"{where}[{k!r}]", st[k])
        if "al" in st:
            out["al"] = numbers_(f"{where}['al']", st["al"], allow_none=True)
        return out


# ---------------------------------------------------------------------- helpers


def _check_count(name: str, value) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or type(value).__name__ == "bool_":
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}: {value!r}")
    if value < 1:
        raise ValueError(f"Invalid {name} value: {value}")
    return int(value)


def _numel(p) -> int:
    return math.prod(p.shape)


def _div(a: float, b: float) -> float:
    """IEEE division: torch divides 0-d tensors here, which gives inf/nan, not ZeroDivisionError."""
    if b != 0.0:
        return a / b
    if a != a or a == 0.0:
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimiser of the cubic through two points with values and slopes, clamped to ``bounds``.

    torch's ``_cubic_interpolate`` (from torch/optim's polyinterp.lua), on floats.
    """
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - _div(3 * (f1 - f2), x1 - x2)
    d2_square = d1 * d1 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * _div(g2 + d2 - d1, g2 - g1 + 2 * d2)
        else:
            min_pos = x1 - (x1 - x2) * _div(g1 + d2 - d1, g1 - g2 + 2 * d2)
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _strong_wolfe(obj_func, x, t, d, f, g, gtd, dot, abs_max, c1=1e-4, c2=0.9,
                  tolerance_change=1e-9, max_ls=25):
    """A step ``t`` along ``d`` meeting the strong Wolfe conditions: torch's ``_strong_wolfe``.

    Bracketing then zoom by cubic interpolation (from torch/optim's
    lswolfe.lua), statement for statement, on floats and flat arrays.
    Returns ``(f_new, g_new, t, evaluations)``.
    """
    d_norm = abs_max(d)
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = dot(g_new, d)

    # bracket an interval containing a point satisfying the Wolfe criteria
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    bracket = bracket_f = bracket_g = bracket_gtd = None
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        # interpolate
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        # next step
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = dot(g_new, d)
        ls_iter += 1

    # reached max number of iterations?
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # zoom phase: refine the bracket until a point meets the criteria
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        # line-search bracket is so small
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])

        # t too close to a bound of the bracket (now or in the last iteration):
        # move it 0.1 of the bracket's length inside
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False

        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = dot(g_new, d)
        ls_iter += 1

        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            # Armijo condition not satisfied or not lower than lowest point
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new, gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True  # Wolfe conditions satisfied
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                # old high becomes new low
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            # new point becomes new low
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new, gtd_new

    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals
