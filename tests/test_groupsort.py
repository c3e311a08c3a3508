"""GroupSort / MaxMin quadratic constraints (FORMULATIONS.md §4)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path

import lipverify
from lipverify.ir.activations import GroupSort
from lipverify.lmi.chain import ChainLMI
from lipverify.qc import GroupSortQC


def _orth(n, rng):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q


@pytest.mark.parametrize("n, g", [(4, 2), (8, 2), (12, 2), (8, 4)])
def test_single_groupsort_layer_with_orthogonal_weights_is_one(n, g):
    rng = np.random.default_rng(n + g)
    net = lipverify.Network.sequential([_orth(n, rng), _orth(n, rng)], [GroupSort(g)])
    r = lipverify.bound(net, method="lipsdp-neuron")
    assert r.certified
    assert 1.0 <= r.bound <= 1.0 + 1e-6


def test_qc_holds_on_samples():
    """[dv; dw]^T Gamma [dv; dw] >= 0 for random multipliers (free tau, s, p)."""
    rng = np.random.default_rng(0)
    qc = GroupSortQC(8, 2)
    act = GroupSort(2)
    for _ in range(200):
        p = rng.normal(size=qc.num_params())
        p = qc.project(p)
        b = qc.blocks(p)
        v1, v2 = rng.normal(size=(2, 1, 8))
        dv = (v1 - v2)[0]
        dw = (act.apply(v1) - act.apply(v2))[0]
        val = dv @ b.vv @ dv + 2 * dv @ b.vw @ dw + dw @ b.ww @ dw
        assert val >= -1e-9 * (1 + np.abs(p).sum())


def test_value_grad_matches_finite_differences():
    rng = np.random.default_rng(1)
    qc = GroupSortQC(6, 3)
    v, w = rng.normal(size=6), rng.normal(size=6)
    p = rng.normal(size=qc.num_params())

    def q(p):
        b = qc.blocks(p)
        return v @ b.vv @ v + 2 * v @ b.vw @ w + w @ b.ww @ w

    g = qc.value_grad(v, w)
    for i in range(len(p)):
        e = np.zeros_like(p)
        e[i] = 1e-6
        assert g[i] == pytest.approx((q(p + e) - q(p - e)) / 2e-6, abs=1e-6)


def test_random_maxmin_nets_sandwich():
    rng = np.random.default_rng(5)
    for _ in range(3):
        dims = [6, 10, 10, 3]
        ws = [rng.normal(size=(dims[i + 1], dims[i])) / np.sqrt(dims[i]) for i in range(3)]
        net = lipverify.Network.sequential(ws, [GroupSort(2), GroupSort(2)])
        lower = lipverify.bound(net, method="lower").bound
        sdp = lipverify.bound(net, method="lipsdp-neuron")
        naive = lipverify.bound(net, method="naive").bound
        assert sdp.certified
        assert lower <= sdp.bound <= naive * (1 + 1e-9)


def test_anchor_is_feasible_for_groupsort_chains():
    rng = np.random.default_rng(2)
    ws = [rng.normal(size=(8, 5)), rng.normal(size=(8, 8)), rng.normal(size=(2, 8))]
    lmi = ChainLMI.from_network(lipverify.Network.sequential(ws, [GroupSort(2), GroupSort(4)]))
    assert np.isfinite(lmi.rho_star(lmi.anchor()))


def test_shared_groupsort_mlp_certified_below_one_plus_1e4():
    net = lipverify.load(shared_path("onnx", "rb_MLP_MNIST_1_LIP_GNP_groupsort.onnx"))
    lower = lipverify.bound(net, method="lower").bound
    # "exactly 1" up to the float32 weights: layer norms are 1 within ~1e-7
    assert lower == pytest.approx(1.0, abs=1e-6)
    for method, opts in (("naive", {}), ("lipsdp-neuron", {"time_limit": 5})):
        r = lipverify.bound(net, method=method, **opts)
        assert r.certified and lower <= r.bound <= 1.0 + 1e-4, method


def test_shared_groupsort_state_dict_twin():
    torch = pytest.importorskip("torch")
    from torch import nn

    class GroupSort2(nn.Module):
        def forward(self, x):
            return x.reshape(x.shape[0], -1, 2).sort(dim=-1).values.reshape(x.shape[0], -1)

    arch = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), GroupSort2(), nn.Linear(100, 100),
                         GroupSort2(), nn.Linear(100, 10))
    pth = shared_path("weights", "robust_benchmark_MLP_MNIST_GNP_groupsort.pth")
    net = lipverify.load(arch, state_dict=str(pth), input_shape=(1, 28, 28))
    assert all(isinstance(a, GroupSort) for a in net.activations)
    r = lipverify.bound(net, method="naive")
    assert r.certified and r.bound <= 1.0 + 1e-4
    del torch
