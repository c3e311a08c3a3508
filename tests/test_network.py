"""The network representation: validation, views, forward pass."""

from __future__ import annotations

import numpy as np
import pytest

import lipverify
from lipverify.errors import ModelLoadError, NotApplicableError, UsageError
from lipverify.ir.activations import GroupSort, SlopeRestricted
from lipverify.ir.linear import Dense, identity
from lipverify.ir.network import Affine, Network, Node, Term

RELU = SlopeRestricted.named("relu")


def test_sequential_forward_and_views():
    w1 = np.array([[1.0, -1.0], [2.0, 0.5]])
    w2 = np.array([[1.0, 1.0]])
    net = Network.sequential([w1, w2], [RELU], biases=[np.array([0.0, -1.0]), np.array([0.5])])
    x = np.array([[1.0, 2.0], [3.0, -1.0]])
    expected = np.maximum(x @ w1.T + [0.0, -1.0], 0) @ w2.T + 0.5
    np.testing.assert_allclose(net.forward(x), expected)
    assert net.widths == [2, 2, 1]
    assert net.is_sequential and len(net.chain()) == 2
    assert net.num_parameters == 4 + 2 + 2 + 1


def test_nan_weights_rejected():
    with pytest.raises(ModelLoadError, match="NaN"):
        Network.sequential([np.array([[np.nan]]), np.array([[1.0]])], [RELU])


def test_inf_bias_rejected():
    with pytest.raises(ModelLoadError, match="NaN/Inf"):
        Network.sequential(
            [np.eye(2), np.eye(2)], [RELU], biases=[np.array([np.inf, 0]), np.zeros(2)]
        )


def test_zero_width_rejected():
    with pytest.raises(ModelLoadError, match="zero width"):
        Network.sequential([np.zeros((0, 3)), np.zeros((2, 0))], [RELU])


def test_inconsistent_shapes_rejected():
    with pytest.raises(ModelLoadError, match="inconsistent"):
        Network.sequential([np.eye(3), np.ones((2, 4))], [RELU])


def test_select_outputs_and_bad_rows():
    net = Network.sequential([np.eye(3), np.diag([1.0, 2.0, 3.0])], [RELU])
    sub = net.select_outputs([2])
    assert sub.output_dim == 1
    np.testing.assert_allclose(sub.forward(np.ones((1, 3))), [[3.0]])
    with pytest.raises(UsageError):
        net.select_outputs([5])


def test_residual_dag_is_not_a_chain():
    relu_node = Node(RELU, Affine((Term(0, Dense(np.eye(2))),), np.zeros(2)), (2,))
    out = Affine((Term(0, identity(2)), Term(1, Dense(2 * np.eye(2)))), np.zeros(2))
    net = Network((2,), (relu_node,), out)
    assert not net.is_sequential
    with pytest.raises(NotApplicableError):
        net.chain()
    np.testing.assert_allclose(net.forward(np.array([[1.0, -1.0]])), [[3.0, -1.0]])
    # naive on a residual net: ||I|| + 2 ||I|| = 3
    assert lipverify.bound(net, method="naive").bound == pytest.approx(3.0, rel=1e-9)


def test_groupsort_network_naive_is_product():
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
    net = Network.sequential([q, q.T], [GroupSort(2)])
    assert lipverify.bound(net, method="naive").bound == pytest.approx(1.0, abs=1e-9)
