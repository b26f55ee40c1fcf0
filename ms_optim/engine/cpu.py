"""The cpu backend: a traced rule emitted as one fused numba loop over NumPy arrays.

The eager backend runs a rule as a dozen NumPy calls, each a full pass over
memory with a temporary; this backend prints the rule's SSA
:class:`~ms_optim.engine.tracer.Graph` as the body of a single ``for`` loop,
compiles it with numba once per (rule, static configuration, storage dtype)
and runs every parameter of a bucket through it in one call: each element of
``p``, ``g`` and the state is read once and written once.

The emitted body follows the design's lessons, each checked by
``tests/test_cpu_backend.py``:

* one SSA temporary per graph node (``t12 = t7 * h3``); outputs are stored
  only after the whole element is computed, so an output never overwrites an
  input that is still to be read;
* the compute dtype is float32 for float16/float32 storage and float64 for
  float64 (as in the eager backend); every literal is emitted as
  ``np.float32(0.5)`` and every hoisted scalar arrives in a float32 array:
  a bare Python float in numba is a float64 and would silently turn float32
  math into float64 math (slower, and a different result from eager);
* ``xp.maximum``/``xp.minimum`` propagate NaN as NumPy does, ``xp.sign``
  gives NaN for NaN and 0 for -0.0, ``x ** 2`` / ``x ** 0.5`` / ``x ** -1``
  are ``x*x`` / ``sqrt(x)`` / ``1/x`` (what NumPy computes for them);
* ``error_model='numpy'`` (a division by zero gives inf/NaN, never an
  exception) and no ``fastmath`` (nor FMA contraction): every ``+ - * /`` and
  ``sqrt`` is one IEEE operation in NumPy's order, so float64 and float32
  results equal eager's bit for bit and float16 ones to one half ulp; only
  ``exp``/``log``/a general ``pow`` differ by an ulp or two (glibc's libm
  here, NumPy's own SIMD versions in eager);
* numba has no float16 on the CPU: half storage is read and written as uint16
  bit patterns with exact round-to-nearest-even conversions in integer
  arithmetic (NumPy's own algorithm), so no compiler runtime helper is needed.

**Multi-tensor.** A bucket becomes one int64 table with a row per tensor:
``(size, address of p, of g, of each state array)``. The kernel turns each
address back into an array (``numba.carray``), so one compiled function
serves any number of tensors of any shapes, with no per-tensor dispatch and
no recompilation when the model changes. The loop vectorises (AVX-512 on the
CI machine). Tensors whose arrays are not all C- (or all F-) contiguous are
run on contiguous copies that are written back after the call; zero-size
tensors are skipped; a tensor with a read-only target or a mismatched dtype
or shape runs eagerly (which raises as eager does). Addresses of ``p`` and
its state are remembered per array (weakref-dropped), since ``a.ctypes.data``
costs a microsecond.

**Threads.** A bucket of at least ``PARALLEL_MIN_ELEMENTS`` (about a
million) is cut into ``CHUNK``-element rows split into ``num_threads`` equal
ranges; the serial kernel (compiled ``nogil``) runs one range on the calling
thread and the others on a small pool of Python threads. Numba's
``parallel=True`` / ``prange`` twin of the same loop is there too
(``backend.parallel = 'prange'``). In
``benchmarks/results/cpu-python-2cores-2026-11-21.txt`` (2-core AMD EPYC,
float32, a step through ``Optimizer.step``, medians of steps taken in turns)
the two are within noise of each other and ahead of one thread on large
buckets: AdamW 10M elements 6.85 ms with threads, 7.00 with prange, 7.45
serial; 50M 27.4, 29.1, 29.6; SGD with momentum 50M 23.6, 24.6, 28.9. With
the split starting at 131K elements, an earlier run had 1M-element AdamW at
1.73 ms with threads against 1.40 serial (the data fits in cache there, and
the handoff cost what it saved), hence the threshold. Threads are
the default because they depend on no numba threading layer (the workqueue
layer aborts the process when two Python threads launch parallel kernels at
once; an OpenMP layer adds a second OpenMP runtime beside torch's or MKL's and
is not fork-safe), need no second compile (the parfor twin costs another
0.4 s cold), and are rebuilt in a forked child. Memory-bound timings on this
shared machine vary by up to +-30% from one minute to the next, so the
medians of runs taken in turns are what to compare.

**Compile once, across processes.** The emitted source is written to a
module file named by its hash (in ``$MS_OPTIM_CACHE_DIR/cpu-kernels``,
default ``~/.cache/ms_optim/cpu-kernels``, one folder per version of this
file) and compiled with ``cache=True``, so numba stores the machine code
beside it and a later process loads it instead of compiling; when the folder
cannot be written the kernel is compiled in memory (``MS_OPTIM_CPU_DISK_CACHE=0``
forces that); deleting the folder only costs a recompile. Measured on the
quiet CI machine: ``import numba`` 0.15-0.2 s; the first kernel of a process
0.5 s cold (numba's own start-up included), each further one 0.1-0.4 s
(float16 about twice that); from the disk cache 0.2 s for the first (numba's
start-up) and about 0.01 s for each further one. Under load (other jobs on
both cores) all of these were 2-4x longer. ``tests/test_cpu_backend.py``
(369 tests, about 145 kernels) takes 53 s with an empty cache, 9 s warm.

**What ``auto`` picks.** ``backend='auto'`` (the default) on NumPy arrays
uses this backend when numba is installed, through :class:`AutoCpuBackend`:
a bucket runs compiled when its kernel already exists in the process or when
it has at least ``AUTO_MIN_ELEMENTS`` (262,144) elements; smaller buckets run
eagerly and never import numba. The threshold is where the compile repays
itself: a step of AdamW on 262K float32 elements took 3.9 ms eagerly and
0.1 ms compiled, so the one-time 0.5-2 s (import, numba start-up and compile,
cold and on a loaded machine) is repaid in a few hundred steps; at 16K
elements the saving is 0.03 ms a step and would take 20,000+ steps. So the
demo's MLP (10K parameters) and the test suite's tiny arrays stay eager and
pay nothing, while any model large enough to care gets the fused loop. A
kernel that fails to build under ``auto`` warns once and runs eagerly.

numba is optional (``pip install 'ms-optim[cpu]'``): this module imports
without it; :class:`CpuBackend` raises :class:`CpuBackendUnavailable` (an
ImportError) when it is missing or broken, which the auto choice treats as
"fall back to eager" and an explicit ``backend='cpu'`` shows to the user.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import tempfile
import threading
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .eager import run_eager
from .layout import Layout, as_layout, broadcast_run
from .tracer import Graph, trace

__all__ = [
    "AUTO_MIN_ELEMENTS",
    "AutoCpuBackend",
    "CHUNK",
    "CpuBackend",
    "CpuBackendUnavailable",
    "PARALLEL_MIN_ELEMENTS",
    "emit_source",
]

#: elements per parallel work item: big enough to amortise the per-chunk setup
#: and keep each thread streaming, small enough to balance a bucket over threads
CHUNK = 1 << 16

#: buckets with fewer elements than this run the serial loop: below about a million
#: elements handing half the work to a second thread cost as much as it saved
PARALLEL_MIN_ELEMENTS = 1 << 20

#: under backend='auto', the smallest bucket that triggers a compile (see the module docstring)
AUTO_MIN_ELEMENTS = 1 << 18

#: storage dtype name -> (compute dtype name, the array type the kernel sees)
_DTYPES = {
    "float16": ("float32", "uint16"),
    "float32": ("float32", "float32"),
    "float64": ("float64", "float64"),
}

_INSTALL_HINT = "pip install 'ms-optim[cpu]' (or pip install numba)"


class CpuBackendUnavailable(ImportError):
    """The cpu backend's optional dependency, numba, is missing or does not import."""


# ---------------------------------------------------------------------------
# Source emission: pure Python, no numba needed.


def _literal(value: float, T: str) -> str:
    if math.isnan(value):
        return f"{T}(np.nan)"
    if math.isinf(value):
        return f"{T}({'-' if value < 0 else ''}np.inf)"
    return f"{T}({value!r})"


def _const_value(graph: Graph, index: int) -> float | None:
    node = graph.nodes[index]
    return float(node.attr) if node.op == "const" else None


def emit_body(graph: Graph, T: str, indent: str = "        ",
              layout: Layout | None = None) -> tuple[list[str], list[str]]:
    """The loop body for one element ``i``: (statements, stores).

    Full-array inputs are read from ``x0[i], x1[i], ...`` through ``LOAD(...)``;
    a ``"scalar"`` operand ``k`` is the local ``x{k}v`` (loaded once per row)
    and a ``"bcast"`` operand ``k`` is read at ``q{k} * n{k} + r{k}``, with
    ``q{k} = e // b{k}`` and ``r{k} = e % n{k}`` for the element's index ``e``
    in its tensor (``n{k}`` its inner size, ``b{k}`` inner times span), kept
    by counters that :func:`emit_source` advances after each element: two
    integer divisions per element and operand cost more than the update. Hoisted scalars are the locals
    ``h0, h1, ...``, and output ``k`` is stored into ``x{layout.writes[k]}``
    (classic: ``x0`` for the parameter, ``x{k+1}`` for state ``k``) through
    ``STORE(...)``; the caller substitutes LOAD/STORE for the storage dtype.
    """
    if layout is None:
        layout = Layout.of_state(len(graph.inputs) - 2)
    hoisted = {node: k for k, node in enumerate(graph.hoisted)}
    names: dict[int, str] = {}
    lines: list[str] = []

    def ref(i: int, *, as_number: bool = True) -> str:
        node = graph.nodes[i]
        if node.op == "const":
            return _literal(float(node.attr), T)
        if i in hoisted:
            return f"h{hoisted[i]}"
        name = names[i]
        if as_number and node.boolean:  # NumPy: True * x == x; keep the compute dtype
            return f"{T}({name})"
        return name

    def cond(i: int) -> str:  # a truth value: comparisons as they are, numbers != 0
        node = graph.nodes[i]
        if node.boolean:
            return ref(i, as_number=False)
        return f"({ref(i)} != {_literal(0.0, T)})"

    used = _element_wise_reads(graph)
    for i, node in enumerate(graph.nodes):
        if node.uniform or i not in used:
            continue
        op, a = node.op, node.args
        if op == "input":
            k = node.attr
            if k < layout.n_arrays:
                expr = f"LOAD(x{k}[i])"
            elif layout.operands[k - layout.n_arrays] == "scalar":
                expr = f"x{k}v"
            else:
                expr = f"LOAD(x{k}[q{k} * n{k} + r{k}])"
        elif op == "neg":
            expr = f"-{ref(a[0])}"
        elif op == "abs":
            expr = f"abs({ref(a[0])})"
        elif op in ("sqrt", "exp", "log"):
            expr = f"np.{op}({ref(a[0])})"
        elif op == "sign":
            x = ref(a[0])
            one, zero = _literal(1.0, T), _literal(0.0, T)
            # NumPy: 1 / -1 / 0 (for both zeros), NaN stays NaN
            expr = f"({one} if {x} > {zero} else (-{one} if {x} < {zero} else ({zero} if {x} == {zero} else {x})))"
        elif op == "logical_not":
            expr = f"(not {cond(a[0])})"
        elif op in ("add", "sub", "mul", "div"):
            sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[op]
            expr = f"({ref(a[0])} {sym} {ref(a[1])})"
        elif op == "pow":
            expr = _pow(ref(a[0]), ref(a[1]), _const_value(graph, a[1]), T)
        elif op in ("maximum", "minimum"):
            x, y = ref(a[0]), ref(a[1])
            cmp = ">=" if op == "maximum" else "<="
            # NumPy's scalar loop: (x >= y || isnan(x)) ? x : y -- a NaN in either wins
            expr = f"({x} if (({x} {cmp} {y}) | ({x} != {x})) else {y})"
        elif op in ("gt", "ge", "lt", "le", "eq", "ne"):
            sym = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "==", "ne": "!="}[op]
            expr = f"({ref(a[0])} {sym} {ref(a[1])})"
        elif op in ("logical_and", "logical_or"):
            sym = "&" if op == "logical_and" else "|"
            expr = f"({cond(a[0])} {sym} {cond(a[1])})"
        elif op == "where":
            expr = f"({ref(a[1])} if {cond(a[0])} else {ref(a[2])})"
        else:  # pragma: no cover - the tracer's vocabulary is closed
            raise NotImplementedError(f"the cpu backend cannot emit op {op!r}")
        names[i] = f"t{i}"
        lines.append(f"{indent}t{i} = {expr}")

    stores = []
    for target, out in zip(layout.writes, graph.outputs):
        node = graph.nodes[out]
        if node.op == "input" and node.attr == target:
            continue  # returned unchanged: nothing to write
        stores.append(f"{indent}x{target}[i] = STORE({ref(out)})")
    return lines, stores


def _pow(x: str, y: str, exponent: float | None, T: str) -> str:
    if exponent == 2.0:
        return f"({x} * {x})"
    if exponent == 0.5:
        return f"np.sqrt({x})"
    if exponent == -1.0:
        return f"({_literal(1.0, T)} / {x})"
    if exponent == 1.0:
        return f"(+{x})"
    return f"({x} ** {y})"


def _element_wise_reads(graph: Graph) -> set[int]:
    """Element-wise nodes an output depends on (dead code is not emitted)."""
    live: set[int] = set()
    stack = [o for o in graph.outputs]
    while stack:
        i = stack.pop()
        if i in live or graph.nodes[i].uniform:
            continue
        live.add(i)
        stack.extend(graph.nodes[i].args)
    return live


def _hoisted_reads(graph: Graph, live: set[int]) -> set[int]:
    read = {a for i in live for a in graph.nodes[i].args}
    read.update(graph.outputs)
    return {k for k, node in enumerate(graph.hoisted) if node in read}


_HEADER = '''\
# Generated by ms_optim.engine.cpu ({version}): a traced optimizer rule as a numba loop.
# Do not edit: the file name is the hash of this text, rebuilt whenever it would change.
# rule: {rule}  static: {static}
# storage: {storage}  compute: {compute}
# graph:
{graph}

import numpy as np
from numba import carray, njit, prange

from ms_optim.engine.cpu import numba_support as _numba_support

_s = _numba_support()
_ptr = _s.ptr_{array}
_h2f = _s.half_to_float
_f2h = _s.float_to_half
_T = np.{compute}
_CACHE = {cache}


@njit(cache=_CACHE, error_model="numpy", nogil=True, boundscheck=False)
def serial(table, h):
    """Each row of the table: n elements, then the address of each array's first one."""
{hoisted}
    for r in range(table.shape[0]):
        n = table[r, 0]
{views}
        for i in range(n):
{body}
{stores}


@njit(cache=_CACHE, error_model="numpy", nogil=True, boundscheck=False, parallel=True)
def parallel(table, h):
    """serial's loop with the rows spread over numba's threads."""
{hoisted}
    for r in prange(table.shape[0]):
        n = table[r, 0]
{views}
        for i in range(n):
{body}
{stores}
'''


def emit_source(graph: Graph, storage: str, *, rule_name: str = "rule", static: Mapping | None = None,
                cache: bool = True, layout: Layout | None = None) -> str:
    """The numba module for ``graph`` on arrays of dtype ``storage`` (a NumPy dtype name).

    It defines ``serial(table, h)`` and ``parallel(table, h)`` (the same loop
    over rows with ``prange``): ``table`` is int64 with one row per span of
    ``n`` elements: ``n``, the address of the span's first element in each
    full array, then (only for a layout with operands, see
    :func:`table_columns`) each operand's address (its first element), for a
    bcast operand its size, inner and inner times span, and last the span's
    first element in its tensor. ``h`` holds the hoisted scalars in the
    compute dtype.
    """
    if layout is None:
        layout = Layout.of_state(len(graph.inputs) - 2)
    if storage not in _DTYPES:
        raise TypeError(f"the cpu backend stores float16, float32 or float64, not {storage}")
    compute, array = _DTYPES[storage]
    T = "_T"
    body, stores = emit_body(graph, T, indent=" " * 12, layout=layout)
    if storage == "float16":
        load, store = "_h2f(", "_f2h("
    else:
        load, store = "(", "("
    body = [line.replace("LOAD(", load) for line in body]
    stores = [line.replace("STORE(", store) for line in stores]
    live = _element_wise_reads(graph)
    read_inputs = {graph.nodes[i].attr for i in live if graph.nodes[i].op == "input"}
    written = {int(s.split("x", 1)[1].split("[", 1)[0]) for s in stores}
    views = [
        f"        x{k} = carray(_ptr(table[r, {k + 1}]), n)"
        for k in range(layout.n_arrays)
        if k in read_inputs or k in written
    ]
    columns = table_columns(layout)
    advance: list[str] = []
    if layout.operands:
        views.append(f"        i0 = table[r, {columns['start']}]")
    for j, kind in enumerate(layout.operands):
        k = layout.n_arrays + j
        if k not in read_inputs:
            continue
        if kind == "scalar":
            views.append(f"        x{k}v = {load}carray(_ptr(table[r, {columns[k]}]), 1)[0])")
        else:
            size, inner, block = columns[k], columns[k] + 1, columns[k] + 2
            views += [
                f"        x{k} = carray(_ptr(table[r, 1 + {k}]), table[r, {size}])",
                f"        n{k} = table[r, {inner}]",
                f"        b{k} = table[r, {block}]",
                f"        q{k} = i0 // b{k}",  # the divisions once per row; counters per element
                f"        r{k} = i0 % n{k}",
                f"        c{k} = i0 % b{k}",
            ]
            advance += [
                f"            r{k} += 1",
                f"            if r{k} == n{k}:",
                f"                r{k} = 0",
                f"            c{k} += 1",
                f"            if c{k} == b{k}:",
                f"                c{k} = 0",
                f"                q{k} += 1",
            ]
    hoisted = [f"    h{k} = h[{k}]" for k in sorted(_hoisted_reads(graph, live))]
    return _HEADER.format(
        version=_codegen_version(),
        rule=rule_name,
        static=dict(static or {}),
        storage=storage,
        compute=compute,
        array=array,
        graph="\n".join(f"#   {line}" for line in str(graph).splitlines()),
        cache=cache,
        views="\n".join(views) or "        pass",
        hoisted="\n".join(hoisted),
        body="\n".join(body) or "            pass",
        stores="\n".join(stores + advance),
    )


def table_columns(layout: Layout) -> dict:
    """Where a kernel's table keeps what (see :func:`emit_source`).

    Keys: ``'width'`` (columns per row); for a layout with operands also
    ``'start'`` (the column of the row's first element in its tensor) and,
    per operand index ``k`` (counted over all positional arguments), the column
    of its address (a scalar operand) or of its size (a bcast operand, followed
    by its inner and block).
    """
    columns: dict = {}
    width = 1 + layout.n_inputs
    for j, kind in enumerate(layout.operands):
        k = layout.n_arrays + j
        if kind == "scalar":
            columns[k] = 1 + k
        else:
            columns[k] = width
            width += 3
    if layout.operands:
        columns["start"] = width
        width += 1
    columns["width"] = width
    return columns


_VERSION: str | None = None


def _codegen_version() -> str:
    """A hash of everything that shapes a kernel: the emitter, the template, the numba helpers.

    A change to any of them renames every kernel (and its cache folder); a
    change elsewhere in this file (the backend's Python side, docs) keeps
    the compiled kernels on disk valid.
    """
    global _VERSION
    if _VERSION is None:
        import inspect

        parts = [_HEADER, repr(_DTYPES)]
        try:
            for fn in (_literal, _const_value, emit_body, _pow, _element_wise_reads, _hoisted_reads,
                       emit_source, table_columns, _build_support):
                parts.append(inspect.getsource(fn))
        except (OSError, TypeError):  # pragma: no cover - no source (e.g. a zipped install)
            parts.append(Path(__file__).name)
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
        _VERSION = f"codegen {digest}"
    return _VERSION


# ---------------------------------------------------------------------------
# numba helpers, built on first use so that this module imports without numba.


@dataclass(frozen=True)
class _Support:
    ptr_uint16: Callable
    ptr_float32: Callable
    ptr_float64: Callable
    half_to_float: Callable
    float_to_half: Callable


_support: _Support | None = None
_support_lock = threading.Lock()


_numba_error: CpuBackendUnavailable | None = None


def _check_numba_installed() -> None:
    """Raise CpuBackendUnavailable when numba is not installed, without importing it."""
    if _numba_error is not None:
        raise _numba_error
    if importlib.util.find_spec("numba") is None:
        raise CpuBackendUnavailable(f"the 'cpu' backend needs numba, which is not installed; {_INSTALL_HINT}, "
                                    "or use backend='eager'")


def _import_numba():
    global _numba_error
    if _numba_error is not None:
        raise _numba_error  # remembered: a failed import is not retried on every step
    try:
        import numba
    except ImportError as exc:  # missing, or present but broken (e.g. built for another NumPy)
        _numba_error = CpuBackendUnavailable(
            f"the 'cpu' backend needs numba, which could not be imported ({exc}); {_INSTALL_HINT}, "
            "or use backend='eager'"
        )
        raise _numba_error from exc
    return numba


def numba_support() -> _Support:
    """The numba intrinsics and helpers the generated modules use (built once)."""
    global _support
    if _support is not None:
        return _support
    with _support_lock:
        if _support is None:
            _support = _build_support()
    return _support


def _build_support() -> _Support:
    numba = _import_numba()
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    def pointer_intrinsic(dtype):
        @intrinsic
        def address_to_pointer(typingctx, address):
            if not isinstance(address, types.Integer):
                return None
            ptr = types.CPointer(dtype)
            sig = ptr(address)

            def codegen(context, builder, signature, args):
                return builder.inttoptr(args[0], context.get_value_type(ptr))

            return sig, codegen

        return address_to_pointer

    @intrinsic
    def bits_as_float32(typingctx, bits):
        if bits != types.uint32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.uint32), codegen

    @intrinsic
    def float32_as_bits(typingctx, x):
        if x != types.float32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))

        return types.uint32(types.float32), codegen

    jit = numba.njit(error_model="numpy", nogil=True)

    @jit
    def half_to_float(hbits):
        # exact: every half is a float32 (NumPy's npy_halfbits_to_floatbits)
        h = np.int64(hbits)
        sign = (h & 0x8000) << 16
        exponent = h & 0x7C00
        mantissa = h & 0x03FF
        if exponent == 0x7C00:  # inf or NaN (payload kept)
            bits = sign | 0x7F800000 | (mantissa << 13)
        elif exponent == 0:
            if mantissa == 0:
                bits = sign
            else:  # subnormal: mantissa * 2**-24 is exact in float32
                value = np.float32(mantissa) * np.float32(5.960464477539063e-08)
                return -value if sign else value
        else:
            bits = sign | (((exponent >> 10) + 112) << 23) | (mantissa << 13)
        return bits_as_float32(np.uint32(bits))

    @jit
    def float_to_half(x):
        # round to nearest even (NumPy's npy_floatbits_to_halfbits)
        f = np.int64(float32_as_bits(x))
        f_exp = f & 0x7F800000
        h_sgn = (f & 0x80000000) >> 16
        if f_exp >= 0x47800000:  # overflow, inf or NaN
            if f_exp == 0x7F800000:
                f_sig = f & 0x007FFFFF
                if f_sig != 0:
                    ret = 0x7C00 + (f_sig >> 13)
                    if ret == 0x7C00:  # keep a NaN a NaN when the payload shifts out
                        ret += 1
                    return np.uint16(h_sgn + ret)
            return np.uint16(h_sgn + 0x7C00)
        if f_exp <= 0x38000000:  # a half subnormal or zero
            if f_exp < 0x33000000:
                return np.uint16(h_sgn)
            e = f_exp >> 23
            f_sig = 0x00800000 + (f & 0x007FFFFF)
            f_sig >>= 113 - e
            if ((f_sig & 0x00003FFF) != 0x00001000) or (f & 0x000007FF) != 0:
                f_sig += 0x00001000
            return np.uint16(h_sgn + (f_sig >> 13))
        h_exp = (f_exp - 0x38000000) >> 13
        f_sig = f & 0x007FFFFF
        if (f_sig & 0x00003FFF) != 0x00001000:
            f_sig += 0x00001000
        return np.uint16(h_sgn + h_exp + (f_sig >> 13))

    return _Support(
        ptr_uint16=pointer_intrinsic(types.uint16),
        ptr_float32=pointer_intrinsic(types.float32),
        ptr_float64=pointer_intrinsic(types.float64),
        half_to_float=half_to_float,
        float_to_half=float_to_half,
    )


# ---------------------------------------------------------------------------
# Kernel modules: written to a file named by the source's hash, imported once.


def cache_dir() -> Path | None:
    """Where generated kernel modules (and numba's cache of them) live; None: in memory only."""
    if os.environ.get("MS_OPTIM_CPU_DISK_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    root = os.environ.get("MS_OPTIM_CACHE_DIR")
    if root:
        return Path(root) / "cpu-kernels"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ms_optim" / "cpu-kernels"


def _load_module(source_for: Callable[[bool], str]):
    """Import the generated module from the disk cache, or from memory when that fails."""
    directory = cache_dir()
    if directory is not None:
        source = source_for(True)
        name = "ms_optim_cpu_" + hashlib.sha256(source.encode()).hexdigest()[:20]
        directory = directory / _codegen_version().split()[-1]  # one folder per emitter version
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{name}.py"
            if not path.exists() or path.read_text() != source:
                # atomic: a concurrent process sees the old file or the whole new one
                fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
                with os.fdopen(fd, "w") as f:
                    f.write(source)
                os.replace(tmp, path)
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module
        except Exception:  # read-only home, no locator numba accepts...: compile in memory
            sys.modules.pop(name, None)
    source = source_for(False)
    name = "ms_optim_cpu_mem_" + hashlib.sha256(source.encode()).hexdigest()[:20]
    namespace: dict[str, Any] = {"__name__": name}
    exec(compile(source, f"<{name}>", "exec"), namespace)
    return _Namespace(namespace)


class _Namespace:
    """A generated module compiled in memory (no disk cache)."""

    def __init__(self, d):
        self.__dict__.update(d)


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


# ---------------------------------------------------------------------------
# The backend.


class CpuBackend:
    """Runs each (group, dtype) bucket of NumPy arrays through one compiled numba loop.

    Attributes (settable on the instance):
      num_threads: threads for a large bucket (default: numba's
        ``NUMBA_NUM_THREADS``, i.e. the usable cores or that variable).
      parallel: ``'threads'`` (default) splits a large bucket into row ranges
        run by the serial kernel on a small pool of Python threads (the kernel
        releases the GIL); ``'prange'`` runs numba's ``parallel=True`` twin of
        the loop instead. See the module docstring for the measurements.
      parallel_min_elements: buckets smaller than this run serially.

    Raises:
      CpuBackendUnavailable: numba is not installed or does not import.
    """

    name = "cpu"

    def __init__(self):
        _check_numba_installed()  # numba itself is imported by the first compile
        self._kernels: dict[tuple, _Kernel] = {}
        self._lock = threading.Lock()
        self.num_threads: int | None = None  # None: numba's NUMBA_NUM_THREADS
        self.parallel = "threads"
        self.parallel_min_elements = PARALLEL_MIN_ELEMENTS
        self._pool = None
        self._pool_size = 0
        self._pool_pid = 0
        self._addresses: dict[int, tuple[int, int, Any]] = {}
        #: how many tensors ran compiled, through contiguous copies, or eagerly
        self.stats = {"kernels": 0, "compiled_tensors": 0, "copied_tensors": 0, "eager_tensors": 0}
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

        module = _load_module(source_for)
        self.stats["kernels"] += 1
        compute, array = _DTYPES[storage]
        return _Kernel(graph, module, source_for(True), np.dtype(compute).type, np.dtype(array).itemsize,
                       layout.n_arrays, frozenset(layout.writes), layout)

    # ---------------------------------------------------------------- run

    def run(self, rule, static, scalars, params, grads, states, xp) -> None:
        """Update ``params`` and ``states`` in place: the classic ``rule(p, g, *state) -> (p, *state)``."""
        if not params:
            return
        layout = Layout.of_state(len(states[0]) if states else 0)
        self.run_stage(rule, static, scalars, layout, [(p, g, *st) for p, g, st in zip(params, grads, states)], xp)

    def run_stage(self, rule, static, scalars, layout: Layout, tensors, xp) -> None:
        """One element-wise stage over a bucket: ``tensors[t]`` are tensor ``t``'s arguments."""
        if not tensors:
            return
        storage = np.dtype(tensors[0][0].dtype).name
        if storage not in _DTYPES:
            self._eager(rule, static, scalars, layout, tensors, xp)
            return
        kernel = self.kernel(rule, static, scalars.keys(), layout, storage)
        self.run_kernel(kernel, rule, static, scalars, tensors, xp)

    def run_kernel(self, kernel: _Kernel, rule, static, scalars, tensors, xp) -> None:
        """One bucket through ``kernel``; tensors it cannot take directly are copied or run eagerly."""
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
                self.stats["copied_tensors"] += 1
            if columns is not None:
                rows.extend(a.ctypes.data for a in ops)
                for j, run in enumerate(runs):
                    if run is not None:
                        inner, span = run
                        rows.extend((arrays[n_full + j].size, inner, inner * span))
                rows.append(0)  # the first element: rows are cut into chunks at launch
        if rows:
            width = columns["width"] if columns is not None else 1 + kernel.n_inputs
            table = np.array(rows, dtype=np.int64).reshape(-1, width)
            h = np.array(kernel.graph.host_values(scalars), dtype=kernel.compute)
            self._launch(kernel, table, h, total)
            for target, scratch in keep:
                if target is not None:
                    target[...] = scratch
            self.stats["compiled_tensors"] += len(table)
        if eager:
            self._eager(rule, static, scalars, layout, [tensors[t] for t in eager], xp)

    def _address(self, a) -> int:
        """``a.ctypes.data`` (about 1 us), remembered while ``a`` lives (about 0.1 us).

        An ndarray's buffer never moves while the array lives (an in-place
        ``resize`` changes its size, which is checked), and the entry is
        dropped by a weakref callback when the array dies, before its id can
        be reused.
        """
        key = id(a)
        entry = self._addresses.get(key)
        if entry is not None and entry[1] == a.size:
            return entry[0]
        addresses = self._addresses
        ref = weakref.ref(a, lambda _, key=key: addresses.pop(key, None))
        entry = addresses[key] = (a.ctypes.data, a.size, ref)
        return entry[0]

    def _launch(self, kernel: _Kernel, table, h, total: int) -> None:
        threads = self.num_threads or _default_threads()
        if threads <= 1 or total < self.parallel_min_elements:
            kernel.module.serial(table, h)
            return
        table = _chunked(table, CHUNK, kernel.itemsize, kernel.n_inputs,
                         table_columns(kernel.layout).get("start"))
        if self.parallel == "prange":
            kernel.module.parallel(table, h)
            return
        # contiguous row ranges of about total / threads elements each
        ends = np.cumsum(table[:, 0])
        cuts = [0, *np.searchsorted(ends, [total * k // threads for k in range(1, threads)], side="right"),
                len(table)]
        parts = [table[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
        if len(parts) == 1:  # one row: nothing to share
            kernel.module.serial(table, h)
            return
        pool = self._thread_pool(len(parts) - 1)
        futures = [pool.submit(kernel.module.serial, part, h) for part in parts[1:]]
        kernel.module.serial(parts[0], h)
        for f in futures:
            f.result()

    def _thread_pool(self, workers: int):
        if self._pool is not None and self._pool_pid != os.getpid():  # a forked child: its threads are gone
            self._pool, self._pool_size = None, 0
        if self._pool is None or self._pool_size < workers:
            from concurrent.futures import ThreadPoolExecutor

            with self._lock:
                if self._pool is None or self._pool_size < workers:
                    old = self._pool
                    self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ms_optim-cpu")
                    self._pool_size = workers
                    self._pool_pid = os.getpid()
                    if old is not None:
                        old.shutdown(wait=False)
        return self._pool

    def _eager(self, rule, static, scalars, layout: Layout, tensors, xp) -> None:
        for arrays in tensors:
            run_eager(rule, arrays, len(layout.writes), scalars, static, xp, layout)
        self.stats["eager_tensors"] += len(tensors)


class AutoCpuBackend:
    """The cpu backend as ``backend='auto'`` uses it: compile only where it pays.

    A bucket runs compiled when its kernel is already built in this process,
    or when it holds at least :attr:`min_elements` elements (then the kernel is
    built, or loaded from the disk cache); smaller buckets run eagerly, so a
    small model never imports numba nor waits for a compile. A kernel that
    fails to build (numba broken, or a rule this emitter cannot compile) is
    reported once as a RuntimeWarning and that rule runs eagerly from then on.
    """

    name = "cpu"

    def __init__(self, cpu: CpuBackend):
        self.cpu = cpu
        self.min_elements = AUTO_MIN_ELEMENTS
        self._failed: set = set()

    def run(self, rule, static, scalars, params, grads, states, xp) -> None:
        if params:
            layout = Layout.of_state(len(states[0]) if states else 0)
            self.run_stage(rule, static, scalars, layout, [(p, g, *st) for p, g, st in zip(params, grads, states)], xp)

    def run_stage(self, rule, static, scalars, layout: Layout, tensors, xp) -> None:
        cpu = self.cpu
        # A broadcast operand's index keeps the loop from vectorising, and NumPy's
        # broadcasting SIMD loops came out ahead (benchmarks/bench_stages.py, Adafactor):
        # such stages run eagerly unless backend='cpu' is asked for by name.
        if tensors and "bcast" not in layout.operands:
            storage = np.dtype(tensors[0][0].dtype).name
            key = cpu.kernel_key(rule, static, scalars.keys(), layout, storage)
            kernel = cpu._kernels.get(key)
            if kernel is None and storage in _DTYPES and key not in self._failed and \
                    sum(arrays[0].size for arrays in tensors) >= self.min_elements:
                try:
                    kernel = cpu.kernel(rule, static, scalars.keys(), layout, storage)
                except Exception as exc:  # an optimisation failed: the eager result is still right
                    self._failed.add(key)
                    warnings.warn(
                        f"ms_optim cpu backend: running {getattr(rule, '__name__', rule)} eagerly "
                        f"({type(exc).__name__}: {exc})",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            if kernel is not None:
                cpu.run_kernel(kernel, rule, static, scalars, tensors, xp)
                return
        cpu._eager(rule, static, scalars, layout, tensors, xp)


def _default_threads() -> int:
    return int(_import_numba().config.NUMBA_NUM_THREADS)


def _chunked(table, chunk: int, itemsize: int, n_arrays: int | None = None, start: int | None = None):
    """Rows of at most ``chunk`` elements: long tensors are cut, their addresses offset.

    Only the first ``n_arrays`` address columns (all, by default) point at
    the span's first element and move with it; operands are indexed by the
    element's place in its tensor, which column ``start`` (if any) keeps.
    """
    sizes = table[:, 0]
    counts = (sizes + chunk - 1) // chunk
    if counts.max() <= 1:
        return table
    rows = np.repeat(table, counts, axis=0)
    first = np.cumsum(counts) - counts
    offset = (np.arange(len(rows)) - np.repeat(first, counts)) * chunk
    rows[:, 0] = np.minimum(rows[:, 0] - offset, chunk)
    last = table.shape[1] if n_arrays is None else 1 + n_arrays
    rows[:, 1:last] += (offset * itemsize)[:, None]
    if start is not None:
        rows[:, start] += offset
    return rows
