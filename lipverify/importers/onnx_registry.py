"""The ONNX converter registry and the helpers every op family shares.

A converter is ``fn(ctx, node, attrs, ins) -> outputs``, registered for one or more op types
(and the first opset it applies to) by :func:`converter`; ops of our own fused spellings are
registered as ``lipverify.Op`` (:mod:`.onnx_patterns`). A second, different converter for the
same op and opset is refused. A node whose inputs are all constant is folded by the ONNX reference
runtime, unless its converter was registered with ``takes_constants=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelLoadError, check_unique
from ..ir.linear import Diagonal
from .onnx_movement import MOVEMENT
from .symbolic import Builder, Sym

FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


class Unsupported(Exception):
    """Raised by a converter: the node is reported with this reason."""


class InvalidModel(ModelLoadError):
    """The file itself is wrong (a truncated tensor, a NaN parameter): the import stops with
    this one-line message instead of listing the node as unsupported."""


class Poison:
    """Marks values downstream of an unsupported node (reported once, at the cause)."""


POISON = Poison()
Value = Sym | np.ndarray | Poison | None


@dataclass
class Ctx:
    builder: Builder
    opset: int
    keep_softmax: bool
    graph_output: str
    consumers: dict[str, int]
    notes: list[str] = field(default_factory=list)
    sorted_cache: dict = field(default_factory=dict)
    #: the file (or model name) messages start with
    source: str = "model"


Converter = Callable[[Ctx, object, dict, list], list]
#: op type -> list of (since opset, converter); the newest one not above the model's opset wins.
CONVERTERS: dict[str, list[tuple[int, Converter]]] = {}


def converter(*ops: str, since: int = 1, takes_constants: bool = False):
    """Register ``fn`` for ``ops``; ``takes_constants``: it also folds all-constant inputs."""

    def deco(fn: Converter) -> Converter:
        if takes_constants:
            fn._takes_constants = True  # type: ignore[attr-defined]
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


def takes_constants(fn: Converter | None) -> bool:
    """Whether ``fn`` converts all-constant inputs itself (else the node is folded)."""
    return getattr(fn, "_takes_constants", False)


def supported_ops() -> list[str]:
    """Every ONNX op type the importer handles (for ``lipverify ops``): the registries' keys."""
    return sorted({*CONVERTERS, *MOVEMENT})


# ----------------------------------------------------------------- tensors
#: Largest tensor (elements) an ONNX file may declare; a larger one is refused before any
#: allocation (a few bytes of protobuf can declare petabytes).
MAX_TENSOR_ELEMENTS = 2**31
#: Packed element types: bits per element (raw data and int32_data hold the packed bytes,
#: except the 6-bit types, whose int32_data holds one element per entry).
_PACKED_BITS = {21: 4, 22: 4, 23: 4, 25: 2, 26: 2, 27: 6, 28: 6}


def _declared_size(tensor, where: str) -> int:
    """Elements ``tensor`` declares, after checking its dims against the cap."""
    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims):
        raise InvalidModel(f"{where}: negative dimension in its shape {dims}")
    n = math.prod(dims)
    if n > MAX_TENSOR_ELEMENTS:
        raise InvalidModel(f"{where}: declares {n:,} elements (shape {dims}), above the "
                           f"{MAX_TENSOR_ELEMENTS:,} this importer accepts")
    return n


def check_tensor(tensor, where: str) -> None:
    """Refuse a TensorProto whose stored data does not hold exactly what its dims and data type
    declare (short, missing, surplus or external data, an unknown type), before
    ``numpy_helper.to_array`` allocates anything. ``where`` names the tensor in messages."""
    from onnx import TensorProto, helper

    n = _declared_size(tensor, where)
    if tensor.HasField("segment"):
        raise InvalidModel(f"{where}: segmented tensors are not supported")
    if tensor.data_location == TensorProto.EXTERNAL:
        raise InvalidModel(f"{where}: its data is stored outside the model and was not loaded "
                           "(keep the external data file beside the .onnx file)")
    try:
        np_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        storage = helper.tensor_dtype_to_field(tensor.data_type)
    except (KeyError, TypeError, ValueError):
        raise InvalidModel(f"{where}: unknown or undefined data type {tensor.data_type}") \
            from None
    bits = _PACKED_BITS.get(tensor.data_type)
    if tensor.data_type == TensorProto.STRING:
        have, want, unit = len(tensor.string_data), n, "strings"
    elif tensor.HasField("raw_data"):
        want = -(-n * bits // 8) if bits else n * np_dtype.itemsize
        have, unit = len(tensor.raw_data), "bytes of raw data"
    else:
        per = 2 if np_dtype.kind == "c" else 1
        want = -(-n * bits // 8) if bits in (2, 4) else n * per
        have, unit = len(getattr(tensor, storage)), f"{storage} entries"
    if have != want:
        shape = "x".join(map(str, tensor.dims)) or "scalar"
        what = "no data" if have == 0 else f"{have} {unit}"
        raise InvalidModel(f"{where}: holds {what} but its shape {shape} and type "
                           f"{TensorProto.DataType.Name(tensor.data_type)} need {want} {unit} "
                           "(truncated or corrupt file)")


def tensor_array(tensor, where: str, allow_inf: bool = False) -> np.ndarray:
    """A TensorProto as an array (float64 for floating types), checked first
    (:func:`check_tensor`); NaN, and unless ``allow_inf`` +-inf, are refused naming it."""
    from onnx import numpy_helper

    check_tensor(tensor, where)
    try:
        arr = numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as exc:
        raise InvalidModel(f"{where}: unreadable tensor data ({exc})") from None
    if arr.dtype.kind == "c":
        raise InvalidModel(f"{where}: complex numbers are not supported")
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float64)
        nan, inf = int(np.isnan(arr).sum()), 0 if allow_inf else int(np.isinf(arr).sum())
        if nan or inf:
            raise InvalidModel(f"{where}: holds NaN/Inf values ({nan} NaN, {inf} infinite); "
                               "fix or re-export the model")
    return arr


# ----------------------------------------------------------------- helpers
def node_attrs(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def is_sym(v) -> bool:
    return isinstance(v, Sym)


def as_sym_shape(x: Sym, shape: tuple[int, ...]) -> Sym:
    """Broadcast a symbolic tensor to ``shape`` (a data movement)."""
    if tuple(x.shape) == tuple(shape):
        return x
    idx = np.broadcast_to(np.arange(1, x.size + 1).reshape(x.shape), shape)
    return x.movement(idx.astype(np.int64) - 1, np.broadcast_to(x.bias_tensor(), shape))


def index_tensor(x: Sym) -> np.ndarray:
    return np.arange(1, x.size + 1, dtype=np.float64).reshape(x.shape)


def move(x: Sym, fn: Callable[[np.ndarray, float], np.ndarray]) -> Sym:
    """Apply a data movement ``fn(tensor, fill)`` to a symbolic tensor."""
    idx = fn(index_tensor(x), 0.0)
    bias = fn(x.bias_tensor(), None)
    return x.movement(np.rint(idx).astype(np.int64) - 1, bias)



def shape_of(v):
    return v.shape


def broadcast_shape(a, b) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(tuple(shape_of(a)), tuple(shape_of(b))))


def scale_sym(x: Sym, factor, shape=None) -> Sym:
    shape = shape or x.shape
    x = as_sym_shape(x, shape)
    d = np.broadcast_to(np.asarray(factor, dtype=np.float64), shape).ravel()
    return x.linear(Diagonal(d), shape)



def unsqueeze_sym(x: Sym) -> Sym:
    return x.reshape(tuple(x.shape) + (1,))


def concat_values(attrs, ins) -> Value:
    """Concat of constants and symbolic tensors (a data movement of the symbolic ones)."""
    axis = attrs["axis"]
    if not any(is_sym(v) for v in ins):
        return np.concatenate(ins, axis=axis)
    tensors = [v.bias_tensor() if is_sym(v) else np.asarray(v, np.float64) for v in ins]
    bias = np.concatenate(tensors, axis=axis)
    out: Sym | None = None
    for i, v in enumerate(ins):
        if not is_sym(v):
            continue
        parts = [
            index_tensor(v) if j == i else np.zeros(np.shape(t)) for j, t in enumerate(tensors)
        ]
        idx = np.rint(np.concatenate(parts, axis=axis)).astype(np.int64) - 1
        piece = v.movement(idx, np.zeros(bias.shape))
        out = piece if out is None else out.plus(piece)
    return out.shifted(bias)
