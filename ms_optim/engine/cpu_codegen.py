"""The cpu backend's code generator: a traced rule printed as one numba loop.

The eager backend runs a rule as a dozen NumPy calls, each a full pass over
memory with a temporary; this module prints the rule's SSA
:class:`~ms_optim.engine.tracer.Graph` as the body of a single ``for`` loop
over one table of tensors (:func:`emit_source`), so that each element of
``p``, ``g`` and the state is read once and written once. It is pure Python:
numba is needed only to compile what it prints (:mod:`.cpu_cache` does that).

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
  arithmetic (NumPy's own algorithm, in :mod:`.cpu_numba`), so no compiler
  runtime helper is needed.

**The table.** A bucket is one int64 table with a row per span of a tensor:
``(size, address of p, of g, of each state array, ...)`` (:func:`table_columns`
says where operands go). The kernel turns each address back into an array
(``numba.carray``), so one compiled function serves any number of tensors of
any shapes, with no per-tensor dispatch and no recompilation when the model
changes. The inner loop vectorises (AVX-512 where the CPU has it).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Mapping

from .cpu_numba import build_support
from .layout import Layout
from .tracer import Graph

__all__ = ["DTYPES", "codegen_version", "emit_body", "emit_source", "table_columns"]

#: storage dtype name -> (compute dtype name, the array type the kernel sees)
DTYPES = {
    "float16": ("float32", "uint16"),
    "float32": ("float32", "float32"),
    "float64": ("float64", "float64"),
}



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
# Generated by ms_optim.engine.cpu_codegen ({version}): a traced optimizer rule as a numba loop.
# Do not edit: the file name is the hash of this text, rebuilt whenever it would change.
# rule: {rule}  static: {static}
# storage: {storage}  compute: {compute}
# graph:
{graph}

import numpy as np
from numba import carray, njit, prange

from ms_optim.engine.cpu_numba import numba_support as _numba_support

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
    if storage not in DTYPES:
        raise TypeError(f"the cpu backend stores float16, float32 or float64, not {storage}")
    compute, array = DTYPES[storage]
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
        version=codegen_version(),
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


def codegen_version() -> str:
    """A hash of everything that shapes a kernel: the emitter, the template, the numba helpers.

    A change to any of them renames every kernel (and its cache folder); a
    change elsewhere in this file (the backend's Python side, docs) keeps
    the compiled kernels on disk valid.
    """
    global _VERSION
    if _VERSION is None:
        import inspect

        parts = [_HEADER, repr(DTYPES)]
        try:
            for fn in (_literal, _const_value, emit_body, _pow, _element_wise_reads, _hoisted_reads,
                       emit_source, table_columns, build_support):
                parts.append(inspect.getsource(fn))
        except (OSError, TypeError):  # pragma: no cover - no source (e.g. a zipped install)
            parts.append(Path(__file__).name)
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
        _VERSION = f"codegen {digest}"
    return _VERSION

