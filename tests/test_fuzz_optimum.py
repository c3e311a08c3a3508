"""LipSDP reaches its optimum, or says so: random small nets of every kind against an
independent cvxpy solve of the same SDP (FORMULATIONS.md §1.2, §4, §5a).

Seeded and cheap: ``make test`` runs a few dozen nets, ``make test-all`` (``slow``) 400.
Weights are scaled across 1e-3..1e3, per layer or per net. Every certified
``lipsdp-neuron`` bound must be within 1e-4 of the optimum, or its status must say that it
is not optimal (and, being certified, it is never below the optimum).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import lipverify
from lipverify.ir.activations import GroupSort, SlopeRestricted
from lipverify.ir.linear import Dense
from lipverify.ir.network import Affine, Network, Node, Term

cp = pytest.importorskip("cvxpy")

TOL = 1e-4
KINDS = ("relu", "leaky", "tanh", "sigmoid", "slope", "groupsort", "degenerate", "residual")


def _act(kind: str):
    return {"relu": SlopeRestricted.named("relu"),
            "leaky": SlopeRestricted.named("leaky_relu", 0.1),
            "tanh": SlopeRestricted.named("tanh"),
            "sigmoid": SlopeRestricted.named("sigmoid"),
            "degenerate": SlopeRestricted.named("relu"),
            "residual": SlopeRestricted.named("relu"),
            "slope": SlopeRestricted("slope", -0.2, 1.3),  # alpha beta < 0
            "groupsort": GroupSort(2)}[kind]


def _weights(rng, widths, kind):
    """Gaussian layers, scaled by 10^U(-3, 3) per layer or per net; "degenerate" adds zero
    rows, duplicated neurons and rank-one layers."""
    per_layer = rng.random() < 0.5
    common = 10.0 ** rng.uniform(-3, 3)
    ws = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        w = rng.standard_normal((n_out, n_in)) / math.sqrt(n_in)
        ws.append(w * (10.0 ** rng.uniform(-3, 3) if per_layer else common))
    if kind == "degenerate":
        k = int(rng.integers(len(ws)))
        trick = int(rng.integers(3))
        w = ws[k]
        if trick == 0 and w.shape[0] > 1:
            w[rng.integers(w.shape[0])] = 0.0  # a dead neuron
        elif trick == 1 and w.shape[0] > 1:
            w[-1] = w[0]  # a duplicated neuron
        else:
            ws[k] = np.outer(w[:, 0], w[0])  # rank one
    return ws


def random_net(seed: int, kind: str, big: bool = False):
    """A seeded net of ``kind``: depth 1-4, widths up to 16 and 40 hidden neurons, or with
    ``big`` depth 1-8, widths up to 32 and 64 hidden neurons."""
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(1, 9 if big else 5))
    wide, max_neurons = (33, 64) if big else (17, 40)
    widths = [int(rng.integers(1, wide // 2 + 1))] + \
        [int(rng.integers(1, wide)) for _ in range(depth)] + [int(rng.integers(1, 6))]
    if kind == "groupsort":
        widths[1:-1] = [2 * max(1, w // 2) for w in widths[1:-1]]
    while sum(widths[1:-1]) > max_neurons:
        widths[1:-1] = [2 * max(1, w // 4) if kind == "groupsort" else max(1, w // 2)
                        for w in widths[1:-1]]
    if kind == "residual":
        widths[1:-1] = [widths[1]] * depth
    ws = _weights(rng, widths, kind)
    act = _act(kind)
    if kind != "residual" or depth < 2:
        return Network.sequential(ws, [act] * depth, name=f"{kind}-{seed}"), ws
    # z_k = act(W_k z_{k-1} + z_{k-1}) for k >= 2: identity skips around each hidden layer
    m = widths[1]
    nodes = [Node(act, Affine((Term(0, Dense(ws[0])),), np.zeros(m)), (m,))]
    for k in range(1, depth):
        terms = (Term(k, Dense(ws[k])), Term(k, Dense(np.eye(m))))
        nodes.append(Node(act, Affine(terms, np.zeros(m)), (m,)))
    out = Affine((Term(depth, Dense(ws[-1])),), np.zeros(widths[-1]))
    return Network((widths[0],), tuple(nodes), out, name=f"{kind}-{seed}"), ws


def _qc_blocks(kind, act, n):
    """The QC of §1.1 / §4 as cvxpy blocks, written independently of lipverify.qc."""
    if kind != "groupsort":
        t = cp.Variable(n, nonneg=True)
        a, b = act.alpha, act.beta
        return [t], (-2 * a * b * cp.diag(t), (a + b) * cp.diag(t), -2 * cp.diag(t))
    g = n // 2
    lam = cp.Variable(g, nonneg=True)
    tau, s, p = cp.Variable(g), cp.Variable(g), cp.Variable(g)
    ones = np.ones((2, 2))

    def blk(v):
        return cp.bmat([[v[i] * ones if i == j else np.zeros((2, 2)) for j in range(g)]
                        for i in range(g)])

    t_mat = cp.diag(cp.vec(cp.vstack([lam, lam]), order="F")) + blk(tau)
    return [lam, tau, s, p], (t_mat - 2 * blk(s), blk(p) + blk(s), -t_mat - 2 * blk(p))


def reference_chain(ws, kind, act) -> float:
    """Monolithic LipSDP-Neuron (§1.2) of a chain, on unit-norm weights with the output
    rescaled so that rho ~ 1 (two passes: the solver's tolerances are absolute)."""
    norms = [np.linalg.norm(w, 2) or 1.0 for w in ws]
    unit = [w / n for w, n in zip(ws, norms)]
    c, best = 1.0, math.inf
    for _ in range(3):
        scaled = unit[:-1] + [unit[-1] * c]
        value, params, ok = _solve_chain(scaled, kind, act)
        if ok and kind != "groupsort":  # keep only multipliers that are truly feasible
            top, scale = lmi_max_eig(scaled, act, params, value ** 2 * (1 + 1e-9))
            ok = top <= 1e-9 * scale
        if ok:
            best = min(best, value / c)
        if not value > 0 or 0.5 < value < 2.0:
            break
        c /= value
    return best * float(np.prod(norms))


def lmi_max_eig(ws, act, params, rho) -> tuple[float, float]:
    """``(lambda_max, scale)`` of the reference LMI at a slope-QC certificate (numpy, float64):
    an independent check that the certified multipliers are feasible (so >= the optimum)."""
    n0, big_n = ws[0].shape[1], sum(w.shape[0] for w in ws[:-1])
    order = n0 + big_n
    a_mat = np.zeros((big_n, order))
    r = c = 0
    for w in ws[:-1]:
        a_mat[r:r + w.shape[0], c:c + w.shape[1]] = w
        r, c = r + w.shape[0], c + w.shape[1]
    b_mat = np.hstack([np.zeros((big_n, n0)), np.eye(big_n)])
    t = np.diag(params)
    a, b = act.alpha, act.beta
    q = np.block([[-2 * a * b * t, (a + b) * t], [(a + b) * t, -2 * t]])
    ab = np.vstack([a_mat, b_mat])
    m = ab.T @ q @ ab
    m[:n0, :n0] -= rho * np.eye(n0)
    m[-ws[-1].shape[1]:, -ws[-1].shape[1]:] += ws[-1].T @ ws[-1]
    return float(np.linalg.eigvalsh(m).max()), float(np.abs(m).max())


def _solve_chain(ws, kind, act) -> float:
    n0, hidden = ws[0].shape[1], [w.shape[0] for w in ws[:-1]]
    big_n, order = sum(hidden), ws[0].shape[1] + sum(hidden)
    a_mat, b_mat = np.zeros((big_n, order)), np.zeros((big_n, order))
    r = c = 0
    for w in ws[:-1]:
        a_mat[r:r + w.shape[0], c:c + w.shape[1]] = w
        r, c = r + w.shape[0], c + w.shape[1]
    b_mat[:, n0:] = np.eye(big_n)
    gvv, gvw, gww, variables = [], [], [], []
    for n in hidden:
        var, (vv, vw, ww) = _qc_blocks(kind, act, n)
        gvv.append(vv), gvw.append(vw), gww.append(ww)
        variables += var
    q = cp.bmat([[cp.bmat(_diag(gvv)), cp.bmat(_diag(gvw))],
                 [cp.bmat(_diag(gvw)).T, cp.bmat(_diag(gww))]])
    ab = np.vstack([a_mat, b_mat])
    last = np.zeros((order, order))
    last[-ws[-1].shape[1]:, -ws[-1].shape[1]:] = ws[-1].T @ ws[-1]
    e0 = np.zeros((order, order))
    e0[:n0, :n0] = np.eye(n0)
    rho = cp.Variable()
    m = ab.T @ q @ ab - rho * e0 + last
    prob = cp.Problem(cp.Minimize(rho), [(m + m.T) / 2 << 0])
    try:
        prob.solve(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    except cp.error.SolverError:  # no reference from this pass
        return math.nan, None, False
    if rho.value is None:
        return math.nan, None, False
    params = np.concatenate([np.ravel(v.value) for v in variables])
    return math.sqrt(max(float(rho.value), 0.0)), params, prob.status == "optimal"


def _diag(blocks):
    sizes = [b.shape[0] for b in blocks]
    return [[b if i == j else np.zeros((sizes[i], sizes[j])) for j, _ in enumerate(blocks)]
            for i, b in enumerate(blocks)]


def reference(net, ws, kind) -> float:
    """The best of two conic solves, each an upper bound on the optimum: the independent
    formulation above (when its multipliers check out feasible) and lipverify's cvxpy form
    (chordal §3 for chains, monolithic §5a for DAGs), certified."""
    conic = math.inf
    for form in ("chordal",) if net.is_sequential else ("full", "chordal"):
        try:  # Clarabel takes cones up to order 100: the chained DAG form when §5a is larger
            conic = lipverify.bound(net, method="lipsdp-neuron", solver="clarabel",
                                    form=form).bound
            break
        except lipverify.SolverError:
            continue
    if not net.is_sequential:
        return conic
    return min(reference_chain(ws, kind, _act(kind)), conic)


def check(seed: int, kind: str, big: bool = False) -> tuple[float, lipverify.BoundResult]:
    """``(excess over the optimum, result)``, asserting certified, feasible (independently)
    and honest: an excess above TOL only with a status that is not "optimal"."""
    net, ws = random_net(seed, kind, big)
    ref = reference(net, ws, kind)
    r = lipverify.bound(net, method="lipsdp-neuron")
    assert r.certified, (kind, seed, r.status)
    if net.is_sequential and kind != "groupsort":  # feasible, so never below the optimum
        top, scale = lmi_max_eig(ws, _act(kind), np.asarray(r.certificate.body["params"]),
                                 r.certificate.body["rho"])
        assert top <= 1e-12 * scale, (kind, seed, top, scale)
    # a reference below ours by more than TOL was the conic solver's inaccuracy
    excess = max(r.bound - ref, 0.0) / ref if ref > 0 else r.bound
    if excess > TOL:  # allowed only when the status says so
        assert not r.status.optimal, (kind, seed, r.bound, ref, str(r.status))
    return excess, r


QUICK = [(seed, kind) for kind in KINDS for seed in range(4)]


@pytest.mark.parametrize("seed, kind", QUICK, ids=[f"{k}-{s}" for s, k in QUICK])
def test_within_tolerance_of_the_conic_optimum(seed, kind):
    excess, r = check(seed, kind)
    assert excess <= TOL, (kind, seed, excess, str(r.status))


@pytest.mark.slow
def test_sweep_of_400_nets():
    """400 nets of every kind: within 1e-4, or an honest status; ReLU MLPs always within."""
    rows = [(kind, *check(seed, kind)) for kind in KINDS for seed in range(100, 150)]
    relu = [e for k, e, _ in rows if k == "relu"]
    assert max(relu) <= TOL
    assert all(e <= TOL or not r.status.optimal for _, e, r in rows)


def _stopped_ipm(monkeypatch):
    """The interior point stopped after two iterations (an iteration limit)."""
    from lipverify.solvers import interior

    real = interior.solve_chain_ipm
    monkeypatch.setattr(interior, "solve_chain_ipm",
                        lambda lmi, start=None, **kw: real(lmi, start, max_iter=2, **kw))


def test_a_stopped_interior_point_is_finished_by_a_conic_solver(monkeypatch):
    from lipverify.status import Outcome

    net, ws = random_net(1, "relu")
    optimum = reference(net, ws, "relu")
    _stopped_ipm(monkeypatch)
    forced = lipverify.bound(net, method="lipsdp-neuron", solver="ipm")
    # asked for the interior point alone: it says it stopped, with its gap
    assert forced.status.outcome is Outcome.STOPPED and forced.status.gap > 1e-6
    assert "iteration limit" in forced.status.detail and forced.details["gap"] > 1e-6
    assert forced.bound > optimum * (1 + TOL)
    auto = lipverify.bound(net, method="lipsdp-neuron")  # auto: the safety net finishes it
    assert auto.certified and auto.status.fallback_from == "ipm"
    assert auto.bound == pytest.approx(optimum, rel=TOL)
    assert auto.solver == "clarabel" and auto.status.gap is not None
    # "optimal" only with a measured gap within 1e-6; else "converged", with the gap
    assert auto.status.optimal == (auto.status.gap <= 1e-6)
    assert auto.status.outcome in (Outcome.OPTIMAL, Outcome.CONVERGED)
    assert "iteration limit" in auto.details["ipm_stopped"]
