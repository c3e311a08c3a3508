"""ONNX converters: MatMul, Gemm, Conv, average/max pooling, BatchNormalization."""

from __future__ import annotations

import math

import numpy as np

from ...ir.activations import MaxPool2d
from ...ir.linear import Conv2d, Dense, Diagonal, compose
from ..onnx_registry import (
    Unsupported,
    converter,
    is_sym,
    move,
    scale_sym,
)
from ..symbolic import Sym


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
    if is_sym(a) and is_sym(b):
        raise Unsupported("product of two input-dependent tensors is not affine")
    if is_sym(a):
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
    if is_sym(b) or not is_sym(a):
        raise Unsupported("Gemm with an input-dependent B matrix")
    if len(a.shape) != 2:
        raise Unsupported(f"Gemm on a rank-{len(a.shape)} tensor")
    if attrs.get("transA", 0):
        a = move(a, lambda t, fill: t.T)
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
    if is_sym(w) or (b is not None and is_sym(b)):
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
    if any(is_sym(v) for v in (scale, b, mean, var)):
        raise Unsupported("BatchNormalization with input-dependent statistics")
    if attrs.get("training_mode", 0):
        raise Unsupported("BatchNormalization in training mode")
    eps = attrs.get("epsilon", 1e-5)
    s = np.asarray(scale, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    shift = np.asarray(b, np.float64) - np.asarray(mean, np.float64) * s
    bshape = (1, -1) + (1,) * (len(x.shape) - 2)
    y = scale_sym(x, s.reshape(bshape))
    return [y.shifted(np.broadcast_to(shift.reshape(bshape), x.shape))]


