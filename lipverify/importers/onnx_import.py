"""ONNX importer: a registry of one small converter per op, over symbolic tensors.

Walks the graph in order. Constant subgraphs are folded (weights computed in
the graph, shape arithmetic); input-dependent tensors are :class:`Sym` values
(affine in the emitted activation nodes). Every unsupported or non-Lipschitz
node is collected and reported once, all together.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..activations import GroupSort, Lipschitz, MaxPool2d, SlopeRestricted
from ..errors import ModelLoadError, Problem, UnsupportedModelError, check_unique
from ..linear import Conv2d, Dense, Diagonal, compose
from ..network import Network, Provenance
from . import register_importer
from .onnx_movement import MOVEMENT
from .onnx_patterns import FUSED_DOMAIN, fuse_patterns
from .symbolic import Builder, Sym

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

FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


class Unsupported(Exception):
    """Raised by a converter: the node is reported with this reason."""


class _Poison:
    """Marks values downstream of an unsupported node (reported once, at the cause)."""


POISON = _Poison()
Value = Sym | np.ndarray | _Poison | None


@dataclass
class Ctx:
    builder: Builder
    opset: int
    keep_softmax: bool
    graph_output: str
    consumers: dict[str, int]
    notes: list[str] = field(default_factory=list)
    sorted_cache: dict = field(default_factory=dict)


Converter = Callable[[Ctx, object, dict, list], list]
#: op type -> list of (since opset, converter); the newest one not above the model's opset wins.
CONVERTERS: dict[str, list[tuple[int, Converter]]] = {}


def converter(*ops: str, since: int = 1):
    def deco(fn: Converter) -> Converter:
        for op in ops:
            entries = CONVERTERS.setdefault(op, [])
            same = [f for v, f in entries if v == since]
            check_unique("ONNX converters", f"{op} (since opset {since})",
                         same[0] if same else None, fn)
            if not same:
                entries.append((since, fn))
                entries.sort(key=lambda e: e[0])
        return fn

    return deco


def get_converter(op: str, opset: int) -> Converter | None:
    best = None
    for since, fn in CONVERTERS.get(op, []):
        if since <= opset:
            best = fn
    return best


def supported_ops() -> list[str]:
    """Every ONNX op type the importer handles (for ``lipverify ops``)."""
    return sorted({*CONVERTERS, *MOVEMENT, "Concat", "Constant", "Shape", "Size"})


# ----------------------------------------------------------------- helpers
def _attrs(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _is_sym(v) -> bool:
    return isinstance(v, Sym)


def _as_sym_shape(x: Sym, shape: tuple[int, ...]) -> Sym:
    """Broadcast a symbolic tensor to ``shape`` (a data movement)."""
    if tuple(x.shape) == tuple(shape):
        return x
    idx = np.broadcast_to(np.arange(1, x.size + 1).reshape(x.shape), shape)
    return x.movement(idx.astype(np.int64) - 1, np.broadcast_to(x.bias_tensor(), shape))


def _index_tensor(x: Sym) -> np.ndarray:
    return np.arange(1, x.size + 1, dtype=np.float64).reshape(x.shape)


def _move(x: Sym, fn: Callable[[np.ndarray, float], np.ndarray]) -> Sym:
    """Apply a data movement ``fn(tensor, fill)`` to a symbolic tensor."""
    idx = fn(_index_tensor(x), 0.0)
    bias = fn(x.bias_tensor(), None)
    return x.movement(np.rint(idx).astype(np.int64) - 1, bias)


# -------------------------------------------------------------- converters
@converter("Add", "Sub", "Sum")
def _add_sub(ctx, node, attrs, ins):
    sign = -1.0 if node.op_type == "Sub" else 1.0
    acc = ins[0]
    for other in ins[1:]:
        shape = _bshape(acc, other)
        if not _is_sym(other):
            other = sign * np.asarray(other, dtype=np.float64)
            acc = (
                acc + other
                if not _is_sym(acc)
                else _as_sym_shape(acc, shape).shifted(np.broadcast_to(other, shape))
            )
            continue
        other = _as_sym_shape(_scale(other, sign) if sign < 0 else other, shape)
        acc = (
            other.shifted(np.broadcast_to(acc, shape))
            if not _is_sym(acc)
            else _as_sym_shape(acc, shape).plus(other)
        )
    return [acc]


def _shape(v):
    return v.shape


def _bshape(a, b) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(tuple(_shape(a)), tuple(_shape(b))))


def _scale(x: Sym, factor, shape=None) -> Sym:
    shape = shape or x.shape
    x = _as_sym_shape(x, shape)
    d = np.broadcast_to(np.asarray(factor, dtype=np.float64), shape).ravel()
    return x.linear(Diagonal(d), shape)


@converter("Mul", "Div")
def _mul_div(ctx, node, attrs, ins):
    a, b = ins
    if _is_sym(a) and _is_sym(b):
        raise Unsupported("product or quotient of two input-dependent tensors is not affine")
    if node.op_type == "Div":
        if not _is_sym(a):
            raise Unsupported("division by an input-dependent tensor is not Lipschitz")
        return [_scale(a, 1.0 / np.asarray(b, dtype=np.float64), _bshape(a, b))]
    x, c = (a, b) if _is_sym(a) else (b, a)
    return [_scale(x, c, _bshape(a, b))]


@converter("Neg")
def _neg(ctx, node, attrs, ins):
    return [_scale(ins[0], -1.0)]


def _matmul_op(w: np.ndarray, lead: int, left: bool) -> Dense:
    """Dense matrix of ``x -> x @ w`` (left=False) or ``x -> w @ x`` over flat layouts."""
    if left:  # w (m, k) @ x (k, n): kron(w, I_n)
        mat = w if lead == 1 else np.kron(w, np.eye(lead))
    else:  # x (lead, k) @ w (k, m): kron(I_lead, w^T)
        mat = w.T if lead == 1 else np.kron(np.eye(lead), w.T)
    return Dense(mat)


@converter("MatMul")
def _matmul(ctx, node, attrs, ins):
    a, b = ins
    if _is_sym(a) and _is_sym(b):
        raise Unsupported("product of two input-dependent tensors is not affine")
    if _is_sym(a):
        w = np.asarray(b, dtype=np.float64)
        w2 = w[:, None] if w.ndim == 1 else w
        if w2.ndim != 2:
            raise Unsupported(f"batched constant matrix of shape {w.shape}")
        shape = a.shape[:-1] + ((w2.shape[1],) if w.ndim == 2 else ())
        lead = math.prod(a.shape[:-1])
        return [a.linear(_matmul_op(w2, lead, False), shape, np.matmul(a.bias_tensor(), w))]
    w = np.asarray(a, dtype=np.float64)
    if w.ndim != 2:
        raise Unsupported(f"batched constant matrix of shape {w.shape}")
    x = b
    n = 1 if len(x.shape) == 1 else math.prod(x.shape[1:])
    if len(x.shape) > 2:
        raise Unsupported(f"constant matrix times a rank-{len(x.shape)} tensor")
    shape = (w.shape[0],) + tuple(x.shape[1:])
    return [x.linear(_matmul_op(w, n, True), shape, np.matmul(w, x.bias_tensor()))]


@converter("Gemm")
def _gemm(ctx, node, attrs, ins):
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 and ins[2] is not None else 0.0
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if _is_sym(b) or not _is_sym(a):
        raise Unsupported("Gemm with an input-dependent B matrix")
    if len(a.shape) != 2:
        raise Unsupported(f"Gemm on a rank-{len(a.shape)} tensor")
    if attrs.get("transA", 0):
        a = _move(a, lambda t, fill: t.T)
    bm = np.asarray(b, dtype=np.float64)
    bm = bm.T if attrs.get("transB", 0) else bm
    (y,) = _matmul(ctx, node, {}, [a, alpha * bm])
    return [y.shifted(np.broadcast_to(beta * np.asarray(c, dtype=np.float64), y.shape))]


def _conv_pads(attrs, in_hw, kernel, stride, dil) -> tuple[int, int, int, int]:
    mode = attrs.get("auto_pad", "NOTSET")
    if mode in ("NOTSET", ""):
        p = list(attrs.get("pads", [0] * 4))
        return (p[0], p[1], p[2], p[3])
    if mode == "VALID":
        return (0, 0, 0, 0)
    pads = []
    for n, k, s, d in zip(in_hw, kernel, stride, dil):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small = total // 2
        pads.append((small, total - small) if mode == "SAME_UPPER" else (total - small, small))
    return (pads[0][0], pads[1][0], pads[0][1], pads[1][1])


def _spatial(x: Sym, what: str) -> tuple[Sym, bool]:
    """View a (1, C, L) or (1, C, H, W) tensor as 2-D; True when it was 1-D."""
    if len(x.shape) == 3:
        return x.reshape((x.shape[0], x.shape[1], 1, x.shape[2])), True
    if len(x.shape) != 4:
        raise Unsupported(f"{what} on a rank-{len(x.shape)} tensor (only 1-D and 2-D)")
    if x.shape[0] != 1:
        raise Unsupported(f"{what} with batch dimension {x.shape[0]} != 1")
    return x, False


def _hw(v, one_d: bool, default) -> tuple[int, int]:
    v = list(v) if v is not None else list(default)
    return (1, v[0]) if one_d else (v[0], v[1])


@converter("Conv")
def _conv(ctx, node, attrs, ins):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    if _is_sym(w) or (b is not None and _is_sym(b)):
        raise Unsupported("Conv with input-dependent weights")
    x, one_d = _spatial(x, "Conv")
    w = np.asarray(w, dtype=np.float64)
    if one_d:
        w = w[:, :, None, :]
    stride = _hw(attrs.get("strides"), one_d, (1, 1))
    dil = _hw(attrs.get("dilations"), one_d, (1, 1))
    kern = w.shape[2:]
    if one_d:
        p = attrs.get("pads", [0, 0])
        attrs = {**attrs, "pads": [0, p[0], 0, p[1]]} if "pads" in attrs else attrs
    pads = _conv_pads(attrs, x.shape[2:], kern, stride, dil)
    op = Conv2d(w, x.shape[1:], stride, pads, dil, int(attrs.get("group", 1)))
    out_shape = (1, *op.out_shape)
    bias = op.matmat(x.bias[None])[0].reshape(op.out_shape)
    if b is not None:
        bias = bias + np.asarray(b, dtype=np.float64)[:, None, None]
    y = x.linear(op, out_shape, bias)
    return [y.reshape((1, op.out_shape[0], op.out_shape[2])) if one_d else y]


def _pool_geometry(attrs, x, one_d):
    kernel = _hw(attrs["kernel_shape"], one_d, None)
    stride = _hw(attrs.get("strides"), one_d, (1, 1))
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise Unsupported("dilated pooling is not supported")
    if attrs.get("ceil_mode", 0):
        raise Unsupported("ceil_mode=1 pooling is not supported; re-export with ceil_mode=0")
    if one_d and "pads" in attrs:
        attrs = {**attrs, "pads": [0, attrs["pads"][0], 0, attrs["pads"][1]]}
    return kernel, stride, _conv_pads(attrs, x.shape[2:], kernel, stride, (1, 1))


@converter("AveragePool", "GlobalAveragePool")
def _avgpool(ctx, node, attrs, ins):
    x, one_d = _spatial(ins[0], node.op_type)
    c, h, w = x.shape[1:]
    if node.op_type == "GlobalAveragePool":
        kernel, stride, pads = (h, w), (1, 1), (0, 0, 0, 0)
    else:
        kernel, stride, pads = _pool_geometry(attrs, x, one_d)
    ones = Conv2d(np.ones((c, 1, *kernel)), (c, h, w), stride, pads, groups=c)
    if attrs.get("count_include_pad", 0) or not any(pads):
        counts = np.full(ones.n_out, float(kernel[0] * kernel[1]))
    else:  # windows count only the real (unpadded) entries
        counts = ones.matmat(np.ones((1, ones.n_in)))[0]
    op = compose(ones, Diagonal(1.0 / counts))
    out = (1, *ones.out_shape)
    y = x.linear(op, out)
    return [y.reshape((1, c, out[3])) if one_d else y]


@converter("MaxPool")
def _maxpool(ctx, node, attrs, ins):
    if len(node.output) > 1 and ctx.consumers.get(node.output[1], 0):
        raise Unsupported("MaxPool Indices output is integer-valued: not Lipschitz")
    x, one_d = _spatial(ins[0], "MaxPool")
    kernel, stride, pads = _pool_geometry(attrs, x, one_d)
    act = MaxPool2d(kernel, stride, pads, x.shape[1:])
    y = ctx.builder.activate(x, act, (1, *act.out_shape), node.name)
    return [y.reshape((1, act.out_shape[0], act.out_shape[2])) if one_d else y]


@converter("GlobalMaxPool")
def _global_maxpool(ctx, node, attrs, ins):
    x, one_d = _spatial(ins[0], "GlobalMaxPool")
    act = MaxPool2d(tuple(x.shape[2:]), (1, 1), (0, 0, 0, 0), x.shape[1:])
    return [ctx.builder.activate(x, act, (1, act.out_shape[0], 1) + (() if one_d else (1,)))]


@converter("BatchNormalization")
def _batchnorm(ctx, node, attrs, ins):
    x, scale, b, mean, var = ins[:5]
    if any(_is_sym(v) for v in (scale, b, mean, var)):
        raise Unsupported("BatchNormalization with input-dependent statistics")
    if attrs.get("training_mode", 0):
        raise Unsupported("BatchNormalization in training mode")
    eps = attrs.get("epsilon", 1e-5)
    s = np.asarray(scale, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    shift = np.asarray(b, np.float64) - np.asarray(mean, np.float64) * s
    bshape = (1, -1) + (1,) * (len(x.shape) - 2)
    y = _scale(x, s.reshape(bshape))
    return [y.shifted(np.broadcast_to(shift.reshape(bshape), x.shape))]


def _elementwise(name: str, *params: float):
    def conv(ctx, node, attrs, ins):
        act = SlopeRestricted.named(name, *(p(attrs, ins) for p in params))
        return [ctx.builder.activate(ins[0], act, name=node.name)]

    return conv


converter("Relu")(_elementwise("relu"))
converter("Tanh")(_elementwise("tanh"))
converter("Sigmoid")(_elementwise("sigmoid"))
converter("Softplus")(_elementwise("softplus"))
converter("Abs")(_elementwise("abs"))
converter("LeakyRelu")(_elementwise("leaky_relu", lambda a, i: a.get("alpha", 0.01)))
converter("Elu")(_elementwise("elu", lambda a, i: a.get("alpha", 1.0)))
converter("lipverify.Silu")(_elementwise("silu"))
converter("lipverify.Gelu")(_elementwise("gelu", lambda a, i: a.get("k", 1.0)))


@converter("Gelu", since=20)
def _gelu(ctx, node, attrs, ins):
    approx = attrs.get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    if approx != "none":
        raise Unsupported(f"Gelu(approximate={approx!r}): only the exact (erf) GELU has "
                          "derived slope bounds")
    return [ctx.builder.activate(ins[0], SlopeRestricted.named("gelu"), name=node.name)]


@converter("Clip")
def _clip(ctx, node, attrs, ins):
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else attrs.get("min", -np.inf)
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else attrs.get("max", np.inf)
    if _is_sym(lo) or _is_sym(hi):
        raise Unsupported("Clip with input-dependent bounds")
    act = SlopeRestricted.named("hardtanh", float(lo), float(hi))
    return [ctx.builder.activate(ins[0], act, name=node.name)]


@converter("Softmax")
def _softmax(ctx, node, attrs, ins):
    x = ins[0]
    axis = attrs.get("axis", 1 if ctx.opset < 13 else -1)
    axis = axis + len(x.shape) if axis < 0 else axis
    if node.output[0] == ctx.graph_output and not ctx.keep_softmax:  # any axis: logits remain
        msg = (
            f"final Softmax {node.name or ''} dropped: bounding the logits "
            "(use --keep-softmax to bound it as a 1-Lipschitz map)"
        )
        ctx.notes.append(msg)
        warnings.warn(msg, stacklevel=2)
        return [x]
    if math.prod(x.shape[:axis]) != 1 or (ctx.opset >= 13 and math.prod(x.shape[axis + 1 :]) != 1):
        raise Unsupported("Softmax over part of the features only")
    return [ctx.builder.activate(x, Lipschitz("softmax"), name=node.name)]


def _sort_along(ctx, x: Sym, axes, k: int, descending: bool, name: str) -> Sym:
    """Values of a sort over ``axes`` (flattened into one group) keeping the first ``k``.

    One ascending GroupSort node (§4) per (tensor, axes) is shared by every op that
    sorts the same tensor, so ``Concat(ReduceMin, ReduceMax)`` stays one MaxMin layer.
    """
    rank = len(x.shape)
    axes = sorted(a + rank if a < 0 else a for a in axes)
    rest = [a for a in range(rank) if a not in axes]
    g = math.prod(x.shape[a] for a in axes)
    key = (id(x), tuple(axes))
    if key not in ctx.sorted_cache:
        moved = _move(
            x,
            lambda t, fill: np.transpose(t, rest + axes).reshape([t.shape[a] for a in rest] + [g]),
        )
        ctx.sorted_cache[key] = (x, ctx.builder.activate(moved, GroupSort(g), name=name))
    _, srt = ctx.sorted_cache[key]
    srt = _move(srt, lambda t, fill: (t[..., ::-1] if descending else t)[..., :k])
    if len(axes) == 1:  # restore the original layout
        return _move(srt, lambda t, fill: np.moveaxis(t, -1, axes[0]))
    return srt


def _reduce_extreme(ctx, node, attrs, ins):
    x = ins[0]
    axes = attrs.get("axes")
    if axes is None and len(ins) > 1 and ins[1] is not None:
        axes = [int(a) for a in np.ravel(ins[1])]
    axes = list(range(len(x.shape))) if not axes else [a % len(x.shape) for a in axes]
    y = _sort_along(ctx, x, axes, 1, node.op_type == "ReduceMax", node.name)
    kept = [1 if a in axes else s for a, s in enumerate(x.shape)]
    shape = (
        kept if attrs.get("keepdims", 1) else [s for a, s in enumerate(x.shape) if a not in axes]
    )
    return [y.reshape(tuple(shape))]


converter("ReduceMax", "ReduceMin")(_reduce_extreme)


def _reduce_axes(attrs, ins, rank: int) -> list[int]:
    axes = attrs.get("axes")
    if axes is None and len(ins) > 1 and ins[1] is not None:
        axes = [int(a) for a in np.ravel(ins[1])]
    if not axes:
        return [] if attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(a % rank for a in axes)


@converter("ReduceSum", "ReduceMean")
def _reduce_linear(ctx, node, attrs, ins):
    x = ins[0]
    axes = _reduce_axes(attrs, ins, len(x.shape))
    if not axes:
        return [x]
    rest = [a for a in range(len(x.shape)) if a not in axes]
    g = math.prod(x.shape[a] for a in axes)
    lead = math.prod(x.shape[a] for a in rest)
    moved = _move(x, lambda t, fill: np.transpose(t, rest + axes).reshape(lead, g))
    row = np.full((1, g), 1.0 / g if node.op_type == "ReduceMean" else 1.0)
    if lead * lead * g > 50_000_000:
        raise Unsupported(f"reduction over {lead} groups is too large to represent densely")
    op = Dense(np.kron(np.eye(lead), row))
    kept = [1 if a in axes else s for a, s in enumerate(x.shape)]
    shape = kept if attrs.get("keepdims", 1) else [x.shape[a] for a in rest]
    return [moved.linear(op, tuple(shape))]


@converter("Max", "Min")
def _elementwise_extreme(ctx, node, attrs, ins):
    """Max/Min of two tensors: one shared GroupSort(2) over the stacked pair (§4), or a
    shifted ReLU against a constant: max(x, c) = c + relu(x - c)."""
    if len(ins) != 2:
        raise Unsupported("Max/Min of more than two tensors")
    a, b = ins
    is_max = node.op_type == "Max"
    if not (_is_sym(a) and _is_sym(b)):
        x, c = (a, b) if _is_sym(a) else (b, a)
        shape = _bshape(x, c)
        c = np.broadcast_to(np.asarray(c, dtype=np.float64), shape)
        x = _as_sym_shape(x, shape)
        sign = 1.0 if is_max else -1.0  # min(x, c) = c - relu(c - x)
        inner = _scale(x.shifted(-c), sign) if sign > 0 else _scale(x, -1.0).shifted(c)
        r = ctx.builder.activate(inner, SlopeRestricted.named("relu"), name=node.name)
        return [_scale(r, sign).shifted(c)]
    shape = _bshape(a, b)
    key = ("pair", frozenset((id(a), id(b))))
    if key not in ctx.sorted_cache:
        pair = _concat(
            {"axis": len(shape)}, [_unsq(_as_sym_shape(a, shape)), _unsq(_as_sym_shape(b, shape))]
        )
        srt = _sort_along(ctx, pair, [len(shape)], 2, False, node.name)
        ctx.sorted_cache[key] = ((a, b), srt)
    _, srt = ctx.sorted_cache[key]
    pick = 1 if is_max else 0
    return [_move(srt, lambda t, fill: t[..., pick])]


def _unsq(x: Sym) -> Sym:
    return x.reshape(tuple(x.shape) + (1,))


@converter("TopK")
def _topk(ctx, node, attrs, ins):
    if len(node.output) > 1 and ctx.consumers.get(node.output[1], 0):
        raise Unsupported("TopK indices output is integer-valued: not Lipschitz")
    k = int(np.ravel(ins[1])[0]) if len(ins) > 1 and ins[1] is not None else int(attrs["k"])
    if not attrs.get("sorted", 1):
        raise Unsupported("unsorted TopK has no defined output order")
    return [
        _sort_along(
            ctx, ins[0], [attrs.get("axis", -1)], k, bool(attrs.get("largest", 1)), node.name
        )
    ]


@converter("Split")
def _split(ctx, node, attrs, ins):
    """Split a tensor into consecutive pieces along ``axis`` (each piece a data movement)."""
    x = ins[0]
    axis = attrs.get("axis", 0) % len(x.shape)
    sizes = attrs.get("split")
    if sizes is None and len(ins) > 1 and ins[1] is not None:
        sizes = [int(v) for v in np.ravel(ins[1])]
    n = len(node.output)
    if sizes is None:
        dim = x.shape[axis]
        step = -(-dim // n)
        sizes = [min(step, dim - i * step) for i in range(n)]
    edges = np.concatenate([[0], np.cumsum(sizes)])
    return [
        _move(x, lambda t, fill, a=a, b=b: np.take(t, np.arange(a, b), axis=axis))
        for a, b in zip(edges[:-1], edges[1:])
    ]


@converter("lipverify.GroupSortPair")
def _groupsort_pair(ctx, node, attrs, ins):
    """The fused MaxMin pattern: Concat(Unsqueeze(min), Unsqueeze(max)) of a pair axis."""
    x = ins[0]
    rank = len(x.shape)
    axis = attrs["axis"] % rank
    if x.shape[axis] != 2:
        raise Unsupported("MaxMin pattern on an axis of size != 2")
    srt = _sort_along(ctx, x, [axis], 2, False, node.name)
    parts = [_move(srt, lambda t, fill, i=i: np.take(t, i, axis=axis)) for i in (0, 1)]
    u = attrs["unsqueeze_axis"] % rank
    parts = [_move(p, lambda t, fill: np.expand_dims(t, u)) for p in parts]
    if attrs.get("max_first", 0):
        parts = parts[::-1]
    return [_concat({"axis": attrs["concat_axis"] % rank}, parts)]


# --------------------------------------------------------------- the walk
def _arg_reader(node, attrs, ins):
    def arg(pos, name, default):
        if pos is not None and pos < len(ins) and ins[pos] is not None:
            if _is_sym(ins[pos]):
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
    if not _is_sym(x):
        return fn(x, arg, arg(2, "value", 0.0) if node.op_type == "Pad" else 0.0)
    pad_value = float(np.ravel(arg(2, "value", 0.0))[0]) if node.op_type == "Pad" else 0.0
    return _move(x, lambda t, fill: fn(t, arg, pad_value if fill is None else fill))


def _concat(attrs, ins) -> Value:
    axis = attrs["axis"]
    if not any(_is_sym(v) for v in ins):
        return np.concatenate(ins, axis=axis)
    tensors = [v.bias_tensor() if _is_sym(v) else np.asarray(v, np.float64) for v in ins]
    bias = np.concatenate(tensors, axis=axis)
    out: Sym | None = None
    for i, v in enumerate(ins):
        if not _is_sym(v):
            continue
        parts = [
            _index_tensor(v) if j == i else np.zeros(np.shape(t)) for j, t in enumerate(tensors)
        ]
        idx = np.rint(np.concatenate(parts, axis=axis)).astype(np.int64) - 1
        piece = v.movement(idx, np.zeros(bias.shape))
        out = piece if out is None else out.plus(piece)
    return out.shifted(bias)


def _fold(node, ins, opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    feeds = {name: v for name, v in zip(node.input, ins) if name}
    try:
        return list(ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds))
    except Exception as exc:  # the reference runtime raises many types
        raise Unsupported(f"could not evaluate constant node: {exc}") from exc


def _known(op: str, opset: int) -> bool:
    return (
        op in MOVEMENT
        or op in ("Concat", "Constant", "Shape", "Size")
        or bool(get_converter(op, opset))
    )


def _problem_key(node, ins) -> str | None:
    """NON_LIPSCHITZ key for a node applied to input-dependent values, if any."""
    op = node.op_type
    if op == "Cast":
        to = next((a.i for a in node.attribute if a.name == "to"), 1)
        return None if to in FLOAT_TYPES else "Cast:int"
    if op == "Where" and (ins[0] is None or _is_sym(ins[0])):
        return "Equal"
    return op if op in NON_LIPSCHITZ else None


def network_from_onnx(
    model, *, name: str = "model", provenance: Provenance | None = None, keep_softmax: bool = False
) -> Network:
    """Convert an in-memory ``onnx.ModelProto`` to a :class:`Network`."""
    from onnx import numpy_helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    values: dict[str, Value] = {}
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        values[init.name] = arr.astype(np.float64) if arr.dtype.kind == "f" else arr
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
    input_shape = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims) or (1,)
    if not dims:
        raise ModelLoadError(f"{name}: input {inputs[0].name} has no shape information")

    nodes = fuse_patterns(list(graph.node), values)
    out_name = graph.output[0].name
    nodes = _live(nodes, out_name)
    consumers: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1

    builder = Builder(input_shape)
    ctx = Ctx(builder, opset, keep_softmax, out_name, consumers)
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
    if not _is_sym(out):
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


def _convert(ctx: Ctx, node, ins: list, problems: list[Problem]) -> list[Value]:
    n_out = len(node.output)
    label = node.name or node.output[0]
    attrs = _attrs(node)
    if node.domain == FUSED_DOMAIN:  # our own fused ops (onnx_patterns), by their own names
        try:
            return CONVERTERS[f"{FUSED_DOMAIN}.{node.op_type}"][-1][1](ctx, node, attrs, ins)
        except Unsupported as exc:
            problems.append(Problem(label, node.op_type, str(exc)))
            return [POISON] * n_out
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
        if node.op_type == "Constant":
            return [_constant(node)]
        if not any(_is_sym(v) for v in ins):
            if node.op_type in MOVEMENT:
                return [_run_movement(node, attrs, ins)]
            if node.op_type == "Concat":
                return [_concat(attrs, ins)]
            return _fold(node, ins, ctx.opset)
        key = _problem_key(node, ins)
        if key:
            raise Unsupported(NON_LIPSCHITZ[key])
        if node.op_type == "Shape":
            shape = np.array(ins[0].shape, dtype=np.int64)
            return [shape[attrs.get("start", 0) : attrs.get("end", None)]]
        if node.op_type == "Size":
            return [np.array(ins[0].size, dtype=np.int64)]
        if node.op_type == "Concat":
            return [_concat(attrs, ins)]
        if node.op_type in MOVEMENT:
            if node.op_type == "Dropout" and n_out > 1 and ctx.consumers.get(node.output[1], 0):
                raise Unsupported("Dropout mask output is boolean: not Lipschitz")
            return [_run_movement(node, attrs, ins)] + [POISON] * (n_out - 1)
        fn = get_converter(node.op_type, ctx.opset)
        if fn is None:
            raise Unsupported("operation not supported (run `lipverify ops` for the list)")
        return fn(ctx, node, attrs, ins)
    except Unsupported as exc:
        problems.append(Problem(label, node.op_type, str(exc)))
    except (ValueError, IndexError, ModelLoadError) as exc:
        problems.append(Problem(label, node.op_type, f"cannot convert: {exc}"))
    return [POISON] * n_out


def _constant(node) -> np.ndarray:
    from onnx import numpy_helper

    attr = node.attribute[0]
    if attr.name == "value":
        arr = numpy_helper.to_array(attr.t)
    elif attr.name in ("value_float", "value_int"):
        arr = np.array(attr.f if attr.name == "value_float" else attr.i)
    elif attr.name in ("value_floats", "value_ints"):
        arr = np.array(list(attr.floats if attr.name == "value_floats" else attr.ints))
    else:
        raise Unsupported(f"Constant with attribute {attr.name}")
    return arr.astype(np.float64) if arr.dtype.kind == "f" else arr


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
