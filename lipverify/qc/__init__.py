"""Quadratic constraints per activation kind (FORMULATIONS.md §1.1, §4).

A QC for hidden layer k is the symmetric form
``[dv; dw]^T [[Gvv, Gvw], [Gvw^T, Gww]] [dv; dw] >= 0`` that holds for every pair
of pre-activations ``v, v'`` (``dv = v - v'``, ``dw = phi(v) - phi(v')``), for every
multiplier value in the QC's set. Each QC class says how many multipliers it has,
which are sign-constrained, and builds its blocks from them, in numpy (for the
exact certificate) and in cvxpy (for solving). Registry: activation kind -> QC.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import NotApplicableError
from ..ir.activations import Activation, GroupSort


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


def _maxpool_incidence(act) -> np.ndarray:
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


_DIRECTION_ERROR = 8.0 * np.finfo(float).eps  # |fl(sin t) - sin t|, |fl(cos t) - cos t|: a few ulp


def _householder(act, n, per_neuron, block=1):
    q = (-math.sin(act.theta), math.cos(act.theta))  # spans Pi_u for u = (cos t, sin t)
    return GroupSortQC(n, 2, per_neuron, q, _DIRECTION_ERROR)


#: activation kind -> factory(activation, width, per_neuron, block) -> QC
QC_REGISTRY: dict[str, Callable[..., QC]] = {
    "slope": lambda act, n, per_neuron, block=1: SlopeQC(n, act.alpha, act.beta, per_neuron,
                                                         block),
    "groupsort": lambda act, n, per_neuron, block=1: GroupSortQC(n, act.group_size, per_neuron),
    "householder": _householder,
    "maxpool": lambda act, n, per_neuron, block=1: MaxPoolQC(_maxpool_incidence(act),
                                                             per_neuron),
}


#: activation kind -> what its QC says (``lipverify qcs``)
QC_SUMMARY: dict[str, str] = {
    "slope": "slope-restricted elementwise maps, slopes in [alpha, beta] (§0)",
    "groupsort": "GroupSort / MaxMin: sorting permutes, an exact 1-Lipschitz QC (§4)",
    "householder": "Householder activation: reflect a pair when u^T v <= 0 (§4)",
    "maxpool": "max pooling: windowed max, overlap-counted incidence QC (§7)",
}


def qc_for(act: Activation, n: int, per_neuron: bool = True, block: int = 1) -> QC:
    if act.kind not in QC_REGISTRY:
        raise NotApplicableError(
            f"no quadratic constraint for activation {act.describe()}"
        )
    if isinstance(act, GroupSort) and n % act.group_size:
        raise NotApplicableError(f"GroupSort({act.group_size}) on a layer of width {n}")
    if act.kind == "householder" and n % 2:
        raise NotApplicableError(f"Householder activation on a layer of odd width {n}")
    return QC_REGISTRY[act.kind](act, n, per_neuron, block)
