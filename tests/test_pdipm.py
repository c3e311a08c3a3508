"""The primal-dual interior point (lipverify.solvers.interior.primal_dual): the exact HKM
Schur matrix, the rotation that splits off rho I, agreement with the dual-scaling solver and
the conic optimum, a gap that is a true lower bound, and deep nets."""

from __future__ import annotations

import numpy as np
import pytest
from test_ipm import RELU, mlp

import lipverify
from lipverify.certify.gate import certify_chain
from lipverify.ir.activations import SlopeRestricted
from lipverify.lmi.chain import ChainLMI
from lipverify.solvers import interior
from lipverify.solvers.interior import common
from lipverify.solvers.interior import primal_dual as pdipm

SLOPE = SlopeRestricted("slope", -0.3, 1.2)


def _basis(lmi):
    """``F_j`` of ``S(y) = sum_j y_j F_j - C^T C`` in (rho, params) coordinates."""
    m = sum(lmi.param_sizes) + 1
    c0 = lmi.assemble(np.zeros(m - 1), 0.0)
    out = []
    for e in np.eye(m):
        f = lmi.assemble(e[1:], 0.0) - c0
        f[np.arange(lmi.sizes[0]), np.arange(lmi.sizes[0])] += e[0]
        out.append(f)
    return out


@pytest.mark.parametrize("act", [RELU, SLOPE])
@pytest.mark.parametrize("per_neuron", [True, False])
def test_schur_matrix_is_tr_f_x_f_y(act, per_neuron):
    rng = np.random.default_rng(2)
    lmi = ChainLMI.from_network(mlp([5, 4, 3, 2], act=act), per_neuron)
    form = common.neuron_form(lmi)
    a, b = rng.normal(size=(2, lmi.order, lmi.order))
    x, y = a @ a.T, b @ b.T
    vec, mat = pdipm.grouped_blocks(form)
    m = mat(pdipm.schur(form, pdipm.Blocks.of(form, x), pdipm.Blocks.of(form, y)))
    fs = _basis(lmi)
    ref = np.array([[np.trace(f @ x @ g @ y) for g in fs] for f in fs])
    assert np.allclose(m, ref, rtol=1e-11, atol=1e-12 * np.abs(ref).max())
    tr = [np.trace(f @ x) for f in fs]
    assert np.allclose(vec(pdipm.Blocks.of(form, x).trace(form)), tr, rtol=1e-11, atol=1e-11)
    assert np.allclose(vec(pdipm.trace_of(form, x)), tr, rtol=1e-11, atol=1e-11)


def test_rotation_keeps_rho_star():
    lmi = ChainLMI.from_network(mlp([30, 7, 6, 3], seed=4))
    small, k = common.rotate(lmi)
    assert k == 23 and small.order == lmi.order - 23
    p = common.strict_start(lmi, None)[0]
    assert small.rho_star(p) == pytest.approx(lmi.rho_star(p), rel=1e-10)
    same, k0 = common.rotate(ChainLMI.from_network(mlp([5, 7, 3])))
    assert k0 == 0 and same.order == 12


@pytest.mark.parametrize("widths", [[8, 10, 10, 3], [40, 12, 12, 12, 4]])
@pytest.mark.parametrize("act", [RELU, SLOPE])
def test_agrees_with_dual_scaling_and_the_conic_optimum(widths, act):
    net = mlp(widths, seed=len(widths), act=act)
    lmi = ChainLMI.from_network(net)
    pd, ds = pdipm.solve_chain_pd(lmi), interior.solve_chain_ipm(lmi, algorithm="dual-scaling")
    assert pd.status == "optimal" and pd.gap <= 1e-8
    assert pd.rho == pytest.approx(ds.rho, rel=1e-7)
    assert pd.lower <= ds.rho * (1 + 1e-9)  # a true lower bound (weak duality)
    assert pd.iterations < ds.iterations
    conic = lipverify.bound(net, method="lipsdp-neuron", solver="clarabel").bound
    cert = certify_chain(lmi, pd.params)
    assert cert.ok and cert.bound == pytest.approx(conic, rel=1e-6)


def test_layer_multipliers():
    lmi = ChainLMI.from_network(mlp([10, 8, 8, 8, 3], seed=1), per_neuron=False)
    pd, ds = pdipm.solve_chain_pd(lmi), interior.solve_chain_ipm(lmi, algorithm="dual-scaling")
    assert pd.status == "optimal" and pd.rho == pytest.approx(ds.rho, rel=1e-7)


def test_deep_net_certifies_below_ldlt_fast_with_a_gap():
    net = mlp([12] * 17 + [3], seed=3, scale=2.0)  # 16 hidden layers, norm product ~1e5
    lmi = ChainLMI.from_network(net)
    res = pdipm.solve_chain_pd(lmi, time_limit=120)
    assert res.status == "optimal" and res.gap <= 1e-7
    cert = certify_chain(lmi, res.params)
    lower = lipverify.bound(net, method="lower").bound
    fast = lipverify.bound(net, method="ldlt-fast").bound
    assert cert.ok and lower <= cert.bound < fast
    assert cert.bound ** 2 == pytest.approx(res.rho, rel=1e-6)
    assert res.lower <= cert.rho


def test_time_limit_returns_a_strictly_feasible_point():
    lmi = ChainLMI.from_network(mlp([20, 16, 16, 16, 4], seed=2))
    res = pdipm.solve_chain_pd(lmi, time_limit=0.0)
    assert res.status == "time limit" and res.iterations == 0
    assert np.isfinite(res.rho) and res.rho >= lmi.rho_star(res.params)


# ------------------------------------------------------------------ block tridiagonal / chordal
def _random_tri(sizes, seed=0):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    a = rng.normal(size=(n, n))
    full = a @ a.T + n * np.eye(n)
    offs = np.concatenate([[0], np.cumsum(sizes)])
    d = [full[offs[k]:offs[k + 1], offs[k]:offs[k + 1]].copy() for k in range(len(sizes))]
    b = [full[offs[k]:offs[k + 1], offs[k + 1]:offs[k + 2]].copy()
         for k in range(len(sizes) - 1)]
    return full, d, b, offs


def test_block_tridiagonal_factor_inverse_lower_factor_and_band():
    from lipverify.lmi import blocktri
    from lipverify.lmi.chain import assemble_tridiagonal

    _, d, b, offs = _random_tri([3, 4, 2, 5])
    tri = assemble_tridiagonal(d, b)
    fac = blocktri.factor(d, b)
    assert np.allclose(blocktri.inverse(fac), np.linalg.inv(tri), atol=1e-14)
    assert np.allclose(blocktri.lower(fac), np.linalg.cholesky(tri), atol=1e-13)
    assert blocktri.factor([-x for x in d], b) is None  # not positive definite
    z, y = np.random.default_rng(2).normal(size=(2,) + tri.shape)
    band_d, band_b = blocktri.band(z, y, offs)
    zy = (z @ y + (z @ y).T) / 2
    mask = tri != 0
    assert np.allclose(assemble_tridiagonal(band_d, band_b)[mask], zy[mask])


def test_max_det_completion_keeps_the_pattern_and_has_a_tridiagonal_inverse():
    from lipverify.lmi import blocktri

    full, d, b, _ = _random_tri([3, 4, 2, 5], seed=3)
    x = blocktri.completion(d, b, blocktri.clique_factors(d, b))
    pattern = np.abs(ipm_tri_mask(d, b)) > 0
    assert np.array_equal(x[pattern], full[pattern])
    inv = np.linalg.inv(x)
    assert np.abs(inv[~pattern]).max() < 1e-12 * np.abs(inv).max()
    assert len(blocktri.clique_factors(d, b)) == 3
    bad = [x.copy() for x in d]
    bad[1] *= -1
    assert blocktri.clique_factors(bad, b) is None


def ipm_tri_mask(d, b):
    from lipverify.lmi.chain import assemble_tridiagonal

    return assemble_tridiagonal([np.ones_like(x) for x in d], [np.ones_like(x) for x in b])


@pytest.mark.parametrize("act", [RELU, SLOPE])
def test_chordal_primal_dual_reaches_the_same_optimum(act):
    from lipverify.solvers.interior import chordal as pdchordal

    lmi = ChainLMI.from_network(mlp([30, 10, 10, 10, 10, 4], seed=6, act=act))
    ch, pd = pdchordal.solve_chain_pd_chordal(lmi), pdipm.solve_chain_pd(lmi)
    assert ch.status == "optimal" and ch.gap <= 1e-8 and ch.algorithm == "primal-dual chordal"
    assert ch.rho == pytest.approx(pd.rho, rel=1e-7)
    assert ch.lower <= pd.rho * (1 + 1e-9)
    cert = certify_chain(lmi, ch.params)
    assert cert.ok and cert.bound ** 2 == pytest.approx(ch.rho, rel=1e-6)


def test_an_lmi_too_large_for_the_interior_point_is_refused_up_front(monkeypatch):
    """The memory estimate covers the primal-dual working set; a forced --solver ipm that does
    not fit is not attempted (the reason says how much it needs) and the bound still comes
    certified from the structured solver."""
    net = mlp([20, 16, 16, 16, 4], seed=9)
    lmi = ChainLMI.from_network(net)
    need = common.ipm_bytes(lmi.order, 48)
    assert need >= 8 * 11 * lmi.order ** 2
    monkeypatch.setattr(common, "IPM_MAX_BYTES", need - 1)
    assert "GiB" in interior.ipm_reason(lmi)
    out = lipverify.bound(net, method="lipsdp-neuron", solver="ipm")
    assert out.certified and out.solver != "ipm" and "not used" in out.details["ipm"]
