"""Structured interior-point solver for LipSDP with slope QCs (FORMULATIONS.md §1.2, §2, §5a).

The problem, in the multipliers ``y = (rho, t)``::

    minimise rho  s.t.  S(y) = rho E_0 - C^T C - sum_i t_g(i) U_i Q_i U_i^T >= 0,  t >= 0,

with ``U_i = [v_i, e_i]`` (neuron ``i``'s pre-activation row and its own coordinate) and
``Q_i = [[-2ab, a+b], [a+b, -2]]`` (§1.1). Every multiplier is a rank-two term, so the
Newton matrix of the log-det barrier, ``H_jl = tr(S^-1 F_j S^-1 F_l)``, needs only the
2x2 blocks ``U_i^T S^-1 U_j``: three n x n matrices (``V X V^T``, ``V X E^T``, ``E X E^T``)
built from one dense inverse and the weights, never an SDP solver's O(N^4) Schur system.

Dual-scaling potential reduction (the DSDP scheme): Newton steps on ``rho / mu - log det S``
with ``mu = (rho - lower) / (q N)``, line search on ``q N log(rho - lower) - log det S``.
``t >= 0`` needs no barrier: ``S_ii = 2 t_i`` on each neuron's own coordinate. One
factorisation of the Newton matrix serves every ``mu`` (``d(mu) = d1 / mu + d2``).

The optimality gap is *measured*: from the
Newton step ``d`` at ``y``, ``Z = mu (S^-1 - S^-1 dS S^-1)`` satisfies ``tr(Z E_0) = 1`` and
``<Z, A_j> = 0`` exactly, and is PSD when ``y - d`` is feasible (guaranteed when the Newton
decrement is below 1, the Dikin ellipsoid). Weak duality then gives
``rho_opt >= <Z, C^T C> = rho - mu (N - sum_j d_j s_j)``, maximised over ``mu``. Every iterate is
strictly feasible, so a time limit still returns certifiable multipliers; certification is
the caller's (§8), on the exact weights.

>>> import numpy as np
>>> from lipverify import Network
>>> from lipverify.ir.activations import SlopeRestricted
>>> net = Network.sequential([2 * np.eye(2), np.eye(2)], [SlopeRestricted.named("relu")])
>>> res = solve_chain_ipm(ChainLMI.from_network(net))
>>> round(res.rho, 6), bool(res.gap < 1e-6)   # L = 2 exactly
(4.0, True)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

from ...errors import NotApplicableError
from ...lmi.chain import MAX_CERTIFICATE_BYTES, ChainLMI, balance
from ...qc import SlopeQC

#: First trial step of the potential-reduction line search, over the Newton decrement.
STEP = 2.0
#: The start is rho = START_FACTOR * rho*(t0): strictly inside, not far from the boundary.
START_FACTOR = 1.1
#: Per-iteration trace at DEBUG level (logger ``lipverify.solvers.interior.potential``).
_log = logging.getLogger(__name__)
#: Largest working memory the solver may take (the dense certificate's limit).
IPM_MAX_BYTES = MAX_CERTIFICATE_BYTES


@dataclass(frozen=True)
class _Node:
    cols: np.ndarray  # columns of S the node's pre-activation reads
    v: np.ndarray  # (m, len(cols)): those rows of the pre-activation map
    start: int  # first neuron (row of the n x n matrices)


@dataclass(frozen=True)
class NeuronForm:
    """The LMI as ``rho E_0 - C^T C - sum_i t_g(i) U_i Q_i U_i^T`` (see module docstring).

    Neuron ``i``'s own coordinate is ``n_in + i``: every non-input coordinate of a slope-QC
    LMI is one neuron's output, in both chain and DAG layouts.
    """

    order: int
    n_in: int
    nodes: tuple[_Node, ...]
    q: np.ndarray  # (3, n): q11 = -2ab, q12 = a+b, q22 = -2 per neuron
    group: np.ndarray  # (n,) parameter index of each neuron (contiguous runs)
    n_params: int

    @property
    def n(self) -> int:
        return self.order - self.n_in


def ipm_reason(lmi) -> str | None:
    """Why the interior-point solver cannot take ``lmi`` (None if it can)."""
    bad = sorted({type(qc).__name__ for qc in lmi.qcs if not isinstance(qc, SlopeQC)})
    if bad:
        return f"it takes slope QCs only (found {', '.join(bad)})"
    need = ipm_bytes(lmi.order, sum(qc.n for qc in lmi.qcs))
    if need > IPM_MAX_BYTES:
        return (f"order {lmi.order} needs about {need / 2**30:.1f} GiB "
                f"(limit {IPM_MAX_BYTES / 2**30:.1f} GiB)")
    return None


def ipm_bytes(order: int, neurons: int) -> int:
    """Working memory of one iteration, for the largest of the three methods (the
    primal-dual ones hold X, S^-1, S, a direction and two products of order N, the 2x2
    blocks of U^T X U and U^T S^-1 U and the Schur matrix with its factor, n x n each, and
    temporaries: measured 11.8 GB peak for the chordal method at order 8976 with 8192
    neurons, where this gives 11.6 GB)."""
    return 8 * (11 * order * order + 8 * neurons * neurons)


def neuron_form(lmi) -> NeuronForm:
    """Neuron form of a :class:`ChainLMI` or :class:`DagLMI` whose QCs are all slope QCs."""

    if not all(isinstance(qc, SlopeQC) for qc in lmi.qcs):
        kinds = sorted({type(qc).__name__ for qc in lmi.qcs if not isinstance(qc, SlopeQC)})
        raise NotApplicableError(
            f"the interior-point solver takes slope QCs only (found {', '.join(kinds)}); "
            "use --solver smooth"
        )
    offs = np.concatenate([[0], np.cumsum(lmi.sizes)])
    nodes, qs, groups, p0 = [], [], [], 0
    for k, qc in enumerate(lmi.qcs, start=1):
        cols, v = lmi.node_inputs(k)
        if v.shape[0] != lmi.sizes[k]:
            raise NotApplicableError("the interior-point solver needs width-preserving nodes")
        nodes.append(_Node(cols, np.ascontiguousarray(v), int(offs[k] - offs[1])))
        a, b, n = qc.alpha, qc.beta, qc.n
        qs.append(np.tile([[-2.0 * a * b], [a + b], [-2.0]], (1, n)))
        groups.append(p0 + np.arange(n) // (n // qc.num_params()))
        p0 += qc.num_params()
    return NeuronForm(int(offs[-1]), int(offs[1]), tuple(nodes), np.hstack(qs),
                      np.concatenate(groups), p0)


@dataclass(frozen=True)
class IPMResult:
    params: np.ndarray
    rho: float  # rho of the last iterate (strictly feasible: rho > rho*(params))
    lower: float | None  # best dual lower bound on the SDP optimum (in rho), if any
    iterations: int
    seconds: float
    status: str
    algorithm: str = "dual-scaling"

    @property
    def gap(self) -> float | None:
        """Relative gap in rho, ``(rho - lower) / rho``."""
        if self.lower is None or self.rho <= 0:
            return None
        return max(self.rho - self.lower, 0.0) / self.rho


def cholesky_factor(s: np.ndarray) -> tuple[np.ndarray, float] | None:
    """``(Cholesky factor, log det S)`` (in place), or None when S is not positive definite."""
    # S is symmetric: its transpose is the same matrix in Fortran order (no copy for LAPACK)
    c, info = lapack.dpotrf(s.T, lower=1, clean=0, overwrite_a=1)
    if info != 0:
        return None
    return c, 2.0 * float(np.sum(np.log(np.diag(c))))


def factor_inverse(c: np.ndarray) -> np.ndarray:
    """``S^-1`` from its Cholesky factor (overwritten)."""
    x, info = lapack.dpotri(c, lower=1, overwrite_c=1)
    if info != 0:  # pragma: no cover - the factor is nonsingular
        raise np.linalg.LinAlgError("dpotri failed")
    x = np.tril(x)  # dpotri fills the lower triangle only
    d = x.diagonal().copy()
    x += x.T
    np.fill_diagonal(x, d)
    return x


def _reduce(h: np.ndarray, starts: np.ndarray | None, axis: int) -> np.ndarray:
    return h if starts is None else np.add.reduceat(h, starts, axis=axis)


@dataclass(frozen=True)
class Blocks:
    """The pieces of a symmetric ``Z`` that Newton/Schur matrices read: ``V Z V^T``,
    ``V Z E^T`` (and its transpose ``ev``, contiguous), ``E Z E^T`` (n x n), the input rows
    ``Z_0. V^T``, ``Z_0. E^T`` (n_0 x n) and ``Z_00``."""

    vv: np.ndarray
    ve: np.ndarray
    ev: np.ndarray
    ee: np.ndarray
    zv: np.ndarray
    ze: np.ndarray
    z00: np.ndarray

    @classmethod
    def of(cls, form: NeuronForm, z: np.ndarray) -> Blocks:
        n0, n = form.n_in, form.n
        zvt = np.empty((form.order, n))
        cols = [_span(nd.cols) for nd in form.nodes]
        for nd, c in zip(form.nodes, cols):  # Z V^T, node by node (V is block sparse)
            zvt[:, nd.start:nd.start + nd.v.shape[0]] = z[:, c] @ nd.v.T
        vv = np.empty((n, n))
        for nd, c in zip(form.nodes, cols):
            vv[nd.start:nd.start + nd.v.shape[0]] = nd.v @ zvt[c]
        return cls(vv, np.ascontiguousarray(zvt[n0:].T), zvt[n0:], z[n0:, n0:], zvt[:n0],
                   z[:n0, n0:], z[:n0, :n0])

    def trace(self, form: NeuronForm) -> np.ndarray:
        """``A(Z) = (tr F_j Z)_j`` in (rho, neuron) coordinates."""
        return neuron_traces(form, np.trace(self.z00), np.diag(self.vv), np.diag(self.ve),
                             np.diag(self.ee))


def _span(cols: np.ndarray):
    """A slice for a contiguous run of columns (views instead of fancy-index copies)."""
    if len(cols) and cols[-1] - cols[0] == len(cols) - 1:
        return slice(int(cols[0]), int(cols[-1]) + 1)
    return cols


def neuron_traces(form: NeuronForm, t00, vv, ve, ee) -> np.ndarray:
    """``(tr Z_00, tr(F_i Z)_i)`` from the diagonals ``v_i Z v_i``, ``v_i Z e_i``, ``e_i Z e_i``."""
    a, b, c = form.q
    return np.concatenate([[t00], -(a * vv + 2.0 * b * ve + c * ee)])


def newton_system(form: NeuronForm, x: np.ndarray, chunk: int = 128):
    """Gradient pieces ``s_j = tr(X F_j)`` and the Hessian ``H_jl = tr(X F_j X F_l)`` of
    ``-log det S`` in ``(rho, params)``, from ``X = S^-1``."""
    b = Blocks.of(form, x)
    dot = np.einsum
    input_parts = (float(np.trace(b.z00)), float(np.sum(b.z00 * b.z00)),
                   dot("ij,ij->j", b.zv, b.zv), dot("ij,ij->j", b.zv, b.ze),
                   dot("ij,ij->j", b.ze, b.ze))
    return _assemble_newton(form, b.vv, b.ve, b.ee, input_parts, chunk, gev=b.ev)


def _assemble_newton(form: NeuronForm, gvv, gve, gee, input_parts, chunk: int = 128, gev=None):
    """The Newton system from the 2x2 blocks ``U_i^T X U_j`` (``gvv = V X V^T``, ``gve = V X
    E^T``, ``gee = E X E^T``) and the input-block terms ``(tr X_00, ||X_00||_F^2, |z^v_i|^2,
    z^v_i . z^e_i, |z^e_i|^2)`` with ``z^v_i = X_0. v_i``, ``z^e_i = X_0. e_i``; ``gev``:
    ``gve`` transposed, if at hand (contiguous rows are faster than a transposed view)."""
    n = form.n
    a, b, c = form.q
    # s_i = tr(X F_i), F_i = -U_i Q_i U_i^T
    s_neuron = -(a * np.diag(gvv) + 2.0 * b * np.diag(gve) + c * np.diag(gee))
    starts = None
    if form.n_params != n:
        starts = np.flatnonzero(np.r_[True, np.diff(form.group) != 0])
    hp = np.zeros((form.n_params, form.n_params))
    relu = not np.any(a)
    for r0 in range(0, n, chunk):  # H = a_i B_vv + 2 b_i B_ve + c_i B_ee, B_* scaled by Q_j
        r = slice(r0, min(r0 + chunk, n))
        vv, ve, ee = gvv[r], gve[r], gee[r]
        ev = gve[:, r].T if gev is None else gev[r]
        b_ee = (2.0 * b) * (ev * ee) + c * (ee * ee)
        b_ve = b * (vv * ee + ve * ev) + c * (ve * ee)
        if relu:
            h = (2.0 * b[r])[:, None] * b_ve + c[r][:, None] * b_ee
        else:
            b_ee += a * (ev * ev)
            b_ve += a * (vv * ev)
            b_vv = a * (vv * vv) + (2.0 * b) * (vv * ve) + c * (ve * ve)
            h = a[r][:, None] * b_vv + (2.0 * b[r])[:, None] * b_ve + c[r][:, None] * b_ee
        h = _reduce(h, starts, 1)
        if starts is None:
            hp[r] = h
        else:
            np.add.at(hp, form.group[r], h)
    # the rho row: F_rho = E_0
    tr00, fro00, zvv, zve, zee = input_parts
    h_rho = -(a * zvv + 2.0 * b * zve + c * zee)
    m = form.n_params + 1
    hess = np.empty((m, m))
    hess[1:, 1:] = hp
    hess[0, 0] = fro00
    hess[0, 1:] = hess[1:, 0] = _reduce(h_rho, starts, 0)
    grad_s = np.concatenate([[tr00], _reduce(s_neuron, starts, 0)])
    return grad_s, hess


class _FullBarrier:
    """``-log det S`` through one dense Cholesky of the whole LMI (any slope-QC LMI)."""

    def __init__(self, lmi, form: NeuronForm):
        self.lmi, self.form = lmi, form

    def factor(self, p, rho):
        return cholesky_factor(self.lmi.assemble(p, rho))

    def newton(self, chol, p, rho):
        return newton_system(self.form, factor_inverse(chol))


class _ReducedBarrier:
    """Chains whose input block is ``rho I`` (no ``alpha beta`` term on layer 1, e.g. ReLU):
    eliminate it, ``det S = rho^n0 det S'`` with ``S' = S_hh - B^T B / rho`` of order N - n0
    (§2 forward recursion, first step). Everything the Newton system needs from ``S^-1``
    follows from ``P = S'^-1`` and ``G = W_1 W_1^T``, so a 784-input net costs like its
    hidden layers alone."""

    def __init__(self, lmi: ChainLMI, form: NeuronForm):
        self.lmi, self.form = lmi, form
        self.w1 = lmi.weights[0]
        self.n0, self.n1 = self.w1.shape[1], self.w1.shape[0]
        self.g = self.w1 @ self.w1.T
        self.c1 = form.q[1, : self.n1]  # a + b of layer 1, per neuron

    @staticmethod
    def applies(lmi, form: NeuronForm) -> bool:
        return lmi.kind == "chain" and form.n_in == lmi.weights[0].shape[1] and \
            not np.any(form.q[0, : lmi.weights[0].shape[0]]) and \
            lmi.weights[0].shape[1] > lmi.weights[0].shape[0]

    def _tau(self, p):
        return self.c1 * self.lmi.qcs[0].expand(self.lmi.split(p)[0])

    def factor(self, p, rho):
        if not rho > 0:
            return None
        n0, n1 = self.n0, self.n1
        s = self.lmi.assemble(p, rho)[n0:, n0:]
        tau = self._tau(p)
        s[:n1, :n1] -= (tau[:, None] * self.g * tau[None, :]) / rho
        fac = cholesky_factor(s)
        if fac is None:
            return None
        return fac[0], fac[1] + n0 * math.log(rho)

    def newton(self, chol, p, rho):
        form, n0, n1, g = self.form, self.n0, self.n1, self.g
        pm = factor_inverse(chol)  # P = S'^-1 = X_hh
        n = pm.shape[0]
        tau = self._tau(p)
        f = tau[:, None] * pm[:n1]  # F = diag(tau) P_1. ; X_0h = W_1^T F / rho
        k = f[:, :n1] * tau[None, :]  # K = diag(tau) P_11 diag(tau)
        gve = np.empty((n, n))
        gve[:n1] = (g @ f) / rho
        for nd in form.nodes[1:]:
            cols = nd.cols - n0
            gve[nd.start:nd.start + nd.v.shape[0]] = nd.v @ pm[cols]
        gvv = np.empty((n, n))
        kg = k @ g
        gvv[:n1, :n1] = g / rho + (g @ kg) / rho**2
        for nd in form.nodes[1:]:  # columns of later layers: gve[:, block] W^T
            blk = slice(nd.start, nd.start + nd.v.shape[0])
            gvv[:, blk] = gve[:, nd.cols - n0] @ nd.v.T
        gvv[n1:, :n1] = gvv[:n1, n1:].T
        # input-block terms: X_00 = I/rho + W1^T K W1 / rho^2, z^v = W1^T R, z^e = W1^T F / rho
        tr_kg = float(np.sum(k * g))
        fro00 = n0 / rho**2 + 2.0 * tr_kg / rho**3 + float(np.sum(kg * kg.T)) / rho**4
        tr00 = n0 / rho + tr_kg / rho**2
        r = np.empty((n1, n))
        r[:, :n1] = np.eye(n1) / rho + kg / rho**2
        for nd in form.nodes[1:]:
            blk = slice(nd.start, nd.start + nd.v.shape[0])
            r[:, blk] = (f[:, nd.cols - n0] @ nd.v.T) / rho
        re = f / rho
        gr, gre = g @ r, g @ re
        parts = (tr00, fro00, np.einsum("ij,ij->j", r, gr), np.einsum("ij,ij->j", r, gre),
                 np.einsum("ij,ij->j", re, gre))
        return _assemble_newton(form, gvv, gve, pm, parts)


def strict_start(lmi, params: np.ndarray | None) -> tuple[np.ndarray, float]:
    """A strictly feasible first iterate near ``params``: blended 1% toward the anchor first
    (the start itself, e.g. ldlt-fast's point, is too close to the boundary: measured 37
    instead of 27 primal-dual iterations on the bench's 64x16 net)."""
    anchor = lmi.anchor()
    best = None
    for cand in ([] if params is None else [lmi.project(params)]):
        for theta in (0.01, 0.1, 0.5):
            q = (1.0 - theta) * cand + theta * anchor  # strictly inside (theta > 0)
            r = lmi.rho_star(q)
            if math.isfinite(r) and np.all(q > 0):
                best = (q, r) if best is None or r < best[1] else best
                break
    if best is None:
        best = (anchor, lmi.rho_star(anchor))
    q, r = best
    return q, START_FACTOR * r + 1e-9 * max(r, 1.0) + 1e-300


def solve_ipm(lmi, start=None, *, tol: float = 1e-8, time_limit: float | None = None,
              max_iter: int = 300, reach: float = 1.1, reduce: bool = True) -> IPMResult:
    """Minimise rho over the slope-QC LMI by potential reduction (module docstring).

    ``tol``: stop when ``(rho - lower) / rho <= tol`` (the measured gap, in rho).
    ``start``: multipliers to start near (blended with the anchor to be strictly inside).
    """
    t0 = time.perf_counter()
    form = neuron_form(lmi)
    p, rho = strict_start(lmi, start)
    nu = form.order  # barrier parameter of -log det S
    lower, it, status = None, 0, "iteration limit"
    e0 = unit_vector(form.n_params + 1)
    bar = _ReducedBarrier(lmi, form) if reduce and _ReducedBarrier.applies(lmi, form) \
        else _FullBarrier(lmi, form)
    fac = None
    while it < max_iter:
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            status = "time limit"
            break
        if fac is None:  # the accepted line-search trial already factored S (reused)
            fac = bar.factor(p, rho)
        if fac is None:  # pragma: no cover - iterates stay strictly feasible
            status = "lost feasibility"
            break
        logdet = fac[1]
        s, hess = bar.newton(fac[0], p, rho)
        fac = None
        w = s  # -(gradient of -log det S); t >= 0 is implied: S_ii = 2 t_i (-Gww = 2T)
        # one factorisation gives the Newton step for every mu: d(kappa) = kappa d1 + d2
        sol = newton_solve(hess, np.column_stack([-e0, w]))
        if sol is None:
            status = "singular Newton system"
            break
        d1, d2 = sol[:, 0], sol[:, 1]
        q11, q12, q22 = -float(d1[0]), -float(d2[0]), float(d2 @ w)
        it += 1
        low = dual_bound(hess, d1, d2, w, rho, nu)
        if low is not None:
            lower = low if lower is None else max(lower, low)
        if lower is not None and rho - lower <= tol * rho:
            status = "optimal"
            break
        # potential reduction (DSDP): phi = q log(rho - lb) - log det S, q = reach * nu;
        # its gradient is the barrier gradient at mu = (rho - lb) / q
        lb = max(lower if lower is not None else 0.0, 0.0)
        q = reach * nu
        kappa = q / max(rho - lb, 1e-300 * rho)
        if not kappa < 1e150:  # rho has reached ~0 (a network with a zero layer)
            status = "optimal" if rho < 1e-100 else "stalled"
            break
        d = kappa * d1 + d2
        lam = math.sqrt(max(kappa * kappa * q11 + 2 * kappa * q12 + q22, 0.0))
        step = min(1.0, STEP / lam)
        del hess
        f0 = q * math.log(rho - lb) - logdet
        for _ in range(40):
            rn, pn = rho + step * d[0], p + step * d[1:]
            f1 = None
            if rn > lb:
                fac = bar.factor(pn, rn)
                f1 = None if fac is None else q * math.log(rn - lb) - fac[1]
            if f1 is not None and f1 <= f0 - 1e-4 * step * lam * lam:
                break
            step *= 0.5
        else:
            status = "line search failed"
            break
        rho, p = rn, pn
        _log.debug("it %d rho %.6e lower %s step %.3g decrement %.3g kappa %.3g",
                   it, rho, lower, step, lam, kappa)
    return IPMResult(p, float(rho), lower, it, time.perf_counter() - t0, status)


def dual_bound(hess: np.ndarray, d1: np.ndarray, d2: np.ndarray, w: np.ndarray, rho: float,
               nu: float) -> float | None:
    """The weak-duality bound from the Newton steps ``d(kappa) = kappa d1 + d2`` of
    ``kappa rho - log det S`` (``H d1 = -e_0``, ``H d2 = w``, ``w_j = tr(S^-1 F_j)``): for the
    largest kappa whose step stays in the Dikin ellipsoid (decrement 0.98 < 1),
    ``Z = (S^-1 - S^-1 dS S^-1) / kappa`` is exactly primal feasible and PSD, and
    ``rho_opt >= <Z, C^T C> = rho - (nu - d2.w) / kappa + d2_0``. None if there is none or
    the Newton system was not solved accurately."""
    q11, q12, q22 = -float(d1[0]), -float(d2[0]), float(d2 @ w)
    kappa = _root(q11, q12, q22, 0.98)
    if kappa is None or kappa <= 0 or \
            not _accurate(hess, kappa * d1 + d2, kappa * unit_vector(hess.shape[0]) - w):
        return None
    return rho - ((nu - q22) / kappa - q12)


def _accurate(hess: np.ndarray, d: np.ndarray, grad: np.ndarray, tol: float = 1e-7) -> bool:
    """The dual point is exact only if ``H d = -g`` holds: check the residual."""
    return float(np.linalg.norm(hess @ d + grad)) <= tol * float(np.linalg.norm(grad))


def unit_vector(m: int) -> np.ndarray:
    e = np.zeros(m)
    e[0] = 1.0
    return e


def _root(q11: float, q12: float, q22: float, level: float) -> float | None:
    """Largest kappa with ``kappa^2 q11 + 2 kappa q12 + q22 = level^2`` (the Newton decrement
    of the step for ``mu = 1/kappa``), None if there is none."""
    disc = q12 * q12 - q11 * (q22 - level * level)
    if q11 <= 0 or disc < 0:
        return None
    return (-q12 + math.sqrt(disc)) / q11


def newton_solve(h: np.ndarray, rhs: np.ndarray) -> np.ndarray | None:
    scale = np.sqrt(np.maximum(np.diag(h), 1e-300))  # Jacobi equilibration
    hs = h / scale[:, None] / scale[None, :]
    if rhs.ndim == 2:
        scale = scale[:, None]
    try:
        c = scipy.linalg.cho_factor(hs, lower=True, check_finite=False, overwrite_a=True)
        return scipy.linalg.cho_solve(c, rhs / scale, check_finite=False) / scale
    except (scipy.linalg.LinAlgError, ValueError):
        try:
            return np.linalg.lstsq(hs, rhs / scale, rcond=None)[0] / scale
        except np.linalg.LinAlgError:  # pragma: no cover
            return None


#: Chains with at least this many hidden layers use the primal-dual method
#: (:mod:`lipverify.solvers.interior.primal_dual`): 16-42 iterations where dual scaling
#: needs 75-300 (measured on the bench's deep nets);
#: on two hidden layers dual scaling's cheaper iterations win.
PRIMAL_DUAL_DEPTH = 3
#: ... and order above this: below it dual scaling's iterations are so cheap that it wins
#: (64-64x4-10, order 320: 0.6 s against 1.6 s; order 576: even).
PRIMAL_DUAL_ORDER = 600
#: Above this order, the primal-dual method keeps its primal on the block-tridiagonal pattern
#: (:mod:`lipverify.solvers.interior.chordal`): no N^3 products (64x64: about 8 s per iteration
#: instead of about 25 s), at the price of more iterations (no second-order correction).
CHORDAL_ORDER = 3000


def solve_chain_ipm(lmi, start=None, *, algorithm: str = "auto", **options) -> IPMResult:
    """The interior-point solve of a slope-QC LMI: ``algorithm`` "primal-dual"
    (:func:`lipverify.solvers.interior.primal_dual.solve_chain_pd`), "primal-dual chordal"
    (:func:`lipverify.solvers.interior.chordal.solve_chain_pd_chordal`, chains only), "dual-scaling"
    (:func:`solve_ipm` on the balanced chain, or directly on a DAG), or "auto" (primal-dual
    on chains with at least ``PRIMAL_DUAL_DEPTH`` hidden layers and order above
    ``PRIMAL_DUAL_ORDER``, chordal above ``CHORDAL_ORDER``)."""
    if algorithm not in ("auto", "primal-dual", "primal-dual chordal", "dual-scaling"):
        raise ValueError(f"unknown interior-point algorithm {algorithm!r}")
    chain = lmi.kind == "chain"
    if algorithm == "auto" and chain and len(lmi.qcs) >= PRIMAL_DUAL_DEPTH and \
            lmi.order > PRIMAL_DUAL_ORDER:
        algorithm = "primal-dual chordal" if lmi.order > CHORDAL_ORDER else "primal-dual"
    if algorithm == "primal-dual chordal":
        from .chordal import solve_chain_pd_chordal

        return solve_chain_pd_chordal(lmi, start, **options)
    if algorithm == "primal-dual":
        from .primal_dual import solve_chain_pd

        return solve_chain_pd(lmi, start, **options)
    return on_balanced(solve_ipm, lmi, start, rotated=False, **options)


def rotate(lmi: ChainLMI) -> tuple[ChainLMI, int]:
    """``(smaller chain, k)``: for ``n_0 > n_1``, ``W_1^T = Q R`` and the input rotated by
    ``[Q, Q_perp]`` leaves ``rho I_k`` (``k = n_0 - n_1``) decoupled from the rest, so
    ``S >= 0  <=>  S_small >= 0 and rho >= 0`` with the same multipliers. (Only the solvers
    use it; the certificate is always on the original weights.)"""
    w1 = lmi.weights[0]
    n1, n0 = w1.shape
    if n0 <= n1:
        return lmi, 0
    r = np.linalg.qr(w1.T, mode="r")  # W_1 Q = R^T
    return replace(lmi, weights=(np.ascontiguousarray(r.T), *lmi.weights[1:]),
                   radii=(None,) * len(lmi.weights)), n0 - n1


def on_balanced(solver, lmi, start=None, *, rotated: bool = True, **options) -> IPMResult:
    """``solver`` on the balanced chain (``rotated``: and, when the first layer narrows, on
    :func:`rotate`'s smaller LMI with ``scalar_cone=k``), the result mapped back to the
    original multipliers; a DAG is solved as it is."""
    if not lmi.kind == "chain":
        return solver(lmi, start, **options)
    scaled, factors, out = balance(lmi)
    if rotated:
        scaled, options["scalar_cone"] = rotate(scaled)
    res = solver(scaled, None if start is None else np.asarray(start) / factors, **options)
    return replace(res, params=res.params * factors, rho=res.rho * out,
                   lower=None if res.lower is None else res.lower * out)
