"""Certified conv spectral norm via the circulant embedding (lipverify.certify.conv_norm, §7).

Soundness: the bound is never below the exact dense spectral norm. Tightness: the bound is the
norm of a circular convolution containing the zero-padded one, so it is loose where the
padding/border is a large part of the map (tiny feature maps) and tight on large inputs with
no padding (a Toeplitz section of a long circulant); the tolerances below reflect this.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import scipy.sparse.linalg
from conftest import shared_path

import lipverify
from lipverify.certify.conv_norm import certified_conv_norm
from lipverify.certify.rump import certified_spectral_norm
from lipverify.ir.activations import SlopeRestricted
from lipverify.ir.linear import Conv2d
from lipverify.methods import baselines

EXACT = 1 + 1e-9  # the bound is the exact norm (up to the certificate's rounding slack)
LOOSE = 1.25  # observed <= 1.15: border effects of zero padding / short maps
TINY = 2.0  # observed <= 1.75: 2x2 map with padding 1, the border is everything

# (kernel shape, input shape, stride, pads (t, l, b, r), dilation, groups, ratio tolerance)
CASES = [
    ((4, 3, 3, 3), (3, 8, 8), (1, 1), (1, 1, 1, 1), (1, 1), 1, LOOSE),
    ((4, 3, 3, 3), (3, 8, 8), (2, 2), (1, 1, 1, 1), (1, 1), 1, LOOSE),
    ((4, 3, 3, 3), (3, 9, 7), (3, 2), (0, 2, 1, 0), (1, 1), 1, LOOSE),
    ((5, 2, 3, 3), (2, 11, 10), (3, 3), (2, 0, 0, 1), (1, 1), 1, EXACT),  # stride = kernel
    ((4, 2, 3, 3), (4, 9, 9), (1, 1), (1, 1, 1, 1), (1, 1), 2, LOOSE),
    ((6, 2, 3, 3), (4, 9, 8), (2, 1), (1, 0, 2, 1), (1, 1), 2, LOOSE),
    ((4, 3, 3, 2), (3, 10, 10), (1, 1), (0, 0, 0, 0), (2, 2), 1, LOOSE),
    ((4, 3, 3, 3), (3, 11, 11), (2, 2), (2, 2, 2, 2), (2, 2), 1, LOOSE),
    ((6, 1, 3, 3), (3, 12, 9), (2, 3), (1, 1, 0, 0), (2, 1), 3, LOOSE),  # depthwise x2
    ((5, 1, 5, 1), (1, 20, 20), (1, 1), (0, 0, 0, 0), (1, 1), 1, LOOSE),
    ((6, 5, 6, 20), (5, 6, 20), (1, 1), (0, 0, 0, 0), (1, 1), 1, EXACT),  # one output
    ((1, 4, 3, 3), (4, 7, 7), (1, 1), (1, 1, 1, 1), (1, 1), 1, LOOSE),
    ((7, 1, 3, 3), (1, 7, 7), (2, 2), (1, 1, 1, 1), (1, 1), 1, LOOSE),
    ((1, 1, 3, 3), (1, 9, 9), (1, 1), (0, 0, 0, 0), (1, 1), 1, LOOSE),
    ((3, 2, 3, 3), (2, 2, 2), (1, 1), (1, 1, 1, 1), (1, 1), 1, TINY),  # kernel covers all
    ((3, 2, 3, 3), (2, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1, EXACT),  # one output
    ((3, 2, 2, 2), (2, 4, 4), (2, 2), (0, 0, 0, 0), (1, 1), 1, EXACT),  # disjoint patches
    ((2, 2, 4, 4), (2, 5, 5), (2, 2), (1, 1, 1, 1), (1, 1), 1, LOOSE),  # 4x4 s2 p1 (cifar)
    ((3, 2, 1, 1), (2, 6, 6), (2, 2), (0, 0, 0, 0), (1, 1), 1, EXACT),  # strided 1x1
    ((2, 2, 2, 3), (2, 1, 1), (1, 1), (1, 1, 0, 1), (1, 1), 1, EXACT),  # 1x1 input, padded
]


def _op(kshape, ishape, stride, pads, dilation, groups, seed=0, exact=True):
    rng = np.random.default_rng(seed)
    return Conv2d(rng.normal(size=kshape), ishape, stride, pads, dilation, groups, exact)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bound_is_sound(case, seed):
    *config, tol = case
    op = _op(*config, seed=seed)
    exact = np.linalg.norm(op.to_dense(), 2)
    bound = certified_conv_norm(op)
    assert bound >= exact
    assert bound <= tol * exact, bound / exact


@pytest.mark.parametrize(
    "kshape, ishape, tol",
    [
        ((4, 3, 3, 3), (3, 40, 40), 1.02),  # observed ratios <= 1.004 on these
        ((3, 3, 5, 5), (3, 48, 48), 1.02),
        ((1, 1, 3, 3), (1, 64, 64), 1.02),
        ((5, 1, 5, 1), (1, 60, 20), 1.02),
    ],
)
def test_tight_on_large_unpadded_inputs(kshape, ishape, tol):
    """Stride 1, no padding, large input: a Toeplitz section of a long circulant.

    The circulant bound is ``sup_w ||K(w)||`` sampled on the N-grid; the Toeplitz section's
    norm converges to the same supremum as the input grows (at rate ~ 1/N^2 for smooth
    ``K(w)``), so the ratio approaches 1. With zero padding the bound stays valid but the
    padded border lets the circulant act on inputs the real map never sees, hence the looser
    tolerance in :func:`test_bound_is_sound`.
    """
    for seed in range(2):
        op = _op(kshape, ishape, (1, 1), (0, 0, 0, 0), (1, 1), 1, seed=seed)
        exact = _norm_iterative(op)
        bound = certified_conv_norm(op)
        assert exact <= bound <= tol * exact, (bound, exact, bound / exact)


def _norm_iterative(op):
    """||op||_2 by ARPACK on the matrix-free operator (no O(n^3) dense SVD); accurate to
    ~1e-10 relative, far below the tolerances it is compared with."""
    lin = scipy.sparse.linalg.LinearOperator(
        (op.n_out, op.n_in),
        matvec=lambda x: op.matmat(x.reshape(1, -1)).ravel(),
        rmatvec=lambda y: op.rmatmat(y.reshape(1, -1)).ravel(),
        matmat=lambda x: op.matmat(x.T).T,
        rmatmat=lambda y: op.rmatmat(y.T).T,
    )
    return float(scipy.sparse.linalg.svds(lin, k=1, tol=1e-12, return_singular_vectors=False,
                                          random_state=0)[0])


def test_one_by_one_conv_equals_channel_matrix():
    rng = np.random.default_rng(3)
    for cout, cin, stride in [(5, 3, (1, 1)), (2, 7, (2, 2)), (4, 4, (1, 3))]:
        w = rng.normal(size=(cout, cin))
        op = Conv2d(w.reshape(cout, cin, 1, 1), (cin, 6, 5), stride)
        ref = np.linalg.norm(w, 2)
        assert ref <= certified_conv_norm(op) <= ref * (1 + 1e-9)


def test_identity_times_three():
    op = Conv2d(3.0 * np.eye(4).reshape(4, 4, 1, 1), (4, 8, 8), pads=(1, 2, 0, 1))
    assert 3.0 <= certified_conv_norm(op) <= 3.0 * (1 + 1e-9)


@pytest.mark.parametrize("value", [2.5, -0.75, 1e-3])
def test_single_tap_delta(value):
    """One nonzero tap: a shifted, cropped identity (times value) with norm |value|."""
    kernel = np.zeros((1, 1, 3, 5))
    kernel[0, 0, 1, 3] = value
    op = Conv2d(kernel, (1, 9, 11), pads=(1, 2, 1, 2))
    assert abs(value) == pytest.approx(np.linalg.norm(op.to_dense(), 2), rel=1e-12)
    assert abs(value) <= certified_conv_norm(op) <= abs(value) * (1 + 1e-9)


def test_nonnegative_kernel_bound_is_kernel_sum():
    """For K >= 0 (one channel), max_w |K(w)| = K(0) = sum K: the bound is exactly that."""
    rng = np.random.default_rng(5)
    kernel = rng.uniform(size=(1, 1, 3, 4))
    op = Conv2d(kernel, (1, 10, 10), pads=(1, 1, 1, 1))
    total = kernel.sum()
    assert np.linalg.norm(op.to_dense(), 2) <= total
    assert total <= certified_conv_norm(op) <= total * (1 + 1e-9)


def test_matches_fft_of_circular_embedding():
    """Unpadded stride-1 conv: the bound is max ||fft2(K, s=(H, W))[u, v]||, computed here
    independently with numpy's FFT (different sign and flip conventions: no effect)."""
    rng = np.random.default_rng(7)
    kernel = rng.normal(size=(3, 4, 3, 2))
    h, w = 9, 8
    op = Conv2d(kernel, (4, h, w))
    spec = np.fft.fft2(kernel, s=(h, w))  # (cout, cin, h, w)
    ref = np.linalg.norm(spec.transpose(2, 3, 0, 1), 2, axis=(2, 3)).max()
    assert ref <= certified_conv_norm(op) <= ref * (1 + 1e-9)


def test_non_overlapping_patches_exact():
    """Stride = kernel size, no padding: block diagonal with copies of K as a matrix."""
    rng = np.random.default_rng(11)
    kernel = rng.normal(size=(5, 3, 2, 3))
    op = Conv2d(kernel, (3, 6, 9), stride=(2, 3))
    ref = np.linalg.norm(kernel.reshape(5, -1), 2)
    assert ref == pytest.approx(np.linalg.norm(op.to_dense(), 2), rel=1e-12)
    assert ref <= certified_conv_norm(op) <= ref * (1 + 1e-9)


def _circulant_dense(kernel, n):
    """Dense matrix of the circular cross-correlation on an n x n grid (c_in n^2 columns),
    built as a valid conv on the periodically tiled input: the tiling matrix is a 0/1 map."""
    cout, cin, kh, kw = kernel.shape
    tile = Conv2d(kernel, (cin, n + kh - 1, n + kw - 1))
    ra, rb = np.arange(n + kh - 1) % n, np.arange(n + kw - 1) % n
    embed = np.zeros(((n + kh - 1) * (n + kw - 1), n * n))
    rows = np.arange(embed.shape[0])
    embed[rows, (ra[:, None] * n + rb[None, :]).ravel()] = 1.0
    return tile.to_dense() @ np.kron(np.eye(cin), embed)


def test_bound_is_exact_norm_of_the_embedding_circulant():
    """The bound for a zero-padded stride-1 conv is the exact norm of the circulant C_N it is
    embedded in (N = H + pad_t + pad_b here), computed here from C_N's dense matrix; and
    ||T_zero|| <= ||C_N|| (§7)."""
    rng = np.random.default_rng(13)
    for seed, (h, pads) in enumerate([(6, (1, 1, 1, 1)), (5, (2, 0, 0, 1)), (7, (0, 0, 0, 0))]):
        kernel = np.random.default_rng(seed).normal(size=(2, 3, 3, 3))
        zero = Conv2d(kernel, (3, h, h), pads=pads)
        n_h, n_w = h + pads[0] + pads[2], h + pads[1] + pads[3]
        if n_h != n_w:
            continue
        circ = np.linalg.norm(_circulant_dense(kernel, n_h), 2)
        bound = certified_conv_norm(zero)
        assert np.linalg.norm(zero.to_dense(), 2) <= circ
        assert circ <= bound <= circ * (1 + 1e-9)
    # a circulant is a circulant: its norm is the max over frequencies of ||K(w)|| (§7)
    kernel = rng.normal(size=(2, 2, 3, 3))
    spec = np.fft.fft2(kernel, s=(6, 6)).transpose(2, 3, 0, 1)
    ref = np.linalg.norm(spec, 2, axis=(2, 3)).max()
    assert np.linalg.norm(_circulant_dense(kernel, 6), 2) == pytest.approx(ref, rel=1e-10)


def test_inexact_kernel_adds_radius():
    for *case, _ in CASES[:6]:
        exact_op = _op(*case, seed=4)
        rounded = _op(*case, seed=4, exact=False)
        b_exact, b_round = certified_conv_norm(exact_op), certified_conv_norm(rounded)
        assert b_round > b_exact
        assert b_round <= b_exact * (1 + 1e-12)
        dense = certified_spectral_norm(*rounded.dense_with_radius())[0]
        assert b_round >= np.linalg.norm(rounded.to_dense(), 2)
        assert b_round >= dense * (1 - 1e-9)


def test_average_pool_kernel():
    """A 3x3 average pool (kernel 1/9, rounded): norm at most 1 (exact value 1 on the circle)."""
    kernel = np.full((2, 1, 3, 3), 1.0 / 9.0)
    op = Conv2d(kernel, (2, 12, 12), stride=(3, 3), groups=2, exact_kernel=False)
    bound = certified_conv_norm(op)
    assert np.linalg.norm(op.to_dense(), 2) <= bound <= 1.0 + 1e-12


def test_zero_kernel():
    op = Conv2d(np.zeros((2, 3, 3, 3)), (3, 5, 5), pads=(1, 1, 1, 1))
    assert 0.0 <= certified_conv_norm(op) < 1e-300


def test_speed_64_channels():
    rng = np.random.default_rng(17)
    op = Conv2d(rng.normal(size=(64, 64, 3, 3)) / 24, (64, 32, 32), pads=(1, 1, 1, 1))
    start = time.perf_counter()
    bound = certified_conv_norm(op)
    elapsed = time.perf_counter() - start
    assert bound > 0
    assert elapsed < 20.0  # ~1 s on 2 cores; generous for a loaded CI machine


# ---------------------------------------------------------------- shared real networks


def _load(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lipverify.load(shared_path("onnx", name))


def _convs(net):
    terms = [t.op for node in net.nodes for t in node.pre.terms]
    terms += [t.op for t in net.output.terms]
    return [op for op in terms if isinstance(op, Conv2d)]


@pytest.mark.shared
@pytest.mark.parametrize("name", ["cifar_base_kw.onnx", "resnet_2b.onnx"])
def test_shared_convs_against_dense(name):
    net = _load(name)
    convs = _convs(net)
    assert convs
    for op in convs:
        dense = certified_spectral_norm(*op.dense_with_radius())[0]
        fft = certified_conv_norm(op)
        # The dense certified value is itself an upper bound, a hair (~1e-11) above the true
        # norm; the FFT bound must not be below the true norm, hence the tiny slack.
        assert fft >= dense * (1 - 1e-9), op
        assert fft <= 1.5 * dense, op


@pytest.mark.shared
@pytest.mark.parametrize("name, lower", [("cifar_base_kw.onnx", 0.8763), ("resnet_2b.onnx", 2.8)])
def test_shared_naive_above_lower_bound(name, lower):
    res = lipverify.bound(shared_path("onnx", name), method="naive")
    assert res.certified and res.bound >= lower
    assert res.details["fft_convs"] >= 1  # the first conv (32x32 input) is above the limit
    assert "FFT" in res.details["per_layer"]


def test_naive_switches_to_fft_above_limit(monkeypatch):
    rng = np.random.default_rng(19)
    conv1 = Conv2d(rng.normal(size=(4, 2, 3, 3)) / 4, (2, 10, 10), pads=(1, 1, 1, 1))
    conv2 = Conv2d(rng.normal(size=(3, 4, 3, 3)) / 4, (4, 10, 10), stride=(2, 2))
    relu = SlopeRestricted.named("relu")
    net = lipverify.Network.sequential([conv1, conv2], [relu], input_shape=(2, 10, 10))
    dense = lipverify.bound(net, method="naive")
    assert dense.details["fft_convs"] == 0 and dense.details["dense_terms"] == 2
    monkeypatch.setattr(baselines, "DENSE_CONV_LIMIT", 0)
    fft = lipverify.bound(net, method="naive")
    assert fft.certified and fft.details["fft_convs"] == 2 and "FFT" in fft.details["per_layer"]
    assert dense.bound * (1 - 1e-9) <= fft.bound <= 1.5 * dense.bound
    exact = np.linalg.norm(conv1.to_dense(), 2) * np.linalg.norm(conv2.to_dense(), 2)
    assert fft.bound >= exact
