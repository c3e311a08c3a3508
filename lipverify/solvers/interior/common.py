"""What the interior-point solvers share (FORMULATIONS.md §1.2, §2): the neuron form of a
slope-QC LMI, the rank-two Newton blocks ``U_i^T S^-1 U_j``, strict starts, the dual bound of
a Newton step, the balancing and the input rotation of chains."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

from ...errors import NotApplicableError
from ...lmi.chain import MAX_CERTIFICATE_BYTES, ChainLMI, balance
from ...qc import SlopeQC

#: The start is rho = START_FACTOR * rho*(t0): strictly inside, not far from the boundary.
START_FACTOR = 1.1


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
        q = np.empty((3, n))  # slopes are floats or per-neuron arrays: broadcast either way
        q[0], q[1], q[2] = -2.0 * a * b, a + b, -2.0
        qs.append(q)
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
    return assemble_newton(form, b.vv, b.ve, b.ee, input_parts, chunk, gev=b.ev)


def assemble_newton(form: NeuronForm, gvv, gve, gee, input_parts, chunk: int = 128, gev=None):
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
