"""LMI contract conformance (lipverify.lmi.chain.LMI): every kind answers the same calls.

Kinds: ``chain`` (FORMULATIONS.md §1.2), ``dag`` (§5a) and ``linf-row`` (the bordered
l-infinity LMI of one output row, §1.4); all are certified by the one §8 gate
(:func:`lipverify.certify.gate.certify`).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

import lipverify
from lipverify.certify.gate import certify
from lipverify.errors import NotApplicableError
from lipverify.ir.activations import SlopeRestricted
from lipverify.lmi import linf
from lipverify.lmi.chain import LMI, ChainLMI
from lipverify.lmi.dag import DagLMI
from lipverify.lmi.linf import LinfRowLMI

sys.path.insert(0, str(Path(__file__).parent))
from test_residual import resnet  # noqa: E402

KINDS = ["chain", "dag", "linf-row"]
#: the norm each kind bounds, and its bound as a function of rho (§1.2 / §5a: sqrt; §1.4: rho)
NORM = {"chain": "l2", "dag": "l2", "linf-row": "linf"}
BOUND_OF_RHO = {"l2": math.sqrt, "linf": float}


def _nets():
    rng = np.random.default_rng(5)
    relu = SlopeRestricted.named("relu")
    chain = lipverify.Network.sequential(
        [rng.normal(size=(5, 3)), rng.normal(size=(4, 5)), rng.normal(size=(2, 4))], [relu] * 2)
    dag = resnet([(rng.normal(size=(6, 6)) * 0.4, rng.normal(size=(6, 6)) * 0.4)] * 2, rng, m=6)
    return {"chain": chain, "dag": dag, "linf-row": chain.select_outputs([0])}


def _lmis():
    nets = _nets()
    return {"chain": ChainLMI.from_network(nets["chain"]),
            "dag": DagLMI.from_network(nets["dag"]),
            "linf-row": LinfRowLMI.from_network(nets["linf-row"])}


def _sampled_lower(net, norm: str, n: int = 400, h: float = 1e-6) -> float:
    """max over random points of the local gain: ``||J||_2`` (l2) or the l1 norm of the one
    row's gradient (l_inf -> l_inf of a scalar), J by central differences (exact for a
    piecewise-linear net away from kinks, up to rounding)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, net.input_dim))
    eye = np.eye(net.input_dim)
    jac = np.stack([(net(x + h * e) - net(x - h * e)) / (2 * h) for e in eye], axis=-1)
    if norm == "l2":
        return float(np.linalg.norm(jac, ord=2, axis=(1, 2)).max())
    assert jac.shape[1] == 1
    return float(np.abs(jac[:, 0, :]).sum(axis=1).max())


def _smallest_feasible_rho(lmi, params, hi: float) -> float:
    """Bisection on ``lambda_min(M(rho, params)) >= 0`` (monotone in rho)."""
    lo = 0.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if np.linalg.eigvalsh(lmi.assemble(params, mid)).min() >= 0:
            hi = mid
        else:
            lo = mid
    return hi


@pytest.mark.parametrize("kind", KINDS)
def test_contract(kind):
    lmi = _lmis()[kind]
    assert isinstance(lmi, LMI) and lmi.kind == kind
    anchor = lmi.anchor()
    assert anchor.shape == (sum(lmi.param_sizes),)
    assert [p.size for p in lmi.split(anchor)] == lmi.param_sizes
    assert np.array_equal(lmi.project(anchor), anchor)  # the anchor lies in the multiplier set
    rho = lmi.rho_star(anchor)
    assert np.isfinite(rho) and rho > 0
    m = lmi.assemble(anchor, rho * (1 + 1e-6) + 1e-9)
    assert m.shape == (lmi.order, lmi.order) and np.array_equal(m, m.T)
    assert np.linalg.eigvalsh(m).min() > -1e-8 * np.abs(m).max()
    assert np.all(lmi.assemble(anchor, rho, absolute=True) >= np.abs(lmi.assemble(anchor, rho)))
    # rho* is the smallest rho whose matrix is positive semidefinite
    assert _smallest_feasible_rho(lmi, anchor, 4 * rho) == pytest.approx(rho, rel=1e-9)
    lam1, soft, grad = lmi.soft_rho(anchor, 1e-3 * rho)
    assert lam1 == pytest.approx(rho, rel=1e-8) and soft >= lam1 and grad.shape == anchor.shape
    # grad F_mu against central differences along a random direction
    d = np.random.default_rng(1).normal(size=anchor.shape) * anchor * 1e-6
    fd = (lmi.soft_rho(anchor + d, 1e-3 * rho)[1] - lmi.soft_rho(anchor - d, 1e-3 * rho)[1]) / 2
    assert fd == pytest.approx(float(grad @ d), rel=1e-4)
    offs = np.concatenate([[0], np.cumsum(lmi.sizes)])
    assert offs[-1] == lmi.order
    first_qc = len(lmi.param_sizes) - len(lmi.qcs)  # QC blocks are the last ones
    for k in range(1, len(lmi.qcs) + 1):
        cols, v = lmi.node_inputs(k)
        assert v.shape == (lmi.sizes[k], cols.size) and cols.max() < lmi.order
        # node k's multipliers touch only the columns it reads and its own block
        parts = lmi.split(anchor)
        parts[first_qc + k - 1] = parts[first_qc + k - 1] * 2.0
        diff = lmi.assemble(np.concatenate(parts), rho) - lmi.assemble(anchor, rho)
        touched = np.flatnonzero(np.any(diff != 0, axis=0))
        assert touched.size and set(touched) <= set(cols) | set(range(offs[k], offs[k + 1]))


@pytest.mark.parametrize("kind", KINDS)
def test_contract_certify_anchor(kind):
    """The §8 gate certifies the anchor of every kind, above a sampled lower bound."""
    lmi, net = _lmis()[kind], _nets()[kind]
    cert = certify(lmi, lmi.anchor())
    assert cert.ok and cert.message.startswith("certified")
    assert np.array_equal(lmi.project(cert.params), cert.params)
    rho_star = lmi.rho_star(cert.params)
    assert rho_star <= cert.rho <= rho_star * (1 + 1e-5)
    assert np.linalg.eigvalsh(lmi.assemble(cert.params, cert.rho)).min() > 0
    assert cert.bound >= BOUND_OF_RHO[NORM[kind]](cert.rho)
    assert cert.bound >= _sampled_lower(net, NORM[kind])


def test_linf_row_lmi_values():
    """The bordered matrix of §1.4 entry by entry, and its sizes."""
    row = _lmis()["linf-row"]
    chain = row.chain
    assert row.order == chain.order + 1 == 13 and row.sizes == (4, 5, 4)
    assert row.param_sizes == [3, 5, 4] and row.qcs is chain.qcs
    x = row.anchor()
    tau = x[:3]
    m = row.assemble(x, 2.5)
    assert m[0, 0] == 2 * 2.5 - tau.sum()
    assert np.array_equal(m[0, 1:], np.concatenate([np.zeros(8), -chain.weights[-1][0]]))
    blocks, _ = chain.blocks(x[3:], 0.0, output=False)
    assert np.array_equal(m[1:4, 1:4], blocks[0] + np.diag(tau))
    assert np.array_equal(m[-4:, -4:], blocks[-1])  # no -W_L^T W_L in the last block
    cols, v = row.node_inputs(2)
    assert np.array_equal(cols, np.arange(4, 9)) and v is chain.weights[1]
    # rho* = (1^T tau + c^T P^{-1} c) / 2 (§8 "l-infinity")
    c = -m[1:, 0]
    assert row.rho_star(x) == pytest.approx(
        0.5 * (tau.sum() + c @ np.linalg.solve(m[1:, 1:], c)), rel=1e-12)
    assert row.rho_star(x) == pytest.approx(605.5855383440054, rel=1e-9)
    assert row.project(-x)[:3].max() == 0.0
    bad = np.concatenate([np.zeros(3), x[3:]])  # tau = 0 leaves P(tau, T) indefinite here
    assert row.rho_star(bad) == math.inf and row.soft_rho(bad, 1.0) == (math.inf, math.inf, None)
    with pytest.raises(NotApplicableError, match="one output row"):
        LinfRowLMI(_lmis()["chain"])


def test_linf_row_certify_matches_free_functions():
    """certify(LinfRowLMI) is best_blend on the row's chain, bit for bit; at minimize()'s
    output it is no worse than certify_linf there, and past the deadline it skips the polish."""
    row = _lmis()["linf-row"]
    chain = row.chain
    x_min, f_min = row.minimize()
    assert f_min == linf.minimize(chain)[1] and f_min == pytest.approx(row.rho_star(x_min))
    for x in (row.anchor(), x_min):
        cert = certify(row, x)
        ref = linf.best_blend(chain, x)
        assert cert.ok and ref.ok
        assert cert.bound == pytest.approx(ref.bound, rel=1e-12)
        assert cert.rho == pytest.approx(ref.rho, rel=1e-12) and cert.margin == ref.margin
        assert np.array_equal(cert.params, ref.params) and cert.theta == ref.theta
        assert linf.verify_linf(chain, cert.params, cert.rho)
        assert cert.bound <= linf.certify_linf(chain, x).bound * (1 + 1e-12)
    # minimize() polishes from the anchor; certify_linf of its output, and the gate's bound
    # for it once the deadline has passed (no polish: only the blend search)
    plain = linf.certify_linf(chain, x_min)
    assert plain.ok and plain.bound == pytest.approx(f_min, rel=1e-10)
    late = certify(row, x_min, deadline=0.0)
    assert late.ok and late.message == "certified"
    assert late.bound == pytest.approx(plain.bound, rel=1e-9)
    assert certify(row, None).bound == linf.best_blend(chain, None).bound


def test_linf_row_solved_point():
    """A conic solver's optimum of §1.4, certified by the gate: the SDP value, above the
    sampled lower bound and below the row-sum product (§9)."""
    from lipverify.solvers.choose import choose_backend
    from lipverify.solvers.conic import solve_linf

    row, net = _lmis()["linf-row"], _nets()["linf-row"]
    res = solve_linf(row.chain, choose_backend(row.order, "clarabel", conic_only=True))
    cert = certify(row, res.params)
    assert cert.ok and cert.bound == pytest.approx(10.2601341, rel=1e-6)
    lower = _sampled_lower(net, "linf")
    assert lower == pytest.approx(6.2865686, rel=1e-6) and lower <= cert.bound
    product = math.prod(np.abs(w).sum(axis=1).max() for w in row.chain.weights)
    assert cert.bound < product
    assert cert.bound <= certify(row, row.anchor()).bound
