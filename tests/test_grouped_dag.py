"""The grouped (block tridiagonal) form of a residual network's LMI (lmi/dag.py, §5c):
groups, blocks, rho*, the smoothed gradient, the clique-wise certificate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_residual import RELU, post_activation_resnet, resnet

import lipverify
from lipverify.certify.chordal import ChordalCertificate, dag_cliques
from lipverify.ir.activations import SlopeRestricted
from lipverify.lmi.chain import assemble_tridiagonal
from lipverify.lmi.dag import DagLMI, certify_dag, group_starts, network_groups, verify_dag
from lipverify.solvers.smooth_rho import TopBlock, soft_max_eig

LEAKY = SlopeRestricted.named("leaky_relu", 0.1)


def _dense_rho_star(lmi: DagLMI, params) -> float:
    m = lmi.assemble(params, 0.0)
    n0 = lmi.sizes[0]
    x = np.linalg.solve(m[n0:, n0:], m[n0:, :n0])
    top = m[:n0, n0:] @ x - m[:n0, :n0]
    return float(np.linalg.eigvalsh((top + top.T) / 2)[-1])


def _leaky(net):
    from dataclasses import replace

    return replace(net, nodes=tuple(replace(n, activation=LEAKY) for n in net.nodes))


def test_group_starts():
    assert group_starts([(0,), (1,), (2,), (3,)]) == (0, 1, 2, 3)  # a chain
    # two ResNet v1 blocks: each add reads the block's input and its inner activation
    assert group_starts([(0,), (1,), (1, 2), (3,), (3, 4), (5,)]) == (0, 1, 2, 4)
    # skips from the input into every node (§5 identity skips): one group
    assert group_starts([(0,), (0, 1), (0, 1, 2), (0, 1, 2, 3)]) == (0, 1)
    # the output reads two groups back: they merge
    assert group_starts([(0,), (1,), (2,), (1, 3)]) == (0, 1, 2)


def test_network_groups_of_real_structures():
    rng = np.random.default_rng(0)
    assert network_groups(post_activation_resnet(rng, n=5, m=8, blocks=2)) == [5, 8, 16, 16]
    blocks = [(rng.normal(size=(8, 5)), rng.normal(size=(5, 8))) for _ in range(2)]
    assert network_groups(resnet(blocks, rng, 5, 8)) == [5, 16]
    net = lipverify.Network.sequential([rng.normal(size=(4, 3)), rng.normal(size=(2, 4))],
                                       [RELU])
    assert network_groups(net) == [3, 4]


@pytest.mark.parametrize("leaky", [False, True])
def test_grouped_blocks_rho_star_and_gradient(leaky):
    net = post_activation_resnet(np.random.default_rng(1), n=5, m=8, blocks=3)
    net = _leaky(net) if leaky else net
    lmi = DagLMI.from_network(net)
    assert lmi.grouped and lmi.group_sizes == [5, 8, 16, 16, 16]
    p = lmi.anchor() * np.exp(np.random.default_rng(2).normal(size=sum(lmi.param_sizes)) / 4)
    for absolute in (False, True):
        d, b = lmi.blocks(p, 1.5, absolute=absolute)
        np.testing.assert_allclose(assemble_tridiagonal(d, b),
                                   lmi.assemble(p, 1.5, absolute=absolute), atol=1e-12)
    rho = lmi.rho_star(p)
    assert rho == pytest.approx(_dense_rho_star(lmi, p), rel=1e-10)
    mu = 1e-3 * rho
    _, f, g = lmi.soft_rho(p, mu)
    step = 1e-6 * p * np.random.default_rng(3).normal(size=p.shape)
    f2 = lmi.soft_rho(p + step, mu)[1]
    f1 = lmi.soft_rho(p - step, mu)[1]
    assert (f2 - f1) / 2 == pytest.approx(g @ step, rel=1e-4)


def test_grouped_certificate_is_tight_and_refuses_below():
    net = post_activation_resnet(np.random.default_rng(4), n=6, m=10, blocks=3)
    lmi = DagLMI.from_network(net, "layer")
    p = lmi.anchor()
    rho = lmi.rho_star(p)
    bound, q, rho_cert, theta = certify_dag(lmi, p)
    assert theta == 0.0 and math.sqrt(rho) <= bound <= math.sqrt(rho) * (1 + 1e-6)
    chordal = ChordalCertificate(None, q, cliques=dag_cliques(lmi, q))
    assert chordal.ok and chordal.rho_star == pytest.approx(rho, rel=1e-8)
    assert chordal.check(rho_cert) and verify_dag(lmi, q, rho_cert)
    assert not chordal.check(rho * (1 - 1e-6))
    assert not verify_dag(lmi, q, rho * (1 - 1e-6))


def test_cliques_sum_to_the_lmi():
    """Placed on the diagonal, the cliques (§5c) are M(0, p) exactly, and their absolute
    twins are M_abs: the certificate's radius covers what the dense one does."""
    lmi = DagLMI.from_network(_leaky(post_activation_resnet(np.random.default_rng(5))))
    p = lmi.anchor()
    sizes = lmi.group_sizes
    offs = np.concatenate([[0], np.cumsum(sizes)])
    for absolute in (False, True):
        total = np.zeros((lmi.order, lmi.order))
        for g in range(1, len(sizes)):
            blk = slice(offs[g - 1], offs[g + 1])
            total[blk, blk] += lmi.clique(p, g, absolute=absolute)
        np.testing.assert_allclose(total, lmi.assemble(p, 0.0, absolute=absolute), atol=1e-12)


def test_narrow_top_block_matches_the_dense_one():
    rng = np.random.default_rng(6)
    h = rng.normal(size=(4, 9))
    top = TopBlock(h, np.zeros((9, 9)))
    assert top.narrow
    dense = top.matrix()
    assert top.lambda_max("t") == pytest.approx(np.linalg.eigvalsh(dense)[-1], rel=1e-12)
    for mu in (1e-1, 1e-3):
        lam, soft, u = top.soft_max(mu)
        lam2, soft2, u2 = soft_max_eig(dense, mu)
        assert lam == pytest.approx(lam2, rel=1e-12) and soft == pytest.approx(soft2, rel=1e-12)
        np.testing.assert_allclose(u @ u.T, u2 @ u2.T, atol=1e-10)
    assert not TopBlock(h, np.eye(9)).narrow


def test_smooth_solver_on_a_grouped_lmi_meets_the_conic_optimum():
    net = post_activation_resnet(np.random.default_rng(7), n=6, m=10, blocks=3)
    conic = lipverify.bound(net, method="lipsdp-channel", solver="clarabel")
    smooth = lipverify.bound(net, method="lipsdp-channel", solver="smooth")
    lower = lipverify.bound(net, method="lower").bound
    naive = lipverify.bound(net, method="naive").bound
    assert conic.certified and smooth.certified
    assert smooth.bound == pytest.approx(conic.bound, rel=1e-4)
    assert lower <= conic.bound <= naive


def test_scaled_variables_leave_the_problem_unchanged():
    """minimize_rho on a grouped DAG works in y = p / anchor (§5c): the multipliers it returns
    are the problem's own, and its rho is their rho*."""
    from lipverify.solvers.smooth_rho import minimize_rho

    lmi = DagLMI.from_network(post_activation_resnet(np.random.default_rng(8)), "layer")
    p, rho, _ = minimize_rho(lmi, lmi.anchor(), max_iter=50)
    assert rho == pytest.approx(lmi.rho_star(p), rel=1e-12)
    assert rho < lmi.rho_star(lmi.anchor())


def test_chordal_check_is_used_where_the_dense_one_fails(monkeypatch):
    """verify_dag falls back to the clique-wise check (and only on grouped LMIs)."""
    import lipverify.lmi.dag as dag

    lmi = DagLMI.from_network(post_activation_resnet(np.random.default_rng(9)))
    p = lmi.anchor()
    rho = lmi.rho_star(p) * (1 + 1e-6) + 1e-9
    monkeypatch.setattr(dag, "certify_pd", lambda *a, **k: False)
    assert verify_dag(lmi, p, rho)  # the cliques' check has its own certify_pd


def test_grouped_certificate_file_roundtrip_and_tamper():
    """``lipverify check`` re-verifies a grouped residual network's certificate clique-wise."""
    net = post_activation_resnet(np.random.default_rng(10), n=6, m=10, blocks=2)
    r = lipverify.bound(net, method="lipsdp-channel")
    assert r.certified
    cert = lipverify.certify.files.certificate_dict(r)
    ok = lipverify.check_certificate(net, cert)
    assert ok.valid and ok.bound >= r.bound * (1 - 1e-12)
    cert["certificate"]["rho"] = (r.bound * (1 - 1e-4)) ** 2
    assert not lipverify.check_certificate(net, cert).valid


def test_auto_plans_the_grouped_lmi_for_large_resnets(monkeypatch):
    """Residual nets above AUTO_MAX_DAG_ORDER get the whole-network channel LMI (§5c) when
    it is grouped and its certificate fits the time; otherwise lipsdp-split."""
    from lipverify.methods import anytime

    net = post_activation_resnet(np.random.default_rng(11), n=6, m=10, blocks=2)
    monkeypatch.setattr(anytime, "AUTO_MAX_DAG_ORDER", 20)
    assert [s.method for s in anytime.plan(net, "l2", 300.0)] == ["naive", "lipsdp-channel"]
    monkeypatch.setattr(anytime, "_grouped_fits", lambda *a: False)
    assert [s.method for s in anytime.plan(net, "l2", 300.0)] == ["naive", "lipsdp-split"]
