"""Residual networks: the monolithic LMI of §5a on the affine-normal-form DAG."""

from __future__ import annotations

import numpy as np
import pytest

import lipverify
from lipverify.ir.activations import SlopeRestricted
from lipverify.ir.linear import Dense
from lipverify.ir.network import Affine, Network, Node, Term
from lipverify.lmi.chain import ChainLMI
from lipverify.lmi.dag import DagLMI, certify_dag

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
    cert = lipverify.certify.files.certificate_dict(r)
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


def post_activation_resnet(rng, n=5, m=8, blocks=2, projection=True):
    """ResNet v1 blocks z' = relu(S z + W2 relu(W1 z)) (what resnet_2b.onnx imports to)."""
    nodes = [Node(RELU, Affine((Term(0, Dense(rng.normal(size=(m, n)) / np.sqrt(n))),),
                               rng.normal(size=m)), (m,))]
    for _ in range(blocks):
        src = len(nodes)
        inner = Node(RELU, Affine((Term(src, Dense(rng.normal(size=(m, m)) / np.sqrt(m))),),
                                  rng.normal(size=m)), (m,))
        nodes.append(inner)
        skip = (Dense(rng.normal(size=(m, m)) / np.sqrt(m)) if projection
                else Dense(np.eye(m)))
        nodes.append(Node(RELU, Affine((Term(src, skip),
                                        Term(src + 1, Dense(rng.normal(size=(m, m)) / m))),
                                       np.zeros(m)), (m,)))
    output = Affine((Term(len(nodes), Dense(rng.normal(size=(3, m)))),), np.zeros(3))
    return Network((n,), tuple(nodes), output)


def _nets():
    rng = np.random.default_rng(11)
    n, m = 6, 10
    blocks = [(rng.normal(size=(m, n)) / np.sqrt(n), rng.normal(size=(n, m)) / np.sqrt(m))
              for _ in range(3)]
    yield "identity-skip x3", resnet(blocks, rng, n, m)
    yield "post-activation, projection", post_activation_resnet(rng)
    yield "post-activation, identity", post_activation_resnet(rng, projection=False, blocks=3)
    ws = [rng.normal(size=(7, 4)), rng.normal(size=(6, 7)), rng.normal(size=(2, 6))]
    yield "chain", Network.sequential(ws, [RELU, RELU])


@pytest.mark.parametrize("per_neuron", [True, False])
def test_chained_lmi_matches_monolithic(per_neuron):
    """§5b against §5a: same optimum (both solved by Clarabel, certified on §5a)."""
    from lipverify.lmi.banded import max_cone
    from lipverify.solvers.choose import get_backend
    from lipverify.solvers.conic import solve_banded, solve_dag

    backend = get_backend("clarabel")
    for name, net in _nets():
        lmi = DagLMI.from_network(net, per_neuron)
        mono = certify_dag(lmi, solve_dag(lmi, backend).params)[0]
        chained = certify_dag(lmi, solve_banded(lmi, backend).params)[0]
        assert chained == pytest.approx(mono, rel=1e-5), name
        if name != "chain":
            assert max_cone(lmi) < lmi.order, name


def test_structured_dag_solver_reaches_the_conic_optimum():
    for name, net in _nets():
        conic = lipverify.bound(net, method="lipsdp-neuron", solver="clarabel")
        smooth = lipverify.bound(net, method="lipsdp-neuron", solver="smooth")
        assert conic.certified and smooth.certified, name
        # a first-order method: within 1.1e-4 of the optimum here (measured)
        assert smooth.bound == pytest.approx(conic.bound, rel=2e-4), name
        lower = lipverify.bound(net, method="lower").bound
        naive = lipverify.bound(net, method="naive").bound
        assert lower <= conic.bound <= naive * (1 + 1e-9), name


def test_monolithic_form_on_request():
    net = next(_nets())[1]
    mono = lipverify.bound(net, method="lipsdp-neuron", solver="clarabel", form="full")
    chained = lipverify.bound(net, method="lipsdp-neuron", solver="clarabel")
    assert mono.details["form"].startswith("monolithic")
    assert chained.details["form"].startswith("chained")
    assert chained.bound == pytest.approx(mono.bound, rel=1e-6)


def test_split_segments_compose_to_the_network():
    from lipverify.methods.split import cuts, plan, segment

    net = post_activation_resnet(np.random.default_rng(12), blocks=3)
    assert cuts(net) == [1, 3, 5, 7]
    pieces = plan(net, budget=20)
    assert len(pieces) > 2
    x = np.random.default_rng(0).normal(size=(4, net.input_dim))
    z = x
    for a, b in pieces:
        z = segment(net, a, b).forward(z)
    np.testing.assert_allclose(z, net.forward(x), rtol=1e-12, atol=1e-12)


def test_split_bound_between_whole_lmi_and_naive():
    net = post_activation_resnet(np.random.default_rng(13), blocks=2)
    whole = lipverify.bound(net, method="lipsdp-neuron")
    split = lipverify.bound(net, method="lipsdp-split", budget=20)
    naive = lipverify.bound(net, method="naive").bound
    lower = lipverify.bound(net, method="lower").bound
    assert split.certified and len(split.details["segments"]) > 1
    assert lower <= whole.bound <= split.bound * (1 + 1e-6)
    assert split.bound <= naive * (1 + 1e-9)

