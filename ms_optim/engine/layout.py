"""Which of a rule's positional arrays a kernel reads, writes, or broadcasts.

A rule is called ``rule(*arrays, *operands, **scalars, **static, xp)`` and
returns one value per written array. A :class:`Layout` says, for one kernel:

* ``n_arrays``: how many positional arguments are *full* arrays, each of the
  parameter's shape (the parameter, its gradient, its state, a stage's
  temporaries). Each element of these is read and written by the same thread.
* ``writes``: for each returned value, the index of the full array it is
  written into, in place. An array the rule never reads is a pure output (a
  stage's temporary): its old contents are not loaded.
* ``operands``: the kinds of the positional arguments that follow the full
  arrays; read-only values that broadcast against the parameter:

  - ``"scalar"``: a 0-d array per tensor (a per-tensor value computed on the
    device by a tensor stage: LAMB's trust ratio, a clipping coefficient). A
    kernel reads it once per tensor, from device memory, so no host sync.
  - ``"bcast"``: an array whose shape, left-padded with ones to the
    parameter's rank, differs from it by one run of adjacent size-1 axes
    (Adafactor's ``(m, 1)`` row and ``(1, n)`` column factors, a ``(..., 1, 1)``
    per-matrix value). A kernel reads element ``(i // (inner * span)) * inner +
    i % inner`` for element ``i`` of the parameter, where ``span`` is the
    product of the broadcast axes and ``inner`` of the axes after them.

The update every algorithm had before stages, ``rule(p, g, *state) -> (p,
*state)``, is :meth:`Layout.of_state` (``p`` and the state written, ``g`` read).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Layout", "OPERAND_KINDS", "as_layout", "broadcast_run"]

OPERAND_KINDS = ("scalar", "bcast")


@dataclass(frozen=True)
class Layout:
    """A kernel's argument layout (see the module docstring)."""

    n_arrays: int
    writes: tuple[int, ...]
    operands: tuple[str, ...] = ()

    def __post_init__(self):
        if self.n_arrays < 1:
            raise ValueError(f"a kernel needs at least one full array, got n_arrays={self.n_arrays}")
        if not self.writes or any(not 0 <= w < self.n_arrays for w in self.writes):
            raise ValueError(f"writes must name full arrays 0..{self.n_arrays - 1}, got {self.writes}")
        if len(set(self.writes)) != len(self.writes):
            raise ValueError(f"each array can be written once, got writes={self.writes}")
        unknown = [k for k in self.operands if k not in OPERAND_KINDS]
        if unknown:
            raise ValueError(f"operand kinds must be in {OPERAND_KINDS}, got {unknown}")

    @classmethod
    def of_state(cls, n_states: int) -> "Layout":
        """``rule(p, g, *state) -> (p, *state)``: the one-pass update of every classic optimizer."""
        return cls(2 + int(n_states), (0, *range(2, 2 + int(n_states))))

    @property
    def n_inputs(self) -> int:
        """Positional arguments of the rule: full arrays, then operands."""
        return self.n_arrays + len(self.operands)

    @property
    def read_only(self) -> tuple[int, ...]:
        """Full arrays never written (the gradient, in the classic layout)."""
        return tuple(k for k in range(self.n_arrays) if k not in self.writes)

    @property
    def is_classic(self) -> bool:
        return self == Layout.of_state(self.n_arrays - 2) if self.n_arrays >= 2 else False

    def names(self) -> tuple[str, ...]:
        """Argument names: ``p``, ``g``, ``s0``... for full arrays, ``o0``... for operands."""
        full = ("p", "g", *(f"s{k}" for k in range(self.n_arrays - 2)))[: self.n_arrays]
        return (*full, *(f"o{k}" for k in range(len(self.operands))))


def as_layout(layout_or_n_states) -> Layout:
    """A :class:`Layout`, from itself or from the number of state arrays of a classic rule."""
    if isinstance(layout_or_n_states, Layout):
        return layout_or_n_states
    return Layout.of_state(int(layout_or_n_states))


def broadcast_run(operand_shape, shape) -> tuple[int, int]:
    """``(inner, span)`` of a ``"bcast"`` operand of ``operand_shape`` against ``shape``.

    Raises:
      ValueError: the operand does not broadcast to ``shape`` by one run of size-1 axes.
    """
    shape = tuple(int(n) for n in shape)
    padded = (1,) * (len(shape) - len(operand_shape)) + tuple(int(n) for n in operand_shape)
    if len(padded) != len(shape):
        raise ValueError(f"an operand of shape {tuple(operand_shape)} has more axes than {shape}")
    broadcast = [k for k, (a, b) in enumerate(zip(padded, shape)) if a != b]
    for k in broadcast:
        if padded[k] != 1:
            raise ValueError(f"an operand of shape {tuple(operand_shape)} does not broadcast to {shape}")
    if not broadcast:
        return 1, 1
    first, last = broadcast[0], broadcast[-1]
    # size-1 axes of the parameter inside the run broadcast trivially
    if any(padded[k] != 1 for k in range(first, last + 1)):
        raise ValueError(
            f"an operand of shape {tuple(operand_shape)} broadcasts to {shape} along separate runs of axes; "
            "a kernel operand may broadcast along one run of adjacent axes"
        )
    return math.prod(shape[last + 1:]), math.prod(shape[first:last + 1])


def classic_stage(params, grads, states) -> tuple[Layout, list]:
    """The classic ``rule(p, g, *state) -> (p, *state)`` over a bucket as a stage: (layout, tensors)."""
    layout = Layout.of_state(len(states[0]) if states else 0)
    return layout, [(p, g, *st) for p, g, st in zip(params, grads, states)]
