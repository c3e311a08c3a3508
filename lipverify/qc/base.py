"""The QC contract (FORMULATIONS.md §1.1): every activation kind's quadratic constraint implements
:class:`QC`; the LMIs, the solvers and the certificate call nothing else."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Blocks:
    """QC blocks; a 1-D array stands for a diagonal matrix."""

    vv: np.ndarray
    vw: np.ndarray
    ww: np.ndarray


class QC(ABC):
    """Abstract QC for one layer of width ``n``: everything the LMIs, the solvers and the
    certificate call. Multipliers are a flat vector ``p`` of :meth:`num_params` values.

    Capability flags say what a kind supports beyond the contract: ``slope_restricted`` (it
    has slopes ``alpha``, ``beta``: the closed-form ldlt multipliers, the interior point and
    the dual bound use them).
    """

    #: the QC kind (:data:`QC_REGISTRY` key family; solver capabilities name it)
    kind: str = ""
    #: True when the QC is the slope-restricted one of §0 (has ``alpha`` and ``beta``)
    slope_restricted: bool = False

    n: int

    @abstractmethod
    def num_params(self, per_neuron: bool | None = None) -> int:
        """Length of the multiplier vector."""

    @abstractmethod
    def project(self, p: np.ndarray) -> np.ndarray:
        """Exact projection onto the multiplier set (§8 step 3)."""

    @abstractmethod
    def blocks(self, p: np.ndarray) -> Blocks:
        """``(Gvv, Gvw, Gww)`` at ``p`` (numpy; 1-D arrays stand for diagonals)."""

    @abstractmethod
    def blocks_abs(self, p: np.ndarray) -> Blocks:
        """Blocks evaluated with absolute values of every term (for the assembly radius)."""

    @abstractmethod
    def cvx_blocks(self, p):
        """The blocks as cvxpy expressions of a cvxpy variable ``p``."""

    @abstractmethod
    def constraints(self, p) -> list:
        """cvxpy constraints of the multiplier set."""

    @abstractmethod
    def lower_bounds(self) -> list[float | None]:
        """Per-multiplier lower bounds (None: free), for bound-constrained solvers."""

    @abstractmethod
    def value_grad(self, v, w):
        """d/dp of the QC value ``[v; w]^T G(p) [v; w]`` (linear in ``p``)."""

    @abstractmethod
    def from_layer(self, p_layer) -> np.ndarray:
        """Per-neuron multipliers equal to a layer-wide solution."""

    @abstractmethod
    def anchor_params(self, x: float) -> np.ndarray:
        """Feasible multipliers with ``-Gww >= 2 x I`` (the anchor of §8 step 4)."""

    @property
    @abstractmethod
    def anchor_factor(self) -> float:
        """Growth of the anchor multiplier through this layer (see ChainLMI.anchor)."""
