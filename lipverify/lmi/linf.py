"""l-infinity LipSDP for one output row (FORMULATIONS.md §1.4), certified as in §8.

For a scalar output ``c^T x_{L-1}``: ``|f(x) - f(y)| <= rho ||x - y||_inf`` if
``[[2 rho - 1^T tau, -c^T E_{L-1}], [., P(tau, T)]] >= 0`` with ``P`` the block-tridiagonal
LipSDP matrix whose first block is ``diag(tau) - W_1^T Gvv W_1`` and whose last block has
no output term. For fixed multipliers ``rho* = (1^T tau + c^T P^{-1} c) / 2`` (§8,
"l-infinity"), a smooth convex function minimised directly by L-BFGS-B.

:class:`LinfRowLMI` (kind ``"linf-row"``) is this bordered LMI under the :class:`LMI`
contract; the free functions below take either it or the row's :class:`ChainLMI`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import scipy.linalg

from ..certify.rump import certify_pd
from ..errors import NotApplicableError
from ..ir.network import Network
from ..numerics import gamma, lambda_max, round_up
from ..qc import QC
from .base import LMI
from .chain import ChainLMI, assemble_tridiagonal


@dataclass(frozen=True, eq=False)
class LinfCertificate:
    """Outcome of §8 on the bordered matrix of §1.4. ``bound`` (``rho`` rounded up once) is
    meaningful only when ``ok``; ``rho`` is the value the check passed at; ``theta`` is the
    blend weight toward :func:`start_params` of the point certified (for a polished point:
    of the point its polish started from, see :func:`best_blend`)."""

    ok: bool
    bound: float
    params: np.ndarray
    margin: float
    rho: float = math.inf
    theta: float = 0.0
    polished: bool = False


@dataclass(frozen=True, eq=False)
class LinfRowLMI(LMI):
    """The bordered l-infinity LMI of one output row (FORMULATIONS.md §1.4) as an :class:`LMI`.

    Wraps the :class:`ChainLMI` of a network with a single output ``c^T`` (its last weight).
    Matrix coordinates are ``(s, x_0, x_1, ..., x_{L-1})``: one border scalar ``s`` for rho,
    then the chain's blocks, so ``order == chain.order + 1``. ``sizes`` keeps the contract's
    meaning that block ``k >= 1`` is node ``k``: the border shares block 0 with the input,
    ``sizes = (1 + n_0, n_1, ..., n_{L-1})``. Parameters are ``[tau (n_0, >= 0), T]`` with
    ``T`` the chain's QC multipliers; ``param_sizes``/``split``/``project`` treat ``tau`` as
    one extra nonnegative block in front. The bound is ``rho`` itself, not ``sqrt(rho)``.

    >>> import numpy as np, lipverify
    >>> from lipverify.ir.activations import SlopeRestricted
    >>> net = lipverify.Network.sequential([np.eye(2), np.ones((1, 2))],
    ...                                    [SlopeRestricted.named("relu")])
    >>> row = LinfRowLMI.from_network(net)
    >>> row.kind, row.order, row.sizes, row.param_sizes
    ('linf-row', 5, (3, 2), [2, 2])
    """

    chain: ChainLMI
    kind: ClassVar[str] = "linf-row"

    def __post_init__(self):
        if self.chain.weights[-1].shape[0] != 1:
            raise NotApplicableError(
                f"{self.chain.name}: the l-infinity LMI takes one output row (§1.4), this "
                f"chain has {self.chain.weights[-1].shape[0]}; select one with "
                "network.select_outputs([j])"
            )

    @classmethod
    def from_network(cls, network: Network, per_neuron: bool | str = True) -> LinfRowLMI:
        """The row LMI of a feed-forward ``network`` with a single output (§1.4)."""
        return cls(ChainLMI.from_network(network, per_neuron=per_neuron))

    # ------------------------------------------------------------ bookkeeping
    @property
    def qcs(self) -> tuple[QC, ...]:
        return self.chain.qcs

    @property
    def name(self) -> str:
        return self.chain.name

    @property
    def sizes(self) -> tuple[int, ...]:
        """``(1 + n_0, n_1, ..., n_{L-1})``: the border scalar joins the input block."""
        s = self.chain.sizes
        return (1 + s[0], *s[1:])

    @property
    def n_tau(self) -> int:
        return self.chain.sizes[0]

    @property
    def param_sizes(self) -> list[int]:
        """``tau`` (one per input coordinate) first, then one block per QC."""
        return [self.n_tau, *self.chain.param_sizes]

    def project(self, params) -> np.ndarray:
        """Exact projection (§8 step 3): ``tau <- max(tau, 0)``, each QC's own projection."""
        tau, t = _parts(self.chain, params)
        return np.concatenate([np.maximum(tau, 0.0), self.chain.project(t)])

    def lower_bounds(self) -> list[float | None]:
        """Per-parameter lower bounds (L-BFGS-B box): 0 for ``tau``, the QCs' own after."""
        return [0.0] * self.n_tau + [lo for qc in self.qcs for lo in qc.lower_bounds()]

    @property
    def inner_dim(self) -> int:
        return self.chain.inner_dim

    # --------------------------------------------------------------- contract
    def assemble(self, params, rho: float, absolute: bool = False) -> np.ndarray:
        """The bordered matrix ``[[2 rho - 1^T tau, -c^T E], [., P(tau, T)]]`` of §1.4; with
        ``absolute`` every term in absolute value with weights enlarged by their radii
        (``M_abs`` of §8, the output row ``c`` included)."""
        x = np.asarray(params, dtype=np.float64)
        tau = x[: self.n_tau]
        c = _chat(self.chain)
        p = _p_matrix(self.chain, x, absolute=absolute)
        if absolute:
            corner = 2.0 * abs(rho) + float(np.abs(tau).sum())
            c = np.abs(c)
            rc = self.chain.radii[-1]
            if rc is not None:
                c[c.size - rc.size :] += rc.ravel()
            edge = c
        else:
            corner = 2.0 * rho - float(tau.sum())
            edge = -c
        m = np.empty((self.order, self.order))
        m[0, 0] = corner
        m[0, 1:] = edge
        m[1:, 0] = edge
        m[1:, 1:] = p
        return m

    def rho_star(self, params) -> float:
        """``(1^T tau + c^T P^{-1} c) / 2`` (§8 "l-infinity"); inf where ``P`` is not PD."""
        rho, _ = rho_and_grad(self.chain, params)
        return rho if math.isfinite(rho) else math.inf

    def anchor(self) -> np.ndarray:
        """Strictly feasible ``[tau, T]`` (§6.1 anchor, §8 step 4): :func:`start_params`."""
        return start_params(self.chain)

    def soft_rho(self, params, mu: float):
        """``(rho*, F_mu, grad F_mu)`` with ``F_mu = rho*`` for every ``mu``: here ``rho*`` is
        no maximum eigenvalue but ``(1^T tau + c^T P^{-1} c) / 2`` (§1.4, §8 "l-infinity"),
        already smooth and convex on ``P > 0``, so no smoothing (§2) is needed; its exact
        gradient is :func:`rho_and_grad`'s. ``(inf, inf, None)`` where ``P`` is not PD."""
        rho, grad = rho_and_grad(self.chain, params)
        if grad is None or not math.isfinite(rho):
            return math.inf, math.inf, None
        return rho, rho, grad

    def node_inputs(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The chain's columns of node ``k``, shifted by one for the border, and ``W_k``."""
        cols, v = self.chain.node_inputs(k)
        return cols + 1, v

    # ------------------------------------------------------------ algorithms
    def minimize(self, start=None, max_iter: int = 3000):
        """``(params, rho*)``: L-BFGS-B on the smooth ``rho*`` (:func:`minimize`)."""
        return minimize(self.chain, start, max_iter)


def _chain_of(lmi) -> ChainLMI:
    """The row's :class:`ChainLMI`, given it or its :class:`LinfRowLMI`."""
    return lmi.chain if lmi.kind == "linf-row" else lmi


def _parts(lmi: ChainLMI, params):
    n0 = lmi.sizes[0]
    return np.asarray(params[:n0], dtype=np.float64), np.asarray(params[n0:], dtype=np.float64)


def _p_matrix(lmi: ChainLMI, params, absolute: bool = False) -> np.ndarray:
    tau, t = _parts(lmi, params)
    d, b = lmi.blocks(t, 0.0, absolute=absolute, output=False)
    d[0] = d[0] + np.diag(np.abs(tau) if absolute else tau)
    return assemble_tridiagonal(d, b)


def _chat(lmi: ChainLMI) -> np.ndarray:
    c = lmi.weights[-1].ravel()
    out = np.zeros(lmi.order)
    out[lmi.order - c.size :] = c
    return out


def rho_and_grad(lmi: ChainLMI | LinfRowLMI, params):
    """``rho*`` and its gradient; ``(inf, None)`` where ``P`` is not positive definite."""
    lmi = _chain_of(lmi)
    tau, t = _parts(lmi, params)
    p = _p_matrix(lmi, params)
    try:
        chol = scipy.linalg.cho_factor(p, lower=True, check_finite=False)
    except (scipy.linalg.LinAlgError, ValueError):
        return math.inf, None
    c = _chat(lmi)
    y = scipy.linalg.cho_solve(chol, c, check_finite=False)
    rho = 0.5 * (tau.sum() + float(c @ y))
    sizes = lmi.sizes
    offs = np.concatenate([[0], np.cumsum(sizes)])
    ys = [y[offs[k] : offs[k + 1]] for k in range(len(sizes))]
    # d(c^T P^-1 c)/dp = -y^T (dP/dp) y and y^T A y = -dq/dp (the QC value gradient)
    grads = [0.5 * (1.0 - ys[0] ** 2)]
    for k, qc in enumerate(lmi.qcs, start=1):
        grads.append(0.5 * qc.value_grad(lmi.weights[k - 1] @ ys[k - 1], ys[k]))
    return rho, np.concatenate(grads)


def start_params(lmi: ChainLMI | LinfRowLMI) -> np.ndarray:
    """Feasible start: the l2 anchor multipliers and a uniform tau making P definite."""
    lmi = _chain_of(lmi)
    t = lmi.anchor()
    d, b = lmi.blocks(t, 0.0, output=False)
    y = d[-1]
    for k in range(len(d) - 1, 0, -1):
        sol = np.linalg.solve(y, b[k - 1].T)
        y = (b[0] @ sol - d[0]) if k == 1 else d[k - 1] - b[k - 1] @ sol
    tau = np.full(lmi.sizes[0], 2.0 * max(lambda_max((y + y.T) / 2, "l-inf start"), 1e-12))
    return np.concatenate([tau, t])


def minimize(lmi: ChainLMI | LinfRowLMI, start=None, max_iter: int = 3000):
    lmi = _chain_of(lmi)
    x0 = start_params(lmi) if start is None else np.asarray(start, dtype=np.float64)
    f0, _ = rho_and_grad(lmi, x0)
    scale = f0 if math.isfinite(f0) and f0 > 0 else 1.0
    best = {"x": x0, "f": f0}

    def fun(x):
        f, g = rho_and_grad(lmi, x)
        if g is None:
            return 1e6, np.zeros_like(x)
        if f < best["f"]:
            best["x"], best["f"] = x.copy(), f
        return f / scale, g / scale

    bounds = [(0.0, None)] * lmi.sizes[0] + [
        (lo, None) for qc in lmi.qcs for lo in qc.lower_bounds()
    ]
    import scipy.optimize  # lazily: listing methods stays fast

    scipy.optimize.minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-13, "maxcor": 30},
    )
    return best["x"], best["f"]


def certify_linf(lmi: ChainLMI | LinfRowLMI, params) -> LinfCertificate:
    """§8 on the bordered matrix; ``lmi`` must have a single output row."""
    lmi = _chain_of(lmi)
    tau, t = _parts(lmi, params)
    x = np.concatenate([np.maximum(tau, 0.0), lmi.project(t)])
    rho, _ = rho_and_grad(lmi, x)
    if not math.isfinite(rho):
        return LinfCertificate(False, math.inf, x, 0.0)
    eps = 1e-12
    for _ in range(12):
        r = rho * (1.0 + eps) + eps
        if verify_linf(lmi, x, r):
            return LinfCertificate(True, round_up(r), x, eps, rho=r)
        eps *= 4.0
    return LinfCertificate(False, math.inf, x, eps)


def verify_linf(lmi: ChainLMI | LinfRowLMI, x, r: float) -> bool:
    """§8 on the bordered matrix of §1.4 at ``(tau, T) = x`` and bound ``r``."""
    lmi = _chain_of(lmi)
    x = np.asarray(x, dtype=np.float64)
    n0 = lmi.sizes[0]
    if (
        x.shape != (n0 + sum(lmi.param_sizes),)
        or (x[:n0] < 0).any()
        or not np.array_equal(lmi.project(x[n0:]), x[n0:])
    ):
        return False
    c = _chat(lmi)
    p = _p_matrix(lmi, x)
    a = np.block([[np.array([[2.0 * r - x[:n0].sum()]]), -c[None, :]], [-c[:, None], p]])
    p_abs = _p_matrix(lmi, x, absolute=True)
    a_abs = np.block(
        [
            [np.array([[2.0 * abs(r) + x[:n0].sum()]]), np.abs(c)[None, :]],
            [np.abs(c)[:, None], p_abs],
        ]
    )
    rad = gamma(2 * max(lmi.inner_dim, n0) + 8) * 1.01 * a_abs
    if any(rr is not None for rr in lmi.radii):
        plain = ChainLMI(lmi.weights, (None,) * len(lmi.radii), lmi.qcs, lmi.name)
        rad[1:, 1:] += p_abs - _p_matrix(plain, x, absolute=True)
        if lmi.radii[-1] is not None:  # the border is the output row itself
            rc = np.zeros(lmi.order)
            rc[lmi.order - lmi.radii[-1].size :] = lmi.radii[-1].ravel()
            rad[0, 1:] += rc
            rad[1:, 0] += rc
    return certify_pd(a, rad * (1 + 1e-12))


def best_blend(lmi: ChainLMI | LinfRowLMI, params,
               deadline: float | None = None) -> LinfCertificate:
    """Certify the best point on the segment from ``params`` to the feasible start (§8 step 4).

    A solver's multipliers leave ``P`` nearly singular along inactive neurons, where
    ``c^T P^{-1} c`` is ill-conditioned; ``rho*`` is convex along the segment, so a short
    search over the blend weight finds a well-conditioned point, then L-BFGS-B polishes it.
    ``params`` None: the start itself (``theta = 1``). Past ``deadline`` (a
    ``time.perf_counter()`` value) the polish is skipped.
    """
    lmi = _chain_of(lmi)
    anchor = start_params(lmi)
    if params is None:
        thetas, candidates = [1.0], [anchor]
    else:
        x = np.concatenate(
            [np.maximum(params[: lmi.sizes[0]], 0.0), lmi.project(params[lmi.sizes[0] :])]
        )
        thetas = [0.0, *10.0 ** -np.arange(12, 0, -1)]
        candidates = [(1 - th) * x + th * anchor for th in thetas]
    values = [rho_and_grad(lmi, c)[0] for c in candidates]
    i = int(np.argmin(values))
    best, theta = candidates[i], float(thetas[i])
    certs = []
    if deadline is None or time.perf_counter() <= deadline:
        polished, _ = minimize(lmi, best, max_iter=500)
        certs.append(replace(certify_linf(lmi, polished), theta=theta, polished=True))
    certs.append(replace(certify_linf(lmi, best), theta=theta))
    return min(certs, key=lambda c: c.bound if c.ok else math.inf)
