"""Clique-wise §8 certificate (lipverify.certify.chordal): sound (never below rho*), tight
(rho* up to ~1e-9), and what certifies deep chains that one dense Cholesky cannot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_ipm import mlp

import lipverify
from lipverify.certify.chordal import ChordalCertificate, ForwardChordal
from lipverify.certify.gate import _verify_dense, certify_chain, verify_chain
from lipverify.ir.activations import GroupSort, SlopeRestricted
from lipverify.lmi.chain import ChainLMI, balance, is_exact_balance
from lipverify.solvers import interior

MODELS = Path(__file__).resolve().parents[1] / "models"


def _optimum(lmi):
    res = interior.solve_chain_ipm(lmi, tol=1e-9)
    return res.params, lmi.rho_star(res.params)


@pytest.mark.parametrize("act", [SlopeRestricted.named("relu"), SlopeRestricted("s", -0.3, 1.2),
                                 SlopeRestricted.named("tanh")])
@pytest.mark.parametrize("max_order", [10, 25, 600])  # single cliques, a pair, one segment
def test_backward_cliques_certify_rho_star_and_nothing_below(act, max_order):
    lmi = ChainLMI.from_network(mlp([6, 9, 8, 7, 3], seed=3, act=act))
    params, rho = _optimum(lmi)
    cc = ChordalCertificate(lmi, params, max_order=max_order)
    assert len(cc.segments) == {10: 3, 25: 2, 600: 1}[max_order]
    assert cc.ok and rho * (1 - 1e-14) <= cc.rho_star <= rho * (1 + 1e-8)
    assert cc.check(cc.rho_star * (1 + 1e-10))
    assert not cc.check(rho * (1 - 1e-6))  # below rho*(T): M is not PSD, never certified
    fw = ForwardChordal(lmi, params)
    r0 = fw.rho_estimate(rho)
    assert r0 == pytest.approx(rho, rel=1e-8) and fw.check(r0 * (1 + 1e-9))
    assert not fw.check(rho * (1 - 1e-6))
    assert verify_chain(lmi, params, r0 * (1 + 1e-9)) and not verify_chain(lmi, params,
                                                                             rho * (1 - 1e-6))


def test_one_hidden_layer_is_a_single_clique():
    w1, w2 = np.array([[2.0, 0.0], [0.0, 1.0]]), np.eye(2)
    net = lipverify.Network.sequential([w1, w2], [SlopeRestricted.named("relu")])
    lmi = ChainLMI.from_network(net)
    t = np.array([4.0, 4.0])
    cc = ChordalCertificate(lmi, t)
    assert cc.ok and cc.rho_star == pytest.approx(lmi.rho_star(t), rel=1e-14)
    assert verify_chain(lmi, np.array([4.0, 4.0]), cc.rho_star * (1 + 1e-9))


def test_groupsort_cliques():
    rng = np.random.default_rng(5)
    ws = [np.linalg.qr(rng.normal(size=(6, 6)))[0] for _ in range(3)]
    net = lipverify.Network.sequential(ws, [GroupSort(2), GroupSort(2)])
    r = lipverify.bound(net, method="lipsdp-neuron")
    assert r.certified and r.bound <= 1 + 1e-6
    lmi = ChainLMI.from_network(net)
    params = np.asarray(r.certificate.body["params"])
    rho = r.certificate.body["rho"]
    cc = ChordalCertificate(lmi, params)
    assert cc.ok and cc.check(rho * (1 + 1e-6))


def test_conv_weights_known_up_to_a_radius():
    net = lipverify.load(MODELS / "digits_cnn.onnx")
    lmi = ChainLMI.from_network(net)
    params = interior.solve_chain_ipm(lmi, max_iter=15).params
    rho = lmi.rho_star(params)
    for max_order in (1, 600):
        cc = ChordalCertificate(lmi, params, max_order=max_order)
        assert cc.ok and cc.check(cc.rho_star * (1 + 1e-9)) and cc.rho_star >= rho * (1 - 1e-12)


def test_balance_is_exact_and_certifies_the_original():
    lmi = ChainLMI.from_network(mlp([8] * 20 + [3], seed=1, scale=7.0))
    scaled, factors, out = balance(lmi)
    assert is_exact_balance(lmi, scaled, factors, out)
    assert all(np.log2(f) == round(np.log2(f)) for f in factors) and np.log2(out) % 1 == 0
    for w, ws in zip(lmi.weights, scaled.weights):
        assert np.array_equal(ws * (w[0, 0] / ws[0, 0]), w)


def test_deep_chain_certified_where_one_dense_cholesky_is_not():
    """24 layers, norm product ~1e20: the dense Rump test cannot see the input pivot, every
    clique can. lower <= certified <= naive, and the certificate file re-checks."""
    net = mlp([16] * 25 + [4], seed=24, scale=6.0)
    lmi = ChainLMI.from_network(net)
    params = interior.solve_chain_ipm(lmi, tol=1e-7).params
    rho = lmi.rho_star(params)
    assert not _verify_dense(lmi, params, rho * (1 + 1e-9))
    cert = certify_chain(lmi, params)
    assert cert.ok and cert.theta == 0.0 and cert.rho <= rho * (1 + 1e-6)
    r = lipverify.bound(net, method="lipsdp-neuron")
    naive = lipverify.bound(net, method="naive").bound
    lower = lipverify.bound(net, method="lower").bound
    assert r.certified and lower <= r.bound <= naive
    body = lipverify.certify.files.certificate_dict(r)
    assert lipverify.check_certificate(net, body).valid


def test_ldlt_fast_on_a_deep_chain_certifies_below_its_own_rho_star():
    """ECLipsE-Fast multipliers sit on the boundary of the feasible set (a singular last
    pivot): the dense test could only certify them after blending toward the anchor. Lifted
    by 1 + 2^-14 they are interior, and the clique-wise check certifies far below ECLipsE-Fast's
    own value (657.4 against 843.1)."""
    widths = [64] * 17 + [10]  # the bench's "depth sweep 64x16" network
    rng = np.random.default_rng(16)
    ws = [rng.normal(size=(b, a)) / np.sqrt(a) for a, b in zip(widths, widths[1:])]
    net = lipverify.Network.sequential(ws, [SlopeRestricted.named("relu")] * (len(ws) - 1))
    lmi = ChainLMI.from_network(net)
    from lipverify.solvers.sequential import INTERIOR, ldlt_fast_params

    eclipse_fast = ldlt_fast_params(lmi) / (1 + INTERIOR)  # on the boundary
    own = np.sqrt(lmi.rho_star(eclipse_fast))  # ECLipsE-Fast's value, 843.11
    assert own == pytest.approx(843.11, rel=1e-4)
    r = lipverify.bound(net, method="ldlt-fast")
    lower = lipverify.bound(net, method="lower").bound
    assert r.certified and lower <= r.bound <= own
    assert lipverify.check_certificate(net, lipverify.certify.files.certificate_dict(r)).valid
