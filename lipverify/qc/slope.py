"""Slope-restricted elementwise activations (FORMULATIONS.md §0, §1.1): ReLU, leaky ReLU, tanh,
sigmoid, GELU, SiLU, ..."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import QC, Blocks


@dataclass(frozen=True)
class SlopeQC(QC):
    """§1.1: ``Gvv = -2ab T``, ``Gvw = (a+b) T``, ``Gww = -2T``, ``T = diag(t) >= 0``.

    With ``per_neuron=False`` T is ``tau I`` (LipSDP-Layer, §1.3). With ``block > 1``
    consecutive runs of ``block`` neurons share one multiplier: per-channel multipliers
    ``T = diag(t) (x) I_{H'W'}`` of a conv layer (§7), sound like any diagonal T >= 0.
    """

    kind = "slope"
    slope_restricted = True

    n: int
    alpha: float
    beta: float
    per_neuron: bool = True
    block: int = 1

    def num_params(self, per_neuron: bool | None = None) -> int:
        return self.n // self.block if self.per_neuron else 1

    def expand(self, p):
        p = np.asarray(p, dtype=np.float64)
        return np.repeat(p, self.n // p.size) if p.size != self.n else p

    def _expansion(self) -> np.ndarray:
        return np.kron(np.eye(self.num_params()), np.ones((self.n // self.num_params(), 1)))

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

        k = self.num_params()
        t = cp.diag(p) if k == self.n else (p * np.eye(self.n) if k == 1
                                            else cp.diag(self._expansion() @ p))
        a, b = self.alpha, self.beta
        return -2.0 * a * b * t, (a + b) * t, -2.0 * t

    def constraints(self, p):
        return [p >= 0]

    def lower_bounds(self):
        return [0.0] * self.num_params()

    def from_layer(self, p_layer) -> np.ndarray:
        """Per-neuron multipliers equal to a layer-wide solution (same LMI, same rho*)."""
        return np.full(self.num_params(), float(np.ravel(p_layer)[0]))

    @property
    def anchor_factor(self) -> float:
        """Growth of the anchor multiplier through this layer (see ChainLMI.anchor)."""
        a, b = self.alpha, self.beta
        return 2.0 * abs(a * b) + (a + b) ** 2

    def anchor_params(self, x: float) -> np.ndarray:
        """Multipliers with ``-Gww = 2 x I`` and the smallest other blocks."""
        return np.full(self.num_params(), x)

    def value_grad(self, v, w):
        """d/dp of the QC value ``[v; w]^T G(p) [v; w]`` (linear in p), summed over the
        columns when ``v``, ``w`` are matrices (one column per vector)."""
        a, b = self.alpha, self.beta
        per = -2.0 * a * b * v * v + 2.0 * (a + b) * v * w - 2.0 * w * w
        per = per.sum(axis=1) if per.ndim == 2 else per
        return per.reshape(self.num_params(), -1).sum(axis=1)


def make(act, n: int, per_neuron: bool, block: int = 1) -> SlopeQC:
    """The registry factory: slopes ``[alpha, beta]`` of ``act``."""
    return SlopeQC(n, act.alpha, act.beta, per_neuron, block)
