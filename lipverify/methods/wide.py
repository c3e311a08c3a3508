"""``lipsdp-wide``: exact LipSDP for one hidden layer of any width, reduced to order n0 + m.

**Derivation** (FORMULATIONS.md §1.2 with L = 2; §8). For ``f(x) = W_2 phi(W_1 x + b_1) + b_2``
with ``W_1 in R^{n x n0}``, ``W_2 in R^{m x n}`` and ``phi`` slope-restricted in
``[alpha, beta]`` elementwise, LipSDP asks for ``T = diag(t) > 0`` and ``rho`` with

    M = [[rho I + 2 alpha beta W_1^T T W_1,  -(alpha+beta) W_1^T T],
         [-(alpha+beta) T W_1,                2T - W_2^T W_2      ]]  >= 0,

an LMI of order ``n0 + n`` (24112 for a 32-channel conv on 28x28 images). Two exact steps make
it small:

1. ``2T - W_2^T W_2 = S`` with ``S >= 0`` iff ``[[2T, W_2^T], [W_2, I]] >= 0`` (Schur complement
   of the identity block), so ``M >= 0`` iff the order ``n0 + n + m`` matrix ``M3 =
   [[D_0, B, 0], [B^T, 2T, W_2^T], [0, W_2, I]] >= 0`` with ``D_0, B`` the blocks above.
2. ``2T > 0`` is diagonal, so ``M3 >= 0`` iff its Schur complement on that block is ``>= 0``:

       K(rho, t) = [[rho I - a W_1^T T W_1,   b W_1^T W_2^T          ],
                    [b W_2 W_1,               I - 1/2 W_2 T^{-1} W_2^T]]  >= 0,

   with ``a = (alpha - beta)^2 / 2`` and ``b = (alpha + beta) / 2`` (the ``W_1^T T W_1`` terms
   combine as ``2 alpha beta - (alpha+beta)^2 / 2 = -a``; the sign of ``b`` is immaterial,
   a congruence by ``diag(I, -I)``).

``K`` has order ``n0 + m`` (794 for MNIST with 10 classes), whatever the width ``n``, and
``M >= 0 <=> K >= 0`` for every ``t > 0``: the same LipSDP, neuron multipliers included, not a
relaxation. Eliminating ``rho``: with ``Q = I - 1/2 W_2 T^{-1} W_2^T > 0`` and ``C = W_1^T
W_2^T``,

    rho*(t) = lambda_max(a W_1^T T W_1 + b^2 C Q^{-1} C^T),

convex in ``t`` (the feasible set of ``(rho, t)`` is convex), with gradient ``a (w_i^T x)^2 -
(b^2 / 2) (v_i^T y)^2 / t_i^2`` for the top eigenvector ``x``, ``y = Q^{-1} C^T x``, ``w_i`` the
i-th row of ``W_1`` and ``v_i`` the i-th column of ``W_2``. Multipliers are shared per conv
output channel (``t = s_c`` on channel ``c``; far fewer variables) or per neuron, and
minimised by L-BFGS on ``log t``.

**Certificate.** ``K`` is assembled in float64 from the exact weights (a dense copy of a conv
is exact; a composed output map carries its own rounding radius), with an entrywise radius
covering the weights' radius, the rounding of ``1/t_i`` and of the coefficients ``a, b``, and
the assembly (``gamma_{n+8}`` of the absolute formulas), then Rump's shifted Cholesky (§8,
:func:`lipverify.certify.rump.certify_pd`) proves ``K > 0``; hence ``M > 0`` and ``Lip_2(f)
<= sqrt(rho)``. No order-``n0 + n`` matrix is ever formed.

>>> import numpy as np
>>> from lipverify import Network, SlopeRestricted
>>> net = Network.sequential([np.eye(2), np.array([[1.0, 1.0]])], [SlopeRestricted.named("relu")])
>>> out = lipsdp_wide(net)
>>> out.certified, round(out.bound, 6)   # ||(1, 1)|| = sqrt(2): LipSDP is exact here
(True, 1.414214)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from ..errors import NotApplicableError
from ..ir.activations import SlopeRestricted
from ..ir.linear import Conv2d
from ..ir.network import Network
from ..numerics import UNIT_ROUNDOFF as U
from ..numerics import gamma, round_up
from ..options import Options, option
from ..results import MethodOutput
from ..status import GAP_TOLERANCE, Outcome, Status
from . import register_method

#: Largest reduced order n0 + m handled (a dense eigenproblem of that order per step).
MAX_REDUCED_ORDER = 6000
#: Largest dense first layer (entries) copied for the reduction.
MAX_W1_ENTRIES = 60_000_000
#: The objective (log rho*) where Q is not positive definite: far above any feasible value.
INFEASIBLE_VALUE = 1e3
#: Smoothing levels of the soft maximum, relative to the starting rho* (the last is exact).
SMOOTHING = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 0.0)
#: Constraints of the small dual SDP behind the measured gap (groups are summed beyond it).
DUAL_BUCKETS = 256
#: Neuron multipliers are used (under "auto") when one evaluation costs at most this many
#: multiply-adds (n * n0^2); wider layers share multipliers per channel.
NEURON_FLOPS = 3e9


@dataclass(frozen=True)
class WideOptions(Options):
    """lipsdp-wide: multiplier sharing and the time limit."""

    multipliers: str = option("auto", choices=("auto", "neuron", "channel"),
                              help="one multiplier per neuron or per conv output channel")
    time_limit: float | None = option(None, "positive", float_value=True,
                                      help="seconds for the whole bound")


@dataclass(frozen=True, eq=False)
class WideForm:
    """The reduced LipSDP of a one-hidden-layer network (module docstring)."""

    w1: np.ndarray
    r1: np.ndarray | None
    w2: np.ndarray
    r2: np.ndarray | None
    alpha: float
    beta: float
    groups: np.ndarray  # group (multiplier) index of each hidden neuron
    multipliers: str
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_network(cls, network: Network, multipliers: str = "auto") -> WideForm:
        why = applicable(network)
        if why:
            raise NotApplicableError(f"lipsdp-wide: {why}")
        node = network.nodes[0]
        op1 = node.pre.terms[0].op
        w1, r1 = op1.dense_with_radius()
        w2, r2 = network.output.terms[0].op.dense_with_radius()
        n, n0 = w1.shape
        last = op1.leaves()[-1]  # the map that lays out the hidden layer (C, H, W)
        channels = int(last.kernel.shape[0]) if isinstance(last, Conv2d) else None
        if multipliers == "auto":
            multipliers = "neuron" if channels is None or n * n0 * n0 <= NEURON_FLOPS \
                else "channel"
        if multipliers == "channel":
            if channels is None:
                raise NotApplicableError("lipsdp-wide: channel multipliers need a conv hidden "
                                         "layer; use multipliers='neuron'")
            groups = np.repeat(np.arange(channels), n // channels)
        else:
            groups = np.arange(n)
        act = node.activation
        return cls(w1, r1, w2, r2, float(act.alpha), float(act.beta), groups, multipliers)

    @property
    def n_groups(self) -> int:
        return int(self.groups[-1]) + 1

    @property
    def ab(self) -> tuple[float, float]:
        return (self.alpha - self.beta) ** 2 / 2.0, (self.alpha + self.beta) / 2.0

    def expand(self, s: np.ndarray) -> np.ndarray:
        return np.asarray(s, dtype=np.float64)[self.groups]

    def _grouped(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.groups, weights=values, minlength=self.n_groups)

    def _c(self) -> np.ndarray:
        if "c" not in self._cache:
            self._cache["c"] = self.w1.T @ self.w2.T
        return self._cache["c"]

    def _gram(self, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``W_1^T T W_1``: from per-channel Gram matrices when multipliers are shared."""
        n0 = self.w1.shape[1]
        if self.multipliers == "channel" and self.n_groups * n0 * n0 <= MAX_W1_ENTRIES:
            if "gram" not in self._cache:
                self._cache["gram"] = np.stack([self.w1[self.groups == g].T
                                                @ self.w1[self.groups == g]
                                                for g in range(self.n_groups)])
            return np.tensordot(np.asarray(s, dtype=np.float64), self._cache["gram"], axes=1)
        return self.w1.T @ (t[:, None] * self.w1)

    def _reduced(self, s: np.ndarray):
        """``(t, chol(Q), Q^{-1} C^T, A)`` with ``A = a W_1^T T W_1 + b^2 C Q^{-1} C^T`` (whose
        largest eigenvalue is ``rho*``), or None when ``Q`` is not positive definite."""
        a, b = self.ab
        t = self.expand(s)
        q = np.eye(self.w2.shape[0]) - 0.5 * (self.w2 / t) @ self.w2.T
        try:
            chol = scipy.linalg.cho_factor(q, lower=True)
        except np.linalg.LinAlgError:
            return None
        c = self._c()
        y_all = scipy.linalg.cho_solve(chol, c.T)
        return t, chol, y_all, a * self._gram(s, t) + b * b * (c @ y_all)

    def rho_star(self, s: np.ndarray, mu: float = 0.0) -> tuple[float, np.ndarray | None]:
        """``(rho*(t), gradient in s)`` for group multipliers ``s > 0``; ``(inf, None)`` when
        ``Q`` is not positive definite. With ``mu > 0``, the smooth maximum ``mu log sum
        exp(lambda_i / mu) >= lambda_max`` of the eigenvalues and its gradient instead
        (L-BFGS stalls on the kinks of lambda_max where eigenvalues cross)."""
        reduced = self._reduced(s)
        if reduced is None:
            return math.inf, None
        a, b = self.ab
        t, _, y_all, mat = reduced
        n0 = mat.shape[0]
        if mu > 0:
            lam, vec = scipy.linalg.eigh(mat)
            z = (lam - lam[-1]) / mu
            keep = z > -40.0
            w = np.exp(z[keep])
            value = lam[-1] + mu * math.log(w.sum())
            x = vec[:, keep] * np.sqrt(w / w.sum())
        else:
            lam, vec = scipy.linalg.eigh(mat, subset_by_index=[n0 - 1, n0 - 1])
            value, x = float(lam[-1]), vec
        y = y_all @ x
        grad_t = a * ((self.w1 @ x) ** 2).sum(1) \
            - 0.5 * b * b * ((self.w2.T @ y) ** 2).sum(1) / (t * t)
        return float(value), self._grouped(grad_t)

    def dual_bound(self, s: np.ndarray, top: int = 12) -> float:
        """A lower bound on the LipSDP optimum (for the optimality gap; not a certificate).

        Weak duality for ``min rho : M(rho, t) >= 0, t >= 0``: any ``Z = sum_k z_k z_k^T`` with
        ``z_k = (x_k, u_k)``, ``sum_k ||x_k||^2 = 1`` and, per multiplier group ``g``,
        ``sum_{i in g} sum_k (u_ki - alpha v_ki)(u_ki - beta v_ki) <= 0`` (``v_k = W_1 x_k``;
        that is ``<Z, dM/dt_g> <= 0``) gives ``rho* >= sum_k ||W_2 u_k||^2``.

        The ``x`` are the top eigenvectors of ``rho*``'s matrix at ``t`` and the ``u`` the
        null directions of ``M`` they lift to, ``u = (2T - W_2^T W_2)^{-1} (alpha+beta) T v``
        (Woodbury with ``Q``). Their best combination ``Z = X W X^T`` (``W >= 0``, trace 1) is
        a small SDP (cvxpy); its solution is then made exactly feasible by shrinking each
        neuron's ``u_ki`` toward ``(alpha+beta)/2 v_ki``, and the bound is evaluated from it.
        """
        import cvxpy as cp

        reduced = self._reduced(s)
        if reduced is None:
            return 0.0
        t, chol, _, mat = reduced
        lam, vec = scipy.linalg.eigh(mat)
        k = min(top, lam.size)
        x = vec[:, -k:]
        v = self.w1 @ x
        r = (self.alpha + self.beta) / 2.0 * v  # (2T)^{-1} (alpha + beta) T v
        u = r + (self.w2.T @ scipy.linalg.cho_solve(chol, self.w2 @ r)) / (2.0 * t[:, None])
        g = self.w2 @ u
        # per group: sum_i [u_i u_i^T - (alpha+beta)/2 (u_i v_i^T + v_i u_i^T) + ab v_i v_i^T]
        ab2, ab = (self.alpha + self.beta) / 2.0, self.alpha * self.beta
        per = (np.einsum("ik,il->ikl", u, u) - ab2 * (np.einsum("ik,il->ikl", u, v)
                                                      + np.einsum("ik,il->ikl", v, u))
               + ab * np.einsum("ik,il->ikl", v, v))
        # the small SDP sees at most DUAL_BUCKETS summed constraints (a relaxation; the
        # repair below restores every group's own constraint)
        buckets = self.groups % DUAL_BUCKETS if self.n_groups > DUAL_BUCKETS else self.groups
        groups = np.zeros((int(buckets.max()) + 1, k, k))
        np.add.at(groups, buckets, per)
        w = cp.Variable((k, k), PSD=True)
        cons = [cp.trace(w) == 1] + [cp.sum(cp.multiply(w, h)) <= 0 for h in groups]
        try:
            cp.Problem(cp.Maximize(cp.sum(cp.multiply(w, g.T @ g))), cons).solve(
                solver="CLARABEL")
            wv = None if w.value is None else np.asarray(w.value, dtype=np.float64)
        except (cp.error.SolverError, TypeError, ValueError):
            wv = None
        if wv is None:  # the small SDP failed: the top eigenvector alone, repaired below
            wv = np.zeros((k, k))
            wv[-1, -1] = 1.0
        ev, evec = np.linalg.eigh((wv + wv.T) / 2.0)
        ev = np.maximum(ev, 0.0)
        if ev.sum() <= 0:
            return 0.0
        comb = evec * np.sqrt(ev / ev.sum())          # Z = (X comb)(X comb)^T, trace 1
        xs, vs, us = x @ comb, v @ comb, u @ comb
        mid = (self.alpha + self.beta) / 2.0 * vs
        spread = np.bincount(self.groups, ((us - mid) ** 2).sum(1), self.n_groups)
        room = ((self.beta - self.alpha) / 2.0) ** 2 * np.bincount(
            self.groups, (vs * vs).sum(1), self.n_groups)
        theta = np.sqrt(np.minimum(1.0, room / np.maximum(spread, 1e-300))) * (1 - 1e-12)
        us = mid + theta[self.groups][:, None] * (us - mid)
        return float(np.sum((self.w2 @ us) ** 2) / np.sum(xs * xs))

    def start(self) -> np.ndarray:
        """A feasible uniform start: the best ``s = sigma`` on a log grid above the bound
        that keeps ``Q`` positive definite."""
        lo = 0.5 * float(np.linalg.norm(self.w2, 2)) ** 2 * (1 + 1e-6) + 1e-300
        best, best_s = math.inf, None
        for k in np.linspace(0.0, 12.0, 25):
            s = np.full(self.n_groups, lo * 10.0 ** (k / 2.0))
            rho, _ = self.rho_star(s)
            if rho < best:
                best, best_s = rho, s
        return best_s if best_s is not None else np.full(self.n_groups, lo * 1e6)

    def verify(self, s: np.ndarray, rho: float) -> bool:
        """Rigorous: ``K(rho, t) > 0`` for the exact weights and ``t = expand(s)`` (module
        docstring), hence the LipSDP LMI holds and ``Lip_2 <= sqrt(rho)``."""
        from ..certify.rump import certify_pd

        t = self.expand(s)
        if not (np.all(np.isfinite(t)) and np.all(t > 0) and math.isfinite(rho) and rho > 0):
            return False
        a, b = self.ab
        a_up, b_up = a * (1 + 8 * U), abs(b) * (1 + 8 * U)
        tinv = 1.0 / t
        tinv_up = tinv * (1 + 4 * U)
        n = t.size
        m, n0 = self.w2.shape[0], self.w1.shape[1]
        w1a, w2a = np.abs(self.w1), np.abs(self.w2)
        w1u = w1a if self.r1 is None else w1a + self.r1
        w2u = w2a if self.r2 is None else w2a + self.r2
        k = np.empty((n0 + m, n0 + m))
        k[:n0, :n0] = rho * np.eye(n0) - a * (self.w1.T @ (t[:, None] * self.w1))
        k[n0:, :n0] = b * (self.w2 @ self.w1)
        k[:n0, n0:] = k[n0:, :n0].T
        k[n0:, n0:] = np.eye(m) - 0.5 * ((self.w2 * tinv) @ self.w2.T)
        up, low = np.empty_like(k), np.empty_like(k)
        up[:n0, :n0] = rho * np.eye(n0) + a_up * (w1u.T @ (t[:, None] * w1u))
        low[:n0, :n0] = rho * np.eye(n0) + a * (w1a.T @ (t[:, None] * w1a))
        up[n0:, :n0] = b_up * (w2u @ w1u)
        low[n0:, :n0] = abs(b) * (w2a @ w1a)
        up[:n0, n0:], low[:n0, n0:] = up[n0:, :n0].T, low[n0:, :n0].T
        up[n0:, n0:] = np.eye(m) + 0.5 * ((w2u * tinv_up) @ w2u.T)
        low[n0:, n0:] = np.eye(m) + 0.5 * ((w2a * tinv) @ w2a.T)
        if not (np.all(np.isfinite(k)) and np.all(np.isfinite(up))):
            return False
        # data and coefficient errors (products of upper bounds minus products of the
        # computed magnitudes), plus the assembly's rounding and the radius' own (§8)
        radius = 1.01 * (np.maximum(up - low, 0.0) + 4.0 * gamma(n + 8) * up)
        return certify_pd(k, radius)


def applicable(network: Network) -> str | None:
    """Why ``lipsdp-wide`` does not apply to ``network`` (None: it does)."""
    if not network.is_sequential or len(network.nodes) != 1:
        return "needs exactly one hidden layer (a feed-forward network)"
    node = network.nodes[0]
    if type(node.activation) is not SlopeRestricted:
        return f"needs a slope-restricted activation, not {node.activation.describe()}"
    if len(node.pre.terms) != 1 or len(network.output.terms) != 1:
        return "needs a single linear map into and out of the hidden layer"
    op1, op2 = node.pre.terms[0].op, network.output.terms[0].op
    if op1.n_in * op1.n_out > MAX_W1_ENTRIES or op2.n_in * op2.n_out > MAX_W1_ENTRIES:
        return "its layers are too large to copy densely"
    if op1.n_in + op2.n_out > MAX_REDUCED_ORDER:
        return f"the reduced order n0 + m = {op1.n_in + op2.n_out} > {MAX_REDUCED_ORDER}"
    return None


def solve(form: WideForm, deadline: float) -> tuple[np.ndarray, float]:
    """Group multipliers minimising ``rho*`` and that ``rho*``: L-BFGS-B on ``log s`` over a
    soft maximum sharpened level by level, as :func:`lipverify.solvers.smooth_rho.minimize_rho`
    does for chains (a point where ``Q`` is not positive definite gets a large value)."""
    import scipy.optimize

    theta0 = np.log(form.start())
    best = {"theta": theta0, "rho": form.rho_star(np.exp(theta0))[0]}
    scale = best["rho"]
    for rel in SMOOTHING:  # smooth maximum, sharpened level by level (§2's soft maximum)
        mu = rel * scale

        def fun(th, mu=mu):
            if time.perf_counter() > deadline:
                raise TimeoutError
            rho, grad = form.rho_star(np.exp(th), mu)
            if grad is None or not rho > 0:
                return INFEASIBLE_VALUE, np.zeros_like(th)
            return math.log(rho), grad * np.exp(th) / rho

        try:
            res = scipy.optimize.minimize(fun, best["theta"], jac=True, method="L-BFGS-B",
                                          options={"maxiter": 300, "ftol": 1e-13,
                                                   "gtol": 1e-12, "maxcor": 10})
            theta = res.x
        except TimeoutError:
            break
        exact = form.rho_star(np.exp(theta))[0]
        if exact < best["rho"]:
            best = {"theta": theta, "rho": exact}
    return np.exp(best["theta"]), best["rho"]


def certify_wide(form: WideForm, s: np.ndarray, rho_star: float) -> tuple[bool, float]:
    """§8 steps 5-7 on the reduced form: ``rho = rho*(1 + eps) + eps``, eps from 1e-12
    times 4 per failure; returns ``(ok, rho)``."""
    eps = 1e-12
    for _ in range(10):
        rho = rho_star * (1 + eps) + eps * max(rho_star, 1e-300)
        if form.verify(s, rho):
            return True, rho
        eps *= 4.0
    return False, math.inf


@register_method(
    "lipsdp-wide",
    summary="Exact LipSDP (neuron or channel multipliers) for one hidden layer of any width, "
    "reduced by two Schur complements to order n_in + n_out; certified (§8) on the reduced "
    "matrix. For wide single-layer nets and CNNs whose full LMI is too large.",
    options=WideOptions,
)
def lipsdp_wide(network: Network, *, norm: str = "l2", multipliers: str = "auto",
                time_limit: float | None = None, **_) -> MethodOutput:
    if norm != "l2":
        raise NotApplicableError("lipsdp-wide supports the l2 norm only")
    start = time.perf_counter()
    form = WideForm.from_network(network, multipliers)
    deadline = math.inf if time_limit is None else start + 0.8 * time_limit
    s, rho_star = solve(form, deadline)
    ok, rho = certify_wide(form, s, rho_star)
    bound = round_up(math.sqrt(rho)) if ok else math.inf
    try:  # the gap is a measurement: its failure never costs the certified bound
        dual = form.dual_bound(s) if ok else 0.0
    except (np.linalg.LinAlgError, ValueError, ArithmeticError):
        dual = 0.0
    gap = 1.0 - math.sqrt(dual / rho) if ok and dual > 0 else None  # of L, as Status says
    details = {"order": form.w1.shape[1] + form.w1.shape[0],
               "reduced_order": form.w1.shape[1] + form.w2.shape[0],
               "multipliers": form.multipliers, "groups": form.n_groups,
               "seconds_total": time.perf_counter() - start,
               "certificate": {"kind": "lipsdp-wide", "multipliers": form.multipliers,
                               "rho": rho, "params": s.tolist()}}
    if ok:
        # optimal only with a measured gap within tolerance (L-BFGS has no own optimality test)
        outcome = Outcome.OPTIMAL if gap is not None and gap <= GAP_TOLERANCE \
            else Outcome.CONVERGED
        status = Status(outcome, "reduced LipSDP (one hidden layer), L-BFGS").with_gap(
            gap, None if gap is not None else "no dual point")
        details["dual_bound"] = math.sqrt(dual) if dual > 0 else None
    else:
        status = Status(Outcome.NOT_CERTIFIED, "the reduced matrix K is not provably positive "
                                               "definite")
    return MethodOutput(bound=bound, certified=ok, status=status, solver="lbfgs",
                        solver_value=math.sqrt(rho_star) if rho_star > 0 else None,
                        details=details)
