"""to_torch against Network.forward, and the sampled lower bound against exact constants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lipverify.errors import NotApplicableError
from lipverify.ir.activations import (
    ELEMENTWISE,
    GroupSort,
    Householder,
    Lipschitz,
    MaxPool2d,
    SlopeRestricted,
)
from lipverify.ir.linear import Compose, Conv2d, Dense, Diagonal, IndexMap, LinearOp, Stack, Sum
from lipverify.ir.network import Affine, Network, Node, Term
from lipverify.ir.torch_eval import to_torch
from lipverify.methods.lower import lower_bound
from lipverify.status import Status

RNG = np.random.default_rng(0)
RELU = SlopeRestricted.named("relu")
FAST = {"samples": 64, "steps": 30}


def _close(net: Network, x: np.ndarray, tol: float = 1e-12, **kw):
    got = to_torch(net, **kw)(torch.from_numpy(x)).detach().numpy()
    want = net.forward(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _mlp(widths, acts, scale=1.0, bias=1.0, rng=RNG):
    ws = [scale * rng.standard_normal((o, i)) / math.sqrt(i) for i, o in zip(widths, widths[1:])]
    bs = [bias * rng.standard_normal(o) for o in widths[1:]]
    return Network.sequential(ws, acts, biases=bs)


# ------------------------------------------------------------------------------ to_torch
ELEMENTWISE_CASES = [
    ("relu",),
    ("leaky_relu", 0.1),
    ("tanh",),
    ("sigmoid",),
    ("softplus", 2.0),
    ("elu", 0.5),
    ("abs",),
    ("hardtanh", -0.5, 2.0),
    ("identity",),
    ("slope", -0.5, 2.0),
    ("gelu",),
    ("gelu", 0.75),
    ("silu",),
]


def test_every_elementwise_kind_is_covered():
    assert {c[0] for c in ELEMENTWISE_CASES} == set(ELEMENTWISE)


@pytest.mark.parametrize("case", ELEMENTWISE_CASES, ids=[c[0] for c in ELEMENTWISE_CASES])
def test_elementwise_matches_numpy(case):
    act = SlopeRestricted.named(*case)
    net = _mlp([5, 7, 6, 3], [act, act], scale=2.0)
    _close(net, 3 * RNG.standard_normal((20, 5)))


def test_softplus_is_stable_at_large_inputs():
    act = SlopeRestricted.named("softplus", 1.0)
    net = Network.sequential([np.eye(2), np.eye(2)], [act])
    _close(net, np.array([[800.0, -800.0], [30.0, -30.0]]))


def test_conv2d_stride_pads_dilation_groups():
    conv = Conv2d(
        RNG.standard_normal((4, 2, 3, 2)),
        (4, 7, 6),
        stride=(2, 1),
        pads=(1, 0, 2, 1),
        dilation=(1, 2),
        groups=2,
    )
    net = Network.sequential(
        [conv, Dense(RNG.standard_normal((3, conv.n_out)))], [RELU], input_shape=(4, 7, 6)
    )
    _close(net, RNG.standard_normal((6, conv.n_in)))


def test_structured_ops_and_structured_activations():
    index = IndexMap(np.array([3, -1, 0, 5, -1, 2, 1, 4]), 6)
    ops = [
        Compose((Diagonal(RNG.standard_normal(6)), index)),
        Sum((Dense(RNG.standard_normal((8, 8))), Diagonal(RNG.standard_normal(8)))),
        Stack((Dense(RNG.standard_normal((4, 8))), IndexMap(np.array([1, -1, 7, 0]), 8))),
        Dense(RNG.standard_normal((8, 8))),
        Dense(RNG.standard_normal((2, 8))),
    ]
    acts = [GroupSort(4, descending=True), Householder(0.7), GroupSort(2), Lipschitz("softmax")]
    _close(Network.sequential(ops, acts), RNG.standard_normal((9, 6)))


def test_maxpool_with_padding():
    pool = MaxPool2d((3, 2), (2, 2), (1, 0, 1, 1), (2, 5, 6))
    net = Network.sequential(
        [np.eye(60), RNG.standard_normal((2, pool.out_dim(60)))], [pool], input_shape=(2, 5, 6)
    )
    _close(net, RNG.standard_normal((5, 60)))


def test_residual_dag():
    w1, w2 = RNG.standard_normal((4, 3)), RNG.standard_normal((4, 4))
    n1 = Node(RELU, Affine((Term(0, Dense(w1)),), RNG.standard_normal(4)), (4,))
    n2 = Node(
        SlopeRestricted.named("tanh"),
        Affine((Term(1, Dense(w2)), Term(0, Dense(w1))), np.zeros(4)),
        (4,),
    )
    w3, w4 = RNG.standard_normal((2, 4)), RNG.standard_normal((2, 4))
    out = Affine((Term(2, Dense(w3)), Term(1, Dense(w4))), np.ones(2))
    net = Network((3,), (n1, n2), out)
    _close(net, RNG.standard_normal((7, 3)))


def test_smooth_surrogate_is_close_and_unknown_kinds_raise():
    x = RNG.standard_normal((10, 4))
    for case in [
        ("relu",),
        ("leaky_relu", 0.2),
        ("abs",),
        ("hardtanh", -0.5, 0.5),
        ("slope", -0.3, 1.5),
    ]:
        net = _mlp([4, 6, 2], [SlopeRestricted.named(*case)])
        _close(net, x, tol=1e-3, smooth=True, smooth_beta=1e4)
        smooth = to_torch(net, smooth=True, smooth_beta=1.0)(torch.from_numpy(x)).numpy()
        assert np.abs(smooth - net.forward(x)).max() > 1e-3  # the surrogate is really used
    with pytest.raises(NotApplicableError):
        to_torch(Network.sequential([np.eye(2), np.eye(2)], [Lipschitz("opaque")]))

    class Strange(Dense):
        pass

    assert isinstance(Strange(np.eye(2)), LinearOp)  # subclasses dispatch through the MRO
    _close(Network.sequential([Strange(np.eye(2)), np.eye(2)], [RELU]), x[:, :2])


# ----------------------------------------------------------------------------- lower bound
def test_relu_exact_constant_2_sqrt_2():
    w1, w2 = np.array([[-2.0, -2.0], [-2.0, -1.0]]), np.array([[-1.0, 1.0]])
    true = 2 * math.sqrt(2)
    for seed in range(3):
        bias = np.random.default_rng(seed).standard_normal(2) * 3
        net = Network.sequential([w1, w2], [RELU], biases=[bias, np.zeros(1)])
        out = lower_bound(net, seed=seed)  # default settings: 0 misses in 100 bias draws
        assert abs(out.bound - true) < 1e-6
        assert out.bound <= true * (1 + 1e-9)
        assert not out.certified and out.status == Status() and out.solver is None
        assert len(out.details["witness_x"]) == 2


def test_positive_weights_reach_linear_constant():
    rng = np.random.default_rng(1)
    ws = [rng.uniform(0, 1, (8, 5)), rng.uniform(0, 1, (6, 8)), rng.uniform(0, 1, (3, 6))]
    net = Network.sequential(ws, [RELU, RELU], biases=[rng.uniform(0, 1, w.shape[0]) for w in ws])
    prod = ws[2] @ ws[1] @ ws[0]
    l2 = lower_bound(net, **FAST).bound
    assert abs(l2 - np.linalg.norm(prod, 2)) < 1e-6 * np.linalg.norm(prod, 2)
    linf = lower_bound(net, norm="linf", **FAST).bound
    assert abs(linf - np.abs(prod).sum(1).max()) < 1e-6 * linf


def test_linf_scalar_output_below_abs_product():
    rng = np.random.default_rng(2)
    ws = [rng.standard_normal((10, 6)), rng.standard_normal((1, 10))]
    net = Network.sequential(ws, [RELU], biases=[rng.standard_normal(10), np.zeros(1)])
    bound = (np.abs(ws[1]) @ np.abs(ws[0])).sum()
    out = lower_bound(net, norm="linf", **FAST)
    assert 0.3 * bound < out.bound <= bound * (1 + 1e-9)


def test_more_outputs_than_inputs():
    rng = np.random.default_rng(3)
    ws = [rng.standard_normal((6, 2)), rng.standard_normal((9, 6))]
    net = Network.sequential(ws, [SlopeRestricted.named("identity")])
    out = lower_bound(net, **FAST)
    assert abs(out.bound - np.linalg.norm(ws[1] @ ws[0], 2)) < 1e-6 * out.bound


ACTS = [RELU, SlopeRestricted.named("tanh"), SlopeRestricted.named("leaky_relu", 0.1), GroupSort(2)]


@pytest.mark.parametrize("act", ACTS, ids=lambda a: a.describe())
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_below_naive_product(act, norm):
    rng = np.random.default_rng(4)
    net = _mlp([12, 16, 16, 4], [act, act], scale=1.5, rng=rng)
    ord_ = 2 if norm == "l2" else np.inf
    naive = math.prod(np.linalg.norm(layer.weight.to_dense(), ord_) for layer in net.chain())
    out = lower_bound(net, norm=norm, **FAST)
    assert 0 < out.bound <= naive * (1 + 1e-9)
    assert out.bound >= (1 - 1e-6) * out.details["jacobian_norm"]


def test_conv_net_below_naive_product():
    conv = Conv2d(RNG.standard_normal((3, 2, 3, 3)), (2, 6, 6), stride=(2, 2), pads=(1, 1, 1, 1))
    pool = MaxPool2d((2, 2), (1, 1), (0, 0, 0, 0), conv.out_shape)
    dense = Dense(RNG.standard_normal((3, pool.out_dim(conv.n_out))))
    net = Network.sequential(
        [conv, Diagonal(np.ones(conv.n_out)), dense], [RELU, pool], input_shape=(2, 6, 6)
    )
    naive = np.linalg.norm(conv.to_dense(), 2) * pool.lipschitz() * np.linalg.norm(dense.weight, 2)
    out = lower_bound(net, **FAST)
    assert 0 < out.bound <= naive
    assert "witness_x" not in out.details


def test_deterministic_with_seed_and_time_limit():
    net = _mlp([10, 20, 3], [RELU])
    a, b = lower_bound(net, seed=5, **FAST), lower_bound(net, seed=5, **FAST)
    assert a.bound == b.bound and a.details["witness_x"] == b.details["witness_x"]
    quick = lower_bound(net, time_limit=0.0)
    assert quick.bound > 0 and quick.details["time_limited"]


def test_dead_and_zero_networks_and_registration():
    from lipverify.errors import UsageError
    from lipverify.methods import METHODS

    zero = Network.sequential([np.ones((3, 2)), np.zeros((1, 3))], [RELU])
    assert lower_bound(zero, **FAST).bound == 0.0
    dead = Network.sequential(
        [np.ones((3, 2)), np.ones((2, 3))], [RELU], biases=[np.full(3, -50.0), np.zeros(2)]
    )
    out = lower_bound(dead, **FAST)  # alive only far from the origin
    assert abs(out.bound - np.linalg.norm(np.ones((2, 3)) @ np.ones((3, 2)), 2)) < 1e-6
    with pytest.raises(UsageError):
        lower_bound(zero, norm="l1")
    assert METHODS["lower"].kind == "lower" and METHODS["lower"].norms == ("l2", "linf")
