"""The CuPy side of :mod:`ms_optim.engine.reductions`: multi-tensor RawKernels over a pointer table.

Imported only when a reduction meets CuPy arrays; the kernel *sources* are
plain strings (the functions ``*_source``), which ``tests/test_reduction_kernels.py``
compiles with NVRTC for sm_90 and runs on the host with g++, without a GPU.

The launch geometry is the optimizer kernels' (:mod:`.cuda_codegen`): one
block of :data:`THREADS` threads per chunk of :data:`CHUNK` elements of one
tensor, found through the ``blocks`` table (tensor, first element), with the
tensors' addresses in ``ptrs`` and their sizes in ``sizes``.

* A norm is two launches: each block reduces its chunk (a block-stride loop,
  one float64 accumulator per thread, then a shared-memory tree) into one
  float64 partial; then one block per tensor combines that tensor's
  partials, in block order, so the result does not depend on scheduling.
* The finite check (and unscale) is one launch: a thread that meets a NaN or
  inf stores 1.0 into ``found_inf`` (every such store writes the same value,
  so the race is benign; torch's kernel does the same); ``inv_scale`` is read
  from device memory, and a value of 1 skips the writes, as in torch.
* The clip multiply is one launch reading the coefficient from device memory.

Nothing here reads a device value on the host: the results are CuPy arrays.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from .cuda_codegen import _DEVICE_PRELUDE, COMPUTE_TYPES, NVRTC_OPTIONS, block_map, pointer_table

__all__ = ["CHUNK", "THREADS", "check_source", "norm_source", "scale_source", "segment_source"]

#: threads per block (a power of two: the tree reduction halves it)
THREADS = 512
#: elements per block (the optimizer kernels' chunk)
CHUNK = 65536

_SUFFIX = {"float16": "f16", "float32": "f32", "float64": "f64"}

#: norm op -> (per-element accumulate, identity, how partials combine)
_NORM_OPS = {
    "sumsq": ("acc += v * v;", "0.0", "sum"),
    "sumabs": ("acc += fabs(v);", "0.0", "sum"),
    "sumpow": ("acc += pow(fabs(v), p);", "0.0", "sum"),
    "count": ("acc += (v != 0.0) ? 1.0 : 0.0;", "0.0", "sum"),
    "maxabs": ("acc = mso_maximum(acc, fabs(v));", "0.0", "max"),
    "minabs": ("acc = mso_minimum(acc, fabs(v));", "MSO_INF", "min"),
}
_COMBINE = {"sum": "a + b", "max": "mso_maximum(a, b)", "min": "mso_minimum(a, b)"}
_IDENTITY = {"sum": "0.0", "max": "0.0", "min": "MSO_INF"}


def norm_op(p: float) -> str:
    """The kernel op for order ``p``."""
    if p == 2:
        return "sumsq"
    if p == 1:
        return "sumabs"
    if p == 0:
        return "count"
    if p == math.inf:
        return "maxabs"
    if p == -math.inf:
        return "minabs"
    return "sumpow"


def _header(storage: str) -> str:
    fp16 = "#include <cuda_fp16.h>\n" if storage == "float16" else ""
    return fp16 + _DEVICE_PRELUDE


def _tree(combine: str) -> list[str]:
    """Lines reducing ``part[0..blockDim.x)`` into ``part[0]`` (blockDim.x a power of two)."""
    return [
        "  part[threadIdx.x] = acc;",
        "  __syncthreads();",
        "  for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {",
        "    if (threadIdx.x < s) {",
        "      const double a = part[threadIdx.x], b = part[threadIdx.x + s];",
        f"      part[threadIdx.x] = {combine};",
        "    }",
        "    __syncthreads();",
        "  }",
    ]


def norm_source(op: str, storage: str) -> tuple[str, str]:
    """(name, source) of the first pass: one float64 partial per block of ``blocks``."""
    step, identity, how = _NORM_OPS[op]
    _, raw, _, _ = COMPUTE_TYPES[storage]
    name = f"ms_optim_norm_{op}_{_SUFFIX[storage]}"
    extra = ", const double p" if op == "sumpow" else ""
    lines = [
        f"extern \"C\" __global__ void __launch_bounds__({THREADS}) {name}(",
        "    const long long* __restrict__ ptrs, const long long* __restrict__ blocks,",
        f"    const long long* __restrict__ sizes, double* __restrict__ partials, const int chunk{extra}) {{",
        f"  typedef {raw} P;",
        f"  __shared__ double part[{THREADS}];",
        "  const long long tensor = blocks[2 * blockIdx.x];",
        "  const long long start = blocks[2 * blockIdx.x + 1];",
        "  const int len = (int)min((long long)chunk, sizes[tensor] - start);",
        "  const P* const x = (const P*)(ptrs[tensor]) + start;",
        f"  double acc = {identity};",
        "  for (int i = threadIdx.x; i < len; i += blockDim.x) {",
        "    const double v = (double)(float)x[i];" if storage == "float16" else "    const double v = (double)x[i];",
        f"    {step}",
        "  }",
        *_tree(_COMBINE[how]),
        "  if (threadIdx.x == 0) partials[blockIdx.x] = part[0];",
        "}",
    ]
    return name, _header(storage) + "\n".join(lines) + "\n"


def segment_source(how: str) -> tuple[str, str]:
    """(name, source) of the second pass: block ``t`` combines tensor ``t``'s partials into ``out[t]``."""
    name = f"ms_optim_norm_segment_{how}"
    lines = [
        f"extern \"C\" __global__ void __launch_bounds__({THREADS}) {name}(",
        "    const double* __restrict__ partials, const long long* __restrict__ first,",
        "    double* __restrict__ out) {",
        f"  __shared__ double part[{THREADS}];",
        "  const long long begin = first[blockIdx.x], end = first[blockIdx.x + 1];",
        f"  double acc = {_IDENTITY[how]};",
        "  for (long long k = begin + threadIdx.x; k < end; k += blockDim.x) {",
        "    const double a = acc, b = partials[k];",
        f"    acc = {_COMBINE[how]};",
        "  }",
        *_tree(_COMBINE[how]),
        "  if (threadIdx.x == 0) out[blockIdx.x] = part[0];",
        "}",
    ]
    return name, _DEVICE_PRELUDE + "\n".join(lines) + "\n"


def check_source(storage: str, unscale: bool) -> tuple[str, str]:
    """(name, source): the finite check, and with ``unscale`` the multiply by ``*inv_scale``."""
    compute, raw, _, _ = COMPUTE_TYPES[storage]
    kind = "unscale" if unscale else "check"
    name = f"ms_optim_{kind}_{_SUFFIX[storage]}"
    ptr = "P* const" if unscale else "const P* const"
    params = "const float* __restrict__ inv_scale, " if unscale else ""
    lines = [
        f"extern \"C\" __global__ void __launch_bounds__({THREADS}) {name}(",
        "    const long long* __restrict__ ptrs, const long long* __restrict__ blocks,",
        f"    const long long* __restrict__ sizes, float* found_inf, {params}const int chunk) {{",
        f"  typedef {raw} P;",
        f"  typedef {compute} T;",
        "  const long long tensor = blocks[2 * blockIdx.x];",
        "  const long long start = blocks[2 * blockIdx.x + 1];",
        "  const int len = (int)min((long long)chunk, sizes[tensor] - start);",
        f"  {ptr} x = ({'P' if unscale else 'const P'}*)(ptrs[tensor]) + start;",
        *(["  const T inv = (T)(*inv_scale);", "  const bool identity = inv == (T)1;"] if unscale else []),
        "  bool bad = false;",
        "  for (int i = threadIdx.x; i < len; i += blockDim.x) {",
        "    const T v = (T)x[i];",
        "    bad = bad || !isfinite(v);",
        *(["    if (!identity) x[i] = (P)(v * inv);"] if unscale else []),
        "  }",
        "  if (bad) *found_inf = 1.0f;",
        "}",
    ]
    return name, _header(storage) + "\n".join(lines) + "\n"


def scale_source(storage: str) -> tuple[str, str]:
    """(name, source): ``x *= *coef`` in the compute dtype (``coef`` a 0-d array of it)."""
    compute, raw, _, _ = COMPUTE_TYPES[storage]
    name = f"ms_optim_scale_{_SUFFIX[storage]}"
    lines = [
        f"extern \"C\" __global__ void __launch_bounds__({THREADS}) {name}(",
        "    const long long* __restrict__ ptrs, const long long* __restrict__ blocks,",
        f"    const long long* __restrict__ sizes, const {compute}* __restrict__ coef, const int chunk) {{",
        f"  typedef {raw} P;",
        f"  typedef {compute} T;",
        "  const long long tensor = blocks[2 * blockIdx.x];",
        "  const long long start = blocks[2 * blockIdx.x + 1];",
        "  const int len = (int)min((long long)chunk, sizes[tensor] - start);",
        "  P* const x = (P*)(ptrs[tensor]) + start;",
        "  const T c = *coef;",
        "  for (int i = threadIdx.x; i < len; i += blockDim.x) x[i] = (P)((T)x[i] * c);",
        "}",
    ]
    return name, _header(storage) + "\n".join(lines) + "\n"


def all_sources() -> list[tuple[str, str]]:
    """Every kernel this module launches: what the tests compile."""
    out = []
    for storage in _SUFFIX:
        out += [norm_source(op, storage) for op in _NORM_OPS]
        out += [check_source(storage, False), check_source(storage, True), scale_source(storage)]
    out += [segment_source(how) for how in _COMBINE]
    return out


# ------------------------------------------------------------------ launching (needs CuPy and a GPU)

_kernels: dict = {}
_tables: OrderedDict = OrderedDict()


def _kernel(name_source: tuple[str, str]):
    import cupy

    name, source = name_source
    k = _kernels.get(name)
    if k is None:
        k = _kernels[name] = cupy.RawKernel(source, name, options=NVRTC_OPTIONS)
    return k


def _upload(key: tuple, build):
    import cupy

    found = _tables.get(key)
    if found is None:
        found = _tables[key] = cupy.asarray(build())
        while len(_tables) > 64:
            _tables.popitem(last=False)
    else:
        _tables.move_to_end(key)
    return found


def _bucket_tables(grads: list):
    """(ptrs, blocks, sizes, n_blocks, per-tensor block counts) on the current device, cached by layout."""
    import cupy

    dev = cupy.cuda.Device().id
    sizes = tuple(int(g.size) for g in grads)
    addresses = tuple((g.data.ptr,) for g in grads)
    blocks = _upload(("blocks", dev, sizes), lambda: block_map(sizes, CHUNK))
    sizes_dev = _upload(("sizes", dev, sizes), lambda: np.asarray(sizes, dtype=np.int64))
    ptrs = _upload(("ptrs", dev, addresses), lambda: pointer_table(addresses))
    return ptrs, blocks, sizes_dev, blocks.size // 2, sizes


def norm_partials(grads: list, p: float):
    """A float64 CuPy array: each tensor's partial (see :func:`ms_optim.engine.reductions.norm_partials`)."""
    import cupy

    with grads[0].device:
        storage = str(grads[0].dtype)
        op = norm_op(p)
        ptrs, blocks, sizes_dev, n_blocks, sizes = _bucket_tables(grads)
        out = cupy.zeros(len(grads), dtype=cupy.float64)
        if n_blocks == 0:
            return out
        partials = cupy.empty(n_blocks, dtype=cupy.float64)
        args = (ptrs, blocks, sizes_dev, partials, np.int32(CHUNK))
        if op == "sumpow":
            args += (np.float64(p),)
        _kernel(norm_source(op, storage))((n_blocks,), (THREADS,), args)
        counts = [-(-n // CHUNK) for n in sizes]
        first = _upload(("first", cupy.cuda.Device().id, sizes),
                        lambda: np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        how = _NORM_OPS[op][2]
        _kernel(segment_source(how))((len(grads),), (THREADS,), (partials, first, out))
        return out


def check_and_scale(grads: list, found_inf, inv_scale) -> None:
    """The finite check into ``found_inf``; with ``inv_scale`` (a float32 0-d CuPy array) the unscale too."""
    import cupy

    with grads[0].device:
        storage = str(grads[0].dtype)
        ptrs, blocks, sizes_dev, n_blocks, _ = _bucket_tables(grads)
        if n_blocks == 0:
            return
        if inv_scale is None:
            _kernel(check_source(storage, False))((n_blocks,), (THREADS,),
                                                  (ptrs, blocks, sizes_dev, found_inf, np.int32(CHUNK)))
        else:
            inv = cupy.asarray(inv_scale, dtype=cupy.float32)
            _kernel(check_source(storage, True))((n_blocks,), (THREADS,),
                                                 (ptrs, blocks, sizes_dev, found_inf, inv, np.int32(CHUNK)))


def scale(grads: list, c) -> None:
    """``g *= c`` for the bucket; ``c`` a number or 0-d array, taken in the compute dtype on the device."""
    import cupy

    with grads[0].device:
        storage = str(grads[0].dtype)
        compute = cupy.float64 if storage == "float64" else cupy.float32
        ptrs, blocks, sizes_dev, n_blocks, _ = _bucket_tables(grads)
        if n_blocks == 0:
            return
        coef = cupy.asarray(c, dtype=compute)
        _kernel(scale_source(storage))((n_blocks,), (THREADS,), (ptrs, blocks, sizes_dev, coef, np.int32(CHUNK)))
