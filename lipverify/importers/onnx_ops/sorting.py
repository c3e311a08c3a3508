"""ONNX converters: ReduceMax/Min, ReduceSum/Mean, Max/Min, TopK, Split and the fused MaxMin
pair; the sorting ops become GroupSort activations (FORMULATIONS.md §4)."""

from __future__ import annotations

import math

import numpy as np

from ...ir.activations import GroupSort, SlopeRestricted
from ...ir.linear import Dense
from ..onnx_registry import (
    Unsupported,
    as_sym_shape,
    broadcast_shape,
    concat_values,
    converter,
    is_sym,
    move,
    scale_sym,
    unsqueeze_sym,
)
from ..symbolic import Sym


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
        moved = move(
            x,
            lambda t, fill: np.transpose(t, rest + axes).reshape([t.shape[a] for a in rest] + [g]),
        )
        ctx.sorted_cache[key] = (x, ctx.builder.activate(moved, GroupSort(g), name=name))
    _, srt = ctx.sorted_cache[key]
    srt = move(srt, lambda t, fill: (t[..., ::-1] if descending else t)[..., :k])
    if len(axes) == 1:  # restore the original layout
        return move(srt, lambda t, fill: np.moveaxis(t, -1, axes[0]))
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
    moved = move(x, lambda t, fill: np.transpose(t, rest + axes).reshape(lead, g))
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
    if not (is_sym(a) and is_sym(b)):
        x, c = (a, b) if is_sym(a) else (b, a)
        shape = broadcast_shape(x, c)
        c = np.broadcast_to(np.asarray(c, dtype=np.float64), shape)
        x = as_sym_shape(x, shape)
        sign = 1.0 if is_max else -1.0  # min(x, c) = c - relu(c - x)
        inner = scale_sym(x.shifted(-c), sign) if sign > 0 else scale_sym(x, -1.0).shifted(c)
        r = ctx.builder.activate(inner, SlopeRestricted.named("relu"), name=node.name)
        return [scale_sym(r, sign).shifted(c)]
    shape = broadcast_shape(a, b)
    key = ("pair", frozenset((id(a), id(b))))
    if key not in ctx.sorted_cache:
        pair = concat_values({"axis": len(shape)}, [unsqueeze_sym(as_sym_shape(a, shape)),
                                                    unsqueeze_sym(as_sym_shape(b, shape))])
        srt = _sort_along(ctx, pair, [len(shape)], 2, False, node.name)
        ctx.sorted_cache[key] = ((a, b), srt)
    _, srt = ctx.sorted_cache[key]
    pick = 1 if is_max else 0
    return [move(srt, lambda t, fill: t[..., pick])]



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
        move(x, lambda t, fill, a=a, b=b: np.take(t, np.arange(a, b), axis=axis))
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
    parts = [move(srt, lambda t, fill, i=i: np.take(t, i, axis=axis)) for i in (0, 1)]
    u = attrs["unsqueeze_axis"] % rank
    parts = [move(p, lambda t, fill: np.expand_dims(t, u)) for p in parts]
    if attrs.get("max_first", 0):
        parts = parts[::-1]
    return [concat_values({"axis": attrs["concat_axis"] % rank}, parts)]


