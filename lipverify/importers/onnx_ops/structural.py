"""ONNX converters: Constant, Shape, Size, Concat: constant values and shape arithmetic.

Constant and Concat convert constant inputs themselves; Shape and Size of a constant are folded
by the reference runtime like any other op.
"""

from __future__ import annotations

import numpy as np

from ..onnx_registry import Unsupported, concat_values, converter, tensor_array


def _constant_value(attr, where: str = "Constant") -> np.ndarray:
    """The tensor of a Constant node's (single) value attribute (a tensor is checked against
    its declared shape first, and NaN refused: :func:`tensor_array`)."""
    if attr.name == "value":
        return tensor_array(attr.t, where, allow_inf=True)
    elif attr.name in ("value_float", "value_int"):
        arr = np.array(attr.f if attr.name == "value_float" else attr.i)
    elif attr.name in ("value_floats", "value_ints"):
        arr = np.array(list(attr.floats if attr.name == "value_floats" else attr.ints))
    else:
        raise Unsupported(f"Constant with attribute {attr.name}")
    return arr.astype(np.float64) if arr.dtype.kind == "f" else arr


@converter("Constant", takes_constants=True)
def _constant(ctx, node, attrs, ins):
    label = node.name or node.output[0]
    return [_constant_value(node.attribute[0], f"{ctx.source}: Constant node {label!r}")]


@converter("Shape")
def _shape(ctx, node, attrs, ins):
    shape = np.array(ins[0].shape, dtype=np.int64)
    return [shape[attrs.get("start", 0) : attrs.get("end", None)]]


@converter("Size")
def _size(ctx, node, attrs, ins):
    return [np.array(ins[0].size, dtype=np.int64)]


@converter("Concat", takes_constants=True)
def _concat(ctx, node, attrs, ins):
    return [concat_values(attrs, ins)]
