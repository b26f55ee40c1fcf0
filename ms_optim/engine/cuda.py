"""The cuda backend: each rule compiled once into CuPy kernels, one launch per bucket.

Imported only when an optimizer meets CuPy arrays (see ``engine/__init__.py``).
The kernel sources come from :mod:`ms_optim.engine.cuda_codegen`; this module
compiles them with CuPy, builds the device tables and launches.

How a bucket (one group, one dtype, one set of step scalars) is updated:

* every tensor whose parameter, gradient and state arrays are all C-contiguous
  goes into **one** launch of the multi-tensor kernel: a device table of
  pointers lists the tensors, and each block owns one chunk of one tensor;
* any other tensor (a strided view) gets a launch of the per-tensor
  ``ElementwiseKernel``, which handles any layout. Same body, same results.

Storage float16 is computed in float32 and rounded once on the way back, as the
eager backend does. Hoisted scalars (``Graph.host_values``) are cast to the
compute dtype on the host. A dtype without a kernel (bfloat16...) or a state
array whose dtype differs from its parameter's runs on the eager backend.

The gradient may be the very array it updates (an element is read before it
is written by the same thread), but must not otherwise overlap a parameter or
state array: the fused kernel reads and writes all of them in one pass.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import cupy
import numpy as np

from . import cuda_codegen
from .cuda_codegen import (
    MULTI_TENSOR_CHUNK,
    MULTI_TENSOR_THREADS,
    NVRTC_OPTIONS,
    KernelSource,
    block_map,
    pointer_table,
)
from .eager import EagerBackend
from .layout import Layout, broadcast_run

__all__ = ["CudaBackend"]


class _Kernels:
    """The compiled pair for one KernelSource (CuPy compiles lazily, per device)."""

    def __init__(self, source: KernelSource):
        self.source = source
        self.scalar_type = np.dtype(source.scalar_dtype).type
        self.elementwise = cupy.ElementwiseKernel(
            source.in_params, source.out_params, source.body, name=source.name,
            preamble=source.preamble, options=NVRTC_OPTIONS, no_return=True,
        )
        self.multi_tensor = cupy.RawKernel(
            source.multi_tensor_source, source.multi_tensor_name, options=NVRTC_OPTIONS,
        )


class CudaBackend:
    """Runs rules on CuPy arrays with fused kernels; the eager backend's interface.

    Attributes:
      multi_tensor: set False to send every tensor through the per-tensor
        ElementwiseKernel (the fallback path), e.g. to compare the two.
      chunk: elements per block in the multi-tensor kernel.
    """

    name = "cuda"

    def __init__(self, *, multi_tensor: bool = True, chunk: int = MULTI_TENSOR_CHUNK):
        if not 0 < int(chunk) <= 2**30:
            raise ValueError(f"chunk must be in (0, 2**30] elements, got {chunk}")
        self.multi_tensor = multi_tensor
        self.chunk = int(chunk)
        self._kernels: dict[tuple, _Kernels] = {}
        self._eager = EagerBackend()
        # Device copies of block maps (keyed by tensor sizes) and pointer tables
        # (keyed by the addresses): parameters and state keep their addresses
        # from step to step, so most steps upload only what changed.
        self._tables: OrderedDict[tuple, Any] = OrderedDict()

    def kernels(self, rule: Callable, static: Mapping[str, Any], scalar_names: Sequence[str],
                layout: Layout | int, storage: str) -> _Kernels:
        """The compiled kernels for this rule, configuration, layout and dtype (built once)."""
        key = cuda_codegen.cache_key(rule, static, scalar_names, layout, storage)
        found = self._kernels.get(key)
        if found is None:
            source = cuda_codegen.kernel_source(rule, static, scalar_names, layout, storage)
            found = self._kernels[key] = _Kernels(source)
        return found

    def run(self, rule, static, scalars, params, grads, states, xp) -> None:
        """The classic update ``rule(p, g, *state) -> (p, *state)`` of one bucket."""
        if not params:
            return
        layout = Layout.of_state(len(states[0]) if states else 0)
        self.run_stage(rule, static, scalars, layout, [(p, g, *st) for p, g, st in zip(params, grads, states)], xp)

    def run_stage(self, rule, static, scalars, layout: Layout, tensors, xp) -> None:
        """One element-wise stage over a bucket: ``tensors[t]`` are tensor ``t``'s arguments."""
        if not tensors:
            return
        storage = str(tensors[0][0].dtype)
        if storage not in cuda_codegen.COMPUTE_TYPES or not _same_dtype(tensors):
            self._eager.run_stage(rule, static, scalars, layout, tensors, xp)
            return
        kern = self.kernels(rule, static, scalars.keys(), layout, storage)
        hoisted = [kern.scalar_type(v) for v in kern.source.graph.host_values(scalars)]
        n = layout.n_arrays
        reads = (*layout.read_only, *range(n, layout.n_inputs))
        fused: dict[int, list[tuple]] = {}
        for arrays in tensors:
            p = arrays[0]
            if p.size == 0:
                continue
            if self.multi_tensor and all(a.flags.c_contiguous for a in arrays):
                fused.setdefault(p.device.id, []).append(arrays)
            else:  # CuPy's ElementwiseKernel indexes any layout and broadcasts the operands
                with p.device:
                    kern.elementwise(*(arrays[k] for k in reads), *hoisted, *(arrays[w] for w in layout.writes))
        for device_id, group in fused.items():
            with cupy.cuda.Device(device_id):
                self._launch(kern, group, hoisted)

    def _launch(self, kern: _Kernels, tensors: list[tuple], hoisted: list) -> None:
        layout = kern.source.layout
        sizes = tuple(arrays[0].size for arrays in tensors)
        addresses = tuple(tuple(a.data.ptr for a in arrays) for arrays in tensors)
        device = cupy.cuda.Device().id
        blocks = self._table(("blocks", device, self.chunk, sizes), lambda: block_map(sizes, self.chunk))
        sizes_dev = self._table(("sizes", device, sizes), lambda: np.asarray(sizes, dtype=np.int64))
        ptrs = self._table(("ptrs", device, addresses), lambda: pointer_table(addresses))
        tables = [ptrs, blocks, sizes_dev]
        if "bcast" in layout.operands:
            runs = tuple(
                broadcast_run(arrays[layout.n_arrays + j].shape, arrays[0].shape)
                for j, kind in enumerate(layout.operands) if kind == "bcast"
                for arrays in tensors
            )
            tables.append(self._table(("bcast", device, runs), lambda: np.asarray(runs, dtype=np.int64).reshape(-1)))
        kern.multi_tensor(
            (blocks.size // 2,), (MULTI_TENSOR_THREADS,),
            (*tables, np.int32(len(tensors)), np.int32(self.chunk), *hoisted),
        )

    def _table(self, key: tuple, build: Callable[[], np.ndarray]):
        found = self._tables.get(key)
        if found is None:
            found = self._tables[key] = cupy.asarray(build())
            while len(self._tables) > 64:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(key)
        return found


def _same_dtype(tensors) -> bool:
    dtype = tensors[0][0].dtype
    return all(a.dtype == dtype for arrays in tensors for a in arrays)
