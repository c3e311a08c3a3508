"""Quadratic constraints per activation kind (FORMULATIONS.md §1.1, §4).

A QC for hidden layer k is the symmetric form
``[dv; dw]^T [[Gvv, Gvw], [Gvw^T, Gww]] [dv; dw] >= 0`` that holds for every pair
of pre-activations ``v, v'`` (``dv = v - v'``, ``dw = phi(v) - phi(v')``), for every
multiplier value in the QC's set. Each QC class says how many multipliers it has,
which are sign-constrained, and builds its blocks from them, in numpy (for the
exact certificate) and in cvxpy (for solving). Registry: activation kind -> QC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..activations import Activation, SlopeRestricted
from ..errors import NotApplicableError


@dataclass(frozen=True)
class Blocks:
    """QC blocks; a 1-D array stands for a diagonal matrix."""

    vv: np.ndarray
    vw: np.ndarray
    ww: np.ndarray


class QC:
    """Abstract QC for one layer of width ``n``."""

    n: int

    def num_params(self, per_neuron: bool) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def project(self, p: np.ndarray) -> np.ndarray:
        """Exact projection onto the multiplier set (§8 step 3)."""
        raise NotImplementedError  # pragma: no cover

    def blocks(self, p: np.ndarray) -> Blocks:  # pragma: no cover - abstract
        raise NotImplementedError

    def blocks_abs(self, p: np.ndarray) -> Blocks:
        """Blocks evaluated with absolute values of every term (for the assembly radius)."""
        raise NotImplementedError  # pragma: no cover

    def cvx_blocks(self, p):  # pragma: no cover - abstract
        raise NotImplementedError

    def constraints(self, p) -> list:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class SlopeQC(QC):
    """§1.1: ``Gvv = -2ab T``, ``Gvw = (a+b) T``, ``Gww = -2T``, ``T = diag(t) >= 0``.

    With ``per_neuron=False`` T is ``tau I`` (LipSDP-Layer, §1.3).
    """

    n: int
    alpha: float
    beta: float
    per_neuron: bool = True

    def num_params(self, per_neuron: bool | None = None) -> int:
        return self.n if self.per_neuron else 1

    def expand(self, p):
        return (
            np.broadcast_to(np.asarray(p, dtype=np.float64), (self.n,))
            if not self.per_neuron
            else np.asarray(p, dtype=np.float64)
        )

    def project(self, p):
        return np.maximum(np.asarray(p, dtype=np.float64), 0.0)

    def blocks(self, p):
        t = self.expand(p)
        a, b = self.alpha, self.beta
        return Blocks(-2.0 * a * b * t, (a + b) * t, -2.0 * t)

    def blocks_abs(self, p):
        t = np.abs(self.expand(p))
        a, b = abs(self.alpha), abs(self.beta)
        return Blocks(2.0 * a * b * t, (a + b) * t, 2.0 * t)

    def cvx_blocks(self, p):
        """(Gvv, Gvw, Gww) as cvxpy matrices of the multiplier variable ``p``."""
        import cvxpy as cp

        t = cp.diag(p) if self.per_neuron else p * np.eye(self.n)
        a, b = self.alpha, self.beta
        return -2.0 * a * b * t, (a + b) * t, -2.0 * t

    def constraints(self, p):
        return [p >= 0]

    def lower_bounds(self):
        return [0.0] * self.num_params()

    def value_grad(self, v, w):
        """d/dp of the QC value ``[v; w]^T G(p) [v; w]`` (linear in p), summed over the
        columns when ``v``, ``w`` are matrices (one column per vector)."""
        a, b = self.alpha, self.beta
        per = -2.0 * a * b * v * v + 2.0 * (a + b) * v * w - 2.0 * w * w
        per = per.sum(axis=1) if per.ndim == 2 else per
        return per if self.per_neuron else np.array([per.sum()])


#: activation kind -> factory(activation, width, per_neuron) -> QC
QC_REGISTRY: dict[str, Callable[[Activation, int, bool], QC]] = {
    "slope": lambda act, n, per_neuron: SlopeQC(n, act.alpha, act.beta, per_neuron),
}


def qc_for(act: Activation, n: int, per_neuron: bool = True) -> QC:
    if act.kind not in QC_REGISTRY:
        raise NotApplicableError(
            f"no quadratic constraint for activation {act.describe()} yet; use --method naive"
        )
    if isinstance(act, SlopeRestricted) and not act.elementwise:  # pragma: no cover
        raise NotApplicableError(f"{act.describe()} is not elementwise")
    return QC_REGISTRY[act.kind](act, n, per_neuron)
