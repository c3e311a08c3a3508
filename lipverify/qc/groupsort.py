"""GroupSort / MaxMin (FORMULATIONS.md §4): sorting within groups, an exact 1-Lipschitz QC."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import NotApplicableError
from .base import QC, Blocks


@dataclass(frozen=True)
class GroupSortQC(QC):
    """§4 (Pauli et al., ICLR 2024): ``Gvv = T - 2S``, ``Gvw = P + S``, ``Gww = -T - 2P`` with
    ``T = (+)(lam_i I + tau_i 11^T)``, ``S = (+) s_i 11^T``, ``P = (+) p_i 11^T`` per group,
    ``lam >= 0`` and ``tau, s, p`` free. Parameters are ``[lam, tau, s, p]`` (one of each per
    group, or per layer when ``per_neuron`` is false).

    Householder (§4 [derived]): ``direction`` ``q`` spans ``Pi_u = I - u u^T = q q^T`` in each
    pair, which the activation preserves; ``q q^T`` replaces ``11^T``. ``q`` is known only to
    ``direction_error`` (2-norm; it comes from sin/cos), so ``q~^T dv = q~^T dw`` holds up to
    ``2 delta ||dv||`` and the free terms can err by ``4.5 delta (|tau|+|s|+|p|) ||dv||^2``
    [derived]; ``Gvv`` gains that multiple of ``I`` so the QC stays valid exactly. The solver
    ignores the (~1e-15 relative) term; the certificate includes it.
    """

    kind = "groupsort"

    n: int
    group: int
    per_neuron: bool = True
    direction: tuple[float, ...] | None = None
    direction_error: float = 0.0

    @property
    def groups(self) -> int:
        return self.n // self.group

    def num_params(self, per_neuron: bool | None = None) -> int:
        return 4 * (self.groups if self.per_neuron else 1)

    def _split(self, p):
        p = np.asarray(p, dtype=np.float64)
        parts = np.split(p, 4)
        return [np.broadcast_to(q, (self.groups,)) for q in parts]

    def _e(self) -> np.ndarray:
        q = np.ones((self.group, 1)) if self.direction is None else \
            np.asarray(self.direction, dtype=np.float64)[:, None]
        return np.kron(np.eye(self.groups), q)

    def _slack(self, tau, s, pp) -> np.ndarray:
        """Per-neuron ``Gvv`` inflation covering the inexact direction (zero for GroupSort)."""
        if not self.direction_error:
            return np.zeros(self.n)
        c = 4.5 * self.direction_error * (np.abs(tau) + np.abs(s) + np.abs(pp)) * (1 + 1e-6)
        return np.repeat(c, self.group)

    def project(self, p):
        p = np.array(p, dtype=np.float64)
        k = p.size // 4
        p[:k] = np.maximum(p[:k], 0.0)
        return p

    def blocks(self, p):
        lam, tau, s, pp = self._split(p)
        e = self._e()
        lam_d = np.repeat(lam, self.group)
        return Blocks(np.diag(lam_d + self._slack(tau, s, pp)) + (e * (tau - 2 * s)) @ e.T,
                      (e * (pp + s)) @ e.T, -np.diag(lam_d) - (e * (tau + 2 * pp)) @ e.T)

    def blocks_abs(self, p):
        lam, tau, s, pp = (np.abs(q) for q in self._split(p))
        e = self._e()
        lam_d = np.repeat(lam, self.group)
        return Blocks(np.diag(lam_d + self._slack(tau, s, pp)) + (e * (tau + 2 * s)) @ e.T,
                      (e * (pp + s)) @ e.T, np.diag(lam_d) + (e * (tau + 2 * pp)) @ e.T)

    def cvx_blocks(self, p):
        import cvxpy as cp

        k = self.num_params() // 4
        e = self._e()
        ones = np.ones(self.groups)

        def grp(v):  # per-group values (broadcast a layer-wide scalar)
            return v if k == self.groups else v[0] * ones

        lam, tau, s, pp = (grp(p[i * k:(i + 1) * k]) for i in range(4))
        # lam_i repeated over its group (as in blocks); e @ lam would scale it by the
        # Householder direction's entries
        lam_m = cp.diag(np.kron(np.eye(self.groups), np.ones((self.group, 1))) @ lam)
        return (lam_m + e @ cp.diag(tau - 2 * s) @ e.T, e @ cp.diag(pp + s) @ e.T,
                -lam_m - e @ cp.diag(tau + 2 * pp) @ e.T)

    def constraints(self, p):
        return [p[: self.num_params() // 4] >= 0]

    def lower_bounds(self):
        k = self.num_params() // 4
        return [0.0] * k + [None] * (3 * k)

    def value_grad(self, v, w):
        e = self._e()
        g = np.kron(np.eye(self.groups), np.ones((self.group, 1)))  # lam_i: its whole group
        av, aw = e.T @ v, e.T @ w
        parts = [g.T @ (v * v) - g.T @ (w * w), av * av - aw * aw,
                 -2.0 * av * av + 2.0 * av * aw, 2.0 * av * aw - 2.0 * aw * aw]
        parts = [q.sum(axis=1) if q.ndim == 2 else q for q in parts]
        if not self.per_neuron:
            parts = [np.array([q.sum()]) for q in parts]
        return np.concatenate(parts)

    anchor_factor = 2.0

    def from_layer(self, p_layer) -> np.ndarray:
        return np.repeat(np.asarray(p_layer, dtype=np.float64), self.num_params() // 4)

    def anchor_params(self, x: float) -> np.ndarray:
        k = self.num_params() // 4
        return np.concatenate([np.full(k, 2.0 * x), np.zeros(3 * k)])


def make(act, n: int, per_neuron: bool, block: int = 1) -> GroupSortQC:
    """The registry factory: groups of ``act.group_size``, which must divide the width."""
    if n % act.group_size:
        raise NotApplicableError(f"GroupSort({act.group_size}) on a layer of width {n}")
    return GroupSortQC(n, act.group_size, per_neuron)
