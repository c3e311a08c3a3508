"""ONNX converters: Add, Sub, Sum, Mul, Div, Neg: affine combinations of symbolic tensors."""

from __future__ import annotations

import numpy as np

from ..onnx_registry import (
    Unsupported,
    as_sym_shape,
    broadcast_shape,
    converter,
    is_sym,
    scale_sym,
)


@converter("Add", "Sub", "Sum")
def _add_sub(ctx, node, attrs, ins):
    sign = -1.0 if node.op_type == "Sub" else 1.0
    acc = ins[0]
    for other in ins[1:]:
        shape = broadcast_shape(acc, other)
        if not is_sym(other):
            other = sign * np.asarray(other, dtype=np.float64)
            acc = (
                acc + other
                if not is_sym(acc)
                else as_sym_shape(acc, shape).shifted(np.broadcast_to(other, shape))
            )
            continue
        other = as_sym_shape(scale_sym(other, sign) if sign < 0 else other, shape)
        acc = (
            other.shifted(np.broadcast_to(acc, shape))
            if not is_sym(acc)
            else as_sym_shape(acc, shape).plus(other)
        )
    return [acc]



@converter("Mul", "Div")
def _mul_div(ctx, node, attrs, ins):
    a, b = ins
    if is_sym(a) and is_sym(b):
        raise Unsupported("product or quotient of two input-dependent tensors is not affine")
    if node.op_type == "Div":
        if not is_sym(a):
            raise Unsupported("division by an input-dependent tensor is not Lipschitz")
        return [scale_sym(a, 1.0 / np.asarray(b, dtype=np.float64), broadcast_shape(a, b))]
    x, c = (a, b) if is_sym(a) else (b, a)
    return [scale_sym(x, c, broadcast_shape(a, b))]


@converter("Neg")
def _neg(ctx, node, attrs, ins):
    return [scale_sym(ins[0], -1.0)]


