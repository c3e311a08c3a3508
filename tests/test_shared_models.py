"""Every real network in ../shared/models: imports exactly, and lower <= certified naive.

Skips cleanly when ../shared is absent.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import SHARED_MODELS, shared_path

import lipverify
from lipverify.errors import UnsupportedModelError

ONNX = (
    sorted(p.name for p in (SHARED_MODELS / "onnx").glob("*.onnx"))
    if SHARED_MODELS.exists()
    else []
)
#: Networks whose sampled lower bound takes longest (8 s): in `make test-all` only.
SLOW_ONNX = {"resnet_3b2_bn_mixup_adv_4.0_bs128_lr-1.onnx"}

#: Published l2 lower bounds ("lb" column of models/README.md) and exact constants.
KNOWN_LOWER = {
    "ACASXU_run2a_1_1_batch_2000.onnx": 5.35,
    "mnist-net_256x2.onnx": 1.107,
    "mnist-net_256x6.onnx": 5.048,
    "mnist_relu_9_200.onnx": 14.88,
    "cartpole.onnx": 4.873,
    "lunarlander.onnx": 27.93,
    "dubinsrejoin.onnx": 77.78,
    "vdp.onnx": 4.99,
    "lindex_deep.onnx": 5.544,
    "tllBench_n=2_N=M=8_m=1_instance_0_0.onnx": 1.883,
    "cifar_base_kw.onnx": 0.8763,
    "Convnet_avgpool.onnx": 26.48,
    "NN_rul_small_window_20.onnx": 40.16,
    "resnet_2b.onnx": 2.8,
    "resnet_3b2_bn_mixup_adv_4.0_bs128_lr-1.onnx": 1.778,
    "mlp_L3_W16.onnx": 1.744,
    "mnist_concat.onnx": 200.0,
    "rb_MLP_MNIST_1_LIP_GNP_groupsort.onnx": 1.0,
    "test_small.onnx": 24.0,
    "test_tiny.onnx": 1.0,
    "test_nano.onnx": 0.5,
}
EXACT = {"test_small.onnx": 24.0, "test_tiny.onnx": 1.0, "test_nano.onnx": 0.5}


def _load(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lipverify.load(shared_path("onnx", name))


@pytest.mark.parametrize("name", ONNX)
def test_forward_matches_onnxruntime(name):
    ort = pytest.importorskip("onnxruntime")
    net = _load(name)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(shared_path("onnx", name)), opts)
    inp = sess.get_inputs()[0]
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.normal(size=net.input_shape).astype(np.float32)
        ref = sess.run(None, {inp.name: x})[0].astype(np.float64).ravel()
        ours = net.forward(x.reshape(1, -1)).ravel()
        if name == "tansig_200_50_onnx.onnx":  # the final Softmax is dropped by default
            ours = np.exp(ours - ours.max())
            ours /= ours.sum()
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ONNX else n for n in ONNX]
)
def test_lower_le_certified_naive(name):
    net = _load(name)
    naive = lipverify.bound(net, method="naive")
    lower = lipverify.bound(net, method="lower", samples=32, steps=20)
    assert naive.certified and naive.kind == "upper"
    assert not lower.certified and lower.kind == "lower"
    assert lower.bound <= naive.bound
    assert naive.bound >= KNOWN_LOWER.get(name, 0.0) * (1 - 1e-4)
    gersh = lipverify.bound(net, method="gershgorin")
    assert gersh.certified and gersh.bound >= naive.bound * (1 - 1e-9)


@pytest.mark.parametrize("name, value", sorted(EXACT.items()))
def test_exact_constants(name, value):
    net = _load(name)
    naive = lipverify.bound(net, method="naive").bound
    lower = lipverify.bound(net, method="lower").bound
    assert value * (1 - 1e-9) <= naive
    assert lower <= value * (1 + 1e-9)
    assert lower == pytest.approx(value, rel=1e-6)


def test_groupsort_export_is_one_lipschitz_by_naive():
    net = _load("rb_MLP_MNIST_1_LIP_GNP_groupsort.onnx")
    assert all(isinstance(a, lipverify.GroupSort) for a in net.activations)
    # all layer norms are 1 and GroupSort is 1-Lipschitz: the naive product is ~1
    assert lipverify.bound(net, method="naive").bound == pytest.approx(1.0, abs=1e-4)


def test_iris_exact_value_respected():
    net = lipverify.load(shared_path("weights", "exlipbab_iris_4x6x6x3_relu.npz"))
    exact = 11.63435513
    assert lipverify.bound(net, method="naive").bound == pytest.approx(17.081988, rel=1e-6)
    assert lipverify.bound(net, method="lower").bound <= exact * (1 + 1e-9)


@pytest.mark.parametrize(
    "name, ops",
    [
        ("3_30_30_QConv_16_3_QConv_32_2_Dense_43_ep_30.onnx", {"Sign"}),
        ("unet_simp_small.onnx", {"ArgMax", "OneHot", "Cast"}),
    ],
)
def test_negative_models_refused_with_full_list(name, ops):
    with pytest.raises(UnsupportedModelError) as info:
        lipverify.load(shared_path("onnx", "negative", name))
    found = {p.op_type for p in info.value.problems}
    assert ops <= found
    if name.startswith("3_30"):
        assert len(info.value.problems) == 4
