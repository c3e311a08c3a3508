"""ONNX importer, one op at a time: tiny graphs run by onnxruntime and by lipverify.

In the style of onnx2torch's tests: each case builds a one-or-few-node model with
``onnx.helper`` (float32, weights as initializers, the opset the case needs), then
compares ``network_from_onnx(model).forward`` with onnxruntime on random inputs.
Negative cases check that non-Lipschitz or unsupported graphs are refused with
every offending node listed at once, and that broken files raise ModelLoadError.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import shared_path

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lipverify.errors import ModelLoadError, UnsupportedModelError  # noqa: E402
from lipverify.importers.onnx_import import load_onnx, network_from_onnx  # noqa: E402
from lipverify.ir.activations import GroupSort  # noqa: E402

FLOAT = TensorProto.FLOAT
RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- helpers
def rand(*shape, scale=1.0) -> np.ndarray:
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


def make_model(nodes, in_shape, inits=None, opset=13, inputs_as_graph_inputs=False):
    """A model with one data input ``x`` of ``in_shape`` (a dim may be a string) and output y."""
    inits = inits or {}
    tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    inputs = [helper.make_tensor_value_info("x", FLOAT, in_shape)]
    if inputs_as_graph_inputs:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in tensors]
    graph = helper.make_graph(
        nodes,
        "test",
        inputs,
        [helper.make_tensor_value_info("y", FLOAT, None)],
        initializer=tensors,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3 if opset < 7 else 7 if opset <= 14 else 8 if opset <= 18 else 10
    return model


def session(model):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # old opsets make onnxruntime print support warnings
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_ort(model, x: np.ndarray) -> np.ndarray:
    sess = session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def check(model, n=4, scale=1.0, **kwargs):
    """Compare lipverify and onnxruntime on ``n`` random inputs; return the network."""
    net = network_from_onnx(model, name="case", **kwargs)
    sess = session(model)
    feed = sess.get_inputs()[0].name
    for _ in range(n):
        x = rand(*net.input_shape, scale=scale)
        ref = np.asarray(sess.run(None, {feed: x})[0], dtype=np.float64)
        got = net.forward(x.reshape(1, -1))
        assert got.shape == (1, ref.size), (got.shape, ref.shape)
        err = np.abs(got[0] - ref.ravel()).max()
        assert err <= 1e-5 * max(1.0, np.abs(ref).max()), err
    return net


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def problems_of(exc_info) -> list[tuple[str, str]]:
    return [(p.name, p.op_type) for p in exc_info.value.problems]


# ------------------------------------------------------------------------ Gemm / MatMul
@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (1, 1), ()])
def test_gemm(trans_a, trans_b, c_shape):
    w = rand(5, 4) if trans_b else rand(4, 5)
    inits = {"W": w}
    ins = ["x", "W"]
    if c_shape is not None:
        inits["C"] = rand(*c_shape)
        ins.append("C")
    model = make_model(
        [node("Gemm", ins, transA=trans_a, transB=trans_b, alpha=0.7, beta=-1.3)],
        [4, 1] if trans_a else [1, 4],
        inits,
        opset=13,
    )
    net = check(model)
    assert net.widths == [4, 5]


def test_gemm_symbolic_batch():
    model = make_model(
        [node("Gemm", ["x", "W", "C"], transB=1)], ["N", 4], {"W": rand(3, 4), "C": rand(3)}
    )
    net = check(model)
    assert net.input_shape == (1, 4)


def test_matmul_constant_right():
    model = make_model([node("MatMul", ["x", "W"])], [1, 4], {"W": rand(4, 3)})
    check(model)


def test_matmul_constant_right_rank3():
    model = make_model([node("MatMul", ["x", "W"])], [1, 2, 4], {"W": rand(4, 3)})
    assert check(model).output_dim == 6


def test_matmul_constant_right_vector():
    model = make_model([node("MatMul", ["x", "w"])], [2, 4], {"w": rand(4)})
    assert check(model).output_dim == 2


def test_matmul_rank1_input_constant_right():
    nodes = [
        node("MatMul", ["x", "W"], ["h"]),
        node("Relu", ["h"], ["r"]),
        node("MatMul", ["r", "w"]),
    ]
    net = check(make_model(nodes, [4], {"W": rand(4, 3), "w": rand(3)}))
    assert net.output_dim == 1


def test_matmul_constant_left_rank1_input():
    """VNN-COMP test nets: ``MatMul(W, x)`` with x of shape [k], no batch dimension."""
    nodes = [
        node("MatMul", ["W1", "x"], ["h"]),
        node("Add", ["h", "b1"], ["a"]),
        node("Relu", ["a"], ["r"]),
        node("MatMul", ["W2", "r"]),
    ]
    model = make_model(nodes, [3], {"W1": rand(4, 3), "b1": rand(4), "W2": rand(2, 4)})
    net = check(model)
    assert net.input_shape == (3,)
    assert net.widths == [3, 4, 2]


def test_matmul_constant_left_matrix_input():
    model = make_model([node("MatMul", ["W", "x"])], [3, 2], {"W": rand(4, 3)})
    assert check(model).output_dim == 8


# --------------------------------------------------------------------- elementwise affine
@pytest.mark.parametrize(
    "op,const_first",
    [
        ("Add", False),
        ("Add", True),
        ("Sub", False),
        ("Sub", True),
        ("Mul", False),
        ("Mul", True),
        ("Div", False),
    ],
)  # c / x: test_div_by_input_refused
@pytest.mark.parametrize("c_shape", [(), (4,), (1, 4), (3, 1)])
def test_binary_with_constant(op, const_first, c_shape):
    c = rand(*c_shape) if c_shape else np.float32(RNG.uniform(0.5, 2.0))
    if op == "Div":
        c = np.where(np.abs(c) < 0.3, 0.5, c).astype(np.float32)
    ins = ["c", "x"] if const_first else ["x", "c"]
    model = make_model([node(op, ins)], [1, 4], {"c": np.asarray(c, np.float32)})
    net = check(model)
    assert net.output_dim == (12 if c_shape == (3, 1) else 4)


def test_sub_constant_minus_input():
    model = make_model(
        [node("Sub", ["c", "x"], ["s"]), node("Relu", ["s"])], [1, 4], {"c": rand(4)}
    )
    check(model)


def test_neg():
    model = make_model([node("Neg", ["x"], ["n"]), node("Relu", ["n"])], [1, 5])
    check(model)


def test_sum_of_input_and_constants():
    model = make_model(
        [node("Sum", ["x", "a", "b"])], [2, 3], {"a": rand(3), "b": rand(2, 1)}, opset=13
    )
    check(model)


def test_residual_add_of_two_branches():
    """x + Relu(W x + b): the output reads the input and the activation node."""
    nodes = [
        node("Gemm", ["x", "W", "b"], ["h"], transB=1),
        node("Relu", ["h"], ["r"]),
        node("Add", ["x", "r"]),
    ]
    model = make_model(nodes, [1, 4], {"W": rand(4, 4), "b": rand(4)})
    net = check(model)
    assert not net.is_sequential
    assert {t.source for t in net.output.terms} == {0, 1}


def test_add_of_two_branches_with_broadcast():
    nodes = [
        node("Slice", ["x", "s", "e", "a"], ["col"]),
        node("Relu", ["col"], ["r"]),
        node("Add", ["r", "x"], ["y0"]),
        node("Sub", ["y0", "r"], ["y1"]),
        node("Sub", ["y1", "col"]),
    ]
    inits = {
        "s": np.array([1], np.int64),
        "e": np.array([2], np.int64),
        "a": np.array([1], np.int64),
    }
    check(make_model(nodes, [3, 4], inits))


def test_two_linear_branches_added_then_scaled():
    nodes = [
        node("MatMul", ["x", "A"], ["a"]),
        node("MatMul", ["x", "B"], ["b"]),
        node("Add", ["a", "b"], ["s"]),
        node("Mul", ["s", "k"]),
    ]
    model = make_model(nodes, [1, 3], {"A": rand(3, 2), "B": rand(3, 2), "k": rand(2)})
    check(model)


def test_concat_and_slice_of_linear_branches():
    nodes = [
        node("MatMul", ["x", "A"], ["a"]),
        node("Relu", ["x"], ["r"]),
        node("Concat", ["a", "r", "c"], ["cat"], axis=1),
        node("Slice", ["cat", "starts", "ends", "axes", "steps"], ["sl"]),
        node("Tanh", ["sl"], ["t"]),
        node("Concat", ["t", "a"], ["y"], axis=-1),
    ]
    inits = {
        "A": rand(4, 3),
        "c": rand(1, 2),
        "starts": np.array([1], np.int64),
        "ends": np.array([8], np.int64),
        "axes": np.array([1], np.int64),
        "steps": np.array([2], np.int64),
    }
    check(make_model(nodes, [1, 4], inits))


@pytest.mark.parametrize("opset", [9, 13])
def test_slice_opsets(opset):
    if opset < 10:  # attribute form
        nodes = [node("Slice", ["x"], starts=[1, -3], ends=[100, -1], axes=[1, 2])]
        inits = {}
    else:
        nodes = [node("Slice", ["x", "s", "e", "a", "st"])]
        inits = {
            "s": np.array([1, -1], np.int64),
            "e": np.array([100, -5], np.int64),
            "a": np.array([1, 2], np.int64),
            "st": np.array([1, -2], np.int64),
        }
    check(make_model(nodes, [1, 3, 6], inits, opset=opset))


INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)


@pytest.mark.parametrize(
    "start,end,step",
    [
        (-1, INT64_MIN, -1),
        (INT64_MAX, INT64_MIN, -2),
        (1, INT64_MAX, 1),
        (-3, INT64_MAX, 1),
        (INT64_MIN, 3, 1),
        (4, 0, -1),
    ],
)
def test_slice_extreme_bounds(start, end, step):
    """Exporters write INT64_MAX/MIN for open-ended slices, reversed with negative steps."""
    inits = {
        "s": np.array([start], np.int64),
        "e": np.array([end], np.int64),
        "a": np.array([-1], np.int64),
        "st": np.array([step], np.int64),
    }
    check(make_model([node("Slice", ["x", "s", "e", "a", "st"])], [1, 6], inits))


# ------------------------------------------------------------------------ data movement
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_flatten(axis):
    model = make_model(
        [node("Flatten", ["x"], ["f"], axis=axis), node("Relu", ["f"])], [1, 2, 3, 2]
    )
    check(model)


def test_reshape_zero_and_minus_one():
    model = make_model(
        [node("Reshape", ["x", "s"], ["r"]), node("MatMul", ["r", "W"])],
        [1, 2, 6],
        {"s": np.array([0, 0, -1, 2], np.int64), "W": rand(2, 3)},
    )
    check(model)


def test_transpose():
    model = make_model(
        [node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), node("MatMul", ["t", "W"])],
        [1, 3, 2, 4],
        {"W": rand(3, 2)},
    )
    check(model)


def test_transpose_default_reverses():
    check(make_model([node("Transpose", ["x"])], [2, 3, 4]))


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze(opset):
    if opset < 13:
        nodes = [
            node("Unsqueeze", ["x"], ["u"], axes=[0, -1]),
            node("Squeeze", ["u"], ["y"], axes=[1]),
        ]
        inits = {}
    else:
        nodes = [node("Unsqueeze", ["x", "ua"], ["u"]), node("Squeeze", ["u", "sa"])]
        inits = {"ua": np.array([0, -1], np.int64), "sa": np.array([1], np.int64)}
    net = check(make_model(nodes, [1, 4], inits, opset=opset))
    assert net.output_shape == (1, 4, 1)


def test_squeeze_without_axes():
    net = check(make_model([node("Squeeze", ["x"])], [1, 3, 1, 2]))
    assert net.output_shape == (3, 2)


@pytest.mark.parametrize(
    "indices",
    [
        np.array(2, np.int64),
        np.array([3, 0, -1, 0], np.int64),
        np.array([[1, 2], [0, 0]], np.int64),
    ],
)
@pytest.mark.parametrize("axis", [1, -1])
def test_gather(indices, axis):
    model = make_model([node("Gather", ["x", "i"], axis=axis)], [2, 4], {"i": indices})
    check(model)


def test_expand_and_tile():
    nodes = [node("Expand", ["x", "s"], ["e"]), node("Tile", ["e", "r"])]
    inits = {"s": np.array([3, 1, 4], np.int64), "r": np.array([1, 2, 1], np.int64)}
    check(make_model(nodes, [1, 4], inits))


# --------------------------------------------------------------------------- Pad + Conv
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("opset", [2, 10, 11, 18])
def test_pad_before_conv(mode, opset):
    pads = [0, 0, 1, 2, 0, 0, 2, 1]
    inits = {"W": rand(2, 2, 3, 3)}
    if opset < 11:  # Pad-2: pads and value are attributes
        attrs = {"pads": pads, "mode": mode}
        if mode == "constant":
            attrs["value"] = 0.75
        pad = node("Pad", ["x"], ["p"], **attrs)
    else:
        inits["pads"] = np.array(pads, np.int64)
        ins = ["x", "pads"]
        if mode == "constant":
            inits["v"] = np.array(0.75, np.float32)
            ins.append("v")
        pad = node("Pad", ins, ["p"], mode=mode)
    model = make_model([pad, node("Conv", ["p", "W"])], [1, 2, 4, 5], inits, opset=opset)
    check(model)


def test_pad_with_axes_opset18():
    inits = {
        "pads": np.array([1, 2, 0, 3], np.int64),
        "v": np.array(-1.5, np.float32),
        "ax": np.array([2, -1], np.int64),
    }
    model = make_model([node("Pad", ["x", "pads", "v", "ax"])], [1, 2, 3, 3], inits, opset=18)
    check(model)


CONV_CASES = {
    "plain": dict(w=(3, 2, 3, 3), x=(1, 2, 6, 6), attrs={}),
    "stride_pad": dict(w=(4, 2, 4, 4), x=(1, 2, 8, 8), attrs=dict(strides=[2, 2], pads=[1] * 4)),
    "asym_pads": dict(w=(2, 2, 3, 2), x=(1, 2, 5, 6), attrs=dict(pads=[0, 1, 2, 0])),
    "same_upper": dict(
        w=(2, 2, 4, 3), x=(1, 2, 7, 6), attrs=dict(auto_pad="SAME_UPPER", strides=[2, 1])
    ),
    "same_lower": dict(w=(2, 2, 4, 4), x=(1, 2, 6, 6), attrs=dict(auto_pad="SAME_LOWER")),
    "valid": dict(w=(2, 2, 3, 3), x=(1, 2, 6, 7), attrs=dict(auto_pad="VALID", strides=[2, 2])),
    "group2": dict(w=(4, 2, 3, 3), x=(1, 4, 5, 5), attrs=dict(group=2, pads=[1] * 4)),
    "dilation2": dict(w=(2, 2, 3, 3), x=(1, 2, 8, 8), attrs=dict(dilations=[2, 2])),
    "kernel_5x1": dict(w=(3, 1, 5, 1), x=(1, 1, 20, 20), attrs={}),
    "kernel_6x20": dict(w=(2, 1, 6, 20), x=(1, 1, 20, 20), attrs=dict(strides=[2, 1])),
    "depthwise": dict(w=(3, 1, 3, 3), x=(1, 3, 5, 5), attrs=dict(group=3)),
    "conv1d": dict(w=(3, 2, 3), x=(1, 2, 9), attrs=dict(strides=[2], pads=[1, 2])),
    "conv1d_dilated": dict(w=(2, 2, 3), x=(1, 2, 9), attrs=dict(dilations=[2])),
    "conv1d_same": dict(w=(2, 2, 4), x=(1, 2, 7), attrs=dict(auto_pad="SAME_UPPER")),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("bias", [False, True])
def test_conv(case, bias):
    spec = CONV_CASES[case]
    inits = {"W": rand(*spec["w"])}
    ins = ["x", "W"]
    if bias:
        inits["B"] = rand(spec["w"][0])
        ins.append("B")
    check(make_model([node("Conv", ins, **spec["attrs"])], list(spec["x"]), inits))


def test_conv_as_dense_layer_then_relu():
    """tansig-style: a dense layer written as a full-size Conv kernel, then 1x1."""
    nodes = [
        node("Conv", ["x", "W1", "b1"], ["h"]),
        node("Tanh", ["h"], ["t"]),
        node("Conv", ["t", "W2"]),
    ]
    inits = {"W1": rand(5, 1, 1, 12), "b1": rand(5), "W2": rand(3, 5, 1, 1)}
    check(make_model(nodes, [1, 1, 1, 12], inits, opset=8))


# ------------------------------------------------------------------------------ pooling
@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize(
    "attrs",
    [
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        dict(kernel_shape=[2, 3], pads=[1, 0, 0, 2]),
        dict(kernel_shape=[4, 4], strides=[4, 4]),
    ],
)
def test_average_pool(count_include_pad, attrs):
    model = make_model(
        [node("AveragePool", ["x"], count_include_pad=count_include_pad, **attrs)], [1, 2, 8, 8]
    )
    check(model)


def test_average_pool_1d():
    model = make_model(
        [node("AveragePool", ["x"], kernel_shape=[3], strides=[2], pads=[1, 1])], [1, 2, 9]
    )
    check(model)


def test_global_average_pool():
    nodes = [
        node("GlobalAveragePool", ["x"], ["g"]),
        node("Flatten", ["g"], ["f"]),
        node("Gemm", ["f", "W"], transB=1),
    ]
    check(make_model(nodes, [1, 3, 5, 4], {"W": rand(2, 3)}))


@pytest.mark.parametrize(
    "attrs",
    [
        dict(kernel_shape=[2, 2], strides=[2, 2]),
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        dict(kernel_shape=[3, 2], pads=[1, 0, 1, 1]),
    ],
)
def test_max_pool(attrs):
    check(make_model([node("MaxPool", ["x"], **attrs)], [1, 2, 6, 6]))


def test_max_pool_ceil_mode_refused():
    nodes = [node("MaxPool", ["x"], name="mp", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)]
    with pytest.raises(UnsupportedModelError) as exc_info:
        network_from_onnx(make_model(nodes, [1, 1, 5, 5]))
    assert problems_of(exc_info) == [("mp", "MaxPool")]


def test_global_max_pool():
    check(make_model([node("GlobalMaxPool", ["x"])], [1, 3, 4, 5]))


# ---------------------------------------------------------- normalisation and identities
def _bn_inits(c):
    return {
        "s": rand(c),
        "bb": rand(c),
        "m": rand(c),
        "v": RNG.uniform(0.1, 2.0, c).astype(np.float32),
    }


@pytest.mark.parametrize("after_activation", [False, True])
def test_batchnorm(after_activation):
    bn_in = "r" if after_activation else "h"
    inits = {"W": rand(3, 2, 3, 3), **_bn_inits(3)}
    if after_activation:  # Conv -> Relu -> BN
        nodes = [
            node("Conv", ["x", "W"], ["h"]),
            node("Relu", ["h"], ["r"]),
            node("BatchNormalization", [bn_in, "s", "bb", "m", "v"], epsilon=1e-3),
        ]
    else:  # Conv -> BN -> Relu
        nodes = [
            node("Conv", ["x", "W"], ["h"]),
            node("BatchNormalization", [bn_in, "s", "bb", "m", "v"], ["n"], epsilon=1e-3),
            node("Relu", ["n"]),
        ]
    check(make_model(nodes, [1, 2, 5, 5], inits))


def test_batchnorm_1d_features_opset9():
    model = make_model(
        [node("BatchNormalization", ["x", "s", "bb", "m", "v"], epsilon=0.1)],
        [1, 4],
        _bn_inits(4),
        opset=9,
    )
    check(model)


def test_dropout_opset12_ratio_input_and_identity():
    nodes = [
        node("Dropout", ["x", "ratio"], ["d"]),
        node("Identity", ["d"], ["i"]),
        node("Gemm", ["i", "W"], transB=1),
    ]
    inits = {"ratio": np.array(0.5, np.float32), "W": rand(3, 4)}
    check(make_model(nodes, [1, 4], inits, opset=12))


def test_dropout_with_unused_mask_output():
    nodes = [node("Dropout", ["x"], ["d", "mask"], ratio=0.3), node("Relu", ["d"])]
    check(make_model(nodes, [1, 4], opset=10))


# --------------------------------------------------------------------------- activations
@pytest.mark.parametrize(
    "op,attrs",
    [
        ("Relu", {}),
        ("LeakyRelu", {}),
        ("LeakyRelu", {"alpha": 0.2}),
        ("Sigmoid", {}),
        ("Tanh", {}),
        ("Softplus", {}),
        ("Elu", {}),
        ("Elu", {"alpha": 0.5}),
        ("Abs", {}),
    ],
)
def test_activation(op, attrs):
    nodes = [node("MatMul", ["x", "W"], ["h"]), node(op, ["h"], **attrs)]
    net = check(make_model(nodes, [1, 4], {"W": rand(4, 5)}), scale=3.0)
    assert len(net.nodes) == 1


@pytest.mark.parametrize(
    "opset,lo,hi",
    [
        (6, -0.5, 0.7),
        (6, None, 0.3),
        (13, -0.5, 0.7),
        (13, None, 0.3),
        (13, -0.2, None),
        (11, -1.0, 1.0),
    ],
)
def test_clip(opset, lo, hi):
    if opset < 11:
        attrs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
        clip = node("Clip", ["h"], **attrs)
        inits = {}
    else:
        inits = {k: np.array(v, np.float32) for k, v in (("lo", lo), ("hi", hi)) if v is not None}
        clip = node("Clip", ["h", "lo" if lo is not None else "", "hi" if hi is not None else ""])
    nodes = [node("MatMul", ["x", "W"], ["h"]), clip]
    check(make_model(nodes, [1, 4], {"W": rand(4, 5), **inits}, opset=opset))


@pytest.mark.parametrize("opset", [11, 13])
def test_final_softmax_dropped_with_warning(opset):
    nodes = [node("Gemm", ["x", "W"], ["logits"], transB=1), node("Softmax", ["logits"], axis=1)]
    model = make_model(nodes, [1, 4], {"W": rand(3, 4)}, opset=opset)
    with pytest.warns(UserWarning, match="Softmax"):
        net = network_from_onnx(model)
    assert len(net.nodes) == 0
    assert any("Softmax" in n for n in net.provenance.notes)
    x = rand(1, 4)
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    np.testing.assert_allclose(net.forward(x), x @ w.T, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("opset", [11, 13])
def test_final_softmax_kept(opset):
    nodes = [node("Gemm", ["x", "W"], ["logits"], transB=1), node("Softmax", ["logits"])]
    model = make_model(nodes, [1, 4], {"W": rand(3, 4)}, opset=opset)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = check(model, keep_softmax=True)
    assert [(a.kind, a.name) for a in net.activations] == [("lipschitz", "softmax")]


def test_final_softmax_over_last_axis_dropped_any_shape():
    nodes = [node("MatMul", ["x", "W"], ["logits"]), node("Softmax", ["logits"], axis=-1)]
    model = make_model(nodes, [1, 2, 3], {"W": rand(3, 4)}, opset=13)
    with pytest.warns(UserWarning, match="Softmax"):
        net = network_from_onnx(model)
    x = rand(1, 2, 3)
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    np.testing.assert_allclose(net.forward(x.reshape(1, -1)), (x @ w).reshape(1, -1), rtol=1e-6)


def test_kept_softmax_over_part_of_features_refused():
    nodes = [node("Relu", ["x"], ["r"]), node("Softmax", ["r"], name="sm", axis=-1)]
    with pytest.raises(UnsupportedModelError) as exc_info:
        network_from_onnx(make_model(nodes, [1, 2, 3], opset=13), keep_softmax=True)
    assert problems_of(exc_info) == [("sm", "Softmax")]


def test_softmax_opset11_flattens_trailing_axes():
    """Opset < 13 softmax normalises over all axes from ``axis`` on (coerced to 2-D)."""
    model = make_model(
        [node("Relu", ["x"], ["r"]), node("Softmax", ["r"], axis=1)], [1, 2, 3], opset=11
    )
    check(model, keep_softmax=True)


# -------------------------------------------------------------------------- GroupSort
@pytest.mark.parametrize("opset,largest", [(9, 1), (11, 0), (11, 1)])  # TopK-1: always largest
def test_topk_full_sort_is_groupsort(opset, largest):
    width = 6
    if opset < 10:  # TopK-1: k is an attribute
        topk = node("TopK", ["h"], ["y", "idx"], k=width, axis=-1)
        inits = {}
    else:
        topk = node("TopK", ["h", "k"], ["y", "idx"], axis=-1, largest=largest, sorted=1)
        inits = {"k": np.array([width], np.int64)}
    nodes = [node("MatMul", ["x", "W"], ["h"]), topk]
    net = check(make_model(nodes, [1, 4], {"W": rand(4, width), **inits}, opset=opset))
    assert len(net.nodes) == 1
    assert isinstance(net.nodes[0].activation, GroupSort)
    assert net.nodes[0].activation.group_size == width


def test_topk_partial_k():
    nodes = [node("TopK", ["x", "k"], ["y", "idx"], axis=1)]
    check(make_model(nodes, [2, 5], {"k": np.array([3], np.int64)}, opset=11))


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("min_first", [True, False])
def test_reduce_max_min_pair_is_one_groupsort(opset, min_first):
    """Concat(ReduceMin, ReduceMax) over a size-2 axis (MaxMin) gives ONE GroupSort node."""
    inits = {"s": np.array([1, -1, 2], np.int64), "out": np.array([1, -1], np.int64)}
    if opset >= 18:
        inits["ax"] = np.array([2], np.int64)
        red = [node("ReduceMin", ["r", "ax"], ["mn"]), node("ReduceMax", ["r", "ax"], ["mx"])]
    else:
        red = [
            node("ReduceMin", ["r"], ["mn"], axes=[2]),
            node("ReduceMax", ["r"], ["mx"], axes=[2]),
        ]
    order = ["mn", "mx"] if min_first else ["mx", "mn"]
    nodes = [
        node("Reshape", ["x", "s"], ["r"]),
        *red,
        node("Concat", order, ["c"], axis=2),
        node("Reshape", ["c", "out"]),
    ]
    net = check(make_model(nodes, [1, 6], inits, opset=opset))
    assert len(net.nodes) == 1
    assert isinstance(net.nodes[0].activation, GroupSort)
    assert net.nodes[0].activation.group_size == 2


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([1], 0), ([-1], 0), ([1, 2], 1), (None, 0)])
def test_reduce_extreme(op, axes, keepdims):
    attrs = {"keepdims": keepdims} | ({"axes": axes} if axes is not None else {})
    nodes = [node("MatMul", ["x", "W"], ["h"]), node(op, ["h"], **attrs)]
    net = check(make_model(nodes, [2, 3, 4], {"W": rand(4, 4)}, opset=13))
    assert [type(a) for a in net.activations] == [GroupSort]


def test_reduce_pair_without_keepdims_then_unsqueeze():
    nodes = [
        node("Reshape", ["x", "s"], ["r"]),
        node("ReduceMax", ["r"], ["mx"], axes=[-1], keepdims=0),
        node("ReduceMin", ["r"], ["mn"], axes=[2], keepdims=0),
        node("Unsqueeze", ["mx", "ax"], ["umx"]),
        node("Unsqueeze", ["mn", "ax"], ["umn"]),
        node("Concat", ["umx", "umn"], ["c"], axis=2),
        node("Flatten", ["c"]),
    ]
    inits = {"s": np.array([1, -1, 2], np.int64), "ax": np.array([2], np.int64)}
    net = check(make_model(nodes, [1, 8], inits, opset=13))
    assert len(net.nodes) == 1 and isinstance(net.nodes[0].activation, GroupSort)


def _maxmin_nodes(src: str, t: str, out: str, sub=False, max_first=False) -> list:
    """The PyTorch export of GroupSort-2 (see ../shared/models/README.md).

    ``sub``: the differences spelled as Sub instead of Add(., Mul(., -1)).
    """
    if sub:
        diff = [node("Sub", [f"{t}g1", f"{t}g0"], [f"{t}d"])]
        low = [node("Sub", [f"{t}g1", f"{t}rel"], [f"{t}min"])]
    else:
        diff = [
            node("Mul", [f"{t}g0", "m1"], [f"{t}neg0"]),
            node("Add", [f"{t}g1", f"{t}neg0"], [f"{t}d"]),
        ]
        low = [
            node("Mul", [f"{t}rel", "m1"], [f"{t}negr"]),
            node("Add", [f"{t}g1", f"{t}negr"], [f"{t}min"]),
        ]
    order = [f"{t}umax", f"{t}umin"] if max_first else [f"{t}umin", f"{t}umax"]
    return [
        node("Reshape", [src, "shape3"], [f"{t}r"]),
        node("Gather", [f"{t}r", "i0"], [f"{t}g0"], axis=2),
        node("Gather", [f"{t}r", "i1"], [f"{t}g1"], axis=2),
        *diff,
        node("Relu", [f"{t}d"], [f"{t}rel"]),
        *low,
        node("Add", [f"{t}g0", f"{t}rel"], [f"{t}max"]),
        node("Unsqueeze", [f"{t}min", "ax2"], [f"{t}umin"]),
        node("Unsqueeze", [f"{t}max", "ax2"], [f"{t}umax"]),
        node("Concat", order, [f"{t}cat"], axis=2),
        node("Reshape", [f"{t}cat", "flat"], [out]),
    ]


MAXMIN_INITS = {
    "shape3": np.array([1, -1, 2], np.int64),
    "i0": np.array(0, np.int64),
    "i1": np.array(1, np.int64),
    "m1": np.array(-1.0, np.float32),
    "ax2": np.array([2], np.int64),
    "flat": np.array([1, -1], np.int64),
}


def test_maxmin_gather_relu_pattern_is_groupsort():
    nodes = [
        node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
        *_maxmin_nodes("h", "a", "z"),
        node("Gemm", ["z", "W2", "b2"], ["h2"], transB=1),
        *_maxmin_nodes("h2", "b", "z2"),
        node("Gemm", ["z2", "W3"], transB=1),
    ]
    inits = {
        "W1": rand(6, 5),
        "b1": rand(6),
        "W2": rand(4, 6),
        "b2": rand(4),
        "W3": rand(3, 4),
        **MAXMIN_INITS,
    }
    net = check(make_model(nodes, [1, 5], inits, opset=17))
    assert len(net.nodes) == 2
    for n in net.nodes:
        assert isinstance(n.activation, GroupSort) and n.activation.group_size == 2
    assert net.is_sequential


@pytest.mark.parametrize("sub", [False, True])
@pytest.mark.parametrize("max_first", [False, True])
def test_maxmin_pattern_spellings(sub, max_first):
    nodes = [
        node("MatMul", ["x", "W"], ["h"]),
        *_maxmin_nodes("h", "a", "y", sub=sub, max_first=max_first),
    ]
    net = check(make_model(nodes, [1, 4], {"W": rand(4, 8), **MAXMIN_INITS}, opset=13))
    assert [type(a) for a in net.activations] == [GroupSort]


def test_partial_maxmin_pattern_stays_relu():
    """Without the Concat the subgraph is not MaxMin: it stays exact as a ReLU network."""
    nodes = [
        node("Reshape", ["x", "shape3"], ["r"]),
        node("Gather", ["r", "i0"], ["g0"], axis=2),
        node("Gather", ["r", "i1"], ["g1"], axis=2),
        node("Sub", ["g1", "g0"], ["d"]),
        node("Relu", ["d"], ["rel"]),
        node("Add", ["g0", "rel"]),
    ]
    net = check(make_model(nodes, [1, 6], MAXMIN_INITS, opset=17))
    assert [a.describe().split()[0] for a in net.activations] == ["relu"]


# ---------------------------------------------------------------- constants in the graph
def test_weight_computed_in_graph():
    """GLipSDP-style: W / (u^T W v) from initializers via MatMul/Div, then used by MatMul."""
    nodes = [
        node("MatMul", ["u", "Wraw"], ["uW"]),
        node("MatMul", ["uW", "v"], ["sigma"]),
        node("Div", ["Wraw", "sigma"], ["Wn"]),
        node("Transpose", ["Wn"], ["WnT"]),
        node("MatMul", ["x", "WnT"], ["h"]),
        node("LeakyRelu", ["h"], ["r"], alpha=0.01),
        node("Mul", ["r", "k"]),
    ]
    inits = {"Wraw": rand(3, 4), "u": rand(1, 3), "v": rand(4, 1), "k": np.array(2.0, np.float32)}
    net = check(make_model(nodes, [1, 4], inits, opset=18))
    assert net.widths == [4, 3, 3]


def test_constant_nodes_and_folding():
    w = rand(4, 2)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w)),
        helper.make_node("Constant", [], ["two"], value_float=2.0),
        node("Mul", ["W", "two"], ["W2"]),
        node("Neg", ["W2"], ["W3"]),
        node("MatMul", ["x", "W3"]),
    ]
    check(make_model(nodes, [1, 4], opset=13))


def test_shape_concat_reshape_chain():
    """Dynamo-style flatten: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    nodes = [
        node("Shape", ["x"], ["sh"]),
        node("Gather", ["sh", "zero"], ["n"], axis=0),
        node("Unsqueeze", ["n", "ax0"], ["n1"]),
        node("Concat", ["n1", "minus1"], ["tgt"], axis=0),
        node("Reshape", ["x", "tgt"], ["f"]),
        node("Gemm", ["f", "W"], transB=1),
    ]
    inits = {
        "zero": np.array(0, np.int64),
        "ax0": np.array([0], np.int64),
        "minus1": np.array([-1], np.int64),
        "W": rand(3, 8),
    }
    check(make_model(nodes, ["N", 2, 4], inits, opset=18))


def test_shape_with_start_end_opset15():
    nodes = [
        node("Shape", ["x"], ["sh"], start=1, end=3),
        node("ReduceProd", ["sh"], ["p"]),
        node("Concat", ["one", "p"], ["tgt"], axis=0),
        node("Reshape", ["x", "tgt"]),
    ]
    inits = {"one": np.array([1], np.int64)}
    check(make_model(nodes, [1, 2, 3], inits, opset=15))


@pytest.mark.parametrize("src", ["x", "W"])
@pytest.mark.parametrize("op,attrs", [("Size", {}), ("Shape", {"start": -1})])
def test_size_and_shape_of_input_or_constant(op, attrs, src):
    """Of the input: read from the symbolic shape; of a constant: folded."""
    nodes = [
        node(op, [src], ["s"], **attrs),
        node("Cast", ["s"], ["sf"], to=FLOAT),
        node("Mul", ["x", "sf"]),
    ]
    check(make_model(nodes, [1, 3], {"W": rand(3, 2)}, opset=18))


def test_concat_of_constants_only():
    nodes = [node("Concat", ["W", "V"], ["C"], axis=1), node("MatMul", ["x", "C"])]
    net = check(make_model(nodes, [1, 3], {"W": rand(3, 2), "V": rand(3, 1)}))
    assert net.widths == [3, 3]


def test_unused_branch_is_ignored():
    """Dead nodes (even non-Lipschitz ones) do not reach the output and are dropped."""
    nodes = [node("Sign", ["x"], ["dead"]), node("Relu", ["x"])]
    check(make_model(nodes, [1, 3]))


def test_external_data(tmp_path):
    nodes = [
        node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
        node("Relu", ["h"], ["r"]),
        node("MatMul", ["r", "W2"]),
    ]
    model = make_model(nodes, [1, 6], {"W1": rand(8, 6), "b1": rand(8), "W2": rand(8, 3)})
    path = tmp_path / "ext.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.data",
        size_threshold=0,
    )
    assert (tmp_path / "w.data").exists()
    net = load_onnx(path)
    x = rand(1, 6)
    ref = run_ort(onnx.load(str(path)), x)
    np.testing.assert_allclose(net.forward(x), ref, rtol=1e-5, atol=1e-5)
    assert net.provenance.path == str(path)


def test_initializers_repeated_as_graph_inputs():
    nodes = [
        node("Sub", ["x", "mean"], ["c"]),
        node("Flatten", ["c"], ["f"]),
        node("MatMul", ["f", "W"], ["h"]),
        node("Add", ["h", "b"], ["a"]),
        node("Relu", ["a"]),
    ]
    inits = {"mean": np.zeros((1, 1, 1, 5), np.float32), "W": rand(5, 4), "b": rand(4)}
    model = make_model(nodes, [1, 1, 1, 5], inits, opset=8, inputs_as_graph_inputs=True)
    assert len(model.graph.input) == 4
    net = check(model)
    assert net.input_shape == (1, 1, 1, 5)


# ---------------------------------------------------------------------------- negatives
def _refused(model) -> list[tuple[str, str]]:
    with pytest.raises(UnsupportedModelError) as exc_info:
        network_from_onnx(model)
    return problems_of(exc_info)


@pytest.mark.parametrize(
    "op,attrs",
    [
        ("Sign", {}),
        ("Floor", {}),
        ("Round", {}),
        ("ArgMax", {"axis": 1}),
        ("Exp", {}),
        ("Cast", {"to": TensorProto.INT64}),
        ("Cast", {"to": TensorProto.BOOL}),
    ],
)
def test_non_lipschitz_op_refused(op, attrs):
    nodes = (
        [
            node("MatMul", ["x", "W"], ["h"]),
            node(op, ["h"], ["bad"], name="the_bad", **attrs),
            node("Cast", ["bad"], ["y"], to=FLOAT),
        ]
        if op in ("ArgMax", "Cast")
        else [node("MatMul", ["x", "W"], ["h"]), node(op, ["h"], name="the_bad", **attrs)]
    )
    assert _refused(make_model(nodes, [1, 3], {"W": rand(3, 4)})) == [("the_bad", op)]


def test_cast_to_float_is_identity():
    nodes = [
        node("Cast", ["x"], ["c"], to=TensorProto.DOUBLE),
        node("Cast", ["c"], ["y"], to=FLOAT),
    ]
    check(make_model(nodes, [1, 3]))


def test_equal_refused():
    nodes = [node("Equal", ["x", "c"], ["e"], name="eq"), node("Cast", ["e"], to=FLOAT)]
    assert _refused(make_model(nodes, [1, 3], {"c": rand(3)})) == [("eq", "Equal")]


def test_where_on_input_condition_refused():
    nodes = [
        node("Greater", ["x", "c"], ["g"], name="gt"),
        node("Where", ["g", "x", "c"], name="wh"),
    ]
    probs = _refused(make_model(nodes, [1, 3], {"c": rand(3)}))
    assert probs == [("gt", "Greater"), ("wh", "Where")]


def test_topk_indices_used_refused():
    nodes = [
        node("TopK", ["x", "k"], ["v", "idx"], name="topk", axis=1),
        node("Cast", ["idx"], ["fi"], to=FLOAT),
        node("Add", ["v", "fi"]),
    ]
    model = make_model(nodes, [1, 4], {"k": np.array([4], np.int64)}, opset=11)
    assert _refused(model) == [("topk", "TopK")]


def test_maxpool_indices_used_refused():
    nodes = [
        node("MaxPool", ["x"], ["v", "idx"], name="mp", kernel_shape=[2, 2]),
        node("Cast", ["idx"], ["fi"], to=FLOAT),
        node("Add", ["v", "fi"]),
    ]
    assert _refused(make_model(nodes, [1, 1, 4, 4])) == [("mp", "MaxPool")]


def test_two_non_lipschitz_nodes_both_listed():
    nodes = [
        node("Sign", ["x"], ["s"], name="sign1"),
        node("Relu", ["s"], ["r"]),
        node("Floor", ["r"], ["f"], name="floor2"),
        node("MatMul", ["f", "W"]),
    ]
    probs = _refused(make_model(nodes, [1, 3], {"W": rand(3, 2)}))
    assert probs == [("sign1", "Sign"), ("floor2", "Floor")]


def test_independent_problems_all_listed():
    nodes = [
        node("Sign", ["x"], ["a"], name="s"),
        node("Mul", ["x", "x"], ["b"], name="sq"),
        node("Einsum", ["x"], ["c"], name="es", equation="ij->ij"),
        node("Sum", ["a", "b", "c"]),
    ]
    probs = _refused(make_model(nodes, [1, 3], opset=13))
    assert sorted(probs) == [("es", "Einsum"), ("s", "Sign"), ("sq", "Mul")]


@pytest.mark.parametrize("op", ["Mul", "Div", "MatMul"])
def test_product_of_two_input_dependent_tensors_refused(op):
    nodes = [node("Relu", ["x"], ["r"]), node(op, ["x", "r"], name="prod")]
    assert _refused(make_model(nodes, [3, 3])) == [("prod", op)]


def test_div_by_input_refused():
    nodes = [node("Div", ["c", "x"], name="recip")]
    assert _refused(make_model(nodes, [1, 3], {"c": rand(3)})) == [("recip", "Div")]


def test_unknown_op_refused():
    nodes = [
        node("MatMul", ["x", "W"], ["h"]),
        node("Einsum", ["h"], ["e"], name="ein", equation="ij->ji"),
        node("Relu", ["e"]),
    ]
    probs = _refused(make_model(nodes, [1, 3], {"W": rand(3, 3)}, opset=13))
    assert probs == [("ein", "Einsum")]


def test_constant_with_unsupported_attribute_refused():
    """Refused with the attribute named, listed together with the other problems."""
    nodes = [
        helper.make_node("Constant", [], ["c"], name="cs", value_string="a"),
        node("Add", ["x", "c"], ["a"]),
        node("Einsum", ["x"], ["e"], name="ein", equation="ij->ij"),
        node("Sum", ["a", "e"]),
    ]
    with pytest.raises(UnsupportedModelError) as exc_info:
        network_from_onnx(make_model(nodes, [1, 3]))
    assert problems_of(exc_info) == [("cs", "Constant"), ("ein", "Einsum")]
    assert exc_info.value.problems[0].why == "Constant with attribute value_string"


def test_custom_domain_op_refused():
    """A custom-domain op is unknown even when its name matches a standard op."""
    nodes = [
        node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"], name="custom_relu", domain="com.example"),
        helper.make_node("Swish", ["a"], ["y"], name="custom_swish", domain="com.example"),
    ]
    model = make_model(nodes, [1, 3], {"W": rand(3, 3)})
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    assert _refused(model) == [("custom_relu", "Relu"), ("custom_swish", "Swish")]


def _small_model():
    nodes = [node("Gemm", ["x", "W", "b"], ["h"], transB=1), node("Relu", ["h"])]
    return make_model(nodes, [1, 3], {"W": rand(4, 3), "b": rand(4)})


def test_truncated_file(tmp_path):
    data = _small_model().SerializeToString()
    path = tmp_path / "trunc.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        load_onnx(path)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelLoadError):
        load_onnx(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError):
        load_onnx(tmp_path / "nope.onnx")


def test_weights_as_graph_inputs_without_initializers():
    nodes = [node("Gemm", ["x", "W", "b"], ["h"], transB=1), node("Relu", ["h"])]
    graph = helper.make_graph(
        nodes,
        "noinit",
        [
            helper.make_tensor_value_info("x", FLOAT, [1, 3]),
            helper.make_tensor_value_info("W", FLOAT, [4, 3]),
            helper.make_tensor_value_info("b", FLOAT, [4]),
        ],
        [helper.make_tensor_value_info("y", FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ModelLoadError, match="input") as exc_info:
        network_from_onnx(model)
    assert "initializers" in str(exc_info.value)


def test_nan_weight():
    w = rand(4, 3)
    w[1, 2] = np.nan
    model = make_model(
        [node("Gemm", ["x", "W"], ["h"], transB=1), node("Relu", ["h"])], [1, 3], {"W": w}
    )
    with pytest.raises(ModelLoadError, match="NaN"):
        network_from_onnx(model)


def test_nan_bias():
    b = rand(4)
    b[0] = np.inf
    model = make_model([node("Gemm", ["x", "W", "b"], transB=1)], [1, 3], {"W": rand(4, 3), "b": b})
    with pytest.raises(ModelLoadError, match="NaN/Inf"):
        network_from_onnx(model)


def test_zero_width_layer():
    nodes = [
        node("Gemm", ["x", "W"], ["h"], transB=1),
        node("Relu", ["h"], ["r"]),
        node("Gemm", ["r", "W2"], transB=1),
    ]
    model = make_model(
        nodes, [1, 3], {"W": np.zeros((0, 3), np.float32), "W2": np.zeros((2, 0), np.float32)}
    )
    with pytest.raises(ModelLoadError, match="zero width"):
        network_from_onnx(model)


def test_missing_external_data_file(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(
        _small_model(),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.data",
        size_threshold=0,
    )
    (tmp_path / "w.data").unlink()
    with pytest.raises(ModelLoadError, match="external data"):
        load_onnx(path)


def test_output_independent_of_input():
    nodes = [node("Relu", ["x"], ["r"]), node("Identity", ["c"])]
    with pytest.raises(ModelLoadError, match="does not depend"):
        network_from_onnx(make_model(nodes, [1, 3], {"c": rand(3)}))


@pytest.mark.shared
def test_shared_sign_network_refused():
    path = shared_path("onnx", "negative", "3_30_30_QConv_16_3_QConv_32_2_Dense_43_ep_30.onnx")
    with pytest.raises(UnsupportedModelError) as exc_info:
        load_onnx(path)
    ops = [p.op_type for p in exc_info.value.problems]
    assert ops.count("Sign") == 4
    assert "Sign" in str(exc_info.value)


@pytest.mark.shared
def test_shared_unet_refused():
    path = shared_path("onnx", "negative", "unet_simp_small.onnx")
    with pytest.raises(UnsupportedModelError) as exc_info:
        load_onnx(path)
    ops = {p.op_type for p in exc_info.value.problems}
    assert {"ArgMax", "OneHot", "Cast"} <= ops


def test_binary_min_max_share_one_groupsort_and_reduce_linear():
    """torch's ``torch.minimum/maximum`` MaxMin spelling and a linear ReduceSum."""
    rng = np.random.default_rng(7)
    w = rng.normal(size=(4, 6)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Reshape", ["h", "s"], ["r"]),
        helper.make_node("Gather", ["r", "i0"], ["a"], axis=-1),
        helper.make_node("Gather", ["r", "i1"], ["b"], axis=-1),
        helper.make_node("Min", ["a", "b"], ["mn"]),
        helper.make_node("Max", ["a", "b"], ["mx"]),
        helper.make_node("Unsqueeze", ["mn", "ax"], ["u1"]),
        helper.make_node("Unsqueeze", ["mx", "ax"], ["u2"]),
        helper.make_node("Concat", ["u1", "u2"], ["c"], axis=-1),
        helper.make_node("Reshape", ["c", "s2"], ["y0"]),
        helper.make_node("ReduceSum", ["y0", "ax2"], ["y"], keepdims=1),
        helper.make_node("Max", ["y", "c0"], ["z"]),
    ]
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.array([1, 3, 2], np.int64), "s"),
        numpy_helper.from_array(np.array(0, np.int64), "i0"),
        numpy_helper.from_array(np.array(1, np.int64), "i1"),
        numpy_helper.from_array(np.array([-1], np.int64), "ax"),
        numpy_helper.from_array(np.array([1, 6], np.int64), "s2"),
        numpy_helper.from_array(np.array([1], np.int64), "ax2"),
        numpy_helper.from_array(np.array(0.1, np.float32), "c0"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    net = network_from_onnx(model)
    kinds = [a.kind for a in net.activations]
    assert kinds == ["groupsort", "slope"]
    sess = ort.InferenceSession(model.SerializeToString())
    for _ in range(4):
        x = rng.normal(size=(1, 4)).astype(np.float32)
        ref = sess.run(None, {"x": x})[0]
        np.testing.assert_allclose(net.forward(x.astype(np.float64)), ref, rtol=1e-5, atol=1e-5)


def test_transposed_convs_and_non_lipschitz_pooling_are_listed_at_once():
    """Issue 16's bad input: a ConvTranspose, an LpPool (p-norm pooling) and a MaxUnpool in
    one CNN are refused in one error that names all three nodes."""
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["a"], name="up", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("LpPool", ["a"], ["b"], name="lp", kernel_shape=[2, 2], p=3),
        helper.make_node("Relu", ["b"], ["c"], name="act"),
        helper.make_node("MaxUnpool", ["c", "idx"], ["y"], name="unpool", kernel_shape=[2, 2]),
    ]
    model = make_model(nodes, [1, 1, 4, 4], {"w": rand(1, 2, 2, 2),
                                             "idx": np.zeros((1, 2, 4, 4), np.int64)})
    with pytest.raises(UnsupportedModelError) as exc_info:
        network_from_onnx(model, name="cnn")
    msg = str(exc_info.value)
    for op, node in (("ConvTranspose", "up"), ("LpPool", "lp"), ("MaxUnpool", "unpool")):
        assert op in msg and node in msg, msg
