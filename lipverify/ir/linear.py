"""Linear operators: the weights of a network, kept in their structured form.

Every operator maps flat vectors ``R^n_in -> R^n_out`` and works on batches of
rows: ``matmat(X)`` takes ``(B, n_in)`` and returns ``(B, n_out)``; ``rmatmat``
applies the adjoint. Convolutions stay convolutions until someone asks for
``to_dense()``. Operators are immutable: their arrays are read-only.

``dense_with_radius()`` returns the dense matrix together with an entrywise
bound on its rounding error (FORMULATIONS.md §8, "assembly radius"), so that a
composed operator such as ``Diagonal @ Dense`` can still be certified exactly.

Certified bounds without the dense matrix (FORMULATIONS.md §6.1-6.3, §7, §8):
``l2_bound`` bounds ``||op||_2`` of the exact map and densifies only what is small (or no
larger than the stored weights); ``abs_matmat_bound`` / ``abs_rmatmat_bound`` bound
``|W| x`` and ``|W|^T y`` entrywise (row and column sums for Gershgorin and l-infinity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..certify.rump import ETA, certified_spectral_norm
from ..errors import ModelLoadError
from ..numerics import gamma, round_up

#: Refuse to materialise a dense matrix larger than this many entries (2 GiB of float64).
MAX_DENSE_ENTRIES = 268_435_456

#: Smallest positive normal float64: a product at or above it is rounded with relative error u.
_TINY = float(np.finfo(np.float64).tiny)


def _frozen(a, ndim: int | None = None, name: str = "array") -> np.ndarray:
    arr = np.array(a, dtype=np.float64, copy=True)
    if ndim is not None and arr.ndim != ndim:
        raise ModelLoadError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


def _count(counts: dict | None, key: str) -> None:
    if counts is not None:
        counts[key] = counts.get(key, 0) + 1


def _upper(x: np.ndarray, terms: int, rel: float = 0.0) -> np.ndarray:
    """Entrywise certified upper bound on the exact nonnegative values computed as ``x`` (§8).

    Each entry of ``x`` is the float evaluation, in any order (BLAS, einsum, ``np.add.at``), of
    a sum of at most ``terms`` products of nonnegative floats whose exact values may exceed the
    stored ones by the relative amount ``rel`` (``rel <= 1e-3``). *Derivation:* for
    nonnegative data ``x >= (1 - gamma_t) s - t eta`` (Higham's dot-product bound, plus at most
    ``eta/2`` lost per underflowing product), where ``s`` is the exact sum on the stored data,
    and the exact value is at most ``(1 + rel) s``. Hence it is at most
    ``(1 + rel)(x + t eta) / (1 - gamma_t) <= x (1 + 1.01 (rel + gamma_t)) + 2 t eta``; the factor
    ``1 + 4 gamma_{t+2} + 2 rel`` still exceeds ``1 + 1.01 (rel + gamma_t)`` after the two
    roundings of ``x * factor``, and the final ``nextafter`` covers the last addition.
    """
    factor = 1.0 + 4.0 * gamma(terms + 2) + 2.0 * rel
    return np.nextafter(x * factor + 2.0 * terms * ETA, np.inf)


def _dense_l2(op: LinearOp, rel: float = 0.0) -> float:
    """§6.2: certified ``||op||_2`` from its dense matrix and assembly radius (§8), the stored
    coefficients being uncertain by ``rel`` relative on top of that (a folded scale)."""
    dense, radius = op.dense_with_radius()
    if rel:
        extra = (rel * 1.01) * np.abs(dense)
        radius = extra if radius is None else radius + extra
    return certified_spectral_norm(dense, radius)[0]


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

    # ------------------------------------------------ certified bounds, no dense matrix
    def stored_entries(self) -> int:
        """Number of stored coefficients (the memory the operator already occupies)."""
        return sum(int(p.size) for leaf in self.leaves() for p in leaf.parameters())

    def dense_ok(self, limit: int) -> bool:
        """Whether :meth:`l2_bound` may certify the dense matrix: it has at most
        ``max(limit, stored_entries())`` entries, so it costs about what the weights cost."""
        return self.n_in * self.n_out <= max(limit, self.stored_entries())

    def l2_bound(self, dense_limit: int = 0, counts: dict | None = None) -> float:
        """Certified upper bound on ``||op||_2`` of the exact map (FORMULATIONS.md §6.1-6.2, §7).

        The dense certificate (SVD estimate + Rump check, §6.2) when :meth:`dense_ok`, else the
        operator's structured bound, which never builds a matrix larger than a stored weight.
        ``counts`` (optional) tallies the kinds of certificate used: ``dense``, ``fft``
        (§7 per-frequency conv bound) and ``exact`` (closed forms).
        """
        if self.dense_ok(dense_limit):
            _count(counts, "dense")
            return _dense_l2(self)
        return self._structured_l2(dense_limit, counts)

    def _structured_l2(self, dense_limit: int, counts: dict | None) -> float:
        # no known structure: the dense certificate (bounded by MAX_DENSE_ENTRIES)
        _count(counts, "dense")
        return _dense_l2(self)

    def abs_matmat_bound(self, x: np.ndarray) -> np.ndarray:
        """Certified entrywise upper bound on ``|W| x`` for nonnegative ``x`` of shape
        ``(B, n_in)``, ``W`` the exact map (§6.3: with ``x = 1`` the row sums of ``|W|``).

        For a product or sum the bound is that of ``|A||B|`` or ``|A| + |B|``, which dominate
        ``|AB|`` and ``|A + B|`` entrywise. This fallback uses the dense matrix.
        """
        dense, radius = self.dense_with_radius()
        a = np.abs(dense) if radius is None else np.abs(dense) + radius
        return _upper(x @ a.T, self.n_in + 1)

    def abs_rmatmat_bound(self, y: np.ndarray) -> np.ndarray:
        """Certified entrywise upper bound on ``|W|^T y`` for nonnegative ``y`` (B, n_out)."""
        dense, radius = self.dense_with_radius()
        a = np.abs(dense) if radius is None else np.abs(dense) + radius
        return _upper(y @ a, self.n_out + 1)

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

    def abs_matmat_bound(self, x):
        return _upper(x @ np.abs(self.weight).T, self.n_in)

    def abs_rmatmat_bound(self, y):
        return _upper(y @ np.abs(self.weight), self.n_out)


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

    def dense_ok(self, limit):
        return False  # the closed form below is exact and costs O(n)

    def _structured_l2(self, dense_limit, counts):
        """``||diag(d)||_2 = max |d|``: exact, no rounding (§6.1)."""
        _count(counts, "exact")
        return float(np.max(np.abs(self.scale))) if self.scale.size else 0.0

    def abs_matmat_bound(self, x):
        return _upper(x * np.abs(self.scale), 1)

    abs_rmatmat_bound = abs_matmat_bound


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

    def multiplicity(self) -> int:
        """The largest number of outputs that read one input (0 when every output is 0)."""
        valid = self.index[self.index >= 0]
        return int(np.bincount(valid, minlength=1).max()) if valid.size else 0

    def dense_ok(self, limit):
        return False  # the closed form below is exact and costs O(n)

    def _structured_l2(self, dense_limit, counts):
        """``||S||_2 = sqrt(max multiplicity)`` for a selection/duplication ``S`` (§6.1).

        *Derivation:* each row of ``S`` holds at most one 1, so ``S^T S`` is diagonal with the
        number of outputs reading input ``i`` at position ``i``; ``||S||^2 = ||S^T S||``. The
        square root is correctly rounded, hence exact for a perfect square and rounded up
        otherwise.
        """
        _count(counts, "exact")
        m = self.multiplicity()
        root = math.sqrt(m)
        return root if math.isqrt(m) ** 2 == m else round_up(root)

    def abs_matmat_bound(self, x):
        return self.matmat(x)  # a selection of nonnegative entries: exact

    def abs_rmatmat_bound(self, y):
        m = self.multiplicity()
        out = self.rmatmat(y)  # sums of at most m entries
        return out if m <= 1 else _upper(out, m)

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

    @property
    def kernel_rel_error(self) -> float:
        """``r`` with ``|K_exact - kernel| <= r |kernel|`` entrywise: 0 for an exact kernel,
        else the assembly radius of :meth:`dense_with_radius` (§8)."""
        return 0.0 if self.exact_kernel else gamma(self.rounding_depth + 2) * 1.01

    def dense_ok(self, limit):
        return self.n_in * self.n_out <= limit

    def _structured_l2(self, dense_limit, counts):
        return _conv_l2(self, 0.0, dense_limit, counts)

    def _abs_op(self) -> Conv2d:
        return Conv2d(
            np.abs(self.kernel), self.in_shape, self.stride, self.pads, self.dilation, self.groups
        )

    def abs_matmat_bound(self, x):
        """§6.3 row sums of a conv without its matrix: ``|K|`` convolved with ``x`` (so with
        ``x = 1`` the exact row sums, borders and stride included); each output is a sum of at
        most ``c_in/g * kh * kw`` products."""
        _, cin_g, kh, kw = self.kernel.shape
        return _upper(self._abs_op().matmat(x), cin_g * kh * kw + 1, self.kernel_rel_error)

    def abs_rmatmat_bound(self, y):
        """Column sums: the transposed conv of ``|K|``; each input receives at most
        ``c_out/g * kh * kw`` products."""
        cout, _, kh, kw = self.kernel.shape
        terms = cout // self.groups * kh * kw + 1
        return _upper(self._abs_op().rmatmat(y), terms, self.kernel_rel_error)

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

    def _structured_l2(self, dense_limit, counts):
        """Submultiplicativity ``||A_k ... A_1|| <= prod ||A_i||`` (§6.1), after folding every
        :class:`Diagonal` into a neighbouring :class:`Conv2d` or :class:`Dense` (see
        :func:`_fold_diagonal`: exact for per-channel scales such as BatchNorm), so a scaled
        conv is bounded as one conv, not as ``max |d|`` times the conv."""
        total = 1.0
        for op, rel in _fold_scales(self.ops):
            if rel == 0.0:
                b = op.l2_bound(dense_limit, counts)
            elif isinstance(op, Conv2d):
                b = _conv_l2(op, rel, dense_limit, counts)
            else:  # a Dense with a folded scale: its stored matrix, radius rel |W|
                _count(counts, "dense")
                b = _dense_l2(op, rel)
            if b == 0.0:
                return 0.0  # one factor is the zero map, so is the product
            total = round_up(total * b)
        return total

    def abs_matmat_bound(self, x):
        for op in self.ops:
            x = op.abs_matmat_bound(x)
        return x

    def abs_rmatmat_bound(self, y):
        for op in reversed(self.ops):
            y = op.abs_rmatmat_bound(y)
        return y

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

    def _structured_l2(self, dense_limit, counts):
        """Triangle inequality ``||sum A_i|| <= sum ||A_i||`` (§5, §6.1), rounded upward."""
        return round_up(math.fsum(op.l2_bound(dense_limit, counts) for op in self.ops))

    def abs_matmat_bound(self, x):
        return _upper(sum(op.abs_matmat_bound(x) for op in self.ops), len(self.ops))

    def abs_rmatmat_bound(self, y):
        return _upper(sum(op.abs_rmatmat_bound(y) for op in self.ops), len(self.ops))

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

    def _structured_l2(self, dense_limit, counts):
        """``||[A_1; ...; A_k]||^2 <= sum ||A_i||^2``, since ``||Sx||^2 = sum ||A_i x||^2``;
        every square and the sum are rounded upward, then the (correctly rounded) root."""
        squares = [round_up(b * b) for b in (op.l2_bound(dense_limit, counts) for op in self.ops)]
        return round_up(math.sqrt(round_up(math.fsum(squares))))

    def abs_matmat_bound(self, x):
        return np.concatenate([op.abs_matmat_bound(x) for op in self.ops], axis=1)

    def abs_rmatmat_bound(self, y):
        splits = np.cumsum([op.n_out for op in self.ops])[:-1]
        parts = np.split(y, splits, axis=1)
        total = sum(op.abs_rmatmat_bound(part) for op, part in zip(self.ops, parts))
        return _upper(total, len(self.ops))


def _conv_l2(op: Conv2d, rel: float, dense_limit: int, counts: dict | None) -> float:
    """Certified ``||op||_2`` whose kernel may exceed its stored values by ``rel`` relative:
    dense (§6.2) when small, else the per-frequency circulant bound of §7."""
    if op.n_in * op.n_out <= dense_limit:
        _count(counts, "dense")
        return _dense_l2(op, rel)
    from ..certify.conv_norm import certified_conv_norm  # imports this module

    _count(counts, "fft")
    return certified_conv_norm(op, extra_rel=rel)


def _fold_diagonal(
    op: LinearOp, rel: float, diag: Diagonal, after: bool
) -> tuple[LinearOp, float] | None:
    """Fold ``diag`` (applied after ``op`` when ``after``, else before) into ``op``'s weights.

    Returns ``(folded, rel')`` where ``folded``'s stored coefficients are within ``rel'``
    relative of those of an exact operator ``E`` with ``||diag o op|| <= ||E||`` (resp.
    ``op o diag``), or None when ``op`` is not a Conv2d/Dense or a product would underflow.

    * **Conv2d** (§7). ``E`` scales output channel ``o`` (resp. input channel ``c``) by
      ``d'_o = max |d|`` over that channel's pixels: ``E`` is the conv with kernel slices
      ``K[o] d'_o`` (resp. ``K[:, c] d'_c``; zero padding commutes with a per-channel scale).
      *Why ``||D T|| <= ||E||``:* ``D = S |D|`` with ``S`` a diagonal of signs (orthogonal),
      and ``||(|D| T) x|| <= ||(D' T) x||`` for every ``x`` since ``|D| <= D'`` entrywise; for
      ``T D`` take transposes. Equality when ``|d|`` is constant on each channel (BatchNorm,
      per-channel Mul, average-pool counts without padding).
    * **Dense**: rows (resp. columns) scaled by the signed ``d``; ``E`` is the exact product.

    *Rounding* (§8): ``fl(d K) = d K (1 + delta)``, ``|delta| <= u``, when the product is normal
    (checked), so ``|fl - d K_exact| <= gamma_1 |fl| + |d| rel |K| <= (gamma_1 + rel/(1-u)) |fl|``;
    ``rel' = 1.01 (gamma_1 + rel)`` covers it and its own rounding. A Conv2d's own rounded
    kernel (``exact_kernel=False``) enters through ``kernel_rel_error``.
    """
    if isinstance(op, Conv2d):
        kernel = op.kernel
        cout, cin_g = kernel.shape[:2]
        if after:
            d = np.abs(diag.scale).reshape(cout, -1).max(axis=1)
            factor = np.broadcast_to(d[:, None, None, None], kernel.shape)
        else:
            d = np.abs(diag.scale).reshape(op.in_shape[0], -1).max(axis=1)
            # output channel o of group o // (cout/g) reads input channels g*cin_g + j
            per = d.reshape(op.groups, cin_g)[np.arange(cout) // (cout // op.groups)]
            factor = np.broadcast_to(per[:, :, None, None], kernel.shape)
        base = rel + op.kernel_rel_error
    elif isinstance(op, Dense):
        kernel = op.weight
        factor = diag.scale[:, None] if after else diag.scale[None, :]
        factor = np.broadcast_to(factor, kernel.shape)
        base = rel
    else:
        return None
    with np.errstate(over="ignore", under="ignore"):
        new = kernel * factor
    if not np.isfinite(new).all():
        return None  # overflow: keep the factors apart
    if ((np.abs(new) < _TINY) & (kernel != 0) & (factor != 0)).any():
        return None  # an underflowing product has no relative error bound
    rel_new = (gamma(1) + base) * 1.01
    if isinstance(op, Conv2d):
        return Conv2d(new, op.in_shape, op.stride, op.pads, op.dilation, op.groups), rel_new
    return Dense(new), rel_new


def _fold_scales(ops: tuple[LinearOp, ...]) -> list[tuple[LinearOp, float]]:
    """The factors of a composition (applied first to last) with every Diagonal folded into
    the Conv2d/Dense before it, else after it, where :func:`_fold_diagonal` can; each factor
    comes with the relative uncertainty of its stored coefficients (0: exact)."""
    factors: list[tuple[LinearOp, float]] = []
    for op in ops:
        if isinstance(op, Diagonal) and factors:
            folded = _fold_diagonal(*factors[-1], op, after=True)
            if folded is not None:
                factors[-1] = folded
                continue
        elif factors and isinstance(factors[-1][0], Diagonal):
            folded = _fold_diagonal(op, 0.0, factors[-1][0], after=False)
            if folded is not None:
                factors[-1] = folded
                continue
        factors.append((op, 0.0))
    return factors


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
