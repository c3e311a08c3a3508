"""Symbolic tensors for importers: values that are affine in the network's atoms.

While an importer walks a graph, every input-dependent tensor is a
:class:`Sym`: ``sum_j op_j(z_j) + bias`` over the input ``z_0`` and the
activation nodes ``z_k`` emitted so far, with its full tensor shape (batch
dimension traced as 1). Linear operations compose into the terms; a
nonlinearity emits a new :class:`~lipverify.ir.network.Node`. The result is the
affine normal form of :mod:`lipverify.ir.network`, whatever the graph looked like
(Concat/Slice of linear branches, residual Adds, normalisation layers...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..ir.activations import Activation
from ..ir.linear import IndexMap, LinearOp, add, compose, identity
from ..ir.network import Affine, Network, Node, Provenance, Term


@dataclass(frozen=True, eq=False)
class Sym:
    """An affine function of the network atoms with a tensor shape."""

    terms: dict[int, LinearOp]
    bias: np.ndarray  # flat
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def bias_tensor(self) -> np.ndarray:
        return self.bias.reshape(self.shape)

    def reshape(self, shape) -> Sym:
        return Sym(self.terms, self.bias, tuple(int(s) for s in shape))

    def linear(self, op: LinearOp, shape, bias: np.ndarray | None = None) -> Sym:
        """``op(self) + bias``; ``bias`` defaults to ``op(self.bias)``."""
        terms = {src: compose(t, op) for src, t in self.terms.items()}
        new_bias = op.matmat(self.bias[None, :])[0] if bias is None else np.ravel(bias)
        return Sym(terms, np.asarray(new_bias, dtype=np.float64), tuple(int(s) for s in shape))

    def movement(self, index: np.ndarray, bias_tensor: np.ndarray) -> Sym:
        """Data movement: ``out[j] = self[index[j]]`` (-1: constant), bias given."""
        op = IndexMap(index.ravel(), self.size)
        return self.linear(op, index.shape, bias_tensor)

    def plus(self, other: Sym) -> Sym:
        terms = dict(self.terms)
        for src, op in other.terms.items():
            terms[src] = add(terms[src], op) if src in terms else op
        return Sym(terms, self.bias + other.bias, self.shape)

    def shifted(self, const: np.ndarray) -> Sym:
        return Sym(self.terms, self.bias + np.ravel(const), self.shape)

    def affine(self) -> Affine:
        return Affine(tuple(Term(s, op) for s, op in sorted(self.terms.items())), self.bias)


@dataclass
class Builder:
    """Collects nodes while an importer walks a graph."""

    input_shape: tuple[int, ...]
    nodes: list[Node] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def input(self) -> Sym:
        n = math.prod(self.input_shape)
        return Sym({0: identity(n)}, np.zeros(n), self.input_shape)

    def activate(self, x: Sym, act: Activation, out_shape=None, name: str = "") -> Sym:
        """Emit ``act(x)`` as a node and return it as a fresh atom."""
        shape = tuple(out_shape) if out_shape is not None else x.shape
        self.nodes.append(Node(act, x.affine(), shape, name))
        k = len(self.nodes)
        width = math.prod(shape)
        return Sym({k: identity(width)}, np.zeros(width), shape)

    def network(self, out: Sym, name: str, provenance: Provenance) -> Network:
        return Network(
            self.input_shape,
            tuple(self.nodes),
            out.affine(),
            out.shape,
            provenance=provenance,
            name=name,
        )
