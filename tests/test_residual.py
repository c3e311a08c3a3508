"""Residual networks: the monolithic LMI of §5a on the affine-normal-form DAG."""

from __future__ import annotations

import numpy as np
import pytest

import lipverify
from lipverify.activations import SlopeRestricted
from lipverify.linear import Dense
from lipverify.network import Affine, Network, Node, Term
from lipverify.sdp.chain import ChainLMI
from lipverify.sdp.dag import DagLMI, certify_dag

RELU = SlopeRestricted.named("relu")


def resnet(blocks, rng, n=6, m=10, out=2, biases=True, readout=None):
    """x_k = x_{k-1} + G_k relu(H_k x_{k-1} + b_k), y = C x_K, in affine normal form."""
    nodes, state = [], {0: np.eye(n)}
    for h, g in blocks:
        terms = tuple(Term(s, Dense(h @ mat)) for s, mat in state.items())
        nodes.append(Node(RELU, Affine(terms, rng.normal(size=m) if biases else np.zeros(m)),
                          (m,)))
        state[len(nodes)] = g
    c = rng.normal(size=(out, n)) if readout is None else readout
    output = Affine(tuple(Term(s, Dense(c @ mat)) for s, mat in state.items()),
                    np.zeros(c.shape[0]))
    return Network((n,), tuple(nodes), output)


def test_dag_lmi_equals_chain_lmi_on_a_chain():
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=(7, 4)), rng.normal(size=(6, 7)), rng.normal(size=(2, 6))]
    net = Network.sequential(ws, [RELU, RELU])
    chain = ChainLMI.from_network(net)
    dag = DagLMI.from_network(net)
    p = chain.anchor()
    assert dag.rho_star(p) == pytest.approx(chain.rho_star(p), rel=1e-9)


@pytest.mark.parametrize("k", [2, 3])
def test_random_residual_nets_sandwich(k):
    rng = np.random.default_rng(k)
    n, m = 6, 10
    blocks = [(rng.normal(size=(m, n)) / np.sqrt(n), rng.normal(size=(n, m)) / np.sqrt(m))
              for _ in range(k)]
    net = resnet(blocks, rng, n, m)
    assert not net.is_sequential
    sdp = lipverify.bound(net, method="lipsdp-neuron")
    auto = lipverify.bound(net)
    naive = lipverify.bound(net, method="naive")
    lower = lipverify.bound(net, method="lower")
    assert sdp.certified and auto.method == "lipsdp-neuron"
    assert lower.bound <= sdp.bound <= naive.bound
    layer = lipverify.bound(net, method="lipsdp-layer")
    assert sdp.bound <= layer.bound * (1 + 1e-6)


def test_sll_block_is_one_lipschitz():
    """SLL (§5): h(x) = x - 2 H^T T relu(H x + b), t_i = (sum_j |H H^T|_ij q_j / q_i)^-1."""
    rng = np.random.default_rng(7)
    n, m = 6, 8
    h = rng.normal(size=(m, n))
    q = np.exp(rng.normal(size=m))
    t = 1.0 / ((np.abs(h @ h.T) * q[None, :]).sum(axis=1) / q)
    net = resnet([(h, -2.0 * h.T * t)], rng, n, m, readout=np.eye(n))
    sdp = lipverify.bound(net, method="lipsdp-neuron")
    assert sdp.certified and sdp.bound <= 1.0 + 1e-5
    assert lipverify.bound(net, method="lower").bound <= 1.0 + 1e-9
    assert lipverify.bound(net, method="naive").bound > 1.5


def test_certify_dag_repairs_zero_multipliers():
    rng = np.random.default_rng(3)
    blocks = [(rng.normal(size=(8, 5)) / 2, rng.normal(size=(5, 8)) / 3) for _ in range(2)]
    net = resnet(blocks, rng, 5, 8)
    lmi = DagLMI.from_network(net)
    bound, params, rho, theta = certify_dag(lmi, np.zeros(sum(lmi.param_sizes)))
    assert np.isfinite(bound) and theta > 0
    assert np.linalg.eigvalsh(lmi.assemble(params, rho))[0] > 0


def test_dag_certificate_roundtrip_and_tamper():
    rng = np.random.default_rng(4)
    blocks = [(rng.normal(size=(8, 5)) / 2, rng.normal(size=(5, 8)) / 3) for _ in range(2)]
    net = resnet(blocks, rng, 5, 8)
    r = lipverify.bound(net, method="lipsdp-neuron")
    cert = lipverify.certificates.certificate_dict(r)
    ok = lipverify.check_certificate(net, cert)
    assert ok.valid and ok.bound >= r.bound * (1 - 1e-12)
    cert["certificate"]["rho"] = (r.bound * (1 - 1e-4)) ** 2
    assert not lipverify.check_certificate(net, cert).valid


def test_dag_radius_covers_composite_weights():
    """Multi-term (summed) weights carry a rounding radius; it must enlarge the check."""
    rng = np.random.default_rng(6)
    blocks = [(rng.normal(size=(8, 5)) / 3, rng.normal(size=(5, 8)) / 3) for _ in range(2)]
    lmi = DagLMI.from_network(resnet(blocks, rng, 5, 8))
    assert any(r is not None for r in lmi.pre_radii)
    p = lmi.anchor()
    weight_effect = lmi.assemble(p, 1.0, absolute=True) - lmi.assemble(p, 1.0, absolute=True,
                                                                       radii=False)
    assert weight_effect.max() > 0
    assert (lmi.radius(p, 1.0) >= weight_effect).all()
