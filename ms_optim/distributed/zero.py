"""``ZeroRedundancyOptimizer``: each rank keeps the optimizer state of its shard of the parameters only."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..optimizer import Optimizer, ParamState, _checked_grad
from . import _buckets
from ._comm import transport

__all__ = ["ZeroRedundancyOptimizer", "partition_sizes"]

_MISSING = object()


def partition_sizes(group_sizes, world_size: int, totals=None) -> list[list[list[int]]]:
    """torch's ZeRO partition: for each rank, for each group, the indices of the parameters it owns.

    Within each group, parameters are taken largest first (a stable sort, so
    equal sizes keep their order) and each goes to the rank with the fewest
    elements so far, the lowest rank on a tie; the running totals carry over
    from one group to the next. This is
    ``torch.distributed.optim.ZeroRedundancyOptimizer._partition_parameters``.

    Args:
      group_sizes: per group, the element count of each parameter.
      world_size: the number of ranks.
      totals: the running per-rank totals to start from (updated in place);
        default all zero.

    Returns:
      ``out[rank][group]``: indices into that group's parameters, in the
      order they were assigned (largest first).
    """
    totals = [0] * world_size if totals is None else totals
    out: list[list[list[int]]] = [[] for _ in range(world_size)]
    for sizes in group_sizes:
        per_rank: list[list[int]] = [[] for _ in range(world_size)]
        for i in sorted(range(len(sizes)), key=lambda j: sizes[j], reverse=True):
            rank = min(range(world_size), key=lambda r: totals[r])  # the first minimum, as torch's _get_min_index
            per_rank[rank].append(i)
            totals[rank] += sizes[i]
        for rank in range(world_size):
            out[rank].append(per_rank[rank])
    return out


def _numel(p) -> int:
    return math.prod(p.shape)


def _host_copy(value):
    """A host NumPy copy of a state value (arrays); host numbers as they are."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return np.array(value.get() if hasattr(value, "get") else value, copy=True)
    return value


class ZeroRedundancyOptimizer(Optimizer):
    r"""Shard any ms_optim optimizer's state over the ranks of a communicator (ZeRO stage 1).

    The parameters (every group's) are split over the :math:`W` ranks as
    torch's ``ZeroRedundancyOptimizer`` splits them (:func:`partition_sizes`:
    largest first, each to the rank with the fewest elements so far). Rank
    :math:`r` runs a local ``optimizer_class`` (:attr:`optim`) over its shard
    :math:`S_r` only, so it holds the state of :math:`S_r` alone: about
    :math:`1/W` of a single process's. A step is

    .. math::

      \theta_i \leftarrow \mathrm{update}(\theta_i, g_i, s_i) \quad (i \in S_r),
      \qquad \theta_i \xrightarrow{\ \mathrm{broadcast\ from\ owner}\ } \text{every rank} \quad (\text{all } i)

    with :math:`g_i` the gradient already averaged over the ranks (see
    :func:`~ms_optim.distributed.all_reduce_mean`), so every rank ends each
    step with the same parameters, bit for bit those of one process running
    ``optimizer_class`` on the averaged gradients.

    Args:
      params: a list of arrays, or of dicts (param groups), as for any ms_optim optimizer.
        Every rank passes the same shapes in the same order.
      optimizer_class: the ms_optim optimizer class each rank runs on its shard (``ms_optim.AdamW``).
      comm: an mpi4py communicator (default ``MPI.COMM_WORLD``); for CuPy arrays a
        ``cupy.cuda.nccl.NcclCommunicator``, or an mpi4py communicator over a CUDA-aware MPI.
      **defaults: the arguments of ``optimizer_class`` (``lr=1e-3``, ``backend=...``).

    Attributes:
      optimizer_class: the class each rank runs on its shard.
      optim: this rank's local optimizer (groups holding its shard only), or
        None on a rank that owns no parameter (more ranks than parameters).
      param_groups: the full groups, every parameter and every hyper-parameter,
        as a single-process optimizer has them: a scheduler writes these, and
        each :meth:`step` copies their hyper-parameters into :attr:`optim`'s.
      state: the local optimizer's state (this rank's shard only).

    Example (run under ``mpiexec -n 2 python script.py``)::

      >>> import numpy as np                                          # doctest: +SKIP
      >>> import ms_optim
      >>> from ms_optim.distributed import ZeroRedundancyOptimizer, all_reduce_mean
      >>> params = [np.ones((256, 256), np.float32), np.zeros(256, np.float32)]
      >>> opt = ZeroRedundancyOptimizer(params, ms_optim.AdamW, lr=1e-3)
      >>> grads = [np.full_like(p, 0.1) for p in params]   # this rank's gradients
      >>> all_reduce_mean(grads)                            # averaged over the ranks
      >>> opt.step(grads)                                   # every rank: the same params

    References:
      Rajbhandari et al., 2020. ZeRO: Memory Optimizations Toward Training Trillion
      Parameter Models. https://arxiv.org/abs/1910.02054 ; torch's
      ``torch/distributed/optim/zero_redundancy_optimizer.py``.

    .. warning::
      Departures from torch: ``step(grads)`` takes the gradients (ms_optim's
      convention, no closure); ``optim`` has no empty groups (ms_optim refuses
      them): it holds only the groups where this rank owns parameters, and is
      None where it owns none; ``state`` is the local shard's state; and
      parameters whose gradient is None are not broadcast (they did not change).
      Every method but :meth:`state_dict` is collective or must be called
      identically on every rank (``add_param_group`` and scheduler steps included).
    """

    def __init__(self, params, optimizer_class, comm=None, **defaults):
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)) \
                or issubclass(optimizer_class, ZeroRedundancyOptimizer):
            raise TypeError(
                f"optimizer_class must be an ms_optim optimizer class (such as ms_optim.AdamW), got {optimizer_class!r}"
            )
        t = transport(comm)
        # A single-process optimizer over all the parameters checks them and the
        # arguments exactly as one process would, identically on every rank, and
        # fills every group's hyper-parameters; it never steps, so it never holds
        # state beyond a load_state_dict call. Its param_groups list is ours: a
        # group it adds or loads is one of ours, and a scheduler sees the same dicts.
        template = optimizer_class(params, **defaults)
        # Optimizer.__init__ is not called: the template did its work.
        self._template = template
        self._transport = t
        self.rank, self.world_size = t.rank, t.size
        self._optimizer_class = self.optimizer_class = optimizer_class
        self._optimizer_kwargs = dict(defaults)
        self.defaults = template.defaults
        self.param_groups = template.param_groups
        self.backend = template.backend
        self.optim: Optimizer | None = None
        self._totals = [0] * self.world_size
        self._placed: list[tuple] = []  # per full group: its params as partitioned
        self._local_group_of: list[int | None] = []  # full group -> index in optim.param_groups
        self._owned: list[list[int]] = [[] for _ in range(self.world_size)]  # per rank: global positions
        self._local_positions: list[int] = []  # optim.parameters -> global positions
        self._consolidated = None
        self._scratch = _buckets.Scratch()  # the broadcasts' flat buffers, reused step after step
        for group in self.param_groups:
            self._place(group)

    # ---------------------------------------------------------------- shards

    def _place(self, group: dict) -> None:
        """Partition one (already checked) full group and give this rank's part to :attr:`optim`."""
        params = list(group["params"])
        offset = sum(len(p) for p in self._placed)
        shares = partition_sizes([[_numel(p) for p in params]], self.world_size, self._totals)
        for rank in range(self.world_size):
            self._owned[rank].extend(offset + i for i in shares[rank][0])
        mine = shares[self.rank][0]
        self._placed.append(tuple(params))
        if not mine:
            self._local_group_of.append(None)
            return
        local = {k: v for k, v in group.items() if k != "params"}
        local["params"] = [params[i] for i in mine]
        if self.optim is None:
            self.optim = self._optimizer_class([local], **self._optimizer_kwargs)
        else:
            self.optim.add_param_group(local)
        self._local_group_of.append(len(self.optim.param_groups) - 1)
        self._local_positions.extend(offset + i for i in mine)

    @property
    def state(self):  # type: ignore[override]
        """This rank's optimizer state: its shard's parameters only."""
        return self.optim.state if self.optim is not None else ParamState()

    def owner(self, index: int) -> int:
        """The rank that updates parameter ``index`` of :attr:`parameters` (and holds its state)."""
        for rank, positions in enumerate(self._owned):
            if index in positions:
                return rank
        raise ValueError(f"index must be in [0, {sum(map(len, self._placed))}), got {index!r}")

    def add_param_group(self, param_group: Mapping) -> None:
        """Add a group, partitioned as torch does (the earlier groups keep their owners).

        Call it on every rank with the same group.

        Raises:
          TypeError / ValueError: as the optimizer class's ``add_param_group``; nothing changes.
        """
        self._check_groups()
        self._template.add_param_group(param_group)  # checks it, then appends it to our param_groups
        self._place(self.param_groups[-1])

    def _check_groups(self) -> None:
        """The full groups are still the ones partitioned (a param list edited in place would desynchronise ranks)."""
        if len(self.param_groups) != len(self._placed):
            raise ValueError(
                f"param_groups has {len(self.param_groups)} groups but {len(self._placed)} were partitioned: "
                "add a group with add_param_group"
            )
        for gi, (group, placed) in enumerate(zip(self.param_groups, self._placed)):
            if not isinstance(group, Mapping):
                raise TypeError(f"param_groups[{gi}] must be a dict, got {type(group).__name__}")
            params = group.get("params")
            if not isinstance(params, (list, tuple)) or len(params) != len(placed) \
                    or any(a is not b for a, b in zip(params, placed)):
                raise ValueError(
                    f"param_groups[{gi}]['params'] is not the list of parameters that was partitioned; "
                    "parameters cannot be added or replaced in place (use add_param_group)"
                )
            for name in self.defaults:
                if name not in group:
                    raise ValueError(f"param_groups[{gi}] has no {name!r} entry")
            self._template._validate(dict(group))

    def _sync_local_groups(self) -> None:
        """Copy the full groups' hyper-parameters (a scheduler writes those) into the local optimizer's groups."""
        if self.optim is None:
            return
        for gi, li in enumerate(self._local_group_of):
            if li is None:
                continue
            dst = self.optim.param_groups[li]
            for k, v in self.param_groups[gi].items():
                if k != "params" and dst.get(k, _MISSING) is not v:  # unchanged values left alone (no re-plan)
                    dst[k] = v

    # ------------------------------------------------------------------ step

    def step(self, grads) -> None:
        """Update this rank's shard, then broadcast every updated parameter from its owner.

        Args:
          grads: one gradient (already averaged over the ranks) or None per
            parameter of :attr:`parameters`, the same on every rank.

        Raises:
          TypeError / ValueError: a malformed call or a bad hyper-parameter, raised on
            every rank alike before anything changes.
          RuntimeError: the local step failed on another rank (for a reason the checks
            every rank makes could not see); the ranks that did step keep their update.
        """
        params = self.parameters
        grads = _checked_grads(grads, params)
        self._check_groups()
        self._sync_local_groups()
        error = None
        if self.optim is not None:
            try:
                self.optim.step([grads[i] for i in self._local_positions])
            except Exception as err:  # noqa: BLE001 -- re-raised below, once every rank knows
                error = err
        t = self._transport
        if t.size > 1 and not t.all_true(error is None):
            if error is not None:
                raise error
            raise RuntimeError("the local step failed on another rank; see its error. This rank's shard was updated")
        if error is not None:
            raise error
        self._broadcast(params, grads)

    def _broadcast(self, params, grads) -> None:
        t = self._transport
        if t.size == 1:
            return
        for root in range(t.size):
            arrays = [params[i] for i in self._owned[root] if grads[i] is not None]
            if not arrays:
                continue
            for kind in _buckets.group_by_kind(arrays):
                for run in _buckets.buckets(arrays, kind):
                    buf = (_buckets.pack(arrays, run, self._scratch) if t.rank == root
                           else _buckets.empty_like_run(arrays, run, self._scratch))
                    t.bcast(buf, root)
                    if t.rank != root:
                        _buckets.unpack(buf, arrays, run)

    # ------------------------------------------------------------ checkpoints

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather every rank's shard of the state on rank ``to`` (host NumPy copies), for :meth:`state_dict`.

        Call it on every rank. As in torch, the state is a snapshot: a later
        step does not change it (the groups in :meth:`state_dict` are read live).

        Raises:
          ValueError: ``to`` is not a rank of the communicator.
        """
        if isinstance(to, bool) or not isinstance(to, (int, np.integer)) or not 0 <= to < self.world_size:
            raise ValueError(f"to must be a rank in [0, {self.world_size}), got {to!r}")
        to = int(to)
        self._sync_local_groups()
        local = {}
        if self.optim is not None:
            for position, p in zip(self._local_positions, self.optim.parameters):
                st = self.optim.state.get(p)
                if st:
                    local[position] = {k: _host_copy(v) for k, v in st.items()}
        gathered = self._transport.gather_object(local, to) if self.world_size > 1 else [local]
        if self.rank == to:
            merged = {}
            for part in gathered:
                merged.update(part)
            self._consolidated = dict(sorted(merged.items()))
        else:
            self._consolidated = None

    def state_dict(self) -> dict:
        """The full state in torch's layout, as one process's ``optimizer_class`` would give it.

        Ids number the parameters 0, 1, ... across the full groups; the groups
        carry every hyper-parameter. Only on the rank that
        :meth:`consolidate_state_dict` gathered to.

        Raises:
          RuntimeError: the state has not been consolidated on this rank (torch's error).
        """
        if self._consolidated is None:
            raise RuntimeError(
                "Optimizer state has not been consolidated on this rank. Please call "
                f"`consolidate_state_dict(to={self.rank})` on all ranks beforehand if you meant to save the global state."
            )
        out = self._template.state_dict()  # the groups with single-process ids; its state is empty
        out["state"] = {pid: dict(st) for pid, st in self._consolidated.items()}
        return out

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Load a full state dict (one process's, or :meth:`state_dict`'s); each rank keeps its shard.

        Call it on every rank with the same dict. Every rank checks the groups
        and its own shard's entries as ``optimizer_class.load_state_dict``
        would; unless every rank accepts, nothing changes on any rank.

        Raises:
          TypeError / ValueError: as ``optimizer_class.load_state_dict`` (on every
            rank: a rank whose own entries are fine names the rank that refused).
        """
        self._check_groups()
        mine = set(self._owned[self.rank])
        filtered = state_dict
        if isinstance(state_dict, Mapping) and isinstance(state_dict.get("state"), Mapping) \
                and isinstance(state_dict.get("param_groups"), (list, tuple)):
            # ids -> global positions, as the single-process load will map them
            position, where = 0, {}
            for saved in state_dict["param_groups"]:
                ids = saved.get("params") if isinstance(saved, Mapping) else None
                for pid in (ids if isinstance(ids, (list, tuple)) else ()):
                    try:
                        where.setdefault(pid, position)
                    except TypeError:
                        pass  # an unhashable id: the template names it
                    position += 1
            state = {}
            for pid, st in state_dict["state"].items():
                try:
                    pos = where.get(pid)
                except TypeError:
                    pos = None
                if pos is None or pos in mine:  # another rank's entry is that rank's to check
                    state[pid] = st
            filtered = {**state_dict, "state": state}
        saved_groups = [dict(g) for g in self.param_groups]
        error = None
        try:
            self._template.load_state_dict(filtered)
        except (TypeError, ValueError) as err:
            error = err
        t = self._transport
        if t.size > 1 and not t.all_true(error is None):
            error = error or ValueError("state_dict was refused by another rank's checks of its shard; see its error")
        if error is not None:
            for group, saved in zip(self.param_groups, saved_groups):
                group.clear()
                group.update(saved)
            self._template.state.clear()
            raise error
        self._sync_local_groups()
        if self.optim is not None:
            # through the local optimizer's own load (local ids), so whatever it caches learns of the new state
            index = {id(p): i for i, p in enumerate(self.optim.parameters)}
            local = {"state": {index[id(p)]: st for p, st in self._template.state.items() if id(p) in index},
                     "param_groups": []}
            for group in self.optim.param_groups:
                packed = {k: v for k, v in group.items() if k != "params"}
                packed["params"] = [index[id(p)] for p in group["params"]]
                local["param_groups"].append(packed)
            self.optim.load_state_dict(local)
        self._template.state.clear()

    def __repr__(self):
        inner = repr(self._template).replace(type(self._template).__name__, "", 1).strip()
        return (f"ZeroRedundancyOptimizer({self._optimizer_class.__name__}, rank {self.rank} of {self.world_size}) "
                f"{inner}")


def _checked_grads(grads, params) -> list:
    """The checks every rank can make alike (one per entry), before any rank changes anything."""
    if isinstance(grads, (str, bytes, Mapping)) or hasattr(grads, "shape") or not hasattr(grads, "__iter__"):
        raise TypeError(f"grads must be a sequence with one array (or None) per parameter, got {type(grads).__name__}")
    grads = list(grads)
    if len(grads) != len(params):
        raise ValueError(f"grads has {len(grads)} entries but the optimizer has {len(params)} parameters")
    for i, (p, g) in enumerate(zip(params, grads)):
        if g is None:
            continue
        if not (hasattr(g, "shape") and hasattr(g, "dtype")) or isinstance(g, np.generic):
            raise TypeError(f"grads[{i}] must be an array or None, got {type(g).__name__}")
        _checked_grad(i, p, g)  # the unsharded optimizer's checks: namespace, shape, device, dtype and range
    return grads
