"""Data-movement ONNX ops in numpy, for constants and for index tensors alike.

Each function takes the data tensor and the node's resolved arguments and
returns the moved tensor. Applied to ``arange(1, n+1)`` they give the index map
of a symbolic tensor (0 marks a constant entry such as zero padding), so one
implementation serves constant folding and symbolic tracing, in every opset
(attribute and input forms are both read through ``arg``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import check_unique

INT_MAX = 2**62

#: op type -> fn(x, arg, fill) -> tensor; ``arg(pos, attr, default)`` reads an input or attribute;
#: ``fill`` is the constant for padded entries (0 for index tensors).
MOVEMENT: dict[str, Callable] = {}


def movement(*ops: str):
    """Register ``fn`` as the data movement of ``ops`` (a duplicate op name is refused)."""

    def deco(fn):
        for op in ops:
            check_unique("ONNX data-movement ops", op, MOVEMENT.get(op), fn)
            MOVEMENT[op] = fn
        return fn

    return deco


def _axis(a: int, rank: int) -> int:
    return int(a) + rank if a < 0 else int(a)


@movement("Identity", "Dropout", "Cast", "CastLike")
def _identity(x, arg, fill):
    return x


@movement("Reshape")
def _reshape(x, arg, fill):
    shape = [int(s) for s in np.ravel(arg(1, "shape", None))]
    if not arg(None, "allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@movement("Flatten")
def _flatten(x, arg, fill):
    axis = _axis(arg(None, "axis", 1), x.ndim)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@movement("Squeeze")
def _squeeze(x, arg, fill):
    axes = arg(1, "axes", None)
    if axes is None:
        return x.reshape([s for s in x.shape if s != 1])
    return np.squeeze(x, tuple(_axis(a, x.ndim) for a in np.ravel(axes)))


@movement("Unsqueeze")
def _unsqueeze(x, arg, fill):
    axes = np.ravel(arg(1, "axes", None))
    rank = x.ndim + len(axes)
    for a in sorted(_axis(int(a), rank) for a in axes):
        x = np.expand_dims(x, a)
    return x


@movement("Transpose")
def _transpose(x, arg, fill):
    perm = arg(None, "perm", None)
    return np.transpose(x, None if perm is None else [int(p) for p in perm])


@movement("Gather")
def _gather(x, arg, fill):
    axis = _axis(arg(None, "axis", 0), x.ndim)
    idx = np.asarray(arg(1, None, None)).astype(np.int64)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return np.take(x, idx, axis=axis)


@movement("Slice")
def _slice(x, arg, fill):
    starts = np.ravel(arg(1, "starts", None)).astype(np.int64)
    ends = np.ravel(arg(2, "ends", None)).astype(np.int64)
    axes = arg(3, "axes", None)
    axes = range(len(starts)) if axes is None else np.ravel(axes).astype(np.int64)
    steps = arg(4, None, None)
    steps = np.ones(len(starts), np.int64) if steps is None else np.ravel(steps).astype(np.int64)
    index: list = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(int(a), x.ndim)
        dim = x.shape[a]
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
            index[a] = slice(int(s), int(e), int(st))
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
            index[a] = slice(int(s), None if e < 0 else int(e), int(st))
    return x[tuple(index)]


@movement("Pad")
def _pad(x, arg, fill):
    pads = np.ravel(arg(1, "pads", None)).astype(np.int64)
    mode = arg(None, "mode", "constant")
    axes = arg(3, None, None)
    axes = list(range(x.ndim)) if axes is None else [_axis(int(a), x.ndim) for a in np.ravel(axes)]
    width = [(0, 0)] * x.ndim
    for i, a in enumerate(axes):
        width[a] = (int(pads[i]), int(pads[i + len(axes)]))
    if (np.array(width) < 0).any():
        raise ValueError("negative pads are not supported")
    if mode == "constant":
        return np.pad(x, width, mode="constant", constant_values=fill)
    return np.pad(x, width, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])


@movement("Expand")
def _expand(x, arg, fill):
    shape = [int(s) for s in np.ravel(arg(1, None, None))]
    return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(shape))).copy()


@movement("Tile")
def _tile(x, arg, fill):
    return np.tile(x, [int(r) for r in np.ravel(arg(1, None, None))])


@movement("DepthToSpace")
def _depth_to_space(x, arg, fill):
    b = int(arg(None, "blocksize", None))
    n, c, h, w = x.shape
    if arg(None, "mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // b**2, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // b**2, b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // b**2, h * b, w * b)


@movement("SpaceToDepth")
def _space_to_depth(x, arg, fill):
    b = int(arg(None, "blocksize", None))
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)
