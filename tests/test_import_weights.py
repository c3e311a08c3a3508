"""Weight-file importers (.npz, .mat, .nnet) on the shared reference networks and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from conftest import shared_path

from lipverify.errors import AmbiguousLayoutError, ModelLoadError, UsageError
from lipverify.importers import IMPORTERS, weights

ACAS = "ACASXU_run2a_1_1_batch_2000"


def dense_weights(net) -> list[np.ndarray]:
    return [layer.weight.to_dense() for layer in net.chain()]


def naive(net) -> float:
    """Product of the layer spectral norms."""
    return float(np.prod([np.linalg.norm(w, 2) for w in dense_weights(net)]))


def test_registered():
    assert IMPORTERS[".npz"] is weights.load_npz
    assert IMPORTERS[".mat"] is weights.load_mat
    assert IMPORTERS[".nnet"] is weights.load_nnet


# ------------------------------------------------------------------ shared reference nets
def test_lipsdp_random_weights():
    net = weights.load_mat(shared_path("weights", "random_weights.mat"))
    assert net.widths == [2, 10, 30, 20, 2]
    assert net.provenance.format == "mat-lipsdp"
    assert naive(net) == pytest.approx(43.306, abs=5e-4)
    ws = dense_weights(net)
    product = ws[3] @ ws[2] @ ws[1] @ ws[0]
    assert np.linalg.norm(product, 2) == pytest.approx(36.48223, abs=5e-6)


def test_eclipse_npz():
    net = weights.load_npz(shared_path("weights", "lyr2n80test1.npz"))
    assert net.widths == [4, 80, 1]
    assert naive(net) == pytest.approx(0.87498, abs=5e-6)
    assert any("[out,in]" in n for n in net.provenance.notes)


def test_iris_npz_with_biases():
    path = shared_path("weights", "exlipbab_iris_4x6x6x3_relu.npz")
    net = weights.load_npz(path)
    assert net.widths == [4, 6, 6, 3]
    assert naive(net) == pytest.approx(17.081988, abs=5e-7)
    raw = np.load(path)
    x = np.random.default_rng(0).normal(size=(5, 4))
    h = np.maximum(x @ raw["w1"].T + raw["b1"], 0)
    h = np.maximum(h @ raw["w2"].T + raw["b2"], 0)
    np.testing.assert_allclose(net.forward(x), h @ raw["w3"].T + raw["b3"], rtol=1e-12)


@pytest.mark.parametrize(
    "name, widths, row7_naive",
    [("fnn2", [64, 32, 10], 7.09225), ("fnn3", [64, 32, 32, 10], 14.69421)],
)
def test_glipsdp_fnn(name, widths, row7_naive):
    net = weights.load_mat(shared_path("weights", "glipsdp_digits", f"{name}_seed0_weights.mat"))
    assert net.widths == widths
    assert net.provenance.format == "mat-glipsdp"
    assert any("input_mean" in n for n in net.provenance.notes)
    assert naive(net.select_outputs([7])) == pytest.approx(row7_naive, abs=5e-6)


@pytest.mark.parametrize("name, widths", [("cnn2", [64, 512, 10]), ("cnn3", [64, 512, 1024, 10])])
def test_glipsdp_cnn_matches_torch(name, widths):
    torch = pytest.importorskip("torch")
    fn = torch.nn.functional
    path = shared_path("weights", "glipsdp_digits", f"{name}_seed0_weights.mat")
    net = weights.load_mat(path)
    assert net.input_shape == (1, 8, 8)
    assert net.widths == widths
    raw = {
        k: torch.tensor(v, dtype=torch.float64)
        for k, v in scipy.io.loadmat(path).items()
        if not k.startswith("__")
    }
    x = np.random.default_rng(1).normal(size=(6, 1, 8, 8))
    h = torch.tensor(x)
    for k in (1, 2):
        if f"conv{k}_weight" in raw:
            kernel = raw[f"conv{k}_weight"].permute(3, 2, 0, 1)  # [kh,kw,cin,cout] -> torch
            h = fn.relu(fn.conv2d(h, kernel, raw[f"conv{k}_bias"].ravel(), padding=1))
    ref = fn.linear(h.flatten(1), raw["fc1_weight"].T, raw["fc1_bias"].ravel()).numpy()
    np.testing.assert_allclose(net.forward(x), ref, rtol=1e-10, atol=1e-10)


def test_nnet_matches_onnx():
    ort = pytest.importorskip("onnxruntime")
    net = weights.load_nnet(shared_path("weights", f"{ACAS}.nnet"))
    assert net.widths == [5, 50, 50, 50, 50, 50, 50, 5]
    assert any("normalised" in n for n in net.provenance.notes)
    sess = ort.InferenceSession(
        str(shared_path("onnx", f"{ACAS}.onnx")), providers=["CPUExecutionProvider"]
    )
    feed = sess.get_inputs()[0].name
    x = np.random.default_rng(2).uniform(-0.5, 0.5, size=(8, 5)).astype(np.float32)
    ref = np.concatenate(
        [sess.run(None, {feed: xi.reshape(1, 1, 1, 5)})[0].ravel() for xi in x]
    ).reshape(8, 5)
    ours = net.forward(x.astype(np.float64))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_nnet_normalize_folds_affine_maps():
    path = shared_path("weights", f"{ACAS}.nnet")
    raw, folded = weights.load_nnet(path), weights.load_nnet(path, nnet_normalize=True)
    mean = np.array([19791.091, 0.0, 0.0, 650.0, 600.0])
    rng = np.array([60261.0, 6.28318530718, 6.28318530718, 1100.0, 1200.0])
    x = np.random.default_rng(3).uniform([0, -3, -3, 100, 0], [60760, 3, 3, 1200, 1200], (4, 5))
    expected = raw.forward((x - mean) / rng) * 373.94992 + 7.5188840201005975
    np.testing.assert_allclose(folded.forward(x), expected, rtol=1e-9)


def test_activation_option():
    path = shared_path("weights", "lyr2n80test1.npz")
    act = weights.load_npz(path, activation="leaky_relu:0.01").activations[0]
    assert (act.name, act.alpha, act.beta) == ("leaky_relu", 0.01, 1.0)
    assert weights.load_npz(path, activation="tanh").activations[0].name == "tanh"
    with pytest.raises(UsageError):
        weights.load_npz(path, activation="leaky_relu:abc")


# ---------------------------------------------------------------------------- bad inputs
def test_layout_inference_and_ambiguity(tmp_path):
    rng = np.random.default_rng(4)
    w1, w2 = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    path = tmp_path / "square.npz"
    np.savez(path, w1=w1, w2=w2)
    with pytest.raises(AmbiguousLayoutError, match="--layout out-in"):
        weights.load_npz(path)
    np.testing.assert_array_equal(dense_weights(weights.load_npz(path, layout="out-in"))[0], w1)
    np.testing.assert_array_equal(dense_weights(weights.load_npz(path, layout="in-out"))[0], w1.T)
    # biases break the tie: b1 has the out width 4 only for [out,in] storage
    np.savez(path, w1=rng.normal(size=(4, 4)), b1=np.zeros(4), w2=rng.normal(size=(2, 4)))
    assert weights.load_npz(path).widths == [4, 4, 2]
    # other key convention, stored [in,out]
    np.savez(path, **{"fc0.weight": rng.normal(size=(5, 3)), "fc1.weight": rng.normal(size=(3, 2))})
    assert weights.load_npz(path).widths == [5, 3, 2]
    np.savez(path, w1=rng.normal(size=(5, 3)), w2=rng.normal(size=(4, 2)))
    with pytest.raises(ModelLoadError, match="do not chain"):
        weights.load_npz(path)


def test_truncated_npz(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, w1=np.ones((3, 2)), w2=np.ones((1, 3)))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good.read_bytes()[:150])
    with pytest.raises(ModelLoadError, match="cannot read"):
        weights.load_npz(bad)


def test_npz_nan(tmp_path):
    path = tmp_path / "nan.npz"
    np.savez(path, w1=np.array([[1.0, np.nan]]), w2=np.ones((1, 1)))
    with pytest.raises(ModelLoadError, match="NaN"):
        weights.load_npz(path)


def test_garbage_mat(tmp_path):
    path = tmp_path / "garbage.mat"
    path.write_bytes(np.random.default_rng(5).bytes(300))
    with pytest.raises(ModelLoadError) as info:
        weights.load_mat(path)
    assert "\n" not in str(info.value)


def test_mat_v73_without_h5py(tmp_path):
    path = tmp_path / "v73.mat"  # a v7.3 header (version 0x0200) followed by junk
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + bytes(8) + b"\x00\x02IM"
    path.write_bytes(header + bytes(400))
    with pytest.raises(ModelLoadError) as info:
        weights.load_mat(path)
    try:
        import h5py  # noqa: F401
    except ImportError:
        assert "-v7" in str(info.value)


def test_mat_without_weights(tmp_path):
    path = tmp_path / "empty.mat"
    scipy.io.savemat(path, {"something": np.ones(3)})
    with pytest.raises(ModelLoadError, match="no weights found"):
        weights.load_mat(path)


def test_truncated_nnet(tmp_path):
    lines = shared_path("weights", f"{ACAS}.nnet").read_text().splitlines()
    path = tmp_path / "cut.nnet"
    path.write_text("\n".join(lines[:200]) + "\n")
    with pytest.raises(ModelLoadError, match="line 200.*truncated"):
        weights.load_nnet(path)
    path.write_text("\n".join(lines[:10] + ["0.1,zzz,"] + lines[11:]) + "\n")
    with pytest.raises(ModelLoadError, match="line 11"):
        weights.load_nnet(path)
