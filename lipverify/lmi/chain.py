"""The block-tridiagonal LipSDP matrix of a feed-forward chain (FORMULATIONS.md §1.2, §4).

``M(rho, p)`` has diagonal blocks ``D_0..D_{L-1}`` and off-diagonal blocks
``B_1..B_{L-1}`` built by the general insertion rule of §4 from each layer's QC
blocks. Everything here is plain float64 numpy on the exact weights; the
certificate (:mod:`lipverify.certify.gate`) is built on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import scipy.linalg

from ..errors import NotApplicableError
from ..ir.linear import Dense, power_iteration
from ..ir.network import Network
from ..numerics import lambda_max, physical_memory, power_of_two_scale, spectral_norm
from ..qc import QC, Blocks, qc_for
from .base import LMI


def _power_of_ten(log2_x: float) -> str:
    """``2^log2_x`` as text (``1e400``), beyond float64's range too."""
    return f"1e{log2_x * math.log10(2):.0f}" if math.isfinite(log2_x) else "above 1e308"


def quad(w: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``W^T G W`` for a diagonal (1-D) or full ``G``."""
    return (w.T * g) @ w if g.ndim == 1 else w.T @ g @ w


def rmul(w_t: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``W^T G``."""
    return w_t * g if g.ndim == 1 else w_t @ g


def as_matrix(g: np.ndarray) -> np.ndarray:
    return np.diag(g) if g.ndim == 1 else g


@dataclass(frozen=True, eq=False)
class ChainLMI(LMI):
    """LipSDP data of a chain: exact weights ``W_1..W_L``, their radii, one QC per hidden layer."""

    weights: tuple[np.ndarray, ...]
    radii: tuple[np.ndarray | None, ...]
    qcs: tuple[QC, ...]
    name: str = "network"
    kind: ClassVar[str] = "chain"

    @classmethod
    def from_network(cls, network: Network, per_neuron: bool | str = True) -> ChainLMI:
        """``per_neuron``: True / "neuron", False / "layer", or "channel" (§7)."""
        layers = network.chain()
        order = sum([network.input_dim, *(n.width for n in network.nodes)])
        need = dense_certificate_bytes(order)
        if need > MAX_CERTIFICATE_BYTES:
            raise NotApplicableError(
                f"{network.name}: the LMI has order {order}; its dense certificate needs about "
                f"{need / 2**30:.1f} GiB (limit {MAX_CERTIFICATE_BYTES / 2**30:.0f} GiB). "
                "Use --method auto (it runs what fits: lipsdp-wide for one hidden layer, "
                "lipsdp-split, ldlt-fast, naive) for a certified bound."
            )
        weights, radii = [], []
        for layer in layers:
            dense, radius = layer.weight.dense_with_radius()
            weights.append(dense)
            radii.append(radius)
        qcs = node_qcs(network, per_neuron)
        if not qcs:
            raise NotApplicableError(f"{network.name} has no hidden layer: its bound is ||W||")
        # power iteration (matrix-vector products only) on each weight scaled by a power of
        # two, so that weights of 1e154 do not overflow inside it
        scales = [power_of_two_scale(w) for w in weights]
        scaled = [power_iteration(Dense(w / c), iters=30, tol=1e-3)
                  for w, c in zip(weights, scales)]
        # in logarithms: one layer's norm may itself exceed float64
        log2_rho = 2.0 * sum(math.log2(s) + math.log2(c) for s, c in zip(scaled, scales)
                             if s > 0)
        if log2_rho > RHO_LOG2_MAX:  # rho ~ L^2 and the balancing scales leave float64
            raise NotApplicableError(
                f"{network.name}: the product of the layer norms is about "
                f"{_power_of_ten(log2_rho / 2)}; the LMI's rho (its square) and the "
                "balancing scales overflow float64, so no LipSDP certificate can be computed. "
                "Rescale the network (divide a layer by a power of two and multiply the bound "
                "back), or use --method naive."
            )
        return cls(tuple(weights), tuple(radii), qcs, network.name)

    # ----------------------------------------------------------------- sizes
    @property
    def sizes(self) -> list[int]:
        """Block sizes n_0..n_{L-1} (widths after each activation; max pooling shrinks)."""
        return [w.shape[1] for w in self.weights]

    # ---------------------------------------------------------------- blocks
    def blocks(self, params, rho: float = 0.0, absolute: bool = False, output: bool = True):
        """Diagonal blocks ``D`` and couplings ``B`` of ``M(rho, params)`` (§4 insertion rule).

        With ``absolute`` every term is added in absolute value (``M_abs`` of §8), using
        ``|W| + radius`` for weights known only up to a radius.
        """
        ws = (
            [np.abs(w) + (0 if r is None else r) for w, r in zip(self.weights, self.radii)]
            if absolute
            else list(self.weights)
        )
        sizes = self.sizes
        d = [np.zeros((n, n)) for n in sizes]
        b = []
        for k, (qc, p) in enumerate(zip(self.qcs, self.split(params)), start=1):
            g: Blocks = qc.blocks_abs(p) if absolute else qc.blocks(p)
            w = ws[k - 1]
            sign = 1.0 if absolute else -1.0
            if np.any(g.vv):  # zero for alpha = 0 (ReLU): skip the n^3 product
                d[k - 1] += sign * quad(w, g.vv)
            b.append(sign * rmul(w.T, g.vw))
            d[k] += sign * as_matrix(g.ww)
        d[0][np.diag_indices(sizes[0])] += abs(rho)
        if output:
            d[-1] += (1.0 if absolute else -1.0) * (ws[-1].T @ ws[-1])
        return d, b

    def assemble(self, params, rho: float, absolute: bool = False) -> np.ndarray:
        d, b = self.blocks(params, rho, absolute)
        return assemble_tridiagonal(d, b)

    @property
    def inner_dim(self) -> int:
        """Largest inner dimension of the products in M (the n-bar of §8)."""
        return max(max(w.shape) for w in self.weights)

    def soft_rho(self, params, mu: float):
        from ..solvers.smooth_rho import soft_rho

        return soft_rho(self, params, mu)

    def node_inputs(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        offs = np.concatenate([[0], np.cumsum(self.sizes)])
        return np.arange(offs[k - 1], offs[k]), self.weights[k - 1]

    # ------------------------------------------------------------- recursion
    def backward_pivots(self, params, last: int = 1):
        """The backward Schur recursion (§2): yields ``(k, cho_factor(Y_k), d, b)`` for
        ``k = L-1 .. last`` (``d``, ``b`` the blocks of ``M(0, params)``), and ``(k, None, d,
        b)`` at the first pivot that is not positive definite, then stops."""
        d, b = self.blocks(params, 0.0)
        y = d[-1]
        for k in range(len(d) - 1, last - 1, -1):
            try:
                chol = scipy.linalg.cho_factor(y, lower=True, check_finite=False)
            except (scipy.linalg.LinAlgError, ValueError):
                yield k, None, d, b
                return
            yield k, chol, d, b
            if k > last:
                y = d[k - 1] - b[k - 1] @ scipy.linalg.cho_solve(chol, b[k - 1].T,
                                                                 check_finite=False)

    def rho_star(self, params) -> float:
        """Best rho for fixed multipliers by the backward Schur recursion (§2); inf if none."""
        step = None
        for step in self.backward_pivots(params):
            if step[1] is None:
                return math.inf
        _, chol, d, b = step
        schur = b[0] @ scipy.linalg.cho_solve(chol, b[0].T, check_finite=False)
        top = schur - d[0]
        top = (top + top.T) / 2.0
        if not np.isfinite(top).all():  # overflow: no rho representable in float64
            return math.inf
        return max(lambda_max(top, "rho* (top Schur block)"), 0.0)

    def anchor(self) -> np.ndarray:
        """Strictly feasible layer multipliers for any slopes (§6.1, generalised; §8 step 4).

        Built backward so every Schur pivot satisfies ``Y_k >= tau_k I`` (using ``lambda_min``
        estimates; the certificate re-checks everything exactly).
        """
        taus = [0.0] * len(self.qcs)
        norm2 = [spectral_norm(w) ** 2 for w in self.weights]
        taus[-1] = max(norm2[-1], 1e-12)  # Y_{L-1} = 2 tau - W_L^T W_L >= tau I
        for k in range(len(self.qcs) - 2, -1, -1):
            taus[k] = max(self.qcs[k + 1].anchor_factor * taus[k + 1] * norm2[k + 1], 1e-12)
        # doubled multipliers: every pivot gains a strict margin
        return np.concatenate([qc.anchor_params(2.0 * t) for qc, t in zip(self.qcs, taus)])


def node_qc(node, multipliers: bool | str = True) -> QC:
    """The QC of an activation node; ``multipliers`` True / "neuron", False / "layer", or
    "channel" (one multiplier per conv output channel, §7)."""
    if multipliers not in (True, False, "neuron", "layer", "channel"):
        raise NotApplicableError(f"unknown multiplier class {multipliers!r}")
    per_neuron = multipliers not in (False, "layer")
    block = 1
    shape = node.shape[1:] if len(node.shape) == 4 and node.shape[0] == 1 else node.shape
    if multipliers == "channel" and len(shape) == 3:  # (c, h, w), batch dimension dropped
        block = shape[1] * shape[2]
    return qc_for(node.activation, node.pre.n_out, per_neuron, block)


def node_qcs(network: Network, multipliers: bool | str = True) -> tuple[QC, ...]:
    """Every node's QC; nodes without one are all listed in a single error."""
    qcs, missing = [], []
    for k, node in enumerate(network.nodes, start=1):
        try:
            qcs.append(node_qc(node, multipliers))
        except NotApplicableError as exc:
            missing.append(f"node {k} ({node.name or node.activation.describe()}): {exc}")
    if missing:
        raise NotApplicableError(
            f"{network.name}: {len(missing)} node(s) have no quadratic constraint for the LMI: "
            + "; ".join(missing) + ". Use --method naive (any 1-Lipschitz or slope-bounded map "
            "is covered there)."
        )
    return tuple(qcs)


#: Memory allowed for the dense matrices of one §8 certificate: 40% of this machine's RAM,
#: at least 6 GiB (9.6 GiB on the 24 GiB reference machine).
MAX_CERTIFICATE_BYTES = max(6 * 2**30, int(0.4 * physical_memory()))


#: Largest log2 of rho that LipSDP handles: rho ~ L^2 and the balancing scales of
#: :func:`balance` (powers of two up to sigma_L^2) must stay below float64's 2^1024
#: (measured: a chain whose norm product squared is 2^1020.6 certifies; one at 2^1027.3
#: overflows).
RHO_LOG2_MAX = 1022.0


def dense_certificate_bytes(order: int) -> int:
    """M, |M|, the radius and the shifted copy: four dense float64 matrices."""
    return 4 * 8 * order * order


def assemble_tridiagonal(d: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    sizes = [x.shape[0] for x in d]
    offs = np.concatenate([[0], np.cumsum(sizes)])
    m = np.zeros((offs[-1], offs[-1]))
    for k, dk in enumerate(d):
        m[offs[k] : offs[k + 1], offs[k] : offs[k + 1]] = dk
    for k, bk in enumerate(b, start=1):
        m[offs[k - 1] : offs[k], offs[k] : offs[k + 1]] = bk
        m[offs[k] : offs[k + 1], offs[k - 1] : offs[k]] = bk.T
    return m


def balance(lmi: ChainLMI) -> tuple[ChainLMI, np.ndarray, float]:
    """Rescale every weight to unit norm: the same LMI up to congruence (§2).

    With ``W_k = s_k What_k`` and activations scaled by ``sigma_k = prod_{j<k} s_j`` (slope QCs
    are homogeneous), multipliers map as ``T_k = That_k / sigma_k^2`` and ``rho = rhohat *
    sigma_L^2``. Returns ``(scaled lmi, per-parameter factor 1/sigma_k^2, sigma_L^2)``. Deep
    nets whose norm product overflows the solver's range become O(1) problems. Every scale is
    an integer power of two, so the scaled weights (and radii) are exact unless they leave
    the normal range (see :func:`is_exact_balance`).
    """
    s = np.array([power_iteration(Dense(w), iters=30, tol=1e-3) for w in lmi.weights])
    s = np.where((s > 0) & np.isfinite(s), s, 1.0)  # a zero layer keeps its scale
    e = np.round(np.log2(s)).astype(int)  # W_k / 2^e_k is exact
    weights = tuple(np.ldexp(w, -ek) for w, ek in zip(lmi.weights, e))
    radii = tuple(None if r is None else np.ldexp(r, -ek) for r, ek in zip(lmi.radii, e))
    log2_sigma2 = 2 * np.concatenate([[0], np.cumsum(e)])  # log2 sigma_k^2, integers
    # the scaled LMI is D M D / sigma_L^2 with D = blkdiag(sigma_k I)
    factors = np.concatenate([np.full(qc.num_params(),
                                      math.ldexp(1.0, int(log2_sigma2[-1] - log2_sigma2[k])))
                              for k, qc in enumerate(lmi.qcs, start=1)])
    scaled = replace(lmi, weights=weights, radii=radii)
    return scaled, factors, math.ldexp(1.0, int(log2_sigma2[-1]))


def is_exact_balance(lmi: ChainLMI, scaled: ChainLMI, factors: np.ndarray, out: float) -> bool:
    """True if :func:`balance` rescaled every weight and radius without rounding and its
    factors are finite nonzero powers of two: then ``M_scaled(rho / out, T / factors)`` is an
    exact congruence of ``M(rho, T) / out`` and certifies it."""
    if not (np.isfinite(factors).all() and (factors > 0).all() and 0 < out < math.inf):
        return False
    for a, b in zip(lmi.weights + lmi.radii, scaled.weights + scaled.radii):
        if (a is None) != (b is None):
            return False
        if a is None:
            continue
        # x * 2^-e is exact unless the result is subnormal, zero or infinite
        nz = b != 0
        if not np.isfinite(b).all() or not np.array_equal(nz, a != 0) or \
                (np.abs(b[nz]) < 2.0**-1022).any():
            return False
    return True

