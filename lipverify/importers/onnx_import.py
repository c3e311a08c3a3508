"""ONNX importer: a registry of one small converter per op, over symbolic tensors.

Walks the graph in order. Constant subgraphs are folded (weights computed in
the graph, shape arithmetic); input-dependent tensors are :class:`Sym` values
(affine in the emitted activation nodes). Every unsupported or non-Lipschitz
node is collected and reported once, all together.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError, Problem, UnsupportedModelError, UsageError
from ..ir.network import Network, Provenance
from . import (
    onnx_ops,  # noqa: F401  (registers the converters)
    register_importer,
)
from .onnx_movement import MOVEMENT
from .onnx_patterns import FUSED_DOMAIN, fuse_patterns
from .onnx_registry import (
    CONVERTERS,
    FLOAT_TYPES,
    MAX_TENSOR_ELEMENTS,
    POISON,
    Converter,
    Ctx,
    InvalidModel,
    Unsupported,
    Value,
    check_tensor,
    get_converter,
    is_sym,
    move,
    node_attrs,
    takes_constants,
    tensor_array,
)
from .symbolic import Builder

#: Ops whose output is not a Lipschitz function of their input, with the reason.
NON_LIPSCHITZ = {
    **dict.fromkeys(
        ["Sign", "Round", "Floor", "Ceil", "Hardmax", "QuantizeLinear", "DynamicQuantizeLinear"],
        "piecewise constant with jumps: not Lipschitz",
    ),
    **dict.fromkeys(
        ["ArgMax", "ArgMin", "NonZero", "TopK:indices", "Unique"],
        "integer-valued index output: not Lipschitz",
    ),
    **dict.fromkeys(
        [
            "Equal",
            "Greater",
            "GreaterOrEqual",
            "Less",
            "LessOrEqual",
            "Not",
            "And",
            "Or",
            "Xor",
            "IsNaN",
            "IsInf",
        ],
        "boolean output: not Lipschitz",
    ),
    "OneHot": "one-hot encoding of an index: not Lipschitz",
    "Mod": "modulo has jumps: not Lipschitz",
    "BitShift": "integer bit shift: not Lipschitz",
    "Cast:int": "cast to an integer or boolean type: not Lipschitz",
    **dict.fromkeys(
        ["Exp", "Log", "Reciprocal", "Sqrt", "Pow", "LogSoftmax"], "not globally Lipschitz on R^n"
    ),
}

# --------------------------------------------------------------- the walk
def _arg_reader(node, attrs, ins):
    def arg(pos, name, default):
        if pos is not None and pos < len(ins) and ins[pos] is not None:
            if is_sym(ins[pos]):
                raise Unsupported(f"input {pos} must be constant")
            return ins[pos]
        if name is not None and name in attrs:
            return attrs[name]
        return default

    return arg


def _run_movement(node, attrs, ins) -> Value:
    arg = _arg_reader(node, attrs, ins)
    fn = MOVEMENT[node.op_type]
    x = ins[0]
    if not is_sym(x):
        return fn(x, arg, arg(2, "value", 0.0) if node.op_type == "Pad" else 0.0)
    pad_value = float(np.ravel(arg(2, "value", 0.0))[0]) if node.op_type == "Pad" else 0.0
    return move(x, lambda t, fill: fn(t, arg, pad_value if fill is None else fill))


def _evaluate(node, ins, opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    feeds = {name: v for name, v in zip(node.input, ins) if name}
    try:
        return list(ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds))
    except Exception as exc:  # the reference runtime raises many types
        raise Unsupported(f"could not evaluate constant node: {exc}") from exc


def _known(op: str, opset: int) -> bool:
    return op in MOVEMENT or bool(get_converter(op, opset))


def _problem_key(node, ins) -> str | None:
    """NON_LIPSCHITZ key for a node applied to input-dependent values, if any."""
    op = node.op_type
    if op == "Cast":
        to = next((a.i for a in node.attribute if a.name == "to"), 1)
        return None if to in FLOAT_TYPES else "Cast:int"
    if op == "Where" and (ins[0] is None or is_sym(ins[0])):
        return "Equal"
    return op if op in NON_LIPSCHITZ else None


#: (op, input position) where an infinite constant means something: an open clipping bound, a
#: -inf padding before a max. Anywhere else an infinite initializer is refused at load.
INF_OK_INPUTS = {("Clip", 1), ("Clip", 2), ("Pad", 2)}


def _initializers(graph, where: str) -> dict[str, np.ndarray]:
    """Every initializer as an array, each checked against its declared shape and type before
    it is allocated, and refused (naming it) when it holds NaN, or +-inf outside
    :data:`INF_OK_INPUTS`."""
    uses: dict[str, set] = {}
    for node in graph.node:
        for pos, name in enumerate(node.input):
            uses.setdefault(name, set()).add((node.op_type, pos))
    values = {}
    for init in graph.initializer:
        inf_ok = uses.get(init.name, set()) <= INF_OK_INPUTS
        values[init.name] = tensor_array(init, f"{where}: initializer {init.name!r}", inf_ok)
    return values


def _input_shape(inp, where: str) -> tuple[int, ...]:
    """The data input's shape; an unknown (symbolic) size is 1, and so is an explicit 0 in
    the leading (batch) position of a rank >= 2 input; a negative size, or 0 elsewhere, is
    refused naming the input."""
    dims = inp.type.tensor_type.shape.dim
    shape = []
    for k, d in enumerate(dims):
        known = d.HasField("dim_value")
        if known and (d.dim_value < 0 or (d.dim_value == 0 and (k > 0 or len(dims) < 2))):
            raise InvalidModel(f"{where}: input {inp.name!r} has size {d.dim_value} in dimension "
                               f"{k} of its shape; sizes must be positive")
        shape.append(d.dim_value if known and d.dim_value > 0 else 1)
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise InvalidModel(f"{where}: input {inp.name!r} declares shape {shape}, above "
                           f"{MAX_TENSOR_ELEMENTS:,} elements")
    return tuple(shape) or (1,)


def network_from_onnx(
    model, *, name: str = "model", provenance: Provenance | None = None, keep_softmax: bool = False
) -> Network:
    """Convert an in-memory ``onnx.ModelProto`` to a :class:`Network`."""
    graph = model.graph
    where = provenance.path if provenance is not None and provenance.path else name
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    values: dict[str, Value] = dict(_initializers(graph, where))
    inputs = [i for i in graph.input if i.name not in values]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        hint = (
            " (this file has no initializers: weights must be stored in the file)"
            if not graph.initializer
            else ""
        )
        raise ModelLoadError(f"{name}: expected exactly one data input, found {names}{hint}")
    if not graph.output:
        raise ModelLoadError(f"{name}: the graph has no output")
    dims = inputs[0].type.tensor_type.shape.dim
    input_shape = _input_shape(inputs[0], where)
    if not dims:
        raise ModelLoadError(f"{name}: input {inputs[0].name} has no shape information")

    for node in graph.node:  # before the pattern matcher reads any tensor attribute
        _check_attributes(node, where)
    nodes = fuse_patterns(list(graph.node), values)
    out_name = graph.output[0].name
    nodes = _live(nodes, out_name)
    consumers: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1

    builder = Builder(input_shape)
    ctx = Ctx(builder, opset, keep_softmax, out_name, consumers, source=where)
    values[inputs[0].name] = builder.input()
    problems: list[Problem] = []
    for node in nodes:
        ins = [values.get(i, POISON) if i else None for i in node.input]
        outs = _convert(ctx, node, ins, problems)
        for o, v in zip(node.output, outs):
            values[o] = v
    if problems:
        raise UnsupportedModelError(problems, name)
    out = values.get(out_name)
    if not is_sym(out):
        raise ModelLoadError(f"{name}: the output {out_name} does not depend on the input")
    notes = (*provenance.notes, *ctx.notes) if provenance else tuple(ctx.notes)
    prov = (
        Provenance(provenance.path, provenance.sha256, provenance.format, notes)
        if provenance
        else Provenance(format="onnx", notes=notes)
    )
    if len(graph.output) > 1:
        ctx.notes.append(f"graph has {len(graph.output)} outputs; bounding the first, {out_name}")
    return builder.network(out, name, prov)


def _check_attributes(node, where: str) -> None:
    """Any node, whatever its op: a NaN float attribute is a broken file (no op means NaN),
    and a tensor attribute must hold what its shape declares (:func:`check_tensor`)."""
    label = node.name or (node.output[0] if node.output else "?")
    for a in node.attribute:
        vals = [a.f] if a.type == a.FLOAT else list(a.floats) if a.type == a.FLOATS else []
        if any(math.isnan(v) for v in vals):
            raise InvalidModel(f"{where}: node {label!r} ({node.op_type}): attribute "
                               f"{a.name} is NaN; fix or re-export the model")
        tensors = [a.t] if a.type == a.TENSOR else list(a.tensors) if a.type == a.TENSORS else []
        for t in tensors:
            check_tensor(t, f"{where}: node {label!r} ({node.op_type}): attribute {a.name}")


def _convert(ctx: Ctx, node, ins: list, problems: list[Problem]) -> list[Value]:
    n_out = len(node.output)
    label = node.name or node.output[0]
    attrs = node_attrs(node)
    if node.domain == FUSED_DOMAIN:  # our own fused ops (onnx_patterns), by their own names
        try:
            return CONVERTERS[f"{FUSED_DOMAIN}.{node.op_type}"][-1][1](ctx, node, attrs, ins)
        except Unsupported as exc:
            problems.append(Problem(label, node.op_type, str(exc)))
            return [POISON] * n_out
        except UsageError as exc:
            raise InvalidModel(f"{ctx.source}: node {label!r} ({node.op_type}): {exc}") from None
    if node.domain not in ("", "ai.onnx"):  # never mistake a custom op for a standard one
        problems.append(
            Problem(label, node.op_type, f"custom op of domain {node.domain!r}: not supported")
        )
        return [POISON] * n_out
    if any(v is POISON for v in ins):
        # Downstream of a problem: still report ops that are wrong in themselves.
        key = _problem_key(node, [None] * len(ins))
        if key:
            problems.append(Problem(label, node.op_type, NON_LIPSCHITZ[key]))
        elif not _known(node.op_type, ctx.opset):
            problems.append(Problem(label, node.op_type, "operation not supported"))
        return [POISON] * n_out
    try:
        fn = get_converter(node.op_type, ctx.opset)
        if not any(is_sym(v) for v in ins):
            return _fold(ctx, node, attrs, ins, fn)
        return _trace(ctx, node, attrs, ins, fn)
    except Unsupported as exc:
        problems.append(Problem(label, node.op_type, str(exc)))
    except InvalidModel:
        raise
    except UsageError as exc:  # a parameter the file gives is out of range (an alpha of NaN)
        raise InvalidModel(f"{ctx.source}: node {label!r} ({node.op_type}): {exc}") from None
    except (ValueError, IndexError, ModelLoadError) as exc:
        problems.append(Problem(label, node.op_type, f"cannot convert: {exc}"))
    return [POISON] * n_out


def _fold(ctx: Ctx, node, attrs: dict, ins: list, fn: Converter | None) -> list[Value]:
    """A node of constants: by its converter if that takes constants, else evaluated."""
    if takes_constants(fn):
        return fn(ctx, node, attrs, ins)
    if node.op_type in MOVEMENT:
        return [_run_movement(node, attrs, ins)]
    return _evaluate(node, ins, ctx.opset)


def _trace(ctx: Ctx, node, attrs: dict, ins: list, fn: Converter | None) -> list[Value]:
    """A node of input-dependent values: a data movement or its registered converter."""
    key = _problem_key(node, ins)
    if key:
        raise Unsupported(NON_LIPSCHITZ[key])
    if node.op_type in MOVEMENT:
        n_out = len(node.output)
        if node.op_type == "Dropout" and n_out > 1 and ctx.consumers.get(node.output[1], 0):
            raise Unsupported("Dropout mask output is boolean: not Lipschitz")
        return [_run_movement(node, attrs, ins)] + [POISON] * (n_out - 1)
    if fn is None:
        raise Unsupported("operation not supported (run `lipverify ops` for the list)")
    return fn(ctx, node, attrs, ins)


def _live(nodes: list, output: str) -> list:
    """Drop nodes the output does not depend on (after pattern fusion)."""
    needed = {output}
    keep = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    return keep[::-1]


@register_importer(".onnx")
def load_onnx(path: str | Path, *, keep_softmax: bool = False, **_ignored) -> Network:
    """Load an ``.onnx`` file (external data beside it is read too)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, missing external data, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{path}: not a readable ONNX model (truncated or corrupt file, or missing external "
            f"data?): {first}"
        ) from exc
    if not model.graph.node:
        raise ModelLoadError(f"{path}: the ONNX file contains no graph nodes (corrupt file?)")
    prov = Provenance.of_file(path, "onnx")
    return network_from_onnx(model, name=path.stem, provenance=prov, keep_softmax=keep_softmax)

