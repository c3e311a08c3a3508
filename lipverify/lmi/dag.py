"""LipSDP for any network in affine normal form: residual blocks, skips (FORMULATIONS.md §5a).

With ``z = (x_0, z_1, ..., z_K)`` (input and every activation node), node ``k`` sees
``v_k = V_k z`` (``V_k`` stacks its terms ``W_kj``) and outputs ``S_k z``; the output is
``C z``. The monolithic S-procedure LMI is

    M(rho, p) = rho E_0^T E_0 - C^T C - sum_k [V_k; S_k]^T Gamma_k(p_k) [V_k; S_k]  >= 0,

dense because skips couple the blocks. For fixed multipliers
``rho* = lambda_max(N_01 N_11^{-1} N_10 - N_00)`` (§8, "General rho*"), certified exactly as
the chain LMI. Dense linear algebra: meant for small and medium networks.

**(c) Grouped form [derived].** In the coordinates ``z`` above (post-activations, not the
increments of §5a), node ``k``'s term ``[V_k; S_k]^T Gamma_k [V_k; S_k]`` touches only the
blocks node ``k`` reads and its own; ``C^T C`` only those the output reads. Group the blocks
into consecutive runs ``G_0 = {input}, G_1, ..., G_m`` such that every node of ``G_g`` reads
only ``G_{g-1} u G_g`` and the output only ``G_{m-1} u G_m`` (:func:`group_starts`; a ResNet
block whose add feeds an activation puts its two convolutions in one group). Then

    M(rho, p) = rho E_0^T E_0 + sum_{g=1..m} E_g^T Z_g(p) E_g,

with ``Z_g`` (order ``|G_{g-1}| + |G_g|``) the terms of group ``g``'s nodes (and ``-C^T C``
in ``Z_m``), and ``E_g`` selecting ``G_{g-1} u G_g``: ``M`` is block tridiagonal over the
groups, and everything the chain does per layer holds per group.

* ``rho*`` by the backward Schur recursion over the groups (§2): pivots of order ``|G_g|``.
* The §8 certificate clique by clique (§3, §8 "Chordal form"): the splitting matrices
  ``Q_g`` cancel in the sum, so ``Z_g + diag(Q_{g-1}, -Q_g) > 0`` for every ``g`` proves
  ``M > 0``; each clique carries the radius of its own assembly, as the dense check does.
* Nothing of order ``N`` is factored: resnet_2b (order 9316) has groups 3072 | 2048 | 2048
  | 2048 | 100 and cliques of order at most 5120.

The LMI is the same as (a) (same multipliers, same optimum); only its factorisation
changes. A network whose skips span more than one group boundary collapses into fewer,
larger groups (one group: the dense path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, partial
from typing import ClassVar

import numpy as np
import scipy.linalg

from ..certify.rump import certify_pd
from ..errors import NotApplicableError
from ..ir.network import Network
from ..numerics import gamma, lambda_max, round_up, spectral_norm
from ..qc import QC
from ..solvers.smooth_rho import schur_top, soft_max_eig
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


#: The grouped form's soft maximum weighs at most this many eigenpairs (each is a column
#: through every pivot; resnet_2b at mu = 1e-2 rho: 5 s an evaluation uncapped).
SOFT_MAX_PAIRS = 64


def group_starts(reads) -> tuple[int, ...]:
    """First block of each group: consecutive blocks (0 the input, k node k) grouped, the
    input alone in group 0, so that every node reads only its own group and the one before,
    and the output (the last entry of ``reads``) only the last two. Then ``M`` is block
    tridiagonal over the groups (§5c). Greedy, so groups are as small as the skips allow:
    a chain gets one block each; resnet_2b 3072 | 2048 | 2048 | 2048 | 100.

    >>> group_starts([(0,), (1,), (1, 2), (3,), (3, 4), (5,)])  # two residual blocks
    (0, 1, 2, 4)
    """
    starts = [0]
    for k, src in enumerate(reads[:-1], start=1):
        lo = min(src, default=k)
        if lo >= starts[-1]:
            starts.append(k)  # k opens a group: it reads only the group before
            continue
        while len(starts) > 2 and lo < starts[-2]:
            starts.pop()  # it reads further back: merge the last two groups
    lo = min(reads[-1], default=len(reads) - 1)
    while len(starts) > 2 and lo < starts[-2]:
        starts.pop()
    return tuple(starts)


def network_groups(network: Network) -> list[int]:
    """Sizes of the groups of ``network``'s LMI (:func:`group_starts`), from its graph alone."""
    reads = [tuple(t.source for t in aff.terms)
             for aff in [*(n.pre for n in network.nodes), network.output]]
    sizes = [network.input_dim, *(n.width for n in network.nodes)]
    bounds = [*group_starts(reads), len(sizes)]
    return [sum(sizes[a:b]) for a, b in zip(bounds, bounds[1:])]


def dag_bytes(network: Network) -> int:
    """Memory of a :class:`DagLMI` and its certificate: the pre-activation maps over all
    coordinates (with their restricted copies, 4x) and the dense certificate of the largest
    clique (§5c), or of the whole LMI when there is one group."""
    groups = network_groups(network)
    total = sum(groups)
    rows = sum(n.width for n in network.nodes) + network.output_dim
    largest = max(a + b for a, b in zip(groups, groups[1:])) if len(groups) > 2 else total
    return 4 * 8 * rows * total + dense_certificate_bytes(largest)


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
        need = dag_bytes(network)
        if need > MAX_CERTIFICATE_BYTES:
            raise NotApplicableError(
                f"{network.name}: the LMI has order {total}; its data and certificate need "
                f"about {need / 2**30:.1f} GiB (limit {MAX_CERTIFICATE_BYTES / 2**30:.1f} "
                "GiB); use --method auto (lipsdp-split or naive)"
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

    @classmethod
    def _place(cls, m, runs, v, g, own: slice, sign: float) -> None:
        """Add one node's QC term ``sign [V; S]^T G [V; S]`` to ``m``: ``V`` on the column
        ``runs`` it reads, ``S`` on its ``own`` block."""
        if np.any(g.vv):  # zero for ReLU-type slopes (alpha = 0): skip the big product
            cls._add(m, runs, sign * _quad(v, g.vv, v))
        cross = sign * (v.T * g.vw if g.vw.ndim == 1 else v.T @ g.vw)
        cls._add(m, runs, cross.T, rows=own)
        for zb, lb in runs:
            m[zb, own] += cross[lb, :]
        m[own, own] += sign * (np.diag(g.ww) if g.ww.ndim == 1 else g.ww)

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
            self._place(m, runs, v, g, slice(offs[k], offs[k + 1]), sign)
        m[np.arange(self.sizes[0]), np.arange(self.sizes[0])] += abs(rho)
        return m

    # ------------------------------------------------------------ groups (§5c)
    @cached_property
    def reads(self) -> tuple[tuple[int, ...], ...]:
        """Per reader (nodes 1..K, then the output): the blocks it reads (0 is the input)."""
        offs = self.offsets
        out = []
        for v, r in [*zip(self.pres, self.pre_radii), (self.out, self.out_radius)]:
            used = _nonzero_columns(v, r)
            out.append(tuple(sorted({int(j) for j in
                                     np.searchsorted(offs, used, side="right") - 1})))
        return tuple(out)

    @cached_property
    def groups(self) -> tuple[int, ...]:
        """First block of each group (:func:`group_starts` of what each reader reads)."""
        return group_starts(self.reads)

    @property
    def group_sizes(self) -> list[int]:
        bounds = [*self.groups, len(self.sizes)]
        return [sum(self.sizes[a:b]) for a, b in zip(bounds, bounds[1:])]

    def clique(self, params, g: int, absolute: bool = False, radii: bool = True,
               output: bool = True) -> np.ndarray:
        """The terms of group ``g``'s nodes (and, for the last group, the output term unless
        ``output`` is False) on the columns of groups ``g - 1`` and ``g``: ``M(0, params)`` is
        the sum of these cliques placed on the diagonal (§5c). Same assembly (and
        ``absolute`` / ``radii`` meaning) as :meth:`assemble`."""
        bounds = [*self.groups, len(self.sizes)]
        offs = self.offsets
        c0, c1 = int(offs[bounds[g - 1]]), int(offs[bounds[g + 1]])
        m = np.zeros((c1 - c0, c1 - c0))
        sign = 1.0 if absolute else -1.0
        pick = 0 if not absolute else (1 if radii else 2)
        splits = self.split(params)

        def local(runs):
            return [(slice(z.start - c0, z.stop - c0), lb) for z, lb in runs]

        readers = list(range(bounds[g], bounds[g + 1]))
        for k in readers:
            runs, *mats = self.layout[k - 1]
            runs, v = local(runs), mats[pick]
            qc = self.qcs[k - 1]
            gb = qc.blocks_abs(splits[k - 1]) if absolute else qc.blocks(splits[k - 1])
            self._place(m, runs, v, gb, slice(int(offs[k]) - c0, int(offs[k + 1]) - c0), sign)
        if g == len(self.groups) - 1 and output:
            runs, *mats = self.layout[-1]
            c = mats[pick]
            self._add(m, local(runs), sign * (c.T @ c))
        return m

    def clique_inner(self, g: int) -> int:
        """Largest inner dimension of the products in clique ``g`` (the n-bar of §8)."""
        bounds = [*self.groups, len(self.sizes)]
        rows = [self.pres[k - 1].shape[0] for k in range(bounds[g], bounds[g + 1])]
        if g == len(self.groups) - 1:
            rows.append(self.out.shape[0])
        return max([*rows, sum(self.group_sizes[g - 1:g + 1])])

    def blocks(self, params, rho: float = 0.0, absolute: bool = False, output: bool = True):
        """``M(rho, params)`` as diagonal blocks and upper couplings over the groups (§5c),
        the layout of :meth:`lipverify.lmi.chain.ChainLMI.blocks` (without the output term
        ``-C^T C`` when ``output`` is False)."""
        sizes = self.group_sizes
        d = [np.zeros((n, n)) for n in sizes]
        b = []
        for g in range(1, len(sizes)):
            m = self.clique(params, g, absolute, output=output)
            n = sizes[g - 1]
            d[g - 1] += m[:n, :n]
            b.append(np.ascontiguousarray(m[:n, n:]))
            d[g] += m[n:, n:]
        d[0][np.diag_indices(sizes[0])] += abs(rho)
        return d, b

    @property
    def grouped(self) -> bool:
        """More than one group after the input: the block recursion beats dense algebra."""
        return len(self.groups) > 2

    def rho_star(self, params) -> float:
        if self.grouped:  # §5c: the backward recursion over the groups (§2)
            top, _, _ = schur_top(self, params)
            if top is None or not top.finite():
                return math.inf
            return max(top.lambda_max("rho* (top Schur block)"), 0.0)
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
        """One dense Schur complement onto the input block (grouped: the block recursion over
        the groups, §5c); the weighted null vectors ``z = (u, -N_11^{-1} N_10 u)`` give the
        gradient through each node's QC (§2)."""
        if self.grouped:
            top, chols, b = schur_top(self, params)
            if top is None or not top.finite():
                return None
            lam1, soft, u = top.soft_max(mu, SOFT_MAX_PAIRS)
            zs = [u]
            for g in range(1, len(chols)):
                zs.append(-scipy.linalg.cho_solve(chols[g], b[g - 1].T @ zs[-1],
                                                  check_finite=False))
            return lam1, soft, *self._node_grads(np.vstack(zs))
        m = self.assemble(params, 0.0)
        n0 = self.sizes[0]
        try:
            chol = scipy.linalg.cho_factor(m[n0:, n0:], lower=True, check_finite=False)
        except (scipy.linalg.LinAlgError, ValueError):
            return None
        x = scipy.linalg.cho_solve(chol, m[n0:, :n0], check_finite=False)
        top = m[:n0, n0:] @ x - m[:n0, :n0]
        lam1, soft, u = soft_max_eig((top + top.T) / 2.0, mu)
        return lam1, soft, *self._node_grads(np.vstack([u, -x @ u]))

    def _node_grads(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offs = self.offsets
        grads = [qc.value_grad(v @ z, z[offs[k]:offs[k + 1]])
                 for k, (qc, v) in enumerate(zip(self.qcs, self.pres), start=1)]
        return z, np.concatenate(grads)

    def _nodes_pd(self, params) -> bool:
        if self.grouped:  # every pivot of the group recursion positive definite (§5c)
            return schur_top(self, params)[0] is not None
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
        definite (then rho* is finite). Computed once per LMI (resnet_3b2: 19 s)."""
        return self._anchor.copy()

    @cached_property
    def _anchor(self) -> np.ndarray:
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
    """The §8 check of ``M(rho, params) > 0`` at given multipliers (already in their set):
    one dense test, or, on a grouped LMI (§5c), clique by clique over its groups (§3) when
    the dense test is too large or fails."""
    from ..certify.chordal import ChordalCertificate, dag_cliques
    from ..certify.gate import LARGE_ORDER

    params = np.asarray(params, dtype=np.float64)
    if params.shape != (sum(lmi.param_sizes),) or not np.array_equal(lmi.project(params), params):
        return False
    if not lmi.grouped or lmi.order <= LARGE_ORDER:
        if certify_pd(lmi.assemble(params, rho), lmi.radius(params, rho), overwrite=True):
            return True
    return lmi.grouped and \
        ChordalCertificate(None, params, cliques=dag_cliques(lmi, params)).check(rho)


def certify_dag(lmi: DagLMI, params):
    """§8 for the monolithic LMI: project, blend toward the anchor if needed, inflate, check."""
    from ..certify.chordal import ChordalCertificate, dag_cliques
    from ..certify.gate import ABSOLUTE_MARGIN, LARGE_ORDER, smallest_margin

    p = lmi.project(params)
    anchor, theta, unit = None, 0.0, None
    while True:
        q = p if theta == 0.0 else (1.0 - theta) * p + theta * anchor
        if lmi.grouped:  # §5c: clique by clique over the groups (§3, §8 "Chordal form")
            chordal = ChordalCertificate(None, q, cliques=dag_cliques(lmi, q))
            rho, check = chordal.rho_star, chordal.check
        else:
            rho = lmi.rho_star(q)
            check = partial(verify_dag, lmi, q)
        if math.isfinite(rho):
            if unit is None:  # the absolute margin, relative to the network's scale of rho
                unit = lmi.anchor_rho
                unit = ABSOLUTE_MARGIN * (unit if 0 < unit < math.inf else 1.0)
            found = smallest_margin(check, rho, steps=3 if lmi.order <= LARGE_ORDER else 1,
                                    unit=unit)
            if found is not None:
                return round_up(math.sqrt(found[0])), q, found[0], theta
        if theta >= 1.0:
            return math.inf, q, math.inf, theta
        if anchor is None:
            anchor = lmi.anchor()
        theta = min(1.0, 1e-6 if theta == 0.0 else 2.0 * theta)
