"""Max pooling (FORMULATIONS.md §7): a windowed max, with an overlap-counted incidence QC."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import QC, Blocks


@dataclass(frozen=True, eq=False)
class MaxPoolQC(QC):
    """Max pooling (§7): each output ``j`` obeys ``|dw_j|^2 <= ||dv_{window j}||^2``, so
    ``Gvv = diag(A^T lam)``, ``Gvw = 0``, ``Gww = -diag(lam)`` with ``lam >= 0`` and ``A`` the
    window incidence. Equal multipliers recover the gain bound ``ceil(r/s)`` of §7; one per
    window (``per_neuron``) is never looser."""

    kind = "maxpool"

    incidence: np.ndarray  # (n_out, n_in) 0/1
    per_neuron: bool = True

    @property
    def n(self) -> int:
        return self.incidence.shape[1]

    def num_params(self, per_neuron: bool | None = None) -> int:
        return self.incidence.shape[0] if self.per_neuron else 1

    def _lam(self, p):
        return np.broadcast_to(np.asarray(p, dtype=np.float64), (self.incidence.shape[0],))

    def project(self, p):
        return np.maximum(np.asarray(p, dtype=np.float64), 0.0)

    def blocks(self, p):
        lam = self._lam(p)
        return Blocks(self.incidence.T @ lam, np.zeros(self.incidence.T.shape), -lam)

    def blocks_abs(self, p):
        lam = np.abs(self._lam(p))
        return Blocks(self.incidence.T @ lam, np.zeros(self.incidence.T.shape), lam)

    def cvx_blocks(self, p):
        import cvxpy as cp

        k = self.incidence.shape[0]
        lam = p if self.per_neuron else p[0] * np.ones(k)
        return (cp.diag(self.incidence.T @ lam), np.zeros(self.incidence.T.shape),
                -cp.diag(lam))

    def constraints(self, p):
        return [p >= 0]

    def lower_bounds(self):
        return [0.0] * self.num_params()

    def value_grad(self, v, w):
        per = self.incidence @ (v * v) - w * w
        per = per.sum(axis=1) if per.ndim == 2 else per
        return per if self.per_neuron else np.array([per.sum()])

    @property
    def anchor_factor(self) -> float:
        """``Gvv <= (2 mu) x I`` at the anchor ``lam = 2x``, ``mu`` the most windows per input."""
        return 2.0 * float(self.incidence.sum(axis=0).max())

    def from_layer(self, p_layer) -> np.ndarray:
        return np.full(self.num_params(), float(np.ravel(p_layer)[0]))

    def anchor_params(self, x: float) -> np.ndarray:
        return np.full(self.num_params(), 2.0 * x)


def incidence_of(act) -> np.ndarray:
    c, h, w = act.in_shape
    grid = np.full((c, h + act.pads[0] + act.pads[2], w + act.pads[1] + act.pads[3]), -1)
    grid[:, act.pads[0]:act.pads[0] + h, act.pads[1]:act.pads[1] + w] = \
        np.arange(c * h * w).reshape(c, h, w)
    _, ho, wo = act.out_shape
    inc = np.zeros((c * ho * wo, c * h * w))
    rows = np.arange(c * ho * wo).reshape(c, ho, wo)
    for p in range(act.kernel[0]):
        for q in range(act.kernel[1]):
            idx = grid[:, p:p + act.stride[0] * (ho - 1) + 1:act.stride[0],
                       q:q + act.stride[1] * (wo - 1) + 1:act.stride[1]]
            ok = idx >= 0
            inc[rows[ok], idx[ok]] = 1.0
    return inc


def make(act, n: int, per_neuron: bool, block: int = 1) -> MaxPoolQC:
    """The registry factory: one multiplier per pooling window (or one per layer)."""
    return MaxPoolQC(incidence_of(act), per_neuron)
