"""Householder and max-pool quadratic constraints, per-channel multipliers (§4, §7)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lipverify
from lipverify.ir.activations import GroupSort, Householder, MaxPool2d, SlopeRestricted
from lipverify.ir.linear import Conv2d, Dense
from lipverify.ir.network import Affine, Network, Node, Term
from lipverify.lmi.chain import ChainLMI
from lipverify.qc import GroupSortQC, qc_for

RELU = SlopeRestricted.named("relu")


def _orth(n, rng):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q


def _qc_value(qc, p, dv, dw):
    b = qc.blocks(p)
    vv = np.diag(b.vv) if b.vv.ndim == 1 else b.vv
    ww = np.diag(b.ww) if b.ww.ndim == 1 else b.ww
    vw = np.diag(b.vw) if b.vw.ndim == 1 else b.vw
    return dv @ vv @ dv + 2 * dv @ vw @ dw + dw @ ww @ dw


@pytest.mark.parametrize("theta", [0.3, -math.pi / 4, 2.0])
def test_householder_qc_holds_on_samples(theta):
    rng = np.random.default_rng(1)
    act = Householder(theta)
    qc = qc_for(act, 8)
    assert isinstance(qc, GroupSortQC) and qc.direction_error > 0
    for _ in range(300):
        p = qc.project(rng.normal(size=qc.num_params()) * 10)
        v1, v2 = rng.normal(size=(2, 1, 8))
        dv, dw = (v1 - v2)[0], (act.apply(v1) - act.apply(v2))[0]
        assert _qc_value(qc, p, dv, dw) >= -1e-12 * (1 + np.abs(p).sum())


@pytest.mark.parametrize("theta", [0.3, 1.1])
def test_single_householder_layer_with_orthogonal_weights_is_one(theta):
    rng = np.random.default_rng(3)
    net = Network.sequential([_orth(6, rng), _orth(6, rng)], [Householder(theta)])
    r = lipverify.bound(net, method="lipsdp-neuron")
    assert r.certified and 1.0 - 1e-9 <= r.bound <= 1.0 + 1e-6


def test_random_householder_net_sandwich():
    rng = np.random.default_rng(5)
    ws = [rng.normal(size=(8, 4)) / 2, rng.normal(size=(6, 8)) / 3, rng.normal(size=(2, 6))]
    net = Network.sequential(ws, [Householder(0.7), Householder(-1.2)])
    sdp = lipverify.bound(net, method="lipsdp-neuron")
    naive = lipverify.bound(net, method="naive").bound
    lower = lipverify.bound(net, method="lower").bound
    assert sdp.certified and lower <= sdp.bound <= naive * (1 + 1e-9)


def _pool_net(rng, pool=(2, 2), stride=(2, 2), pads=(0, 0, 0, 0)):
    conv = Conv2d(rng.normal(size=(3, 1, 3, 3)) / 3, (1, 8, 8))
    c, h, w = conv.out_shape
    act = MaxPool2d(pool, stride, pads, (c, h, w))
    n = conv.n_out
    nodes = (Node(RELU, Affine((Term(0, conv),), rng.normal(size=n) * 0.1), (c, h, w)),
             Node(act, Affine((Term(1, Dense(np.eye(n))),), np.zeros(n)), act.out_shape))
    m = math.prod(act.out_shape)
    head = Node(RELU, Affine((Term(2, Dense(rng.normal(size=(10, m)) / np.sqrt(m))),),
                             np.zeros(10)), (10,))
    out = Affine((Term(3, Dense(rng.normal(size=(2, 10)))),), np.zeros(2))
    return Network((1, 8, 8), (*nodes, head), out)


def test_maxpool_qc_holds_on_samples():
    rng = np.random.default_rng(2)
    act = MaxPool2d((3, 3), (2, 2), (1, 1, 1, 1), (2, 5, 5))
    qc = qc_for(act, 50)
    for _ in range(200):
        p = qc.project(rng.normal(size=qc.num_params()))
        v1, v2 = rng.normal(size=(2, 1, 50))
        dv, dw = (v1 - v2)[0], (act.apply(v1) - act.apply(v2))[0]
        assert _qc_value(qc, p, dv, dw) >= -1e-12


@pytest.mark.parametrize("pool, stride", [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((2, 2), (1, 1))])
def test_maxpool_enters_the_lmi(pool, stride):
    """conv -> relu -> maxpool -> dense: the LMI bound sits between lower and naive (naive
    uses the ceil(r/s) gain of §7, the LMI one multiplier per window)."""
    net = _pool_net(np.random.default_rng(4), pool, stride)
    lmi = ChainLMI.from_network(net)
    assert lmi.sizes[2] < lmi.sizes[1]  # pooling shrinks the block
    sdp = lipverify.bound(net, method="lipsdp-neuron")
    naive = lipverify.bound(net, method="naive").bound
    lower = lipverify.bound(net, method="lower").bound
    assert sdp.certified and lower <= sdp.bound <= naive * (1 + 1e-9)


def test_channel_multipliers_between_neuron_and_layer():
    net = _pool_net(np.random.default_rng(6))
    lmi = ChainLMI.from_network(net, per_neuron="channel")
    assert lmi.param_sizes[0] == 3  # one multiplier per conv channel
    bounds = {m: lipverify.bound(net, method=m) for m in
              ("lipsdp-neuron", "lipsdp-channel", "lipsdp-layer")}
    assert all(r.certified for r in bounds.values())
    neuron, channel, layer = (bounds[m].bound for m in bounds)
    assert neuron <= channel * (1 + 1e-6) and channel <= layer * (1 + 1e-6)
    cert = lipverify.certify.files.certificate_dict(bounds["lipsdp-channel"])
    assert lipverify.check_certificate(net, cert).valid


@pytest.mark.parametrize("act", [GroupSort(2), GroupSort(3), Householder(0.4)])
def test_linf_lmi_for_sorting_activations(act):
    """§4 l_inf LMI (per output row) between the sampled l_inf lower bound and naive."""
    rng = np.random.default_rng(8)
    ws = [rng.normal(size=(6, 4)), rng.normal(size=(6, 6)), rng.normal(size=(2, 6))]
    net = Network.sequential(ws, [act, act])
    sdp = lipverify.bound(net, method="lipsdp-neuron", norm="linf")
    naive = lipverify.bound(net, method="naive", norm="linf").bound
    lower = lipverify.bound(net, method="lower", norm="linf").bound
    assert sdp.certified and lower <= sdp.bound <= naive * (1 + 1e-9)


def test_nodes_without_a_qc_are_all_listed():
    from lipverify.errors import NotApplicableError
    from lipverify.ir.activations import Lipschitz

    rng = np.random.default_rng(0)
    ws = [rng.normal(size=(4, 3)), rng.normal(size=(4, 4)), rng.normal(size=(4, 4)),
          rng.normal(size=(2, 4))]
    net = Network.sequential(ws, [Lipschitz("softmax"), RELU, Lipschitz("mystery", 2.0)])
    with pytest.raises(NotApplicableError) as exc:
        ChainLMI.from_network(net)
    msg = str(exc.value)
    assert "2 node(s)" in msg and "softmax" in msg and "mystery" in msg and "naive" in msg
    assert lipverify.bound(net).method == "naive"  # auto falls back, saying so


def test_channel_multipliers_on_an_imported_cnn():
    """Imported nodes carry a batch dimension (1, c, h, w): still one multiplier per channel."""
    from conftest import SAMPLE_MODELS

    net = lipverify.load(SAMPLE_MODELS / "digits_cnn.onnx")
    assert ChainLMI.from_network(net, "channel").param_sizes == [4, 8]
