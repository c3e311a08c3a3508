"""Scaled-Gershgorin sufficient condition for the monolithic LipSDP LMI, as an LP baseline.

FORMULATIONS.md §5, "Gershgorin sufficient condition (cheap baseline)": ``M(rho, p) >= 0``
holds if some ``d > 0`` satisfies ``m_ii d_i >= sum_{j != i} |m_ij| d_j`` for every ``i``
(Gershgorin's theorem applied to ``D^{-1} M D``, ``M`` symmetric). ``M`` is the §5a
S-procedure LMI of :class:`lipverify.lmi.dag.DagLMI` (§1.2 for chains), affine in
``(rho, p)``, so for a fixed ``d`` this is a linear program: minimise ``rho`` with
``a_ij >= |m_ij(rho, p)|`` for the off-diagonal entries that depend on the multipliers.
Entries ``c p_k`` with a single sign-constrained multiplier ``p_k >= 0`` and no constant
part need no auxiliary (``|c p_k| = |c| p_k``); constant entries go to the right-hand side.

The scaling is ``d = 1`` on the input coordinates and ``c_k`` on every coordinate of node
``k``. We search ``c`` on a small grid (one common ``c``, and ``c_k = a g^{depth_k - 1}``),
then refine each ``c_k`` by a pattern search in ``log c``, and keep the smallest LP value.
The LP's multipliers then go through the §8 gate (:func:`certify_dag`), which computes the
exact ``rho*(p) <= rho_LP`` for them and proves ``M(rho, p) > 0``: the LP value itself is
never reported as certified (it is ``solver_value``).

This is a baseline: §5 and §9 find it sound but very conservative, usually worse than the
naive product, and often infeasible (then the bound is ``inf``, not certified).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import NotApplicableError
from ..ir.network import Network
from ..lmi.dag import DagLMI, certify_dag
from ..options import LPOptions
from ..results import MethodOutput
from ..status import Outcome, Status
from . import register_method

#: Largest LMI order handled (the LP has up to ~order^2 / 2 auxiliary variables).
MAX_ORDER = 600
#: Largest number of nonzero multiplier coefficients (upper triangle of all d M / d p_k).
MAX_COEF_NNZ = 4_000_000
#: Initial grid: one common scaling c = 2^(k/2), 1/16 <= c <= 16 ...
COMMON_GRID = tuple(2.0 ** (k / 2.0) for k in range(-8, 9))
#: ... and c_k = a g^(depth_k - 1) for deeper networks.
DEPTH_A = tuple(2.0 ** k for k in range(-4, 5))
DEPTH_G = (0.25, 0.5, 2.0, 4.0)
#: Pattern search in log2(c_k): first step, smallest step.
STEP0, MIN_STEP = 1.0, 2.0 ** -12
#: Default budgets of the search: LP solves, and seconds when no time limit is given.
MAX_LPS = 400
DEFAULT_TIME_LIMIT = 60.0


@dataclass
class _Parts:
    """``M(rho, p) = M0 + rho E_0 + sum_k p_k M_k``, split for the LP."""

    order: int
    n_params: int
    node_of: np.ndarray  # node index (0 = input) of every coordinate
    diag_const: np.ndarray  # M0_ii
    diag_p: sp.csr_matrix  # (order, P): d m_ii / d p_k
    n_in: int
    lin: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # (i, j, k, |c|): |c| p_k
    aux: tuple[np.ndarray, np.ndarray]  # (i, j) of pairs that need a_ij
    aux_rows: sp.csr_matrix  # the 2 A rows a_ij >= +-m_ij, over [rho, p, a]
    aux_rhs: np.ndarray
    const: tuple[np.ndarray, np.ndarray, np.ndarray]  # (i, j, |M0_ij|), no multiplier
    lower: np.ndarray  # multiplier lower bounds (0 or -inf)


def _param_supports(lmi: DagLMI):
    """For every multiplier ``k``: ``(k, node, rows, (Gvv, Gvw, Gww) on rows, columns)``.

    Each QC's blocks are linear in its multipliers, so ``d M / d p_k`` is
    ``-[V; S]^T G(e_k) [V; S]``. It lives on the rows ``R`` of the node where ``G(e_k)`` is
    nonzero (one neuron for SlopeQC, where it has rank <= 2; one group for GroupSortQC), so
    only the columns those rows of ``V`` touch, plus the node's own coordinates, matter.
    """
    offs = np.concatenate([[0], np.cumsum(lmi.sizes)])
    k0 = 0
    for node, qc in enumerate(lmi.qcs, start=1):
        npar = qc.num_params()
        zero = qc.blocks(np.zeros(npar))
        if any(np.any(np.asarray(b) != 0) for b in (zero.vv, zero.vw, zero.ww)):
            raise NotApplicableError(f"{type(qc).__name__}: blocks not linear in the multipliers")
        for j in range(npar):
            unit = np.zeros(npar)
            unit[j] = 1.0
            b = qc.blocks(unit)
            gs = [np.diag(g) if np.ndim(g) == 1 else np.asarray(g) for g in (b.vv, b.vw, b.ww)]
            support = np.zeros(qc.n, dtype=bool)
            for g in gs:
                support |= np.any(g != 0, axis=0) | np.any(g != 0, axis=1)
            rows = np.flatnonzero(support)
            if rows.size:
                v_cols = np.flatnonzero(np.any(lmi.pres[node - 1][rows] != 0, axis=0))
                cols = np.union1d(v_cols, offs[node] + rows)
                yield k0 + j, node, rows, tuple(g[np.ix_(rows, rows)] for g in gs), cols
        k0 += npar


def _param_coefficients(lmi: DagLMI):
    """Upper-triangle COO ``(k, i, j, value)`` of every ``d M / d p_k``.

    A first pass bounds the number of nonzeros (a dense ``V^T Gvv V`` block fills all
    ``|cols|^2 / 2`` entries; otherwise only the node's rows) and refuses above
    ``MAX_COEF_NNZ`` before anything big is formed.
    """
    estimate = 0
    for _, _, rows, (gvv, _, _), cols in _param_supports(lmi):
        n = cols.size if np.any(gvv != 0) else rows.size
        estimate += n * (n + 1) // 2 + (cols.size * rows.size)
        if estimate > MAX_COEF_NNZ:
            raise NotApplicableError(
                f"the Gershgorin LP would have more than {MAX_COEF_NNZ} multiplier coefficients "
                "(dense V^T T V blocks, e.g. leaky slopes on wide layers); use --method naive"
            )
    offs = np.concatenate([[0], np.cumsum(lmi.sizes)])
    ks, iis, jjs, vals = [], [], [], []
    for k, node, rows, (gvv, gvw, gww), cols in _param_supports(lmi):
        v = lmi.pres[node - 1][rows][:, cols]
        s = (cols[None, :] == (offs[node] + rows)[:, None]).astype(np.float64)
        cross = v.T @ gvw @ s
        coef = -(v.T @ gvv @ v + cross + cross.T + s.T @ gww @ s)
        a, c = np.nonzero(np.triu(coef))
        ks.append(np.full(a.size, k))
        iis.append(cols[a])
        jjs.append(cols[c])
        vals.append(coef[a, c])

    def cat(xs, t):
        return np.concatenate(xs).astype(t) if xs else np.zeros(0, dtype=t)

    return (cat(ks, np.int64), cat(iis, np.int64), cat(jjs, np.int64), cat(vals, np.float64))


def _parts(lmi: DagLMI) -> _Parts:
    order, n_par = lmi.order, sum(lmi.param_sizes)
    m0 = lmi.assemble(np.zeros(n_par), 0.0)
    node_of = np.repeat(np.arange(len(lmi.sizes)), lmi.sizes)
    k, i, j, val = _param_coefficients(lmi)
    on_diag = i == j
    diag_p = sp.csr_matrix((val[on_diag], (i[on_diag], k[on_diag])), shape=(order, n_par))
    k, i, j, val = k[~on_diag], i[~on_diag], j[~on_diag], val[~on_diag]
    keys = i * order + j
    pair_keys, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    pi, pj = pair_keys // order, pair_keys % order
    lower = np.concatenate([np.asarray([-np.inf if b is None else b for b in qc.lower_bounds()],
                                       dtype=np.float64) for qc in lmi.qcs])
    signed = lower == 0.0  # p_k >= 0
    single = (counts[inverse] == 1) & (m0[i, j] == 0.0) & signed[k]
    lin = (i[single], j[single], k[single], np.abs(val[single]))
    # the pairs that need an auxiliary a_ij >= |m_ij|: everything else with a multiplier
    need = np.ones(pair_keys.size, dtype=bool)
    need[inverse[single]] = False
    aux_index = np.full(pair_keys.size, -1)
    aux_index[need] = np.arange(need.sum())
    n_aux = int(need.sum())
    sel = need[inverse]
    rows_a = aux_index[inverse[sel]]
    p_cols = 1 + k[sel]
    # a_ij >= +-(M0_ij + c . p):  +-c . p - a_ij <= -+M0_ij
    a_cols = 1 + n_par + np.arange(n_aux)
    r = np.concatenate([rows_a, n_aux + rows_a, np.arange(n_aux), n_aux + np.arange(n_aux)])
    c = np.concatenate([p_cols, p_cols, a_cols, a_cols])
    d = np.concatenate([val[sel], -val[sel], -np.ones(n_aux), -np.ones(n_aux)])
    aux_rows = sp.csr_matrix((d, (r, c)), shape=(2 * n_aux, 1 + n_par + n_aux))
    m0_aux = m0[pi[need], pj[need]]
    aux_rhs = np.concatenate([-m0_aux, m0_aux])
    # constant off-diagonal entries (no multiplier): |M0_ij| goes to the right-hand side
    ci, cj = np.nonzero(np.triu(m0, 1))
    has_param = np.zeros(order * order, dtype=bool)
    has_param[pair_keys] = True
    keep = ~has_param[ci * order + cj]
    ci, cj = ci[keep], cj[keep]
    return _Parts(order, n_par, node_of, np.diag(m0).copy(), diag_p, lmi.sizes[0], lin,
                  (pi[need], pj[need]), aux_rows, aux_rhs, (ci, cj, np.abs(m0[ci, cj])), lower)


def _solve_lp(parts: _Parts, scale: np.ndarray, time_limit: float | None = None):
    """min rho s.t. the §5 rows for ``d = scale[node_of]``.

    Returns ``(status, rho, params)`` with linprog's status (0 optimal, 1 time or iteration
    limit, 2 infeasible, 4 numerical trouble) and ``rho``/``params`` only when optimal.
    """
    n, n_par = parts.order, parts.n_params
    n_aux = parts.aux[0].size
    d = scale[parts.node_of]
    # row i, divided by d_i:  m_ii >= sum_j |m_ij| d_j / d_i   (§5 scaled Gershgorin)
    li, lj, lk, lc = parts.lin
    ai, aj = parts.aux
    ci, cj, cv = parts.const
    rows = np.concatenate([np.arange(parts.n_in), li, lj, ai, aj])
    cols = np.concatenate([np.zeros(parts.n_in, dtype=np.int64), 1 + lk, 1 + lk,
                           1 + n_par + np.arange(n_aux), 1 + n_par + np.arange(n_aux)])
    data = np.concatenate([-np.ones(parts.n_in), lc * d[lj] / d[li], lc * d[li] / d[lj],
                           d[aj] / d[ai], d[ai] / d[aj]])
    diag = parts.diag_p.tocoo()
    rows = np.concatenate([rows, diag.row])
    cols = np.concatenate([cols, 1 + diag.col])
    data = np.concatenate([data, -diag.data])
    gersh = sp.csr_matrix((data, (rows, cols)), shape=(n, 1 + n_par + n_aux))
    rhs = parts.diag_const.copy()
    np.subtract.at(rhs, ci, cv * d[cj] / d[ci])
    np.subtract.at(rhs, cj, cv * d[ci] / d[cj])
    a_ub = sp.vstack([gersh, parts.aux_rows], format="csr")
    b_ub = np.concatenate([rhs, parts.aux_rhs])
    bounds = np.empty((1 + n_par + n_aux, 2))
    bounds[:, 0], bounds[:, 1] = 0.0, np.inf
    bounds[1:1 + n_par, 0] = parts.lower
    obj = np.zeros(1 + n_par + n_aux)
    obj[0] = 1.0
    options = {} if time_limit is None else {"time_limit": max(time_limit, 1.0)}
    from scipy.optimize import linprog  # lazily: listing methods stays fast

    res = linprog(obj, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs", options=options)
    if res.status != 0 or res.x is None:
        return res.status, math.inf, None
    return 0, float(res.x[0]), np.asarray(res.x[1:1 + n_par], dtype=np.float64)


def _depths(network: Network) -> np.ndarray:
    depth = [0]
    for node in network.nodes:
        depth.append(1 + max(depth[t.source] for t in node.pre.terms))
    return np.asarray(depth, dtype=np.float64)


def gershgorin_search(lmi: DagLMI, depth: np.ndarray, max_lps: int = MAX_LPS,
                      time_limit: float | None = None):
    """Grid + pattern search over node scalings ``c`` (``log2 c_k``), smallest LP value.

    Returns ``(best, info)``: ``best`` holds ``rho`` (LP value), ``params`` (None if no LP
    was solved to optimality) and ``log_c``; ``info`` counts LP solves by outcome.
    """
    parts = _parts(lmi)
    start = time.perf_counter()
    cache: dict[tuple, float] = {}
    outcomes = {"optimal": 0, "infeasible": 0, "not solved": 0}
    best = {"rho": math.inf, "params": None, "log_c": None}

    def remaining() -> float | None:
        return None if time_limit is None else time_limit - (time.perf_counter() - start)

    def out_of_budget() -> bool:
        left = remaining()
        return len(cache) >= max_lps or (left is not None and left <= 0)

    def evaluate(log_c: np.ndarray) -> float:
        key = tuple(np.round(log_c, 9))
        if key in cache:
            return cache[key]
        scale = np.concatenate([[1.0], 2.0 ** log_c])
        status, value, params = _solve_lp(parts, scale, remaining())
        outcome = {0: "optimal", 2: "infeasible"}.get(status, "not solved")
        outcomes[outcome] += 1
        cache[key] = value
        if params is not None and value < best["rho"]:
            best.update(rho=value, params=params, log_c=log_c.copy())
        return value

    hidden = depth[1:]
    for c in COMMON_GRID:
        if cache and out_of_budget():
            break
        evaluate(np.full(hidden.size, math.log2(c)))
    if hidden.max() > 1:
        for g in DEPTH_G:
            for a in DEPTH_A:
                if out_of_budget():
                    break
                evaluate(math.log2(a) + (hidden - 1.0) * math.log2(g))
    # pattern search in log2 c_k, one node at a time, halving the step
    step = STEP0
    while best["log_c"] is not None and step >= MIN_STEP and not out_of_budget():
        improved = False
        for k in range(hidden.size):
            for sign in (1.0, -1.0):
                if out_of_budget():
                    break
                trial = best["log_c"].copy()
                trial[k] += sign * step
                before = best["rho"]
                evaluate(trial)
                if best["rho"] < before * (1.0 - 1e-12):
                    improved = True
                    break
        if not improved:
            step /= 2.0
    info = {"lp_solves": len(cache), "lp_outcomes": outcomes, "budget_exhausted": out_of_budget(),
            "search_seconds": time.perf_counter() - start}
    return best, info


@register_method(
    "gershgorin-lmi",
    norms=("l2",),
    summary="Scaled-Gershgorin LP on the LipSDP/residual LMI (§5), multipliers certified (§8). "
    "Cheap baseline; often infeasible or looser than naive.",
    options=LPOptions,
)
def gershgorin_lmi(network: Network, *, norm: str = "l2", time_limit: float | None = None,
                   max_lps: int = MAX_LPS, **_) -> MethodOutput:
    if norm != "l2":
        raise NotApplicableError("gershgorin-lmi bounds the l2 norm only; use --method naive")
    order = network.input_dim + sum(n.width for n in network.nodes)
    if order > MAX_ORDER:
        raise NotApplicableError(
            f"{network.name}: the LMI has order {order} > {MAX_ORDER}, too large for the "
            "gershgorin-lmi baseline; use --method naive"
        )
    lmi = DagLMI.from_network(network, per_neuron=True)
    if time_limit is None:
        time_limit = DEFAULT_TIME_LIMIT
    best, info = gershgorin_search(lmi, _depths(network), max_lps, time_limit)
    details = {"order": lmi.order, "form": "monolithic (§5a), scaled Gershgorin LP (§5)", **info}
    if best["params"] is None:
        out = info["lp_outcomes"]
        status = (Status(Outcome.INFEASIBLE, f"the Gershgorin LP is infeasible for all "
                         f"{info['lp_solves']} scalings tried") if out["not solved"] == 0 else
                  Status(Outcome.STOPPED, f"no Gershgorin LP solved: {out['infeasible']} "
                         f"infeasible, {out['not solved']} not solved (time limit or numerical "
                         "trouble)"))
        if info["budget_exhausted"]:
            status = status.with_(note="search budget exhausted (time_limit / max_lps)")
        return MethodOutput(bound=math.inf, certified=False, status=status, solver="highs",
                            details=details)
    lp_bound = math.sqrt(best["rho"])
    details["scaling"] = (2.0 ** best["log_c"]).tolist()
    bound, params, rho, theta = certify_dag(lmi, best["params"])
    ok = math.isfinite(bound)
    status = Status(theta=theta) if ok else Status(Outcome.NOT_CERTIFIED)
    details["certificate"] = {"kind": "lipsdp-dag", "multipliers": "neuron", "rho": rho,
                              "theta": theta, "params": params.tolist()}
    return MethodOutput(bound=bound, certified=ok, status=status, solver="highs",
                        solver_value=lp_bound, details=details)
