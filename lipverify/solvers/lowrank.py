"""Low-rank dual solver for slope-QC chains with neuron multipliers (FORMULATIONS.md §1.2, §2).

**The dual as a vector-valued network [derived].** LipSDP-Neuron (§1.2) is

    (D)  minimise rho  s.t.  M(rho, t) = rho E_0 + sum_j t_j F_j - C^T C >= 0,  t >= 0,

with ``C = [0 .. 0 W_L]``. Its conic dual is ``max <C^T C, X>`` over ``X >= 0`` with
``<E_0, X> = 1`` and ``<F_j, X> <= 0`` for every neuron. Write ``X = Y Y^T`` with ``Y``
of ``r`` columns, split by blocks as ``Y_0, Y_1, .., Y_{L-1}`` (``n_k x r``), and let row
``i`` of ``Y_k`` be ``y_{k,i}`` and row ``i`` of ``V_k = W_k Y_{k-1}`` be ``v_{k,i}``. By §1.1,
``<F_j, X> = -2 <y - alpha v, beta v - y>`` for neuron ``j = (k, i)``, so the dual reads

    max ||W_L Y_{L-1}||_F^2  s.t.  ||Y_0||_F = 1,
                                   <y_{k,i} - alpha v_{k,i}, beta v_{k,i} - y_{k,i}> >= 0.

The constraint says ``y_{k,i}`` lies in the ball with diameter ``[alpha v, beta v]``: centre
``c v`` with ``c = (alpha + beta) / 2``, radius ``s ||v||`` with ``s = (beta - alpha) / 2``.
It is an ``r``-dimensional "vector network": every neuron maps its vector pre-activation
into that ball (with ``r = 1`` and a ReLU, the ball is the segment ``[0, v]``). Every point of

    y_{k,i} = c v_{k,i} + s ||v_{k,i}|| u_{k,i},   ||u_{k,i}|| = 1,   Y_0 = Z_0 / ||Z_0||_F

is dual feasible, so ``f(Y) = ||W_L Y_{L-1}||_F^2 <= rho_opt`` for *every* choice of unit
vectors ``u``: the lower bound needs no solver accuracy. ``f`` is maximised over the ``u``
(free vectors ``z``, ``u = z / ||z||``) by L-BFGS on ``-log f`` (Burer-Monteiro: ``X`` of
rank ``r``, with ``r`` a little above ``sqrt(2 max n_k)``, the clique constraint count of §3).
One gradient costs two passes through the network with ``r`` columns, ``O(r sum n_k n_{k-1})``,
so no matrix of order ``N`` is ever formed.

**Multipliers from the dual point.** At the optimum complementary slackness gives
``M(rho, t) Y = 0``. Block row ``k`` of it (§1.2 blocks) reads, for ``1 <= k <= L-1``,

    T_k (2 Y_k - (alpha + beta) V_k) = R_k,
    R_k = W_{k+1}^T T_{k+1} ((alpha + beta) Y_{k+1} - 2 alpha beta V_{k+1})

(``R_{L-1} = W_L^T W_L Y_{L-1}``), and row 0 gives ``rho Y_0 = W_1^T T_1 ((alpha+beta) Y_1 -
2 alpha beta V_1)``. Since ``2 y - (alpha + beta) v = 2 s ||v|| u``, each row fixes one
multiplier, by least squares ``t_{k,i} = <R_{k,i}, u_{k,i}> / (2 s ||v_{k,i}||)``, from the
last layer back to the first: the multipliers are the network's back-propagated adjoints
(at a stationary point ``R_{k,i}`` is parallel to ``u_{k,i}`` and the fit is exact).

**Upper bound and polish.** ``rho*(t)`` of the backward recursion (§2) is the certified
candidate; the gap ``(rho*(t) - f) / rho*(t)`` is measured. Errors of the fitted ``t`` grow
towards the input, so the first hidden layers are re-solved exactly: with ``t_{a+1..L-1}``
fixed, the tail's Schur complement ``Q_a = B_{a+1} Y_{a+1}^{-1} B_{a+1}^T - 2 alpha beta
W_{a+1}^T T_{a+1} W_{a+1}`` enters ``D_a`` alone, so ``M >= 0`` is the LipSDP of the
``a``-layer network ``W_1 .. W_a`` with output Gram ``Q_a`` (§2 lemma). It is solved by the
interior point (:mod:`lipverify.solvers.interior`) on the factor ``R^T R = Q_a^+`` (negative
eigenvalues clipped, which only tightens the LMI); the result's ``rho*`` is recomputed on the
whole chain. The certificate (§8) is the caller's, on the exact weights, as for every solver.

Everything runs on the balanced chain (§2, :func:`lipverify.lmi.chain.balance`) in torch,
float64, on the CPU or a CUDA device; the multipliers are fitted and checked in numpy.

>>> import numpy as np
>>> from lipverify import Network
>>> from lipverify.ir.activations import SlopeRestricted
>>> from lipverify.lmi.chain import ChainLMI
>>> ws = [np.array([[2.0, 0.0], [0.0, 1.0]]), np.eye(2), np.array([[1.0, 1.0]])]
>>> net = Network.sequential(ws, [SlopeRestricted.named("relu")] * 2)
>>> res = solve_chain_lowrank(ChainLMI.from_network(net))
>>> round(float(np.sqrt(res.rho)), 6), res.gap < 1e-6   # ||(1, 1) diag(2, 1)|| = sqrt 5
(2.236068, True)
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ..certify.chordal import SEGMENT_ORDER
from ..errors import LipverifyError, SolverError, UsageError
from ..lmi.chain import ChainLMI, balance
from ..numerics import blas_threads
from ..options import DEVICES
from ..qc import SlopeQC
from .base import Capabilities, Solver, SolveResult
from .smooth_rho import SMALL_BLOCK

#: L-BFGS iterations between two multiplier fits.
ROUND_ITERATIONS = 200
#: Without a time limit the dual ascent stops after this many iterations.
MAX_ITERATIONS = 20000
#: Relative gap in rho at which the solve stops ("optimal").
GAP_TOL = 1e-6
#: The polish re-solves leading hidden layers whose LMI order stays within this: the §8
#: check's first clique segment, so the margins of its later segments enter at the window's
#: end (measured on 64x64, three time limits each: certified gaps 1.4e-6 to 3.3e-5, against
#: 2.6e-5 to 8.3e-5 with an 800 window) ...
WINDOW_ORDER = SEGMENT_ORDER
#: ... and never one above this order (the interior point's cost grows as its cube).
WINDOW_MAX_ORDER = 2500
#: L-BFGS memory (10 and 30 reach the same gap on 64x64; 10 costs less per step).
MEMORY = 10
#: Seconds per cubed order of a polish (the interior point on the window), before measured.
POLISH_SECONDS_PER_CUBE = 1e-8
#: A polish gets at most this share of the time limit (a poor dual point can make the
#: window's interior point crawl), or POLISH_MAX_SECONDS without a limit.
POLISH_SHARE = 0.15
POLISH_MAX_SECONDS = 60.0


def resolve_device(device: str) -> str:
    """``device`` as torch names it: "cpu" or "cuda"; a CUDA request without a GPU is an
    error that says so (never a silent CPU run)."""
    if device not in DEVICES:
        raise UsageError(f"bad device {device!r}; choose one of: {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise SolverError("device cuda was requested, but torch sees no CUDA GPU here "
                          "(torch.cuda.is_available() is False); use --device cpu or auto")
    return "cpu"


def lowrank_reason(lmi) -> str | None:
    """Why the low-rank solver cannot take ``lmi`` (None if it can)."""
    if getattr(lmi, "kind", None) != "chain":
        return "it takes feed-forward chains only"
    for qc in lmi.qcs:
        if not isinstance(qc, SlopeQC):
            return f"it takes slope QCs only (found {type(qc).__name__})"
        if not qc.per_neuron or qc.block != 1:
            return "it needs one multiplier per neuron (lipsdp-neuron)"
        if np.any(np.asarray(qc.beta) - np.asarray(qc.alpha) <= 0):
            return "a neuron has equal slope bounds (alpha = beta): a linear map"
    return None


@dataclass(frozen=True)
class LowRankResult:
    """One solve: multipliers (original units; None when no fitted point had a finite
    ``rho*``), ``rho = rho*(params)``, the dual value ``lower`` (a feasible dual point's),
    L-BFGS iterations, seconds, status, rank and device."""

    params: np.ndarray | None
    rho: float
    lower: float
    iterations: int
    seconds: float
    status: str
    rank: int
    device: str
    polished: bool = False

    @property
    def gap(self) -> float:
        """Relative gap in rho, ``(rho - lower) / rho`` (inf without multipliers)."""
        if self.params is None or not math.isfinite(self.rho) or self.rho <= 0:
            return math.inf
        return max(self.rho - self.lower, 0.0) / self.rho


def default_rank(sizes) -> int:
    """``r`` a little above ``sqrt(2 max n_k)`` (64 wide: 17; 1024 wide: 68)."""
    return int(min(sum(sizes), max(8, math.ceil(1.5 * math.sqrt(2.0 * max(sizes))))))


class VectorNetwork:
    """The dual problem of a balanced slope-QC chain on a torch device (module docstring)."""

    def __init__(self, lmi: ChainLMI, rank: int, device: str):
        import torch

        self.torch, self.rank, self.device = torch, rank, device

        def as_t(a):
            return torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)

        self.weights = [as_t(w) for w in lmi.weights]
        self.sizes = [w.shape[1] for w in lmi.weights]
        cols = []
        for qc in lmi.qcs:
            a = np.broadcast_to(np.asarray(qc.alpha, dtype=np.float64), (qc.n,))
            b = np.broadcast_to(np.asarray(qc.beta, dtype=np.float64), (qc.n,))
            cols.append(((a + b) / 2.0, (b - a) / 2.0, a + b, 2.0 * a * b))
        self.c = [as_t(x[0])[:, None] for x in cols]
        self.s = [as_t(x[1])[:, None] for x in cols]
        self.sum = [as_t(x[2])[:, None] for x in cols]
        self.prod2 = [as_t(x[3])[:, None] for x in cols]
        self.offsets = np.concatenate([[0], np.cumsum([n * rank for n in self.sizes])])

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def start(self, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal(self.size)

    def _blocks(self, z):
        return [z[self.offsets[k]:self.offsets[k + 1]].reshape(n, self.rank)
                for k, n in enumerate(self.sizes)]

    def forward(self, z):
        """``(f, Y, cache)`` for the torch vector ``z``."""
        torch = self.torch
        zs = self._blocks(z)
        y = zs[0] / torch.linalg.norm(zs[0])
        ys, cache = [y], []
        for k, w in enumerate(self.weights[:-1]):
            nz = torch.linalg.norm(zs[k + 1], dim=1, keepdim=True).clamp_min(1e-300)
            u = zs[k + 1] / nz
            v = w @ y
            nv = torch.linalg.norm(v, dim=1, keepdim=True)
            y = self.c[k] * v + self.s[k] * nv * u
            cache.append((nz, u, v, nv))
            ys.append(y)
        out = self.weights[-1] @ y
        return float(torch.sum(out * out)), ys, cache

    def value_grad(self, z_np: np.ndarray):
        """``(f, grad f)`` as numpy, by one backward pass (the module docstring's map)."""
        torch = self.torch
        z = torch.as_tensor(z_np, device=self.device)
        f, ys, cache = self.forward(z)
        g = torch.empty_like(z)
        grad = 2.0 * (self.weights[-1].T @ (self.weights[-1] @ ys[-1]))
        for k in range(len(self.weights) - 2, -1, -1):
            nz, u, v, nv = cache[k]
            gu = self.s[k] * nv * grad
            gz = (gu - torch.sum(gu * u, dim=1, keepdim=True) * u) / nz
            g[self.offsets[k + 1]:self.offsets[k + 2]] = gz.reshape(-1)
            gv = self.c[k] * grad + self.s[k] * torch.sum(grad * u, dim=1, keepdim=True) * \
                v / nv.clamp_min(1e-300)
            grad = self.weights[k].T @ gv
        z0 = z[:self.offsets[1]].reshape(self.sizes[0], self.rank)
        n0 = torch.linalg.norm(z0)
        y0 = z0 / n0
        g[:self.offsets[1]] = ((grad - torch.sum(grad * y0) * y0) / n0).reshape(-1)
        return f, g.cpu().numpy()

    def multipliers(self, z_np: np.ndarray) -> list[np.ndarray]:
        """``[t_1..t_{L-1}]`` fitted to ``M(rho, t) Y = 0`` from the last layer back (rho
        itself is recomputed exactly from them, by the §2 recursion)."""
        torch = self.torch
        _, ys, cache = self.forward(torch.as_tensor(z_np, device=self.device))
        r = self.weights[-1].T @ (self.weights[-1] @ ys[-1])
        ts = [None] * (len(self.weights) - 1)
        for k in range(len(self.weights) - 2, -1, -1):
            _, u, v, nv = cache[k]
            t = torch.sum(r * u, dim=1) / (2.0 * self.s[k][:, 0] * nv[:, 0]).clamp_min(1e-300)
            ts[k] = t
            if k > 0:
                r = self.weights[k].T @ (t[:, None] * (self.sum[k] * ys[k + 1]
                                                       - self.prod2[k] * v))
        return [t.cpu().numpy() for t in ts]

    def grow(self, z_np: np.ndarray, rank: int, seed: int = 1) -> np.ndarray:
        """``z`` with ``rank - r`` new columns of small noise (the rank staircase)."""
        old = self.rank
        parts = []
        rng = np.random.default_rng(seed)
        for k, n in enumerate(self.sizes):
            blk = z_np[self.offsets[k]:self.offsets[k + 1]].reshape(n, old)
            scale = 1e-3 * np.linalg.norm(blk, axis=1, keepdims=True) / math.sqrt(rank)
            parts.append(np.hstack([blk, scale * rng.standard_normal((n, rank - old))]).ravel())
        return np.concatenate(parts)


def schur_failure(lmi: ChainLMI, params) -> int:
    """The hidden layer ``k`` (1-based) whose backward Schur pivot ``Y_k`` (§2) is not positive
    definite, the deepest such; 0 when every pivot is."""
    for k, chol, _, _ in lmi.backward_pivots(params):
        if chol is None:
            return k
    return 0


def tail_gram(lmi: ChainLMI, params, a: int) -> np.ndarray | None:
    """``Q_a`` of the module docstring (what hidden layers ``a+1..L-1`` subtract from
    ``D_a``), None when a tail pivot is not positive definite."""
    if a >= len(lmi.qcs):  # the window is the whole chain: its output is W_L
        w = lmi.weights[-1]
        return w.T @ w
    step = None
    for step in lmi.backward_pivots(params, last=a + 1):
        if step[1] is None:
            return None
    _, chol, _, b = step
    gram = b[a] @ scipy.linalg.cho_solve(chol, b[a].T, check_finite=False)
    own = lmi.qcs[a].blocks(lmi.split(params)[a]).vv  # -2ab t of layer a+1
    if np.any(own):
        w = lmi.weights[a]
        gram = gram + (w.T * own) @ w
    return (gram + gram.T) / 2.0


def polish_window(lmi: ChainLMI, ts: list[np.ndarray], a: int,
                  time_limit: float | None) -> np.ndarray | None:
    """Re-solve hidden layers ``1..a`` exactly with the tail's multipliers fixed (module
    docstring); the full multiplier vector, or None."""
    from .interior import solve_chain_ipm

    params = np.concatenate(ts)
    gram = tail_gram(lmi, params, a)
    if gram is None or not np.isfinite(gram).all():
        return None
    evals, vecs = np.linalg.eigh(gram)
    # R^T R = Q^+ >= Q; directions below 1e-15 of the largest are dropped (no longer >= Q,
    # by that much: the full chain's rho* is recomputed from the result, and certified)
    factor = (vecs * np.sqrt(np.maximum(evals, 0.0))).T
    keep = evals > evals[-1] * 1e-15 if evals[-1] > 0 else evals > 0
    factor = factor[keep] if keep.any() else factor[-1:]
    sub = ChainLMI(tuple(lmi.weights[:a]) + (factor,), (None,) * (a + 1), lmi.qcs[:a],
                   f"{lmi.name} (layers 1..{a})")
    try:
        res = solve_chain_ipm(sub, None, time_limit=time_limit)
    except (LipverifyError, np.linalg.LinAlgError, ValueError, ArithmeticError):
        return None  # a polish that fails leaves the fitted point
    if res.params is None:
        return None
    return np.concatenate([np.asarray(res.params, dtype=np.float64), *ts[a:]])


def _window(sizes: list[int], failing: int) -> int | None:
    """Hidden layers to re-solve: at least ``failing``, as many as fit in WINDOW_ORDER."""
    depth = len(sizes) - 1
    a = max(1, failing)
    while a < depth and sum(sizes[:a + 2]) <= WINDOW_ORDER:
        a += 1
    return a if sum(sizes[:a + 1]) <= WINDOW_MAX_ORDER else None


class _Stop(Exception):
    pass


@contextmanager
def _threads(small: bool):
    """One torch and BLAS thread on narrow chains: their products are too small to share,
    and spinning threads slow L-BFGS between them (measured on 64x64: 26 ms per gradient
    with two threads, 4 ms with one)."""
    if not small:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with blas_threads(1):
            yield
    finally:
        torch.set_num_threads(before)


def solve_chain_lowrank(lmi: ChainLMI, start=None, *, time_limit: float | None = None,
                        tol: float = GAP_TOL, rank: int | None = None, device: str = "cpu",
                        max_iterations: int = MAX_ITERATIONS) -> LowRankResult:
    """Minimise rho over ``lmi`` (module docstring). ``start`` is ignored (the dual ascent
    starts from random unit vectors, seeded); the result's ``rho`` is ``rho*`` of its
    multipliers on the *balanced* chain mapped back (the caller certifies them)."""
    with _threads(max(lmi.sizes) <= SMALL_BLOCK and device != "cuda"):
        return _solve(lmi, time_limit=time_limit, tol=tol, rank=rank, device=device,
                      max_iterations=max_iterations)


def _solve(lmi: ChainLMI, *, time_limit, tol, rank, device, max_iterations) -> LowRankResult:
    import scipy.optimize

    reason = lowrank_reason(lmi)
    if reason is not None:
        raise SolverError(f"the low-rank solver cannot take this LMI: {reason}")
    t0 = time.perf_counter()
    deadline = None if time_limit is None else t0 + time_limit
    dev = resolve_device(device)
    scaled, factors, out = balance(lmi)
    sizes = scaled.sizes
    r = max(2, rank or default_rank(sizes))  # rank 1: unit "vectors" are +-1, no gradient
    net = VectorNetwork(scaled, r, dev)
    z = net.start()
    f0, _ = net.value_grad(z)
    if not f0 > 0:
        raise SolverError("the low-rank solver needs a nonzero output map (f = 0 at its start)")
    best = {"f": f0, "z": z.copy()}
    upper = {"rho": math.inf, "params": None, "polished": False}
    # seconds of one multiplier fit and one polish (estimates until measured), of ascent so
    # far and at the last polish: the ascent stops early enough for a final fit and polish
    polish_cap = POLISH_MAX_SECONDS if time_limit is None else \
        max(1.0, POLISH_SHARE * time_limit)
    first = sum(sizes[:2])  # the smallest window; none at all above WINDOW_MAX_ORDER
    cost = {"fit": 0.0, "ascent": 0.0, "at_polish": 0.0,
            "polish": 0.0 if first > WINDOW_MAX_ORDER
            else min(polish_cap, POLISH_SECONDS_PER_CUBE * first ** 3)}
    iterations, status = 0, "iteration limit"

    def ascent_over() -> bool:
        return deadline is not None and \
            time.perf_counter() > deadline - 1.5 * (cost["fit"] + cost["polish"])

    def fun(x):
        if ascent_over():
            raise _Stop
        f, g = net.value_grad(x)
        if not f > 0 or not math.isfinite(f):
            return 1e30, np.zeros_like(x)
        if f > best["f"]:
            best["f"], best["z"] = f, x.copy()
        return -math.log(f / f0), -g / f

    def offer(params) -> None:
        rho = scaled.rho_star(params)
        if rho < upper["rho"]:
            upper["rho"], upper["params"] = rho, params

    def gap() -> float:
        return (upper["rho"] - best["f"]) / upper["rho"] if math.isfinite(upper["rho"]) \
            else math.inf

    def fit(final: bool) -> None:
        start = time.perf_counter()
        ts = net.multipliers(best["z"])
        ts = [np.maximum(t, 0.0) for t in ts]
        params = np.concatenate(ts)
        offer(params)
        cost["fit"] = time.perf_counter() - start
        # polish when the fit is not good enough: at the end, and whenever the ascent time
        # has doubled since the last polish (and is twice a polish), so polishing takes at
        # most a third of the time and the dual point is ever closer
        since = cost["ascent"] - cost["at_polish"]
        due = final or since >= max(2.0 * cost["polish"], cost["at_polish"])
        if not due or gap() <= tol:
            return
        a = _window(sizes, schur_failure(scaled, params))
        if a is None:
            return
        start = time.perf_counter()
        left = polish_cap if deadline is None else min(polish_cap, max(deadline - start, 1.0))
        polished = polish_window(scaled, ts, a, left)
        if polished is not None:
            before = upper["rho"]
            offer(polished)
            upper["polished"] = upper["polished"] or upper["rho"] < before
        cost["polish"], cost["at_polish"] = time.perf_counter() - start, cost["ascent"]

    while True:
        converged = stopped = False
        began = time.perf_counter()
        try:
            res = scipy.optimize.minimize(
                fun, best["z"], jac=True, method="L-BFGS-B",
                options={"maxiter": ROUND_ITERATIONS, "maxcor": MEMORY, "ftol": 1e-15,
                         "gtol": 0.0})
            iterations += int(res.nit)
            converged = res.status == 0 and res.nit < ROUND_ITERATIONS
        except _Stop:
            stopped = True
        cost["ascent"] += time.perf_counter() - began
        fit(final=stopped or converged or iterations >= max_iterations)
        if gap() <= tol:
            status = "optimal"
            break
        if stopped or ascent_over():
            status = "time limit"
            break
        if iterations >= max_iterations:
            break
        if converged:  # a stationary point that is not optimal: more columns (staircase)
            if r >= sum(sizes):
                status = "converged"
                break
            new = min(sum(sizes), 2 * r)
            grown = VectorNetwork(scaled, new, dev)
            best["z"] = net.grow(best["z"], new)
            net, r = grown, new
    params, rho = upper["params"], upper["rho"]
    return LowRankResult(
        None if params is None else params * factors, rho * out if params is not None
        else math.inf, best["f"] * out, iterations, time.perf_counter() - t0, status, r, dev,
        upper["polished"])


class LowRank(Solver):
    """The registry entry (:mod:`lipverify.solvers.base`)."""

    name = "lowrank"
    summary = ("lipverify's low-rank dual solver for chains with neuron multipliers: dual "
               "ascent on a vector network, multipliers by back-propagation, measured gap; "
               "CPU or CUDA (chosen by auto for chains of 2000+ neurons or order > 3000)")
    capabilities = Capabilities(lmi_kinds=frozenset({"chain"}), qc_kinds=frozenset({"slope"}))
    module = "torch"

    def availability(self) -> tuple[bool, str]:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return False, "torch is not installed"
        return True, "built in (torch)"

    def takes(self, lmi):
        return super().takes(lmi) or lowrank_reason(lmi)

    def solve(self, lmi, start=None, time_limit=None, device: str = "auto") -> SolveResult:
        res = solve_chain_lowrank(lmi, start, time_limit=time_limit, device=device)
        value = math.sqrt(res.rho) if res.params is not None else None
        return SolveResult(res.params, value, res.status, self.name, res.seconds,
                           lower=res.lower, iterations=res.iterations)


__all__ = ["DEVICES", "LowRank", "LowRankResult", "VectorNetwork", "default_rank",
           "lowrank_reason", "resolve_device", "solve_chain_lowrank"]
