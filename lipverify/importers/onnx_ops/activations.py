"""ONNX converters: Elementwise activations (Relu ... Gelu, Silu), Clip, Softmax."""

from __future__ import annotations

import math
import warnings

import numpy as np

from ...ir.activations import Lipschitz, SlopeRestricted
from ..onnx_registry import (
    Unsupported,
    converter,
    is_sym,
)


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
    if is_sym(lo) or is_sym(hi):
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


