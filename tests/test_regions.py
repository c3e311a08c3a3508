"""Local Lipschitz bounds over an input region (lipverify.regions): bound propagation,
per-neuron slope QCs, elimination of fixed neurons, VNN-LIB boxes, and the real MNIST net.

Truth used here: sampled pre-activations and difference quotients (soundness of the
intervals and slopes), exact values of networks that are linear on the region
(``||W_3 W_2 W_1||``, ``a^2 ||W_3 W_2 W_1||`` for leaky ReLU, 0), the sampled local lower
bound, the global bound, and the VNN-COMP images the VNN-LIB boxes were built around.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cvxpy as cp
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED_MODELS
from lipverify_cli.main import main

import lipverify
from lipverify import Network, SlopeRestricted
from lipverify.errors import ModelLoadError, UsageError
from lipverify.ir.activations import GroupSort, MaxPool2d, SlopeIntervals
from lipverify.ir.linear import Conv2d, Dense
from lipverify.ir.network import Affine, Node, Term
from lipverify.qc import SlopeQC, qc_for
from lipverify.regions import (
    Ball,
    Box,
    UnsoundError,
    check_slopes,
    local_bound,
    local_lower_bound,
    localize,
    propagate,
    read_vnnlib,
    region_from_spec,
    row_norms,
    slope_bounds,
)
from lipverify.regions.local import LocalBounds
from lipverify.regions.propagate import Interval
from lipverify.regions.vnnlib import parse_vnnlib

MNIST_NET = SHARED_MODELS / "onnx" / "mnist-net_256x2.onnx"
MNIST_DATA = SHARED_MODELS.parent / "data" / "mnist_vnncomp2021.npz"  # ../shared/data
VNNLIB = SHARED_MODELS.parent / "data" / "vnnlib"


def shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is absent)")
    return path


def mlp(widths, act, seed=0, bias=0.5):
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((b, a)) / math.sqrt(a) for a, b in zip(widths, widths[1:])]
    bs = [bias * rng.standard_normal(w.shape[0]) for w in ws]
    return Network.sequential(ws, [act] * (len(ws) - 1), biases=bs)


def residual(seed=0):
    """x -> z1 = tanh(W1 x + b1) -> z2 = relu(W2 z1 + U x + b2) -> C z2 + D z1."""
    rng = np.random.default_rng(seed)
    w1, u = rng.standard_normal((6, 4)), rng.standard_normal((5, 4))
    w2 = rng.standard_normal((5, 6))
    n1 = Node(SlopeRestricted.named("tanh"), Affine((Term(0, Dense(w1)),), rng.standard_normal(6)),
              (6,))
    n2 = Node(SlopeRestricted.named("relu"),
              Affine((Term(1, Dense(w2)), Term(0, Dense(u))), rng.standard_normal(5)), (5,))
    out = Affine((Term(2, Dense(rng.standard_normal((3, 5)))),
                  Term(1, Dense(rng.standard_normal((3, 6))))), np.zeros(3))
    return Network((4,), (n1, n2), out)


def conv_pool(seed=0):
    rng = np.random.default_rng(seed)
    conv = Conv2d(rng.standard_normal((2, 1, 3, 3)), (1, 6, 6), pads=(1, 1, 1, 1))
    pool = MaxPool2d((2, 2), (2, 2), (0, 0, 0, 0), (2, 6, 6))
    n1 = Node(SlopeRestricted.named("relu"), Affine((Term(0, conv),), 0.1 * np.ones(72)),
              (2, 6, 6))
    n2 = Node(pool, Affine((Term(1, Dense(np.eye(72))),), np.zeros(72)), (2, 3, 3))
    out = Affine((Term(2, Dense(rng.standard_normal((3, 18)))),), np.zeros(3))
    return Network((1, 6, 6), (n1, n2), out)


NETS = {
    "relu": lambda: mlp([4, 8, 8, 3], SlopeRestricted.named("relu")),
    "tanh": lambda: mlp([4, 8, 8, 3], SlopeRestricted.named("tanh"), seed=1),
    "leaky": lambda: mlp([4, 8, 8, 3], SlopeRestricted.named("leaky_relu", 0.1), seed=2),
    "sigmoid": lambda: mlp([4, 6, 6, 2], SlopeRestricted.named("sigmoid"), seed=3),
    "groupsort": lambda: mlp([4, 8, 8, 3], GroupSort(2), seed=4),
    "residual": lambda: residual(5),
    "conv-maxpool": lambda: conv_pool(6),
}


def regions_for(net, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.2, 0.8, net.input_dim)
    return [Box.around(c, 0.3), Ball(c, 0.5), Ball(c, 0.6, domain=(0.0, 1.0))]


def pre_activations(net, x):
    values, pres = [x], []
    for node in net.nodes:
        pres.append(node.pre.evaluate(values))
        values.append(node.activation.apply(pres[-1]))
    return pres


# ------------------------------------------------------------------ propagation, soundness
@pytest.mark.parametrize("name", sorted(NETS))
def test_interval_bounds_contain_sampled_pre_activations(name):
    net = NETS[name]()
    for region in regions_for(net):
        b = propagate(net, region)
        x = region.sample(400, np.random.default_rng(1))
        for iv, v in zip(b.pre, pre_activations(net, x)):
            assert iv.bounded and np.all(iv.contains(v))
        out = net.forward(x)
        assert np.all(b.output.contains(out))
        bounds = slope_bounds(net, region)
        check_slopes(net, region, bounds, samples=200, seed=2)  # raises if unsound


@pytest.mark.parametrize("name", sorted(NETS))
def test_localized_network_computes_the_same_function_on_the_region(name):
    net = NETS[name]()
    for region in regions_for(net, seed=3):
        local = localize(net, region)
        x = region.sample(64, np.random.default_rng(4))
        np.testing.assert_allclose(local.forward(x), net.forward(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("act", [SlopeRestricted.named("relu"),
                                 SlopeRestricted.named("leaky_relu", 0.2)], ids=["relu", "leaky"])
def test_backward_relaxation_tightens_ibp_and_stays_sound(act):
    net = mlp([6, 20, 20, 20, 3], act, seed=8)
    rng = np.random.default_rng(9)
    c = rng.uniform(0.0, 1.0, 6)
    for region in (Box.around(c, 0.2), Ball(c, 0.4, domain=(0.0, 1.0))):
        ibp, tight = propagate(net, region, crown=False), propagate(net, region)
        x = region.sample(3000, rng)
        for k, (a, b, v) in enumerate(zip(ibp.pre, tight.pre, pre_activations(net, x))):
            assert np.all(b.contains(v))
            assert np.all(b.lo >= a.lo) and np.all(b.hi <= a.hi)
            if k == 2:  # the third layer: IBP's boxes have compounded twice
                assert np.sum(b.hi - b.lo) < 0.8 * np.sum(a.hi - a.lo)
        check_slopes(net, region, slope_bounds(net, region), samples=300)


def test_ball_uses_exact_row_norms_and_its_domain():
    w = np.array([[3.0, 4.0], [1.0, -1.0]])
    net = Network.sequential([w, np.eye(2)], [SlopeRestricted.named("relu")])
    ball = Ball(np.array([1.0, 1.0]), 0.5)
    iv = propagate(net, ball).pre[0]
    np.testing.assert_allclose(iv.lo, [7.0 - 2.5, -0.5 * math.sqrt(2)], rtol=1e-12)
    np.testing.assert_allclose(iv.hi, [7.0 + 2.5, 0.5 * math.sqrt(2)], rtol=1e-12)
    clipped = propagate(net, Ball(np.array([1.0, 1.0]), 0.5, domain=(0.0, 1.0))).pre[0]
    assert clipped.hi[0] <= 7.0 * (1 + 1e-12) and clipped.lo[1] >= -0.5 * (1 + 1e-12)
    conv = Conv2d(np.random.default_rng(0).standard_normal((2, 1, 3, 3)), (1, 5, 5))
    np.testing.assert_allclose(row_norms(conv), np.linalg.norm(conv.to_dense(), axis=1),
                               rtol=1e-12)
    assert np.all(row_norms(conv) >= np.linalg.norm(conv.to_dense(), axis=1))


def test_slope_rules():
    iv = Interval(np.array([-2.0, 1.0, -1.0, 0.5]), np.array([-1.0, 2.0, 1.0, 3.0]))
    b = slope_bounds(Network.sequential([np.eye(4), np.eye(4)], [SlopeRestricted.named("tanh")]),
                     Box(iv.lo, iv.hi))
    a, bb = b.slopes[1]
    d = 1.0 - np.tanh(np.array([2.0, 2.0, 1.0, 3.0])) ** 2  # smallest: farthest from 0
    top = 1.0 - np.tanh(np.array([1.0, 1.0, 0.0, 0.5])) ** 2  # largest: nearest 0
    np.testing.assert_allclose(a, d, atol=1e-13)
    np.testing.assert_allclose(bb, top, atol=1e-13)
    assert np.all(a <= d) and np.all(bb >= top)
    relu = slope_bounds(Network.sequential([np.eye(4), np.eye(4)],
                                           [SlopeRestricted.named("relu")]), Box(iv.lo, iv.hi))
    assert relu.slopes[1][0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert relu.slopes[1][1].tolist() == [0.0, 1.0, 1.0, 1.0]
    rows = relu.stable_neurons(Network.sequential([np.eye(4), np.eye(4)],
                                                  [SlopeRestricted.named("relu")]))
    assert (rows[0]["inactive"], rows[0]["active"], rows[0]["unstable"]) == (1, 2, 1)


def test_check_slopes_catches_wrong_bounds():
    net = NETS["relu"]()
    region = Ball(np.full(4, 0.5), 0.5)
    good = slope_bounds(net, region)
    pre = list(good.pre)
    pre[0] = Interval(pre[0].lo + 0.5 * (pre[0].hi - pre[0].lo), pre[0].hi)
    with pytest.raises(UnsoundError, match="pre-activation"):
        check_slopes(net, region, LocalBounds(good.propagation.__class__(
            tuple(pre), good.propagation.post, good.propagation.output), good.slopes))
    a, b = good.slopes[1]
    unstable = np.flatnonzero(a < b)
    assert unstable.size
    a2 = a.copy()
    a2[unstable] = 1.0  # claim the unstable neurons are active
    with pytest.raises(UnsoundError, match="slope"):
        check_slopes(net, region, LocalBounds(good.propagation, {**good.slopes, 1: (a2, b)}),
                     samples=400)


# ------------------------------------------------------------- exact values, linear regions
def linear_chain(act, bias, seed=0):
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((6, 4)), rng.standard_normal((5, 6)), rng.standard_normal((3, 5))]
    # every hidden pre-activation is far from 0 on a small ball: |bias| >> weights
    return ws, Network.sequential(ws, [act, act], biases=[np.full(6, bias), np.full(5, bias),
                                                          np.zeros(3)])


@pytest.mark.parametrize("method", ["lipsdp-neuron", "auto", "ldlt-fast", "naive"])
def test_all_active_relu_gives_the_linear_maps_norm(method):
    ws, net = linear_chain(SlopeRestricted.named("relu"), 100.0)
    exact = np.linalg.norm(ws[2] @ ws[1] @ ws[0], 2)
    r = local_bound(net, Ball(np.zeros(4), 1e-3), method=method)
    assert r.certified and r.details["used"] == "local"
    assert r.bound == pytest.approx(exact, rel=1e-6) and r.bound >= exact * (1 - 1e-12)
    assert r.lower_bound == pytest.approx(exact, rel=1e-9)
    assert r.details["global_bound"] > 1.01 * exact
    assert [row["active"] for row in r.details["stable_neurons"]] == [6, 5]


def test_all_inactive_relu_gives_zero_and_leaky_gives_a_squared():
    ws, net = linear_chain(SlopeRestricted.named("relu"), -100.0)
    r = local_bound(net, Ball(np.zeros(4), 1e-3), method="lipsdp-neuron")
    assert r.certified and r.bound <= 1e-300 and r.lower_bound == 0.0  # naive: round_up(0)
    assert localize(net, Ball(np.zeros(4), 1e-3)).nodes == ()
    ws, net = linear_chain(SlopeRestricted.named("leaky_relu", 0.1), -100.0)
    exact = 0.01 * np.linalg.norm(ws[2] @ ws[1] @ ws[0], 2)
    r = local_bound(net, Box.around(np.zeros(4), 1e-3), method="auto")
    assert r.certified and r.bound == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("method", ["lipsdp-neuron", "ldlt-fast", "auto", "naive"])
def test_per_neuron_slopes_in_every_solver_path(method):
    """A tanh chain keeps all neurons (slopes are intervals): per-neuron SlopeQCs reach every
    solver, certified, between the sampled local lower bound and the global bound."""
    net = mlp([4, 10, 10, 3], SlopeRestricted.named("tanh"), seed=7, bias=2.0)
    region = Ball(np.full(4, 0.3), 0.5)
    local = localize(net, region)
    assert all(isinstance(n.activation, SlopeIntervals) for n in local.nodes)
    assert local.is_sequential
    r = local_bound(net, region, method=method)
    assert r.certified and r.details["local_lmi_certified"]
    assert r.lower_bound <= r.bound <= r.details["global_bound"]
    if method != "naive":
        assert r.details["used"] == "local" and r.bound < 0.9 * r.details["global_bound"]


def test_fixed_zero_slopes_do_not_break_the_solvers():
    """Neurons with alpha = beta = 0 built by hand (localize would eliminate them)."""
    rng = np.random.default_rng(3)
    ws = [rng.standard_normal((6, 4)), rng.standard_normal((6, 6)), rng.standard_normal((2, 6))]
    relu = SlopeRestricted.named("relu")
    a = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    b = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    net = Network.sequential(ws, [SlopeIntervals(relu, a, b), SlopeIntervals(relu, a, b[::-1])])
    values = {}
    for method in ("lipsdp-neuron", "ldlt-fast", "auto"):
        r = lipverify.bound(net, method=method)
        assert r.certified
        values[method] = r.bound
    # exact: the largest ||W3 D2 W2 D1 W1|| over 0/1 diagonals inside the intervals
    best = max(np.linalg.norm(ws[2] @ np.diag(d2) @ ws[1] @ np.diag(d1) @ ws[0], 2)
               for d1 in _corners(b) for d2 in _corners(b[::-1]))
    assert min(values.values()) >= best * (1 - 1e-9)
    assert values["lipsdp-neuron"] <= values["ldlt-fast"] * (1 + 1e-9)


def _corners(b):
    free = np.flatnonzero(b > 0)
    for mask in range(2 ** free.size):
        d = np.zeros(b.size)
        d[free] = [(mask >> i) & 1 for i in range(free.size)]
        yield d


def test_per_neuron_slope_qc_contract():
    a, b = np.array([0.0, 0.2, 1.0, -0.5]), np.array([1.0, 0.7, 1.0, 0.5])
    qc = SlopeQC(4, a, b)
    p = np.array([1.0, 2.0, 3.0, 4.0])
    blk = qc.blocks(p)
    np.testing.assert_allclose(blk.vv, -2 * a * b * p)
    np.testing.assert_allclose(blk.vw, (a + b) * p)
    var = cp.Variable(4)
    var.value = p
    for got, want in zip(qc.cvx_blocks(var), (blk.vv, blk.vw, blk.ww)):
        np.testing.assert_allclose(got.value, np.diag(want), atol=1e-12)
    layer = SlopeQC(4, a, b, per_neuron=False)
    v1 = cp.Variable(1)
    v1.value = np.array([2.0])
    np.testing.assert_allclose(layer.cvx_blocks(v1)[1].value, np.diag((a + b) * 2.0))
    # value gradient = the QC value itself (linear in p), column by column
    rng = np.random.default_rng(0)
    v, w = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    direct = [np.sum(v[:, j] ** 2 * blk.vv + 2 * v[:, j] * w[:, j] * blk.vw + w[:, j] ** 2 * blk.ww)
              for j in range(3)]
    assert qc.value_grad(v, w) @ p == pytest.approx(sum(direct))
    # equality and hashing by value; the scalar case as before
    assert qc == SlopeQC(4, a.copy(), b.copy()) and hash(qc) == hash(SlopeQC(4, a, b))
    assert qc != SlopeQC(4, a, b + 0.1)
    assert SlopeQC(4, 0.0, 1.0) == SlopeQC(4, 0.0, 1.0)
    assert hash(SlopeQC(4, 0.0, 1.0)) == hash((4, 0.0, 1.0, True, 1))
    assert qc_for(SlopeIntervals(SlopeRestricted.named("relu"), np.zeros(4), np.ones(4)),
                  4).per_neuron_slopes
    with pytest.raises(UsageError):
        SlopeQC(4, np.zeros(3), np.ones(3))
    with pytest.raises(UsageError):
        SlopeIntervals(SlopeRestricted.named("relu"), np.zeros(2), np.full(2, 1.5))


# ----------------------------------------------------------------------------- real MNIST
@pytest.mark.shared
def test_mnist_ball_local_bound_is_certified_and_far_below_the_global():
    net = lipverify.load(shared(MNIST_NET))
    x = np.load(shared(MNIST_DATA))["x"][0].reshape(-1).astype(np.float64)
    ball = Ball(x, 0.1, domain=(0.0, 1.0))
    r = local_bound(net, ball, method="lipsdp-neuron")
    assert r.certified and r.details["used"] == "local" and r.details["global_certified"]
    assert r.lower_bound <= r.bound <= r.details["global_bound"]
    assert r.details["global_bound"] >= 5 * r.bound  # measured: 312.4 against 0.3076
    # finite differences between sampled pairs of the ball never exceed the local bound
    pts = ball.sample(200, np.random.default_rng(5))
    fx = net.forward(pts)
    quot = np.linalg.norm(fx[1:] - fx[:-1], axis=1) / np.linalg.norm(pts[1:] - pts[:-1], axis=1)
    assert quot.max() <= r.bound
    assert r.details["region"] == {"kind": "ball", "dim": 784, "radius": 0.1,
                                   "domain": [0.0, 1.0]}


# ------------------------------------------------------------------------------- VNN-LIB
@pytest.mark.shared
@pytest.mark.parametrize("prop, index, eps, label", [("prop_0_0.03", 72, 0.03, 8),
                                                     ("prop_0_0.05", 72, 0.05, 8),
                                                     ("prop_1_0.03", 73, 0.03, 1),
                                                     ("prop_1_0.05", 73, 0.05, 1)])
def test_vnnlib_boxes_match_the_vnncomp_images(prop, index, eps, label):
    box, notes = read_vnnlib(shared(VNNLIB / f"{prop}.vnnlib"))
    data = np.load(shared(MNIST_DATA))
    x = data["x"][index].reshape(-1).astype(np.float64)
    assert data["y"][index] == label and box.dim == 784
    np.testing.assert_allclose(box.lo, np.maximum(0.0, x - eps), atol=1e-6)
    np.testing.assert_allclose(box.hi, np.minimum(1.0, x + eps), atol=1e-6)
    assert np.all((box.lo <= x) & (x <= box.hi))
    assert len(notes) == 1 and notes[0].startswith("output constraints ignored: (or (and")
    assert f"Y_{label})" in notes[0]


@pytest.mark.shared
def test_vnnlib_box_local_bound():
    net = lipverify.load(shared(MNIST_NET))
    box, _ = read_vnnlib(shared(VNNLIB / "prop_1_0.03.vnnlib"))
    r = local_bound(net, box, method="naive")
    assert r.certified and r.bound <= r.details["global_bound"]
    assert r.lower_bound <= r.bound


HEAD = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"


@pytest.mark.parametrize("text, match", [
    (HEAD + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (>= X_1 0))", "X_1 has no upper"),
    (HEAD + "(assert (<= X_0 0))\n(assert (>= X_0 1))\n(assert (<= X_1 1))\n(assert (>= X_1 0))",
     "X_0 has lower bound 1 above"),
    (HEAD + "(assert (<= X_0 1)) garbage", "unexpected token 'garbage'"),
    (HEAD + "(assert (<= X_0 1)", "never closed"),
    (HEAD + "(assert (<= X_0 1)))", "unbalanced"),
    (HEAD + "(assert (<= X_0 nan))", "expected a bound"),
    (HEAD + "(assert (<= X_0 1e999))", "not finite"),
    (HEAD + "(assert (or (<= X_0 1) (>= X_0 2)))", "disjunction over inputs"),
    (HEAD + "(assert (<= X_7 1))", "X_7 is used before"),
    (HEAD + "(assert (<= (+ X_0 Y_0) 1))", "mixing inputs and outputs"),
    (HEAD + "(frobnicate X_0)", "unsupported command 'frobnicate'"),
    ("(declare-const X_1 Real)\n(assert (<= X_1 1))\n(assert (>= X_1 0))", "X_0 is not declared"),
    ("(declare-const Z Real)", "neither X_i"),
    ("(" * 100, "nested deeper"),
])
def test_vnnlib_malformed(text, match):
    with pytest.raises(ModelLoadError, match=match) as info:
        parse_vnnlib(text, "bad.vnnlib")
    assert "bad.vnnlib" in str(info.value)


def test_vnnlib_negative_numbers_equalities_and_files(tmp_path):
    box, notes = parse_vnnlib(HEAD + "(assert (and (>= X_0 (- 0.5)) (<= 0.25 X_0 )))"
                              "(assert (<= X_0 0.75)) (assert (= X_1 -2))")
    assert box.lo.tolist() == [0.25, -2.0] and box.hi.tolist() == [0.75, -2.0] and notes == []
    huge = tmp_path / "huge.vnnlib"
    with open(huge, "wb") as fh:
        fh.truncate(51 * 2**20)  # sparse: nothing is written or read
    with pytest.raises(ModelLoadError, match="over the 50 MiB limit"):
        read_vnnlib(huge)
    with pytest.raises(ModelLoadError, match="no such VNN-LIB file"):
        read_vnnlib(tmp_path / "missing.vnnlib")
    binary = tmp_path / "bin.vnnlib"
    binary.write_bytes(b"\xff\xfe(assert")
    with pytest.raises(ModelLoadError, match="not UTF-8 text"):
        read_vnnlib(binary)
    fifo = tmp_path / "fifo.vnnlib"
    os.mkfifo(fifo)
    with pytest.raises(ModelLoadError, match="FIFO"):  # refused, never blocks
        read_vnnlib(fifo)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, match", [
    (lambda: Box(np.zeros(0), np.zeros(0)), "empty"),
    (lambda: Box(np.zeros(3), np.zeros(2)), "different sizes"),
    (lambda: Box(np.ones(2), np.zeros(2)), "lower bound 1 is above upper bound 0 at index 0"),
    (lambda: Box(np.array([0.0, np.nan]), np.ones(2)), "NaN/Inf"),
    (lambda: Box.around(np.zeros(2), -1.0), "eps must be a finite number >= 0"),
    (lambda: Ball(np.array([0.0, np.nan]), 1.0), "ball center has 1 NaN/Inf"),
    (lambda: Ball(np.zeros(2), -0.1), "radius must be a finite number > 0"),
    (lambda: Ball(np.zeros(2), 0.0), "radius must be a finite number > 0"),
    (lambda: Ball(np.zeros(2), math.inf), "radius must be a finite number > 0"),
    (lambda: Ball(np.full(2, 5.0), 1.0, domain=(0.0, 1.0)), "does not meet its domain"),
    (lambda: Ball(np.zeros(2), 1.0, domain=(1.0, 0.0)), "the domain is empty"),
    (lambda: Ball(np.zeros(2), 1.0, domain=(0.0, np.ones(3))), "domain upper bound has 3"),
])
def test_bad_regions(make, match):
    with pytest.raises(UsageError, match=match):
        make()


def test_wrong_width_and_bad_options():
    net = NETS["relu"]()
    with pytest.raises(UsageError, match="width 5 but network takes inputs of width 4"):
        propagate(net, Ball(np.zeros(5), 1.0))
    with pytest.raises(UsageError, match="width 3"):
        local_bound(net, Box.around(np.zeros(3), 0.1))
    with pytest.raises(UsageError, match="lower_bound"):
        local_bound(net, Box.around(np.zeros(4), 0.1), lower_bound=True)
    assert local_lower_bound(net, Box.around(np.zeros(4), 0.1)) > 0


# ------------------------------------------------------------ bound(region=...) and the CLI
def test_bound_with_region_is_the_local_bound():
    """``lipverify.bound(net, region=...)``: the exact local constant of a net that is linear
    on the box (relu(x) + relu(x - 3) is x on [1, 2]), below the global 2."""
    net = Network.sequential([np.array([[1.0], [1.0]]), np.array([[1.0, 1.0]])],
                             [SlopeRestricted.named("relu")],
                             biases=[np.array([0.0, -3.0]), np.zeros(1)])
    r = lipverify.bound(net, method="lipsdp-neuron", region=lipverify.Box([1.0], [2.0]),
                        lower_bound=True)
    assert r.certified and r.bound == pytest.approx(1.0, abs=1e-6) and r.bound >= 1.0
    assert r.lower_bound == pytest.approx(1.0, rel=1e-12)
    assert r.details["global_bound"] == pytest.approx(2.0, rel=1e-6)
    assert r.details["used"] == "local"
    # the ball around 3.5 of radius 0.25: both neurons active, slope 2
    r = lipverify.bound(net, method="lipsdp-neuron", region=lipverify.Ball([3.5], 0.25))
    assert r.bound == pytest.approx(2.0, rel=1e-6) and r.lower_bound is None


def test_bound_with_region_selects_output_rows():
    net = mlp([4, 8, 3], SlopeRestricted.named("relu"), seed=2)
    region = Ball(np.zeros(4), 0.05)
    r = lipverify.bound(net, method="lipsdp-neuron", region=region, output_rows=[1],
                        lower_bound=True)
    assert r.output_rows == (1,)
    row = local_bound(net.select_outputs([1]), region, method="lipsdp-neuron")
    assert r.bound == pytest.approx(row.bound, rel=1e-9)
    full = local_bound(net, region, method="lipsdp-neuron")
    assert r.lower_bound <= r.bound <= full.bound * (1 + 1e-9)


def test_bound_with_region_refuses_what_does_not_apply():
    net = NETS["relu"]()
    box = Box.around(np.zeros(4), 0.1)
    with pytest.raises(UsageError, match="lipverify.Box or lipverify.Ball"):
        lipverify.bound(net, region=(np.zeros(4), np.ones(4)))
    with pytest.raises(UsageError, match="l2 bounds; norm 'linf'"):
        lipverify.bound(net, region=box, norm="linf")
    with pytest.raises(UsageError, match="known global lower bound"):
        lipverify.bound(net, region=box, lower_bound=0.5)
    with pytest.raises(UsageError, match="width 3"):
        lipverify.bound(net, region=Box.around(np.zeros(3), 0.1))
    with pytest.raises(UsageError, match="unknown option|no_such_option"):
        lipverify.bound(net, region=box, no_such_option=1)


def test_given_global_result_is_not_recomputed_and_must_match():
    net = mlp([4, 8, 3], SlopeRestricted.named("relu"), seed=2)
    glob = lipverify.bound(net, method="naive")
    r = local_bound(net, Ball(np.zeros(4), 1e-3), method="lipsdp-neuron", global_result=glob)
    assert r.details["global_bound"] == glob.bound and r.details["seconds"]["global"] < 0.01
    assert r.bound <= glob.bound
    other = lipverify.bound(mlp([4, 8, 3], SlopeRestricted.named("relu"), seed=3), method="naive")
    with pytest.raises(UsageError, match="global_result"):
        local_bound(net, Ball(np.zeros(4), 1e-3), global_result=replace_model(other, "x"))
    with pytest.raises(UsageError, match="global_result"):
        local_bound(net, Ball(np.zeros(4), 1e-3),
                    global_result=lipverify.bound(net, method="naive", norm="linf"))


def replace_model(result, name):
    from dataclasses import replace
    return replace(result, model=name)


def test_region_that_fixes_nothing_skips_the_local_lmi():
    """A GroupSort net has no elementwise slopes to tighten: the global result is used and
    no second LMI is solved."""
    rng = np.random.default_rng(0)
    q1, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    net = Network.sequential([q1, np.eye(4)], [GroupSort(2)])
    r = local_bound(net, Ball(np.zeros(4), 0.5), method="lipsdp-neuron")
    assert r.details["local_lmi_bound"] is None and r.details["used"] == "global"
    assert "local" not in r.details["seconds"]
    assert any("fixes no neuron" in w for w in r.warnings)
    assert r.certified and r.lower_bound <= r.bound == r.details["global_bound"]


def test_region_from_spec(tmp_path):
    center = tmp_path / "x.npy"
    np.save(center, np.array([[0.5, 0.0], [1.0, 0.95]]))
    box = region_from_spec(f"{center}:0.1", domain=(0.0, 1.0))
    assert isinstance(box, Box)
    np.testing.assert_allclose(box.lo, [0.4, 0.0, 0.9, 0.85])
    np.testing.assert_allclose(box.hi, [0.6, 0.1, 1.0, 1.0])
    ball = region_from_spec(f"{center}:0.3:l2")
    assert isinstance(ball, Ball) and ball.radius == 0.3 and ball.dim == 4
    assert region_from_spec(f"{center}:0.3:linf").dim == 4
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    text = tmp_path / "t.npy"
    text.write_text("hello")
    nan = tmp_path / "nan.npy"
    np.save(nan, np.array([0.0, np.nan]))
    for spec, match in [(f"{center}", "CENTER.npy:EPS"), (f"{center}:x", "'x' is not a number"),
                        (f"{center}:-1", "finite number > 0"), (f"{center}:inf", "> 0"),
                        (f"{center}:0.1:l3", "unknown norm 'l3'"),
                        (f"{tmp_path}/none.npy:0.1", "no such region center"),
                        (f"{obj}:0.1", "array of numbers"), (f"{text}:0.1", "array of numbers"),
                        (f"{nan}:0.1", "NaN/Inf"), (f"{tmp_path}:0.1", "directory")]:
        with pytest.raises(UsageError, match=match):
            region_from_spec(spec)
    with pytest.raises(UsageError, match="does not meet its domain"):
        region_from_spec(f"{center}:0.01:l2", domain=(2.0, 3.0))
    with pytest.raises(UsageError, match="box is empty"):
        region_from_spec(f"{center}:0.01", domain=(2.0, 3.0))


@pytest.mark.shared
def test_cli_region_and_vnnlib_on_the_mnist_net(tmp_path):
    """``lipverify bound --region`` / ``--vnnlib``: certified local bounds of mnist-net_256x2
    far below its global 312.4, above their sampled local lower bounds."""
    x = np.load(shared(MNIST_DATA))["x"][0]
    np.save(tmp_path / "x0.npy", x)
    res = CliRunner().invoke(main, ["bound", str(shared(MNIST_NET)), "--region",
                                    f"{tmp_path / 'x0.npy'}:0.02", "--domain", "0:1",
                                    "--format", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["certified"] and out["details"]["used"] == "local"
    assert out["lower_bound"] <= out["bound"] <= out["details"]["global_bound"] / 100
    assert out["details"]["region"]["kind"] == "box"
    res = CliRunner().invoke(main, ["bound", str(shared(MNIST_NET)), "--vnnlib",
                                    str(shared(VNNLIB / "prop_0_0.03.vnnlib"))])
    assert res.exit_code == 0, res.output
    assert "output constraints ignored" in res.stderr and "neurons fixed" in res.stderr
    assert "(certified)" in res.stdout


def test_cli_region_conflicts_are_listed_at_once(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros(64))
    model = Path(__file__).resolve().parents[1] / "models" / "digits_mlp_relu.onnx"
    res = CliRunner().invoke(main, ["bound", str(model), "--region", f"{tmp_path}/c.npy:0.1",
                                    "--vnnlib", "p.vnnlib", "--save-certificate",
                                    str(tmp_path / "c.json")])
    assert res.exit_code == 2
    assert "give one of --region and --vnnlib" in res.stderr
    assert "--save-certificate" in res.stderr
    res = CliRunner().invoke(main, ["bound", str(model), "--domain", "0:1"])
    assert res.exit_code == 2 and "give --region" in res.stderr
    res = CliRunner().invoke(main, ["bound", str(model), "--region", f"{tmp_path}/c.npy:0.1",
                                    "--domain", "1:0"])
    assert res.exit_code == 2 and "LO < HI" in res.stderr
    res = CliRunner().invoke(main, ["bound", str(model), "-m", "lipsdp-neuron", "--region",
                                    f"{tmp_path}/c.npy:0.5:l2"])
    assert res.exit_code == 0, res.output
    assert "local bound on a l2 ball of radius 0.5" in res.stderr
