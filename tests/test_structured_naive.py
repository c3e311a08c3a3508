"""naive and gershgorin without a dense order-N matrix (FORMULATIONS.md §6.1-6.3, §7).

A per-channel scale (BatchNorm, a folded Mul, average-pool counts), data movement, a conv and
their products and sums keep their structure: each operator has a certified norm bound that
needs no dense matrix (``LinearOp.l2_bound``) and structured row/column sums
(``abs_matmat_bound`` / ``abs_rmatmat_bound``). The unit tests compare every operator's
structured bound with the dense spectral norm on small random cases: never below it
(soundness), and equal to it (to 1e-12 relative) where the bound is exact. The network tests
rebuild GLipSDP's CNN export (28x28 input, 32 channels: a scale acting on 32x28x28 = 25088
values, whose dense matrix is 4.7 GiB) and check that both methods finish in seconds with a
small memory peak.
"""

from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pytest

import lipverify
from lipverify.certify.conv_norm import certified_conv_norm
from lipverify.certify.rump import (
    certified_gershgorin_norm,
    certified_inf_norm,
    certified_spectral_norm,
)
from lipverify.ir.linear import (
    Compose,
    Conv2d,
    Dense,
    Diagonal,
    IndexMap,
    Stack,
    Sum,
    compose,
    identity,
)
from lipverify.methods import baselines
from lipverify.methods.baselines import structured_gershgorin_norm, structured_inf_norm

EXACT = 1e-12  # relative slack of a bound that is the exact norm
LOOSE = 1.25  # circulant bound of a zero-padded conv on a small map (see test_conv_norm.py)
MEMORY_LIMIT = 500 * 2**20  # traced peak of one bound on the 28x28x32 CNN


def _norm(op) -> float:
    return float(np.linalg.norm(op.to_dense(), 2))


def _structured(op) -> float:
    """The structured bound, never the dense certificate of the whole operator."""
    counts: dict = {}
    bound = op._structured_l2(0, counts)
    return bound


def _conv(rng, kshape, ishape, stride=(1, 1), pads=(1, 1, 1, 1), groups=1, exact=True):
    return Conv2d(rng.normal(size=kshape), ishape, stride, pads, (1, 1), groups, exact)


def _channel_scale(rng, shape, per_channel=True):
    c, h, w = shape
    if per_channel:
        d = rng.uniform(0.2, 3.0, size=c) * rng.choice([-1.0, 1.0], size=c)
        return Diagonal(np.repeat(d, h * w))
    return Diagonal(rng.uniform(-3.0, 3.0, size=c * h * w))


# ------------------------------------------------------------------ leaves: exact norms


@pytest.mark.parametrize("seed", range(4))
def test_diagonal_norm_is_max_abs(seed):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=7) * 10.0 ** rng.uniform(-5, 5)
    op = Diagonal(d)
    assert op.l2_bound() == np.max(np.abs(d)) == pytest.approx(_norm(op), rel=EXACT)
    assert op.l2_bound() >= _norm(op)
    assert not op.dense_ok(10**9)  # never densified, however small
    assert Diagonal(np.zeros(3)).l2_bound() == 0.0


@pytest.mark.parametrize(
    "index, in_dim, mult",
    [
        ([2, 0, 1, 3], 4, 1),  # permutation
        ([4, -1, 0, 2, -1], 6, 1),  # selection with zero padding
        ([0, 0, 1, 0, 2, 2], 3, 3),  # duplication (broadcast / Expand)
        ([1, 1, 1, 1], 2, 4),  # perfect square: the root is exact
        ([-1, -1], 3, 0),  # all padding: the zero map
    ],
)
def test_index_map_norm_is_sqrt_multiplicity(index, in_dim, mult):
    op = IndexMap(np.array(index), in_dim)
    assert op.multiplicity() == mult
    bound = op.l2_bound()
    assert bound >= _norm(op)
    assert bound == pytest.approx(math.sqrt(mult), rel=EXACT, abs=0.0)
    if math.isqrt(mult) ** 2 == mult:
        assert bound == math.sqrt(mult)


def test_dense_leaf_matches_dense_certificate():
    w = np.random.default_rng(0).normal(size=(6, 9))
    assert Dense(w).l2_bound() == certified_spectral_norm(w)[0]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("exact", [True, False])
def test_conv_structured_is_the_fft_bound(seed, exact):
    rng = np.random.default_rng(seed)
    op = _conv(rng, (4, 3, 3, 3), (3, 8, 8), stride=(2, 2), exact=exact)
    counts: dict = {}
    bound = op.l2_bound(0, counts)
    assert counts == {"fft": 1}
    assert bound == certified_conv_norm(op)
    assert _norm(op) <= bound <= LOOSE * _norm(op)
    counts = {}
    dense = op.l2_bound(10**9, counts)  # small enough: the dense certificate, as before
    assert counts == {"dense": 1}
    assert dense == certified_spectral_norm(*op.dense_with_radius())[0]


# ------------------------------------------------------- scales folded into conv kernels


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("side", ["after", "before"])
@pytest.mark.parametrize("groups", [1, 2])
def test_per_channel_scale_folds_into_the_conv_exactly(seed, side, groups):
    """||D T_K|| = ||T_{dK}|| for a per-output-channel scale (per-input-channel before the conv):
    the structured bound is the conv bound of the folded kernel, not max|d| ||T_K||."""
    rng = np.random.default_rng(seed)
    conv = _conv(rng, (4, 6 // groups, 3, 3), (6, 7, 7), groups=groups)
    if side == "after":
        diag = _channel_scale(rng, conv.out_shape)
        op = compose(conv, diag)
        d = diag.scale.reshape(4, -1)[:, 0]
        folded = conv.kernel * d[:, None, None, None]
    else:
        diag = _channel_scale(rng, conv.in_shape)
        op = compose(diag, conv)
        d = diag.scale.reshape(6, -1)[:, 0].reshape(groups, -1)
        per = d[np.arange(4) // (4 // groups)]
        folded = conv.kernel * per[:, :, None, None]
    ref_op = Conv2d(folded, conv.in_shape, conv.stride, conv.pads, groups=groups)
    assert isinstance(op, Compose)
    counts: dict = {}
    bound = op._structured_l2(0, counts)
    assert counts == {"fft": 1}  # one conv, the scale folded away
    assert bound == pytest.approx(certified_conv_norm(ref_op), rel=EXACT)
    assert bound >= _norm(op)
    assert bound <= LOOSE * _norm(op)
    naive = math.prod([_structured(conv), diag.l2_bound()])
    assert bound <= naive * (1 + EXACT)


@pytest.mark.parametrize("seed", range(3))
def test_folded_scale_on_a_one_by_one_conv_is_the_exact_norm(seed):
    """1x1 conv, no padding: the exact norm is ||diag(d) K|| and the §7 bound equals it, so the
    fold (with its rounding radius) must land within 1e-12 of it and never below."""
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(5, 3))
    conv = Conv2d(k.reshape(5, 3, 1, 1), (3, 6, 6))
    d = rng.uniform(0.1, 3.0, size=5) / 3.0  # inexact products: the radius matters
    op = compose(conv, Diagonal(np.repeat(d, 36)))
    exact = np.linalg.norm(d[:, None] * k, 2)
    bound = _structured(op)
    assert exact == pytest.approx(_norm(op), rel=1e-12)
    assert exact <= bound <= exact * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_pixelwise_scale_is_bounded_by_its_channel_maximum(seed):
    """A scale that varies inside a channel (average-pool counts without padded entries,
    per-pixel normalisation): ||D T|| <= ||D' T|| with D' the per-channel max |d|."""
    rng = np.random.default_rng(seed)
    conv = _conv(rng, (4, 3, 3, 3), (3, 6, 6))
    after = compose(conv, _channel_scale(rng, conv.out_shape, per_channel=False))
    before = compose(_channel_scale(rng, conv.in_shape, per_channel=False), conv)
    for op, diag in ((after, after.ops[1]), (before, before.ops[0])):
        bound = _structured(op)
        assert bound >= _norm(op)
        assert bound <= _structured(conv) * diag.l2_bound() * (1 + EXACT)


def test_average_pool_with_uneven_counts():
    """AveragePool(3x3, stride 1, pad 1, count_include_pad=0) as the importer builds it: a
    ones-conv followed by the reciprocal counts (4, 6 or 9 entries per window)."""
    c, h, w = 3, 8, 8
    ones = Conv2d(np.ones((c, 1, 3, 3)), (c, h, w), pads=(1, 1, 1, 1), groups=c)
    counts = ones.matmat(np.ones((1, ones.n_in)))[0]
    op = compose(ones, Diagonal(1.0 / counts))
    bound = _structured(op)
    assert _norm(op) <= bound
    assert bound <= 9.0 / 4.0 * (1 + 1e-9)  # the corner count bounds it (circulant: 9)
    uniform = compose(ones, Diagonal(np.full(ones.n_out, 1.0 / 9.0)))  # count_include_pad=1
    assert _norm(uniform) <= _structured(uniform) <= 1.0 + 1e-12


def test_scale_folds_into_dense_rows_and_columns():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(6, 9))
    for op in (
        Compose((Dense(w), Diagonal(rng.normal(size=6) / 3.0))),
        Compose((Diagonal(rng.normal(size=9) / 3.0), Dense(w))),
    ):
        bound = _structured(op)
        assert _norm(op) <= bound <= _norm(op) * (1 + 1e-9)


def test_a_fold_that_would_underflow_keeps_the_factors_apart():
    conv = Conv2d(np.full((2, 1, 3, 3), 1e-200), (1, 5, 5), pads=(1, 1, 1, 1))
    op = compose(conv, Diagonal(np.full(conv.n_out, 1e-200)))  # products below 1e-308
    bound = _structured(op)
    assert bound >= _norm(op)
    assert bound == pytest.approx(_structured(conv) * 1e-200, rel=EXACT)


# -------------------------------------------------------------- products, sums, stacks


@pytest.mark.parametrize("seed", range(4))
def test_products_sums_and_stacks_are_sound(seed):
    rng = np.random.default_rng(seed)
    conv = _conv(rng, (4, 3, 3, 3), (3, 6, 6))
    conv2 = _conv(rng, (4, 4, 3, 3), (4, 6, 6))
    scale = _channel_scale(rng, conv.out_shape)
    perm = IndexMap(rng.permutation(conv.n_out), conv.n_out)
    cases = [
        compose(conv, scale, conv2),  # scale folded into the first conv
        compose(conv, perm, scale),  # movement between: submultiplicativity
        Sum((compose(conv2, scale), identity(conv2.n_in))),  # residual block
        Sum((compose(conv2, scale), compose(scale, conv2))),
        Stack((conv, compose(conv, scale))),
        compose(Stack((conv, compose(conv, scale))), Dense(rng.normal(size=(5, 2 * conv.n_out)))),
    ]
    for op in cases:
        bound = _structured(op)
        assert bound >= _norm(op), op
        assert math.isfinite(bound)


def test_sum_and_stack_of_scales_are_exact_when_aligned():
    d = np.array([1.0, -3.0, 2.0, 0.5])
    two = Sum((Diagonal(d), Diagonal(d)))
    assert _structured(two) == pytest.approx(6.0, rel=EXACT) and _structured(two) >= 6.0
    stack = Stack((Diagonal(d), Diagonal(d)))
    assert _structured(stack) == pytest.approx(3.0 * math.sqrt(2.0), rel=EXACT)
    assert _structured(stack) >= _norm(stack)


# -------------------------------------------------------------- row and column sums (§6.3)


def _leaves_and_diagonal_products(rng):
    conv = _conv(rng, (4, 3, 3, 3), (3, 7, 7), stride=(2, 2))
    return [
        Dense(rng.normal(size=(5, 8))),
        Diagonal(rng.normal(size=6)),
        IndexMap(np.array([0, 0, 2, -1, 1, 2]), 3),
        conv,
        _conv(rng, (4, 2, 3, 3), (4, 6, 6), groups=2, exact=False),
        compose(conv, _channel_scale(rng, conv.out_shape, per_channel=False)),
        compose(_channel_scale(rng, conv.in_shape, per_channel=False), conv),
    ]


@pytest.mark.parametrize("seed", range(3))
def test_row_and_column_sums_match_the_dense_ones(seed):
    """|W| 1 and |W|^T 1 through the structure: never below the sums of the dense |W|, equal to
    them to 1e-12 where |W| has no cancellation (leaves, diagonal products), and never above
    the dense certificate's |W| + radius (a product's assembly radius is pessimistic)."""
    rng = np.random.default_rng(seed)
    for op in _leaves_and_diagonal_products(rng):
        dense, radius = op.dense_with_radius()
        a = np.abs(dense)
        outer = a + (0.0 if radius is None else radius)
        rows = op.abs_matmat_bound(np.ones((1, op.n_in)))[0]
        cols = op.abs_rmatmat_bound(np.ones((1, op.n_out)))[0]
        assert (rows >= a.sum(axis=1)).all() and (cols >= a.sum(axis=0)).all(), op
        assert (rows <= outer.sum(axis=1) * (1 + EXACT)).all(), op
        assert (cols <= outer.sum(axis=0) * (1 + EXACT)).all(), op
        np.testing.assert_allclose(rows, a.sum(axis=1), rtol=EXACT, atol=0)
        np.testing.assert_allclose(cols, a.sum(axis=0), rtol=EXACT, atol=0)
        assert structured_inf_norm(op) >= np.abs(dense).sum(axis=1).max()
        assert structured_inf_norm(op) <= certified_inf_norm(dense, radius) * (1 + EXACT)
        gersh = structured_gershgorin_norm(op)
        assert gersh >= _norm(op)
        assert gersh <= certified_gershgorin_norm(dense, radius) * (1 + EXACT)


@pytest.mark.parametrize("seed", range(3))
def test_gershgorin_of_products_and_sums_is_sound(seed):
    rng = np.random.default_rng(seed)
    conv = _conv(rng, (4, 3, 3, 3), (3, 6, 6))
    conv2 = _conv(rng, (4, 4, 3, 3), (4, 6, 6))
    scale = _channel_scale(rng, conv.out_shape)
    for op in (
        compose(conv, scale, conv2),
        Sum((compose(conv2, scale), identity(conv2.n_in))),
        Stack((conv, compose(conv, scale))),
        Sum((conv2, Compose((Diagonal(-np.ones(conv2.n_in)), conv2)))),  # cancels to zero
    ):
        dense = op.to_dense()
        assert structured_gershgorin_norm(op) >= np.linalg.norm(dense, 2)
        assert structured_inf_norm(op) >= np.abs(dense).sum(axis=1).max()


# ------------------------------------------------------------ GLipSDP-like CNN, 28x28x32


def _cnn_onnx(path, variant: str = "bn", seed: int = 0) -> None:
    """Input 1x28x28, Conv(1->32, 3x3, pad 1) + BatchNorm(32) + Relu, Conv(32->32, 3x3,
    stride 2, pad 1) + Relu, Flatten, Gemm(6272->100) + Relu, Gemm(100->10).

    ``bn-after-relu``: BatchNorm after the first Relu, followed by another Relu, so the scale
    on 32x28x28 is a term of its own (the 25088x25088 matrix of the old failure).
    ``pool``: Conv + Mul(per-channel) + Relu, AveragePool 3x3 s1 p1 without padded entries,
    Conv + Relu, then Conv(y) + Mul(y) (a residual Sum) and MaxPool 2x2 before the flatten.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    c = 32
    init("w1", rng.normal(size=(c, 1, 3, 3)) / 3)
    init("b1", rng.normal(size=c) * 0.1)
    for name, arr in (("g", rng.uniform(0.5, 2, c)), ("beta", rng.normal(size=c) * 0.1),
                      ("mu", rng.normal(size=c) * 0.1), ("var", rng.uniform(0.5, 2, c))):
        init(name, arr)
    init("w2", rng.normal(size=(c, c, 3, 3)) / 17)
    init("b2", rng.normal(size=c) * 0.1)
    init("w3", rng.normal(size=(100, c * 14 * 14)) / 80)
    init("b3", rng.normal(size=100) * 0.1)
    init("w4", rng.normal(size=(10, 100)) / 10)
    init("b4", rng.normal(size=10) * 0.1)
    init("s", rng.uniform(0.5, 2.0, size=(1, c, 1, 1)))
    bn_ins = ["g", "beta", "mu", "var"]
    pad1 = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}

    x = node("Conv", ["x", "w1", "b1"], "c1", **pad1)
    if variant == "bn":
        x = node("Relu", [node("BatchNormalization", [x, *bn_ins], "bn")], "r1")
    elif variant == "bn-after-relu":
        x = node("Relu", [x], "r0")
        x = node("Relu", [node("BatchNormalization", [x, *bn_ins], "bn")], "r1")
    else:  # pool
        x = node("Relu", [node("Mul", [x, "s"], "m1")], "r1")
        x = node("AveragePool", [x], "ap", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                 count_include_pad=0)
    if variant == "pool":
        init("w2s", rng.normal(size=(c, c, 3, 3)) / 17)
        init("w3s", rng.normal(size=(c, c, 3, 3)) / 17)
        y = node("Relu", [node("Conv", [x, "w2s", "b2"], "c2", **pad1)], "r2")
        y = node("Add", [node("Conv", [y, "w3s"], "c3", **pad1), node("Mul", [y, "s"], "m2")],
                 "res")  # one source twice: a Sum of a conv and a per-channel scale
        x = node("MaxPool", [y], "mp", kernel_shape=[2, 2], strides=[2, 2])
    else:
        x = node("Conv", [x, "w2", "b2"], "c2", strides=[2, 2], **pad1)
        x = node("Relu", [x], "r2")
    x = node("Flatten", [x], "f", axis=1)
    x = node("Relu", [node("Gemm", [x, "w3", "b3"], "g3", transB=1)], "r3")
    node("Gemm", [x, "w4", "b4"], "y", transB=1)
    graph = helper.make_graph(
        nodes, f"cnn_{variant}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module", params=["bn", "bn-after-relu", "pool"])
def cnn(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("cnn") / f"cnn_{request.param}.onnx"
    _cnn_onnx(path, request.param)
    net = lipverify.load(path)
    lower = lipverify.bound(net, method="lower", samples=8, steps=5, top=2).bound
    return request.param, path, net, lower


def test_cnn_has_a_scale_on_the_full_feature_map(cnn):
    """The scenario of the bug: a per-channel scale acting on 32x28x28 = 25088 values, inside
    a term whose dense matrix the old code built (4.7 GiB for the scale alone)."""
    _, _, net, _ = cnn
    ops = [t.op for aff in [*(n.pre for n in net.nodes), net.output] for t in aff.terms]
    scales = [leaf for op in ops for leaf in op.leaves()
              if isinstance(leaf, Diagonal) and leaf.n_in == 32 * 28 * 28]
    assert scales
    assert any(op.n_in * op.n_out > baselines.DENSE_CONV_LIMIT and not isinstance(op, Conv2d)
               for op in ops)


@pytest.mark.parametrize("method", ["naive", "gershgorin"])
def test_cnn_bound_is_certified_fast_and_small(cnn, method, capsys):
    variant, path, _, lower = cnn
    tracemalloc.start()
    try:
        start = time.perf_counter()
        res = lipverify.bound(path, method=method)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    with capsys.disabled():
        print(f"\n  {variant} {method}: L <= {res.bound:.6g} (lower {lower:.4g}) "
              f"in {elapsed:.2f} s, traced peak {peak / 2**20:.1f} MiB")
    assert res.certified and math.isfinite(res.bound)
    assert res.bound >= lower
    assert peak < MEMORY_LIMIT


def test_cnn_naive_is_not_looser_than_the_product_of_leaf_norms(cnn):
    """Folding a BatchNorm into its conv is at least as tight as ||D|| ||T|| per term."""
    _, _, net, _ = cnn
    res = lipverify.bound(net, method="naive")

    def loose(op):
        return math.prod(leaf.l2_bound(baselines.DENSE_CONV_LIMIT) for leaf in op.leaves())

    for node in net.nodes:
        for term in node.pre.terms:
            if isinstance(term.op, Compose):
                assert term.op.l2_bound(baselines.DENSE_CONV_LIMIT) <= loose(term.op) * (1 + EXACT)
    assert res.details["structured_terms"] >= 1


def test_cnn_linf_naive_and_gershgorin(cnn):
    _, _, net, _ = cnn
    naive = lipverify.bound(net, method="naive", norm="linf")
    gersh = lipverify.bound(net, method="gershgorin", norm="linf")
    assert naive.certified and gersh.certified
    assert naive.bound == pytest.approx(gersh.bound, rel=1e-12)


@pytest.mark.parametrize("method", ["naive", "gershgorin"])
def test_cli_bound_no_longer_runs_out_of_memory(tmp_path, method):
    """`lipverify bound cnn.onnx -m naive` used to exit 5: "out of memory: a dense 25088x25088
    matrix needs 4.7 GiB" (the BatchNorm scale alone between two Relus)."""
    import json

    from click.testing import CliRunner
    from lipverify_cli.main import main

    path = tmp_path / "cnn.onnx"
    _cnn_onnx(path, "bn-after-relu")
    res = CliRunner().invoke(main, ["bound", str(path), "-m", method, "--no-lower",
                                    "--format", "json"])
    assert res.exit_code == 0, res.output
    obj = json.loads([line for line in res.stdout.splitlines() if line.strip()][-1])
    assert obj["certified"] is True and math.isfinite(obj["bound"])
