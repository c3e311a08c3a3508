"""LipSDP for any network in affine normal form: residual blocks, skips (FORMULATIONS.md §5a).

With ``z = (x_0, z_1, ..., z_K)`` (input and every activation node), node ``k`` sees
``v_k = V_k z`` (``V_k`` stacks its terms ``W_kj``) and outputs ``S_k z``; the output is
``C z``. The monolithic S-procedure LMI is

    M(rho, p) = rho E_0^T E_0 - C^T C - sum_k [V_k; S_k]^T Gamma_k(p_k) [V_k; S_k]  >= 0,

dense because skips couple the blocks. For fixed multipliers
``rho* = lambda_max(N_01 N_11^{-1} N_10 - N_00)`` (§8, "General rho*"), certified exactly as
the chain LMI. Dense linear algebra: meant for small and medium networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import scipy.linalg

from ..certify.rump import certify_pd
from ..errors import NotApplicableError
from ..ir.network import Network
from ..numerics import gamma, lambda_max, round_up, spectral_norm
from ..qc import QC
from ..solvers.smooth_rho import soft_max_eig
from .base import LMI
from .chain import MAX_CERTIFICATE_BYTES, dense_certificate_bytes, node_qcs


def _quad(a: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``A^T G B`` for diagonal (1-D) or full ``G``."""
    return (a.T * g) @ b if g.ndim == 1 else a.T @ g @ b


def _nonzero_columns(mat: np.ndarray, radius: np.ndarray | None) -> np.ndarray:
    used = np.any(mat != 0, axis=0)
    if radius is not None:
        used |= np.any(radius != 0, axis=0)
    return np.flatnonzero(used)


@dataclass(frozen=True, eq=False)
class DagLMI(LMI):
    kind: ClassVar[str] = "dag"
    sizes: tuple[int, ...]  # n_0 (input), n_1..n_K (nodes)
    pres: tuple[np.ndarray, ...]  # V_k: (m_k, N) dense, radii alongside
    pre_radii: tuple[np.ndarray | None, ...]
    out: np.ndarray  # C: (n_out, N)
    out_radius: np.ndarray | None
    qcs: tuple[QC, ...]

    @classmethod
    def from_network(cls, network: Network, per_neuron: bool | str = True) -> DagLMI:
        sizes = [network.input_dim, *(n.width for n in network.nodes)]
        total = sum(sizes)
        if dense_certificate_bytes(total) > MAX_CERTIFICATE_BYTES:
            raise NotApplicableError(
                f"{network.name}: the monolithic LMI has order {total}, too large to certify "
                "densely here; use --method naive"
            )
        offs = np.concatenate([[0], np.cumsum(sizes)])

        def stack(affine):
            mat = np.zeros((affine.n_out, total))
            rad = None
            for term in affine.terms:
                d, r = term.op.dense_with_radius()
                sl = slice(offs[term.source], offs[term.source + 1])
                mat[:, sl] += d
                if r is not None:
                    rad = np.zeros_like(mat) if rad is None else rad
                    rad[:, sl] += r
            if len(affine.terms) > 1:  # summing terms rounds too
                extra = gamma(len(affine.terms) + 1) * np.abs(mat) * 1.01
                rad = extra if rad is None else rad + extra
            return mat, rad

        pres, radii = [], []
        qcs = list(node_qcs(network, per_neuron))
        for node in network.nodes:
            mat, rad = stack(node.pre)
            pres.append(mat)
            radii.append(rad)
        if not qcs:
            raise NotApplicableError(f"{network.name} has no hidden layer")
        out, out_rad = stack(network.output)
        return cls(tuple(sizes), tuple(pres), tuple(radii), out, out_rad, tuple(qcs))

    def select(self, k: int) -> np.ndarray:
        offs = np.concatenate([[0], np.cumsum(self.sizes)])
        s = np.zeros((self.sizes[k], self.order))
        s[:, offs[k] : offs[k + 1]] = np.eye(self.sizes[k])
        return s

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)])

    @cached_property
    def layout(self):
        """Per reader (nodes, then the output): its columns as contiguous runs, and its matrix
        restricted to them: plain, ``|V| + R`` and ``|V|`` (computed once)."""
        out = []
        readers = [(v, r) for v, r in zip(self.pres, self.pre_radii)]
        for v, r in [*readers, (self.out, self.out_radius)]:
            sup = _nonzero_columns(v, r)
            breaks = np.flatnonzero(np.diff(sup) != 1) + 1
            runs, pos = [], 0
            for seg in np.split(sup, breaks):
                if seg.size:
                    runs.append((slice(int(seg[0]), int(seg[-1]) + 1),
                                 slice(pos, pos + seg.size)))
                    pos += seg.size
            sub = np.ascontiguousarray(v[:, sup])
            absolute = np.abs(sub)
            out.append((runs, sub, absolute + r[:, sup] if r is not None else absolute,
                        absolute))
        return out

    def node_inputs(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        runs, v, *_ = self.layout[k - 1]
        cols = np.concatenate([np.arange(z.start, z.stop) for z, _ in runs]) if runs \
            else np.zeros(0, dtype=int)
        return cols, v

    @staticmethod
    def _add(m, runs, block, rows=None):
        """``m[runs, runs] += block`` (or ``m[rows, runs]`` when ``rows`` is a slice)."""
        for zb, lb in runs:
            if rows is None:
                for za, la in runs:
                    m[za, zb] += block[la, lb]
            else:
                m[rows, zb] += block[:, lb]

    def assemble(self, params, rho: float, absolute: bool = False,
                 radii: bool = True) -> np.ndarray:
        """``M(rho, params)``, or with ``absolute`` the same with every term in absolute value
        and (with ``radii``) weights enlarged by their radii (``M_abs`` of §8). Each node's
        terms touch only the columns it reads and its own block."""
        sign = 1.0 if absolute else -1.0
        pick = 1 if not absolute else (2 if radii else 3)
        layout = self.layout
        m = np.zeros((self.order, self.order))
        runs, *mats = layout[-1]
        c = mats[pick - 1]
        self._add(m, runs, sign * (c.T @ c))
        offs = self.offsets
        for k, (qc, p) in enumerate(zip(self.qcs, self.split(params)), start=1):
            runs, *mats = layout[k - 1]
            v = mats[pick - 1]
            g = qc.blocks_abs(p) if absolute else qc.blocks(p)
            own = slice(offs[k], offs[k + 1])
            if np.any(g.vv):  # zero for ReLU-type slopes (alpha = 0): skip the big product
                self._add(m, runs, sign * _quad(v, g.vv, v))
            cross = sign * (v.T * g.vw if g.vw.ndim == 1 else v.T @ g.vw)
            self._add(m, runs, cross.T, rows=own)
            for zb, lb in runs:
                m[zb, own] += cross[lb, :]
            m[own, own] += sign * (np.diag(g.ww) if g.ww.ndim == 1 else g.ww)
        m[np.arange(self.sizes[0]), np.arange(self.sizes[0])] += abs(rho)
        return m

    def rho_star(self, params) -> float:
        m = self.assemble(params, 0.0)
        n0 = self.sizes[0]
        try:
            chol = scipy.linalg.cho_factor(m[n0:, n0:], lower=True, check_finite=False)
        except (scipy.linalg.LinAlgError, ValueError):
            return math.inf
        top = m[:n0, n0:] @ scipy.linalg.cho_solve(chol, m[n0:, :n0], check_finite=False)
        top = top - m[:n0, :n0]
        if not np.isfinite(top).all():  # overflow: no rho representable in float64
            return math.inf
        return max(lambda_max((top + top.T) / 2.0, "rho* (top Schur block)"), 0.0)

    def soft_rho(self, params, mu: float):
        """``(rho*, F_mu, grad F_mu)`` as ``smooth_rho.soft_rho`` does for chains."""
        out = self.soft_parts(params, mu)
        if out is None:
            return math.inf, math.inf, None
        lam1, soft, _, grad = out
        return max(lam1, 0.0), soft, grad

    def soft_parts(self, params, mu: float):
        """One dense Schur complement onto the input block; the weighted null vectors
        ``z = (u, -N_11^{-1} N_10 u)`` give the gradient through each node's QC (§2)."""
        m = self.assemble(params, 0.0)
        n0 = self.sizes[0]
        try:
            chol = scipy.linalg.cho_factor(m[n0:, n0:], lower=True, check_finite=False)
        except (scipy.linalg.LinAlgError, ValueError):
            return None
        x = scipy.linalg.cho_solve(chol, m[n0:, :n0], check_finite=False)
        top = m[:n0, n0:] @ x - m[:n0, :n0]
        lam1, soft, u = soft_max_eig((top + top.T) / 2.0, mu)
        z = np.vstack([u, -x @ u])
        offs = self.offsets
        grads = [qc.value_grad(v @ z, z[offs[k]:offs[k + 1]])
                 for k, (qc, v) in enumerate(zip(self.qcs, self.pres), start=1)]
        return lam1, soft, z, np.concatenate(grads)

    def _nodes_pd(self, params) -> bool:
        n0 = self.sizes[0]
        try:
            scipy.linalg.cholesky(self.assemble(params, 0.0)[n0:, n0:], lower=True,
                                  check_finite=False, overwrite_a=True)
        except (scipy.linalg.LinAlgError, ValueError):
            return False
        return True

    def anchor(self) -> np.ndarray:
        """Feasible multipliers, built backward like the chain anchor (§6.1) with one term per
        edge: ``tau_k = g (sum_j s_j f_j tau_j ||V_jk||^2 + s_out ||C_k||^2)`` over the
        consumers ``j`` of node ``k`` (``s`` their number of sources: Cauchy-Schwarz,
        ``f`` the QC's anchor factor); ``g`` doubles until the node block is positive
        definite (then rho* is finite)."""
        offs = self.offsets
        k_last = len(self.qcs)

        def block_norm2(mat, k):
            blk = mat[:, offs[k]:offs[k + 1]]
            return spectral_norm(blk) ** 2 if np.any(blk) else 0.0

        srcs = [[k for k in range(k_last + 1) if np.any(v[:, offs[k]:offs[k + 1]])]
                for v in self.pres]
        out_srcs = [k for k in range(k_last + 1) if np.any(self.out[:, offs[k]:offs[k + 1]])]
        edge = {(j, k): block_norm2(self.pres[j - 1], k)
                for j in range(1, k_last + 1) for k in srcs[j - 1] if k >= 1}
        out_edge = {k: block_norm2(self.out, k) for k in out_srcs if k >= 1}
        growth = 1.0
        for _ in range(100):
            taus = [0.0] * (k_last + 1)
            for k in range(k_last, 0, -1):
                t = len(out_srcs) * out_edge.get(k, 0.0)
                for j in range(k + 1, k_last + 1):
                    if (j, k) in edge:
                        t += len(srcs[j - 1]) * self.qcs[j - 1].anchor_factor * taus[j] \
                            * edge[(j, k)]
                taus[k] = growth * max(t, 1e-12)
            # doubled at the end, as the chain anchor: every pivot gains a strict margin
            params = np.concatenate([qc.anchor_params(2.0 * x)
                                     for qc, x in zip(self.qcs, taus[1:])])
            if self._nodes_pd(params):  # then rho* is finite
                return params
            growth *= 1.5
        raise NotApplicableError("no feasible multipliers found for this network")

    def radius(self, params, rho) -> np.ndarray:
        """Entrywise bound on ``|fl(M) - M_exact|``: assembly rounding (§8) plus the effect of
        the weights' own radii, ``M_abs(|W| + R) - M_abs(|W|)`` (as for the chain LMI)."""
        inner = max(max(v.shape[0] for v in self.pres), self.out.shape[0], self.order)
        m_abs = self.assemble(params, rho, absolute=True)
        rad = gamma(2 * inner + 8) * 1.01 * m_abs
        if self.out_radius is not None or any(r is not None for r in self.pre_radii):
            rad = rad + (m_abs - self.assemble(params, rho, absolute=True, radii=False))
        return rad * (1.0 + 1e-12)


def verify_dag(lmi: DagLMI, params, rho: float) -> bool:
    """The §8 check for the monolithic LMI at given multipliers (already in their set)."""
    params = np.asarray(params, dtype=np.float64)
    if params.shape != (sum(lmi.param_sizes),) or not np.array_equal(lmi.project(params), params):
        return False
    return certify_pd(lmi.assemble(params, rho), lmi.radius(params, rho))


def certify_dag(lmi: DagLMI, params):
    """§8 for the monolithic LMI: project, blend toward the anchor if needed, inflate, check."""
    from ..certify.gate import ABSOLUTE_MARGIN, LARGE_ORDER, smallest_margin

    p = lmi.project(params)
    anchor, theta, unit = None, 0.0, None
    while True:
        q = p if theta == 0.0 else (1.0 - theta) * p + theta * anchor
        rho = lmi.rho_star(q)
        if math.isfinite(rho):
            if unit is None:  # the absolute margin, relative to the network's scale of rho
                unit = lmi.rho_star(lmi.anchor())
                unit = ABSOLUTE_MARGIN * (unit if 0 < unit < math.inf else 1.0)
            found = smallest_margin(lambda r, q=q: verify_dag(lmi, q, r), rho,
                                    steps=3 if lmi.order <= LARGE_ORDER else 1, unit=unit)
            if found is not None:
                return round_up(math.sqrt(found[0])), q, found[0], theta
        if theta >= 1.0:
            return math.inf, q, math.inf, theta
        if anchor is None:
            anchor = lmi.anchor()
        theta = min(1.0, 1e-6 if theta == 0.0 else 2.0 * theta)
