"""The one network representation every importer produces and every method reads.

A network is a small DAG in *affine normal form*::

    z_0 = x                                   (the input, flattened)
    z_k = phi_k( sum_j W_kj z_j + b_k )        k = 1..K   (one Node each, j < k)
    y   = sum_j C_j z_j + c                    (the output Affine)

Each ``W_kj`` is a structured :class:`~lipverify.ir.linear.LinearOp` (dense, conv,
scaling, index map or a composition). A feed-forward net is the special case
where each node reads only its predecessor (:meth:`Network.chain`); residual
nets read earlier nodes too. Biases never enter the bounds (§0) but are kept
for the forward pass.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError, NotApplicableError, UsageError
from .activations import Activation
from .linear import Dense, IndexMap, LinearOp, compose


@dataclass(frozen=True, eq=False)
class Term:
    """``op(z_source)``; source 0 is the input, source k is node k (1-based)."""

    source: int
    op: LinearOp


@dataclass(frozen=True, eq=False)
class Affine:
    """``sum(term.op(z[term.source])) + bias``."""

    terms: tuple[Term, ...]
    bias: np.ndarray

    def __post_init__(self):
        bias = np.array(self.bias, dtype=np.float64).ravel()
        bias.setflags(write=False)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "terms", tuple(self.terms))

    @property
    def n_out(self) -> int:
        return self.bias.shape[0]

    def evaluate(self, values: list[np.ndarray]) -> np.ndarray:
        out = np.broadcast_to(self.bias, (values[0].shape[0], self.n_out)).copy()
        for term in self.terms:
            out += term.op.matmat(values[term.source])
        return out

    def select_rows(self, rows: list[int]) -> Affine:
        sel = IndexMap(np.asarray(rows), self.n_out)
        return Affine(
            tuple(Term(t.source, compose(t.op, sel)) for t in self.terms), self.bias[rows]
        )


@dataclass(frozen=True, eq=False)
class Node:
    """``z = activation(pre(z_0..z_{k-1}))`` with its tensor shape and a name."""

    activation: Activation
    pre: Affine
    shape: tuple[int, ...]
    name: str = ""

    @property
    def width(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Provenance:
    """Where a network came from: path, sha256 of the file, format, importer notes."""

    path: str | None = None
    sha256: str | None = None
    format: str = "python"
    notes: tuple[str, ...] = ()

    @classmethod
    def of_file(cls, path: str | Path, fmt: str, notes=()) -> Provenance:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return cls(str(path), digest, fmt, tuple(notes))


@dataclass(frozen=True, eq=False)
class Layer:
    """One step of a feed-forward view: ``x -> activation(weight x + bias)``."""

    weight: LinearOp
    bias: np.ndarray
    activation: Activation | None


@dataclass(frozen=True, eq=False)
class Network:
    """Immutable network in affine normal form (see module docstring).

    >>> import numpy as np
    >>> from lipverify.ir.activations import SlopeRestricted
    >>> net = Network.sequential([np.array([[2.0, 0.0]]), np.array([[3.0]])],
    ...                          [SlopeRestricted.named("relu")])
    >>> net.widths
    [2, 1, 1]
    >>> float(net.forward(np.array([[1.0, 5.0]]))[0, 0])
    6.0
    """

    input_shape: tuple[int, ...]
    nodes: tuple[Node, ...]
    output: Affine
    output_shape: tuple[int, ...] = ()
    provenance: Provenance = field(default_factory=Provenance)
    name: str = "network"

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "nodes", tuple(self.nodes))
        if not self.output_shape:
            object.__setattr__(self, "output_shape", (self.output.n_out,))
        self._validate()

    # ---------------------------------------------------------------- validation
    def _validate(self):
        widths = [self.input_dim]
        if self.input_dim <= 0:
            raise ModelLoadError(f"{self.name}: the input has zero width")
        for k, node in enumerate([*self.nodes, None], start=1):
            pre = self.output if node is None else node.pre
            label = (
                "output layer"
                if node is None
                else f"layer {k} ({node.name or node.activation.kind})"
            )
            if pre.n_out <= 0:
                raise ModelLoadError(f"{self.name}: {label} has zero width")
            if not np.isfinite(pre.bias).all():
                raise ModelLoadError(f"{self.name}: {label} has NaN/Inf in its bias; fix the model")
            for term in pre.terms:
                if not 0 <= term.source < k:
                    raise ModelLoadError(f"{self.name}: {label} reads a later node")
                if term.op.n_in != widths[term.source] or term.op.n_out != pre.n_out:
                    raise ModelLoadError(
                        f"{self.name}: {label} has inconsistent shapes: weight "
                        f"{term.op.n_out}x{term.op.n_in} applied to width {widths[term.source]}"
                    )
                for leaf in term.op.leaves():
                    for arr in leaf.parameters():
                        if not np.isfinite(arr).all():
                            raise ModelLoadError(
                                f"{self.name}: {label} has NaN/Inf weights; fix the model "
                                "or re-export it"
                            )
            if node is not None:
                width = node.activation.out_dim(pre.n_out)
                if width != node.width:
                    raise ModelLoadError(
                        f"{self.name}: {label} shape {node.shape} != width {width}"
                    )
                widths.append(width)

    # ------------------------------------------------------------ construction
    @classmethod
    def sequential(
        cls,
        weights: list[np.ndarray | LinearOp],
        activations: list[Activation],
        biases: list[np.ndarray] | None = None,
        input_shape: tuple[int, ...] | None = None,
        provenance: Provenance | None = None,
        name: str = "network",
    ) -> Network:
        """Feed-forward net ``W_L phi(... phi(W_1 x + b_1) ...) + b_L`` (weights [out, in])."""
        if len(activations) != len(weights) - 1:
            raise ModelLoadError(
                f"{len(weights)} weight layers need {len(weights) - 1} activations, "
                f"got {len(activations)}"
            )
        ops = [w if isinstance(w, LinearOp) else Dense(w) for w in weights]
        biases = biases if biases is not None else [np.zeros(op.n_out) for op in ops]
        nodes = []
        for k, (op, b, act) in enumerate(zip(ops[:-1], biases[:-1], activations), start=1):
            pre = Affine((Term(k - 1, op),), b)
            nodes.append(Node(act, pre, (act.out_dim(op.n_out),), f"layer{k}"))
        out = Affine((Term(len(nodes), ops[-1]),), biases[-1])
        return cls(
            input_shape or (ops[0].n_in,),
            tuple(nodes),
            out,
            provenance=provenance or Provenance(),
            name=name,
        )

    # ------------------------------------------------------------------ views
    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)

    @property
    def output_dim(self) -> int:
        return self.output.n_out

    @property
    def widths(self) -> list[int]:
        """Input width, every node's width, output width."""
        return [self.input_dim, *(n.width for n in self.nodes), self.output_dim]

    @property
    def is_sequential(self) -> bool:
        return all(
            len(p.terms) == 1 and p.terms[0].source == k
            for k, p in enumerate([*(n.pre for n in self.nodes), self.output])
        )

    def chain(self) -> list[Layer]:
        """Feed-forward view: one :class:`Layer` per node, plus the output layer."""
        if not self.is_sequential:
            raise NotApplicableError(
                f"{self.name} is not a plain feed-forward chain (it has skip connections)"
            )
        layers = [Layer(n.pre.terms[0].op, n.pre.bias, n.activation) for n in self.nodes]
        layers.append(Layer(self.output.terms[0].op, self.output.bias, None))
        return layers

    @property
    def activations(self) -> list[Activation]:
        return [n.activation for n in self.nodes]

    @property
    def num_parameters(self) -> int:
        seen: set[int] = set()
        total = 0
        for pre in [*(n.pre for n in self.nodes), self.output]:
            total += pre.bias.size
            for term in pre.terms:
                for leaf in term.op.leaves():
                    for arr in leaf.parameters():
                        if id(arr) not in seen:
                            seen.add(id(arr))
                            total += arr.size
        return total

    # -------------------------------------------------------------- evaluation
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Evaluate on a batch: ``x`` is ``(B, input_dim)`` (or ``(B, *input_shape)``)."""
        x = np.asarray(x, dtype=np.float64)
        x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
        if x.shape[1] != self.input_dim:
            raise UsageError(f"input has width {x.shape[1]}, network expects {self.input_dim}")
        values = [x]
        for node in self.nodes:
            values.append(node.activation.apply(node.pre.evaluate(values)))
        return self.output.evaluate(values)

    __call__ = forward

    # ------------------------------------------------------------ transforms
    def select_outputs(self, rows: list[int] | None) -> Network:
        """The same network restricted to output ``rows`` (None: unchanged)."""
        if rows is None:
            return self
        bad = [r for r in rows if not 0 <= r < self.output_dim]
        if bad or not rows:
            raise UsageError(
                f"output rows {bad or rows} out of range: the network has {self.output_dim} outputs"
            )
        return replace(self, output=self.output.select_rows(list(rows)), output_shape=(len(rows),))

    def output_map(self, c: np.ndarray, name: str | None = None) -> Network:
        """The same network followed by the linear map ``c`` (``m x output_dim``): the logit
        difference ``f_i - f_j`` is ``output_map(e_i - e_j)``.

        >>> import numpy as np
        >>> net = Network.sequential([np.eye(2)], [])
        >>> float(net.output_map(np.array([[1.0, -1.0]])).forward(np.array([[3.0, 1.0]]))[0, 0])
        2.0
        """
        c = np.atleast_2d(np.asarray(c, dtype=np.float64))
        if c.shape[1] != self.output_dim or not np.all(np.isfinite(c)):
            raise UsageError(f"an output map must be a finite matrix with {self.output_dim} "
                             f"columns; got shape {c.shape}")
        op = Dense(c)
        out = Affine(tuple(Term(t.source, compose(t.op, op)) for t in self.output.terms),
                     c @ self.output.bias)
        return replace(self, output=out, output_shape=(c.shape[0],),
                       name=self.name if name is None else name)

    def summary(self) -> list[dict]:
        """One dict per layer: name, kind, in/out widths, weight operators, parameters."""
        rows = []
        for k, node in enumerate([*self.nodes, None], start=1):
            pre = self.output if node is None else node.pre
            rows.append(
                {
                    "layer": k,
                    "name": "output" if node is None else node.name,
                    "sources": [t.source for t in pre.terms],
                    "linear": " + ".join(repr(t.op) for t in pre.terms),
                    "activation": "-" if node is None else node.activation.describe(),
                    "width": pre.n_out if node is None else node.width,
                }
            )
        return rows
