"""Turn a traced rule into CUDA C: one body, three loops around it.

The tracer (:mod:`ms_optim.engine.tracer`) records a rule as an SSA
:class:`~ms_optim.engine.tracer.Graph`. This module prints that graph as a C
body and wraps the *same* body three ways:

* an ``ElementwiseKernel`` spec, Chainer style: ``'P g, float32 h_lr, ...'``
  -> ``'P p, P s0, P s1'`` (the parameter and its state are in-place outputs,
  read before they are written); CuPy adds the loop and the indexing. It serves
  arrays of any layout, so it is the fallback;
* a multi-tensor ``RawKernel``: one launch updates every tensor of a bucket
  through a device table of pointers, sizes and (tensor, chunk) pairs per block,
  torch's ``multi_tensor_apply`` idea. This is the fast path for contiguous arrays;
* a plain C++ function with a ``for`` loop, compiled by g++ on machines without
  a GPU and compared with the eager backend (``tests/test_cuda_kernels.py``).

The body's rules, each of which a test checks:

* one ``const`` temporary per graph node (``t12``), in the compute dtype ``T``:
  ``float`` for float16/float32 storage, ``double`` for float64;
* literals are written ``T(0.5)``: a bare ``0.5`` is a C double and would turn
  float math into (slow, differently rounded) double math;
* uniform values the tracer hoisted (``lr``, ``1 - beta2``, ``lr / bc1``) are
  kernel arguments of type ``T``, computed on the host in Python floats as the
  eager backend computes them (``Graph.host_values``);
* ``xp.maximum``/``xp.minimum`` propagate NaN as NumPy does (C's ``fmax``/``fmin``
  drop it), and ``xp.sign`` maps NaN to NaN and -0.0 to 0.0 as NumPy does;
* ``x ** 2``, ``x ** 0.5``, ``x ** -1`` become ``x*x``, ``sqrt(x)``, ``1/x``:
  what NumPy computes for those exponents, exactly rounded on every device;
* outputs are written back only after everything is computed (``p = (P)t12;``),
  in the storage dtype ``P``, so an output never clobbers an input still to be read.

Pure Python: importing this module imports neither CuPy nor a compiler.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .layout import Layout, as_layout
from .tracer import Graph, trace

__all__ = [
    "COMPUTE_TYPES",
    "KernelSource",
    "MULTI_TENSOR_CHUNK",
    "MULTI_TENSOR_THREADS",
    "NVRTC_OPTIONS",
    "block_map",
    "emit_body",
    "generate",
    "host_prelude",
    "host_source",
    "kernel_source",
    "pointer_table",
]

#: storage dtype name -> (C compute type T, C storage type P in a RawKernel,
#: NumPy name of T for CuPy parameter lists, C storage type P on the host)
COMPUTE_TYPES: dict[str, tuple[str, str, str, str]] = {
    "float16": ("float", "__half", "float32", "_Float16"),
    "float32": ("float", "float", "float32", "float"),
    "float64": ("double", "double", "float64", "double"),
}

#: options we add to CuPy's own (which include ``-ftz=true``). Without FMA
#: contraction every +, -, *, / and sqrt is one IEEE-rounded operation, as in
#: NumPy, so the GPU computes what the eager backend computes, not 1 ulp off
#: wherever the compiler fused a multiply-add. The kernels are memory-bound, so
#: the extra instructions should not show in the step time (not yet measured:
#: benchmarks/bench_cuda.py has not run on a GPU).
NVRTC_OPTIONS: tuple[str, ...] = ("--fmad=false",)

#: multi-tensor launch geometry (torch's multi_tensor_apply uses the same)
MULTI_TENSOR_THREADS = 512
MULTI_TENSOR_CHUNK = 65536

_PRELUDE = r"""
#ifndef MS_OPTIM_PRELUDE
#define MS_OPTIM_PRELUDE
// xp.maximum / xp.minimum: a NaN operand gives NaN (C's fmax/fmin drop it);
// otherwise ties give b, as NumPy does for -0.0 and 0.0.
MSO_FN float mso_maximum(float a, float b) { return a != a ? a : (b != b ? b : (a > b ? a : b)); }
MSO_FN double mso_maximum(double a, double b) { return a != a ? a : (b != b ? b : (a > b ? a : b)); }
MSO_FN float mso_minimum(float a, float b) { return a != a ? a : (b != b ? b : (a < b ? a : b)); }
MSO_FN double mso_minimum(double a, double b) { return a != a ? a : (b != b ? b : (a < b ? a : b)); }
// xp.sign: NaN stays NaN, -0.0 gives 0.0
MSO_FN float mso_sign(float a) { return a > 0.0f ? 1.0f : (a < 0.0f ? -1.0f : (a == 0.0f ? 0.0f : a)); }
MSO_FN double mso_sign(double a) { return a > 0.0 ? 1.0 : (a < 0.0 ? -1.0 : (a == 0.0 ? 0.0 : a)); }
MSO_FN float mso_abs(float a) { return fabsf(a); }
MSO_FN double mso_abs(double a) { return fabs(a); }
MSO_FN float mso_sqrt(float a) { return sqrtf(a); }
MSO_FN double mso_sqrt(double a) { return sqrt(a); }
MSO_FN float mso_exp(float a) { return expf(a); }
MSO_FN double mso_exp(double a) { return exp(a); }
MSO_FN float mso_log(float a) { return logf(a); }
MSO_FN double mso_log(double a) { return log(a); }
MSO_FN float mso_pow(float a, float b) { return powf(a, b); }
MSO_FN double mso_pow(double a, double b) { return pow(a, b); }
#endif
"""

_DEVICE_PRELUDE = (
    "#ifndef MSO_FN\n#define MSO_FN __device__ __forceinline__\n#endif\n"
    "#ifndef MSO_INF\n#define MSO_INF __longlong_as_double(0x7ff0000000000000LL)\n"
    "#define MSO_NAN __longlong_as_double(0x7ff8000000000000LL)\n#endif\n" + _PRELUDE
)


def host_prelude() -> str:
    """The prelude for a host C++ compiler: the same helpers over ``<math.h>``."""
    return (
        "#include <math.h>\n#define MSO_FN static inline\n"
        "#define MSO_INF ((double)INFINITY)\n#define MSO_NAN ((double)NAN)\n" + _PRELUDE
    )


_UNARY_C = {
    "neg": "-{0}", "abs": "mso_abs({0})", "sqrt": "mso_sqrt({0})", "exp": "mso_exp({0})",
    "log": "mso_log({0})", "sign": "mso_sign({0})", "logical_not": "!{0}",
}
_BINARY_C = {
    "add": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}", "div": "{0} / {1}",
    "pow": "mso_pow({0}, {1})", "maximum": "mso_maximum({0}, {1})", "minimum": "mso_minimum({0}, {1})",
    "gt": "{0} > {1}", "ge": "{0} >= {1}", "lt": "{0} < {1}", "le": "{0} <= {1}",
    "eq": "{0} == {1}", "ne": "{0} != {1}", "logical_and": "{0} && {1}", "logical_or": "{0} || {1}",
}
#: ops whose operands are numbers: a boolean operand is converted to T first
_NUMERIC_OPS = {"neg", "abs", "sqrt", "exp", "log", "sign", "add", "sub", "mul", "div", "pow",
                "maximum", "minimum"}
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,40}$")


def _literal(value: float) -> str:
    """A literal in the compute dtype: ``T(0.5)``, never a bare (double) ``0.5``."""
    value = float(value)
    if value != value:
        return "T(MSO_NAN)"
    if value in (float("inf"), float("-inf")):
        return "T(MSO_INF)" if value > 0 else "T(-MSO_INF)"
    return f"T({value!r})"


@dataclass(frozen=True)
class KernelSource:
    """Everything needed to build the kernels of one (rule, static config, storage dtype).

    Attributes:
      name: a C identifier unique to the rule, its configuration and dtype.
      storage: storage dtype name ('float16', 'float32', 'float64').
      compute: C compute type ('float' or 'double').
      graph: the traced rule; ``graph.host_values(scalars)`` gives the values
        of ``scalar_params``, in order.
      arrays: C names of the rule's positional arguments: ``p``, ``g``, ``s0``,
        ``s1``... for the full arrays, then ``o0``, ``o1``... for the operands.
      scalar_params: C names of the hoisted uniforms (kernel arguments of type T).
      body: the loop body: reads the arrays, computes, writes the outputs back.
      in_params, out_params, preamble: the ``cupy.ElementwiseKernel`` spec.
      multi_tensor_name, multi_tensor_source: the multi-tensor ``RawKernel``.
      layout: which arrays are read, written and broadcast (:mod:`.layout`).
    """

    name: str
    storage: str
    compute: str
    graph: Graph
    arrays: tuple[str, ...]
    scalar_params: tuple[str, ...]
    body: str
    in_params: str
    out_params: str
    preamble: str
    multi_tensor_name: str
    multi_tensor_source: str
    layout: Layout

    @property
    def scalar_dtype(self) -> str:
        """NumPy name of T: hoisted values are passed to the kernels in this dtype."""
        return COMPUTE_TYPES[self.storage][2]

    @property
    def outputs(self) -> tuple[str, ...]:
        """The in-place outputs, in the rule's return order (classic: the parameter, then its state)."""
        return tuple(self.arrays[w] for w in self.layout.writes)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The ElementwiseKernel's array inputs: read-only full arrays, then the operands."""
        layout = self.layout
        return tuple(self.arrays[k] for k in (*layout.read_only, *range(layout.n_arrays, layout.n_inputs)))


def _layout_of(graph: Graph, layout: Layout | None) -> Layout:
    n = len(graph.inputs)
    if layout is None:
        if n < 2:
            raise ValueError(f"a rule reads at least the parameter and its gradient, got inputs {graph.inputs}")
        layout = Layout.of_state(n - 2)
    if layout.n_inputs != n:
        raise ValueError(f"the layout has {layout.n_inputs} arguments, the rule {n} ({graph.inputs})")
    return layout


def _array_names(graph: Graph, layout: Layout | None = None) -> tuple[str, ...]:
    return _layout_of(graph, layout).names()


def _scalar_param_names(graph: Graph) -> tuple[str, ...]:
    names = []
    for i in graph.hoisted:
        node = graph.nodes[i]
        if node.op == "scalar" and _IDENTIFIER.match(str(node.attr)):
            names.append(f"h_{node.attr}")
        else:  # a computed uniform such as 1 - beta2
            names.append(f"h{i}")
    return tuple(names)


def emit_body(graph: Graph, compute: str, layout: Layout | None = None) -> str:
    """The C body of ``graph``: SSA temporaries in ``T`` (= ``compute``), outputs written last.

    The array arguments are named as :func:`generate` names them (``p``, ``g``,
    ``s0``..., operands ``o0``...), the hoisted values ``h_<scalar>`` or
    ``h<node>``, and ``P`` is the storage type, defined by the caller (CuPy's
    type map, or a typedef). Each name is an element (a reference into the
    array, or for an operand the broadcast element) when the body runs.
    """
    layout = _layout_of(graph, layout)
    arrays = layout.names()
    params = dict(zip(graph.hoisted, _scalar_param_names(graph)))
    live = _live_nodes(graph)
    refs: dict[int, str] = {}
    lines = [f"typedef {compute} T;"]

    def ref(i: int, numeric: bool) -> str:
        node = graph.nodes[i]
        if node.uniform:
            if i in params:
                return params[i]
            if node.op == "const":
                return _literal(node.attr)
            raise AssertionError(f"uniform node %{i} reached element-wise code without being hoisted")
        text = refs[i]
        return f"(T){text}" if numeric and node.boolean else text

    for i, node in enumerate(graph.nodes):
        if node.uniform or i not in live:
            continue
        if node.op == "input":
            expr = f"(T){arrays[node.attr]}"
        elif node.op == "pow" and graph.nodes[node.args[1]].op == "const":
            expr = _const_power(ref(node.args[0], True), graph.nodes[node.args[1]].attr)
        elif node.op in _UNARY_C:
            expr = _UNARY_C[node.op].format(ref(node.args[0], node.op in _NUMERIC_OPS))
        elif node.op in _BINARY_C:
            numeric = node.op in _NUMERIC_OPS
            expr = _BINARY_C[node.op].format(*(ref(a, numeric) for a in node.args))
        elif node.op == "where":
            c, a, b = node.args
            expr = f"{ref(c, False)} ? {ref(a, True)} : {ref(b, True)}"
        else:
            raise NotImplementedError(f"the CUDA code generator has no rule for op {node.op!r}")
        ctype = "bool" if node.boolean else "T"
        refs[i] = f"t{i}"
        lines.append(f"const {ctype} t{i} = {expr};")
    # Written last: every read above saw the old values (in-place outputs).
    targets = tuple(arrays[w] for w in layout.writes)
    if len(graph.outputs) != len(targets):
        what = (f"the parameter and {len(targets) - 1} state arrays" if layout.is_classic
                else ", ".join(targets))
        raise ValueError(
            f"the rule returns {len(graph.outputs)} values for {len(targets)} in-place outputs ({what})"
        )
    for target, out in zip(targets, graph.outputs):
        lines.append(f"{target} = (P){ref(out, True)};")
    return "\n".join(lines)


def _const_power(base: str, exponent: float) -> str:
    # NumPy's exactly-rounded results for these exponents; CUDA's powf is not.
    if exponent == 2.0:
        return f"{base} * {base}"
    if exponent == 0.5:
        return f"mso_sqrt({base})"
    if exponent == -1.0:
        return f"T(1.0) / {base}"
    if exponent == 1.0:
        return base
    return f"mso_pow({base}, {_literal(exponent)})"


def _live_nodes(graph: Graph) -> set[int]:
    live: set[int] = set()
    stack = list(graph.outputs)
    while stack:
        i = stack.pop()
        if i in live:
            continue
        live.add(i)
        stack.extend(graph.nodes[i].args)
    return live


def generate(graph: Graph, storage: str, name: str, layout: Layout | None = None) -> KernelSource:
    """The kernel sources of ``graph`` for arrays of dtype ``storage``.

    Args:
      graph: a traced rule.
      storage: 'float16', 'float32' or 'float64'.
      name: a C identifier; the multi-tensor kernel is ``name + '_mt'``.
      layout: its arguments' roles; default: inputs (p, g, *state), outputs (p, *state).
    """
    if storage not in COMPUTE_TYPES:
        raise ValueError(f"no CUDA kernel for dtype {storage}; supported: {', '.join(COMPUTE_TYPES)}")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
        raise ValueError(f"kernel name must be a C identifier, got {name!r}")
    compute, raw_storage, scalar_dtype, _ = COMPUTE_TYPES[storage]
    layout = _layout_of(graph, layout)
    arrays = layout.names()
    scalars = _scalar_param_names(graph)
    body = emit_body(graph, compute, layout)
    reads = [arrays[k] for k in (*layout.read_only, *range(layout.n_arrays, layout.n_inputs))]
    in_params = ", ".join([*(f"P {a}" for a in reads), *(f"{scalar_dtype} {s}" for s in scalars)])
    out_params = ", ".join(f"P {arrays[w]}" for w in layout.writes)
    mt_name = name + "_mt"
    mt_source = _multi_tensor_source(mt_name, storage, compute, raw_storage, layout, scalars, body)
    return KernelSource(
        name=name, storage=storage, compute=compute, graph=graph, arrays=arrays,
        scalar_params=scalars, body=body, in_params=in_params, out_params=out_params,
        preamble=_DEVICE_PRELUDE, multi_tensor_name=mt_name, multi_tensor_source=mt_source,
        layout=layout,
    )


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line for line in text.splitlines())


def _multi_tensor_source(name, storage, compute, raw_storage, layout: Layout, scalars, body) -> str:
    """One launch for a whole bucket.

    ``ptrs`` holds, for each argument role (p, g, s0..., o0...), one device
    address per tensor: ``ptrs[role * n_tensors + tensor]``. ``blocks`` holds,
    per block, the tensor it works on and the first element of its chunk;
    ``sizes`` the element count of each tensor. Each block walks its chunk
    with a block-stride loop, so each element is read and written by one
    thread. A ``"scalar"`` operand is read once per block; a ``"bcast"``
    operand ``j`` at ``(e / (inner * span)) * inner + e % inner`` for element
    ``e`` of the tensor, with ``(inner, span)`` at ``bcast[2 * (j * n_tensors
    + tensor)]`` (see :func:`~ms_optim.engine.layout.broadcast_run`); the
    ``bcast`` table is a parameter only of kernels with such operands.
    """
    header = "#include <cuda_fp16.h>\n" if storage == "float16" else ""
    n_bcast = layout.operands.count("bcast")
    params = ", ".join(
        [
            "const long long* __restrict__ ptrs",
            "const long long* __restrict__ blocks",
            "const long long* __restrict__ sizes",
            *(["const long long* __restrict__ bcast"] if n_bcast else []),
            "const int n_tensors",
            "const int chunk",
            *(f"const {compute} {s}" for s in scalars),
        ]
    )
    pointers, refs = _operand_access(
        layout,
        lambda role: f"ptrs[{role} * n_tensors + tensor]",
        lambda j, k: f"bcast[2 * ({j} * n_tensors + tensor) + {k}]",
        "start", "i", _referenced(body, layout.names()),
    )
    # The index within a chunk is a 32-bit int: 64-bit loop indices cost
    # registers, and at 512 threads ptxas then spilled around the IEEE division.
    lines = [
        f"extern \"C\" __global__ void __launch_bounds__({MULTI_TENSOR_THREADS}, 1) {name}({params}) {{",
        f"  typedef {raw_storage} P;",
        "  const long long tensor = blocks[2 * blockIdx.x];",
        "  const long long start = blocks[2 * blockIdx.x + 1];",
        "  const int len = (int)min((long long)chunk, sizes[tensor] - start);",
        *("  " + line for line in pointers),
        "  for (int i = threadIdx.x; i < len; i += blockDim.x) {",
        *("    " + line for line in refs),
        _indent(body, 4),
        "  }",
        "}",
    ]
    return header + _DEVICE_PRELUDE + "\n".join(lines) + "\n"


def block_map(sizes: Sequence[int], chunk: int) -> np.ndarray:
    """The multi-tensor kernel's ``blocks`` table: (tensor, first element) per block, flattened.

    Tensor ``k`` gets ``ceil(sizes[k] / chunk)`` blocks; an empty tensor gets none.
    """
    counts = np.array([-(-int(n) // chunk) for n in sizes], dtype=np.int64)
    tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
    first_block = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    start = (np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first_block, counts)) * chunk
    return np.stack([tensor, start], axis=1).reshape(-1)


def pointer_table(addresses: Sequence[Sequence[int]]) -> np.ndarray:
    """The multi-tensor kernel's ``ptrs`` table from ``addresses[tensor][role]`` (role: p, g, s0...).

    Role-major: ``ptrs[role * n_tensors + tensor]``, as the kernel reads it.
    """
    return np.asarray(addresses, dtype=np.uint64).T.reshape(-1).view(np.int64)


def _referenced(body: str, names) -> set[str]:
    """The argument names ``body`` reads or writes (an argument it never names is not bound:
    NVRTC warns of a declared, unreferenced variable)."""
    return {a for a in names if re.search(rf"\b{a}\b", body)}


def _operand_access(layout: Layout, address: Callable[[int], str], bcast_entry: Callable[[int, int], str],
                    start: str, element: str, used: set[str] | None = None):
    """(set-up lines, per-element lines) binding each argument name to its element.

    ``address(role)`` is the C expression of an argument's base address,
    ``bcast_entry(j, k)`` that of bcast operand ``j``'s inner (k=0) and span
    (k=1); full arrays are offset by ``start`` and indexed by ``element``, and
    operands indexed by ``start + element``, the element's index in its tensor.
    """
    names = layout.names()
    setup, refs = [], []
    j = 0
    for role, a in enumerate(names):
        if used is not None and a not in used:
            j += role >= layout.n_arrays and layout.operands[role - layout.n_arrays] == "bcast"
            continue
        if role < layout.n_arrays:
            const = "" if role in layout.writes else "const "
            setup.append(f"{const}P* const {a}_ptr = ({const}P*)({address(role)}){' + ' + start if start else ''};")
            refs.append(f"{const}P& {a} = {a}_ptr[{element}];")
        elif layout.operands[role - layout.n_arrays] == "scalar":
            setup.append(f"const P {a} = ((const P*)({address(role)}))[0];")
        else:
            setup += [
                f"const P* const {a}_ptr = (const P*)({address(role)});",
                f"const long long {a}_inner = {bcast_entry(j, 0)};",
                f"const long long {a}_block = {a}_inner * {bcast_entry(j, 1)};",
            ]
            e = f"((long long)({start}) + {element})" if start else f"(long long)({element})"
            refs.append(f"const P {a} = {a}_ptr[({e} / {a}_block) * {a}_inner + {e} % {a}_inner];")
            j += 1
    return setup, refs


def host_source(source: KernelSource, name: str | None = None) -> str:
    """A C++ function running ``source.body`` in a plain loop (no prelude; see :func:`host_prelude`).

    Signature: ``void name(long long n, P* p, const P* g, P* s0, ..., [const P* o0, ...,
    const long long* bcast,] T h...)`` with P the host storage type (``_Float16`` for
    float16); ``bcast`` holds ``(inner, span)`` of each bcast operand, and is an
    argument only when the layout has such operands.
    """
    name = name or source.name + "_host"
    host_p = COMPUTE_TYPES[source.storage][3]
    layout = source.layout
    args = ["long long n"]
    for role, a in enumerate(source.arrays):
        const = "" if role in layout.writes else "const "
        args.append(f"{const}{host_p}* {a}_arg")
    if "bcast" in layout.operands:
        args.append("const long long* bcast")
    args += [f"{source.compute} {s}" for s in source.scalar_params]
    setup, refs = _operand_access(
        layout, lambda role: f"{source.arrays[role]}_arg", lambda j, k: f"bcast[{2 * j + k}]", "", "i",
        _referenced(source.body, source.arrays),
    )
    return "\n".join(
        [
            f"extern \"C\" void {name}({', '.join(args)}) {{",
            f"  typedef {host_p} P;",
            *("  " + line for line in setup),
            "  for (long long i = 0; i < n; ++i) {",
            *("    " + r for r in refs),
            _indent(source.body, 4),
            "  }",
            "}",
        ]
    )


# ---------------------------------------------------------------------------
# The kernel cache: one source per (rule, static config, scalar names, state
# count, storage dtype), traced and printed once per process.

_cache: dict[tuple, KernelSource] = {}
_lock = threading.Lock()


def cache_key(rule: Callable, static: Mapping[str, Any], scalar_names: Sequence[str],
              layout: Layout | int, storage: str) -> tuple:
    return (rule, tuple(sorted(static.items())), tuple(sorted(scalar_names)), as_layout(layout), str(storage))


def kernel_source(rule: Callable, static: Mapping[str, Any], scalar_names: Sequence[str],
                  layout: Layout | int, storage: str) -> KernelSource:
    """The (cached) kernel sources of ``rule`` under ``static`` for ``storage`` arrays.

    Args:
      rule: an element-wise rule, ``rule(*arrays, *operands, **scalars, **static, xp)``.
      static: its static configuration (a kernel per configuration).
      scalar_names: the names of the per-step scalars it takes.
      layout: its arguments' :class:`~ms_optim.engine.layout.Layout`, or for the
        classic ``rule(p, g, *state) -> (p, *state)`` the number of state arrays.
      storage: the arrays' dtype name.
    """
    key = cache_key(rule, static, scalar_names, layout, storage)
    found = _cache.get(key)
    if found is not None:
        return found
    with _lock:
        if key not in _cache:
            layout = key[3]
            graph = trace(rule, layout.names(), tuple(sorted(scalar_names)), dict(static))
            _cache[key] = generate(graph, storage, _kernel_name(rule, key), layout)
        return _cache[key]


def _kernel_name(rule: Callable, key: tuple) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", getattr(rule, "__name__", "rule"))[:40]
    where = f"{getattr(rule, '__module__', '')}.{getattr(rule, '__qualname__', base)}"
    digest = hashlib.sha1(repr((where, key[1:4])).encode()).hexdigest()[:10]
    short = {"float16": "f16", "float32": "f32", "float64": "f64"}[key[4]]
    return f"ms_optim_{base}_{digest}_{short}"
