"""Linear operators: the weights of a network, kept in their structured form.

Every operator maps flat vectors ``R^n_in -> R^n_out`` and works on batches of
rows: ``matmat(X)`` takes ``(B, n_in)`` and returns ``(B, n_out)``; ``rmatmat``
applies the adjoint. Convolutions stay convolutions until someone asks for
``to_dense()``. Operators are immutable: their arrays are read-only.

``dense_with_radius()`` returns the dense matrix together with an entrywise
bound on its rounding error (FORMULATIONS.md §8, "assembly radius"), so that a
composed operator such as ``Diagonal @ Dense`` can still be certified exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import ModelLoadError
from ..numerics import gamma

#: Refuse to materialise a dense matrix larger than this many entries (2 GiB of float64).
MAX_DENSE_ENTRIES = 268_435_456



def _frozen(a, ndim: int | None = None, name: str = "array") -> np.ndarray:
    arr = np.array(a, dtype=np.float64, copy=True)
    if ndim is not None and arr.ndim != ndim:
        raise ModelLoadError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


class LinearOp:
    """Abstract linear map ``R^n_in -> R^n_out`` on flat vectors."""

    n_in: int
    n_out: int
    #: True when ``to_dense()`` reproduces the stored weights with no rounding.
    exact_dense: ClassVar[bool] = True

    def matmat(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def rmatmat(self, y: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def abs(self) -> LinearOp:
        """The same operator with every stored coefficient replaced by its absolute value."""
        raise NotImplementedError  # pragma: no cover - abstract

    def leaves(self) -> tuple[LinearOp, ...]:
        return (self,)

    def parameters(self) -> tuple[np.ndarray, ...]:
        return ()

    @property
    def rounding_depth(self) -> int:
        """Upper bound on the number of rounded operations behind one dense entry."""
        return 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_out, self.n_in)

    def __matmul__(self, other: LinearOp) -> LinearOp:
        """``A @ B`` is the composition "apply B, then A"."""
        return compose(other, self)

    def to_dense(self) -> np.ndarray:
        """The ``(n_out, n_in)`` matrix, built from whichever side is smaller."""
        entries = self.n_in * self.n_out
        if entries > MAX_DENSE_ENTRIES:
            raise MemoryError(
                f"a dense {self.n_out}x{self.n_in} matrix needs {entries * 8 / 2**30:.1f} GiB; "
                "use a structured method or a smaller network"
            )
        if self.n_out <= self.n_in:
            return np.ascontiguousarray(self.rmatmat(np.eye(self.n_out)))
        return np.ascontiguousarray(self.matmat(np.eye(self.n_in)).T)

    def dense_with_radius(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Dense matrix ``D`` and radius ``R`` with ``|D - exact| <= R`` entrywise (None: exact)."""
        dense = self.to_dense()
        if self.exact_dense:
            return dense, None
        # §8 assembly radius: gamma_k |op| (k = rounded steps per entry), times 1.01 for
        # the rounding in computing the radius itself.
        radius = gamma(self.rounding_depth + 2) * self.abs().to_dense() * 1.01
        return dense, radius

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.n_out}x{self.n_in})"


@dataclass(frozen=True, eq=False, repr=False)
class Dense(LinearOp):
    """``x -> W x`` with ``W`` of shape ``(n_out, n_in)``."""

    weight: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "weight", _frozen(self.weight, 2, "Dense weight"))

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]

    def matmat(self, x):
        return x @ self.weight.T

    def rmatmat(self, y):
        return y @ self.weight

    def abs(self):
        return Dense(np.abs(self.weight))

    def to_dense(self):
        return np.array(self.weight)

    def parameters(self):
        return (self.weight,)


@dataclass(frozen=True, eq=False, repr=False)
class Diagonal(LinearOp):
    """Elementwise scaling ``x -> d * x`` (normalisation, BatchNorm, scalar Mul)."""

    scale: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "scale", _frozen(self.scale, 1, "Diagonal scale"))

    @property
    def n_in(self) -> int:
        return self.scale.shape[0]

    n_out = n_in

    def matmat(self, x):
        return x * self.scale

    rmatmat = matmat

    def abs(self):
        return Diagonal(np.abs(self.scale))

    def to_dense(self):
        return np.diag(self.scale)

    def parameters(self):
        return (self.scale,)


@dataclass(frozen=True, eq=False, repr=False)
class IndexMap(LinearOp):
    """Data movement: ``out[j] = x[index[j]]``, or 0 where ``index[j] == -1``.

    Transpose, Gather, Slice, zero Pad, Concat of one source... are all an
    IndexMap, built by applying the same tensor operation to ``arange(n_in)``.
    """

    index: np.ndarray
    in_dim: int

    def __post_init__(self):
        idx = np.array(self.index, dtype=np.int64).ravel()
        if idx.size and (idx.max() >= self.in_dim or idx.min() < -1):
            raise ModelLoadError("IndexMap index out of range")
        idx.setflags(write=False)
        object.__setattr__(self, "index", idx)

    @property
    def n_in(self) -> int:
        return self.in_dim

    @property
    def n_out(self) -> int:
        return self.index.shape[0]

    def matmat(self, x):
        out = x[:, np.maximum(self.index, 0)]
        if (self.index < 0).any():
            out[:, self.index < 0] = 0.0
        return out

    def rmatmat(self, y):
        out = np.zeros((y.shape[0], self.in_dim), dtype=np.result_type(y, np.float64))
        valid = self.index >= 0
        np.add.at(out.T, self.index[valid], y[:, valid].T)
        return out

    def abs(self):
        return self

    @property
    def is_identity(self) -> bool:
        return self.in_dim == self.index.shape[0] and bool(
            np.array_equal(self.index, np.arange(self.in_dim))
        )


@dataclass(frozen=True, eq=False, repr=False)
class Conv2d(LinearOp):
    """2-D cross-correlation as in ONNX/PyTorch, without bias.

    ``kernel`` is ``(c_out, c_in / groups, kh, kw)``; ``pads`` is
    ``(top, left, bottom, right)``; ``in_shape`` is ``(c_in, H, W)``.
    Materialise with :meth:`to_dense` when a formulation needs the matrix (§7).
    """

    kernel: np.ndarray
    in_shape: tuple[int, int, int]
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    #: False when the kernel values are themselves rounded (e.g. 1/9 of an AveragePool).
    exact_kernel: bool = True

    def __post_init__(self):
        object.__setattr__(self, "kernel", _frozen(self.kernel, 4, "Conv kernel"))
        object.__setattr__(self, "in_shape", tuple(int(s) for s in self.in_shape))
        object.__setattr__(self, "stride", tuple(int(s) for s in self.stride))
        object.__setattr__(self, "pads", tuple(int(s) for s in self.pads))
        object.__setattr__(self, "dilation", tuple(int(s) for s in self.dilation))
        cout, cin_g, _, _ = self.kernel.shape
        c, _, _ = self.in_shape
        if c != cin_g * self.groups or cout % self.groups:
            raise ModelLoadError(
                f"Conv kernel {self.kernel.shape} does not fit input {self.in_shape} "
                f"with groups={self.groups}"
            )
        ho, wo = self.out_shape[1:]
        if ho <= 0 or wo <= 0:
            raise ModelLoadError(f"Conv output would be empty for input {self.in_shape}")

    @property
    def exact_dense(self) -> bool:  # type: ignore[override]
        return self.exact_kernel

    @property
    def out_shape(self) -> tuple[int, int, int]:
        _, h, w = self.in_shape
        kh, kw = self.kernel.shape[2:]
        t, left, b, r = self.pads
        dh, dw = self.dilation
        ho = (h + t + b - dh * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + left + r - dw * (kw - 1) - 1) // self.stride[1] + 1
        return (self.kernel.shape[0], ho, wo)

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)

    def _windows(self):
        kh, kw = self.kernel.shape[2:]
        _, ho, wo = self.out_shape
        sh, sw = self.stride
        dh, dw = self.dilation
        for p in range(kh):
            for q in range(kw):
                rows = slice(p * dh, p * dh + sh * (ho - 1) + 1, sh)
                cols = slice(q * dw, q * dw + sw * (wo - 1) + 1, sw)
                yield p, q, rows, cols

    def _grouped_kernel(self):
        cout, cin_g, kh, kw = self.kernel.shape
        return self.kernel.reshape(self.groups, cout // self.groups, cin_g, kh, kw)

    def matmat(self, x):
        bsz = x.shape[0]
        c, h, w = self.in_shape
        t, left, b, r = self.pads
        g = self.groups
        xp = np.zeros((bsz, c, h + t + b, w + left + r), dtype=np.result_type(x, np.float64))
        xp[:, :, t : t + h, left : left + w] = x.reshape(bsz, c, h, w)
        xp = xp.reshape(bsz, g, c // g, *xp.shape[2:])
        kern = self._grouped_kernel()
        cout, ho, wo = self.out_shape
        out = np.zeros((bsz, g, cout // g, ho, wo), dtype=xp.dtype)
        for p, q, rows, cols in self._windows():
            out += np.einsum("bgchw,goc->bgohw", xp[:, :, :, rows, cols], kern[:, :, :, p, q])
        return out.reshape(bsz, -1)

    def rmatmat(self, y):
        bsz = y.shape[0]
        c, h, w = self.in_shape
        t, left, b, r = self.pads
        g = self.groups
        cout, ho, wo = self.out_shape
        yg = y.reshape(bsz, g, cout // g, ho, wo)
        kern = self._grouped_kernel()
        xp = np.zeros(
            (bsz, g, c // g, h + t + b, w + left + r), dtype=np.result_type(y, np.float64)
        )
        for p, q, rows, cols in self._windows():
            xp[:, :, :, rows, cols] += np.einsum("bgohw,goc->bgchw", yg, kern[:, :, :, p, q])
        xp = xp.reshape(bsz, c, h + t + b, w + left + r)
        return np.ascontiguousarray(xp[:, :, t : t + h, left : left + w]).reshape(bsz, -1)

    def abs(self):
        return Conv2d(
            np.abs(self.kernel), self.in_shape, self.stride, self.pads, self.dilation, self.groups
        )

    def parameters(self):
        return (self.kernel,)

    @property
    def rounding_depth(self) -> int:
        return 1

    def __repr__(self) -> str:
        cout, _, kh, kw = self.kernel.shape
        return (
            f"Conv2d({self.in_shape[0]}->{cout}, {kh}x{kw}, stride={self.stride}, "
            f"pads={self.pads}, in={self.in_shape})"
        )


@dataclass(frozen=True, eq=False, repr=False)
class Compose(LinearOp):
    """Apply ``ops[0]`` first, then ``ops[1]``, ... Build it with :func:`compose`."""

    ops: tuple[LinearOp, ...]

    @property
    def n_in(self) -> int:
        return self.ops[0].n_in

    @property
    def n_out(self) -> int:
        return self.ops[-1].n_out

    @property
    def exact_dense(self) -> bool:  # type: ignore[override]
        # A product is exact only when at most one factor is not pure data movement.
        movers = sum(not isinstance(op, IndexMap) for op in self.ops)
        return movers <= 1 and all(op.exact_dense for op in self.ops)

    def matmat(self, x):
        for op in self.ops:
            x = op.matmat(x)
        return x

    def rmatmat(self, y):
        for op in reversed(self.ops):
            y = op.rmatmat(y)
        return y

    def abs(self):
        return Compose(tuple(op.abs() for op in self.ops))

    def leaves(self):
        return tuple(leaf for op in self.ops for leaf in op.leaves())

    @property
    def rounding_depth(self) -> int:
        inner = sum(op.n_in for op in self.ops[1:])
        return inner + sum(op.rounding_depth for op in self.ops) + len(self.ops)

    def __repr__(self) -> str:
        return " -> ".join(repr(op) for op in self.ops)


@dataclass(frozen=True, eq=False, repr=False)
class Sum(LinearOp):
    """``x -> sum_i ops[i](x)``; all operands share input and output sizes."""

    ops: tuple[LinearOp, ...]

    def __post_init__(self):
        if len({(op.n_in, op.n_out) for op in self.ops}) != 1:
            raise ModelLoadError("Sum of linear maps with different shapes")

    @property
    def n_in(self) -> int:
        return self.ops[0].n_in

    @property
    def n_out(self) -> int:
        return self.ops[0].n_out

    exact_dense = False

    def matmat(self, x):
        return sum(op.matmat(x) for op in self.ops)

    def rmatmat(self, y):
        return sum(op.rmatmat(y) for op in self.ops)

    def abs(self):
        return Sum(tuple(op.abs() for op in self.ops))

    def leaves(self):
        return tuple(leaf for op in self.ops for leaf in op.leaves())

    @property
    def rounding_depth(self) -> int:
        return max(op.rounding_depth for op in self.ops) + len(self.ops)

    def __repr__(self) -> str:
        return "(" + " + ".join(repr(op) for op in self.ops) + ")"


@dataclass(frozen=True, eq=False, repr=False)
class Stack(LinearOp):
    """Vertical concatenation: ``x -> [ops[0](x); ops[1](x); ...]``."""

    ops: tuple[LinearOp, ...]

    def __post_init__(self):
        if len({op.n_in for op in self.ops}) != 1:
            raise ModelLoadError("Stack of linear maps with different input sizes")

    @property
    def n_in(self) -> int:
        return self.ops[0].n_in

    @property
    def n_out(self) -> int:
        return sum(op.n_out for op in self.ops)

    @property
    def exact_dense(self) -> bool:  # type: ignore[override]
        return all(op.exact_dense for op in self.ops)

    def matmat(self, x):
        return np.concatenate([op.matmat(x) for op in self.ops], axis=1)

    def rmatmat(self, y):
        splits = np.cumsum([op.n_out for op in self.ops])[:-1]
        return sum(op.rmatmat(part) for op, part in zip(self.ops, np.split(y, splits, axis=1)))

    def abs(self):
        return Stack(tuple(op.abs() for op in self.ops))

    def leaves(self):
        return tuple(leaf for op in self.ops for leaf in op.leaves())

    @property
    def rounding_depth(self) -> int:
        return max(op.rounding_depth for op in self.ops)


def identity(n: int) -> IndexMap:
    return IndexMap(np.arange(n), n)


def compose(*ops: LinearOp) -> LinearOp:
    """Composition applying ``ops[0]`` first; identities vanish, nested Composes flatten."""
    flat: list[LinearOp] = []
    for op in ops:
        for inner in op.ops if isinstance(op, Compose) else (op,):
            if isinstance(inner, IndexMap) and inner.is_identity:
                continue
            if flat and isinstance(inner, IndexMap) and isinstance(flat[-1], IndexMap):
                prev = flat.pop()  # fuse consecutive data movements exactly
                idx = np.where(inner.index >= 0, prev.index[np.maximum(inner.index, 0)], -1)
                inner = IndexMap(idx, prev.in_dim)
            flat.append(inner)
    for a, b in zip(flat, flat[1:]):
        if a.n_out != b.n_in:
            raise ModelLoadError(f"cannot compose {a!r} with {b!r}: {a.n_out} != {b.n_in}")
    if not flat:
        return identity(ops[0].n_in)
    return flat[0] if len(flat) == 1 else Compose(tuple(flat))


def add(a: LinearOp, b: LinearOp) -> LinearOp:
    """``a + b`` as one operator (flattening nested sums)."""
    parts = [*(a.ops if isinstance(a, Sum) else (a,)), *(b.ops if isinstance(b, Sum) else (b,))]
    return Sum(tuple(parts))


def power_iteration(op: LinearOp, iters: int = 200, seed: int = 0, tol: float = 1e-10) -> float:
    """Estimate ``||op||_2`` with ``matmat``/``rmatmat`` only (a lower estimate, §6.2)."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(1, op.n_in))
    v /= np.linalg.norm(v)
    sigma = 0.0
    for _ in range(iters):
        u = op.matmat(v)
        nu = np.linalg.norm(u)
        if nu == 0:
            return 0.0
        v = op.rmatmat(u / nu)
        new = float(np.linalg.norm(v))
        v /= new
        if abs(new - sigma) <= tol * new:
            return new
        sigma = new
    return sigma
