"""The structured interior-point solver (lipverify.solvers.interior.potential): exact Newton
system, measured gap, agreement with the monolithic conic solve,
balancing of deep nets, integration."""

from __future__ import annotations

import numpy as np
import pytest
from test_residual import _nets

import lipverify
from lipverify.certify.gate import certify_chain
from lipverify.ir.activations import GroupSort, SlopeRestricted
from lipverify.lmi.chain import ChainLMI
from lipverify.solvers import interior
from lipverify.solvers.interior import common, potential
from lipverify.status import Outcome

RELU = SlopeRestricted.named("relu")


def mlp(widths, seed=0, act=RELU, scale=1.0):
    rng = np.random.default_rng(seed)
    ws = [scale * rng.normal(size=(b, a)) / np.sqrt(a) for a, b in zip(widths, widths[1:])]
    return lipverify.Network.sequential(ws, [act] * (len(ws) - 1))


@pytest.mark.parametrize("act", [RELU, SlopeRestricted("slope", -0.3, 1.2)])
@pytest.mark.parametrize("per_neuron", [True, False])
def test_newton_system_is_the_exact_barrier_hessian(act, per_neuron):
    lmi = ChainLMI.from_network(mlp([3, 4, 5, 2], act=act), per_neuron)
    form = common.neuron_form(lmi)
    p, rho = common.strict_start(lmi, None)
    y = np.r_[rho, p]
    s_of = lambda v: lmi.assemble(v[1:], v[0])  # noqa: E731
    basis = [s_of(y + e) - s_of(y) for e in np.eye(y.size)]  # S is affine in y
    x = np.linalg.inv(s_of(y))
    grad, hess = common.newton_system(form, x)
    assert np.allclose(grad, [np.trace(x @ f) for f in basis], rtol=1e-10, atol=1e-12)
    ref = np.array([[np.trace(x @ f @ x @ g) for g in basis] for f in basis])
    assert np.allclose(hess, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("widths", [[8, 10, 10, 3], [16, 12, 12, 12, 4]])
@pytest.mark.parametrize("per_neuron", [True, False])
def test_matches_the_conic_optimum_and_the_gap_is_a_true_lower_bound(widths, per_neuron):
    net = mlp(widths, seed=len(widths))
    conic = lipverify.bound(net, method="lipsdp-neuron" if per_neuron else "lipsdp-layer",
                            solver="clarabel")
    res = interior.solve_chain_ipm(ChainLMI.from_network(net, per_neuron))
    assert res.status == "optimal" and res.gap <= 1e-8
    opt = conic.bound ** 2
    assert res.lower <= opt * (1 + 1e-7)  # weak duality: below the SDP optimum
    assert res.rho == pytest.approx(opt, rel=1e-6)
    method = "lipsdp-neuron" if per_neuron else "lipsdp-layer"
    ours = lipverify.bound(net, method=method, solver="ipm")
    assert ours.certified and ours.solver == "ipm"
    assert ours.bound == pytest.approx(conic.bound, rel=1e-6)
    assert 0 <= ours.details["gap"] <= 1e-6 and ours.status.gap == ours.details["gap"]
    assert ours.status.outcome is Outcome.OPTIMAL


def test_auto_uses_the_ipm_on_mlps_and_reports_the_gap():
    net = mlp([20, 16, 16, 5])
    out = lipverify.bound(net, method="lipsdp-neuron")
    assert out.solver == "ipm" and out.certified and out.details["gap"] < 1e-6
    lower = lipverify.bound(net, method="lower").bound
    naive = lipverify.bound(net, method="naive").bound
    assert lower <= out.bound <= naive


def test_residual_nets_match_the_chained_conic_solve():
    for name, net in _nets():
        conic = lipverify.bound(net, method="lipsdp-neuron", solver="clarabel")
        ours = lipverify.bound(net, method="lipsdp-neuron", solver="ipm")
        assert ours.certified and ours.solver == "ipm", name
        assert ours.bound == pytest.approx(conic.bound, rel=1e-5), name


def test_balancing_makes_exploding_deep_nets_solvable():
    # 24 layers, each weight ~4x an isometry: norm product ~1e14
    net = mlp([12] * 25 + [3], seed=3, scale=4.0)
    lmi = ChainLMI.from_network(net, True)
    res = interior.solve_chain_ipm(lmi, time_limit=120)
    cert = certify_chain(lmi, res.params)
    naive = lipverify.bound(net, method="naive").bound
    lower = lipverify.bound(net, method="lower").bound
    fast = lipverify.bound(net, method="ldlt-fast").bound
    assert cert.ok and lower <= cert.bound <= min(naive, fast) * (1 + 1e-9)
    assert cert.bound ** 2 == pytest.approx(res.rho, rel=1e-5)


def test_time_limit_still_returns_a_certified_bound():
    net = mlp([30, 30, 30, 30, 5])
    out = lipverify.bound(net, method="lipsdp-neuron", solver="ipm", time_limit=1e-9)
    assert out.certified and out.status.timed_out and out.status.outcome is Outcome.STOPPED
    assert out.bound <= lipverify.bound(net, method="naive").bound


def test_ipm_refuses_non_slope_qcs_and_says_why():
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=(8, 6)), rng.normal(size=(2, 8))]
    net = lipverify.Network.sequential(ws, [GroupSort(2)])
    lmi = ChainLMI.from_network(net, True)
    assert "slope QCs only" in interior.ipm_reason(lmi)
    out = lipverify.bound(net, method="lipsdp-neuron", solver="ipm")
    assert out.certified and out.solver != "ipm"
    assert "slope QCs only" in out.details["ipm"]


def test_an_early_stop_is_never_worse_than_ldlt_fast():
    net = mlp([16] * 9 + [3], seed=5, scale=2.0)
    out = lipverify.bound(net, method="lipsdp-neuron", solver="ipm", time_limit=1e-9)
    fast = lipverify.bound(net, method="ldlt-fast")
    assert out.certified and out.bound <= fast.bound * (1 + 1e-12)


@pytest.mark.parametrize("zero", [0, 1])
def test_a_zero_layer_gives_a_tiny_certified_bound_not_a_crash(zero):
    ws = [np.ones((4, 3)), np.ones((2, 4))]
    ws[zero] = np.zeros_like(ws[zero])
    net = lipverify.Network.sequential(ws, [RELU])
    for method in ("ldlt-fast", "lipsdp-neuron"):
        out = lipverify.bound(net, method=method)
        assert out.certified and 0 <= out.bound <= 1e-5


@pytest.mark.parametrize("act", [RELU, SlopeRestricted("slope", 0.0, 2.0)])
@pytest.mark.parametrize("per_neuron", [True, False])
def test_reduced_barrier_equals_the_full_one(act, per_neuron):
    """Eliminating the rho I input block (order N - n0) gives the same log det, gradient and
    Hessian as the dense inverse of the whole LMI."""
    rng = np.random.default_rng(1)
    lmi = ChainLMI.from_network(mlp([9, 5, 6, 4, 3], seed=1, act=act), per_neuron)
    form = common.neuron_form(lmi)
    p, rho = common.strict_start(lmi, None)
    p, rho = p * (1 + rng.random(p.size)), 3 * rho
    assert potential.ReducedBarrier.applies(lmi, form)
    full, red = potential.FullBarrier(lmi, form), potential.ReducedBarrier(lmi, form)
    (c1, l1), (c2, l2) = full.factor(p, rho), red.factor(p, rho)
    assert l2 == pytest.approx(l1, rel=1e-13)
    g1, h1 = full.newton(c1, p, rho)
    g2, h2 = red.newton(c2, p, rho)
    assert np.allclose(g2, g1, rtol=1e-11, atol=1e-13 * np.abs(g1).max())
    assert np.allclose(h2, h1, rtol=1e-11, atol=1e-13 * np.abs(h1).max())
    other = ChainLMI.from_network(mlp([9, 5, 3], act=SlopeRestricted("s", -0.3, 1.2)))
    assert not potential.ReducedBarrier.applies(other, common.neuron_form(other))  # alpha beta != 0


def test_time_limit_covers_the_certification_on_the_smooth_path():
    """The limit bounds everything: past it, no solver stage, no gap, only the certified
    start (never worse than ldlt-fast)."""
    net = mlp([40] * 6 + [5], seed=7)
    out = lipverify.bound(net, method="lipsdp-neuron", solver="smooth", time_limit=1e-9)
    fast = lipverify.bound(net, method="ldlt-fast", time_limit=1e-9)  # the same start
    assert out.certified and out.status.timed_out
    assert out.status.gap is None and out.status.gap_note == "time limit"
    assert out.bound <= fast.bound * (1 + 1e-12)
    assert out.details["seconds_total"] > 0
