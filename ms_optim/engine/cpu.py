"""The cpu backend: each bucket of NumPy arrays through one compiled numba loop.

The pieces, one module each:

* :mod:`.cpu_codegen` prints a traced rule as one loop over a table of
  tensors (a row per span: its size and the address of each array);
* :mod:`.cpu_numba` imports numba on first use and builds the intrinsics the
  loops use (typed pointers from addresses, exact float16 conversions);
* :mod:`.cpu_cache` writes each loop to a file named by its hash, so numba's
  cache serves every later process;
* :mod:`.cpu_threads` cuts a large bucket's rows over threads;
* :mod:`.cpu_auto` is what ``backend='auto'`` uses: compile only buckets
  large enough to repay it;
* this module is the backend: the kernels of a process, the tables, and the
  launch.

**Tables.** Tensors whose arrays are not all C- (or all F-) contiguous run on
contiguous copies that are written back after the call; zero-size tensors
are skipped; a tensor with a read-only target or a mismatched dtype or shape
runs eagerly (which raises as eager does). Addresses of ``p`` and its state
are remembered per array (weakref-dropped), since ``a.ctypes.data`` costs
about a microsecond.

**Kept across steps.** :meth:`CpuBackend.program` builds a bucket's table
once (:class:`Program`): the sizes and the addresses of the parameters and
their state, cut for the threads, with adjacent tensors that are adjacent in
every array merged into one row (parameters, gradients and state that are
views of flat buffers, :mod:`ms_optim.flat`, become a single row). A step
then writes only the gradient column, and not even that when the gradients
are the arrays of the last step.

**Failures.** :meth:`CpuBackend.prepare` does all that can fail (compiling,
building tables, copies, starting threads) and returns a launch that cannot:
an optimizer step prepares every bucket before it launches any, so a step
that raises has changed nothing.
"""

from __future__ import annotations

import ctypes
import operator
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from . import cpu_threads
from .addresses import AddressCache
from .cpu_cache import cache_dir, load_module
from .cpu_codegen import DTYPES, emit_source, table_columns
from .cpu_numba import CpuBackendUnavailable, check_numba_installed, default_threads, numba_support
from .cpu_threads import CHUNK, PARALLEL_MIN_ELEMENTS, ThreadPool, chunked, row_ranges, run_parts
from .eager import noop as _noop, run_eager
from .layout import Layout, as_layout, broadcast_run, classic_stage
from .tracer import Graph, trace

__all__ = [
    "AutoCpuBackend",
    "CHUNK",
    "CpuBackend",
    "CpuBackendUnavailable",
    "PARALLEL_MIN_ELEMENTS",
    "Program",
    "cache_dir",
    "emit_source",
    "numba_support",
]

_chunked = chunked  # the name tests and older callers use


@dataclass
class _Kernel:
    graph: Graph
    module: Any
    source: str
    compute: type  # the compute dtype's scalar type (np.float32 / np.float64)
    itemsize: int  # bytes per element of storage
    n_inputs: int  # full arrays (the table's address columns after n)
    written: frozenset  # input indices the kernel writes back
    layout: Layout = None  # type: ignore[assignment]


_addressof = ctypes.addressof
_from_buffer = ctypes.c_char.from_buffer


def grad_address(g) -> int:
    """The address of a C-contiguous NumPy array's first element (ValueError if it is not C-contiguous).

    ``ctypes.c_char.from_buffer`` is about four times cheaper than
    ``g.ctypes.data`` and refuses a non-contiguous buffer by itself; a
    read-only array (which it also refuses) takes the slower way.
    """
    try:
        return _addressof(_from_buffer(g))
    except (TypeError, BufferError, ValueError):
        if not g.flags.c_contiguous:
            raise ValueError("not C-contiguous") from None
        return g.ctypes.data


class CpuBackend:
    """Runs each (group, dtype) bucket of NumPy arrays through one compiled numba loop.

    Attributes (settable on the instance):
      num_threads: threads for a large bucket (default: numba's
        ``NUMBA_NUM_THREADS``, i.e. the usable cores or that variable).
      parallel: ``'threads'`` (default) splits a large bucket into row ranges
        run by the serial kernel on a small pool of Python threads (the kernel
        releases the GIL); ``'prange'`` runs numba's ``parallel=True`` twin of
        the loop instead (see :mod:`.cpu_threads`).
      parallel_min_elements: buckets smaller than this run serially.
      chunk: the most elements of one row when a bucket is split over threads.

    Raises:
      CpuBackendUnavailable: numba is not installed or does not import.
    """

    name = "cpu"

    def __init__(self):
        check_numba_installed()  # numba itself is imported by the first compile
        self._kernels: dict[tuple, _Kernel] = {}
        self._lock = threading.Lock()
        self.num_threads: int | None = None  # None: numba's NUMBA_NUM_THREADS
        self.parallel = "threads"
        self.parallel_min_elements = PARALLEL_MIN_ELEMENTS
        self.chunk = CHUNK
        self._pool = ThreadPool()
        self._address = AddressCache()  # p's and the state's addresses, kept while they live
        #: how many tensors ran compiled, through contiguous copies, or eagerly
        self.stats = {"kernels": 0, "compiled_tensors": 0, "copied_tensors": 0, "eager_tensors": 0}
        from .cpu_auto import AutoCpuBackend

        #: what ``backend='auto'`` uses: this backend for buckets worth a compile, eager for the rest
        self.auto_variant = AutoCpuBackend(self)

    # ------------------------------------------------------------ kernels

    @staticmethod
    def kernel_key(rule: Callable, static: Mapping, scalar_names, layout: Layout | int, storage: str) -> tuple:
        return (rule, tuple(sorted(static.items())), tuple(sorted(scalar_names)), as_layout(layout), storage)

    def kernel(self, rule: Callable, static: Mapping, scalar_names, layout: Layout | int, storage: str) -> _Kernel:
        """The compiled kernel of one rule, static configuration, layout and storage dtype (cached).

        ``layout`` is a :class:`~ms_optim.engine.layout.Layout`, or the number of
        state arrays of a classic ``rule(p, g, *state) -> (p, *state)``.
        """
        key = self.kernel_key(rule, static, scalar_names, layout, storage)
        kernel = self._kernels.get(key)
        if kernel is None:
            with self._lock:
                kernel = self._kernels.get(key)
                if kernel is None:
                    kernel = self._kernels[key] = self._build(rule, static, scalar_names, key[3], storage)
        return kernel

    def _build(self, rule, static, scalar_names, layout: Layout, storage) -> _Kernel:
        names = layout.names()
        graph = trace(rule, names, sorted(scalar_names), static)
        rule_name = getattr(rule, "__qualname__", repr(rule))
        if len(graph.outputs) != len(layout.writes):
            raise TypeError(f"rule {rule_name} returned {len(graph.outputs)} values, expected {len(layout.writes)}")

        def source_for(cache: bool) -> str:
            return emit_source(graph, storage, rule_name=rule_name, static=static, cache=cache, layout=layout)

        module = load_module(source_for)
        self.stats["kernels"] += 1
        compute, array = DTYPES[storage]
        return _Kernel(graph, module, source_for(True), np.dtype(compute).type, np.dtype(array).itemsize,
                       layout.n_arrays, frozenset(layout.writes), layout)

    # ---------------------------------------------------------------- run

    def run(self, rule, static, scalars, params, grads, states, xp) -> None:
        """Update ``params`` and ``states`` in place: the classic ``rule(p, g, *state) -> (p, *state)``."""
        self.prepare(rule, static, scalars, *classic_stage(params, grads, states), xp)()

    def run_stage(self, rule, static, scalars, layout: Layout, tensors, xp) -> None:
        """One element-wise stage over a bucket: ``tensors[t]`` are tensor ``t``'s arguments."""
        self.prepare(rule, static, scalars, layout, tensors, xp)()

    def prepare(self, rule, static, scalars, layout: Layout, tensors, xp) -> Callable[[], None]:
        """Everything of one stage that can fail, done now; the returned launch cannot fail.

        Tensors that must run eagerly are run here (inside an optimizer step
        their writes are held back until the step commits).
        """
        if not tensors:
            return _noop
        storage = np.dtype(tensors[0][0].dtype).name
        if storage not in DTYPES:
            self._eager(rule, static, scalars, layout, tensors, xp)
            return _noop
        kernel = self.kernel(rule, static, scalars.keys(), layout, storage)
        return self.prepare_kernel(kernel, rule, static, scalars, tensors, xp)

    def run_kernel(self, kernel: _Kernel, rule, static, scalars, tensors, xp) -> None:
        """One bucket through ``kernel``; tensors it cannot take directly are copied or run eagerly."""
        self.prepare_kernel(kernel, rule, static, scalars, tensors, xp)()

    def prepare_kernel(self, kernel: _Kernel, rule, static, scalars, tensors, xp) -> Callable[[], None]:
        """:meth:`prepare` with the kernel already built."""
        layout = kernel.layout
        n_full = layout.n_arrays
        dtype = tensors[0][0].dtype
        written = kernel.written
        address = self._address
        ndarray = np.ndarray
        columns = table_columns(layout) if layout.operands else None
        rows: list[int] = []
        keep: list[tuple[Any, Any]] = []  # (target or None, contiguous scratch): alive through the call
        eager: list[int] = []
        total = 0
        copied = 0
        for t, arrays in enumerate(tensors):
            p = arrays[0]
            n = p.size
            if n == 0:
                continue
            shape = p.shape
            usable = c_order = True
            for k, a in enumerate(arrays):
                if type(a) is not ndarray or a.dtype != dtype or (k < n_full and a.shape != shape):
                    usable = False
                    break
                flags = a.flags
                if k in written and not flags.writeable:
                    usable = False
                    break
                if k < n_full and not flags.c_contiguous:
                    c_order = False
            if usable and columns is not None:
                try:
                    runs = [broadcast_run(arrays[n_full + j].shape, shape) if kind == "bcast" else None
                            for j, kind in enumerate(layout.operands)]
                except ValueError:
                    usable = False
                # operands are indexed by the parameter's C-order element number (below: C-order
                # copies of strided full arrays); a strided operand is small, so copy it too
                ops = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays[n_full:]]
                keep.extend((None, a) for a in ops)
            if not usable:  # eager handles (or rejects, as it would anyway) what the kernel cannot
                eager.append(t)
                continue
            rows.append(n)
            total += n
            full = arrays[:n_full]
            if c_order or (columns is None and all(a.flags.f_contiguous for a in full)):
                # all C- or all F-ordered: memory order matches element for element.
                # p and state live across steps (cached addresses); g is usually new
                rows.extend([address(a) if k in written else a.ctypes.data for k, a in enumerate(full)])
            else:  # strided views: run on C-contiguous copies, write the targets back after
                for k, a in enumerate(full):
                    scratch = np.ascontiguousarray(a)
                    rows.append(scratch.ctypes.data)
                    keep.append((a if k in written and scratch is not a else None, scratch))
                copied += 1
            if columns is not None:
                rows.extend(a.ctypes.data for a in ops)
                for j, run in enumerate(runs):
                    if run is not None:
                        inner, span = run
                        rows.extend((arrays[n_full + j].size, inner, inner * span))
                rows.append(0)  # the first element: rows are cut into chunks at launch
        if eager:
            self._eager(rule, static, scalars, layout, [tensors[t] for t in eager], xp)
        if not rows:
            return _noop
        width = columns["width"] if columns is not None else 1 + kernel.n_inputs
        table = np.array(rows, dtype=np.int64).reshape(-1, width)
        h = np.array(kernel.graph.host_values(scalars), dtype=kernel.compute)
        launch = self._launcher(kernel, self._split(kernel, table, total), h, table)
        stats = self.stats
        stats["copied_tensors"] += copied

        def run() -> None:
            launch()
            for target, scratch in keep:
                if target is not None:
                    target[...] = scratch
            stats["compiled_tensors"] += len(table)

        return run

    def _split(self, kernel: _Kernel, table, total: int) -> list | None:
        """The table cut for the threads (None: one serial call over the whole table)."""
        threads = self.num_threads or default_threads()
        if threads <= 1 or total < self.parallel_min_elements:
            return None
        table = chunked(table, self.chunk, kernel.itemsize, kernel.n_inputs,
                        table_columns(kernel.layout).get("start"))
        if self.parallel == "prange":
            return [table]
        parts = row_ranges(table, threads)
        return parts if len(parts) > 1 else None

    def _launcher(self, kernel: _Kernel, parts: list | None, h, table=None) -> Callable[[], None]:
        module = kernel.module
        if parts is None:
            if table is None:
                raise ValueError("a serial launch needs its table")
            return lambda: module.serial(table, h)
        if self.parallel == "prange":
            return lambda: module.parallel(parts[0], h)
        pool = self._pool.get(len(parts) - 1)  # threads start now, not in the launch
        return lambda: run_parts(module.serial, parts, h, pool)

    def _eager(self, rule, static, scalars, layout: Layout, tensors, xp) -> None:
        for arrays in tensors:
            run_eager(rule, arrays, len(layout.writes), scalars, static, xp, layout)
        self.stats["eager_tensors"] += len(tensors)

    # ------------------------------------------------------- kept across steps

    def program(self, rule, static, scalar_names, params, states) -> Program | None:
        """A classic bucket's table, built once for the steps to come (None: it needs the general path).

        It covers tensors whose parameter and state arrays are C-contiguous,
        writeable NumPy arrays of the parameter's dtype (float16/32/64); a
        bucket with any other tensor returns None. Compiling may raise.
        """
        if not params:
            return None
        dtype = params[0].dtype
        storage = np.dtype(dtype).name
        if storage not in DTYPES:
            return None
        for p, st in zip(params, states):
            for a in (p, *st):
                if type(a) is not np.ndarray or a.dtype != dtype or a.shape != p.shape or \
                        not a.flags.c_contiguous or not a.flags.writeable or a.size == 0:
                    return None
        kernel = self.kernel(rule, static, scalar_names, len(states[0]), storage)
        return Program(self, kernel, params, states)


class Program:
    """One classic bucket's table, kept across steps: a step writes only the gradient column.

    Built by :meth:`CpuBackend.program` from the parameters and their state
    arrays (which it holds, so their buffers cannot move). Rows of tensors that
    lie end to end in every array (parameters, state and, on that step,
    gradients) are merged: views of flat buffers make one row.
    """

    def __init__(self, backend: CpuBackend, kernel: _Kernel, params, states):
        self.backend = backend
        self.kernel = kernel
        self.params = list(params)
        self.states = [list(st) for st in states]
        itemsize = params[0].itemsize
        self.sizes = np.array([p.size for p in params], dtype=np.int64)
        self.nbytes = self.sizes * itemsize
        self.total = int(self.sizes.sum())
        columns = [[p.ctypes.data for p in params]] + [[st[k].ctypes.data for st in states]
                                                         for k in range(len(states[0]))]
        self._fixed = np.array(columns, dtype=np.int64)  # (1 + n_state, tensors): p, s0, s1...
        # tensor t may join t-1's row when each of its fixed arrays starts where t-1's ends
        ends = self._fixed[:, :-1] + self.nbytes[None, :-1]
        self._fixed_adjacent = np.all(self._fixed[:, 1:] == ends, axis=0)
        self._grad_refs: list = []
        self._grad_addresses: list | None = None
        self._launch_for: tuple | None = None  # (grad addresses, parts or table)

    def bind(self, scalars: Mapping[str, float], grads) -> Callable[[], None] | None:
        """The launch of this step for ``grads`` (checked by the caller: ndarray, shape, dtype).

        Returns None when a gradient is not C-contiguous (the caller takes the
        general path). Can raise MemoryError only.
        """
        refs = self._grad_refs
        if len(refs) == len(grads) and all(map(operator.is_, [r() for r in refs], grads)):
            addresses = self._grad_addresses
        else:
            try:
                addresses = [grad_address(g) for g in grads]
            except ValueError:
                return None
            self._grad_refs = [weakref.ref(g) for g in grads]
            self._grad_addresses = addresses
        kernel = self.kernel
        h = np.array(kernel.graph.host_values(scalars), dtype=kernel.compute)
        cached = self._launch_for
        if cached is None or cached[0] != addresses:
            cached = self._launch_for = (addresses, self._tables(addresses))
        table, parts = cached[1]
        backend = self.backend
        launch = backend._launcher(kernel, parts, h, table)
        stats = backend.stats
        n = len(self.params)

        def run() -> None:
            launch()
            stats["compiled_tensors"] += n

        return run

    def _tables(self, addresses: list):
        g = np.array(addresses, dtype=np.int64)
        adjacent = self._fixed_adjacent & (g[1:] == g[:-1] + self.nbytes[:-1])
        starts = np.flatnonzero(np.concatenate([[True], ~adjacent]))
        sizes = np.add.reduceat(self.sizes, starts) if len(starts) else self.sizes[:0]
        fixed = self._fixed[:, starts]
        table = np.empty((len(starts), 2 + len(fixed)), dtype=np.int64)
        table[:, 0] = sizes
        table[:, 1] = fixed[0]
        table[:, 2] = g[starts]
        table[:, 3:] = fixed[1:].T
        return table, self.backend._split(self.kernel, table, self.total)


from .cpu_auto import AUTO_MIN_ELEMENTS, AutoCpuBackend  # noqa: E402  (it needs CpuBackend's module loaded)
